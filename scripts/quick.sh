#!/usr/bin/env bash
# Sets everything up (torch venv, build), runs the quick suite on the CPU and writes its report.
# Builds the dev profile (dependencies optimised; see Cargo.toml): the same build the tests use,
# so the two README commands compile once. `cargo build --release` for long GPU suites.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh
cargo build --locked --bin harness
bin="${CARGO_TARGET_DIR:-target}/debug/harness"
"$bin" doctor
"$bin" run suites/quick.toml --device cpu "$@"
"$bin" report suites/quick.toml --baseline ce
