// The size of what a browser app imports: the package entry bundled,
// minified and gzipped. Fails above the budget (8 KB).
import { build } from "esbuild";
import { gzipSync } from "node:zlib";

const BUDGET = 8 * 1024;
const result = await build({
  entryPoints: ["dist/index.js"],
  bundle: true,
  minify: true,
  format: "esm",
  write: false,
});
const bytes = result.outputFiles[0].contents;
const gzipped = gzipSync(bytes, { level: 9 }).length;
console.log(`@broker/client: ${bytes.length} B minified, ${gzipped} B gzipped (budget ${BUDGET} B)`);
if (gzipped > BUDGET) process.exit(1);
