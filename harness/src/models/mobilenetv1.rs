//! ImageNet `MobileNetV1` of mdistiller (`models/imagenet/mobilenetv1.py`, the ResNet-50 →
//! MobileNetV1 student): one `nn.Sequential` named `model` whose entry 0 is a stride-2 3×3
//! conv+BN (`model.0.0/.1`) and entries 1..=13 are depthwise-separable blocks
//! (`model.N.0/.1` depthwise 3×3 + BN, `model.N.3/.4` pointwise 1×1 + BN; indices 2 and 5 are
//! the ReLUs), then `AvgPool2d(7)` and classifier `fc` (1024 → classes).
//!
//! Feature taps are mdistiller's four: the outputs of blocks 3, 5, 11 and 13 (128, 256, 512 and
//! 1024 channels at strides 4, 8, 16, 32), `preact` before their last ReLU. mdistiller exposes
//! no stem tap for this model, so unlike the CIFAR models `feats[0]` is not the stem.
//!
//! Init: `mobilenetv1.py` has no init loop, so PyTorch's defaults apply: bias-free convs
//! U(±1/√fan_in) (fan_in = in/groups·k·k), BN 1/0, `fc` U(±1/√fan_in) weight and bias.

use tch::{Tensor, nn, nn::Module};

use super::init::{self, Geom, PYTORCH_DEFAULT, PYTORCH_DEFAULT_NO_BIAS};
use super::{Input, Model, ModelCfg, ModelEntry, Output, bn};

pub static ENTRIES: &[ModelEntry] =
    &[ModelEntry { name: "mobilenetv1", family: "mobilenetv1", input: Input::Native(3, 224, 224), build: |p, c| Box::new(MobileNetV1::new(p, c)) }];

/// (output channels, stride) of the 13 depthwise-separable blocks.
const BLOCKS: [(i64, i64); 13] =
    [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)];

/// Indices in `model` after which mdistiller taps a feature.
const TAPS: [usize; 4] = [3, 5, 11, 13];

fn cv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, groups: i64) -> nn::Conv2D {
    init::conv(p, cin, cout, Geom::new(k, stride, (k - 1) / 2).groups(groups), PYTORCH_DEFAULT_NO_BIAS)
}

/// Conv+BN pairs of one `model.N` entry; ReLU follows each pair.
struct Unit(Vec<(nn::Conv2D, nn::BatchNorm)>);

impl Unit {
    /// Returns (output, pre-activation of the last pair).
    fn forward(&self, x: &Tensor, train: bool) -> (Tensor, Tensor) {
        let mut h = x.shallow_clone();
        let mut pre = h.shallow_clone();
        for (c, n) in &self.0 {
            pre = c.forward(&h).apply_t(n, train);
            h = pre.relu();
        }
        (h, pre)
    }
}

struct MobileNetV1 {
    units: Vec<Unit>,
    fc: nn::Linear,
}

impl MobileNetV1 {
    fn new(p: &nn::Path, c: ModelCfg) -> MobileNetV1 {
        let m = p / "model";
        let mut units = vec![Unit(vec![(cv(&m / 0 / 0, c.in_channels, 32, 3, 2, 1), bn(&m / 0 / 1, 32))])];
        let mut cin = 32;
        for (i, &(out, stride)) in BLOCKS.iter().enumerate() {
            let q = &m / (i + 1);
            units.push(Unit(vec![(cv(&q / 0, cin, cin, 3, stride, cin), bn(&q / 1, cin)), (cv(&q / 3, cin, out, 1, 1, 1), bn(&q / 4, out))]));
            cin = out;
        }
        MobileNetV1 { units, fc: init::linear(p / "fc", cin, c.num_classes, PYTORCH_DEFAULT) }
    }
}

impl Model for MobileNetV1 {
    fn forward(&self, x: &Tensor, train: bool) -> Output {
        let mut h = x.shallow_clone();
        let (mut feats, mut preact) = (Vec::new(), Vec::new());
        for (i, u) in self.units.iter().enumerate() {
            let (o, pre) = u.forward(&h, train);
            h = o;
            if TAPS.contains(&i) {
                feats.push(h.shallow_clone());
                preact.push(pre);
            }
        }
        // `AvgPool2d(7)` on the 7×7 map of a 224×224 input; global average pooling otherwise
        // (mdistiller's fixed pool would fail on other sizes through its reshape to 1024).
        let pooled = h.adaptive_avg_pool2d([1, 1]).flatten(1, -1);
        let logits = self.fc.forward(&pooled);
        Output { logits, feats, preact, pooled }
    }

    fn head(&self, pooled: &Tensor) -> Tensor {
        self.fc.forward(pooled)
    }
}
