#!/bin/bash
# The Latchkey demo (./dev demo): a vendor that echoes the credential it
# receives, a standalone latchkeyd, and latchkeyctl doing what an account
# owner and an agent would. Shows that the vendor gets the real secret while
# the agent gets the answer with the secret redacted, and that an unbound
# tool answers with what credential is missing. Everything runs on loopback
# in a temp dir, and everything started is stopped on exit.
#
# Needs LATCHKEYD and LATCHKEYCTL (paths to the built binaries) and
# NGINX_CONF_TEMPLATE (tests/e2e/nginx.conf.template); ./dev demo sets them.
# Exits 0 only when every step showed what it should.
set -euo pipefail

: "${LATCHKEYD:?path to latchkeyd}"
: "${LATCHKEYCTL:?path to latchkeyctl}"
: "${NGINX_CONF_TEMPLATE:?path to tests/e2e/nginx.conf.template}"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
PY=/usr/bin/python3
AGENT=demo-agent

TMP="$(mktemp -d /tmp/latchkey-demo.XXXXXX)"
NGINX_PID=""
LATCHKEYD_PID=""

stop_all() {
  local rc=$?
  if [ -n "${LATCHKEYD_PID}" ] && kill -0 "${LATCHKEYD_PID}" 2>/dev/null; then
    kill -TERM "${LATCHKEYD_PID}" 2>/dev/null || true
    wait "${LATCHKEYD_PID}" 2>/dev/null || true
  fi
  if [ -n "${NGINX_PID}" ] && kill -0 "${NGINX_PID}" 2>/dev/null; then
    kill -TERM "${NGINX_PID}" 2>/dev/null || true
    wait "${NGINX_PID}" 2>/dev/null || true
  fi
  rm -rf "${TMP}"
  if [ "${rc}" -ne 0 ]; then
    echo "DEMO FAILED (exit ${rc})" >&2
  fi
  exit "${rc}"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

step() {
  echo
  echo "==> $*"
}

fail() {
  echo "demo: $*" >&2
  exit 1
}

free_port() {
  "${PY}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() { # wait_for SECONDS COMMAND...
  local deadline=$((SECONDS + $1))
  shift
  until "$@" 2>/dev/null; do
    [ "${SECONDS}" -lt "${deadline}" ] || return 1
    sleep 0.1
  done
}

tcp_open() {
  "${PY}" -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()' "$1"
}

ctl() {
  "${LATCHKEYCTL}" --server "127.0.0.1:${ADMIN_PORT}" \
    --token-file "${TMP}/admin.token" "$@"
}

# ---------------------------------------------------------------------------
step "1. Start the vendor: nginx on loopback, echoing the Authorization header it receives"
VENDOR_PORT="$(free_port)"
mkdir -p "${TMP}/nginx"
user_line=""
if [ "$(id -u)" -eq 0 ]; then
  user_line="user $(id -un);"
fi
sed -e "s|@PREFIX@|${TMP}/nginx|g" -e "s|@PORT@|${VENDOR_PORT}|g" \
  -e "s|@USER@|${user_line}|g" "${NGINX_CONF_TEMPLATE}" >"${TMP}/nginx/nginx.conf"
"${NGINX}" -p "${TMP}/nginx/" -c "${TMP}/nginx/nginx.conf" \
  -e "${TMP}/nginx/nginx-error.log" >"${TMP}/nginx/stdout.log" 2>&1 &
NGINX_PID=$!
wait_for 15 tcp_open "${VENDOR_PORT}" || fail "nginx did not start: $(cat "${TMP}/nginx/nginx-error.log" 2>/dev/null)"
echo "vendor listening on http://127.0.0.1:${VENDOR_PORT}"

# ---------------------------------------------------------------------------
step "2. Start latchkeyd (standalone): agent API on a Unix socket, admin API on loopback"
ADMIN_PORT="$(free_port)"
AGENT_ADDR="unix:${TMP}/agent.sock"
(umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"${TMP}/admin.token")
"${LATCHKEYD}" --listen "${AGENT_ADDR}" --agent-id "${AGENT}" \
  --data-dir "${TMP}/data" --node-key "${TMP}/node.key" \
  --admin-listen "127.0.0.1:${ADMIN_PORT}" \
  --admin-token-file "${TMP}/admin.token" \
  --allow-insecure-vendors \
  --setup-url-template 'https://dashboard.latchkey.example/setup?tool={tool}&budget={budget}&type={type}' \
  2>"${TMP}/latchkeyd.log" &
LATCHKEYD_PID=$!
wait_for 30 grep -q '"event":"ready"' "${TMP}/latchkeyd.log" ||
  fail "latchkeyd did not become ready: $(cat "${TMP}/latchkeyd.log")"
wait_for 10 tcp_open "${ADMIN_PORT}" || fail "admin listener not up"
echo "latchkeyd ready (pid ${LATCHKEYD_PID}), agent API ${AGENT_ADDR}, admin API 127.0.0.1:${ADMIN_PORT}"

# ---------------------------------------------------------------------------
step "3. Register two tools from JSON files: 'echo' (bearer token) and 'weather' (API key)"
cat >"${TMP}/echo.json" <<JSON
{
  "id": "echo",
  "description": "Echoes the request it receives",
  "base_url": "http://127.0.0.1:${VENDOR_PORT}",
  "credential_type": {
    "id": "echo-token",
    "fields": [{"name": "token", "secret": true,
                "pattern": "^[A-Za-z0-9_-]{16,128}$",
                "description": "Token from the echo dashboard"}],
    "inject": [{"in": "header", "name": "Authorization", "value": "Bearer {token}"}]
  },
  "operations": [
    {"name": "whoami", "method": "GET", "path": "/v1/whoami/{name}",
     "description": "Shows what the vendor received",
     "params": [{"name": "name", "in": "path", "type": "string", "required": true}]}
  ]
}
JSON
cat >"${TMP}/weather.json" <<JSON
{
  "id": "weather",
  "description": "Forecasts by city",
  "base_url": "http://127.0.0.1:${VENDOR_PORT}",
  "credential_type": {
    "id": "weather-key",
    "fields": [{"name": "api_key", "secret": true,
                "pattern": "^[A-Za-z0-9_-]{16,128}$",
                "description": "API key from the vendor's dashboard"}],
    "inject": [{"in": "header", "name": "X-Api-Key", "value": "{api_key}"}]
  },
  "operations": [
    {"name": "forecast", "method": "GET", "path": "/v1/forecast/{city}",
     "description": "Forecast for the next days",
     "params": [{"name": "city", "in": "path", "type": "string", "required": true},
                {"name": "days", "in": "query", "type": "integer"}]}
  ]
}
JSON
echo "\$ latchkeyctl tool register echo.json"
ctl tool register "${TMP}/echo.json"
echo "\$ latchkeyctl tool register weather.json"
ctl tool register "${TMP}/weather.json"

# ---------------------------------------------------------------------------
step "4. Create a credential; its secret goes in on stdin and is only ever shown masked"
SECRET="demo_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
echo "\$ echo '{\"token\": \"…\"}' | latchkeyctl credential create --type echo-token --label 'demo token'"
CRED_OUT="$(printf '{"token": "%s"}' "${SECRET}" |
  ctl credential create --type echo-token --label "demo token")"
