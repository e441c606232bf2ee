#!/usr/bin/env bash
# Build the stowplan operator and agent images from operator/Dockerfile and agent/Dockerfile with
# buildah (Debian's package, daemonless), offline except for PyPI:
#   1. a Python base image from Debian packages (debootstrap minbase + python3, python3-venv),
#      passed as BASE_IMAGE instead of the public python:3.11-slim a user's build pulls;
#   2. `buildah bud` of both Dockerfiles (host network, chroot isolation: no bridge, no
#      ip_forward in the root namespace);
#   3. OCI archives that `ctr images import` loads into the node's containerd.
# Everything is cached outside the repo; an image is rebuilt only when its inputs change (a hash
# of the Dockerfile, pyproject.toml and src/; README.md only feeds the package metadata).
# Usage: tools/build-images.sh   -> prints the directory holding base.tar, operator.tar, agent.tar
# Env:   IMAGES_DIR (default ~/.cache/stowplan/images), IMAGE_TAG (default dev)
# Callers: scripts/test (node tests), `stowplan cluster up`.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
OUT=${IMAGES_DIR:-$HOME/.cache/stowplan/images}
TAG=${IMAGE_TAG:-dev}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE=localhost/stowplan/python-base:bookworm
mkdir -p "$OUT"
b() { buildah --storage-driver=overlay "$@"; }

if [ ! -s "$OUT/base-rootfs.tar" ]; then
  start=$SECONDS
  root=$(mktemp -d "$OUT/rootfs.XXXX")
  debootstrap --variant=minbase --include=python3-minimal,python3,python3-venv,ca-certificates \
    bookworm "$root" "$MIRROR" > "$OUT/debootstrap.log" 2>&1 \
    || { tail -20 "$OUT/debootstrap.log" >&2; rm -rf "$root"; exit 1; }
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/locale/* "$root"/var/log/*
  tar -C "$root" --numeric-owner -cf "$OUT/base-rootfs.tar.tmp" .
  rm -rf "$root"
  mv "$OUT/base-rootfs.tar.tmp" "$OUT/base-rootfs.tar"
  echo "built the Debian python base rootfs in $((SECONDS - start)) s" >&2
fi
if ! b inspect --type image "$BASE" >/dev/null 2>&1; then
  c=$(b from scratch)
  b add "$c" "$OUT/base-rootfs.tar" / >/dev/null
  b config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd python3 "$c"
  b commit --quiet "$c" "$BASE" >/dev/null
  b rm "$c" >/dev/null
fi

inputs_hash() {  # hash of what goes into an image
  (cd "$repo" && { cat "$1" pyproject.toml; git ls-files -z src | sort -z \
    | xargs -0 cat; } | sha256sum | cut -c1-16)
}

# PyPI is reached through whatever CA the host's pip trusts (a TLS-inspecting proxy's, here)
ca=${PIP_CERT:-$(sed -n 's/^cert *= *//p' /etc/pip.conf 2>/dev/null | head -1)}
ca_args=()
if [ -n "$ca" ] && [ -f "$ca" ]; then
  ca_args=(--volume "$ca:/run/stowplan-build-ca.crt:ro" --build-arg PIP_CERT=/run/stowplan-build-ca.crt)
fi

for name in operator agent; do
  h=$(inputs_hash "$name/Dockerfile")
  if [ -s "$OUT/$name.tar" ] && [ "$(cat "$OUT/$name.hash" 2>/dev/null)" = "$h" ]; then
    continue
  fi
  start=$SECONDS
  ref=localhost/stowplan/$name:$TAG
  # --layers: the dependency layer (pyproject.toml) is reused, so a change in src/ rebuilds in
  # seconds; buildah's storage keeps those layers (no prune), which is the cache
  b bud --quiet --pull-never --isolation chroot --network host --layers \
    "${ca_args[@]}" --build-arg BASE_IMAGE="$BASE" -f "$repo/$name/Dockerfile" -t "$ref" "$repo" > "$OUT/$name.build.log" 2>&1 \
    || { tail -30 "$OUT/$name.build.log" >&2; exit 1; }
  rm -f "$OUT/$name.tar.tmp"
  b push --quiet "$ref" "oci-archive:$OUT/$name.tar.tmp:$ref" >/dev/null
  mv "$OUT/$name.tar.tmp" "$OUT/$name.tar"
  echo "$h" > "$OUT/$name.hash"
  b images --noheading --format '{{.Size}}' "$ref" > "$OUT/$name.size"
  echo "built $ref in $((SECONDS - start)) s ($(cat "$OUT/$name.size"), archive $(du -m "$OUT/$name.tar" | cut -f1) MiB)" >&2
done
echo "$OUT"
