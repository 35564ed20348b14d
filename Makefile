# Every target is a thin call of the CLI (python -m pipeline) inside .venv; `make help` lists them.
SHELL := /bin/bash
# The checkout this Makefile is in: `make -f /path/to/Makefile ...` works from another folder
# (the commands then keep their store, mlruns/, in that folder).
ROOT := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
PYTHON ?= python3
VENV ?= $(ROOT)/.venv
PY := $(VENV)/bin/python
SPACE ?= search_spaces/default.yaml
# The torch build to install first. This pin takes a CPU wheel where one is at hand (as on our
# machines); elsewhere add e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu (CPU only) or
# TORCH_INDEX=https://download.pytorch.org/whl/cu128 (CUDA), see README.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
ARGS ?=
# The registered model the registry targets work on: default.yaml registers digits-mlp.
MODEL ?= digits-mlp
ALIAS ?= champion
# make predict: without INPUT, the champion's own held-out test rows (written to TEST_ROWS).
INPUT ?=
TEST_ROWS ?= mlruns/$(MODEL)-test-rows.csv
OUTPUT ?= mlruns/$(MODEL)-predictions.csv
PORT ?= 5001
UI_PORT ?= 5000
# make schedule: the time of day (this machine's) of each night.
AT ?= 02:00

.DEFAULT_GOAL := help
.PHONY: help install install-dev install-cluster install-server tune nightly history schedule unschedule report sweeps retrain promote rollback predict serve test test-fast lint \
	bench-cli bench-data bench-overhead bench-peer bench-quality bench-scale bench-tables ui mlflow-server clean

# The settings above (NAME ?= default), which a help text names as $(NAME): help shows their
# values, e.g. `make help PORT=8000` the port `make serve PORT=8000` would take.
HELP_SETTINGS = $(filter-out ARGS,$(shell sed -nE 's/^([A-Z_]+) \?=.*/\1/p' $(MAKEFILE_LIST)))

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
	$(foreach v,$(HELP_SETTINGS),$(v)='$($(v))') awk -F':.*## ' -v settings='$(HELP_SETTINGS)' \
	'{ n = split(settings, name, " "); \
	   for (i = 1; i <= n; i++) gsub("[$$][(]" name[i] "[)]", ENVIRON[name[i]], $$2); \
	   printf "  make %-16s %s\n", $$1, $$2 }'

$(VENV)/.installed: $(ROOT)/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e $(ROOT)
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -q -e '$(ROOT)[dev]'
	touch $@

$(VENV)/.installed-%: $(VENV)/.installed
	$(PY) -m pip install -q -e '$(ROOT)[$*]'
	touch $@

install: $(VENV)/.installed ## Create .venv and install the pipeline

install-dev: $(VENV)/.installed-dev ## Install the pipeline with test and lint tools

install-cluster: $(VENV)/.installed-cluster ## Install for a Ray node: Ray's dashboard, boto3 (ray up)

install-server: $(VENV)/.installed-server ## Install the tracking server's extras (basic auth, psycopg, boto3)

# What the tests need from the system comes from Debian's packages, never from a download at
# run time: $(call APT_INSTALL,packages) installs them (sudo where not root). Without apt-get it
# says what to install instead, and the tests that need it skip, saying why.
APT_INSTALL = command -v apt-get >/dev/null || \
	{ echo "make: no apt-get here: install $(1) yourself (until then their tests skip)"; exit 0; }; \
	sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	$$sudo apt-get install -y -q $(1) >/dev/null 2>&1 || \
	{ $$sudo apt-get update -q >/dev/null && $$sudo apt-get install -y -q $(1) >/dev/null; }

.PHONY: install-browser install-cron image-envs
install-browser: ## Install the UI test's browser: Debian's chromium and chromium-driver, if missing
	@test -x /usr/bin/chromium && test -x /usr/bin/chromedriver || { $(call APT_INSTALL,chromium chromium-driver); }

install-cron: ## Install cron's crontab (the scheduling test's), if missing
	@command -v crontab >/dev/null || { $(call APT_INSTALL,cron); }

image-envs: install-dev ## Build the images' package sets as venvs in .venv-images (the deploy tests run them)
	$(PY) -m tests.image_envs

# An example whose folder holds a prepare.py writes its data with it first (once).
PREPARE = $(wildcard $(dir $(SPACE))prepare.py)

tune: install ## Sweep, retrain, register: [SPACE=search_spaces/x.yaml] [RAY_ADDRESS=head:6380] [ARGS=..]
	$(if $(PREPARE),$(PY) $(PREPARE))
	$(PY) -m pipeline tune --space $(SPACE) $(ARGS)

nightly: install ## One night: retune, retrain, register, promote if better [SPACE=..] [ARGS='--date D']
	$(if $(PREPARE),$(PY) $(PREPARE))
	$(PY) -m pipeline nightly --space $(SPACE) $(ARGS)

history: install ## The model's last nights: trials, scores, decisions [MODEL=..]
	$(PY) -m pipeline history --model $(MODEL) $(ARGS)

schedule: install ## Run `make nightly` every day at AT with cron [SPACE=..] [AT=02:00]
	$(PY) -m pipeline schedule --space $(SPACE) --at $(AT)

unschedule: install ## Remove the cron line of `make schedule` [SPACE=..]
	$(PY) -m pipeline unschedule --space $(SPACE)

