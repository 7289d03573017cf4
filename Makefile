# Two commands do all the set-up on a fresh machine:
#   make up    install (CPU build) and run the mesh (forge up, profile cpu)
#   make test  install (CPU build + dev tools) and run lint, types and the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= cpu,dev

.PHONY: up test lint typecheck pytest bench protos clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall when the dependency list changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

up: $(VENV)/.installed
	$(BIN)/forge up

lint: $(VENV)/.installed
	$(BIN)/ruff check services tests tools bench
	$(BIN)/ruff format --check services tests tools bench

typecheck: $(VENV)/.installed
	$(BIN)/mypy

pytest: $(VENV)/.installed
	$(BIN)/python -m pytest

test: lint typecheck pytest

bench: $(VENV)/.installed
	$(BIN)/python bench/embed_batching.py

protos: $(VENV)/.installed
	$(BIN)/python tools/gen_protos.py
	$(BIN)/buf format -w
	$(BIN)/buf lint

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
