#!/bin/bash
# Runs loadgen_grpc_test.py (loadgen's gRPC clients against a real grpcio
# server) with Debian's python3, which has grpcio.
set -euo pipefail

root="${TEST_SRCDIR:?run me with bazel test}/${TEST_WORKSPACE:-latchkey}"
export PYTHONDONTWRITEBYTECODE=1
export LOADGEN_DIR="${root}"
cd "${root}"
exec /usr/bin/python3 tests/bench/loadgen_grpc_test.py
