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

.PHONY: setup run demo test test-fast test-deps lint bench train evaluate clean

setup: $(STAMP)

# torch goes in first, pinned: the CPU build unless there is a GPU, never a multi-GB CUDA build for nothing
$(STAMP): pyproject.toml setup.py app/wire/_json_reader.c scripts/install-torch.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	TORCH_VERSION=$(TORCH_VERSION) TORCH_CPU_INDEX=$(TORCH_CPU_INDEX) TORCH_BUILD=$(TORCH_BUILD) \
		sh scripts/install-torch.sh $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: setup
	$(BIN)/cpe serve $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

# the service with a simulated network of route groups streaming into it (tools/demo.py); prints the
# dashboard's address. `make demo PORT=8020` picks the port (default 8010); Ctrl-C stops both.
demo: setup
	$(BIN)/python -m tools.demo $(if $(PORT),--port $(PORT))

# the whole suite, with line coverage of app/ and models/ (fails under 90 %: pyproject's [tool.coverage])
test: setup test-deps
	$(BIN)/python -m pytest -q --cov --cov-report=term

# the unit tests only: no server processes, nothing slow, one worker process per core (under a minute).
# Bytecode is cached even where PYTHONDONTWRITEBYTECODE is set (as in the Dockerfile): otherwise every
# worker compiles the tests, the app and the pytest plugins' modules (their asserts rewritten) anew.
test-fast: setup
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q -n auto -m "not slow and not server and not browser"

# as root: apt-installs redis-server, promtool and nginx where missing; else the run says what it skips
test-deps:
	scripts/test-deps.sh

lint: setup
	$(BIN)/ruff check app models scripts tools tests
	$(BIN)/ruff format --check app models scripts tools tests
	$(BIN)/mypy app models

bench: setup
	$(BIN)/python -m tools.bench
	$(BIN)/python -m scripts.bench_observe

# the shipped checkpoints, reproduced in place: the epochs are those they were trained for (seeded,
# deterministic); `cpe train` without --replace-shipped writes to a new out/checkpoints/<time>/ instead.
# Each is then fine-tuned from those weights on traces with more ramps (README, Models: trained afresh on
# them, the models lost more on the held-out averages than they gained on ramps)
train: setup
	$(BIN)/cpe train --model lstm --epochs 10 --replace-shipped
	$(BIN)/cpe train --model lstm --init models/checkpoints/lstm.safetensors --ramps 1.5 --epochs 2 --lr 3e-4 \
		--replace-shipped
	$(BIN)/cpe train --model transformer --epochs 4 --replace-shipped
	$(BIN)/cpe train --model transformer --init models/checkpoints/transformer.safetensors --ramps 2 --epochs 2 \
		--lr 3e-4 --replace-shipped
	$(BIN)/cpe train --model hybrid --epochs 4 --replace-shipped
	$(BIN)/cpe train --model hybrid --init models/checkpoints/hybrid.safetensors --ramps 2 --epochs 4 \
		--lr 3e-4 --replace-shipped

evaluate: setup
	$(BIN)/cpe evaluate

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info .coverage
