#!/usr/bin/env bash
# Sets everything up (torch venv, release build) and runs the quick suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh
cargo build --release --locked --bin harness
bin="${CARGO_TARGET_DIR:-target}/release/harness"
"$bin" doctor
"$bin" run suites/quick.toml --device cpu "$@"
