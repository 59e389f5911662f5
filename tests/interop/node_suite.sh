#!/bin/bash
# The Node client's interop suite (clients/node/test/interop.test.ts),
# run by run_interop.sh under stack.py: builds the client from the
# runfiles with the source tree's node_modules (clients/node/scripts/
# bazel_build.sh), then runs its unit and interop tests with Node's test
# runner against the latchkeyd that stack.py started.
set -euo pipefail

root="${TEST_SRCDIR:?run me with bazel test}/${TEST_WORKSPACE:-latchkey}"
work="${TEST_TMPDIR:?}/node-client"
bash "${root}/clients/node/scripts/bazel_build.sh" "${work}"
cd "${work}/clients/node"
exec node --test --test-reporter=spec \
  dist/test/unit.test.js dist/test/interop.test.js
