#!/usr/bin/env bash
# Make sure a chromium is on PATH for the console's browser tests: install Debian's with apt-get
# where it is missing and that is possible. Never fails: without one, those tests skip and say why.
# Playwright drives this executable; `playwright install` (which downloads browsers) is never run.
set -uo pipefail

if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi

if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  fi
  if [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; then
    echo "chromium not found: installing Debian's chromium with apt-get (for the console tests)"
    if DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null 2>&1 || {
      $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
    }; then
      exit 0
    fi
  fi
fi

echo "chromium could not be installed here: the console's browser tests will be skipped" >&2
echo "(install it yourself, e.g. 'sudo apt-get install chromium', to run them)" >&2
exit 0
