#!/usr/bin/env bash
# Regenerates crds/ and charts/keysmith/crds/ from the Rust types (`keysmith crds`).
# tests/chart.rs (crds_match_rust_types) fails when either directory drifts.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --quiet --bin keysmith
bin="${CARGO_TARGET_DIR:-target}/debug/keysmith"
for dir in crds charts/keysmith/crds; do
  rm -f "$dir"/*.keysmith.dev.yaml
  "$bin" crds --output-dir "$dir"
done
