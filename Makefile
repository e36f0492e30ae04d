# Quick start: `make run` (gateway + real Triton demo) and `make test` (the whole suite).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run test lint format bench services clean reliability

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --python $(BIN)/python --quiet -r requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --quiet --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)  ## install everything into .venv (leaves .venv/bin/maas)

services:  ## start local Postgres and Redis if they are not running
	bash scripts/ensure-services.sh

run: setup services  ## migrate, start Triton with demo models, create a demo tenant, serve
	bash scripts/run-demo.sh

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: setup services lint  ## lint, type-check and run every test against real services
	$(BIN)/pytest -q -p no:cacheprovider --durations=15

reliability: setup services  ## fault injection: Redis killed, Triton killed, SIGTERM under load
	$(BIN)/pytest -q -s -p no:cacheprovider tests/reliability

bench: setup services  ## side-by-side benchmark: direct Triton gRPC vs through the gateway
	$(BIN)/python -m bench.gateway_vs_triton

clean:
	rm -rf $(VENV) artifacts bench/results
