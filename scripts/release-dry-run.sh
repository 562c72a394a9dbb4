#!/usr/bin/env bash
# A local rehearsal of the registry half of .github/workflows/release.yml, with nothing leaving
# this machine: starts Debian's docker-registry on loopback, pushes the operator image
# (target/image/keysmith-oci.tar from scripts/build-image.sh) with skopeo, packages the chart
# with scripts/package-chart.sh (image pinned by the pushed digest, as a release does), pushes it
# to oci://127.0.0.1:PORT/charts, pulls it back from oci:// and renders it, then checks that the
# image the rendered Deployment names is in the registry with that digest.
#
# ON_NODE=1 (as root) goes all the way, onto a real one-node cluster (../shared/k8s/node/up.sh,
# started here unless one is already up, and stopped again at the end): `helm install` from
# oci:// with `image.pullPolicy=Always`, so the node's containerd pulls the operator image from
# the loopback registry by digest (containerd's CRI speaks plain http to 127.0.0.1/localhost
# registries); the OpenRouter emulator runs as a pod from the same pulled image behind a
# Service; a ClusterKeyProvider on that Service and an ApiKey are applied, and the run ends when
# the ApiKey is Ready=True. The operator pods' imageID is checked to be the pushed digest.
# With INSTALL=1 and KUBECONFIG instead, it `helm install`s onto that cluster (whose nodes must
# be able to pull from the loopback registry) and waits for the Deployment only.
# Otherwise it stops at rendering the chart pulled from oci:// (said loudly at the end).
# Prints the image digest, the chart digest and the wall time of each phase.
#
# Usage: scripts/release-dry-run.sh     (tools: scripts/install-check-tools.sh registry;
#                                        ON_NODE=1 also scripts/install-node-tools.sh)
#   VERSION        release version (default: Cargo.toml's)
#   IMAGE_ARCHIVE  OCI archive to push (default target/image/keysmith-oci.tar; built with
#                  scripts/build-image.sh when missing)
#   PORT           registry port on 127.0.0.1 (default: a free one)
#   ON_NODE=1      install onto the local node and wait for a Ready ApiKey (root)
#   NODE_KEEP=1    leave the node (and the release) up at the end
#   KEYSMITH_NODE_SCRIPTS  the node scripts (default ../shared/k8s/node next to the checkout)
#   KEYSMITH_NODE_DIR      the node's working directory (default /tmp/keysmith-node)
#   KUBECTL        kubectl (default .tools/bin/kubectl, then PATH)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
log() { echo "release-dry-run: $*" >&2; }
now() { date +%s.%N; }
started=$(now)
phase_started=$started
phases=()
# phase NAME: the wall time since the previous phase ended
phase() {
  local t
  t=$(now)
  phases+=("$(awk -v a="$phase_started" -v b="$t" -v n="$1" 'BEGIN {printf "%-34s %6.1f s", n, b - a}')")
  log "$1 done in $(awk -v a="$phase_started" -v b="$t" 'BEGIN {printf "%.1f", b - a}') s"
  phase_started=$t
}

version=${VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)}
archive=${IMAGE_ARCHIVE:-$root/target/image/keysmith-oci.tar}
HELM=${HELM:-$root/.tools/bin/helm}
node=${ON_NODE:-0}
for c in docker-registry skopeo jq curl; do
  command -v $c >/dev/null || { log "$c is missing: run scripts/install-check-tools.sh registry"; exit 1; }
