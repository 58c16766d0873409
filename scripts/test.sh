#!/usr/bin/env bash
# Runs every test, in tiers, and prints one summary line per tier (checks run, seconds):
#   0 lint          fmt, clippy, cargo-deny, shellcheck, kustomize, Argo CD health check (Lua)
#   1 unit          unit tests, CRD drift, signer vectors (no network, no processes)
#   1 simulation    the real reconcile against an in-memory API server and a fake cloud,
#                   10,000 seeded schedules (SIM_SCHEDULES=N for more)
#   1 fuzz-replay   every committed fuzz corpus file through its target (stable, no fuzzing)
#   2 wire          the client and the official Python and Go SDKs against the emulator
#   3 e2e-newest    every end-to-end test on the newest supported Kubernetes
#   3 gc-bench      a CI-sized garbage-collection benchmark (N = 300 under the emulator's
#                   throttle): DeleteInstances calls <= 1.05 * ceil(N/100), nothing left,
#                   and the time ratio to the same run's floor printed
#   4 e2e-oldest    deletion, lifecycle, admission and RBAC suites on the oldest supported one
#   5 soak          churn under faults with operator kills and an apiserver restart
# Installs and starts what it needs (idempotent), so it works on a fresh machine.
#
# Environment: K8S_NEWEST / K8S_OLDEST (versions), E2E_THREADS (parallel tests per e2e binary,
# default 2, at most the number of cores), E2E_LANES (e2e binaries run side by side, default
# cores / E2E_THREADS, at least 1), so no more tests (each with its operator) run at once than
# there are cores; SKIP_OLDEST=1, SKIP_SOAK=1, TIERS="unit e2e-newest" (only those tiers; local iterations
# only, CI runs all).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ecs-operator/target}"
export ECS_CP_DIR="${ECS_CP_DIR:-/tmp/ecs-cp}"
K8S_NEWEST="${K8S_NEWEST:-1.37.2}"
K8S_OLDEST="${K8S_OLDEST:-1.33.13}"
OLDEST_CP_DIR="${ECS_CP_DIR}-oldest"
CORES=$(nproc)
E2E_THREADS="${E2E_THREADS:-$((CORES < 2 ? 1 : 2))}"
[[ $E2E_THREADS =~ ^[1-9][0-9]*$ ]] || { echo "E2E_THREADS must be a positive integer" >&2; exit 2; }
E2E_LANES="${E2E_LANES:-$((CORES / E2E_THREADS > 1 ? CORES / E2E_THREADS : 1))}"
export E2E_THREADS E2E_LANES # the harness sizes per-test operator parallelism from them
SUMMARY=()

step() { printf '\n==> %s\n' "$*"; }

# Checks a tier's output reports: cargo's "test result: ok. N passed", pytest's and the Go
# SDK step's "N passed", the
# Lua tests' "N/M passed", and the "CHECKS N" lines of the lint steps.
count_checks() {
  {
    grep -Eo 'test result: [a-z]+\. [0-9]+ passed' "$1" | awk '{print $4}' || true
    grep -Eo '^[0-9]+(/[0-9]+)? passed' "$1" | sed 's|/[0-9]*||' | awk '{print $1}' || true
    grep -Eo '^CHECKS [0-9]+' "$1" | awk '{print $2}' || true
  } | awk '{s+=$1} END {print s+0}' || true
}

# tier NAME COMMAND...: runs the tier, counts its checks (cargo's "test result" lines, pytest's
# and Lua's "N passed" lines, and "CHECKS N" lines the lint steps print), records one summary line.
tier() {
  local name="$1" t0=$SECONDS log
  shift
  [[ -z ${TIERS:-} || " $TIERS " == *" $name "* ]] || return 0
  log="$(mktemp)"
  printf '\n######## tier %s\n' "$name"
  # errexit inside the tier (a failing step ends it), not around it (the summary is printed).
  set +e
  (set -e; "$@") 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  set -e
  local passed
  passed=$(count_checks "$log")
  rm -f "$log"
  TOTAL_PASSED=$((TOTAL_PASSED + passed))
  SUMMARY+=("$(printf 'tier %-11s %-4s %5d checks %5d s' "$name" "$([[ $rc -eq 0 ]] && echo ok || echo FAIL)" "$passed" $((SECONDS - t0)))")
  if [[ $rc -ne 0 ]]; then
    print_summary
    exit "$rc"
  fi
}

