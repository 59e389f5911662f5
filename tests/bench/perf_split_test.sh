#!/bin/bash
# Runs perf_split_test.py (unittest) with Debian's python3.
set -euo pipefail
root="${TEST_SRCDIR:?run me with bazel test}/${TEST_WORKSPACE:-latchkey}"
cd "${root}/tests/bench"
PYTHONDONTWRITEBYTECODE=1 exec /usr/bin/python3 -m unittest -v perf_split_test
