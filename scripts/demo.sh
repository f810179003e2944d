#!/usr/bin/env bash
# README command 1: run provisiond's main job on the embedded default: the
# example directory file, SQLite state, and an AlexisHR target provisioning a
# local AlexisHR-compatible sandbox (SCIM and a SAML ACS page on
# 127.0.0.1:8765), with the sign-in portal on 127.0.0.1:8080 signing people in
# to that sandbox. The sandbox stops when the daemon stops. Safe to run again.
#
# For tests and for ports already taken (each has the default shown):
#   DEMO_CONFIG=examples/alexishr.yaml  the configuration (its sandbox port must
#                                        match DEMO_SANDBOX_PORT); its state is in
#                                        ../state next to it
#   DEMO_SANDBOX_PORT=8765 DEMO_PORTAL_PORT=8080 DEMO_OPS_PORT=9464
#   DEMO_SKIP_INSTALL=1                 use the .venv as it is (no pip, no apt)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
if [ -z "${DEMO_SKIP_INSTALL:-}" ]; then
  apt_install xmlsec1  # the sandbox's ACS checks the SAML signature with it
  make_venv demo
fi

CONFIG=${DEMO_CONFIG:-examples/alexishr.yaml}
CONFIG_DIR=$(cd "$(dirname "$CONFIG")" && pwd)
STATE_DIR="$CONFIG_DIR/../state"
TOKEN_FILE="$CONFIG_DIR/alexishr-sandbox.token"
SANDBOX_PORT=${DEMO_SANDBOX_PORT:-8765}
PORTAL_PORT=${DEMO_PORTAL_PORT:-8080}
OPS_PORT=${DEMO_OPS_PORT:-9464}
PORTAL="http://127.0.0.1:$PORTAL_PORT"
SANDBOX="http://127.0.0.1:$SANDBOX_PORT"
export PROVISIOND_HTTP__PUBLIC__PORT=$PORTAL_PORT PROVISIOND_HTTP__OPS__PORT=$OPS_PORT
PD=".venv/bin/provisiond -c $CONFIG"

mkdir -p "$STATE_DIR"
STATE_DIR=$(cd "$STATE_DIR" && pwd)
echo "==> starting the AlexisHR sandbox (SCIM and sign-in) on $SANDBOX"
.venv/bin/python scripts/sandbox.py --port "$SANDBOX_PORT" --token-file "$TOKEN_FILE" \
  --idp-metadata "$PORTAL/saml2/alexishr/metadata" >"$STATE_DIR/alexishr-sandbox.log" 2>&1 &
SANDBOX_PID=$!
trap 'kill "$SANDBOX_PID" 2>/dev/null || true; wait "$SANDBOX_PID" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  # (Python rather than curl: a fresh Debian may not have curl.)
  .venv/bin/python - "$SANDBOX_PORT" "$TOKEN_FILE" <<'PY' 2>/dev/null && break
import sys, urllib.request
port, token_file = sys.argv[1], sys.argv[2]
token = open(token_file).read().strip()
req = urllib.request.Request(f"http://127.0.0.1:{port}/ServiceProviderConfig",
                             headers={"Authorization": f"Bearer {token}"})
urllib.request.urlopen(req, timeout=1)
PY
  kill -0 "$SANDBOX_PID" 2>/dev/null || { cat "$STATE_DIR/alexishr-sandbox.log"; exit 1; }
  sleep 0.1
done
# The sandbox keeps its data in memory: start the demo's state afresh too.
rm -f "$STATE_DIR"/alexishr-demo.db "$STATE_DIR"/alexishr-demo.db-* "$STATE_DIR"/alexishr-alexishr.db*
# The IdP signing key: made once, kept across runs.
if [ ! -f "$STATE_DIR/demo-idp.key" ]; then
  echo "==> making the demo's SAML signing key ($STATE_DIR/demo-idp.key)"
  .venv/bin/provisiond saml keygen --key "$STATE_DIR/demo-idp.key" \
    --cert "$STATE_DIR/demo-idp.crt" --cn "provisiond demo IdP" --force
fi

echo
echo "==> provisiond check: discovery, token, one read"
$PD check
echo
echo "==> provisiond plan: what the first cycle will send"
$PD plan
# In the background so that a SIGTERM to this script reaches the daemon too.
$PD run &
DAEMON_PID=$!
trap 'kill -TERM "$DAEMON_PID" 2>/dev/null || true; wait "$DAEMON_PID" 2>/dev/null || true; exit 143' TERM INT
# Wait for the portal, and list the admin console only if this build serves /admin.
CONSOLE=$(.venv/bin/python - "$PORTAL" "$DAEMON_PID" <<'PY' || true
import os, sys, time, urllib.error, urllib.request
portal, pid = sys.argv[1], int(sys.argv[2])
class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None
opener = urllib.request.build_opener(NoRedirect)
def status(path):
    try:
        return opener.open(portal + path, timeout=2).status
    except urllib.error.HTTPError as exc:
        return exc.code
for _ in range(300):
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(1)
    try:
        status("/login")
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit(1)
if status("/admin") != 404:
    print(f"    console:     {portal}/admin  (alice may use it: she is in Engineering, the admin group)")
PY
)
cat <<MSG

==> the daemon runs (Ctrl-C stops it, and the sandbox). While it runs:
    portal:      $PORTAL
                 sign in as alice / correct horse battery staple (may use AlexisHR),
                 or hanna.kowalski / contractor demo password (a contractor: refused),
                 then click AlexisHR: the sandbox's page shows who signed in.
    AlexisHR:    $SANDBOX  ("Sign in with SSO" starts from AlexisHR's side)
${CONSOLE:+$CONSOLE
}    metrics:     curl -s http://127.0.0.1:$OPS_PORT/metrics | grep -E 'provisiond_(scim|alexishr|sso)_'
    status:      curl -s http://127.0.0.1:$OPS_PORT/api/v1/status
    SCIM users:  curl -s -H "Authorization: Bearer \$(cat $TOKEN_FILE)" $SANDBOX/Users
    next change: edit $CONFIG_DIR/directory.yaml, then
                 $PD plan --json

MSG
wait "$DAEMON_PID"
