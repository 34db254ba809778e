#!/usr/bin/env bash
# The GPU record: on a machine with an NVIDIA GPU, start llmspool with a GPU worker, run the
# engine's end-to-end tests, benchmark llmspool against the same engine served without it at
# concurrency 1, 32 and 128, and write docs/gpu.md and docs/gpu.json (also into $OUT when set).
#
#   bash scripts/gpu-check.sh                 # on the GPU machine (well under 8 minutes)
#   bash scripts/gpu-check.sh --cpu-dry-run   # the same flow on the CPU, smaller, written to
#                                             # bench/results/gpu-dry-run/ (docs/ untouched)
#
# The engine is vLLM where it can be had: already importable, or installed with pip
# ('.[vllm,openai]' into ~/.cache/llmspool/venv-gpu) where PyPI answers. Otherwise it falls back
# to the transformers backend on CUDA and says so in the record. Without network, run
# scripts/gpu-carry.sh beforehand on a machine that has it, and carry .whl/ (Python wheels for
# CPython 3.12) and .debs/ (Debian's redis-server) with the checkout; torch and transformers must
# already be on that machine. The model is GPU_CHECK_MODEL (a directory), else a small instruct
# model already in the Hugging Face cache, else the tiny Llama the tests build; nothing is
# downloaded. Without a GPU (and without --cpu-dry-run) it refuses and exits 3.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
START=$(date +%s)
log() { printf '[gpu-check %4ss] %s\n' "$(($(date +%s) - START))" "$*"; }
die() { printf 'gpu-check: %s\n' "$*" >&2; exit "${2:-1}"; }

DRY=0
case "${1:-}" in
  --cpu-dry-run) DRY=1 ;;
  "") ;;
  *) die "unknown argument '$1' (the only one is --cpu-dry-run)" 2 ;;
esac
[ "${GPU_CHECK_CPU_DRY_RUN:-0}" = 1 ] && DRY=1
NVIDIA_SMI="${NVIDIA_SMI:-nvidia-smi}"

# ---------------------------------------------------------------- 1. a GPU, or a clear refusal
if [ "$DRY" = 0 ]; then
  gpus="$("$NVIDIA_SMI" -L 2>/dev/null || true)"
  if ! grep -q '^GPU ' <<<"$gpus"; then
    die "no NVIDIA GPU here ('$NVIDIA_SMI -L' lists none). This script records llmspool on a GPU
(docs/gpu.md); run it on a machine with one, or rehearse the flow on the CPU with --cpu-dry-run." 3
  fi
  log "GPU: $(head -1 <<<"$gpus")"
fi

WORK="${GPU_CHECK_WORKDIR:-$(mktemp -d /tmp/llmspool-gpu.XXXXXX)}"
mkdir -p "$WORK"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false VLLM_NO_USAGE_STATS=1
log "work directory $WORK"

