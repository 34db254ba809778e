#!/usr/bin/env bash
# Make sure an etcd server is on PATH for the tests of the etcd registry: install Debian's
# etcd-server (and etcdctl) with apt-get where it is missing and that is possible. Never fails:
# without one, those tests skip and say why.
set -uo pipefail

if command -v etcd >/dev/null 2>&1; then
  exit 0
fi

if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  fi
  if [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; then
    echo "etcd not found: installing Debian's etcd-server with apt-get (for the registry tests)"
    # The package's service is not started: the tests start their own server on a free port.
    packages=(etcd-server etcd-client)
    if DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${packages[@]}" >/dev/null 2>&1 || {
      $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${packages[@]}" >/dev/null
    }; then
      exit 0
    fi
  fi
fi

echo "etcd could not be installed here: the etcd registry's tests will be skipped" >&2
echo "(install it yourself, e.g. 'sudo apt-get install etcd-server', to run them)" >&2
exit 0
