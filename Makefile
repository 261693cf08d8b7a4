# make demo   - set up .venv (idempotent) and run the tiny CPU demo end to end
# make test   - set up .venv (idempotent), lint (ruff, rules in pyproject.toml), run the test suite
# make bench  - CPU micro-benchmarks (kernels, rewards, data, GRPO step), ratios side by side
# make gpu-env - on a GPU node: install the CUDA extras (transformer-engine, sglang, DALI) instead
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-cpu
# SGLang's own HTTP app for the rollout contract test (tests/rollout/test_sglang_contract.py): the
# pinned wheel and the small pure-Python modules its app imports, with --no-deps into a folder of
# their own (~185 MB) that only the contract test's subprocess puts on its path.
SGLANG_DIR := $(VENV)/sglang-cpu
SGLANG_STAMP := $(SGLANG_DIR)/.installed
SGLANG_CPU_PKGS := sglang==0.5.23 pybase64==1.5.1 msgspec==0.23.0 pyzmq==27.3.0 \
	uvloop==0.23.0 dill==0.4.1 apache-tvm-ffi==0.1.11 sentencepiece==0.2.1 compressed-tensors==0.18.0 \
	loguru==0.7.3 gguf==0.19.0 openai==2.8.0 httpx==0.28.1 httpcore==1.0.9 h11==0.16.0 jiter==0.19.0 \
	distro==1.9.0 sniffio==1.3.1 partial-json-parser==0.2.1.1.post7 jsonschema==4.26.0 \
	jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 xgrammar==0.2.7 \
	soundfile==0.13.1 cffi==2.1.1 pycparser==3.12 python-multipart==0.0.34
export MMR1_SGLANG_CPU_DIR ?= $(abspath $(SGLANG_DIR))
PIP_INSTALL := $(PY) -m pip install --disable-pip-version-check -q -c constraints/cpu.txt
DEMO_DIR ?= outputs/demo
export PYTHONWARNINGS ?= ignore
export OMP_NUM_THREADS ?= 1

.PHONY: env demo test test-fast lint bench gpu-env clean

env: $(STAMP) $(SGLANG_STAMP)

$(STAMP): setup.py pyproject.toml constraints/cpu.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip setuptools wheel
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e ".[dev]"
	@touch $(STAMP)

$(SGLANG_STAMP): Makefile | $(STAMP)
	$(PY) -m pip install --disable-pip-version-check -q --no-deps --no-compile --upgrade --target $(SGLANG_DIR) $(SGLANG_CPU_PKGS)
	@touch $(SGLANG_STAMP)

demo: $(STAMP)
	bash examples/demo_cpu.sh $(DEMO_DIR)

test: $(STAMP) $(SGLANG_STAMP) lint
	$(PY) -m pytest -q -p no:cacheprovider --durations=15 tests

lint: $(STAMP)
	$(PY) -m ruff check .

test-fast: $(STAMP) $(SGLANG_STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" tests

bench: $(STAMP)
	$(PY) tools/bench_kernels.py --quick
	$(PY) tools/bench_rewards.py
	$(PY) tools/bench_data.py --dali-cpu
	$(PY) tools/bench_step.py --quick

gpu-env:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -e ".[gpu,dev]"

clean:
	rm -rf $(VENV) outputs .pytest_cache
