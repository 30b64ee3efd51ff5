# The two commands of the README, and the pieces they are made of.
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin

.PHONY: setup demo test lint format bench paper-study clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

## make demo: phantoms -> pretrain -> TL/FT -> drift report (embedded, no servers)
demo: setup
	$(BIN)/camdrift demo

## make test: lint, then the whole test suite (Postgres/Redis tests need them running)
test: setup lint
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup
	$(BIN)/python bench/attribution.py

## make paper-study: the paper's experiment on phantoms (docs/paper-study.md)
paper-study: setup
	$(BIN)/python bench/paper_study.py

clean:
	rm -rf var .pytest_cache .ruff_cache
