# clcore: `make install` then `make test`. VENV may point at a cached environment (CI does).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
UV := $(BIN)/uv

.PHONY: install test test-fast lint format run docs bench bench-replay clean

install:  ## venv + editable install with every extra and the dev tools (bytecode compiled: start-up 26 s -> 6 s where PYTHONDONTWRITEBYTECODE is set)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv
	$(UV) pip install --compile-bytecode --python $(BIN)/python -e ".[dev]"

test:  ## the whole test suite
	$(BIN)/python -m pytest tests

test-fast:  ## unit tests only (no end-to-end runs)
	$(BIN)/python -m pytest tests -m "not slow"

lint:
	$(BIN)/ruff check src tests experiments scripts docs/examples
	$(BIN)/ruff format --check src tests experiments scripts docs/examples

format:
	$(BIN)/ruff check --fix src tests experiments scripts docs/examples
	$(BIN)/ruff format src tests experiments scripts docs/examples

run:  ## the offline default experiment (override with ARGS="experiment=hat_pmnist ...")
	$(BIN)/clrun $(ARGS)

docs:  ## documentation site into site/ (equations typeset by the MathJax that the docs extra installs: no CDN)
	$(BIN)/mkdocs build --strict

bench:  ## the clrun commands as users type them: each default's cost, a hand-written loop, start-up, a replay step against a plain one (experiments/benchmarks/, ~35 min)
	$(BIN)/python experiments/benchmarks/bench.py
	$(BIN)/python experiments/benchmarks/replay_step.py --root data/mnist-from-test

bench-replay:  ## only the replay step against a plain step (~3 min)
	$(BIN)/python experiments/benchmarks/replay_step.py --root data/mnist-from-test

.PHONY: bench-peers
bench-peers:  ## opt-in: clrun side by side with CLArena 1.1.0 and Avalanche 0.6 (own venvs in ~/.cache/clcore-peers)
	bash experiments/benchmarks/peers/setup.sh
	$(BIN)/python experiments/benchmarks/peers/run_peers.py

clean:
	rm -rf outputs multirun site .pytest_cache .ruff_cache
