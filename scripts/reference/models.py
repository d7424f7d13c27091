"""PyTorch reference definitions of the CIFAR model zoo, written for kd-harness's tests and its
`harness bench` baseline from the architectures of RepDistiller/mdistiller (same module names,
so their state dicts load, and the same feature taps: `forward(x)` returns
(logits, feats, preact, pooled) with feats = [stem, stage outputs...] as RepDistiller's
`is_feat=True` list without its last (pooled) entry, preact = the same with `preact=True`).

Pooling is global average pooling everywhere: RepDistiller's fixed windows (AvgPool 8, 4, 2) cover
the whole final map at 32×32, so it is the same there, and 64×64 inputs (Tiny-ImageNet) run too.

Initialisation is each family's official one: `build` applies the init loop of the official file
(copied below, one function per loop, citing it), or none where the official file has none (then
PyTorch's module defaults stand). tests/init.rs compares the harness's fresh weights with these
tensor by tensor; `init_stats.py --official` cross-checks these against the official files.

Needs only torch (no torchvision).
"""
import math
import pathlib
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


# --- resnet8 ... resnet110, resnet8x4, resnet32x4 (RepDistiller models/resnet.py) -------------

class BasicBlock(nn.Module):
    def __init__(self, cin, planes, stride=1):
        super().__init__()
        self.conv1 = conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        res = x if self.downsample is None else self.downsample(x)
        pre = out + res
        return F.relu(pre), pre


def run_stage(stage, x):
    pre = x
    for block in stage:
        x, pre = block(x)
    return x, pre


def run_stages(x, stages):
    """Stem output x through residual stages: (last output, feats, preact) as RepDistiller's taps."""
    feats, preact = [x], [x]
    for s in stages:
        x, pre = run_stage(s, x)
        feats.append(x)
        preact.append(pre)
    return x, feats, preact


class ResNetCifar(nn.Module):
    def __init__(self, depth, widths, num_classes):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = conv3x3(3, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin = widths[0]
        for s, planes in enumerate(widths[1:]):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(cin, planes, (1 if s == 0 else 2) if i == 0 else 1))
                cin = planes
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x, feats, preact = run_stages(x, (self.layer1, self.layer2, self.layer3))
        pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(pooled), feats, preact, pooled


# --- wrn_d_w (RepDistiller models/wrn.py; pre-activation blocks) -------------------------------

class WrnBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = conv3x3(cout, cout)
        self.equal = cin == cout
        self.convShortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        a = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(a))))
        return out + (x if self.equal else self.convShortcut(a))