done
[[ -x $HELM ]] || { log "helm is missing: run scripts/install-tools.sh"; exit 1; }
if [[ $node == 1 ]]; then
  [[ $(id -u) == 0 ]] || { log "ON_NODE=1 needs root (kubelet, containerd, iptables)"; exit 1; }
  node_scripts=${KEYSMITH_NODE_SCRIPTS:-$root/../shared/k8s/node}
  [[ -f $node_scripts/up.sh && -f $node_scripts/down.sh ]] ||
    { log "no node scripts in $node_scripts (set KEYSMITH_NODE_SCRIPTS)"; exit 1; }
  node_dir=${KEYSMITH_NODE_DIR:-/tmp/keysmith-node}
  KUBECTL=${KUBECTL:-$([[ -x $root/.tools/bin/kubectl ]] && echo "$root/.tools/bin/kubectl" || command -v kubectl || true)}
  [[ -x $KUBECTL ]] || { log "kubectl is missing: run scripts/install-tools.sh"; exit 1; }
fi
if [[ ! -f $archive ]]; then
  log "no $archive: building it with scripts/build-image.sh"
  scripts/build-image.sh >&2
  phase "image build"
fi

work=$(mktemp -d)
registry_pid=""
node_started=0
cleanup() {
  local rc=$?
  if [[ $node_started == 1 && ${NODE_KEEP:-0} != 1 ]]; then
    log "stopping the node (down.sh, PURGE=1)"
    L=$node_dir PURGE=1 KUBECTL=$KUBECTL env -u NODE bash "$node_scripts/down.sh" >"$work/down.log" 2>&1 ||
      { log "down.sh failed:"; tail -20 "$work/down.log" >&2; }
  elif [[ $node_started == 1 ]]; then
    log "NODE_KEEP=1: the node stays up (export KUBECONFIG=$node_dir/admin.kubeconfig; L=$node_dir $node_scripts/down.sh stops it); the registry does not"
  fi
  # (the registry ends on SIGTERM with 143: not this script's status, which set -e would make it)
  if [[ -n $registry_pid ]]; then
    kill "$registry_pid" 2>/dev/null || true
    wait "$registry_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
  return $rc
}
trap cleanup EXIT

# 1. a registry on loopback only
port=${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
registry=127.0.0.1:$port
cat >"$work/registry.yml" <<YAML
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $work/storage}, delete: {enabled: true}}
http: {addr: $registry}
YAML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 50); do
  curl -fsS "http://$registry/v2/" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://$registry/v2/" >/dev/null || { cat "$work/registry.log" >&2; log "registry did not start"; exit 1; }
log "registry on http://$registry"
phase "registry start"

# 2. the image, pushed by tag; the digest is the manifest's, unchanged by the push
repository=$registry/keysmith/keysmith
skopeo copy --quiet --dest-tls-verify=false --digestfile "$work/digest" \
  "oci-archive:$archive" "docker://$repository:$version"
digest=$(cat "$work/digest")
built_digest_file=$(dirname "$archive")/image-digest
if [[ -f $built_digest_file ]]; then
  built=$(cat "$built_digest_file")
  [[ $built == "$digest" ]] || { log "pushed digest $digest differs from the built $built"; exit 1; }
fi
log "pushed $repository:$version = $digest"
phase "image push"

# 3. the chart, packaged as the release does and pushed to oci://
tgz=$(HELM=$HELM scripts/package-chart.sh "$version" "$repository" "$digest" "$work/dist")
"$HELM" push "$tgz" "oci://$registry/charts" --plain-http 2>&1 | tee "$work/push.log" >&2
chart_digest=$(awk '/^Digest:/ {print $2}' "$work/push.log")
log "pushed oci://$registry/charts/keysmith:$version = $chart_digest"
phase "chart package + push"

# 4. back from oci://: the rendered Deployment runs the pushed image by digest
"$HELM" template keysmith "oci://$registry/charts/keysmith" --version "$version" --plain-http \
  --namespace keysmith-system >"$work/rendered.yaml"
image=$(awk '/kind: Deployment/ {d=1} d && /image:/ {gsub(/"/, "", $2); print $2; exit}' "$work/rendered.yaml")
[[ $image == "$repository@$digest" ]] || { log "the chart from oci:// runs $image, not $repository@$digest"; exit 1; }
skopeo inspect --tls-verify=false "docker://$image" | jq -e --arg d "$digest" '.Digest == $d' >/dev/null ||
  { log "$image is not in the registry"; exit 1; }
