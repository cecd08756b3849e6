# Two commands on a fresh machine: `make demo` and `make test` (both build .venv first).
# `make docs` builds the documentation site into site/.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-all bench lint docs clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv with the pinned dependencies

demo: $(STAMP)  ## generate data, train ~3 min on the CPU, tune, evaluate, predict
	$(BIN)/rcnnlab demo

test: $(STAMP)  ## the layering contracts, then the tests (not slow-marked; they build the docs)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(STAMP)  ## every test, including the slow ones
	$(BIN)/python -m pytest -q

bench: $(STAMP)  ## speed / memory figures (printed, never asserted)
	$(BIN)/python benchmarks/bench_models.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_coco_eval.py --images 10000

docs: $(STAMP)  ## the documentation site into site/, warnings as errors (`mkdocs serve` to edit)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) runs data/synth site .pytest_cache .ruff_cache
