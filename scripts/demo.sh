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
# DEMO_NODE=1 (or --node; root) runs the operator as a pod instead: it builds the operator image
# (scripts/build-image.sh, from target/debug/keysmith), starts the one-node cluster of
# ../shared/k8s/node/ (up.sh, the image imported), `helm install`s charts/keysmith with that image
# (2 replicas, leader election, the chart's ServiceAccount, securityContext and probes), runs the
# emulator as a pod of the same image behind a Service and points the ClusterKeyProvider of
# examples/openrouter/ at that Service. Ctrl-C stops the node (down.sh, PURGE=1).
#
#   DEMO_DIR      logs and state (default: target/demo)
#   EMULATOR_ADDR emulator address (default 127.0.0.1:8787, as in examples/openrouter/)
#   METRICS_ADDR  operator metrics address (default 127.0.0.1:8080)
#   DEMO_NODE=1   the operator as a pod on the one-node cluster (see above); with it:
#   DEMO_IMAGE_BIN  binary to put in the image (default target/debug/keysmith; e.g.
#                   target/release/keysmith after `cargo build --release`)
#   KEYSMITH_NODE_SCRIPTS / KEYSMITH_NODE_DIR  the node scripts (default ../shared/k8s/node) and
#                   working directory (default /tmp/keysmith-node)
set -euo pipefail
cd "$(dirname "$0")/.."
[[ ${1:-} == --node ]] && DEMO_NODE=1
DEMO_NODE=${DEMO_NODE:-0}
DEMO_DIR="${DEMO_DIR:-$PWD/target/demo}"
EMULATOR_ADDR="${EMULATOR_ADDR:-127.0.0.1:8787}"
METRICS_ADDR="${METRICS_ADDR:-127.0.0.1:8080}"
# The management key of examples/openrouter/credentials.yaml.
MANAGEMENT_KEY=sk-or-v1-example-management-key-for-the-keysmith-emulator
mkdir -p "$DEMO_DIR"
say() { echo "demo: $*" >&2; }

pids=()
node_up=0
cleanup() {
  trap - EXIT INT TERM
  say "stopping"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ $node_up == 1 ]]; then
    say "stopping the node (down.sh; log: $DEMO_DIR/node-down.log)"
    L=$NODE_DIR PURGE=1 KUBECTL=$(command -v kubectl) bash "$NODE_SCRIPTS/down.sh" >"$DEMO_DIR/node-down.log" 2>&1 || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

busy() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }
if [[ $DEMO_NODE != 1 ]]; then
  for addr in "$EMULATOR_ADDR" "$METRICS_ADDR"; do
    if busy "$addr"; then say "$addr is in use (set EMULATOR_ADDR / METRICS_ADDR)"; exit 1; fi
  done
fi

if ! command -v kubectl >/dev/null 2>&1 && [[ ! -x .tools/bin/kubectl ]] || [[ ! -x .tools/bin/helm ]]; then
  scripts/install-tools.sh
fi
export PATH="$PWD/.tools/bin:$PATH"

