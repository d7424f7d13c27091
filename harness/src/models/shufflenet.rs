//! ShuffleNets of RepDistiller (`models/ShuffleNetv1.py`, `ShuffleNetv2.py`).
//! `ShuffleV1` (groups 3, out planes 240/480/960, blocks 4/8/4): 1×1 stride-1 stem, bottlenecks of
//! grouped 1×1 → channel shuffle → depthwise 3×3 → grouped 1×1 (the first unit's first conv has
//! groups 1); stride-2 units concatenate an avg_pool(3, 2, 1) shortcut. `ShuffleV2` (net size 1:
//! 116/232/464/1024, blocks 3/7/3): 3×3 stem, per stage a DownBlock then split/shuffle BasicBlocks,
//! 1×1 `conv2`/`bn2`; classifiers `linear`. Stage features are the block outputs. The reference's
//! AvgPool(4) covers the 4×4 final map of a 32×32 input; global pooling here, so 64×64 runs too
//! (the reference's would flatten 2×2 maps into a classifier of the wrong width).
//!
//! Init: mdistiller's `mdistiller/models/cifar/ShuffleNetv1.py` and `ShuffleNetv2.py` (as
//! RepDistiller's) have no init loop, so PyTorch's defaults apply: bias-free convs
//! U(±1/√fan_in) with fan_in = in/groups·k·k, BN 1/0, `linear` U(±1/√fan_in) weight and bias.

use tch::{Tensor, nn, nn::Module};

use super::init::{self, Geom, PYTORCH_DEFAULT, PYTORCH_DEFAULT_NO_BIAS};
use super::{Input, Model, ModelCfg, ModelEntry, Output, bn, global_pool};

const CIFAR: Input = Input::Native(3, 32, 32);

pub static ENTRIES: &[ModelEntry] = &[
    ModelEntry { name: "ShuffleV1", family: "shufflenet", input: CIFAR, build: |p, c| Box::new(V1::new(p, c, [240, 480, 960], [4, 8, 4], 3)) },
    ModelEntry { name: "ShuffleV2", family: "shufflenet", input: CIFAR, build: |p, c| Box::new(V2::new(p, c, [116, 232, 464, 1024], [3, 7, 3])) },
];

fn cv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, groups: i64) -> nn::Conv2D {
    init::conv(p, cin, cout, Geom::new(k, stride, (k - 1) / 2).groups(groups), PYTORCH_DEFAULT_NO_BIAS)
}

/// `[N, C, H, W] → view(N, g, C/g, H, W) → swap(1, 2) → [N, C, H, W]`.
fn shuffle(x: &Tensor, g: i64) -> Tensor {
    let s = x.size();
    // reshape, not view: a channels-last input has no NCHW-compatible strides.
    x.reshape([s[0], g, s[1] / g, s[2], s[3]]).transpose(1, 2).reshape([s[0], s[1], s[2], s[3]])
}

struct V1Unit {
    c1: (nn::Conv2D, nn::BatchNorm),
    c2: (nn::Conv2D, nn::BatchNorm),
    c3: (nn::Conv2D, nn::BatchNorm),
    g1: i64,
    stride: i64,
}

