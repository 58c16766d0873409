#!/usr/bin/env bash
# The main job on an embedded default: a real local control plane, the ECS emulator, the
# operator; a sample EcsInstance is created (RunInstances), becomes Ready, is deleted
# (DeleteInstances), and what happened is printed: events and the cloud calls made.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ecs-operator/target}"
export ECS_CP_DIR="${ECS_CP_DIR:-/tmp/ecs-cp}"
WORK="$(mktemp -d)"
NS="demo-$RANDOM"
pids=()
finish() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ "${KEEP_CONTROL_PLANE:-0}" == 1 ]] || bash scripts/control-plane.sh down "$ECS_CP_DIR" >/dev/null 2>&1 || true
}
trap finish EXIT
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "building ecs-operator and ecs-emulator"
# The same feature resolution as the tests (dev-dependencies on), so the test command that
# follows reuses these artifacts instead of building the dependency tree a second time.
cargo build -q --workspace --bins --benches
BIN="$CARGO_TARGET_DIR/debug/ecs-operator"
EMU_BIN="$CARGO_TARGET_DIR/debug/ecs-emulator"

say "starting the local control plane (first run builds Kubernetes from its Go modules, ~12 min)"
bash scripts/control-plane.sh up "$ECS_CP_DIR"
export KUBECONFIG="$ECS_CP_DIR/kubeconfig"
k() { kubectl "$@" 2>/dev/null; }
k version | grep -i '^server version' || true
k apply -f crds/ecsinstance.yaml -f crds/ecsaccount.yaml >/dev/null
k wait --for=condition=Established --timeout=60s crd/ecsinstances.ecs.volcengine.io crd/ecsaccounts.ecs.volcengine.io >/dev/null
k create namespace "$NS" >/dev/null

say "starting the ECS emulator and the operator"
export VOLCENGINE_ACCESS_KEY=AKLTdemo VOLCENGINE_SECRET_KEY=demo-secret VOLCENGINE_REGION=cn-beijing
"$EMU_BIN" --listen 127.0.0.1:0 --access-key "$VOLCENGINE_ACCESS_KEY" --secret-key "$VOLCENGINE_SECRET_KEY" \
  --create-delay-ms 1500 >"$WORK/emulator.out" 2>"$WORK/emulator.log" &
pids+=($!)
for _ in $(seq 50); do grep -q listening "$WORK/emulator.out" && break; sleep 0.1; done
EMU="$(awk '/listening/ {print $NF; exit}' "$WORK/emulator.out")"
echo "emulator: $EMU"
VOLCENGINE_ENDPOINT="$EMU" "$BIN" run --namespaces "$NS" --metrics-addr 127.0.0.1:0 --transition-poll-secs 1 \
  2>"$WORK/operator.log" &
pids+=($!)

say "kubectl apply -f samples/create.yaml"
k -n "$NS" apply -f samples/create.yaml
k -n "$NS" wait --for=condition=Ready --timeout=60s ecsinstance/web-1 >/dev/null
k -n "$NS" get ecsinstances
say "kubectl delete ecsinstance web-1"
k -n "$NS" delete ecsinstance web-1 --timeout=60s
say "events"
k -n "$NS" get events --sort-by=.metadata.creationTimestamp -o custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message
say "cloud calls the emulator received"
curl -s "$EMU/_emulator/calls" | python3 -c '
import json, sys
for c in json.load(sys.stdin):
    ids = ",".join(v for k, v in sorted(c["params"].items()) if k.startswith("InstanceIds."))
    print(f"{c['"'"'action'"'"']:<20} {c['"'"'code'"'"']:<6} token={c['"'"'params'"'"'].get('"'"'ClientToken'"'"','"'"'-'"'"')} {ids}")'
say "VMs left in the emulator (after its 0.5 s DELETING delay)"
sleep 1
curl -s "$EMU/_emulator/instances" | python3 -c 'import json,sys; v=json.load(sys.stdin); print(len(v), "VMs left", [(i["InstanceId"], i["Status"]) for i in v])'
k delete namespace "$NS" --wait=false >/dev/null
echo; echo "operator log: $WORK/operator.log"
