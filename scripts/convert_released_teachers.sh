#!/usr/bin/env bash
# Converts mdistiller's released CIFAR-100 teachers into the state dicts that
# suites/cifar100_released.toml loads, and checks that each loads strictly into its model.
#
#   scripts/convert_released_teachers.sh [--trust-pickle] SRC [OUT [MODEL...]]
#
# SRC    cifar_teachers.tar from https://github.com/megvii-research/mdistiller/releases/tag/checkpoints
#        (what mdistiller's README says to download), or the folder it unpacks to (`cifar_teachers/`
#        or its parent). Members: cifar_teachers/<MODEL>_vanilla/ckpt_epoch_240.pth, each a
#        torch.save({"model": state_dict, ...}).
# OUT    default teachers/mdistiller (in the repository: where the suite looks); gets <MODEL>.safetensors.
# MODEL  default all six: resnet56 resnet110 resnet32x4 wrn_40_2 vgg13 ResNet50.
# --trust-pickle  passed to scripts/pth_to_safetensors.py: needed only if a checkpoint pickles more
#        than tensors and plain types (it unpickles arbitrary objects: only for files you trust).
#
# Exit 2 on a missing input or member, or a converted state dict that does not load strictly
# into the PyTorch reference model of the same name (scripts/reference/models.py).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/env.sh"

trust=()
if [[ ${1:-} == --trust-pickle ]]; then
    trust=(--trust-pickle)
    shift
fi
if [[ $# -lt 1 ]]; then
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
src="$1"
out="${2:-$here/../teachers/mdistiller}"
shift $(($# >= 2 ? 2 : 1))
models=("$@")
[[ ${#models[@]} -gt 0 ]] || models=(resnet56 resnet110 resnet32x4 wrn_40_2 vgg13 ResNet50)

member() { echo "cifar_teachers/$1_vanilla/ckpt_epoch_240.pth"; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if [[ -f $src ]]; then
    members=()
    for m in "${models[@]}"; do members+=("$(member "$m")"); done
    if ! tar -xf "$src" -C "$tmp" "${members[@]}" 2>"$tmp/tar.err"; then
        echo "error: $src: cannot extract ${members[*]}:" >&2
        cat "$tmp/tar.err" >&2
        echo "(expected mdistiller's cifar_teachers.tar, whose members are $(member '<MODEL>'))" >&2
        exit 2
    fi
    root="$tmp"
elif [[ -d $src/cifar_teachers ]]; then
    root="$src"
elif [[ -d $src && $(basename "$(cd "$src" && pwd)") == cifar_teachers ]]; then
    root="$(dirname "$(cd "$src" && pwd)")"
else
    echo "error: $src: expected cifar_teachers.tar or the folder it unpacks to (cifar_teachers/ or its parent)" >&2
    exit 2
fi

mkdir -p "$out"
for m in "${models[@]}"; do
    pth="$root/$(member "$m")"
    if [[ ! -f $pth ]]; then
        echo "error: $src has no $(member "$m")" >&2
        exit 2
    fi
    python "$here/pth_to_safetensors.py" "${trust[@]}" "$pth" "$out/$m.safetensors" || exit 2
done

# Strict load into the reference definitions: same names, same shapes, nothing missing or extra.
PYTHONPATH="$here/reference" python - "$out" "${models[@]}" <<'EOF' || exit 2
import sys

import models
import st

out, names = sys.argv[1], sys.argv[2:]
for name in names:
    path = f"{out}/{name}.safetensors"
    model = models.architecture(name, 100)[0]
    want = {k: v.shape for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    got = {k: v.shape for k, v in st.load(path).items()}
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    shapes = [f"{k}: {tuple(got[k])} vs {tuple(want[k])}" for k in sorted(set(got) & set(want)) if got[k] != want[k]]
    if missing or extra or shapes:
        raise SystemExit(f"error: {path} is not a 100-class {name}: missing {missing[:5]}, unexpected {extra[:5]}, shapes {shapes[:5]}")
    print(f"{path}: {len(got)} tensors, loads strictly as {name}")
EOF
# sha256 of each converted file, to pin next to the suite.
for m in "${models[@]}"; do sha256sum "$out/$m.safetensors"; done
