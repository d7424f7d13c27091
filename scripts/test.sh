#!/usr/bin/env bash
# Sets everything up (torch venv) and runs the test suite (dev profile, CPU, deterministic).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh
cargo test --locked --workspace -- --test-threads=2 "$@"
