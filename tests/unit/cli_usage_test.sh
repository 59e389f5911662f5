#!/bin/sh
# cli_usage_test.sh - latchkeyctl's exit-status contract, no server needed:
# malformed command lines exit 2 with a usage on stderr, failed calls and
# bad inputs exit 1 with "latchkeyctl: CODE: details", and nothing that
# could be a secret (a misplaced argument, a broken stdin document) is ever
# echoed back.
#
# usage: cli_usage_test.sh PATH/TO/latchkeyctl
set -u

CTL=$1
TMP=${TEST_TMPDIR:-$(mktemp -d)}
OUT=$TMP/out
ERR=$TMP/err
SECRET=sk-live-0123456789abcdef
failures=0

unset LATCHKEY_SERVER LATCHKEY_TOKEN_FILE LATCHKEY_TLS_CA LATCHKEY_JSON \
  LATCHKEY_SIDECAR LATCHKEY_AGENT_TOKEN_FILE

# run WANT_RC NAME [args...] (stdin from $STDIN_TEXT when set, else empty)
run() {
  want=$1
  name=$2
  shift 2
  printf '%s' "${STDIN_TEXT:-}" | "$CTL" "$@" >"$OUT" 2>"$ERR"
  rc=$?
  if [ "$rc" -ne "$want" ]; then
    echo "FAIL $name: exit $rc, want $want"
    sed 's/^/  stderr: /' "$ERR"
    failures=$((failures + 1))
    return 1
  fi
  echo "ok   $name"
  return 0
}

# stderr_has NAME TEXT / stderr_lacks NAME TEXT / stdout_has NAME TEXT
stderr_has() {
  if ! grep -qF -- "$2" "$ERR"; then
    echo "FAIL $1: stderr lacks '$2'"
    sed 's/^/  stderr: /' "$ERR"
    failures=$((failures + 1))
  fi
}
stderr_lacks() {
  if grep -qF -- "$2" "$ERR" || grep -qF -- "$2" "$OUT"; then
    echo "FAIL $1: output contains '$2'"
    failures=$((failures + 1))
  fi
}
stdout_has() {
  if ! grep -qF -- "$2" "$OUT"; then
    echo "FAIL $1: stdout lacks '$2'"
    failures=$((failures + 1))
  fi
}

# Bazel's TEST_TMPDIR is too deep for a unix socket path (107 bytes).
SOCKDIR=$(mktemp -d /tmp/lkctl.XXXXXX)
trap 'rm -rf "$SOCKDIR"' EXIT
NOSOCK="unix:$SOCKDIR/no-such.sock"

# --- usage errors: exit 2 with a usage text ---------------------------------
run 2 "no arguments" && stderr_has "no arguments" "usage: latchkeyctl" &&
  stderr_has "no arguments" "call, status, keys, audit-hash"
run 2 "unknown command" frobnicate && stderr_has "unknown command" \
  "unknown command 'frobnicate'"
run 2 "group without subcommand" tool &&
  stderr_has "group without subcommand" "needs a subcommand"
run 2 "unknown subcommand" budget explode
run 2 "unknown global option" --frob tool list
run 2 "global option without value" --server
run 2 "tool register without FILE" tool register
run 2 "tool show with two ids" tool show a b

# There is no flag that takes a secret; any attempt is a usage error that
# does not repeat the value.
run 2 "secret as a flag" credential create --type t --label l \
  --api_key "$SECRET" && stderr_lacks "secret as a flag" "$SECRET"
run 2 "secret as flag=value" credential create --type t --label l \
  "--api_key=$SECRET" && stderr_lacks "secret as flag=value" "$SECRET"
run 2 "secret as an argument" credential create --type t --label l \
  "$SECRET" && stderr_lacks "secret as an argument" "$SECRET"
run 2 "credential create without --type" credential create --label l
run 2 "credential create without --label" credential create --type t

run 2 "budget create without --agent" budget create demo
run 2 "bind without target" bind demo --credential c
run 2 "bind with two targets" bind demo --tool a --type b --credential c
run 2 "bind without --credential" bind demo --tool a
run 2 "unbind without target" unbind demo
run 2 "option given twice" bind demo --tool a --tool b --credential c

run 2 "call without --budget" call --tool weather --op forecast \
  --args '{}' && stderr_has "call without --budget" "--budget BUDGET"
run 2 "call without --op" call --budget b --tool weather
run 2 "call with non-object --args" call --budget b --tool t --op o \
  --args '[1]' && stderr_has "call with non-object --args" \
  "--args must be one JSON object"
run 2 "call with bad --timeout-ms" call --budget b --tool t --op o \
  --timeout-ms 0
