# Sourced by demo.sh and test.sh: install Debian packages and the virtualenv.
# Safe to run again: it installs only what is missing.

# Run as root (CI, containers) or through sudo.
if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi

# apt_install PKG...: install the Debian packages that are not installed yet.
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "==> installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -q
  # policy-rc.d keeps packaged services (slapd, postgresql) from starting:
  # the tests start private instances of their own.
  local policy=/usr/sbin/policy-rc.d created=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod +x "$policy"
    created=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
  [ -n "$created" ] && $SUDO rm -f "$policy"
  return 0
}

# pick_python: a Python >= 3.11 with venv support.
pick_python() {
  local py
  for py in python3.11 python3; do
    if command -v "$py" >/dev/null 2>&1 \
       && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      PYTHON=$py
      break
    fi
  done
  if [ -z "${PYTHON:-}" ]; then
    apt_install python3 python3-venv
    PYTHON=python3
  fi
  if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    apt_install python3-venv
  fi
  # Headers for the packages that build from source (python-ldap).
  if ! "$PYTHON" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
    apt_install python3-dev
  fi
}

# make_venv EXTRAS: create .venv (once) and install provisiond with EXTRAS into it.
make_venv() {
  pick_python
  if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv with $PYTHON"
    "$PYTHON" -m venv .venv
  fi
  echo "==> installing provisiond[$1] into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[$1]"
}

# npm_peer DIR: install a Node.js test peer's npm packages (npm ci, from its
# package-lock.json) when node_modules is missing or was installed from another
# lock. Node.js and npm come from Debian when their commands are missing (a
# NodeSource nodejs already brings npm; Debian's npm would conflict with it).
npm_peer() {
  local dir=$1 stamp="$1/node_modules/.provisiond-lock.sha256" digest
  command -v node >/dev/null 2>&1 || apt_install nodejs
  command -v npm >/dev/null 2>&1 || apt_install npm
  digest=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ]; then
    return 0
  fi
  echo "==> installing the npm packages of $dir"
  rm -f "$stamp"
  npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error
  echo "$digest" >"$stamp"
}
