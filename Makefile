# Every target does its own set-up: a fresh clone needs only `make run` or `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# the CPU build's index; TORCH_BUILD=cpu|default overrides the choice of build (scripts/install-torch.sh)
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_BUILD ?=
# `make run HOST=0.0.0.0 PORT=8010`; left empty, cpe serve takes CPE_HOST and CPE_PORT (127.0.0.1:8000)
HOST   ?=
PORT   ?=
STAMP  := $(VENV)/.installed

.PHONY: setup run test lint bench train evaluate clean

setup: $(STAMP)

# torch goes in first, pinned: the CPU build unless there is a GPU, never a multi-GB CUDA build for nothing
$(STAMP): pyproject.toml setup.py app/_fastjson.c scripts/install-torch.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	TORCH_VERSION=$(TORCH_VERSION) TORCH_CPU_INDEX=$(TORCH_CPU_INDEX) TORCH_BUILD=$(TORCH_BUILD) \
		sh scripts/install-torch.sh $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: setup
	$(BIN)/cpe serve $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check app models scripts tests
	$(BIN)/ruff format --check app models scripts tests
	$(BIN)/mypy app models

bench: setup
	$(BIN)/python scripts/bench.py

# the shipped checkpoints, reproduced: the epochs are those they were trained for (seeded, deterministic)
train: setup
	$(BIN)/cpe train --model lstm --epochs 3
	$(BIN)/cpe train --model transformer --epochs 1
	$(BIN)/cpe train --model hybrid --epochs 1

evaluate: setup
	$(BIN)/cpe evaluate

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
