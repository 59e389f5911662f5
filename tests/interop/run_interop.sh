#!/bin/bash
# Runs one client's interop suite under Bazel: tests/interop/stack.py
# starts nginx and a real latchkeyd (transport: argument 1, unix or tcp),
# then runs the rest of the arguments (paths relative to the runfiles
# root) with the fixture in the environment. Debian's /usr/bin/python3
# sees grpcio and protobuf; the generated stubs are under protos/.
set -euo pipefail

root="${TEST_SRCDIR:?run me with bazel test}/${TEST_WORKSPACE:-latchkey}"
export PYTHONPATH="${root}/protos:${root}/tests/e2e"
export PYTHONDONTWRITEBYTECODE=1
export PATH="/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"
cd "${root}"
transport="$1"
shift
exec /usr/bin/python3 "${root}/tests/interop/stack.py" \
  --transport "${transport}" -- "$@"