class WrnStage(nn.Module):
    def __init__(self, n, cin, cout, stride):
        super().__init__()
        self.layer = nn.Sequential(*[WrnBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class WRN(nn.Module):
    def __init__(self, depth, k, num_classes):
        super().__init__()
        n = (depth - 4) // 6
        ch = [16, 16 * k, 32 * k, 64 * k]
        self.conv1 = conv3x3(3, 16)
        self.block1 = WrnStage(n, ch[0], ch[1], 1)
        self.block2 = WrnStage(n, ch[1], ch[2], 2)
        self.block3 = WrnStage(n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.fc = nn.Linear(ch[3], num_classes)

    def forward(self, x):
        f0 = self.conv1(x)
        f1 = self.block1(f0)
        f2 = self.block2(f1)
        f3 = self.block3(f2)
        pooled = F.adaptive_avg_pool2d(F.relu(self.bn1(f3)), 1).flatten(1)
        # RepDistiller's preact taps: each stage sum through the BN that follows it.
        preact = [f0, self.block2.layer[0].bn1(f1), self.block3.layer[0].bn1(f2), self.bn1(f3)]
        return self.fc(pooled), [f0, f1, f2, f3], preact, pooled


# --- vgg8/11/13/16/19 with BN (RepDistiller models/vgg.py) -------------------------------------

VGG_CFG = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


def vgg_block(widths, cin):
    layers = []
    for v in widths:
        layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
        cin = v
    return nn.Sequential(*layers[:-1])  # the block's last ReLU is applied by forward


class VGG(nn.Module):
    def __init__(self, name, num_classes):
        super().__init__()
        cfg = VGG_CFG[name]
        cin = 3
        for i, widths in enumerate(cfg):
            setattr(self, f"block{i}", vgg_block(widths, cin))
            cin = widths[-1]
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x):
        h = x.shape[2]
        x = F.relu(self.block0(x))
        feats, preact = [x], [x]
        for i in range(1, 5):
            if i < 4 or h == 64:
                x = F.max_pool2d(x, 2, 2)
            pre = getattr(self, f"block{i}")(x)
            x = F.relu(pre)
            feats.append(x)
            preact.append(pre)
        pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(pooled), feats, preact, pooled


# --- MobileNetV2 (mobile_half: T = 6, width 0.5; RepDistiller models/mobilenetv2.py) ------------

class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        h = cin * t
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, h, 1, 1, 0, bias=False), nn.BatchNorm2d(h), nn.ReLU(),
            nn.Conv2d(h, h, 3, stride, 1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU(),
            nn.Conv2d(h, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes, T=6, width=0.5):
        super().__init__()
        setting = [[1, 16, 1, 1], [T, 24, 2, 1], [T, 32, 3, 2], [T, 64, 4, 2], [T, 96, 3, 1], [T, 160, 3, 2], [T, 320, 1, 1]]
        cin = int(32 * width)
        self.conv1 = nn.Sequential(nn.Conv2d(3, cin, 3, 2, 1, bias=False), nn.BatchNorm2d(cin), nn.ReLU())
        self.blocks = nn.ModuleList()
        for t, c, n, s in setting:
            cout = int(c * width)
            layers = []
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
            self.blocks.append(nn.Sequential(*layers))
        self.conv2 = nn.Sequential(nn.Conv2d(cin, 1280, 1, 1, 0, bias=False), nn.BatchNorm2d(1280), nn.ReLU())
        self.classifier = nn.Sequential(nn.Linear(1280, num_classes))

    def forward(self, x):
        out = self.conv1(x)
        feats = [out]
        for group in ([0, 1], [2], [3, 4], [5, 6]):
            for b in group:
                out = self.blocks[b](out)
            feats.append(out)
        out = self.conv2(out)
        pooled = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.classifier(pooled), feats, list(feats), pooled


# --- mobilenetv2_tinyimagenet (mdistiller models/cifar/mv2_tinyimagenet.py) -------------------
# Full width, ReLU6, biased convs; stem 1x1 with padding 1; strides only in stages 2-4; the
# classifier is a 1x1 conv on the pooled 1x1 map. Taps: pre, stage2, stage3, stage4, conv1.

class TinyBottleneck(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        h = cin * t
        self.keep = stride == 1 and cin == cout
        self.residual = nn.Sequential(
            nn.Conv2d(cin, h, 1), nn.BatchNorm2d(h), nn.ReLU6(),
            nn.Conv2d(h, h, 3, stride, 1, groups=h), nn.BatchNorm2d(h), nn.ReLU6(),
            nn.Conv2d(h, cout, 1), nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        y = self.residual(x)
        return y + x if self.keep else y


class MobileNetV2Tiny(nn.Module):
    # (t, out, blocks, first stride) of stage1..stage7; one-block stages are bare blocks
    STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 1), (6, 320, 1, 1)]

    def __init__(self, num_classes):
        super().__init__()
        self.pre = nn.Sequential(nn.Conv2d(3, 32, 1, padding=1), nn.BatchNorm2d(32), nn.ReLU6())
        cin = 32
        for s, (t, out, n, stride) in enumerate(self.STAGES):
            blocks = [TinyBottleneck(cin if i == 0 else out, out, stride if i == 0 else 1, t) for i in range(n)]
            cin = out
            setattr(self, f"stage{s + 1}", blocks[0] if n == 1 else nn.Sequential(*blocks))
        self.conv1 = nn.Sequential(nn.Conv2d(320, 1280, 1), nn.BatchNorm2d(1280), nn.ReLU6())
        self.conv2 = nn.Conv2d(1280, num_classes, 1)

    def forward(self, x):
        x = self.pre(x)
        feats = [x]
        for s in range(1, 8):
            x = getattr(self, f"stage{s}")(x)
            if s in (2, 3, 4):
                feats.append(x)
        x = self.conv1(x)
        feats.append(x)
        pooled = F.adaptive_avg_pool2d(x, 1)
        return self.conv2(pooled).flatten(1), feats, list(feats), pooled.flatten(1)


# --- ShuffleV1 / ShuffleV2 (RepDistiller models/ShuffleNetv1.py, ShuffleNetv2.py) ----------------

def shuffle(x, g):
    n, c, h, w = x.shape
    return x.view(n, g, c // g, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class ShuffleV1Block(nn.Module):
    def __init__(self, cin, cout, stride, groups):
        super().__init__()
        mid = int(cout / 4)
        self.g = 1 if cin == 24 else groups
        self.stride = stride
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=self.g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)

    def forward(self, x):
        out = shuffle(F.relu(self.bn1(self.conv1(x))), self.g)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            pre = torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1)
        else:
            pre = out + x
        return F.relu(pre), pre


class ShuffleV1(nn.Module):
    def __init__(self, num_classes, out_planes=(240, 480, 960), blocks=(4, 8, 4), groups=3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        for s, (op, n) in enumerate(zip(out_planes, blocks)):
            layers = []
            for i in range(n):
                layers.append(ShuffleV1Block(cin, op - (cin if i == 0 else 0), 2 if i == 0 else 1, groups))
                cin = op
            setattr(self, f"layer{s + 1}", nn.Sequential(*layers))
        self.linear = nn.Linear(out_planes[2], num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x, feats, preact = run_stages(x, (self.layer1, self.layer2, self.layer3))
        pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.linear(pooled), feats, preact, pooled


class ShuffleV2Basic(nn.Module):
    def __init__(self, c):
        super().__init__()
        h = c // 2
        self.conv1 = nn.Conv2d(h, h, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(h)
        self.conv2 = nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False)
        self.bn2 = nn.BatchNorm2d(h)
        self.conv3 = nn.Conv2d(h, h, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(h)

    def forward(self, x):
        c = x.shape[1] // 2
        x1, x2 = x[:, :c], x[:, c:]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        pre = self.bn3(self.conv3(out))
        return shuffle(torch.cat([x1, F.relu(pre)], 1), 2), torch.cat([x1, pre], 1)


class ShuffleV2Down(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        mid = cout // 2
        self.conv1 = nn.Conv2d(cin, cin, 3, 2, 1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x):
        a = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        b = F.relu(self.bn3(self.conv3(x)))
        b = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(b)))))
        out = shuffle(torch.cat([a, b], 1), 2)
        return out, out


class ShuffleV2(nn.Module):
    def __init__(self, num_classes, out=(116, 232, 464, 1024), blocks=(3, 7, 3)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        for s in range(3):
            layers = [ShuffleV2Down(cin, out[s])] + [ShuffleV2Basic(out[s]) for _ in range(blocks[s])]
            cin = out[s]
            setattr(self, f"layer{s + 1}", nn.Sequential(*layers))
        self.conv2 = nn.Conv2d(out[2], out[3], 1, 1, 0, bias=False)
        self.bn2 = nn.BatchNorm2d(out[3])
        self.linear = nn.Linear(out[3], num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x, feats, preact = run_stages(x, (self.layer1, self.layer2, self.layer3))
        pooled = F.adaptive_avg_pool2d(F.relu(self.bn2(self.conv2(x))), 1).flatten(1)
        return self.linear(pooled), feats, preact, pooled


# --- ResNet18 / ResNet50, CIFAR stem (RepDistiller models/resnetv2.py) --------------------------

class V2Basic(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        pre = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.shortcut(x)
        return F.relu(pre), pre


class V2Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != 4 * planes:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, 4 * planes, 1, stride, bias=False), nn.BatchNorm2d(4 * planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        pre = self.bn3(self.conv3(out)) + self.shortcut(x)
        return F.relu(pre), pre


class ResNetV2(nn.Module):
    def __init__(self, block, blocks, num_classes):
        super().__init__()
        self.conv1 = conv3x3(3, 64)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for s, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            layers = []
            for i in range(n):
                layers.append(block(cin, planes, (1 if s == 0 else 2) if i == 0 else 1))
                cin = planes * block.expansion
            setattr(self, f"layer{s + 1}", nn.Sequential(*layers))
        self.linear = nn.Linear(512 * block.expansion, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x, feats, preact = run_stages(x, (self.layer1, self.layer2, self.layer3, self.layer4))
        pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.linear(pooled), feats, preact, pooled


# --- mlp, cnn_small, cnn_tiny (the harness's own digits models; no official file) ---------------

class Mlp(nn.Module):
    def __init__(self, num_classes, in_channels=3):
        super().__init__()
        self.fc1 = nn.Linear(in_channels * 64, 128)
        self.fc2 = nn.Linear(128, 128)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(x, 8).flatten(1)
        h1p = self.fc1(x)
        h2p = self.fc2(F.relu(h1p))
        h2 = F.relu(h2p)
        return self.fc(h2), [F.relu(h1p), h2], [h1p, h2p], h2


class Cnn(nn.Module):
    def __init__(self, widths, num_classes, in_channels=3):
        super().__init__()
        cin = in_channels
        for i, w in enumerate(widths):
            setattr(self, f"conv{i + 1}", nn.Conv2d(cin, w, 3, 1 if i == 0 else 2, 1, bias=False))
            setattr(self, f"bn{i + 1}", nn.BatchNorm2d(w))
            cin = w
        self.n = len(widths)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        feats, preact = [], []
        for i in range(1, self.n + 1):
            pre = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x))
            x = F.relu(pre)
            feats.append(x)
            preact.append(pre)
        pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(pooled), feats, preact, pooled


# --- Official initialisation: each family's init loop, copied from its file ----------------------

def init_kaiming_fan_out(model):
    """mdistiller/models/cifar/resnet.py 126-131 and resnetv2.py 103-108 (RepDistiller
    models/resnet.py, resnetv2.py; zero_init_residual off); torchvision models/resnet.py
    ResNet.__init__. Linear layers keep PyTorch's default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


def init_wrn(model):
    """mdistiller/models/cifar/wrn.py 97-105 (RepDistiller models/wrn.py): the Linear keeps its
    default weight, its bias is zeroed."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.data.normal_(0, math.sqrt(2.0 / n))
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(1)
            m.bias.data.zero_()
        elif isinstance(m, nn.Linear):
            m.bias.data.zero_()


def init_vgg_mobilenetv2(model):
    """`_initialize_weights` of mdistiller/models/cifar/vgg.py and mobilenetv2.py 165-178
    (RepDistiller models/vgg.py, mobilenetv2.py)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.data.normal_(0, math.sqrt(2.0 / n))
            if m.bias is not None:
                m.bias.data.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(1)
            m.bias.data.zero_()
        elif isinstance(m, nn.Linear):
            m.weight.data.normal_(0, 0.01)
            m.bias.data.zero_()


def no_init_loop(model):
    """ShuffleNetv1.py, ShuffleNetv2.py, mv2_tinyimagenet.py (mdistiller models/cifar) and
    mobilenetv1.py (models/imagenet) have none: PyTorch's defaults, conv and linear weights
    kaiming_uniform_(a=sqrt(5)) = U(+-1/sqrt(fan_in)), biases U(+-1/sqrt(fan_in)), BN 1/0."""


W1, W4 = [16, 16, 32, 64], [32, 64, 128, 256]


def build(name, num_classes=100):
    """A model by its harness/RepDistiller name, initialised as its official file does."""
    model, init = architecture(name, num_classes)
    init(model)
    return model


def architecture(name, num_classes):
    """(model, the official init loop of its family)."""
    resnets = {"resnet8": (8, W1), "resnet14": (14, W1), "resnet20": (20, W1), "resnet32": (32, W1), "resnet44": (44, W1),
               "resnet56": (56, W1), "resnet110": (110, W1), "resnet8x4": (8, W4), "resnet32x4": (32, W4)}
    if name in resnets:
        return ResNetCifar(*resnets[name], num_classes), init_kaiming_fan_out
    if name.startswith("wrn_"):
        _, d, k = name.split("_")
        return WRN(int(d), int(k), num_classes), init_wrn
    if name in VGG_CFG:
        return VGG(name, num_classes), init_vgg_mobilenetv2
    if name == "MobileNetV2":
        return MobileNetV2(num_classes), init_vgg_mobilenetv2
    if name == "mobilenetv2_tinyimagenet":
        return MobileNetV2Tiny(num_classes), no_init_loop
    if name == "ShuffleV1":
        return ShuffleV1(num_classes), no_init_loop
    if name == "ShuffleV2":
        return ShuffleV2(num_classes), no_init_loop
    if name == "ResNet18":
        return ResNetV2(V2Basic, (2, 2, 2, 2), num_classes), init_kaiming_fan_out
    if name == "ResNet50":
        return ResNetV2(V2Bottleneck, (3, 4, 6, 3), num_classes), init_kaiming_fan_out
    if name in ("resnet18", "resnet34", "resnet50", "mobilenetv1"):
        # The ImageNet models' reference definitions live with their test (forward only: logits).
        sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures"))
        import imagenet_reference
        return imagenet_reference.build(name, num_classes), no_init_loop if name == "mobilenetv1" else init_kaiming_fan_out
    if name == "mlp":
        return Mlp(num_classes), init_kaiming_fan_out
    if name == "cnn_small":
        return Cnn([32, 64, 128], num_classes), init_kaiming_fan_out
    if name == "cnn_tiny":
        return Cnn([16, 32], num_classes), init_kaiming_fan_out
    raise SystemExit(f"unknown model {name}")
