#!/usr/bin/env bash
# Builds the gateway image without a Docker daemon: buildah (Debian's package, put in
# once) with the Dockerfile as it is, on the base docker/make_base.sh makes (made once
# per machine). `make image-test` runs this, then starts and probes the image
# (tests/image). Prints the build time and the image's size.
#   docker/build.sh [IMAGE]    (root, or sudo; default lightgate/gateway:VERSION)
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE=${1:-lightgate/gateway:$VERSION}
BASE=localhost/lightgate-base:bookworm
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
LOG=.cache/image-build.log

if ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null; then
    echo "installing buildah and debootstrap (Debian packages, once)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends buildah debootstrap >/dev/null
fi
$SUDO docker/make_base.sh "$BASE"

mkdir -p .cache
start=$(date +%s)
echo "building $IMAGE on $BASE (llama.cpp compiles: several minutes; full log in $LOG)"
# --layers: a second build on the same machine reuses the llama.cpp layer.
# --format docker: the OCI format has no HEALTHCHECK.
if ! $SUDO buildah --storage-driver vfs bud --isolation chroot --layers --format docker \
        --build-arg BASE="$BASE" --build-arg VERSION="$VERSION" \
        --build-arg REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
        -f docker/gateway.Dockerfile -t "$IMAGE" . 2>&1 \
        | tee "$LOG" | awk '/STEP [0-9]+\/[0-9]+: (FROM|RUN|COPY)/ { print substr($0, 1, 120); fflush() }'; then
    tail -n 40 "$LOG"
    exit 1
fi
size=$($SUDO buildah --storage-driver vfs images --format '{{.Size}}' "$IMAGE")
echo "built $IMAGE in $(( $(date +%s) - start )) s: $size"
