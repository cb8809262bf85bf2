# Concierge: `make help` lists the targets. `run` and `test` set up .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help run demo test test-all lint fmt typecheck bench migration clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

run: $(STAMP) ## set up, migrate, seed the demo property, serve on http://127.0.0.1:8000
	$(BIN)/concierge migrate
	$(BIN)/concierge demo
	$(BIN)/concierge serve --host 127.0.0.1 --port 8000

demo: $(STAMP) ## play the whole journey against a throwaway server and print each step
	$(BIN)/concierge demo --story

test: $(STAMP) ## set up and run lint, type checks and the whole test suite
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -n 2

test-all: $(STAMP) ## the whole suite with every module also on PostgreSQL (slower)
	TEST_ALL_DATABASES=1 $(BIN)/pytest -n 2

lint: $(STAMP) ## ruff lint + format check + mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: $(STAMP) ## format and fix what ruff can
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP) ## run the benchmarks (JSON on stdout)
	$(BIN)/python -m bench

migration: $(STAMP) ## autogenerate a migration: make migration m="what changed"
	$(BIN)/alembic revision --autogenerate -m "$(m)"

clean: ## remove the virtualenv and local state
	rm -rf $(VENV) var
