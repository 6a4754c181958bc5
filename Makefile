# The two entry commands (README): `make demo` and `make test`. Both set up .venv first if needed.
VENV ?= .venv
PY := $(VENV)/bin/python
# torchrun (TorchX local_cwd, distributed tests) must be on PATH.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup demo test test-fast lint format clean

setup:
	@bash tools/setup_env.sh

demo: setup
	$(VENV)/bin/torchrec-aes search configs/quickstart.yaml --run-dir runs/quickstart
	@echo "Results: runs/quickstart (report.md, architecture.yaml, plan.json, metrics.json, tb/)"

# One intra-op thread per process: these models are tiny, and extra threads thrash 2 busy cores.
test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) tests

# The unit tier alone, in-process, for the developer loop (65 s measured on 2 shared cores).
test-fast: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) tests/unit

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

clean:
	rm -rf runs .pytest_cache