arch=$(skopeo inspect --tls-verify=false --raw "docker://$image" | jq -r '.mediaType')
log "the chart from oci:// runs $image, present in the registry ($arch)"
phase "chart pull + render"

# 5. install: onto the local node (ON_NODE=1), onto KUBECONFIG's cluster (INSTALL=1), or not at all
ready_line=""
if [[ $node == 1 ]]; then
  export KUBECONFIG=$node_dir/admin.kubeconfig
  kubectl() { "$KUBECTL" "$@"; }
  if [[ -f $node_dir/run/apiserver.pid ]] && kill -0 "$(cat "$node_dir/run/apiserver.pid")" 2>/dev/null &&
    [[ -f $node_dir/run/kubelet.pid ]] && kill -0 "$(cat "$node_dir/run/kubelet.pid")" 2>/dev/null; then
    log "a node is already up in $node_dir: using it (it stays up)"
  else
    if [[ -f $node_dir/run/apiserver.pid || -f $node_dir/run/kubelet.pid ]]; then
      log "the remains of an earlier node in $node_dir: down.sh first"
      L=$node_dir PURGE=1 KUBECTL=$KUBECTL env -u NODE bash "$node_scripts/down.sh" >"$work/down-stale.log" 2>&1
    fi
    if [[ ! -f $node_dir/images/pause.tar || ! -f $node_dir/images/busybox.tar ]]; then
      L=$node_dir env -u NODE bash "$node_scripts/build-images.sh" >"$work/build-images.log" 2>&1 ||
        { tail -20 "$work/build-images.log" >&2; log "node/build-images.sh failed"; exit 1; }
    fi
    node_started=1
    # No EXTRA_IMAGES: the operator image reaches the node only through the registry.
    L=$node_dir KUBECTL=$KUBECTL env -u NODE bash "$node_scripts/up.sh" >"$work/up.log" 2>&1 ||
      { tail -30 "$work/up.log" >&2; log "node/up.sh failed"; exit 1; }
    log "node up ($node_dir)"
  fi
  phase "node up"

  ns=keysmith-system
  app_ns=release-dry-run
  # pullPolicy Always: containerd resolves the image at the registry even if some layer is cached
  "$HELM" install keysmith "oci://$registry/charts/keysmith" --version "$version" --plain-http \
    --namespace $ns --create-namespace --set image.pullPolicy=Always --wait --timeout 5m >"$work/install.log" 2>&1 || {
    cat "$work/install.log" >&2
    kubectl -n $ns get pods,events -o wide >&2 || true
    log "helm install from oci:// failed"
    exit 1
  }
  # every operator container runs the image pulled from the registry, by digest
  image_ids=$(kubectl -n $ns get pods -l app.kubernetes.io/name=keysmith,app.kubernetes.io/instance=keysmith \
    -o jsonpath='{range .items[*]}{.status.containerStatuses[*].imageID}{"\n"}{end}' | sort -u)
  [[ -n $image_ids ]] && ! grep -qvx "$repository@$digest" <<<"$image_ids" ||
    { log "operator pods run [$image_ids], not $repository@$digest"; exit 1; }
  pods=$(kubectl -n $ns get pods -l app.kubernetes.io/name=keysmith,app.kubernetes.io/instance=keysmith --no-headers | wc -l)
  log "helm install from oci://: $pods operator pods Ready, pulled from the registry ($repository@$digest)"
  phase "helm install (pull + pods Ready)"

  # the OpenRouter emulator: a pod from the same image, behind a Service (no cluster DNS: the
  # provider's URL names the ClusterIP); its management key is a random one, in a Secret
  mgmt="sk-or-v1-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  kubectl -n $ns create secret generic openrouter-management --from-literal=token="$mgmt" \
    --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  unset mgmt
  kubectl apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: openrouter-emulator, namespace: $ns}
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
        image: $repository@$digest
        imagePullPolicy: Always
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
metadata: {name: openrouter-emulator, namespace: $ns}
spec:
  selector: {app: openrouter-emulator}
  ports: [{port: 8787, targetPort: 8787}]
