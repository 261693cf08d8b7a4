# make demo        - set up .venv from the lock (idempotent) and run the tiny CPU demo end to end
# make test         - set up .venv from the lock (idempotent), lint (ruff, rules in pyproject.toml), run the suite
# make test-fast    - the suite without the tests marked slow
# make lock         - on purpose only: resolve the newest allowed versions again, rewrite constraints/cpu.lock, run the suite
# make test-latest  - drift check (not in CI): a throwaway venv with the newest allowed versions runs `make test-fast`
# make bench        - CPU micro-benchmarks (kernels, rewards, data, GRPO step), ratios side by side
# make gpu-env      - on a GPU node: the CUDA stack from constraints/gpu.lock (prints what it installs)
# make bench-trl    - not in CI: TRL's GRPOTrainer (constraints/trl-cpu.lock, beside the venv) vs ours, 20 steps x 3 seeds
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-cpu
# Every package of the CPU venv, exact (pip freeze of a resolved venv); see the file's header.
LOCK := constraints/cpu.lock
# SGLang's own HTTP app for the rollout contract test (tests/rollout/test_sglang_contract.py), with
# --no-deps into a folder of its own that only the contract test's subprocess puts on its path.
SGLANG_LOCK := constraints/sglang-cpu.lock
SGLANG_DIR := $(VENV)/sglang-cpu
SGLANG_STAMP := $(SGLANG_DIR)/.installed
GPU_LOCK := constraints/gpu.lock
# TRL (setup.py's `trl` extra) for tools/bench_vs_trl.py only: --no-deps into a folder of its own that only the
# benchmark puts on its path, so .venv stays equal to the lock and `make test` never installs it.
TRL_LOCK := constraints/trl-cpu.lock
TRL_DIR := $(VENV)/trl-cpu
TRL_STAMP := $(TRL_DIR)/.installed
BENCH_TRL_ARGS ?= --sft-hf $(DEMO_DIR)/sft/hf --data $(DEMO_DIR)/data
export MMR1_SGLANG_CPU_DIR ?= $(abspath $(SGLANG_DIR))
PIP := $(PY) -m pip --disable-pip-version-check
LATEST_VENV := .venv-latest
DEMO_DIR ?= outputs/demo
export PYTHONWARNINGS ?= ignore
export OMP_NUM_THREADS ?= 1

.PHONY: env demo test test-fast test-latest lock lint bench bench-trl gpu-env clean

env: $(STAMP) $(SGLANG_STAMP)

# The venv is made to equal the lock: install it, remove anything not in it, then the project with --no-deps
# (--no-build-isolation: the editable build uses the locked setuptools, nothing is fetched for it).
$(STAMP): setup.py pyproject.toml $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $$(grep -E '^(pip|setuptools|wheel)==' $(LOCK))
	$(PIP) install -q -r $(LOCK)
	@extra=$$($(PIP) freeze --all --exclude-editable | cut -d= -f1 | sort | comm -23 - <(grep -v '^#' $(LOCK) | cut -d= -f1 | sort)); \
	if [ -n "$$extra" ]; then echo "env: removing packages not in $(LOCK):" $$extra; $(PIP) uninstall -q -y $$extra; fi
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PIP) check
	@touch $(STAMP)

$(SGLANG_STAMP): $(SGLANG_LOCK) | $(STAMP)
	$(PIP) install -q --no-deps --no-compile --upgrade --target $(SGLANG_DIR) -r $(SGLANG_LOCK)
	@touch $(SGLANG_STAMP)

$(TRL_STAMP): $(TRL_LOCK) | $(STAMP)
	$(PIP) install -q --no-deps --no-compile --upgrade --target $(TRL_DIR) -r $(TRL_LOCK)
	@touch $(TRL_STAMP)

# A throwaway venv with the newest versions that setup.py and constraints/cpu.txt (torch, triton) allow.
define build_latest_venv
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade pip setuptools wheel
	$(LATEST_VENV)/bin/python -m pip install -q -c constraints/cpu.txt torch
	$(LATEST_VENV)/bin/python -m pip install -q -c constraints/cpu.txt -e ".[dev]"
endef

lock:
	$(build_latest_venv)
	{ grep '^#' $(LOCK); $(LATEST_VENV)/bin/python -m pip freeze --all --exclude-editable; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf $(LATEST_VENV)
	git diff --stat -- $(LOCK) || true
	$(MAKE) test

test-latest:
	$(build_latest_venv)
	touch $(LATEST_VENV)/.installed-cpu
	@echo "test-latest: versions newer than $(LOCK):"
	@comm -13 <(grep -v '^#' $(LOCK) | sort) <($(LATEST_VENV)/bin/python -m pip freeze --all --exclude-editable | sort) | sed 's/^/  /'
	$(MAKE) test-fast VENV=$(LATEST_VENV) MMR1_SGLANG_CPU_DIR=$(abspath $(LATEST_VENV))/sglang-cpu

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

# the SFT policy and data of `make demo` (outputs/demo); smoke: make bench-trl BENCH_TRL_ARGS="... --quick"
bench-trl: $(STAMP) $(TRL_STAMP)
	PYTHONPATH=$(abspath $(TRL_DIR)) nice $(PY) tools/bench_vs_trl.py $(BENCH_TRL_ARGS)

# GPU nodes only (CUDA torch 2.14.1, Transformer Engine 2.11 for megatron-core 0.16.1, SGLang 0.5.23, DALI).
# transformer-engine-torch ships as source only: it is built against the installed torch, without build isolation.
gpu-env:
	@echo "gpu-env: installs into $(VENV) exactly these packages from $(GPU_LOCK):"
	@grep -v '^#' $(GPU_LOCK) | sed 's/^/  /'
	@echo "  then $$(grep -E '^# build: ' $(GPU_LOCK) | sed 's/^# build: //') (--no-build-isolation), then this project (--no-deps)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r $(GPU_LOCK)
	$(PIP) install -q --no-deps --no-build-isolation $$(grep -E '^# build: ' $(GPU_LOCK) | sed 's/^# build: //')
	$(PIP) install -q --no-deps --no-build-isolation -e .

clean:
	rm -rf $(VENV) $(LATEST_VENV) outputs .pytest_cache

# make gpu-wheels   - download tools/gpu_wheels.txt (what a bare CUDA Python 3.12 image lacks) into .whl/
# make gpu-check    - the one-shot GPU check, one summary line per check (docs/gpu.md); on a CPU:
#                     make gpu-check GPU_CHECK_ARGS=--dry-run
WHEEL_DIR ?= .whl
GPU_CHECK_ARGS ?=
.PHONY: gpu-wheels gpu-check

gpu-wheels:
	$(PYTHON) -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: --python-version 3.12 \
		--platform manylinux_2_28_x86_64 -r tools/gpu_wheels.txt -d $(WHEEL_DIR)
	@du -cb $(WHEEL_DIR)/*.whl | tail -1 | awk '{printf "gpu-wheels: %d wheels, %.1f MB in $(WHEEL_DIR)\n", '"$$(ls $(WHEEL_DIR)/*.whl | wc -l)"', $$1 / 1e6}'

gpu-check:
	bash tools/gpu_check.sh $(GPU_CHECK_ARGS)
