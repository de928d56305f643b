# The front door: `make run`, `make test`, `make lint`, `make bench`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python

.PHONY: run test lint format bench bench-registry soak install dev clean

$(BIN)/dispatcher: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.dev: $(BIN)/dispatcher
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/dispatcher
dev: $(VENV)/.dev

## Start the dispatcher on SQLite with the demo tenant `hello`: curl http://hello.localhost:8080/
run: install
	$(PY) -m examples.demo

## Run the whole test suite (unit, integration on loopback, real Postgres).
test: dev
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

## ruff (lint + format check) and mypy --strict.
lint: dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## Load benchmark vs nginx, Caddy and the uvicorn floor (bench/); BENCH_ARGS=--quick to smoke-test.
bench: dev
	$(PY) -m bench $(BENCH_ARGS)

## The registry at platform scale (bench/registry.py): 100k workers, 1M domains, 2 processes,
## churn at 10 changes/s; BENCH_ARGS=--workers 2000 --domains 20000 to smoke-test.
bench-registry: dev
	$(PY) -m bench.registry $(BENCH_ARGS)

soak: dev
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache dispatcher.db
