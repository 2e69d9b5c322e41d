# Every target does its own set-up: a fresh clone needs only `make run` or `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
STAMP  := $(VENV)/.installed

.PHONY: setup run test lint bench train evaluate clean

setup: $(STAMP)

# torch goes in first, pinned, so that pip never reaches for a multi-GB CUDA build.
$(STAMP): pyproject.toml setup.py app/_fastjson.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: setup
	$(BIN)/cpe serve

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check app models scripts tests
	$(BIN)/ruff format --check app models scripts tests
	$(BIN)/mypy app models

bench: setup
	$(BIN)/python scripts/bench.py
	$(BIN)/python -m scripts.bench_observe

# the shipped checkpoints, reproduced: the epochs are those they were trained for (seeded, deterministic)
train: setup
	$(BIN)/cpe train --model lstm --epochs 3
	$(BIN)/cpe train --model transformer --epochs 1
	$(BIN)/cpe train --model hybrid --epochs 1

evaluate: setup
	$(BIN)/cpe evaluate

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
