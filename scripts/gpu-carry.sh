#!/usr/bin/env bash
# Download here what scripts/gpu-check.sh needs on a GPU machine that has no network: llmspool's
# Python dependencies and the test tools as CPython 3.12 manylinux wheels in .whl/, and Debian's
# redis-server with its libraries in .debs/ (both git-ignored; ~25 MB together). Carry both
# folders to that machine with the checkout; torch and transformers must already be there.
#
#   bash scripts/gpu-carry.sh            # download
#   bash scripts/gpu-carry.sh --verify   # and check them here: install into a throwaway
#                                        # python3.12 target, serve one request end to end
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY_VERSION="${GPU_PY_VERSION:-3.12}"
# The versions this checkout is tested with: a local venv's, when there is one.
PIN_FROM="${PIN_FROM:-$ROOT/.venv/bin/python}"

REQUIREMENTS=(
  "fastapi" "uvicorn[standard]" "redis[hiredis]>=5.0,<6" "arq>=0.26,<0.29" "python-multipart" "pydantic"
  "pydantic-settings" "typer" "rich" "orjson" "httpx" "prometheus-client" "pyyaml" "uvloop"
  "openai" "pytest" "pytest-asyncio" "pytest-timeout" "aiohttp"
)
DEBS=(redis-server redis-tools libjemalloc2 liblzf1 libatomic1 libssl3)

download_wheels() {
  rm -rf .whl && mkdir -p .whl
  local constraints=()
  if [ -x "$PIN_FROM" ]; then
    "$PIN_FROM" -m pip freeze --exclude-editable | grep -v '^-e ' > .whl/.constraints.txt
    constraints=(-c .whl/.constraints.txt)
  fi
  python3 -m pip download -q --only-binary=:all: --python-version "$PY_VERSION" \
    --implementation cp --abi "cp${PY_VERSION/./}" --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any \
    "${constraints[@]}" -d .whl "${REQUIREMENTS[@]}"
  rm -f .whl/.constraints.txt
}

download_debs() {
  rm -rf .debs && mkdir -p .debs
  (cd .debs && apt-get download "${DEBS[@]}" >/dev/null)
}

verify() {
  # A python3.12 without torch: the API and a worker of the fake engine, from the wheels alone.
  local py site work
  py="$(command -v "python$PY_VERSION" || true)"
  if [ -z "$py" ] || ! "$py" -c 'import sys' 2>/dev/null; then
    if command -v pyenv >/dev/null; then
      py="$(PYENV_VERSION="$(pyenv versions --bare | grep "^$PY_VERSION" | tail -1)" pyenv which python)"
    fi
  fi
  [ -n "$py" ] || { echo "no python$PY_VERSION here to verify with" >&2; return 1; }
  work="$(mktemp -d)"
  site="$work/site"
  "$py" -m pip install -q --no-index --no-deps --target "$site" .whl/*.whl
  mkdir -p "$work/root"
  for deb in .debs/*.deb; do dpkg -x "$deb" "$work/root"; done
  PATH="$work/root/usr/bin:$PATH" LD_LIBRARY_PATH="$work/root/usr/lib/x86_64-linux-gnu" \
    PYTHONPATH="$site:$ROOT/src:$ROOT" "$py" "$ROOT/scripts/gpu_carry_verify.py" "$work"
  rm -rf "$work"
}

download_wheels
download_debs
echo "carry: .whl $(du -sh .whl | cut -f1) ($(ls .whl | wc -l) wheels), .debs $(du -sh .debs | cut -f1)"
if [ "${1:-}" = "--verify" ]; then
  verify
fi
