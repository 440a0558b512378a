import { defineConfig } from "vitest/config";

export default defineConfig({
  esbuild: { jsx: "automatic" },
  // One copy of React and of the client, though the client is linked.
  resolve: { dedupe: ["react", "react-dom", "@broker/client"] },
});
