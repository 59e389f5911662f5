#!/bin/bash
# Runs examples/node/agent_loop.mjs as a test, under tests/interop/stack.py
# (run_interop.sh): builds @latchkey/client from the runfiles
# (clients/node/scripts/bazel_build.sh), lays the example out next to it
# with node_modules/@latchkey/client linked to that build, as
# `npm install ../../clients/node` would, and runs agent_loop.test.mjs.
set -euo pipefail

root="${TEST_SRCDIR:?run me with bazel test}/${TEST_WORKSPACE:-latchkey}"
work="${TEST_TMPDIR:?}/node-example"
bash "${root}/clients/node/scripts/bazel_build.sh" "${work}"
mkdir -p "${work}/examples/node/node_modules/@latchkey"
cp -L "${root}/examples/llm_script.json" "${work}/examples/"
cp -L "${root}/examples/node/agent_loop.mjs" "${root}/examples/node/agent_loop.test.mjs" \
  "${work}/examples/node/"
ln -s "${work}/clients/node" "${work}/examples/node/node_modules/@latchkey/client"
cd "${work}/examples/node"
exec node --test --test-reporter=spec agent_loop.test.mjs