run 2 "tools without --budget" tools --sidecar "$NOSOCK"

run 2 "keys without subcommand" keys &&
  stderr_has "keys without subcommand" "rotate, status"
run 2 "keys rotate --no-wait with a value" keys rotate --no-wait=yes &&
  stderr_has "keys rotate --no-wait with a value" "--no-wait takes no value"
run 2 "keys status with an argument" keys status 3

run 0 "--help" --help && stdout_has "--help" "credential create --type TYPE" &&
  stdout_has "--help" "keys rotate [--no-wait]" &&
  stdout_has "--help" "audit-hash"

# --- failed calls: exit 1 with "latchkeyctl: CODE: details" -----------------
run 1 "admin server not listening" --server "$NOSOCK" tool list &&
  stderr_has "admin server not listening" "latchkeyctl: UNAVAILABLE: "
run 1 "global flags after the command" tool list --server "$NOSOCK" --json &&
  stderr_has "global flags after the command" "UNAVAILABLE"
export LATCHKEY_SERVER="$NOSOCK"
run 1 "server from LATCHKEY_SERVER" budget list &&
  stderr_has "server from LATCHKEY_SERVER" "no-such.sock"
unset LATCHKEY_SERVER
run 1 "sidecar not listening" call --sidecar "$NOSOCK" --budget b \
  --tool t --op o --args '{"city":"paris"}' &&
  stderr_has "sidecar not listening" "latchkeyctl: UNAVAILABLE: "
run 1 "keys rotate: server not listening" --server "$NOSOCK" keys rotate \
  --no-wait && stderr_has "keys rotate: server not listening" "UNAVAILABLE"
run 1 "tools: sidecar not listening" tools --sidecar "$NOSOCK" --budget b &&
  stderr_has "tools: sidecar not listening" "UNAVAILABLE"
run 1 "unix socket path too long" --server "unix:$TMP/$(printf '%0120d' 0)" \
  tool list && stderr_has "unix socket path too long" \
  "latchkeyctl: INVALID_ARGUMENT: unix socket path"

run 1 "missing token file" --server "$NOSOCK" --token-file "$TMP/none" \
  tool list && stderr_has "missing token file" \
  "latchkeyctl: INVALID_ARGUMENT: cannot open token file"
: >"$TMP/empty.token"
run 1 "empty token file" --server "$NOSOCK" --token-file "$TMP/empty.token" \
  tool list && stderr_has "empty token file" "is empty"
run 1 "missing --tls-ca" --server "$NOSOCK" --tls-ca "$TMP/none.pem" \
  tool list && stderr_has "missing --tls-ca" "cannot open --tls-ca"

# Bad documents are refused before any connection, naming the key path.
cat >"$TMP/bad.json" <<'JSON'
{"id": "w", "base_url": "https://w.example",
 "operations": [{"name": "a", "method": "GET", "path": "/a",
   "params": [{"name": "x", "in": "query", "type": "string"},
              {"name": "y", "in": "query", "type": "string",
               "required": "yes"}]}]}
JSON
run 1 "tool file with a wrong type" --server "$NOSOCK" tool register \
  "$TMP/bad.json" && stderr_has "tool file with a wrong type" \
  "INVALID_ARGUMENT: $TMP/bad.json: operations[0].params[1].required must be a boolean"

STDIN_TEXT="{\"api_key\": $SECRET}"
run 1 "stdin that is not JSON" \
  --server "$NOSOCK" credential create --type t --label l &&
  stderr_has "stdin that is not JSON" "stdin: not valid JSON" &&
  stderr_lacks "stdin that is not JSON" "$SECRET"
STDIN_TEXT='{"api_key": 12}'
run 1 "stdin field that is not a string" \
  --server "$NOSOCK" credential create --type t --label l &&
  stderr_has "stdin field that is not a string" \
  "INVALID_ARGUMENT: stdin: fields.api_key must be a string"
STDIN_TEXT=
run 1 "empty stdin for create" --server "$NOSOCK" credential create \
  --type t --label l && stderr_has "empty stdin for create" "stdin is empty"
run 2 "update with nothing to change" --server "$NOSOCK" credential update c1
# With fields on stdin the request is well formed and reaches the network.
STDIN_TEXT="{\"api_key\": \"$SECRET\"}"
run 1 "create reaches the server" \
  --server "$NOSOCK" credential create --type t --label l &&
  stderr_has "create reaches the server" "UNAVAILABLE" &&
  stderr_lacks "create reaches the server" "$SECRET"
STDIN_TEXT=

if [ "$failures" -ne 0 ]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all checks passed"
