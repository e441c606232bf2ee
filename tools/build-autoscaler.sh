#!/usr/bin/env bash
# Build a real autoscaler for the single-node cluster, caching it outside the repo and rebuilding
# only what is missing:
#   karpenter   Karpenter with its KWOK cloud provider  (sigs.k8s.io/karpenter/kwok, tools/autoscalerbin)
#   kwok        the controller that keeps fake nodes Ready and their pods Running (sigs.k8s.io/kwok/cmd/kwok)
#   crds/       the CRDs Karpenter needs (NodePool, NodeClaim, NodeOverlay, CapacityBuffer,
#               KWOKNodeClass), copied from the module cache
#   kwok-stages.yaml  kwok's own Stages, as kwokctl picks them (nodes: fast start, heartbeat with
#               a node Lease; pods: fast ready/complete/delete), for `kwok --config`
# Karpenter v1.15.0 asks for Go >= 1.26.9, so this script (and only this script: the module lives in
# tools/autoscalerbin) runs the approved toolchain go1.27.3, which the go command takes from the
# Go module proxy (about 76 MB, once per machine).
# Usage: tools/build-autoscaler.sh   -> prints the directory holding bin/, crds/, kwok-stages.yaml
# Env:   AUTOSCALERBINS_DIR (default ~/.cache/stowplan/autoscalerbins/karpenter-v1.15.0-kwok-v0.8.0)
# Callers: scripts/test (before the node tests), tests/node/test_karpenter_autoscaling.py.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
KARPENTER_VERSION=v1.15.0
KWOK_VERSION=v0.8.0
OUT=${AUTOSCALERBINS_DIR:-$HOME/.cache/stowplan/autoscalerbins/karpenter-$KARPENTER_VERSION-kwok-$KWOK_VERSION}
mkdir -p "$OUT/bin" "$OUT/crds"
export GOTOOLCHAIN=go1.27.3 CGO_ENABLED=0 GOFLAGS=-mod=mod
total_start=$SECONDS

build() {  # build DEST PACKAGE LDFLAGS
  local dest=$1 pkg=$2 flags=$3
  [ -x "$dest" ] && return 0
  echo "building $(basename "$dest") (cold builds take minutes; cached in $OUT)" >&2
  local start=$SECONDS
  (cd "$here/autoscalerbin" && go build -trimpath -ldflags "$flags" -o "$dest.tmp" "$pkg")
  mv "$dest.tmp" "$dest"
  echo "built $(basename "$dest") in $((SECONDS - start)) s" >&2
}

build "$OUT/bin/kwok" sigs.k8s.io/kwok/cmd/kwok "-s -w"
build "$OUT/bin/karpenter" sigs.k8s.io/karpenter/kwok "-s -w"

moddir() { (cd "$here/autoscalerbin" && go list -m -f '{{.Dir}}' "$1"); }
if [ ! -s "$OUT/crds/karpenter.kwok.sh_kwoknodeclasses.yaml" ]; then
  # the KWOK chart's copies: they also reserve the karpenter.kwok.sh label domain
  k=$(moddir sigs.k8s.io/karpenter)
  install -m 0644 "$k"/kwok/charts/crds/*.yaml "$OUT/crds/"
  install -m 0644 "$k/kwok/apis/crds/karpenter.kwok.sh_kwoknodeclasses.yaml" "$OUT/crds/"
fi
if [ ! -s "$OUT/kwok-stages.yaml" ]; then
  w=$(moddir sigs.k8s.io/kwok)/kustomize/stage
  for f in "$w"/node/fast/node-initialize.yaml "$w"/node/heartbeat-with-lease/*.yaml \
    "$w"/pod/fast/pod-*.yaml; do
    echo "---"; cat "$f"
  done > "$OUT/kwok-stages.yaml.tmp"
  mv "$OUT/kwok-stages.yaml.tmp" "$OUT/kwok-stages.yaml"
fi
echo "autoscaler ready in $((SECONDS - total_start)) s" >&2
echo "$OUT"
