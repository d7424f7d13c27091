"""Per-tensor statistics of freshly initialised reference models (models.py), for tests/init.rs.

usage: init_stats.py NUM_CLASSES OUT.json MODEL...
       init_stats.py --official MDISTILLER_DIR [MODEL...]

Writes {model: {tensor: [shape, mean, std, min, max]}} (population std, float64) for every entry
of each model's state dict except BN's num_batches_tracked, the model built with
torch.manual_seed(0) and initialised as its official file does. Whole tensors never leave the
process, so the ImageNet-size models stay cheap.

--official builds the same models from an mdistiller checkout (its own files and init loops) and
checks that names, shapes and every tensor's distribution agree with models.py's: the cross-check
of the reference's init loops against the official files.
"""
import json
import math
import sys

import torch

import models


def stats(model):
    out = {}
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        x = v.detach().double().flatten()
        out[k] = [list(v.shape), x.mean().item(), x.std(unbiased=False).item(), x.min().item(), x.max().item()]
    return out


def official_models(root):
    """The mdistiller constructors of the zoo's models (CIFAR and ImageNet files), by harness name."""
    sys.path.insert(0, root)
    from mdistiller.models.cifar import mobilenetv2, mv2_tinyimagenet, resnet, resnetv2, ShuffleNetv1, ShuffleNetv2, vgg, wrn
    from mdistiller.models.imagenet import mobilenetv1
    from mdistiller.models.imagenet import resnet as inet
    c = 100
    names = {
        "resnet8": lambda: resnet.resnet8(num_classes=c), "resnet20": lambda: resnet.resnet20(num_classes=c),
        "resnet56": lambda: resnet.resnet56(num_classes=c), "resnet110": lambda: resnet.resnet110(num_classes=c),
        "resnet8x4": lambda: resnet.resnet8x4(num_classes=c), "resnet32x4": lambda: resnet.resnet32x4(num_classes=c),
        "wrn_16_2": lambda: wrn.wrn_16_2(num_classes=c), "wrn_40_2": lambda: wrn.wrn_40_2(num_classes=c),
        "vgg8": lambda: vgg.vgg8_bn(num_classes=c), "vgg13": lambda: vgg.vgg13_bn(num_classes=c),
        "MobileNetV2": lambda: mobilenetv2.mobile_half(num_classes=c),
        "mobilenetv2_tinyimagenet": lambda: mv2_tinyimagenet.mobilenetv2_tinyimagenet(num_classes=c),
        "ShuffleV1": lambda: ShuffleNetv1.ShuffleV1(num_classes=c), "ShuffleV2": lambda: ShuffleNetv2.ShuffleV2(num_classes=c),
        "ResNet18": lambda: resnetv2.ResNet18(num_classes=c), "ResNet50": lambda: resnetv2.ResNet50(num_classes=c),
        "resnet18": lambda: inet.resnet18(num_classes=c), "resnet50": lambda: inet.resnet50(num_classes=c),
        "mobilenetv1": lambda: mobilenetv1.MobileNetV1(),
    }
    return names


def close(a, b):
    """Two tensors' [shape, mean, std, min, max] drawn from one distribution (tolerances of n draws)."""
    n, m1, s1, lo1, hi1 = math.prod(a[0]), *a[1:]
    _, m2, s2, lo2, hi2 = b
    if s1 == 0 or s2 == 0:
        return s1 == s2 and lo1 == lo2 and hi1 == hi2
    tol = 5 / math.sqrt(n) + 0.005
    return abs(s1 / s2 - 1) <= tol and abs(m1 - m2) <= 5 * max(s1, s2) * math.sqrt(2 / n) + 1e-12


def cross_check(root, only):
    bad = 0
    for name, make in official_models(root).items():
        if only and name not in only:
            continue
        torch.manual_seed(0)
        off = stats(make())
        torch.manual_seed(1)
        ref = stats(models.build(name, 1000 if name == "mobilenetv1" else 100))
        if set(off) != set(ref):
            print(f"{name}: names differ: official only {sorted(set(off) - set(ref))[:5]}, reference only {sorted(set(ref) - set(off))[:5]}")
            bad += 1
            continue
        wrong = [k for k in off if off[k][0] != ref[k][0] or not close(off[k], ref[k])]
        print(f"{name}: {len(off)} tensors, {len(wrong)} differ" + (f": {wrong[:5]}" if wrong else ""))
        bad += bool(wrong)
    return bad


def main():
    if sys.argv[1] == "--official":
        sys.exit(1 if cross_check(sys.argv[2], set(sys.argv[3:])) else 0)
    classes, out, names = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    result = {}
    for name in names:
        torch.manual_seed(0)
        result[name] = stats(models.build(name, classes))
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
