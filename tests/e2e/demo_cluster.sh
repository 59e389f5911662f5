#!/bin/bash
# The Latchkey cluster demo (./dev demo --cluster): a real single-node etcd
# as the source of truth, two latchkey-cp control-plane replicas sharing one
# key ring, and two latchkeyd sidecars in replica mode for two agents, with
# nginx as a vendor that echoes the credential it receives. Shows that a
# bind made on the control plane reaches one agent's sidecar and not the
# other's, what `latchkeyctl status` reports, and that a sidecar keeps
# serving when the control plane it was talking to dies, then follows the
# other control plane. Everything runs on loopback in a temp dir, and
# everything started is stopped on exit (SIGTERM, then SIGKILL).
#
# Needs LATCHKEYD, LATCHKEY_CP and LATCHKEYCTL (paths to the built
# binaries) and NGINX_CONF_TEMPLATE (tests/e2e/nginx.conf.template);
# ./dev demo --cluster sets them. etcd comes from Debian's etcd-server.
# Exits 0 only when every step showed what it should.
set -euo pipefail

: "${LATCHKEYD:?path to latchkeyd}"
: "${LATCHKEY_CP:?path to latchkey-cp}"
: "${LATCHKEYCTL:?path to latchkeyctl}"
: "${NGINX_CONF_TEMPLATE:?path to tests/e2e/nginx.conf.template}"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
ETCD="${ETCD:-$(command -v etcd || echo /usr/bin/etcd)}"
PY=/usr/bin/python3
STOP_BOUND_S=15

TMP="$(mktemp -d /tmp/latchkey-cluster.XXXXXX)"
declare -A PIDS=() # name -> pid of every process still running

stop_pid() { # stop_pid NAME: SIGTERM, SIGKILL after STOP_BOUND_S; sets RC
  local name="$1" pid="${PIDS[$1]:-}" waited=0
  RC=0
  [ -n "${pid}" ] || return 0
  unset "PIDS[${name}]"
  kill -TERM "${pid}" 2>/dev/null || true
  while kill -0 "${pid}" 2>/dev/null && [ "${waited}" -lt $((STOP_BOUND_S * 10)) ]; do
    sleep 0.1
    waited=$((waited + 1))
  done
  kill -KILL "${pid}" 2>/dev/null || true
  wait "${pid}" 2>/dev/null || RC=$?
}

