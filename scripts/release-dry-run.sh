#!/usr/bin/env bash
# A local rehearsal of the registry half of .github/workflows/release.yml, with nothing leaving
# this machine: starts Debian's docker-registry on loopback, pushes the operator image
# (target/image/keysmith-oci.tar from scripts/build-image.sh) with skopeo, packages the chart
# with scripts/package-chart.sh (image pinned by the pushed digest, as a release does), pushes it
# to oci://127.0.0.1:PORT/charts, pulls it back from oci:// and renders it, then checks that the
# image the rendered Deployment names is in the registry with that digest.
#
# With INSTALL=1 and a cluster in KUBECONFIG whose nodes can pull from the loopback registry,
# it also `helm install`s from oci:// and waits for the Deployment. Otherwise it stops at
# rendering the chart pulled from oci:// (said loudly at the end): the local node imports images from
# archives instead of pulling (docs/e2e.md), so installing onto it is the node e2e tests' job.
#
# Usage: scripts/release-dry-run.sh     (tools: scripts/install-check-tools.sh registry)
#   VERSION        release version (default: Cargo.toml's)
#   IMAGE_ARCHIVE  OCI archive to push (default target/image/keysmith-oci.tar; built with
#                  scripts/build-image.sh when missing)
#   PORT           registry port on 127.0.0.1 (default: a free one)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
log() { echo "release-dry-run: $*" >&2; }
started=$SECONDS

version=${VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)}
archive=${IMAGE_ARCHIVE:-$root/target/image/keysmith-oci.tar}
HELM=${HELM:-$root/.tools/bin/helm}
for c in docker-registry skopeo jq curl; do
  command -v $c >/dev/null || { log "$c is missing: run scripts/install-check-tools.sh registry"; exit 1; }
done
[[ -x $HELM ]] || { log "helm is missing: run scripts/install-tools.sh"; exit 1; }
if [[ ! -f $archive ]]; then
  log "no $archive: building it with scripts/build-image.sh"
  scripts/build-image.sh >&2
fi

work=$(mktemp -d)
registry_pid=""
cleanup() {
  [[ -n $registry_pid ]] && kill "$registry_pid" 2>/dev/null && wait "$registry_pid" 2>/dev/null
  rm -rf "$work"
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

# 2. the image, pushed by tag; the digest is the manifest's, unchanged by the push
repository=$registry/keysmith/keysmith
skopeo copy --quiet --dest-tls-verify=false --digestfile "$work/digest" \
  "oci-archive:$archive" "docker://$repository:$version"
digest=$(cat "$work/digest")
if [[ -f $root/target/image/image-digest && $archive == "$root/target/image/keysmith-oci.tar" ]]; then
  built=$(cat "$root/target/image/image-digest")
  [[ $built == "$digest" ]] || { log "pushed digest $digest differs from the built $built"; exit 1; }
fi
log "pushed $repository:$version = $digest"

# 3. the chart, packaged as the release does and pushed to oci://
tgz=$(HELM=$HELM scripts/package-chart.sh "$version" "$repository" "$digest" "$work/dist")
"$HELM" push "$tgz" "oci://$registry/charts" --plain-http 2>&1 | tee "$work/push.log" >&2
chart_digest=$(awk '/^Digest:/ {print $2}' "$work/push.log")
log "pushed oci://$registry/charts/keysmith:$version = $chart_digest"

# 4. back from oci://: the rendered Deployment runs the pushed image by digest
"$HELM" template keysmith "oci://$registry/charts/keysmith" --version "$version" --plain-http \
  --namespace keysmith-system >"$work/rendered.yaml"
image=$(awk '/kind: Deployment/ {d=1} d && /image:/ {gsub(/"/, "", $2); print $2; exit}' "$work/rendered.yaml")
[[ $image == "$repository@$digest" ]] || { log "the chart from oci:// runs $image, not $repository@$digest"; exit 1; }
skopeo inspect --tls-verify=false "docker://$image" | jq -e --arg d "$digest" '.Digest == $d' >/dev/null ||
  { log "$image is not in the registry"; exit 1; }
arch=$(skopeo inspect --tls-verify=false --raw "docker://$image" | jq -r '.mediaType')
log "the chart from oci:// runs $image, present in the registry ($arch)"

# 5. install: for real when asked and possible, else a server-less dry run
if [[ ${INSTALL:-0} == 1 && -n ${KUBECONFIG:-} ]]; then
  "$HELM" install keysmith "oci://$registry/charts/keysmith" --version "$version" --plain-http \
    --namespace keysmith-system --create-namespace --wait --timeout 5m
  installed="installed from oci:// onto the cluster of KUBECONFIG (Deployment available)"
else
  # (helm install --dry-run still asks a cluster for its version; step 4 rendered the same
  # chart from oci:// without one)
  installed="NOT installed on a cluster: rendered from oci:// only (set INSTALL=1 and KUBECONFIG to a cluster whose nodes can pull from $registry)"
fi

echo "release dry run of $version in $((SECONDS - started)) s:"
echo "  image   $repository@$digest"
echo "  chart   oci://$registry/charts/keysmith:$version ($chart_digest), image.digest pinned"
echo "  $installed"
