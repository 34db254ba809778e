# llmspool: `make serve` runs the system, `make test` tests it. Both install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

# llama-cpp-python compiles llama.cpp from source: build only the library, portable AVX2 code.
# pip's wheel cache keeps the result, so only the first install on a machine pays (minutes).
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
  -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DLLAMA_HTTPLIB=OFF
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: install redis browser etcd serve test lint typecheck pytest bench bench-quick chaos clean test-vllm

install: redis $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@echo "installing llmspool (the first build of llama-cpp-python takes several minutes)"
	$(BIN)/python -m pip install -q -e '.[llamacpp,torch,openai,etcd,dev,test]'
	$(BIN)/llmspool prepare
	@touch $@

redis:
	@bash scripts/ensure-redis.sh

# The console's browser tests drive Debian's chromium; without one they skip and say why.
browser:
	@bash scripts/ensure-chromium.sh

# The etcd registry's tests start Debian's etcd; without one they skip and say why.
etcd:
	@bash scripts/ensure-etcd.sh

serve: install
	$(BIN)/llmspool serve

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	PYTHONPATH=$(CURDIR)/src $(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy --strict src

pytest: install browser etcd
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

# Benchmarks (bench/): `make bench` writes bench/report.md and bench/plots/ (~15 min);
# `make bench-quick` a smaller run under bench/results/quick/ (~3 min).
LITELLM_VENV := bench/.venvs/litellm
LITELLM_VERSION := 1.108.7

$(LITELLM_VENV)/bin/litellm:
	@echo "installing LiteLLM $(LITELLM_VERSION) in its own venv (a few minutes, once)"
	$(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/pip install -q 'litellm[proxy]==$(LITELLM_VERSION)'

$(VENV)/.bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[llamacpp,dev,bench]'
	@touch $@

bench: $(VENV)/.bench redis $(LITELLM_VENV)/bin/litellm
	PYTHONPATH=$(CURDIR)/src $(BIN)/python -m bench --profile full

bench-quick: $(VENV)/.bench redis $(LITELLM_VENV)/bin/litellm
	PYTHONPATH=$(CURDIR)/src $(BIN)/python -m bench --profile quick

# vLLM's CPU build in its own cached virtualenv (first time ~6 min, 3.5 GB), then the backend
# contract suite, the vllm backend's own tests and the end-to-end tests (the real API, Redis and
# a vllm worker process) on a tiny model the tests build.
VLLM_VENV ?= $(HOME)/.cache/llmspool/venv-vllm
test-vllm: redis
	VLLM_VENV=$(VLLM_VENV) PYTHON=$(PYTHON) bash scripts/ensure-vllm-venv.sh
	PYTHONPATH=$(CURDIR)/src VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-1} \
	  $(VLLM_VENV)/bin/python -m pytest -p no:cacheprovider --timeout=900 \
	  -k 'vllm and not transformers' tests/test_backend_contract.py tests/test_vllm_mapping.py \
	  tests/test_vllm_e2e.py $(PYTEST_ARGS)

# Mixed traffic for CHAOS_SECONDS while workers are killed and Redis restarts; lost must be 0.
CHAOS_SECONDS ?= 60
chaos: install
	PYTHONPATH=$(CURDIR)/src $(BIN)/python -m bench.chaos --duration $(CHAOS_SECONDS) --write docs/chaos.md

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
