# Two commands a new user needs: `make demo` and `make test`. Both build the virtual
# environment themselves, from the pinned versions in constraints.txt.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export MLFLOW_DISABLE_TELEMETRY := true
export PYTHONHASHSEED := 0

.PHONY: install test test-all lint format demo bench clean-runs

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,sweeps]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The default suite: everything but tests marked `slow` (kept under 10 minutes on 2 cores).
test: lint
	$(PY) -m pytest -m "not slow"

test-all: lint
	$(PY) -m pytest

# The end-to-end demo study on the embedded defaults (synthetic cohort, local MLflow store).
demo: $(STAMP)
	$(PY) -m backdoor_study.demo

bench: $(STAMP)
	$(PY) benchmarks/data_generation.py
	$(PY) benchmarks/physionet_parse.py
	$(PY) benchmarks/train_throughput.py

clean-runs:
	rm -rf runs/*/ demo_runs/