stop_all() {
  local rc=$? name
  # Sidecars first, so no stream holds a control plane's shutdown.
  for name in sidecar-a sidecar-b cp1 cp2 etcd nginx; do
    stop_pid "${name}" || true
  done
  for name in "${!PIDS[@]}"; do
    stop_pid "${name}" || true
  done
  rm -rf "${TMP}"
  if [ "${rc}" -ne 0 ]; then
    echo "CLUSTER DEMO FAILED (exit ${rc})" >&2
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

unix_open() {
  "${PY}" -c 'import socket, sys; s = socket.socket(socket.AF_UNIX); s.settimeout(1); s.connect(sys.argv[1]); s.close()' "$1"
}

etcd_healthy() {
  "${PY}" -c 'import json, sys, urllib.request; sys.exit(0 if json.load(urllib.request.urlopen(sys.argv[1] + "/health", timeout=1)).get("health") == "true" else 1)' "$1"
}

running() { # running NAME: its process is alive
  kill -0 "${PIDS[$1]}" 2>/dev/null
}

ready_logged() { # ready_logged NAME LOG: alive and logged "ready"
  running "$1" && grep -q '"event":"ready"' "$2"
}

# ---- the processes ----------------------------------------------------------

start_nginx() {
  local user_line="" try
  if [ "$(id -u)" -eq 0 ]; then
    user_line="user $(id -un);"
  fi
  mkdir -p "${TMP}/nginx"
  for try in 1 2 3; do
    VENDOR_PORT="$(free_port)"
    sed -e "s|@PREFIX@|${TMP}/nginx|g" -e "s|@PORT@|${VENDOR_PORT}|g" \
      -e "s|@USER@|${user_line}|g" "${NGINX_CONF_TEMPLATE}" >"${TMP}/nginx/nginx.conf"
    "${NGINX}" -p "${TMP}/nginx/" -c "${TMP}/nginx/nginx.conf" \
      -e "${TMP}/nginx/nginx-error.log" >"${TMP}/nginx/stdout.log" 2>&1 &
    PIDS[nginx]=$!
    if wait_for 15 tcp_open "${VENDOR_PORT}" && running nginx; then
      return 0
    fi
    stop_pid nginx
  done
  fail "nginx did not start: $(cat "${TMP}/nginx/nginx-error.log" 2>/dev/null)"
}

start_etcd() {
  local try peer
  for try in 1 2 3; do
    ETCD_PORT="$(free_port)"
    peer="http://127.0.0.1:$(free_port)"
    "${ETCD}" --name n --data-dir "${TMP}/etcd-data" \
      --listen-client-urls "http://127.0.0.1:${ETCD_PORT}" \
      --advertise-client-urls "http://127.0.0.1:${ETCD_PORT}" \
      --listen-peer-urls "${peer}" --initial-advertise-peer-urls "${peer}" \
      --initial-cluster "n=${peer}" >>"${TMP}/etcd.log" 2>&1 &
    PIDS[etcd]=$!
    if wait_for 30 etcd_healthy "http://127.0.0.1:${ETCD_PORT}" && running etcd; then
      return 0
    fi
    stop_pid etcd
    grep -q 'address already in use' "${TMP}/etcd.log" || break
  done
  fail "etcd did not start: $(tail -c 2000 "${TMP}/etcd.log")"
}

start_cp() { # start_cp NAME [PORT]: sets CP_PORT[NAME]
  local name="$1" port="${2:-}" try log="${TMP}/$1.log"
  for try in 1 2 3; do
    [ -n "${2:-}" ] || port="$(free_port)"
    : >"${log}"
    "${LATCHKEY_CP}" --listen "127.0.0.1:${port}" \
      --etcd "127.0.0.1:${ETCD_PORT}" --keyring "${TMP}/keyring" \
      --admin-token-file "${TMP}/admin.token" \
      --node-token-file "${TMP}/node.token" 2>"${log}" &
    PIDS[${name}]=$!
    if wait_for 30 ready_logged "${name}" "${log}" && wait_for 10 tcp_open "${port}"; then
      CP_PORT[${name}]="${port}"
      return 0
    fi
    stop_pid "${name}"
    [ -z "${2:-}" ] && grep -q 'cannot listen on' "${log}" || break
  done
  fail "${name} did not become ready: $(tail -c 2000 "${log}")"
}

start_sidecar() { # start_sidecar NAME AGENT CP_NAME (the data dir is kept)
  local name="$1" agent="$2" cp="$3" log="${TMP}/$1.log"
  : >"${log}"
  "${LATCHKEYD}" --listen "unix:${TMP}/${name}.sock" --agent-id "${agent}" \
    --data-dir "${TMP}/${name}-data" --node-key "${TMP}/${name}.node.key" \
    --control-plane "127.0.0.1:${CP_PORT[${cp}]}" \
    --control-plane-token-file "${TMP}/node.token" \
    --allow-insecure-vendors 2>"${log}" &
  PIDS[${name}]=$!
  wait_for 30 ready_logged "${name}" "${log}" &&
    wait_for 10 unix_open "${TMP}/${name}.sock" ||
    fail "${name} did not become ready: $(tail -c 2000 "${log}")"
}

declare -A CP_PORT=()

ctl() { # ctl CP_NAME ARGS...: latchkeyctl against that control plane
  local cp="$1"
  shift
  "${LATCHKEYCTL}" --server "127.0.0.1:${CP_PORT[${cp}]}" \
    --token-file "${TMP}/admin.token" "$@"
}

call() { # call SIDECAR BUDGET TOOL NAME: one echo call, output in CALL_OUT
  CALL_OUT="$("${LATCHKEYCTL}" call --sidecar "unix:${TMP}/$1.sock" \
    --budget "$2" --tool "$3" --op whoami --args "{\"name\": \"$4\"}" 2>&1)"
}

# The call on SIDECAR reached the vendor with SECRET and came back redacted.
call_injects() { # call_injects SIDECAR BUDGET TOOL SECRET
  local name="n${RANDOM}${RANDOM}"
  call "$1" "$2" "$3" "${name}" || return 1
  grep -qF '[REDACTED]' <<<"${CALL_OUT}" || return 1
  if grep -qF "$4" <<<"${CALL_OUT}"; then
    fail "the agent saw the secret"
  fi
  wait_for 5 grep -qF "/v1/whoami/${name}\",\"authorization\":\"Bearer $4\"" \
    "${TMP}/nginx/nginx-access.log"
}

show_call() { # show_call SIDECAR BUDGET TOOL: prints the command and answer
  echo "\$ latchkeyctl call --sidecar unix:.../$1.sock --budget $2 --tool $3 --op whoami --args '{\"name\": \"alice\"}'"
  call "$1" "$2" "$3" alice || true
  echo "${CALL_OUT}"
}

tool_json() { # tool_json ID TYPE
  cat <<JSON
{
  "id": "$1",
  "description": "Echoes the request it receives",
  "base_url": "http://127.0.0.1:${VENDOR_PORT}",
  "credential_type": "$2",
  "operations": [
    {"name": "whoami", "method": "GET", "path": "/v1/whoami/{name}",
     "description": "Shows what the vendor received",
     "params": [{"name": "name", "in": "path", "type": "string", "required": true}]}
  ]
}
JSON
}

new_secret() {
  echo "demo_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
}

# -----------------------------------------------------------------------------
step "1. Start the vendor (nginx echoing the Authorization header) and etcd, the source of truth"
start_nginx
start_etcd
echo "vendor on http://127.0.0.1:${VENDOR_PORT}, etcd on 127.0.0.1:${ETCD_PORT}"

# -----------------------------------------------------------------------------
step "2. Start two control-plane replicas (latchkey-cp) over that etcd, sharing one key ring"
(umask 077 && new_secret >"${TMP}/admin.token" && new_secret >"${TMP}/node.token")
start_cp cp1
start_cp cp2
echo "cp1 on 127.0.0.1:${CP_PORT[cp1]}, cp2 on 127.0.0.1:${CP_PORT[cp2]}"

# -----------------------------------------------------------------------------
step "3. On cp1: register a credential type and tool, create budget 'team-a' for agent-a and 'team-b' for agent-b"
cat >"${TMP}/echo-token.json" <<'JSON'
{"id": "echo-token",
 "fields": [{"name": "token", "secret": true, "pattern": "^[A-Za-z0-9_-]{16,128}$",
             "description": "Token from the echo dashboard"}],
 "inject": [{"in": "header", "name": "Authorization", "value": "Bearer {token}"}]}
JSON
tool_json echo echo-token >"${TMP}/echo.json"
tool_json echo2 echo-token >"${TMP}/echo2.json"
echo "\$ latchkeyctl --server cp1 type register echo-token.json"
ctl cp1 type register "${TMP}/echo-token.json"
echo "\$ latchkeyctl --server cp1 tool register echo.json"
ctl cp1 tool register "${TMP}/echo.json"
echo "\$ latchkeyctl --server cp1 tool register echo2.json"
ctl cp1 tool register "${TMP}/echo2.json"
echo "\$ latchkeyctl --server cp1 budget create team-a --agent agent-a"
ctl cp1 budget create team-a --agent agent-a
echo "\$ latchkeyctl --server cp1 budget create team-b --agent agent-b"
ctl cp1 budget create team-b --agent agent-b

# -----------------------------------------------------------------------------
step "4. Start a sidecar per agent in replica mode: agent-a's follows cp1, agent-b's follows cp2"
start_sidecar sidecar-a agent-a cp1
start_sidecar sidecar-b agent-b cp2
echo "sidecar-a (agent-a) -> cp1, sidecar-b (agent-b) -> cp2"

# -----------------------------------------------------------------------------
step "5. On cp2: create a credential (secret on stdin) and bind it to tool 'echo' in team-a"
SECRET="$(new_secret)"
echo "\$ echo '{\"token\": \"…\"}' | latchkeyctl --server cp2 credential create --type echo-token --label 'team-a token'"
CRED_OUT="$(printf '{"token": "%s"}' "${SECRET}" |
  ctl cp2 credential create --type echo-token --label "team-a token")"
