#!/usr/bin/env bash
# Writes the krew manifest of the kubectl plugin (kubectl-keysmith) for a release, from the
# plugin archives the release built: one platform entry per archive, each with its sha256.
#
# Usage: scripts/krew-manifest.sh VERSION DIST_DIR REPO > keysmith.yaml
#   VERSION   the release version without the leading v (e.g. 0.2.0)
#   DIST_DIR  holds kubectl-keysmith-VERSION-<rust target>.tar.gz (x86_64/aarch64 linux)
#   REPO      owner/name of the GitHub repository the release is published in
# Used by .github/workflows/release.yml; tests/chart.rs checks its output.
set -euo pipefail
version="$1" dist="$2" repo="$3"
cat <<YAML
apiVersion: krew.googlecontainertools.github.com/v1alpha2
kind: Plugin
metadata:
  name: keysmith
spec:
  version: v${version}
  homepage: https://github.com/${repo}
  shortDescription: See, rotate and revoke keysmith's API keys end to end
  description: |
    kubectl keysmith shows every ApiKey as a tree (provider object, Secret, the workloads that
    use it, the key at the provider, what is wrong), rotates keys by name or selector and
    follows the rollout, and revokes a leaked key in one command (revoke-now). It uses your
    kubeconfig and RBAC and needs nothing from the operator but what the API server holds.
  platforms:
YAML
found=0
for archive in "$dist"/kubectl-keysmith-"$version"-*.tar.gz; do
  [[ -e "$archive" ]] || continue
  target="${archive##*/kubectl-keysmith-${version}-}"
  target="${target%.tar.gz}"
  case "$target" in
    x86_64-unknown-linux-*) arch=amd64 ;;
    aarch64-unknown-linux-*) arch=arm64 ;;
    *) echo "krew-manifest: no krew platform for $target" >&2; exit 1 ;;
  esac
  sha="$(sha256sum "$archive" | cut -d' ' -f1)"
  found=$((found + 1))
  cat <<YAML
  - selector:
      matchLabels:
        os: linux
        arch: ${arch}
    uri: https://github.com/${repo}/releases/download/v${version}/${archive##*/}
    sha256: ${sha}
    bin: kubectl-keysmith
YAML
done
if [[ $found -eq 0 ]]; then
  echo "krew-manifest: no kubectl-keysmith-${version}-*.tar.gz in $dist" >&2
  exit 1
fi