report: install ## The latest sweep's report (HTML + PNGs on its parent run): [EXPERIMENT=..] [ARGS='--output r.html']
	$(PY) -m pipeline report --experiment $(or $(EXPERIMENT),$(MODEL)) $(ARGS)

sweeps: install ## The experiment's sweeps: trials, best, version, decision [EXPERIMENT=..] [ARGS='--format csv']
	$(PY) -m pipeline sweeps --experiment $(or $(EXPERIMENT),$(MODEL)) $(ARGS)

retrain: install ## Retrain the latest sweep's best trial: make retrain EXPERIMENT=digits-mlp
	$(PY) -m pipeline retrain --experiment $(or $(EXPERIMENT),$(MODEL)) $(ARGS)

promote: install ## Make the challenger champion if it beats the champion: [MODEL=..] [ARGS='--min-delta 0.005']
	$(PY) -m pipeline promote --model $(MODEL) $(ARGS)

rollback: install ## Give champion back to the previous champion
	$(PY) -m pipeline rollback --model $(MODEL) $(ARGS)

predict: install ## Predict with the champion: [INPUT=rows.csv|x.npy|images/] [OUTPUT=..]
ifeq ($(strip $(INPUT)),)
	$(PY) -m pipeline export-test-rows --model $(MODEL) --alias $(ALIAS) --output $(TEST_ROWS)
	$(PY) -m pipeline predict --model $(MODEL) --alias $(ALIAS) --input $(TEST_ROWS) --output $(OUTPUT) $(ARGS)
else
	$(PY) -m pipeline predict --model $(MODEL) --alias $(ALIAS) --input $(INPUT) --output $(OUTPUT) $(ARGS)
endif

serve: install ## Serve the champion ($(MODEL)@$(ALIAS)) on http://127.0.0.1:$(PORT)/invocations
	$(PY) -m pipeline serve --model $(MODEL) --alias $(ALIAS) --port $(PORT) $(ARGS)

# Three workers on two cores: each end-to-end module (an xdist group of its own, tests/conftest.py)
# runs on one worker, beside the others; one module's start-ups and waits leave room for another's
# work (four workers slowed every test by a quarter: 17:08 against 15:45). The groups go out
# longest first (tests/conftest.py's order, which --no-loadscope-reorder keeps). The images'
# venvs (make image-envs) are built by the tests that run them, once, while the other modules
# run: built first, they held a fresh clone's test run 100 s longer. One torch thread per test
# process and per command it starts (Ray gives each trial its own CPUs' worth anyway): with
# torch's default, one per core, the workers' threads fought over the two cores
# (tests/test_train.py on three workers: 37 s of CPU, 22 s with one thread).
TEST_ENV = OMP_NUM_THREADS=1
test: install-dev install-browser install-cron ## Run the whole test suite (end-to-end tests included) on 3 workers
	$(TEST_ENV) $(PY) -m pytest -q -n 3 --dist loadgroup --no-loadscope-reorder --durations=25 $(ARGS)

test-fast: install-dev ## Run the tests that need no end-to-end sweep (under 4 minutes)
	$(TEST_ENV) $(PY) -m pytest -q -n 2 -m "not slow" --durations=10 $(ARGS)

lint: install-dev ## ruff, mypy and the import contracts (layers, one door per outside system)
	$(VENV)/bin/ruff check pipeline tests benchmarks deploy examples
	$(VENV)/bin/ruff format --check pipeline tests benchmarks deploy examples
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench-cli: install ## Benchmark: seconds of --help, promote, rollback, predict (median of 5)
	$(PY) benchmarks/cli.py $(ARGS)

bench-data: install ## Benchmark: peak RSS of the driver and a trial worker tuning an image folder and one 10x its size
	$(PY) benchmarks/data.py $(ARGS)

bench-overhead: install ## Benchmark: sweep efficiency and MLflow share, realistic and tiny sweeps
	$(PY) benchmarks/overhead.py $(ARGS)

bench-peer: install ## Benchmark: tune against a plain in-process Optuna script on the same job (5 interleaved pairs, medians)
	$(PY) -m pip install -q -e '$(ROOT)[bench]'
	$(PY) benchmarks/peer.py $(ARGS)

bench-quality: install ## Benchmark: registered model's test accuracy vs its selection score, TPE vs random, ASHA vs FIFO (tens of minutes)
	$(PY) benchmarks/quality.py $(ARGS)

bench-tables: install ## Benchmark: a 50,000-row CSV with text columns and gaps, loaded and tuned end to end: load time, driver peak RSS
	$(PY) benchmarks/tables.py $(ARGS)

bench-scale: install ## Benchmark: 1,000 one-epoch trials: bookkeeping per trial, MLflow share, driver memory
	$(PY) benchmarks/scale.py $(ARGS)

ui: install ## MLflow UI on http://127.0.0.1:$(UI_PORT) (or where MLFLOW_TRACKING_URI's server is)
	$(PY) -m pipeline ui --port $(UI_PORT) $(ARGS)

mlflow-server: install-server ## Tracking server: MLFLOW_BACKEND_STORE_URI=postgresql://... [MLFLOW_SERVER_PORT=5000]
	$(PY) -m pipeline mlflow-server $(ARGS)

clean: ## Remove the local MLflow store and Ray trial state (keeps .venv)
	rm -rf mlruns/mlflow.db mlruns/mlflow.db-wal mlruns/mlflow.db-shm mlruns/artifacts mlruns/ray mlruns/*.csv