echo "${CRED_OUT}"
CRED_ID="$(echo "${CRED_OUT}" | tr -s ' \t' '\n\n' | grep -v '^$' | tail -n 1)"
[ -n "${CRED_ID}" ] || fail "credential create printed no id"
echo "\$ latchkeyctl --server cp2 bind team-a --tool echo --credential ${CRED_ID}"
ctl cp2 bind team-a --tool echo --credential "${CRED_ID}"

# -----------------------------------------------------------------------------
step "6. The bind reaches agent-a's sidecar (fed by cp1): the vendor gets the token, the agent sees [REDACTED]"
wait_for 20 call_injects sidecar-a team-a echo "${SECRET}" ||
  fail "the bind never reached sidecar-a: ${CALL_OUT:-}"
show_call sidecar-a team-a echo
grep -qF '[REDACTED]' <<<"${CALL_OUT}" || fail "no [REDACTED] in the answer"

# -----------------------------------------------------------------------------
step "7. ...and not agent-b's: sidecar-b does not even know budget team-a, and has no credential at all"
show_call sidecar-b team-a echo
grep -qF 'NOT_FOUND' <<<"${CALL_OUT}" || fail "sidecar-b served team-a"
show_call sidecar-b team-b echo
grep -qF 'missing_credential' <<<"${CALL_OUT}" || fail "sidecar-b has a credential"
if grep -rqsF -D skip "${CRED_ID}" "${TMP}/sidecar-b-data"; then
  fail "agent-a's credential is in sidecar-b's data dir"