# ---------------------------------------------------------------- 2. Python and the engine
has() { "$1" -c "import $2" >/dev/null 2>&1; }
PY=""
for candidate in "${PYTHON:-}" "$ROOT/.venv/bin/python" python3 /opt/torch/.venv/bin/python3; do
  [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 || continue
  if has "$candidate" "torch, transformers"; then PY="$(command -v "$candidate")"; break; fi
done
[ -n "$PY" ] || die "no Python with torch and transformers found (set PYTHON=...)"
log "python: $PY"

SITE="$WORK/site"
export PYTHONPATH="$ROOT/src:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
NOTE=""
BACKEND=transformers
network() { timeout 10 "$1" -m pip download -q --no-deps --retries 0 --timeout 5 -d "$WORK/probe" six >/dev/null 2>&1; }

install_vllm() {
  # A venv of its own: vLLM pins its own torch.
  local venv="${GPU_VENV:-$HOME/.cache/llmspool/venv-gpu}"
  test -x "$venv/bin/python" || "$PY" -m venv "$venv"
  "$venv/bin/python" -m pip install -q -e "$ROOT[vllm,openai]" pytest pytest-asyncio \
    pytest-timeout aiohttp tokenizers && PY="$venv/bin/python"
}

install_wheels() {
  if "$PY" -m pip --version >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --target "$SITE" .whl/*.whl
  else  # a venv made without pip (uv's): these wheels are zips of what goes on the path
    mkdir -p "$SITE"
    for wheel in .whl/*.whl; do "$PY" -m zipfile -e "$wheel" "$SITE"; done
  fi
}

WANT="${GPU_CHECK_BACKEND:-auto}"  # auto, vllm or transformers
if [ "$WANT" = transformers ]; then
  NOTE="The transformers backend was asked for (GPU_CHECK_BACKEND=transformers)."
elif has "$PY" vllm && { [ "$DRY" = 0 ] || [ "$WANT" = vllm ]; }; then
  BACKEND=vllm
elif [ "$DRY" = 0 ] && network "$PY"; then
  log "installing the vllm extra (pip, a few minutes)"
  if install_vllm && has "$PY" vllm; then BACKEND=vllm; else NOTE="vLLM failed to install here."; fi
elif [ "$DRY" = 0 ]; then
  NOTE="vLLM is not installed on this machine and could not be: it has no network (its CUDA wheel, hundreds of MB, cannot be carried in)."
fi

missing="$("$PY" - <<'PY'
import importlib.util
names = ["fastapi", "uvicorn", "redis", "arq", "openai", "pydantic_settings", "pytest", "aiohttp",
         "pytest_timeout", "pytest_asyncio", "orjson", "httptools", "multipart", "tokenizers"]
print(" ".join(n for n in names if importlib.util.find_spec(n) is None))
PY
)"
if [ -n "$missing" ]; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    log "installing the carried wheels (.whl) into $SITE (missing here: $missing)"
    install_wheels
  elif network "$PY"; then
    log "installing llmspool's dependencies into $SITE (missing here: $missing)"
    "$PY" -m pip install -q --target "$SITE" "$ROOT[openai]" pytest pytest-asyncio \
      pytest-timeout aiohttp tokenizers
    rm -rf "$SITE"/llmspool "$SITE"/llmspool-*  # llmspool itself comes from src/
  else
    die "missing here: $missing; no network and no .whl/ (run scripts/gpu-carry.sh where there is network and carry .whl/ and .debs/)"
  fi
  export PYTHONPATH="$SITE:$PYTHONPATH"
fi
log "engine: $BACKEND${NOTE:+ ($NOTE)}"

# ---------------------------------------------------------------- 3. redis-server
unpack_deb() {
  if command -v dpkg >/dev/null 2>&1; then dpkg -x "$1" "$2"; return; fi
  "$PY" - "$1" "$2" <<'PY'  # no dpkg: a .deb is an ar archive holding data.tar.*
import io, sys, tarfile
raw = open(sys.argv[1], "rb").read()
at = 8  # after "!<arch>\n"
while at < len(raw):
    name, size = raw[at:at + 16].strip().decode(), int(raw[at + 48:at + 58])
    if name.startswith("data.tar"):
        tarfile.open(fileobj=io.BytesIO(raw[at + 60:at + 60 + size])).extractall(sys.argv[2])
    at += 60 + size + size % 2
PY
}
redis_ok() { redis-server --version 2>/dev/null | grep -q 'v=[7-9]'; }
# GPU_CHECK_CARRIED_REDIS=1: the carried one even where another is installed (a rehearsal)
if [ "${GPU_CHECK_CARRIED_REDIS:-0}" = 1 ] || ! redis_ok; then
  compgen -G ".debs/*.deb" >/dev/null || die "no redis-server >= 7 here and no .debs/ to unpack one from"
  mkdir -p "$WORK/redis-root" "$WORK/bin"
  for deb in .debs/*.deb; do unpack_deb "$deb" "$WORK/redis-root"; done
  for tool in redis-server redis-cli; do
    real="$WORK/redis-root/usr/bin/$tool"  # not resolved: redis picks its mode by its name
    printf '#!/bin/sh\nLD_LIBRARY_PATH="%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "%s" "$@"\n' \
      "$WORK/redis-root/usr/lib/x86_64-linux-gnu" "$real" > "$WORK/bin/$tool"
    chmod +x "$WORK/bin/$tool"
  done
  export PATH="$WORK/bin:$PATH"
  redis_ok || die "the carried redis-server does not run here: $(redis-server --version 2>&1 | head -3)"
fi
log "$(redis-server --version | cut -d' ' -f1-3)"

# ---------------------------------------------------------------- 4. the model
MODEL="${GPU_CHECK_MODEL:-}"
if [ -z "$MODEL" ] && [ "$DRY" = 0 ]; then
  MODEL="$("$PY" -c 'from bench.gpu import cached_model; print(cached_model() or "")')"
fi
if [ -z "$MODEL" ]; then
  MODEL="$WORK/tiny-llama"
  "$PY" -c 'import sys; from pathlib import Path; from tests.tiny_model import build_tiny_llama
build_tiny_llama(Path(sys.argv[1]))' "$MODEL" 2>&1 | grep -v -i warn || true
fi
log "model: $MODEL"

# ---------------------------------------------------------------- 5. tests, then the benchmark
if [ "$DRY" = 1 ]; then
  DEVICE=cpu DTYPE=float32 LEVELS="${GPU_CHECK_LEVELS:-1,4}" WINDOW=3 TOKENS=16 LIMITS=(900 600)
  # one torch thread per generation: on a small shared CPU, two spin-waiting threads made one
  # tiny-model generation 20 times slower
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
  DESTS=(--write "$ROOT/bench/results/gpu-dry-run")
else
  # time limits (s) of the tests and of the benchmark: the whole run stays under 8 minutes
  DEVICE=cuda DTYPE=bfloat16 LEVELS="${GPU_CHECK_LEVELS:-1,32,128}" WINDOW=8 TOKENS=64 LIMITS=(180 210)
  DESTS=(--write "$ROOT/docs")
fi
[ -n "${OUT:-}" ] && DESTS+=(--write "$OUT")

TESTS=(tests/test_vllm_e2e.py tests/test_backend_contract.py)
MARK="$([ "$BACKEND" = vllm ] && echo vllm || echo torch)"  # the engine's tests, by marker
TESTS_RC=0
if [ "${GPU_CHECK_SKIP_TESTS:-0}" = 1 ]; then  # a rehearsal of the benchmark alone
  echo "(skipped: GPU_CHECK_SKIP_TESTS=1)" > "$WORK/tests.txt"
else
  log "end-to-end tests on $BACKEND ($DEVICE)"
  set +e
  # SIGINT at the limit: pytest then stops the processes its fixtures started
  LLMSPOOL_TEST_TORCH_DEVICE="$DEVICE" timeout -s INT -k 30 "${GPU_CHECK_TEST_TIMEOUT:-${LIMITS[0]}}" \
    "$PY" -m pytest -p no:cacheprovider -q -rfEs --timeout=600 --basetemp "$WORK/pytest" \
    -m "$MARK" "${TESTS[@]}" \
    > "$WORK/tests.log" 2>&1
  TESTS_RC=$?
  set -e
  { echo "pytest -m $MARK ${TESTS[*]} (device $DEVICE): exit $TESTS_RC"
    grep -E '^(FAILED|ERROR|SKIPPED)|(passed|failed|error|skipped)( in |,)|^\[' "$WORK/tests.log" | tail -15
  } > "$WORK/tests.txt"
fi
cat "$WORK/tests.txt"

log "benchmark: llmspool vs the engine without it, concurrency $LEVELS"
set +e
timeout -s INT -k 30 "${GPU_CHECK_BENCH_TIMEOUT:-${LIMITS[1]}}" "$PY" -m bench.gpu --backend "$BACKEND" --model "$MODEL" \
  --device "$DEVICE" --dtype "$DTYPE" --levels "$LEVELS" --window "$WINDOW" --tokens "$TOKENS" \
  --note "$NOTE" --tests-summary "$WORK/tests.txt" --workdir "$WORK/bench" "${DESTS[@]}"
BENCH_RC=$?
set -e

if [ -n "${OUT:-}" ]; then  # the logs, for a run that went wrong
  mkdir -p "$OUT/logs"
  cp "$WORK/tests.log" "$OUT/logs/" 2>/dev/null || true
  find "$WORK/bench" -maxdepth 1 -name '*.log' -size -2M -exec cp {} "$OUT/logs/" \; 2>/dev/null || true
  # the API and worker logs of the end-to-end tests, one folder per test module's stack
  (cd "$WORK" && find pytest -name '*.log' -size -2M -exec cp --parents {} "$OUT/logs/" \;) \
    2>/dev/null || true
fi
log "done: tests exit $TESTS_RC, benchmark exit $BENCH_RC"
[ "$TESTS_RC" = 0 ] && [ "$BENCH_RC" = 0 ]
