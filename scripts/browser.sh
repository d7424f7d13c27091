#!/usr/bin/env bash
# Headless Chromium for the report test (tests/report_browser.rs): installs Debian's `chromium`
# if missing (root), like scripts/slurm.sh installs Slurm. Prints the browser's path.
set -euo pipefail
say() { echo "browser.sh: $*" >&2; }
for b in chromium chromium-browser; do
    if p=$(command -v "$b"); then echo "$p"; exit 0; fi
done
if [[ $(id -u) != 0 ]]; then
    say "Chromium is not installed and installing it needs root (apt-get install chromium)"
    exit 1
fi
say "installing chromium from the Debian packages"
export DEBIAN_FRONTEND=noninteractive
log=/tmp/kd-harness-chromium-apt.log
if ! apt-get install -y -q --no-install-recommends chromium >"$log" 2>&1; then
    apt-get update -q >>"$log" 2>&1
    apt-get install -y -q --no-install-recommends chromium >>"$log" 2>&1 || { say "apt-get install chromium failed (see $log)"; exit 1; }
fi
command -v chromium
