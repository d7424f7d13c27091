#!/usr/bin/env bash
# Sets everything up (torch venv) and runs the test suite (dev profile, CPU, deterministic).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh
# The Slurm executor is tested against a real single-node cluster on this machine (installed from
# the Debian packages and started by scripts/slurm.sh; root needed the first time). Where it cannot
# start, its tests skip with a message, except under CI (KD_HARNESS_REQUIRE_SLURM), where they fail.
if ! scripts/slurm.sh up; then
    if [[ -n ${KD_HARNESS_REQUIRE_SLURM:-} ]]; then
        echo "error: KD_HARNESS_REQUIRE_SLURM is set and scripts/slurm.sh up failed" >&2
        exit 1
    fi
    echo "warning: no Slurm cluster could be started; the Slurm executor tests will skip" >&2
fi
# The report test renders index.html in headless Chromium (Debian's package, installed by
# scripts/browser.sh); where it cannot be had the test skips, except under CI.
if ! scripts/browser.sh >/dev/null; then
    if [[ -n ${KD_HARNESS_REQUIRE_BROWSER:-} ]]; then
        echo "error: KD_HARNESS_REQUIRE_BROWSER is set and scripts/browser.sh failed" >&2
        exit 1
    fi
    echo "warning: no Chromium; the browser test of the report will skip" >&2
fi
cargo test --locked --workspace -- --test-threads=2 "$@"
