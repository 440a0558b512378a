import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

export default defineConfig({
  esbuild: { jsx: "automatic" },
  // The client from its sources beside this package (a peer dependency,
  // not installed here); one copy of React.
  resolve: {
    alias: { "@broker/client": fileURLToPath(new URL("../js/src/index.ts", import.meta.url)) },
    dedupe: ["react", "react-dom"],
  },
});
