# s2-sam-pipelines: one entry point for set-up, tests and the main job.
#   make test   set up .venv (first time) and run lint, type checks and the test suite
#   make run    set up .venv (first time) and run the main job

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= cpu,export,dev
STAMP  := $(VENV)/.installed-$(EXTRAS)

.PHONY: install test lint typecheck unit format run compile clean

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

# The main job: auto_segment_s2 over a small farm area, summer 2024, on this machine
# (kfp.local). Exports and registers the official vit_b model on the first run.
run: $(STAMP)
	$(BIN)/s2sam run auto-segment-s2 --geometry examples/farm.geojson \
		--start-date 2024-06-01 --end-date 2024-08-31 --ensure-model \
		--output-dir out/auto_segment_s2

compile: $(STAMP)
	$(BIN)/s2sam compile

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.egg-info
