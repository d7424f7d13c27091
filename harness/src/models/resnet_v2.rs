//! `ResNet18` / `ResNet50` for CIFAR of RepDistiller (`models/resnetv2.py`): 3×3 stem without
//! max-pooling, four stages (64, 128, 256, 512 planes; Bottleneck ×4 expansion for ResNet50),
//! `shortcut.0/.1` projections, adaptive average pooling, classifier `linear`.
//!
//! Init (mdistiller `mdistiller/models/cifar/resnetv2.py` 103–118, RepDistiller
//! `models/resnetv2.py`): convs `kaiming_normal_(mode="fan_out", nonlinearity="relu")`, BN 1/0
//! (`zero_init_residual` is off in `ResNet18`/`ResNet50`), `linear` left to PyTorch's `nn.Linear`
//! default.

use tch::{Tensor, nn, nn::Module};

use super::init::{self, PYTORCH_DEFAULT, kaiming_conv as conv};
use super::{Input, Model, ModelCfg, ModelEntry, Output, bn};

const CIFAR: Input = Input::Native(3, 32, 32);

pub static ENTRIES: &[ModelEntry] = &[
    ModelEntry { name: "ResNet18", family: "resnet_v2", input: CIFAR, build: |p, c| Box::new(ResNet::new(p, c, false, [2, 2, 2, 2])) },
    ModelEntry { name: "ResNet50", family: "resnet_v2", input: CIFAR, build: |p, c| Box::new(ResNet::new(p, c, true, [3, 4, 6, 3])) },
];

/// A basic (two 3×3) or bottleneck (1×1, 3×3 strided, 1×1 ×4) residual block; also the
/// torchvision ImageNet block, which differs only in naming its projection `downsample`.
pub(super) struct Block {
    convs: Vec<(nn::Conv2D, nn::BatchNorm)>,
    shortcut: Option<(nn::Conv2D, nn::BatchNorm)>,
}

impl Block {
    fn new(p: nn::Path, cin: i64, planes: i64, stride: i64, bottleneck: bool, shortcut: &str) -> (Block, i64) {
        let (convs, out) = if bottleneck {
            let out = planes * 4;
            (
                vec![
                    (conv(&p / "conv1", cin, planes, 1, 1, 0), bn(&p / "bn1", planes)),
                    (conv(&p / "conv2", planes, planes, 3, stride, 1), bn(&p / "bn2", planes)),
                    (conv(&p / "conv3", planes, out, 1, 1, 0), bn(&p / "bn3", out)),
                ],
                out,
            )
        } else {
            (
                vec![
                    (conv(&p / "conv1", cin, planes, 3, stride, 1), bn(&p / "bn1", planes)),
                    (conv(&p / "conv2", planes, planes, 3, 1, 1), bn(&p / "bn2", planes)),
                ],
                planes,
            )
        };
        let shortcut = (stride != 1 || cin != out).then(|| (conv(&p / shortcut / 0, cin, out, 1, stride, 0), bn(&p / shortcut / 1, out)));
        (Block { convs, shortcut }, out)
    }

    /// Returns (output, pre-activation sum).
    pub(super) fn forward(&self, x: &Tensor, train: bool) -> (Tensor, Tensor) {
        let mut h = x.shallow_clone();
        let last = self.convs.len() - 1;
        for (i, (c, n)) in self.convs.iter().enumerate() {
            h = c.forward(&h).apply_t(n, train);
            if i < last {
                h = h.relu();
            }
        }
        let res = match &self.shortcut {
            Some((c, n)) => c.forward(x).apply_t(n, train),
            None => x.shallow_clone(),
        };
        let pre = h + res;
        (pre.relu(), pre)
    }
}

struct ResNet {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    layers: Vec<Vec<Block>>,
    linear: nn::Linear,
}

/// `layer1..4` of 64, 128, 256, 512 planes with `nb` blocks each (stride 2 from layer2 on), on a
/// 64-channel stem; returns the stages and their output width.
pub(super) fn layers(p: &nn::Path, bottleneck: bool, nb: [i64; 4], shortcut: &str) -> (Vec<Vec<Block>>, i64) {
    let mut cin = 64;
    let mut layers = Vec::new();
    for (s, (&planes, &n)) in [64i64, 128, 256, 512].iter().zip(nb.iter()).enumerate() {
        let lp = p / format!("layer{}", s + 1);
        let mut blocks = Vec::new();
        for i in 0..n {
            let (b, out) = Block::new(&lp / i, cin, planes, if i == 0 && s > 0 { 2 } else { 1 }, bottleneck, shortcut);
            cin = out;
            blocks.push(b);
        }
        layers.push(blocks);
    }
    (layers, cin)
}

impl ResNet {
    fn new(p: &nn::Path, c: ModelCfg, bottleneck: bool, nb: [i64; 4]) -> ResNet {
        let (layers, cin) = layers(p, bottleneck, nb, "shortcut");
        ResNet {
            conv1: conv(p / "conv1", c.in_channels, 64, 3, 1, 1),
            bn1: bn(p / "bn1", 64),
            layers,
            linear: init::linear(p / "linear", cin, c.num_classes, PYTORCH_DEFAULT),
        }
    }
}

impl Model for ResNet {
    fn forward(&self, x: &Tensor, train: bool) -> Output {
        let (h, feats, preact) = super::run_stages(self.conv1.forward(x).apply_t(&self.bn1, train).relu(), &self.layers, |b, h| b.forward(h, train));
        let pooled = h.adaptive_avg_pool2d([1, 1]).flatten(1, -1);
        let logits = self.linear.forward(&pooled);
        Output { logits, feats, preact, pooled }
    }

    fn head(&self, pooled: &Tensor) -> Tensor {
        self.linear.forward(pooled)
    }

    fn forward_tail(&self, f: &Tensor, stage: usize, train: bool) -> Option<Tensor> {
        let rest = self.layers.get(stage..)?;
        let (h, _, _) = super::run_stages(f.shallow_clone(), rest, |b, h| b.forward(h, train));
        Some(self.linear.forward(&h.adaptive_avg_pool2d([1, 1]).flatten(1, -1)))
    }
}
