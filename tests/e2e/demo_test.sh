#!/bin/bash
# Runs the ./dev demo script against the binaries in this test's runfiles,
# so the demo a newcomer runs first is checked on every ./dev test.
set -euo pipefail
root="${TEST_SRCDIR:?run me with bazel test}/${TEST_WORKSPACE:-latchkey}"
export LATCHKEYD="${root}/sidecar/latchkeyd"
export LATCHKEYCTL="${root}/clients/cli/latchkeyctl"
export NGINX_CONF_TEMPLATE="${root}/tests/e2e/nginx.conf.template"
export PATH="/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"
exec bash "${root}/tests/e2e/demo.sh"
