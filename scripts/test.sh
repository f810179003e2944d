#!/usr/bin/env bash
# README command 2: install everything the tests need, then lint, type-check
# and run the whole test suite (real peers: slapd, scim2-server, a second SCIM
# server on SCIMMY under Node.js, pysaml2 with xmlsec1, Chromium, and a
# private PostgreSQL cluster for the postgresql state backend: tests/pg/cluster.py
# runs initdb and pg_ctl from /usr/lib/postgresql/*/bin, as the postgres user
# through runuser (util-linux) when run as root, since initdb refuses root.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
apt_install xmlsec1 slapd ldap-utils chromium postgresql pgbouncer util-linux systemd prometheus \
  build-essential libldap-dev libsasl2-dev
make_venv test
npm_peer tests/peers/scimmy

echo "==> ruff"
.venv/bin/ruff check daemon plugins tests bench
echo "==> mypy --strict"
.venv/bin/mypy daemon plugins
echo "==> lint-imports (layering contracts in pyproject.toml)"
.venv/bin/lint-imports --no-cache --no-logo
echo "==> pytest"
# Two workers (pytest-xdist): most tests wait on subprocesses, servers and
# sockets, so two at once nearly halve the time even on two cores. The daemon
# process tests with short leases and kill deadlines share one worker, one
# after another (tests/conftest.py, SERIAL_PATHS). PYTEST_WORKERS=0 runs the
# suite in one process; arguments given here come after these and win.
.venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadgroup "$@"
