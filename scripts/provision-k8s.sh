#!/usr/bin/env bash
# Builds a local Kubernetes control plane from Kubernetes' own Go modules with the machine's Go:
# kube-apiserver and kube-controller-manager from k8s.io/kubernetes, etcd from
# go.etcd.io/etcd/server/v3. Binaries are cached outside the repository and rebuilt only when
# the version changes. Running them is scripts/control-plane.sh's job.
#
# Usage:
#   scripts/provision-k8s.sh [VERSION]    prints the bin directory on stdout
#
# Environment:
#   K8S_VERSION     Kubernetes release to build (default below; see README "Support matrix")
#   ETCD_VERSION    etcd release to build (default below)
#   ECS_CACHE_DIR   cache root (default ~/.cache/ecs-operator)
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces every staging module
# (k8s.io/api, k8s.io/apiserver, ...) with a path inside its own tree. A module of ours that
# requires it and replaces each staging module with the published v0.<minor>.<patch> builds it.
set -euo pipefail

DEFAULT_K8S_VERSION="1.37.2"
DEFAULT_ETCD_VERSION="3.6.16"

K8S_VERSION="${1:-${K8S_VERSION:-$DEFAULT_K8S_VERSION}}"
K8S_VERSION="${K8S_VERSION#v}"
ETCD_VERSION="${ETCD_VERSION:-$DEFAULT_ETCD_VERSION}"
CACHE_ROOT="${ECS_CACHE_DIR:-${HOME:-/root}/.cache/ecs-operator}"
K8S_DIR="$CACHE_ROOT/k8s-$K8S_VERSION"
ETCD_DIR="$CACHE_ROOT/etcd-$ETCD_VERSION"
# Go's own module and build caches (outside the repository) are shared by every version built.
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0

log() { printf '[provision-k8s] %s\n' "$*" >&2; }
die() { printf '[provision-k8s] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $K8S_VERSION =~ ^1\.([0-9]+)\.([0-9]+)$ ]] || die "K8S_VERSION must look like 1.37.2, got '$K8S_VERSION'"
MINOR="${BASH_REMATCH[1]}"
STAGING_VERSION="v0.$MINOR.${BASH_REMATCH[2]}"

command -v go >/dev/null 2>&1 || die "no Go toolchain on PATH (the polyglot machines ship Go 1.26)"

# Builds with a lock so parallel callers wait instead of building twice.
with_lock() {
  local dir="$1"; shift
  mkdir -p "$dir"
  exec 9>"$dir/.lock"
  flock 9
  "$@"
  flock -u 9
  exec 9>&-
}

build_k8s() {
  [[ -x $K8S_DIR/bin/kube-apiserver && -x $K8S_DIR/bin/kube-controller-manager ]] && return 0
  local mod="$K8S_DIR/mod" t0=$SECONDS upstream
  rm -rf "$mod" && mkdir -p "$mod"
  log "Kubernetes $K8S_VERSION: fetching k8s.io/kubernetes' go.mod"
  upstream=$(cd "$mod" && go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" |
    sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')
  [[ -f $upstream ]] || die "k8s.io/kubernetes@v$K8S_VERSION not served by the Go module proxy"
  {
    printf 'module ecs-operator.local/k8s-build\n\ngo %s\n\nrequire k8s.io/kubernetes v%s\n\nreplace (\n' \
      "$(sed -n 's/^go //p' "$upstream" | head -n 1)" "$K8S_VERSION"
    grep -E '^\s+k8s.io/[a-z0-9-]+ => ./staging/' "$upstream" |
      awk -v v="$STAGING_VERSION" '{printf "\t%s => %s %s\n", $1, $1, v}'
    printf ')\n'
  } >"$mod/go.mod"
  cat >"$mod/tools.go" <<'EOF'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
EOF
  log "Kubernetes $K8S_VERSION: resolving modules (staging modules at $STAGING_VERSION)"
  (cd "$mod" && go mod tidy >"$K8S_DIR/tidy.log" 2>&1) || { tail -n 30 "$K8S_DIR/tidy.log" >&2; die "go mod tidy failed"; }
  log "Kubernetes $K8S_VERSION: building kube-apiserver, kube-controller-manager with $(go version | cut -d' ' -f3) (about 10 min on 2 cores the first time; log $K8S_DIR/build.log)"
  local ld="-s -w -X k8s.io/component-base/version.gitVersion=v$K8S_VERSION"
  ld+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$MINOR"
  ld+=" -X k8s.io/component-base/version.gitTreeState=clean"
  rm -rf "$K8S_DIR/bin.tmp" && mkdir -p "$K8S_DIR/bin.tmp"
  (cd "$mod" && go build -trimpath -ldflags "$ld" -o "$K8S_DIR/bin.tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager) \
    >"$K8S_DIR/build.log" 2>&1 || { tail -n 40 "$K8S_DIR/build.log" >&2; die "build failed"; }
  rm -rf "${K8S_DIR:?}/bin" && mv "$K8S_DIR/bin.tmp" "$K8S_DIR/bin"
  echo "build_seconds=$((SECONDS - t0))" >"$K8S_DIR/provision-times"
  log "Kubernetes $K8S_VERSION built in $((SECONDS - t0)) s"
}

build_etcd() {
  [[ -x $ETCD_DIR/bin/etcd ]] && return 0
  local mod="$ETCD_DIR/mod" t0=$SECONDS
  rm -rf "$mod" && mkdir -p "$mod" "$ETCD_DIR/bin"
  printf 'module ecs-operator.local/etcd-build\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 v%s\n' \
    "$ETCD_VERSION" >"$mod/go.mod"
  cat >"$mod/main.go" <<'EOF'
// etcd from its Go module: the same entry point as the released etcd binary.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
  log "etcd $ETCD_VERSION: building (about 2 min the first time)"
  (cd "$mod" && go mod tidy && go build -trimpath -ldflags "-s -w" -o "$ETCD_DIR/bin/etcd.tmp" .) \
    >"$ETCD_DIR/build.log" 2>&1 || { tail -n 40 "$ETCD_DIR/build.log" >&2; die "etcd build failed"; }
  mv "$ETCD_DIR/bin/etcd.tmp" "$ETCD_DIR/bin/etcd"
  log "etcd $ETCD_VERSION built in $((SECONDS - t0)) s"
}

with_lock "$ETCD_DIR" build_etcd
with_lock "$K8S_DIR" build_k8s
ln -sf "$ETCD_DIR/bin/etcd" "$K8S_DIR/bin/etcd"
echo "$K8S_DIR/bin"
