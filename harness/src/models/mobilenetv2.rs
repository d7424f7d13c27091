//! `MobileNetV2` of RepDistiller (`models/mobilenetv2.py`, `mobile_half`: expansion T = 6,
//! width 0.5): stride-2 3×3 stem `conv1.0/1`, inverted-residual `blocks.{b}.{i}.conv.{0,1,3,4,6,7}`
//! (the 1×1 expansion exists even for t = 1), 1×1 `conv2` to 1280 channels (not width-scaled),
//! global average pooling (the reference's AvgPool2d(2, ceil_mode) on the 2×2 map of a 32×32
//! input), classifier `classifier.0`. mdistiller's Tiny-ImageNet `MobileNetV2` is a different
//! network: [`super::mobilenetv2_tiny`].
//!
//! Init (mdistiller `mdistiller/models/cifar/mobilenetv2.py` `_initialize_weights` 165–178,
//! RepDistiller `models/mobilenetv2.py`): convs (bias-free) `normal_(0, sqrt(2 / (k·k·out)))`
//! (= Kaiming-normal fan-out; a depthwise conv counts its own channels), BN 1/0, classifier
//! `normal_(0, 0.01)` with the bias zeroed.

use tch::{Tensor, nn, nn::Module};

use super::init::{self, Geom, KAIMING_NO_BIAS};
use super::vgg::CLASSIFIER;
use super::{Input, Model, ModelCfg, ModelEntry, Output, bn, global_pool};

pub static ENTRIES: &[ModelEntry] =
    &[ModelEntry { name: "MobileNetV2", family: "mobilenetv2", input: Input::Native(3, 32, 32), build: |p, c| Box::new(MobileNetV2::new(p, c, 6, 0.5)) }];

fn cv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, groups: i64) -> nn::Conv2D {
    init::conv(p, cin, cout, Geom::new(k, stride, (k - 1) / 2).groups(groups), KAIMING_NO_BIAS)
}

/// The inverted residual (linear bottleneck) block both MobileNetV2 variants use: 1×1 expansion
/// (kept even for t = 1), depthwise 3×3, linear 1×1 projection, each followed by BN, the first two
/// by `act`; identity shortcut where the shape is kept. Its Sequential is `<name>.{0,1,3,4,6,7}`.
pub(super) struct Inverted {
    layers: Vec<(nn::Conv2D, nn::BatchNorm)>,
    residual: bool,
    act: fn(&Tensor) -> Tensor,
}

/// A conv constructor: (path, in, out, kernel, stride, groups), padding kernel/2.
pub(super) type ConvFn = fn(nn::Path, i64, i64, i64, i64, i64) -> nn::Conv2D;

impl Inverted {
    /// `name`: the Sequential's name (`conv` here, `residual` in mdistiller's Tiny-ImageNet net).
    pub(super) fn new(p: nn::Path, name: &str, (cin, cout, stride, t): (i64, i64, i64, i64), conv: ConvFn, act: fn(&Tensor) -> Tensor) -> Inverted {
        let q = &p / name;
        let mid = cin * t;
        Inverted {
            layers: vec![
                (conv(&q / 0, cin, mid, 1, 1, 1), bn(&q / 1, mid)),
                (conv(&q / 3, mid, mid, 3, stride, mid), bn(&q / 4, mid)),
                (conv(&q / 6, mid, cout, 1, 1, 1), bn(&q / 7, cout)),
            ],
            residual: stride == 1 && cin == cout,
            act,
        }
    }

    pub(super) fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = x.shallow_clone();
        for (i, (c, n)) in self.layers.iter().enumerate() {
            h = c.forward(&h).apply_t(n, train);
            if i < 2 {
                h = (self.act)(&h);
            }
        }
        if self.residual { x + h } else { h }
    }
}

struct MobileNetV2 {
    conv1: (nn::Conv2D, nn::BatchNorm),
    blocks: Vec<Vec<Inverted>>,
    conv2: (nn::Conv2D, nn::BatchNorm),
    classifier: nn::Linear,
}

impl MobileNetV2 {
    fn new(p: &nn::Path, c: ModelCfg, t: i64, width: f64) -> MobileNetV2 {
        let setting: [(i64, i64, i64, i64); 7] = [(1, 16, 1, 1), (t, 24, 2, 1), (t, 32, 3, 2), (t, 64, 4, 2), (t, 96, 3, 1), (t, 160, 3, 2), (t, 320, 1, 1)];
        let mut cin = (32.0 * width) as i64;
        let conv1 = (cv(p / "conv1" / 0, c.in_channels, cin, 3, 2, 1), bn(p / "conv1" / 1, cin));
        let mut blocks = Vec::new();
        for (b, &(tt, ch, n, s)) in setting.iter().enumerate() {
            let out = (ch as f64 * width) as i64;
            let bp = p / "blocks" / b;
            let mut layers = Vec::new();
            for i in 0..n {
                layers.push(Inverted::new(&bp / i, "conv", (cin, out, if i == 0 { s } else { 1 }, tt), cv, Tensor::relu));
                cin = out;
            }
            blocks.push(layers);
        }
        let last = 1280;
        let conv2 = (cv(p / "conv2" / 0, cin, last, 1, 1, 1), bn(p / "conv2" / 1, last));
        MobileNetV2 { conv1, blocks, conv2, classifier: init::linear(p / "classifier" / 0, last, c.num_classes, CLASSIFIER) }
    }
}

impl Model for MobileNetV2 {
    fn forward(&self, x: &Tensor, train: bool) -> Output {
        let mut h = self.conv1.0.forward(x).apply_t(&self.conv1.1, train).relu();
        let mut feats = vec![h.shallow_clone()];
        // RepDistiller's taps: after blocks 1, 2, 4 and 6.
        for (b, layers) in self.blocks.iter().enumerate() {
            for l in layers {
                h = l.forward(&h, train);
            }
            if matches!(b, 1 | 2 | 4 | 6) {
                feats.push(h.shallow_clone());
            }
        }
        let out = self.conv2.0.forward(&h).apply_t(&self.conv2.1, train).relu();
        let pooled = global_pool(&out);
        let logits = self.classifier.forward(&pooled);
        Output { logits, preact: feats.iter().map(Tensor::shallow_clone).collect(), feats, pooled }
    }

    fn head(&self, pooled: &Tensor) -> Tensor {
        self.classifier.forward(pooled)
    }
}
