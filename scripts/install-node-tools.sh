#!/usr/bin/env bash
# Installs, from Debian's packages, what the operator image build (scripts/build-image.sh) and
# the one-node cluster of the node e2e tests (tests/e2e_node.rs, ../shared/k8s/node/) need:
#   image:  buildah (build FROM scratch, save OCI/docker archives), mmdebstrap (libc6, libgcc-s1
#           and ca-certificates unpacked with --variant=extract), skopeo (archive inspection)
#   node:   containerd, runc, containernetworking-plugins, iptables, gcc + libc6-dev (the pause
#           image), busybox-static (the workload image), jq, openssl, curl, xz-utils
# Idempotent: does nothing when every command is already there. Needs root (apt-get) on Debian
# or Ubuntu; elsewhere it says what to install and fails.
#
# Usage: scripts/install-node-tools.sh [--check]   (--check: only report what is missing)
set -euo pipefail

PKGS=(buildah mmdebstrap skopeo containerd runc containernetworking-plugins iptables
  gcc libc6-dev busybox-static jq openssl curl xz-utils ca-certificates)

log() { echo "install-node-tools: $*" >&2; }

missing() {
  local m=()
  for c in buildah mmdebstrap skopeo containerd runc iptables gcc jq openssl curl xz; do
    command -v "$c" >/dev/null 2>&1 || m+=("$c")
  done
  [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local ]] || m+=(containernetworking-plugins)
  [[ -x /bin/busybox ]] || m+=(busybox-static)
  [[ -f /usr/include/stdio.h ]] || m+=(libc6-dev)
  echo "${m[*]:-}"
}

m=$(missing)
if [[ -z "$m" ]]; then
  log "all there"
  exit 0
fi
if [[ "${1:-}" == --check ]]; then
  log "missing: $m"
  exit 1
fi
if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
  log "missing: $m; install as root: apt-get install ${PKGS[*]}"
  exit 1
fi
log "missing: $m; installing ${PKGS[*]}"
export DEBIAN_FRONTEND=noninteractive
# An apt list older than a day (or none) is refreshed once; installing from a stale list fails.
if [[ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -1)" ]]; then
  apt-get update -qq
fi
apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >/dev/null
m=$(missing)
[[ -z "$m" ]] || { log "still missing after apt-get: $m"; exit 1; }
log "installed"
