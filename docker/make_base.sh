#!/usr/bin/env bash
# Makes the base image CI builds Lightgate's images on: Debian bookworm with its
# Python 3.11, the same Debian and Python as the public python:3.11-slim the
# Dockerfiles name by default, made from Debian packages because no container
# registry is reachable from CI (buildah, no daemon; docs/deploy.md).
# Made once per machine: buildah's own storage keeps it between runs.
#   docker/make_base.sh [IMAGE]     (as root; default localhost/lightgate-base:bookworm)
set -euo pipefail
IMAGE=${1:-localhost/lightgate-base:bookworm}
BUILDAH=(buildah --storage-driver vfs)

if "${BUILDAH[@]}" inspect --type image "$IMAGE" >/dev/null 2>&1; then
    echo "base image $IMAGE: already made"
    exit 0
fi
start=$(date +%s)
root=$(mktemp -d /var/tmp/lightgate-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
# minbase: dpkg, apt and essentials only; python3-venv brings ensurepip, which the
# build stage's `python3 -m venv` needs (python:3.11-slim has it built in).
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" >/dev/null
# Like Debian's official images: no package lists, downloaded packages or apt's
# binary caches left behind, then or after any later apt-get in a RUN step.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
cat > "$root"/etc/apt/apt.conf.d/docker-clean <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
# The base trusts what the building machine trusts: where egress goes through a
# proxy with its own certificate authority, pip inside the build must accept it.
# pip reads its own bundle unless PIP_CERT names the system's.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root"/usr/local/share/ca-certificates/
    chroot "$root" update-ca-certificates >/dev/null 2>&1
fi
ctr=$("${BUILDAH[@]}" from scratch)
"${BUILDAH[@]}" copy "$ctr" "$root" / >/dev/null
"${BUILDAH[@]}" config --env LANG=C.UTF-8 \
    --env PIP_CERT=/etc/ssl/certs/ca-certificates.crt --cmd python3 \
    --label org.opencontainers.image.description="Debian bookworm minbase with python3, made by docker/make_base.sh" "$ctr"
"${BUILDAH[@]}" commit --quiet "$ctr" "$IMAGE" >/dev/null
"${BUILDAH[@]}" rm "$ctr" >/dev/null
echo "base image $IMAGE: made in $(( $(date +%s) - start )) s"
