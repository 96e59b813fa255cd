# Two commands set a fresh machine up: `make demo` and `make test`. Everything else is optional.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# How `make up` runs Airflow: standalone, or celery (Redis, api-server, scheduler, dag-processor
# and two Celery workers, one per queue, on PostgreSQL): `make up EXECUTOR=celery`.
EXECUTOR ?= $(or $(BACKUP_AIRFLOW_EXECUTOR),standalone)

.DEFAULT_GOAL := help
.PHONY: help venv demo test unit dags integration faults lint fmt up down status bench docs lock clean

help:  ## list every target
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z]+):[^#]*## /  \1\t/' | expand -t 14

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check uv
	@$(VENV)/bin/uv pip install --quiet -p $(PY) -r requirements.txt -r requirements-dev.txt
	@touch $(STAMP)

venv: $(STAMP)  ## create the virtual environment from the pinned lock files

demo: $(STAMP)  ## run every platform tier on the embedded local stack and print a summary
	$(PY) -m local.demo

# Two workers, each with a local stack of its own (tests/conftest.py); a file stays on one.
TEST_WORKERS ?= 2

test: $(STAMP)  ## every test: unit, DAG, integration and faults (a local stack per worker)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

unit: $(STAMP)  ## unit tests only: pure functions, no services
	$(PY) -m pytest tests/unit

dags: $(STAMP)  ## DAG structure tests: parse every DAG, no services
	$(PY) -m pytest tests/dags

integration: $(STAMP)  ## integration tests against the local stack (started by the tests)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile tests/integration

faults: $(STAMP)  ## fault-injection tests (kills, outages, storms) against the local stack
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile tests/faults

lint: $(STAMP)  ## ruff (with Airflow's own AIR rules), hadolint and the import contracts (no circles, layers)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff check --select AIR --preview .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/lint-imports --no-logo --no-cache

fmt: $(STAMP)  ## fix what ruff can fix, and format
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

up: $(STAMP)  ## start the local stack and Airflow (UI on http://127.0.0.1:8080); EXECUTOR=celery
	BACKUP_AIRFLOW_EXECUTOR=$(EXECUTOR) $(PY) -m local.stack up --all

down: $(STAMP)  ## stop everything `up` or `demo` started
	$(PY) -m local.stack down --all

status: $(STAMP)  ## what of the local stack is running
	BACKUP_AIRFLOW_EXECUTOR=$(EXECUTOR) $(PY) -m local.stack status

# BENCH_ARGS, e.g. "--only platform,media --media-objects 10000" (python -m bench.run --help).
bench: $(STAMP)  ## benchmarks on a generated >= 1 GB database, results in bench/results/*.json
	$(PY) -m bench.run $(BENCH_ARGS)

docs: $(STAMP)  ## regenerate docs/benchmarks.md, capacity.md (from bench/results/) and cli.md
	$(PY) -m bench.docs

lock:  ## re-pin requirements*.txt from requirements*.in
	uv pip compile -q requirements.in -p 3.11 --no-header -o requirements.txt
	uv pip compile -q requirements-dev.in -p 3.11 --no-header -o requirements-dev.txt

clean: down  ## stop everything and delete the local state (.local)
	rm -rf .local
