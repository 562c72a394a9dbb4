#!/usr/bin/env bash
# Packages the Helm chart as a release publishes it: version and appVersion set, the image
# repository set and pinned by digest (image.digest). Used by .github/workflows/release.yml and
# scripts/release-dry-run.sh, so the dry run packages exactly what a release does.
#
# Usage: scripts/package-chart.sh VERSION IMAGE_REPOSITORY IMAGE_DIGEST OUT_DIR
#   prints the path of the packaged .tgz
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ $# -eq 4 ]] || { echo "usage: $0 VERSION IMAGE_REPOSITORY IMAGE_DIGEST OUT_DIR" >&2; exit 2; }
version=$1 repository=$2 digest=$3 out=$4
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+([-+].*)?$ ]] || { echo "not a SemVer version: $version" >&2; exit 2; }
[[ $digest =~ ^sha256:[0-9a-f]{64}$ ]] || { echo "not a sha256 digest: $digest" >&2; exit 2; }
HELM="${HELM:-$(command -v helm || echo .tools/bin/helm)}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r charts/keysmith "$work/keysmith"
chart="$work/keysmith"
sed -i "s|^version: .*|version: $version|; s|^appVersion: .*|appVersion: \"$version\"|" "$chart/Chart.yaml"
sed -i "s|^  repository: .*|  repository: $repository|; s|^  digest: \"\"|  digest: \"$digest\"|" "$chart/values.yaml"
# the Artifact Hub image list names the published image
sed -i "s|image: ghcr.io/keysmith/keysmith:.*|image: $repository@$digest|" "$chart/Chart.yaml"
grep -q "^  digest: \"$digest\"" "$chart/values.yaml" || { echo "image.digest not set" >&2; exit 1; }
grep -q "^  repository: $repository\$" "$chart/values.yaml" || { echo "image.repository not set" >&2; exit 1; }
mkdir -p "$out"
"$HELM" package "$chart" --destination "$out" >/dev/null
echo "$out/keysmith-$version.tgz"