echo "${CRED_OUT}"
CRED_ID="$(echo "${CRED_OUT}" | tr -s ' \t' '\n\n' | grep -v '^$' | tail -n 1)"
[ -n "${CRED_ID}" ] || fail "credential create printed no id"
echo "\$ latchkeyctl credential list"
LIST_OUT="$(ctl credential list)"
echo "${LIST_OUT}"
if grep -qF "${SECRET}" <<<"${LIST_OUT}${CRED_OUT}"; then
  fail "the secret was shown unmasked"
fi

# ---------------------------------------------------------------------------
step "5. Create budget 'demo' for agent '${AGENT}' and bind the credential to tool 'echo'"
echo "\$ latchkeyctl budget create demo --agent ${AGENT}"
ctl budget create demo --agent "${AGENT}"
echo "\$ latchkeyctl bind demo --tool echo --credential ${CRED_ID}"
ctl bind demo --tool echo --credential "${CRED_ID}"

# ---------------------------------------------------------------------------
step "6. The agent calls 'echo': the vendor receives the token, the agent sees it redacted"
echo "\$ latchkeyctl call --sidecar ${AGENT_ADDR} --budget demo --tool echo --op whoami --args '{\"name\": \"alice\"}'"
CALL_OUT="$("${LATCHKEYCTL}" call --sidecar "${AGENT_ADDR}" --budget demo \
  --tool echo --op whoami --args '{"name": "alice"}')"
echo "${CALL_OUT}"
grep -qF '[REDACTED]' <<<"${CALL_OUT}" || fail "the answer shows no [REDACTED]"
if grep -qF "${SECRET}" <<<"${CALL_OUT}"; then
  fail "the agent saw the secret"
fi
wait_for 5 grep -qF "Bearer ${SECRET}" "${TMP}/nginx/nginx-access.log" ||
  fail "the vendor never received the token"
echo "(the vendor's access log shows it received 'Bearer <the real token>'; the agent got [REDACTED])"

# ---------------------------------------------------------------------------
step "7. The agent calls 'weather', which has no credential bound: a missing-credential answer"
echo "\$ latchkeyctl call --sidecar ${AGENT_ADDR} --budget demo --tool weather --op forecast --args '{\"city\": \"paris\"}'"
MISSING_OUT="$("${LATCHKEYCTL}" call --sidecar "${AGENT_ADDR}" --budget demo \
  --tool weather --op forecast --args '{"city": "paris"}' 2>&1 || true)"
echo "${MISSING_OUT}"
grep -qF 'latchkeyctl credential create --type weather-key' <<<"${MISSING_OUT}" ||
  fail "no missing-credential hint in the answer"
grep -qF 'api_key' <<<"${MISSING_OUT}" || fail "the missing field is not named"
if grep -qF '/v1/forecast/paris' "${TMP}/nginx/nginx-access.log"; then
  fail "a call without credential reached the vendor"
fi

# ---------------------------------------------------------------------------
step "8. Stop latchkeyd (SIGTERM) and the vendor"
kill -TERM "${LATCHKEYD_PID}"
rc=0
wait "${LATCHKEYD_PID}" || rc=$?
LATCHKEYD_PID=""
[ "${rc}" -eq 0 ] || fail "latchkeyd exited ${rc} on SIGTERM"
kill -TERM "${NGINX_PID}"
wait "${NGINX_PID}" || true
NGINX_PID=""
if grep -qF "${SECRET}" "${TMP}/latchkeyd.log"; then
  fail "the secret appears in latchkeyd's log"
fi
echo "latchkeyd exited 0; its log never mentions the secret"
echo
echo "Demo OK"
