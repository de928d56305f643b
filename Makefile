# The front door: `make run`, `make test`, `make lint`, `make bench`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python

.PHONY: run test lint format bench soak install dev clean

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

soak: dev
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache dispatcher.db
