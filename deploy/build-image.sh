#!/usr/bin/env bash
# Build deploy/Dockerfile without a Docker engine or a registry, and check the image loads the code location.
# Manual, as root, on a Debian or Ubuntu machine (not part of the suite: it downloads the locked packages, ~6 GB):
#
#   sudo deploy/build-image.sh            # builds vision-assets:local, then imports vision_assets.definitions in it
#
# The base is a Debian bookworm made here with debootstrap (from the Debian mirror), so no image registry is needed;
# bookworm's own Python 3.11 serves the project. Where a registry is reachable, build on the default CUDA base
# instead: `docker build -f deploy/Dockerfile .` (or `buildah bud`, with no --build-arg).
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${WORK:-/var/tmp/vision-assets-image}
# Behind a TLS-intercepting proxy, the folder of its CA certificates (*.crt): added to the base, for apt, pip and uv.
EXTRA_CA_DIR=${EXTRA_CA_DIR:-}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
TAG=${TAG:-vision-assets:local}
export STORAGE_DRIVER=${STORAGE_DRIVER:-vfs}  # overlay needs kernel support a sandbox may lack
export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}

if [ "$(id -u)" != 0 ]; then
  echo "build-image.sh: run it as root (debootstrap and buildah's chroot isolation need it)" >&2
  exit 2
fi
for tool in debootstrap buildah; do
  command -v "$tool" >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool" >/dev/null
done

mkdir -p "$WORK"
if [ ! -f "$WORK/rootfs.done" ]; then
  echo "== debootstrap bookworm into $WORK/rootfs"
  rm -rf "$WORK/rootfs"
  debootstrap --variant=minbase --include=ca-certificates bookworm "$WORK/rootfs" "$MIRROR"
  touch "$WORK/rootfs.done"
fi
if [ -n "$EXTRA_CA_DIR" ]; then
  cp "$EXTRA_CA_DIR"/*.crt "$WORK/rootfs/usr/local/share/ca-certificates/"
  chroot "$WORK/rootfs" update-ca-certificates >/dev/null
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$WORK/rootfs/etc/pip.conf"
  mkdir -p "$WORK/rootfs/etc/uv" && echo 'native-tls = true' > "$WORK/rootfs/etc/uv/uv.toml"
  buildah rmi --force localhost/debian-bookworm:base >/dev/null 2>&1 || true
fi
if ! buildah images --quiet localhost/debian-bookworm:base >/dev/null 2>&1; then
  echo "== the base image, from that folder"
  tar -C "$WORK/rootfs" -c . | buildah import - localhost/debian-bookworm:base 2>/dev/null \
    || { container=$(buildah from scratch); mount=$(buildah mount "$container")
         cp -a "$WORK/rootfs/." "$mount/"; buildah umount "$container"
         buildah commit --quiet "$container" localhost/debian-bookworm:base; buildah rm "$container" >/dev/null; }
fi

echo "== buildah bud -f deploy/Dockerfile (BASE_IMAGE=localhost/debian-bookworm:base)"
started=$(date +%s)
buildah bud --format docker --network host --layers --build-arg BASE_IMAGE=localhost/debian-bookworm:base \
  -f deploy/Dockerfile -t "$TAG" .
echo "built in $(( $(date +%s) - started )) s"
buildah images "$TAG"

echo "== import vision_assets.definitions inside the image"
container=$(buildah from "$TAG")
trap 'buildah rm "$container" >/dev/null' EXIT
buildah run --env VISION_ASSETS_DATA_DIR=/tmp/vision-assets "$container" -- \
  python -c "import vision_assets.definitions as d; print('definitions loaded:', len(list(d.defs.resolve_all_job_defs())), 'jobs')"
buildah run "$container" -- dagster --version
buildah run "$container" -- python -c "import dagster_k8s, dagster_postgres; print('dagster-k8s and dagster-postgres: ok')"
buildah run "$container" -- sh -c 'echo "runs as uid $(id -u); DAGSTER_HOME=$DAGSTER_HOME"; touch "$DAGSTER_HOME/.w" && echo "DAGSTER_HOME writable"'
buildah run "$container" -- vision-assets --help >/dev/null && echo "vision-assets CLI: ok"
