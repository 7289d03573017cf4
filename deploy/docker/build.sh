#!/usr/bin/env bash
# `make image`: builds Forge's cpu image and the Prometheus image of the registry-less compose
# stack (deploy/docker-compose.local.yaml) on this machine. Settings (environment):
#   PYTHON_IMAGE  local (default): a Debian bookworm base with Debian's Python, built here by
#                 base-image.sh; or any pullable image, e.g. python:3.11-slim-bookworm
#   WHEELHOUSE    1 (default): fill deploy/docker/wheelhouse/ with this machine's pip first and
#                 install from it alone; 0: install from the index inside the build
#   EXTRA_CA      a PEM file pip inside the build trusts too (a TLS-inspecting proxy); given to
#                 the build as the BuildKit secret build_ca, so it stays out of every layer
#   FORGE_IMAGE, FORGE_TAG   the image's name and tag (forge-mesh, 0.1.0 → forge-mesh:0.1.0-cpu)
#   PYTHON        the Python 3.11 whose pip fills the wheelhouse (python3)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
image="${FORGE_IMAGE:-forge-mesh}:${FORGE_TAG:-0.1.0}-cpu"
prometheus_image="forge-prometheus:${FORGE_TAG:-0.1.0}"
python_image="${PYTHON_IMAGE:-local}"
started=$(date +%s)

docker=$("$here/engine.sh")
export DOCKER_BUILDKIT=1
if [[ $python_image == local ]]; then
  python_image=forge-base:bookworm-py3.11
  "$here/base-image.sh" "$python_image"
fi
if [[ ${WHEELHOUSE:-1} == 1 ]]; then
  "$here/wheelhouse.sh" "${PYTHON:-python3}"
fi
secret=()
if [[ -n ${EXTRA_CA:-} ]]; then
  [[ -s $EXTRA_CA ]] || { echo "build: EXTRA_CA=$EXTRA_CA is not a readable file" >&2; exit 1; }
  secret=(--secret "id=build_ca,src=$EXTRA_CA")
fi

build_started=$(date +%s)
"$docker" build --progress=plain -f "$root/deploy/docker/Dockerfile" --target cpu \
  --build-arg PYTHON_IMAGE="$python_image" "${secret[@]}" --label forge.image=mesh-cpu -t "$image" "$root"
forge_s=$(($(date +%s) - build_started))
# No context: the Dockerfile comes on stdin, so nothing of the repository is sent.
"$docker" build --progress=plain --build-arg BASE_IMAGE="$python_image" --label forge.image=prometheus \
  -t "$prometheus_image" - < "$here/Dockerfile.prometheus"
# The images these builds replaced (untagged now), and only those: 4 GB each otherwise.
"$docker" image prune -f --filter label=forge.image > /dev/null

size=$("$docker" image inspect --format '{{.Size}}' "$image")
echo "image: $image built in ${forge_s} s ($((size / 1024 / 1024)) MiB); $prometheus_image too;" \
  "$(($(date +%s) - started)) s in all"