YAML
  kubectl -n $ns rollout status deployment/openrouter-emulator --timeout=3m >&2
  cluster_ip=$(kubectl -n $ns get service openrouter-emulator -o jsonpath='{.spec.clusterIP}')
  log "emulator Ready behind http://$cluster_ip:8787"
  phase "emulator pod Ready"

  kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Namespace
metadata: {name: $app_ns}
---
apiVersion: keysmith.dev/v1alpha1
kind: ClusterKeyProvider
metadata: {name: release-dry-run}
spec:
  openrouter:
    baseURL: http://$cluster_ip:8787/api/v1
    managementKeySecretRef: {name: openrouter-management, namespace: $ns, key: token}
  namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: $app_ns}}
---
apiVersion: keysmith.dev/v1alpha1
kind: ApiKey
metadata: {name: dry-run, namespace: $app_ns}
spec:
  providerRef: {kind: ClusterKeyProvider, name: release-dry-run}
  secret: {name: dry-run-openrouter, key: api-key}
YAML
  if ! kubectl -n $app_ns wait --for=condition=Ready=True apikey/dry-run --timeout=3m >/dev/null; then
    kubectl -n $app_ns get apikey dry-run -o jsonpath='{.status.conditions}' >&2 || true
    echo >&2
    kubectl -n $ns logs -l app.kubernetes.io/name=keysmith --tail=30 --prefix >&2 || true
    log "the ApiKey did not become Ready"
    exit 1
  fi
  hint=$(kubectl -n $app_ns get apikey dry-run -o jsonpath='{.status.keyHint}')
  entries=$(kubectl -n $app_ns get secret dry-run-openrouter -o go-template='{{range $k, $v := .data}}{{$k}} {{end}}')
  ready_line="ApiKey $app_ns/dry-run Ready=True (key hint $hint; Secret $app_ns/dry-run-openrouter holds: $entries)"
  log "$ready_line"
  phase "ApiKey Ready"
  if [[ $node_started == 0 ]]; then
    # a node that was already up is left as it was found: the ApiKey first (its key is revoked
    # at the emulator), then the release and the objects of this run
    kubectl -n $app_ns delete apikey dry-run --timeout=60s >/dev/null || true
    "$HELM" uninstall keysmith --namespace $ns --wait >/dev/null || true
    kubectl delete clusterkeyprovider release-dry-run --ignore-not-found >/dev/null || true
    kubectl delete namespace $app_ns $ns --wait=false --ignore-not-found >/dev/null || true
  fi
  installed="installed from oci:// onto the local node; the image pulled by its containerd from $registry"
elif [[ ${INSTALL:-0} == 1 && -n ${KUBECONFIG:-} ]]; then
  "$HELM" install keysmith "oci://$registry/charts/keysmith" --version "$version" --plain-http \
    --namespace keysmith-system --create-namespace --wait --timeout 5m
  installed="installed from oci:// onto the cluster of KUBECONFIG (Deployment available)"
  phase "helm install"
else
  # (helm install --dry-run still asks a cluster for its version; step 4 rendered the same
  # chart from oci:// without one)
  installed="NOT installed on a cluster: rendered from oci:// only (ON_NODE=1 installs onto the local node; INSTALL=1 with KUBECONFIG onto a cluster whose nodes can pull from $registry)"
fi

echo "release dry run of $version in $(awk -v a="$started" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}') s:"
echo "  image   $repository@$digest"
echo "  chart   oci://$registry/charts/keysmith:$version ($chart_digest), image.digest pinned"
echo "  $installed"
[[ -z $ready_line ]] || echo "  $ready_line"
echo "  phases (wall time):"
for p in "${phases[@]}"; do echo "    $p"; done