# The operator as a pod from its image, on the one-node cluster of ../shared/k8s/node/.
node_demo() {
  NODE_SCRIPTS=${KEYSMITH_NODE_SCRIPTS:-$PWD/../shared/k8s/node}
  NODE_DIR=${KEYSMITH_NODE_DIR:-/tmp/keysmith-node}
  [[ $(id -u) == 0 ]] || { say "DEMO_NODE=1 needs root (kubelet, containerd, iptables)"; exit 1; }
  [[ -f $NODE_SCRIPTS/up.sh ]] || { say "no node scripts in $NODE_SCRIPTS (set KEYSMITH_NODE_SCRIPTS)"; exit 1; }
  if [[ -f $NODE_DIR/run/apiserver.pid ]] && kill -0 "$(cat "$NODE_DIR/run/apiserver.pid")" 2>/dev/null; then
    say "a node is already running in $NODE_DIR (L=$NODE_DIR $NODE_SCRIPTS/down.sh stops it)"; exit 1
  fi
  scripts/install-node-tools.sh >"$DEMO_DIR/install-node-tools.log" 2>&1 ||
    { tail -20 "$DEMO_DIR/install-node-tools.log" >&2; exit 1; }
  local bin=${DEMO_IMAGE_BIN:-}
  if [[ -z $bin ]]; then
    say "building keysmith"
    cargo build --quiet --bin keysmith
    bin="${CARGO_TARGET_DIR:-target}/debug/keysmith"
  fi
  say "building the image localhost/keysmith:demo from $bin (log: $DEMO_DIR/build-image.log)"
  IMAGE=localhost/keysmith:demo KEYSMITH_BIN=$bin OUT=$DEMO_DIR/image \
    scripts/build-image.sh >"$DEMO_DIR/build-image.log" 2>&1 || { tail -20 "$DEMO_DIR/build-image.log" >&2; exit 1; }
  if [[ ! -f $NODE_DIR/images/pause.tar || ! -f $NODE_DIR/images/busybox.tar ]]; then
    L=$NODE_DIR bash "$NODE_SCRIPTS/build-images.sh" >"$DEMO_DIR/node-images.log" 2>&1 ||
      { tail -20 "$DEMO_DIR/node-images.log" >&2; exit 1; }
  fi
  say "starting the one-node cluster (log: $DEMO_DIR/node-up.log)"
  node_up=1
  L=$NODE_DIR KUBECTL=$(command -v kubectl) EXTRA_IMAGES=$DEMO_DIR/image/keysmith-docker.tar \
    bash "$NODE_SCRIPTS/up.sh" >"$DEMO_DIR/node-up.log" 2>&1 || { tail -30 "$DEMO_DIR/node-up.log" >&2; exit 1; }
  export KUBECONFIG=$NODE_DIR/admin.kubeconfig

  say "helm install charts/keysmith (the operator as 2 pods of localhost/keysmith:demo)"
  kubectl apply -f examples/openrouter/credentials.yaml >/dev/null
  helm install keysmith charts/keysmith --namespace keysmith-system \
    --set image.repository=localhost/keysmith --set image.tag=demo --set image.pullPolicy=Never \
    --wait --timeout 5m >"$DEMO_DIR/helm-install.log" 2>&1 ||
    { cat "$DEMO_DIR/helm-install.log" >&2; kubectl -n keysmith-system get pods,events >&2; exit 1; }

  say "starting the OpenRouter emulator as a pod behind a Service"
  kubectl apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: openrouter-emulator, namespace: keysmith-system}
spec:
  replicas: 1
  selector: {matchLabels: {app: openrouter-emulator}}
  template:
    metadata: {labels: {app: openrouter-emulator}}
    spec:
      automountServiceAccountToken: false
      securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}
      containers:
      - name: emulator
        image: localhost/keysmith:demo
        imagePullPolicy: Never
        args: [emulate, --listen, "0.0.0.0:8787", openrouter]
        env:
        - name: KEYSMITH_EMULATOR_MANAGEMENT_KEY
          valueFrom: {secretKeyRef: {name: openrouter-management, key: token}}
        ports: [{containerPort: 8787}]
        readinessProbe: {tcpSocket: {port: 8787}, periodSeconds: 1}
        securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
---
apiVersion: v1
kind: Service
metadata: {name: openrouter-emulator, namespace: keysmith-system}
spec:
  selector: {app: openrouter-emulator}
  ports: [{port: 8787, targetPort: 8787}]
YAML
  kubectl -n keysmith-system rollout status deployment/openrouter-emulator --timeout=3m >/dev/null
  local ip
  ip=$(kubectl -n keysmith-system get service openrouter-emulator -o jsonpath='{.spec.clusterIP}')

  # no cluster DNS on this node: the provider names the emulator Service by its ClusterIP
  say "applying examples/openrouter/ (baseURL http://$ip:8787/api/v1)"
  sed "s|baseURL: http://127.0.0.1:8787/api/v1|baseURL: http://$ip:8787/api/v1|" examples/openrouter/provider.yaml |
    kubectl apply -f -
  kubectl apply -f examples/openrouter/apikey.yaml
  if ! kubectl wait --for=condition=Ready apikey/chat-backend -n default --timeout=180s >/dev/null; then
    say "the ApiKey did not become Ready; the operator logs end with:"
    kubectl -n keysmith-system logs -l app.kubernetes.io/name=keysmith --tail=20 --prefix >&2 || true
    exit 1
  fi
  echo
  kubectl -n keysmith-system get pods -o wide
  echo
  kubectl get apikeys -A
  echo
  echo "Secret default/chat-backend-openrouter holds the key (hint: $(kubectl get apikey chat-backend -n default -o jsonpath='{.status.keyHint}')), entries:"
  kubectl get secret chat-backend-openrouter -n default -o go-template='{{range $k, $v := .data}}  {{$k}}{{"\n"}}{{end}}'
  echo
  echo "Running. In another shell:  export KUBECONFIG=$KUBECONFIG"
  echo "  kubectl get apikeys -A    kubectl -n keysmith-system logs -l app.kubernetes.io/name=keysmith"
  echo "Logs in $DEMO_DIR. Ctrl-C stops the node (its pods, the operator, the emulator)."
  while true; do sleep 3600 & wait $!; done  # `wait` returns at once on a signal
}
if [[ $DEMO_NODE == 1 ]]; then
  node_demo
fi

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