fi
echo "(no file in sidecar-b's data dir mentions ${CRED_ID})"

# -----------------------------------------------------------------------------
step "8. latchkeyctl status: each control plane lists its replicas, their applied revision and lag"
settled() { # settled CP AGENT: the replica is at the control plane's revision
  ctl "$1" --json status | "${PY}" -c '
import json, sys
st = json.load(sys.stdin)
rows = [r for r in st.get("replicas", []) if r.get("agent_id") == sys.argv[1]]
ok = rows and all(int(r.get("applied_revision", 0)) == int(st["revision"])
                  and int(r.get("lag_revisions", 0)) == 0 for r in rows)
sys.exit(0 if ok else 1)' "$2"
}
wait_for 20 settled cp1 agent-a || fail "agent-a never caught up on cp1"
wait_for 20 settled cp2 agent-b || fail "agent-b never caught up on cp2"
echo "\$ latchkeyctl --server cp1 status"
ctl cp1 status
echo "\$ latchkeyctl --server cp2 status"
ctl cp2 status

# -----------------------------------------------------------------------------
step "9. Kill cp1 (SIGKILL), the control plane sidecar-a was talking to: sidecar-a keeps serving from its replica"
kill -KILL "${PIDS[cp1]}"
wait "${PIDS[cp1]}" 2>/dev/null || true
unset "PIDS[cp1]"
echo "cp1 killed"
call_injects sidecar-a team-a echo "${SECRET}" || fail "sidecar-a stopped serving: ${CALL_OUT}"
show_call sidecar-a team-a echo

# -----------------------------------------------------------------------------
step "10. Restart sidecar-a against cp2, same data dir: it serves at once and resumes from its revision"
stop_pid sidecar-a
[ "${RC}" -eq 0 ] || fail "sidecar-a exited ${RC} on SIGTERM"
start_sidecar sidecar-a agent-a cp2
call_injects sidecar-a team-a echo "${SECRET}" || fail "restarted sidecar-a does not serve: ${CALL_OUT}"
show_call sidecar-a team-a echo
wait_for 20 grep -q '"event":"sync_connected"' "${TMP}/sidecar-a.log" ||
  fail "sidecar-a never connected to cp2"
if grep -q '"event":"sync_snapshot_applied"' "${TMP}/sidecar-a.log"; then
  fail "sidecar-a needed a full snapshot instead of resuming"
fi
echo "(sidecar-a reconnected to cp2 and resumed without a snapshot)"

# -----------------------------------------------------------------------------
step "11. A new bind through cp2 reaches sidecar-a"
SECRET2="$(new_secret)"
CRED2="$(printf '{"token": "%s"}' "${SECRET2}" |
  ctl cp2 credential create --type echo-token --label "team-a token 2" |
  tr -s ' \t' '\n\n' | grep -v '^$' | tail -n 1)"
echo "\$ latchkeyctl --server cp2 bind team-a --tool echo2 --credential ${CRED2}"
ctl cp2 bind team-a --tool echo2 --credential "${CRED2}"
wait_for 20 call_injects sidecar-a team-a echo2 "${SECRET2}" ||
  fail "the new bind never reached sidecar-a: ${CALL_OUT:-}"
show_call sidecar-a team-a echo2
wait_for 20 settled cp2 agent-a || fail "agent-a never caught up on cp2"
wait_for 20 settled cp2 agent-b || fail "agent-b never caught up on cp2: $(ctl cp2 status)"
echo "\$ latchkeyctl --server cp2 status"
ctl cp2 status

# -----------------------------------------------------------------------------
step "12. Stop everything (SIGTERM); no log or data dir holds a secret"
for name in sidecar-a sidecar-b cp2; do
  stop_pid "${name}"
  [ "${RC}" -eq 0 ] || fail "${name} exited ${RC} on SIGTERM"
done
stop_pid etcd
stop_pid nginx
for s in "${SECRET}" "${SECRET2}"; do
  if grep -rqsF -D skip "${s}" "${TMP}" --exclude-dir=nginx; then
    fail "a secret is on disk outside the vendor's log"
  fi
done
echo "all stopped cleanly; the secrets appear only in the vendor's own log"
echo
echo "Cluster demo OK"
