#!/usr/bin/env bash
# A relocatable bundle for machines with PyTorch 2.11 but no Rust toolchain (GPU boxes): the
# stripped harness binary, a launcher that finds that machine's torch, the device check, the
# PyTorch references the bench runs, and the shipped suites, as one .tar.gz.
#   scripts/bundle.sh [--profile release|dev] [--out DIR] [--max-mib N] [--binary PATH]
# (--binary: bundle an already built harness instead of building one.)
# On the target: tar xzf kd-harness-*.tar.gz && kd-harness-*/harness doctor
# (PYTHON=/path/to/python selects the torch; default: python3 on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release out=dist max_mib=64 binary=
while [[ $# -gt 0 ]]; do
    case $1 in
        --profile) profile=${2:?--profile needs release or dev}; shift 2 ;;
        --out) out=${2:?--out needs a folder}; shift 2 ;;
        --max-mib) max_mib=${2:?--max-mib needs a number}; shift 2 ;;
        --binary) binary=${2:?--binary needs a path}; shift 2 ;;
        *) echo "error: unknown argument $1 (expected --profile, --out, --max-mib, --binary)" >&2; exit 2 ;;
    esac
done
case $profile in
    release) dir=release ;;
    dev) dir=debug ;;
    *) echo "error: --profile $profile: expected release or dev" >&2; exit 2 ;;
esac
[[ $max_mib =~ ^[0-9]+$ ]] || { echo "error: --max-mib $max_mib: expected a whole number of MiB" >&2; exit 2; }
if [[ -n $binary ]]; then
    [[ -x $binary ]] || { echo "error: --binary $binary: not an executable file" >&2; exit 2; }
    bin="$binary"
else
    scripts/setup.sh
    . scripts/env.sh
    cargo build --locked --profile "$profile" --bin harness
    bin="${CARGO_TARGET_DIR:-target}/$dir/harness"
fi
version="$("$bin" --version | awk '{print $2}')" || { echo "error: $bin --version failed" >&2; exit 2; }
commit="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
name="kd-harness-$version-$commit-linux-$(uname -m)"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
root="$stage/$name"
mkdir -p "$root/bin" "$root/scripts/reference" "$out"
cp "$bin" "$root/bin/harness"
strip "$root/bin/harness"
cp scripts/device-check.sh scripts/device_check.py "$root/scripts/"
cp scripts/reference/*.py "$root/scripts/reference/"
cp -r suites "$root/suites"
cp README.md "$root/"
cat > "$root/harness" <<'LAUNCH'
#!/usr/bin/env bash
# Runs bin/harness against this machine's torch (PYTHON=..., default python3; torch 2.11).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
py="${PYTHON:-python3}"
if ! lib="$("$py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)"; then
    echo "error: $py cannot import torch; set PYTHON to a python with torch 2.11" >&2
    exit 2
fi
export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export KD_HARNESS_SCRIPTS="${KD_HARNESS_SCRIPTS:-$here/scripts}"
exec "$here/bin/harness" "$@"
LAUNCH
chmod +x "$root/harness"
tarball="$out/$name.tar.gz"
tar -C "$stage" -cf - "$name" | gzip -6 > "$tarball"
bytes=$(stat -c %s "$tarball")
mib=$(( (bytes + 1048575) / 1048576 ))
echo "bundle: $tarball ($mib MiB; binary $(( $(stat -c %s "$root/bin/harness") / 1048576 )) MiB stripped, from $bin)"
if [[ $max_mib -gt 0 && $mib -gt $max_mib ]]; then
    echo "error: $tarball is $mib MiB, over --max-mib $max_mib" >&2
    exit 1
fi
