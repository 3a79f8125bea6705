# Every target sets up its own virtual environment (.venv) on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo dashboard test test-slow test-fast test-integration test-faults test-bench lint bench check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[web,test,lint]"
	touch $(STAMP)

## demo: embedded default (SQLite, in-process worker, synthetic projects); prints the run summary
demo: $(STAMP)
	$(BIN)/orchestration demo

## dashboard: the demo, then its dashboard at http://127.0.0.1:8800/ (Ctrl-C stops it;
## the demo's run is partial on purpose, which is no error of make's)
dashboard: $(STAMP)
	-$(BIN)/orchestration demo --with-failure --web

## test: the whole suite but the fault-injection suite, the benchmarks' smoke tests and the
## slow scenarios (.ci/run runs those after it); server tests skip with a hint unless CI=true
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not faults and not bench" $(PYTEST_ARGS)

## test-slow: crash recovery with the production defaults (minutes per scenario)
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

## test-fast: everything that needs no external server
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not integration" $(PYTEST_ARGS)

## test-integration: only the PostgreSQL/Redis suite
test-integration: $(STAMP)
	$(BIN)/python -m pytest -m integration $(PYTEST_ARGS)

## test-faults: only the fault-injection suite (real processes, injected crashes)
test-faults: $(STAMP)
	$(BIN)/python -m pytest -m "faults and not slow" $(PYTEST_ARGS)

## test-bench: every benchmark script at tiny sizes (their output holds; no timing asserted)
test-bench: $(STAMP)
	$(BIN)/python -m pytest -m "bench" $(PYTEST_ARGS)

## lint: ruff's checks and formatting, mypy over the package, tests and bench, and the
## layering of the package (import-linter); all configured in pyproject.toml
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

## bench: the benchmarks at modest sizes (see docs/benchmarks.md for the large ones)
bench: $(STAMP)
	$(BIN)/python bench/consolidation.py --sizes 1000,10000
	$(BIN)/python bench/orchestration.py --sizes 100,1000
	$(BIN)/python bench/eligibility.py --projects 2000 --memories 200000
	$(BIN)/python bench/night.py --projects 12 --max 6000
	$(BIN)/python bench/quality.py

## check: models and migrations agree (alembic check) on a scratch SQLite database
check: $(STAMP)
	rm -f var/check.db
	ORCHESTRATION_DATABASE_URL=sqlite:///var/check.db $(BIN)/alembic upgrade head
	ORCHESTRATION_DATABASE_URL=sqlite:///var/check.db $(BIN)/alembic check

clean:
	rm -rf $(VENV) var .pytest_cache *.egg-info
