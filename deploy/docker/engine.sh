#!/usr/bin/env bash
# Makes sure a Docker engine answers, then prints the docker client that builds with BuildKit
# (the Dockerfile mounts the wheelhouse and the CA secret, which the legacy builder cannot).
#
# On a Debian machine with no engine running and root to install one (the kind this project is
# built on), it installs Debian's docker.io, docker-compose and debootstrap and starts dockerd in
# the background (log: /var/log/forge-dockerd.log) with its default storage driver, overlay2.
# Where overlayfs cannot be mounted (inside some containers) it starts it again with vfs, which
# works anywhere but copies every layer in full: Forge's image then takes about 8 GB of disk per
# container. FORGE_DOCKERD_STORAGE_DRIVER names the driver outright.
set -euo pipefail

say() { echo "engine: $*" >&2; }

if ! docker info > /dev/null 2>&1; then
  if [[ $(id -u) != 0 ]] || ! command -v apt-get > /dev/null; then
    say "no Docker engine answers, and this is not a Debian machine with root to start one"
    exit 1
  fi
  missing=()
  command -v dockerd > /dev/null || missing+=(docker.io)
  command -v docker-compose > /dev/null || docker compose version > /dev/null 2>&1 || missing+=(docker-compose)
  command -v debootstrap > /dev/null || missing+=(debootstrap)
  if ((${#missing[@]})); then
    say "installing ${missing[*]} from Debian"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" > /var/log/forge-engine-apt.log 2>&1 \
      || { apt-get update -q > /dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" \
           > /var/log/forge-engine-apt.log 2>&1; } \
      || { tail -20 /var/log/forge-engine-apt.log >&2; exit 1; }
  fi
  answers() {
    for _ in $(seq 1 "$1"); do
      docker info > /dev/null 2>&1 && return 0
      sleep 0.5
    done
    return 1
  }
  start_dockerd() {
    say "starting dockerd${1:+ --storage-driver=$1} (log: /var/log/forge-dockerd.log)"
    setsid dockerd ${1:+--storage-driver="$1"} >> /var/log/forge-dockerd.log 2>&1 < /dev/null &
  }
  if ! pgrep -x dockerd > /dev/null; then
    start_dockerd "${FORGE_DOCKERD_STORAGE_DRIVER:-}"
    if [[ -z ${FORGE_DOCKERD_STORAGE_DRIVER:-} ]] && ! answers 60; then
      say "dockerd did not start with its default storage driver; trying vfs (about 8 GB per container)"
      pkill -x dockerd || true
      sleep 2
      start_dockerd vfs
    fi
  fi
  answers 120 || { say "dockerd did not answer:"; tail -20 /var/log/forge-dockerd.log >&2; exit 1; }
fi

# A client with the buildx plugin builds with BuildKit; without it, Docker 23 and newer refuse
# DOCKER_BUILDKIT=1, while Debian's 20.10 client has BuildKit built in.
if docker buildx version > /dev/null 2>&1; then
  command -v docker
  exit 0
fi
for client in $(type -ap docker); do
  major=$("$client" version --format '{{.Client.Version}}' 2> /dev/null | cut -d. -f1 || true)
  if [[ -n $major && $major -le 22 ]]; then
    echo "$client"
    exit 0
  fi
done
say "no docker client here builds with BuildKit: install the buildx plugin (docker-buildx)"
exit 1
