#!/usr/bin/env bash
# Builds a Debian bookworm base image with Python 3.11 from Debian's packages alone, for machines
# that reach a Debian mirror and a Python package index but no image registry (`make image`
# uses it unless PYTHON_IMAGE names a pullable image such as python:3.11-slim-bookworm).
#
#   base-image.sh NAME [MIRROR]
#
# debootstrap lays down a minimal bookworm with python3 and the runtime libraries Forge's image
# needs (libgomp1 and libnuma1 for torch and vLLM's CPU build); `docker import` turns the folder
# into an image. Needs root and debootstrap (`apt-get install debootstrap`).
set -euo pipefail

name="${1:?usage: base-image.sh NAME [MIRROR]}"
mirror="${2:-http://deb.debian.org/debian}"
packages=python3,python3-venv,libgomp1,libnuma1,ca-certificates

if docker image inspect "$name" > /dev/null 2>&1; then
  echo "base-image: $name is already built (docker rmi $name to rebuild)"
  exit 0
fi
command -v debootstrap > /dev/null || {
  echo "base-image: debootstrap is missing (apt-get install debootstrap)" >&2
  exit 1
}
rootfs=$(mktemp -d /var/tmp/forge-base.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
started=$(date +%s)
debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" "$mirror" > "$rootfs.log" 2>&1 || {
  tail -20 "$rootfs.log" >&2
  exit 1
}
rm -f "$rootfs.log"
# The package lists and caches are not needed in an image; the next apt-get update brings them.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
tar --numeric-owner -C "$rootfs" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' - "$name" > /dev/null
echo "base-image: $name built from Debian bookworm ($packages) in $(($(date +%s) - started)) s"
