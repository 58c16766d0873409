#!/usr/bin/env bash
# Runs every test: formatting and lints, unit tests, client-against-emulator tests, end-to-end
# tests on a real local control plane, and the official Python SDK against the emulator.
# Installs and starts what it needs (idempotent), so it works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ecs-operator/target}"
export ECS_CP_DIR="${ECS_CP_DIR:-/tmp/ecs-cp}"

step() { printf '\n==> %s\n' "$*"; }

step "control plane (etcd, kube-apiserver, kube-controller-manager 1.20.2)"
bash scripts/control-plane.sh up "$ECS_CP_DIR"

step "python: official Volcengine SDK for the wire-compatibility test"
VENV="${ECS_CACHE_DIR:-$HOME/.cache/ecs-operator}/venv"
if [[ ! -x "$VENV/bin/pytest" ]] || ! "$VENV/bin/python" -c 'import volcenginesdkecs' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check volcenginesdk-ecs pytest
fi

step "lua5.1 for the Argo CD health check (deploy/argocd/health.lua; Argo CD runs Lua 5.1)"
if ! command -v lua5.1 >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends lua5.1 >/dev/null ||
    { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends lua5.1 >/dev/null; }
fi

step "Argo CD health check verdicts (tests/argocd)"
lua5.1 tests/argocd/health_test.lua

step "kustomize build of deploy/ and deploy/crd"
kubectl kustomize deploy/ >/dev/null
kubectl kustomize deploy/crd >/dev/null

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -q -- -D warnings

step "cargo deny check licenses bans sources (deny.toml; offline parts only)"
# Runs where cargo-deny is installed (`cargo install cargo-deny --locked`, ~5 min once; the
# binary then stays in ~/.cargo/bin). A fresh machine skips it rather than spend those
# minutes of CI; ECS_INSTALL_CARGO_DENY=1 installs it first.
if ! cargo deny --version >/dev/null 2>&1 && [[ "${ECS_INSTALL_CARGO_DENY:-0}" == 1 ]]; then
  cargo install -q --locked cargo-deny
fi
if cargo deny --version >/dev/null 2>&1; then
  cargo deny --offline --log-level error check licenses bans sources
else
  echo "cargo-deny not installed: skipped"
fi

step "cargo build"
cargo build -q --bins

step "cargo test (unit, emulator, CRD drift, end-to-end)"
cargo test -q -- --test-threads "${E2E_THREADS:-4}"

step "official Python SDK against the emulator"
ECS_OPERATOR_BIN="$CARGO_TARGET_DIR/debug/ecs-operator" "$VENV/bin/pytest" -q tests/python

step "soak under faults, short form (200 resources, 3 min; restarts the apiserver, so it runs alone)"
SOAK_RESOURCES="${SOAK_RESOURCES:-200}" SOAK_SECS="${SOAK_SECS:-180}" \
  cargo test -q --test soak -- --ignored --nocapture
