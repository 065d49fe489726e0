# The two commands of the README: `make up` (install + run everything), `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install up test lint bench schemas clean

$(BIN)/relay: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/relay

install: $(BIN)/relay

up: install
	$(BIN)/relay up

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

test: install lint
	$(BIN)/pytest -q tests/unit
	$(BIN)/pytest -q tests/integration

schemas: install
	$(BIN)/python -m schemas.generate

bench: install
	$(BIN)/python -m bench.overhead

clean:
	rm -rf var .pytest_cache
