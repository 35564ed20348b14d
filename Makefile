# Every target is a thin call of the CLI (python -m pipeline) inside .venv; `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SPACE ?= search_spaces/default.yaml
# The torch build to install first. This pin takes a CPU wheel where one is at hand (as on our
# machines); elsewhere add e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu (CPU only) or
# TORCH_INDEX=https://download.pytorch.org/whl/cu128 (CUDA), see README.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install install-dev tune test test-fast lint bench-overhead ui clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed ## Create .venv and install the pipeline

install-dev: $(VENV)/.installed-dev ## Install the pipeline with test and lint tools

tune: install ## Run a sweep: make tune [SPACE=search_spaces/x.yaml] [ARGS='--set budget.num_samples=8']
	$(PY) -m pipeline tune --space $(SPACE) $(ARGS)

test: install-dev ## Run the whole test suite (slow tests included)
	$(PY) -m pytest -q $(ARGS)

test-fast: install-dev ## Run the tests without the slow (Ray / MLflow end-to-end) ones
	$(PY) -m pytest -q -m "not slow" $(ARGS)

lint: install-dev ## ruff and mypy
	$(VENV)/bin/ruff check pipeline tests benchmarks
	$(VENV)/bin/ruff format --check pipeline tests benchmarks
	$(VENV)/bin/mypy

bench-overhead: install ## Benchmark: sweep efficiency and MLflow share, realistic and tiny sweeps
	$(PY) benchmarks/overhead.py $(ARGS)

ui: install ## MLflow UI over the local store on http://127.0.0.1:5000
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --host 127.0.0.1 --port 5000

clean: ## Remove the local MLflow store and Ray trial state (keeps .venv)
	rm -rf mlruns/mlflow.db mlruns/artifacts mlruns/ray
