// Build step: copies the proto contract the client loads at run time from
// the repository's protos/ (or $LATCHKEY_PROTO_DIR) into dist/protos, so
// the built and packed package carries it.
import { copyFileSync, existsSync, mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const pkg = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const from = resolve(process.env.LATCHKEY_PROTO_DIR || join(pkg, "..", "..", "protos"));
const to = join(pkg, "dist", "protos");
// toolcalls.proto and what it imports; admin and sync are not the agent's.
const files = ["latchkey/v1/toolcalls.proto", "latchkey/v1/types.proto"];

for (const f of files) {
  const src = join(from, f);
  if (!existsSync(src)) {
    console.error(
      `copy-protos: ${src} is missing: build inside the Latchkey repository ` +
        "or set LATCHKEY_PROTO_DIR to its protos/ directory",
    );
    process.exit(1);
  }
  mkdirSync(dirname(join(to, f)), { recursive: true });
  copyFileSync(src, join(to, f));
}
console.log(`copy-protos: ${files.length} files into ${to}`);
