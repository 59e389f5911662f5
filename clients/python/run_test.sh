#!/bin/bash
# Runs one of the Python client's offline tests under Bazel with Debian's
# /usr/bin/python3 (which sees python3-grpcio and python3-protobuf) and the
# package, generated modules included, on PYTHONPATH.
set -euo pipefail

root="${TEST_SRCDIR:?run me with bazel test}/${TEST_WORKSPACE:-latchkey}"
export PYTHONPATH="${root}/clients/python"
export PYTHONDONTWRITEBYTECODE=1
cd "${root}"
exec /usr/bin/python3 "${root}/$1"
