#!/usr/bin/env bash
# Build kube-apiserver, kubectl and etcd from their Go modules (pinned in tools/kubebins and
# tools/etcdbin), caching the binaries outside the repo. Rebuilds only what is missing.
# Usage: tools/build-kubebins.sh            -> prints the directory holding the binaries
# Env:   KUBEBINS_DIR (default ~/.cache/stowplan/kubebins/v1.36.3)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
K8S_VERSION=v1.36.3
MINOR=36
OUT=${KUBEBINS_DIR:-$HOME/.cache/stowplan/kubebins/$K8S_VERSION}
mkdir -p "$OUT"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod

ldf="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldf+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$MINOR"
  ldf+=" -X $p.gitTreeState=clean -X $p.gitCommit=0000000000000000000000000000000000000000"
  ldf+=" -X $p.buildDate=2000-01-01T00:00:00Z"
done

build() {  # build NAME MODULE_DIR PACKAGE LDFLAGS
  local name=$1 dir=$2 pkg=$3 flags=$4
  if [ -x "$OUT/$name" ] && "$OUT/$name" --version >/dev/null 2>&1; then
    return 0
  fi
  echo "building $name (cold builds take minutes; cached in $OUT)" >&2
  local start=$SECONDS
  (cd "$here/$dir" && go build -trimpath -ldflags "$flags" -o "$OUT/$name.tmp" "$pkg")
  mv "$OUT/$name.tmp" "$OUT/$name"
  echo "built $name in $((SECONDS - start)) s" >&2
}

build etcd etcdbin go.etcd.io/etcd/server/v3 "-s -w"
build kube-apiserver kubebins k8s.io/kubernetes/cmd/kube-apiserver "$ldf"
# kubectl --version is not a flag; check with `version --client`
if ! { [ -x "$OUT/kubectl" ] && "$OUT/kubectl" version --client >/dev/null 2>&1; }; then
  rm -f "$OUT/kubectl"
  echo "building kubectl" >&2
  start=$SECONDS
  (cd "$here/kubebins" && go build -trimpath -ldflags "$ldf" -o "$OUT/kubectl.tmp" k8s.io/kubernetes/cmd/kubectl)
  mv "$OUT/kubectl.tmp" "$OUT/kubectl"
  echo "built kubectl in $((SECONDS - start)) s" >&2
fi
echo "$OUT"
