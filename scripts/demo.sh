#!/usr/bin/env bash
# README command 1: run provisiond's main job on the embedded default —
# the example directory file, SQLite state, and the built-in log target.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
make_venv demo

CONFIG=examples/provisiond.yaml
PD=".venv/bin/provisiond -c $CONFIG"
echo
echo "==> provisiond plan: what the first cycle will send"
$PD plan
cat <<MSG

==> starting the daemon (Ctrl-C stops it). While it runs:
    metrics:     curl -s http://127.0.0.1:9464/metrics | grep provisiond_
    status:      curl -s http://127.0.0.1:9464/api/v1/status
    next change: edit examples/directory.yaml, then
                 $PD plan --json
    state:       state/provisiond.db (delete it to start over)

MSG
exec $PD run
