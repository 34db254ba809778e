#!/usr/bin/env bash
# Make sure a redis-server >= 7 is on PATH: install Debian's with apt-get where it is missing
# and that is possible, otherwise say how to get one.
set -euo pipefail

version_ok() {
  local v
  v=$(redis-server --version 2>/dev/null | sed -n 's/.* v=\([0-9]*\)\..*/\1/p')
  [ -n "$v" ] && [ "$v" -ge 7 ]
}

if command -v redis-server >/dev/null 2>&1 && version_ok; then
  exit 0
fi

if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; fi
  fi
  if [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; then
    echo "redis-server >= 7 not found: installing Debian's redis-server with apt-get"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server redis-tools >/dev/null
    if version_ok; then exit 0; fi
  fi
fi

cat >&2 <<'MSG'
llmspool needs redis-server >= 7.0 on PATH, and it could not be installed here.
Install it yourself, e.g.:
  sudo apt-get install redis-server      # Debian / Ubuntu
  brew install redis                     # macOS
or run a Redis elsewhere and set LLMSPOOL_REDIS_URL=redis://HOST:6379/0
MSG
exit 1
