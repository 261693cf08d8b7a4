# make demo   - set up .venv (idempotent) and run the tiny CPU demo end to end
# make test   - set up .venv (idempotent) and run the test suite
# make bench  - CPU micro-benchmarks (kernels, rewards, data), ratios side by side
# make gpu-env - on a GPU node: install the CUDA extras (transformer-engine, sglang, DALI) instead
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-cpu
PIP_INSTALL := $(PY) -m pip install --disable-pip-version-check -q -c constraints/cpu.txt
DEMO_DIR ?= outputs/demo
export PYTHONWARNINGS ?= ignore
export OMP_NUM_THREADS ?= 1

.PHONY: env demo test test-fast bench gpu-env clean

env: $(STAMP)

$(STAMP): setup.py pyproject.toml constraints/cpu.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip setuptools wheel
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	bash examples/demo_cpu.sh $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --durations=15 tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" tests

bench: $(STAMP)
	$(PY) tools/bench_kernels.py --quick
	$(PY) tools/bench_rewards.py
	$(PY) tools/bench_data.py --dali-cpu

gpu-env:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -e ".[gpu,dev]"

clean:
	rm -rf $(VENV) outputs .pytest_cache
