# s2-sam-pipelines: one entry point for set-up, tests and the main job.
#   make test   set up .venv (first time) and run lint, type checks and the test suite
#   make run    set up .venv (first time) and run the main job

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= cpu,export,dev
STAMP  := $(VENV)/.installed-$(EXTRAS)

.PHONY: install test lint typecheck unit format run clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

test: lint typecheck unit

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

run: $(STAMP)
	@echo "The main job (s2sam run auto-segment-s2: Planetary Computer ingest -> SAM -> merge)" >&2
	@echo "is not built yet: it arrives with the pipelines issue. Built so far: the pure core" >&2
	@echo "in components/ (chips, prompts, radiometry, amg, merge, vectorize) and 's2sam --version'." >&2
	@exit 1

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.egg-info
