# The two commands of the README, plus what they need.
#   make demo   install, generate the demo sample, run the one-touch flow
#   make test   install, run the tests, ruff (format check and lint), mypy
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install serve stop clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tau3mu demo

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy analysis/

test: $(STAMP)
	$(BIN)/python -m pytest
	$(MAKE) lint

# Prefect server (UI on http://127.0.0.1:4200), work pool, deployments and a
# worker; run history in .prefect/prefect.db. See docs/operations.md.
serve: $(STAMP)
	TAU3MU_VENV_BIN=$(abspath $(BIN)) deployments/serve.sh

stop:
	deployments/stop.sh

clean:
	rm -rf runs data/demo
