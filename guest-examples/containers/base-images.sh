#!/usr/bin/env bash
# Makes the base images the container examples build FROM available on the local Docker engine.
# Tries the registry first (`docker pull`); where none answers (an air-gapped machine), builds the
# image locally from Debian's package mirror with debootstrap. Idempotent: an image already on the
# engine is left alone.
#   guest-examples/containers/base-images.sh
set -euo pipefail

image="debian:bookworm-slim"
if docker image inspect "$image" >/dev/null 2>&1; then
  exit 0
fi
echo "==> $image is not on the engine; trying docker pull" >&2
if timeout 60 docker pull -q "$image" >/dev/null 2>&1; then
  exit 0
fi
echo "==> no registry answers; building $image with debootstrap (a few minutes, once)" >&2
if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
  echo "error: building $image needs root (debootstrap); run this script as root" >&2
  exit 1
fi
if ! command -v debootstrap >/dev/null; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq debootstrap >/dev/null
fi
rootfs="$(mktemp -d)"
trap '$sudo rm -rf "$rootfs"' EXIT
$sudo debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
# What the slim image drops: package lists and caches.
$sudo rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
$sudo tar -C "$rootfs" -c . | docker import -c 'CMD ["bash"]' - "$image" >/dev/null
echo "==> built $image" >&2