print_summary() {
  printf '\n######## summary\n'
  printf '%s\n' "${SUMMARY[@]}"
}
TOTAL_PASSED=0

apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null ||
    { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
}

lint() {
  command -v shellcheck >/dev/null 2>&1 || apt_install shellcheck
  command -v lua5.1 >/dev/null 2>&1 || apt_install lua5.1
  command -v promtool >/dev/null 2>&1 || apt_install prometheus
  if ! cargo deny --version >/dev/null 2>&1; then
    step "installing cargo-deny (once; ~5 min)"
    cargo install -q --locked cargo-deny
  fi
  step "cargo fmt --check"
  cargo fmt --all -- --check
  echo "CHECKS 1"
  step "cargo clippy --workspace --all-targets -- -D warnings"
  cargo clippy --workspace --all-targets -q -- -D warnings
  echo "CHECKS 1"
  step "cargo deny check licenses bans sources"
  cargo fetch -q # every platform's crates: cargo-deny's metadata needs them all offline
  cargo deny --offline --log-level error check licenses bans sources
  echo "CHECKS 1"
  step "one version of each core crate (README: tokio, hyper, http, serde, kube, reqwest, rustls)"
  local crate n
  for crate in tokio hyper http serde kube reqwest rustls; do
    n=$(grep -c "^name = \"$crate\"$" Cargo.lock || true)
    if [[ $n -ne 1 ]]; then
      echo "Cargo.lock holds $n versions of $crate" >&2
      return 1
    fi
  done
  echo "CHECKS 1"
  step "shellcheck scripts/*.sh .ci/run"
  shellcheck -S warning scripts/*.sh .ci/run
  echo "CHECKS 1"
  step "kustomize build of deploy/ and deploy/crd/"
  kubectl kustomize deploy/ >/dev/null
  echo "CHECKS 1"
  if [[ -f deploy/crd/kustomization.yaml ]]; then
    kubectl kustomize deploy/crd/ >/dev/null
    echo "CHECKS 1"
  fi
  kubectl kustomize deploy/monitoring/ >/dev/null
  echo "CHECKS 1"
  step "alert rules: promtool check rules, promtool test rules (a case per alert and near miss)"
  promtool check rules deploy/monitoring/rules.yaml
  promtool test rules tests/prometheus/alerts_test.yaml
  echo "CHECKS $(grep -c 'alertname:' tests/prometheus/alerts_test.yaml)"
  step "Argo CD health check verdicts (Lua 5.1, as Argo CD runs it)"
  lua5.1 tests/argocd/health_test.lua
}

# Test binaries by what they need: none (unit), the emulator (wire), a control plane (e2e).
unit_targets() { echo --workspace --lib --bins --test crd_drift --test signer_vectors --test controller --test monitoring; }
wire_targets() { echo --test emulator_api --test emulator_client; }
# The e2e binaries, longest first (measured on 1.37, 2 cores), then any others: run side by
# side, the longest must start first or it alone sets the tier's time.
E2E_ORDER=(e2e_delete e2e_lifecycle e2e_sweeper e2e_leader e2e_update e2e_uninstall e2e_secrets
  e2e_bad_input e2e_policy e2e_accounts e2e_rbac e2e_observability e2e_admission)
e2e_targets() {
  local f t
  for t in "${E2E_ORDER[@]}"; do [[ -f tests/$t.rs ]] && echo "$t"; done
  for f in tests/e2e_*.rs; do
    t=$(basename "$f" .rs)
    [[ " ${E2E_ORDER[*]} " == *" $t "* ]] || echo "$t"
  done
}

# run_side_by_side TEST...: the test binaries (cargo builds them, a no-op after the build step),
# E2E_LANES at a time, in the order given. End-to-end tests mostly wait (on the emulator's
# delays, the API server, backoffs), so binaries overlap well; each has its own namespaces,
# emulators and operators. Each binary's output is printed whole when it ends.
run_side_by_side() {
  local logs t exe rc=0 running=0
  logs=$(mktemp -d)
  declare -A bin=()
  while IFS=$'\t' read -r t exe; do bin[$t]=$exe; done < <(
    cargo test -q --no-run --message-format=json "${@/#/--test=}" | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("executable") and m.get("profile", {}).get("test") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"], sep="\t")'
  )
  for t in "$@"; do
    [[ -n ${bin[$t]:-} ]] || { echo "no executable for $t"; return 1; }
  done
  for t in "$@"; do
    if ((running >= E2E_LANES)); then
      wait -n || rc=1
      running=$((running - 1))
    fi
    (
      s=0
      t0=$SECONDS
      "${bin[$t]}" --test-threads "$E2E_THREADS" >"$logs/$t.log" 2>&1 || s=$?
      flock "$logs/.print" bash -c 'printf "\n==== %s: exit %s, %s s\n" "$1" "$2" "$3"; cat "$4"' _ "$t" "$s" $((SECONDS - t0)) "$logs/$t.log"
      exit "$s"
    ) &
    running=$((running + 1))
  done
  while ((running > 0)); do
    wait -n || rc=1
    running=$((running - 1))
  done
  rm -rf "$logs"
  return "$rc"
}

unit() {
  # shellcheck disable=SC2046
  cargo test -q $(unit_targets)
}

simulation() {
  cargo test -q --test simulation -- --nocapture
}

wire() {
  local venv="${ECS_CACHE_DIR:-$HOME/.cache/ecs-operator}/venv"
  if [[ ! -x $venv/bin/pytest ]] || ! "$venv/bin/python" -c 'import volcenginesdkecs' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check volcenginesdk-ecs pytest
  fi
  # Every request our client sends in emulator_client's request-log test is written here; the
  # official Python SDK's signer then re-signs each one (tests/python/test_client_requests.py).
  local requests="$CARGO_TARGET_DIR/wire-client-requests.jsonl"
  rm -f "$requests"
  # shellcheck disable=SC2046
  ECS_CLIENT_REQUESTS="$requests" cargo test -q $(wire_targets)
  step "official Python SDK: against the emulator, its signer on the vectors and on our client's requests"
  ECS_CLIENT_REQUESTS="$requests" ECS_EMULATOR_BIN="$CARGO_TARGET_DIR/debug/ecs-emulator" \
    "$venv/bin/pytest" -q tests/python
  step "official Go SDK against the emulator"
  command -v go >/dev/null || { echo "go not found: the Go SDK tests need Go (1.22+)"; return 1; }
  local out
  local emulator
  emulator="$(cd "$CARGO_TARGET_DIR" && pwd)/debug/ecs-emulator"
  out=$(cd tests/go && ECS_EMULATOR_BIN="$emulator" go test -count=1 -v ./... 2>&1) || {
    echo "$out"
    return 1
  }
  echo "$out" | grep -E '^(--- |ok|FAIL)'
  echo "$(echo "$out" | grep -c '^--- PASS') passed"
}

# helm (tests/e2e_helm.rs), built once from helm.sh/helm/v3 with the machine's Go into the cache.
HELM_VERSION=v3.22.0
ensure_helm() {
  local bin="${ECS_CACHE_DIR:-$HOME/.cache/ecs-operator}/bin"
  if [[ ! -x $bin/helm-$HELM_VERSION ]]; then
    step "building helm $HELM_VERSION with Go (once; a few minutes)"
    GOBIN="$bin" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
    mv "$bin/helm" "$bin/helm-$HELM_VERSION"
  fi
  export HELM_BIN="$bin/helm-$HELM_VERSION"
}

e2e_newest() {
  command -v prometheus >/dev/null 2>&1 || apt_install prometheus # tests/e2e_prometheus.rs
  ensure_helm
  K8S_VERSION="$K8S_NEWEST" bash scripts/control-plane.sh up "$ECS_CP_DIR"
  local targets
  mapfile -t targets < <(e2e_targets)
  run_side_by_side "${targets[@]}"
  step "OCI image of the operator binary (no container engine): build, verify, run it in its own root as 65532"
  local img="$CARGO_TARGET_DIR/oci-image"
  python3 scripts/oci-image.py build "$CARGO_TARGET_DIR/debug/ecs-operator" "$img" --archive "$img.tar"
  python3 scripts/oci-image.py verify "$img" --kubeconfig "$ECS_CP_DIR/kubeconfig"
  echo "CHECKS 1"
}

# The benchmark in the dev profile (the binaries the e2e tiers use; no release build of the
# dependency tree): it asserts calls and leftovers, and prints times, which it does not assert.
gc_bench() {
  K8S_VERSION="$K8S_NEWEST" bash scripts/control-plane.sh up "$ECS_CP_DIR"
  cargo bench -q --profile dev --bench gc -- --n "${GC_BENCH_N:-300}" --floor-too --check
}

# The oldest supported release runs the suites whose behaviour depends on the API server:
# deletion, lifecycle, admission and RBAC.
e2e_oldest() {
  K8S_VERSION="$K8S_OLDEST" bash scripts/control-plane.sh up "$OLDEST_CP_DIR"
  local t targets=()
  for t in e2e_delete e2e_lifecycle e2e_admission e2e_rbac; do
    [[ -f tests/$t.rs ]] && targets+=("$t")
  done
  local rc=0
  ECS_CP_DIR="$OLDEST_CP_DIR" run_side_by_side "${targets[@]}" || rc=$?
  bash scripts/control-plane.sh down "$OLDEST_CP_DIR" >/dev/null 2>&1 || true
  return "$rc"
}

# Every committed fuzz corpus file of every target, run once through its target (libFuzzer
# executes the files it is given and stops: no fuzzing, no nightly). A check per file run.
fuzz_replay() {
  local dir="${FUZZ_TARGET_DIR:-$HOME/.cache/ecs-operator/fuzz-target}" target log
  step "building the fuzz targets (fuzz/, its own workspace)"
  (cd fuzz && cargo build -q --release --locked --target-dir "$dir")
  log="$(mktemp)"
  for target in fuzz/fuzz_targets/*.rs; do
    target="$(basename "$target" .rs)"
    step "replaying fuzz/corpus/$target"
    "$dir/release/$target" fuzz/corpus/"$target"/* >"$log" 2>&1 || { cat "$log"; return 1; }
    echo "CHECKS $(grep -c '^Executed ' "$log")"
  done
  rm -f "$log"
}

soak() {
  K8S_VERSION="$K8S_NEWEST" bash scripts/control-plane.sh up "$ECS_CP_DIR"
  SOAK_RESOURCES="${SOAK_RESOURCES:-200}" SOAK_SECS="${SOAK_SECS:-180}" \
    cargo test -q --test soak -- --ignored --nocapture
}

step "provisioning Kubernetes $K8S_NEWEST and $K8S_OLDEST (cached after the first build)"
t0=$SECONDS
bash scripts/provision-k8s.sh "$K8S_NEWEST" >/dev/null
[[ ${SKIP_OLDEST:-0} == 1 ]] || bash scripts/provision-k8s.sh "$K8S_OLDEST" >/dev/null
SUMMARY+=("$(printf 'provision            %5s        %5d s' ok $((SECONDS - t0)))")

tier lint lint
step "cargo build"
cargo build -q --workspace --bins --tests --benches
tier unit unit
tier simulation simulation
tier fuzz-replay fuzz_replay
tier wire wire
tier e2e-newest e2e_newest
tier gc-bench gc_bench
[[ ${SKIP_OLDEST:-0} == 1 ]] || tier e2e-oldest e2e_oldest
[[ ${SKIP_SOAK:-0} == 1 ]] || tier soak soak
print_summary
echo "tiers: $TOTAL_PASSED passed, 0 failed"
