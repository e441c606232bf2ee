#!/usr/bin/env bash
# Build what a real single-node cluster needs on top of tools/build-kubebins.sh, caching it all
# outside the repo and rebuilding only what is missing:
#   kubelet, kube-controller-manager, kube-scheduler, kube-proxy  (k8s.io/kubernetes, tools/nodebins)
#   containerd, containerd-shim-runc-v2, ctr                      (containerd v2, tools/containerdbin)
#   CNI bridge, host-local, loopback, portmap                     (CNI plugins, tools/cnibin)
#   pause image (OCI tar, pause.c from the kubernetes module built with gcc)
#   Debian packages: runc iptables conntrack socat debootstrap umoci buildah skopeo
# Usage: tools/build-nodebins.sh   -> prints the directory holding bin/, cni/ and images/
# Env:   NODEBINS_DIR (default ~/.cache/stowplan/nodebins/v1.36.3)
# Callers: scripts/test (before the node tests), `stowplan cluster up`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
K8S_VERSION=v1.36.3
MINOR=36
OUT=${NODEBINS_DIR:-$HOME/.cache/stowplan/nodebins/$K8S_VERSION}
mkdir -p "$OUT/bin" "$OUT/cni" "$OUT/images"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
total_start=$SECONDS

debs=(runc iptables conntrack socat debootstrap umoci buildah skopeo)
missing=()
for d in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$d" 2>/dev/null | grep -q 'install ok installed' || missing+=("$d")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}" >&2
  start=$SECONDS
  { DEBIAN_FRONTEND=noninteractive apt-get -qq update \
    && DEBIAN_FRONTEND=noninteractive apt-get -qq install -y --no-install-recommends "${missing[@]}"; \
  } > "$OUT/apt.log" 2>&1 || { tail -20 "$OUT/apt.log" >&2; exit 1; }
  echo "installed Debian packages in $((SECONDS - start)) s" >&2
fi

ldf="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldf+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$MINOR"
  ldf+=" -X $p.gitTreeState=clean -X $p.gitCommit=0000000000000000000000000000000000000000"
  ldf+=" -X $p.buildDate=2000-01-01T00:00:00Z"
done

build() {  # build DEST MODULE_DIR PACKAGE LDFLAGS [TAGS]
  local dest=$1 dir=$2 pkg=$3 flags=$4 tags=${5:-}
  [ -x "$dest" ] && return 0
  echo "building $(basename "$dest") (cold builds take minutes; cached in $OUT)" >&2
  local start=$SECONDS
  (cd "$here/$dir" && go build -trimpath -tags "$tags" -ldflags "$flags" -o "$dest.tmp" "$pkg")
  mv "$dest.tmp" "$dest"
  echo "built $(basename "$dest") in $((SECONDS - start)) s" >&2
}

for c in kubelet kube-controller-manager kube-scheduler kube-proxy; do
  build "$OUT/bin/$c" nodebins "k8s.io/kubernetes/cmd/$c" "$ldf"
done
ctags="no_btrfs no_devmapper no_zfs"
for c in containerd containerd-shim-runc-v2 ctr; do
  build "$OUT/bin/$c" containerdbin "github.com/containerd/containerd/v2/cmd/$c" "-s -w" "$ctags"
done
for p in main/bridge ipam/host-local main/loopback meta/portmap; do
  build "$OUT/cni/$(basename $p)" cnibin "github.com/containernetworking/plugins/plugins/$p" "-s -w"
done

pause_tar=$OUT/images/pause-3.10.tar
if [ ! -s "$pause_tar" ]; then
  start=$SECONDS
  src=$(cd "$here/nodebins" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c
  tmp=$(mktemp -d)
  gcc -Os -static -DVERSION=v3.10 -o "$tmp/pause" "$src"
  strip "$tmp/pause"
  (cd "$tmp" && umoci init --layout oci && umoci new --image oci:pause \
    && umoci unpack --rootless --image oci:pause bundle >/dev/null \
    && cp pause bundle/rootfs/pause \
    && umoci repack --image oci:pause bundle \
    && umoci config --image oci:pause --config.entrypoint /pause --config.user 65535:65535 \
    && tar -C oci -cf "$pause_tar.tmp" .)
  rm -rf "$tmp"
  mv "$pause_tar.tmp" "$pause_tar"
  echo "built the pause image in $((SECONDS - start)) s" >&2
fi
echo "nodebins ready in $((SECONDS - total_start)) s" >&2
echo "$OUT"