impl V1Unit {
    fn new(p: nn::Path, cin: i64, cout: i64, stride: i64, groups: i64) -> V1Unit {
        let mid = cout / 4;
        let g1 = if cin == 24 { 1 } else { groups };
        V1Unit {
            c1: (cv(&p / "conv1", cin, mid, 1, 1, g1), bn(&p / "bn1", mid)),
            c2: (cv(&p / "conv2", mid, mid, 3, stride, mid), bn(&p / "bn2", mid)),
            c3: (cv(&p / "conv3", mid, cout, 1, 1, groups), bn(&p / "bn3", cout)),
            g1,
            stride,
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> (Tensor, Tensor) {
        let out = self.c1.0.forward(x).apply_t(&self.c1.1, train).relu();
        let out = shuffle(&out, self.g1);
        let out = self.c2.0.forward(&out).apply_t(&self.c2.1, train).relu();
        let out = self.c3.0.forward(&out).apply_t(&self.c3.1, train);
        let pre = if self.stride == 2 { Tensor::cat(&[out, x.avg_pool2d([3, 3], [2, 2], [1, 1], false, true, None::<i64>)], 1) } else { out + x };
        (pre.relu(), pre)
    }
}

struct V1 {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    layers: Vec<Vec<V1Unit>>,
    linear: nn::Linear,
}

impl V1 {
    fn new(p: &nn::Path, c: ModelCfg, out: [i64; 3], nb: [i64; 3], groups: i64) -> V1 {
        let mut cin = 24;
        let mut layers = Vec::new();
        for s in 0..3 {
            let lp = p / format!("layer{}", s + 1);
            let mut units = Vec::new();
            for i in 0..nb[s] {
                let cat = if i == 0 { cin } else { 0 };
                units.push(V1Unit::new(&lp / i, cin, out[s] - cat, if i == 0 { 2 } else { 1 }, groups));
                cin = out[s];
            }
            layers.push(units);
        }
        V1 {
            conv1: cv(p / "conv1", c.in_channels, 24, 1, 1, 1),
            bn1: bn(p / "bn1", 24),
            layers,
            linear: init::linear(p / "linear", out[2], c.num_classes, PYTORCH_DEFAULT),
        }
    }
}

impl Model for V1 {
    fn forward(&self, x: &Tensor, train: bool) -> Output {
        let (h, feats, preact) = super::run_stages(self.conv1.forward(x).apply_t(&self.bn1, train).relu(), &self.layers, |b, h| b.forward(h, train));
        let pooled = global_pool(&h);
        let logits = self.linear.forward(&pooled);
        Output { logits, feats, preact, pooled }
    }

    fn head(&self, pooled: &Tensor) -> Tensor {
        self.linear.forward(pooled)
    }
}

enum V2Block {
    Down { convs: Vec<(nn::Conv2D, nn::BatchNorm)> },
    Basic { convs: Vec<(nn::Conv2D, nn::BatchNorm)> },
}

impl V2Block {
    fn down(p: nn::Path, cin: i64, cout: i64) -> V2Block {
        let mid = cout / 2;
        V2Block::Down {
            convs: vec![
                (cv(&p / "conv1", cin, cin, 3, 2, cin), bn(&p / "bn1", cin)),
                (cv(&p / "conv2", cin, mid, 1, 1, 1), bn(&p / "bn2", mid)),
                (cv(&p / "conv3", cin, mid, 1, 1, 1), bn(&p / "bn3", mid)),
                (cv(&p / "conv4", mid, mid, 3, 2, mid), bn(&p / "bn4", mid)),
                (cv(&p / "conv5", mid, mid, 1, 1, 1), bn(&p / "bn5", mid)),
            ],
        }
    }

    fn basic(p: nn::Path, c: i64) -> V2Block {
        let h = c / 2;
        V2Block::Basic {
            convs: vec![
                (cv(&p / "conv1", h, h, 1, 1, 1), bn(&p / "bn1", h)),
                (cv(&p / "conv2", h, h, 3, 1, h), bn(&p / "bn2", h)),
                (cv(&p / "conv3", h, h, 1, 1, 1), bn(&p / "bn3", h)),
            ],
        }
    }

    /// Returns (output, pre-activation: the concatenation before the shuffle).
    fn forward(&self, x: &Tensor, train: bool) -> (Tensor, Tensor) {
        let f = |i: usize, convs: &[(nn::Conv2D, nn::BatchNorm)], t: &Tensor| convs[i].0.forward(t).apply_t(&convs[i].1, train);
        match self {
            V2Block::Down { convs } => {
                let left = f(1, convs, &f(0, convs, x)).relu();
                let right = f(2, convs, x).relu();
                let right = f(4, convs, &f(3, convs, &right)).relu();
                let cat = Tensor::cat(&[left, right], 1);
                (shuffle(&cat, 2), cat)
            }
            V2Block::Basic { convs } => {
                let c = x.size()[1] / 2;
                let (x1, x2) = (x.narrow(1, 0, c), x.narrow(1, c, x.size()[1] - c));
                let out = f(0, convs, &x2).relu();
                let pre = f(2, convs, &f(1, convs, &out));
                let cat_pre = Tensor::cat(&[x1.shallow_clone(), pre.shallow_clone()], 1);
                let out = Tensor::cat(&[x1, pre.relu()], 1);
                (shuffle(&out, 2), cat_pre)
            }
        }
    }
}

struct V2 {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    layers: Vec<Vec<V2Block>>,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    linear: nn::Linear,
}

impl V2 {
    fn new(p: &nn::Path, c: ModelCfg, out: [i64; 4], nb: [i64; 3]) -> V2 {
        let mut cin = 24;
        let mut layers = Vec::new();
        for s in 0..3 {
            let lp = p / format!("layer{}", s + 1);
            let mut blocks = vec![V2Block::down(&lp / 0, cin, out[s])];
            for i in 0..nb[s] {
                blocks.push(V2Block::basic(&lp / (i + 1), out[s]));
            }
            cin = out[s];
            layers.push(blocks);
        }
        V2 {
            conv1: cv(p / "conv1", c.in_channels, 24, 1, 1, 1),
            bn1: bn(p / "bn1", 24),
            layers,
            conv2: cv(p / "conv2", out[2], out[3], 1, 1, 1),
            bn2: bn(p / "bn2", out[3]),
            linear: init::linear(p / "linear", out[3], c.num_classes, PYTORCH_DEFAULT),
        }
    }
}

impl Model for V2 {
    fn forward(&self, x: &Tensor, train: bool) -> Output {
        let (h, feats, preact) = super::run_stages(self.conv1.forward(x).apply_t(&self.bn1, train).relu(), &self.layers, |b, h| b.forward(h, train));
        let out = self.conv2.forward(&h).apply_t(&self.bn2, train).relu();
        let pooled = global_pool(&out);
        let logits = self.linear.forward(&pooled);
        Output { logits, feats, preact, pooled }
    }

    fn head(&self, pooled: &Tensor) -> Tensor {
        self.linear.forward(pooled)
    }
}
