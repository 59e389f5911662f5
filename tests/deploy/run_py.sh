#!/bin/bash
# Runs one unittest file of tests/deploy (argument 1) under Debian's
# /usr/bin/python3, which has Debian's python3-yaml (the python3 first on
# PATH may be a separate build without it).
set -euo pipefail

root="${TEST_SRCDIR:?run me with bazel test}/${TEST_WORKSPACE:-latchkey}"
export PYTHONPATH="${root}/tests/deploy"
export PYTHONDONTWRITEBYTECODE=1
cd "${root}"
exec /usr/bin/python3 "${root}/tests/deploy/$1"
