#!/usr/bin/env bash
# README command 1: run provisiond's main job on the embedded default: the
# example directory file, SQLite state, and an AlexisHR target provisioning a
# local AlexisHR-compatible SCIM sandbox (scim2-server on 127.0.0.1:8765).
# The sandbox stops when the daemon stops.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
make_venv demo

CONFIG=examples/alexishr.yaml
TOKEN_FILE=examples/alexishr-sandbox.token
SANDBOX_PORT=8765
PD=".venv/bin/provisiond -c $CONFIG"

mkdir -p state
echo "==> starting the AlexisHR SCIM sandbox on http://127.0.0.1:$SANDBOX_PORT"
.venv/bin/python scripts/sandbox.py --port "$SANDBOX_PORT" --token-file "$TOKEN_FILE" \
  >state/alexishr-sandbox.log 2>&1 &
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
  kill -0 "$SANDBOX_PID" 2>/dev/null || { cat state/alexishr-sandbox.log; exit 1; }
  sleep 0.1
done
# The sandbox keeps its data in memory: start the demo's state afresh too.
rm -f state/alexishr-demo.db state/alexishr-demo.db-* state/alexishr-alexishr.db*

echo
echo "==> provisiond check: discovery, token, one read"
$PD check
echo
echo "==> provisiond plan: what the first cycle will send"
$PD plan
cat <<MSG

==> starting the daemon (Ctrl-C stops it, and the sandbox). While it runs:
    metrics:     curl -s http://127.0.0.1:9464/metrics | grep -E 'provisiond_(scim|alexishr)_'
    status:      curl -s http://127.0.0.1:9464/api/v1/status
    AlexisHR:    curl -s -H "Authorization: Bearer \$(cat $TOKEN_FILE)" \\
                   http://127.0.0.1:$SANDBOX_PORT/Users
    next change: edit examples/directory.yaml, then
                 $PD plan --json

MSG
# In the background so that a SIGTERM to this script reaches the daemon too.
$PD run &
DAEMON_PID=$!
trap 'kill -TERM "$DAEMON_PID" 2>/dev/null || true; wait "$DAEMON_PID" 2>/dev/null || true; exit 143' TERM INT
wait "$DAEMON_PID"
