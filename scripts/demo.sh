#!/usr/bin/env bash
# keysmith in one command: an OpenRouter key minted by the operator and delivered into a Secret.
#
# Without KUBECONFIG, starts a local Kubernetes control plane (etcd, kube-apiserver,
# kube-controller-manager: `cargo run --example local-cluster`, the harness of the e2e tests;
# binaries from KUBEBUILDER_ASSETS or ../shared/k8s/). With KUBECONFIG set, uses that cluster.
# Then installs the CRDs, starts the OpenRouter emulator (127.0.0.1:8787) and the operator
# (`keysmith run`, metrics on 127.0.0.1:8080) on this machine, applies examples/openrouter/,
# waits until the ApiKey is Ready and shows it. Everything keeps running until Ctrl-C; then what
# this script started is stopped (the CRDs and example objects stay in a KUBECONFIG cluster).
#
#   DEMO_DIR      logs and state (default: target/demo)
#   EMULATOR_ADDR emulator address (default 127.0.0.1:8787, as in examples/openrouter/)
#   METRICS_ADDR  operator metrics address (default 127.0.0.1:8080)
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR="${DEMO_DIR:-$PWD/target/demo}"
EMULATOR_ADDR="${EMULATOR_ADDR:-127.0.0.1:8787}"
METRICS_ADDR="${METRICS_ADDR:-127.0.0.1:8080}"
# The management key of examples/openrouter/credentials.yaml.
MANAGEMENT_KEY=sk-or-v1-example-management-key-for-the-keysmith-emulator
mkdir -p "$DEMO_DIR"
say() { echo "demo: $*" >&2; }

pids=()
cleanup() {
  trap - EXIT INT TERM
  say "stopping"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

busy() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }
for addr in "$EMULATOR_ADDR" "$METRICS_ADDR"; do
  if busy "$addr"; then say "$addr is in use (set EMULATOR_ADDR / METRICS_ADDR)"; exit 1; fi
done

if ! command -v kubectl >/dev/null 2>&1 && [[ ! -x .tools/bin/kubectl ]]; then
  scripts/install-tools.sh
fi
export PATH="$PWD/.tools/bin:$PATH"

say "building keysmith"
cargo build --quiet --bin keysmith --example local-cluster
KEYSMITH="${CARGO_TARGET_DIR:-target}/debug/keysmith"

if [[ -z "${KUBECONFIG:-}" ]]; then
  say "starting a local control plane (logs under ${TMPDIR:-/tmp}/keysmith-local-cluster/)"
  # stdin from a pipe held open by this script: the control plane stops when the script ends.
  exec 4> >("${CARGO_TARGET_DIR:-target}/debug/examples/local-cluster" >"$DEMO_DIR/cluster.out" 2>"$DEMO_DIR/cluster.log")
  pids+=($!)
  for _ in $(seq 1 600); do
    grep -q '^KUBECONFIG=' "$DEMO_DIR/cluster.out" 2>/dev/null && break
    if ! kill -0 "${pids[-1]}" 2>/dev/null; then cat "$DEMO_DIR/cluster.log" >&2; exit 1; fi
    sleep 0.2
  done
  KUBECONFIG="$(sed -n 's/^KUBECONFIG=//p' "$DEMO_DIR/cluster.out")"
  [[ -n "$KUBECONFIG" ]] || { say "the control plane did not start:"; cat "$DEMO_DIR/cluster.log" >&2; exit 1; }
  export KUBECONFIG
else
  say "using the cluster of KUBECONFIG=$KUBECONFIG"
fi

say "installing the CRDs"
kubectl apply --server-side --force-conflicts -f crds/ >/dev/null
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null

say "starting the OpenRouter emulator on $EMULATOR_ADDR"
KEYSMITH_EMULATOR_MANAGEMENT_KEY="$MANAGEMENT_KEY" \
  "$KEYSMITH" emulate --listen "$EMULATOR_ADDR" openrouter >"$DEMO_DIR/emulator.log" 2>&1 &
pids+=($!)

say "starting the operator (metrics on $METRICS_ADDR; log: $DEMO_DIR/operator.log)"
"$KEYSMITH" run --metrics-addr "$METRICS_ADDR" --namespace keysmith-system >"$DEMO_DIR/operator.log" 2>&1 &
pids+=($!)

say "applying examples/openrouter/"
kubectl apply -f examples/openrouter/
if ! kubectl wait --for=condition=Ready apikey/chat-backend -n default --timeout=120s >/dev/null; then
  say "the ApiKey did not become Ready; the operator log ends with:"
  tail -20 "$DEMO_DIR/operator.log" >&2
  exit 1
fi

echo
kubectl get apikeys -A
echo
echo "Secret default/chat-backend-openrouter holds the key (hint: $(kubectl get apikey chat-backend -n default -o jsonpath='{.status.keyHint}')), entries:"
kubectl get secret chat-backend-openrouter -n default -o go-template='{{range $k, $v := .data}}  {{$k}}{{"\n"}}{{end}}'
echo
echo "Running. In another shell:  export KUBECONFIG=$KUBECONFIG"
echo "  kubectl get apikeys -A    kubectl describe apikey chat-backend"
echo "Logs in $DEMO_DIR. Ctrl-C stops the operator, the emulator and the local control plane."
while true; do sleep 3600 & wait $!; done  # `wait` returns at once on a signal
