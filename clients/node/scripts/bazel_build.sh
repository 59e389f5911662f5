#!/bin/bash
# Builds the Node client for a Bazel test, into OUT (argument 1):
# OUT/clients/node holds a copy of the package's sources from the test's
# runfiles (so Bazel tracks them and reruns the test when they change),
# OUT/protos the .proto contract, and OUT/clients/node/node_modules is a
# link to the source tree's node_modules, which `npm ci` installed
# (./dev test runs it; it lives outside Bazel). tsc and copy-protos then
# build OUT/clients/node/dist as `npm run build` would. Prints nothing on
# success; fails naming the fix when node, npm's tree or tsc is missing.
set -euo pipefail

out="${1:?usage: bazel_build.sh OUT_DIR}"
root="${TEST_SRCDIR:?run me from a bazel test}/${TEST_WORKSPACE:-latchkey}"
node="$(command -v node || true)"
if [ -z "${node}" ]; then
  echo "node client: node is not on PATH (Debian: nodejs, 20 or newer)" >&2
  exit 1
fi
# The runfiles hold symlinks into the workspace; the real package.json
# says where the source tree, and its node_modules, are.
src_pkg="$(dirname "$(readlink -f "${root}/clients/node/package.json")")"
"${node}" "${src_pkg}/scripts/check-modules.mjs"

pkg="${out}/clients/node"
mkdir -p "${pkg}" "${out}/protos/latchkey/v1"
for f in package.json tsconfig.json; do
  cp -L "${root}/clients/node/${f}" "${pkg}/${f}"
done
for d in src test scripts; do
  cp -RL "${root}/clients/node/${d}" "${pkg}/${d}"
done
cp -L "${root}"/protos/latchkey/v1/*.proto "${out}/protos/latchkey/v1/"
ln -s "${src_pkg}/node_modules" "${pkg}/node_modules"
(
  cd "${pkg}"
  "${node}" node_modules/typescript/bin/tsc -p tsconfig.json
  "${node}" scripts/copy-protos.mjs >/dev/null
)
