#!/bin/bash
# Runs the ./dev demo --cluster script against the binaries in this test's
# runfiles, so the cluster demo keeps working on every ./dev test.
set -euo pipefail
root="${TEST_SRCDIR:?run me with bazel test}/${TEST_WORKSPACE:-latchkey}"
export LATCHKEYD="${root}/sidecar/latchkeyd"
export LATCHKEY_CP="${root}/controlplane/latchkey-cp"
export LATCHKEYCTL="${root}/clients/cli/latchkeyctl"
export NGINX_CONF_TEMPLATE="${root}/tests/e2e/nginx.conf.template"
export PATH="/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"
exec bash "${root}/tests/e2e/demo_cluster.sh"
