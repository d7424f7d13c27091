#!/usr/bin/env bash
# First run on a new machine (a GPU box, or this CPU): doctor, a short KD suite trained as a
# cohort and alone, 1/2/4 runs per GPU, and the bf16/fp16 bench against PyTorch, as one JSON
# document on stdout (progress on stderr). Works from the repository or from an unpacked release
# bundle (scripts/bundle.sh), against any python whose torch is 2.11:
#   scripts/device-check.sh [--device cuda] [--quick] > device-check.json
# HARNESS=<binary> and PYTHON=<python with torch> override what is found.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [[ -z ${PYTHON:-} ]]; then
    venv="${KD_HARNESS_HOME:-$HOME/.cache/kd-harness}/venv/bin/python"
    if [[ -x $venv ]]; then PYTHON="$venv"; else PYTHON="$(command -v python3 || true)"; fi
fi
if [[ -z $PYTHON ]] || ! torchlib="$("$PYTHON" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)"; then
    echo "error: no python with torch found (set PYTHON=/path/to/python, torch 2.11)" >&2
    exit 2
fi
if [[ -z ${HARNESS:-} ]]; then
    for cand in "$here/../bin/harness" "$here/../target/release/harness" "$here/../target/debug/harness"; do
        if [[ -x $cand ]]; then HARNESS="$cand"; break; fi
    done
fi
if [[ -z ${HARNESS:-} ]]; then
    echo "error: no harness binary next to $here (bin/, target/release/, target/debug/); set HARNESS=/path/to/harness" >&2
    exit 2
fi
# The binary's run path names the torch of the machine it was built on; this machine's torch wins.
export LD_LIBRARY_PATH="$torchlib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# bench finds its PyTorch reference (reference/bench_kd.py) here.
export KD_HARNESS_SCRIPTS="$here"
exec "$PYTHON" "$here/device_check.py" --harness "$HARNESS" "$@"
