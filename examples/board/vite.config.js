import { defineConfig } from "vite";

export default defineConfig({
  // JSX without a plugin; one copy of React even though the hooks package
  // is linked from clients/react.
  esbuild: { jsx: "automatic" },
  resolve: { dedupe: ["react", "react-dom", "@broker/client"] },
});
