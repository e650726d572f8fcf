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

clean:
	rm -rf runs data/demo
