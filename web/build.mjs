// Copies the dashboard (src/) and the npm-installed libraries it uses into sysmon/gateway/static,
// which the gateway serves under /assets. No bundler: the dashboard is plain ES modules.
import { cpSync, mkdirSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "sysmon", "gateway", "static");
const modules = join(here, "node_modules");

const vendor = [
  ["uplot/dist/uPlot.esm.js", "vendor/uPlot.esm.js"],
  ["uplot/dist/uPlot.min.css", "vendor/uPlot.min.css"],
  ["uplot/LICENSE", "vendor/uPlot.LICENSE"],
  ["swagger-ui-dist/swagger-ui-bundle.js", "vendor/swagger-ui/swagger-ui-bundle.js"],
  ["swagger-ui-dist/swagger-ui.css", "vendor/swagger-ui/swagger-ui.css"],
  ["swagger-ui-dist/LICENSE", "vendor/swagger-ui/LICENSE"],
];

for (const [from] of vendor) {
  if (!existsSync(join(modules, from))) {
    console.error(`missing node_modules/${from}: run npm ci in web/ first`);
    process.exit(1);
  }
}
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
cpSync(join(here, "src"), out, { recursive: true });
for (const [from, to] of vendor) {
  mkdirSync(dirname(join(out, to)), { recursive: true });
  cpSync(join(modules, from), join(out, to));
}
writeFileSync(join(out, ".built"), new Date().toISOString() + "\n");
console.log(`dashboard built into ${out}`);
