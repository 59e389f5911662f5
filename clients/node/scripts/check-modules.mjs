// Says whether node_modules holds exactly what package-lock.json pins
// (npm's own record, node_modules/.package-lock.json, names the same
// packages at the same versions and integrity). ./dev runs `npm ci` when
// it does not; the Bazel tests refuse to run on a stale tree. Exit 0 when
// it does, 1 with the reason on stderr when it does not.
import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const pkg = resolve(dirname(fileURLToPath(import.meta.url)), "..");

function fail(reason) {
  console.error(`clients/node: ${reason}: run \`npm ci\` in ${pkg} (./dev test does)`);
  process.exit(1);
}

const hidden = join(pkg, "node_modules", ".package-lock.json");
if (!existsSync(hidden)) fail("node_modules is missing or was not installed by npm");
const want = JSON.parse(readFileSync(join(pkg, "package-lock.json"), "utf8")).packages ?? {};
const have = JSON.parse(readFileSync(hidden, "utf8")).packages ?? {};
for (const [path, entry] of Object.entries(want)) {
  if (path === "") continue;
  const got = have[path];
  if (!got) fail(`${path} is not installed`);
  if (got.version !== entry.version || got.integrity !== entry.integrity) {
    fail(`${path} is ${got.version}, package-lock.json pins ${entry.version}`);
  }
  if (!existsSync(join(pkg, path, "package.json"))) fail(`${path} is recorded but not on disk`);
}
for (const path of Object.keys(have)) {
  if (!(path in want)) fail(`${path} is installed but not in package-lock.json`);
}
