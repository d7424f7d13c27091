//! VGG with BatchNorm of RepDistiller (`models/vgg.py`): five blocks `block0..block4` of
//! [conv(bias), BN, ReLU]×m with each block's last ReLU applied outside (so indices run 0, 1, 3, 4,
//! …), max-pooling between blocks (pool3 only for 64×64 inputs), adaptive average pooling and a
//! bare linear `classifier`.
//!
//! Init (mdistiller `mdistiller/models/cifar/vgg.py` `_initialize_weights`, RepDistiller
//! `models/vgg.py`): convs `normal_(0, sqrt(2 / (k·k·out)))` (= Kaiming-normal fan-out) with the
//! bias zeroed, BN 1/0, `classifier` `normal_(0, 0.01)` with the bias zeroed.

use tch::{Tensor, nn, nn::Module};

use super::init::{self, Bias, Geom, Rule, Weight};
use super::{Input, Model, ModelCfg, ModelEntry, Output, bn};

const CONV: Rule = Rule { weight: Weight::KaimingNormalFanOut, bias: Bias::Zeros };
/// The classifier rule VGG shares with MobileNetV2: N(0, 0.01), bias 0.
pub(super) const CLASSIFIER: Rule = Rule { weight: Weight::Normal(0.01), bias: Bias::Zeros };

const CIFAR: Input = Input::Native(3, 32, 32);
const S: &[&[i64]] = &[&[64], &[128], &[256], &[512], &[512]];
const A: &[&[i64]] = &[&[64], &[128], &[256, 256], &[512, 512], &[512, 512]];
const B: &[&[i64]] = &[&[64, 64], &[128, 128], &[256, 256], &[512, 512], &[512, 512]];
const D: &[&[i64]] = &[&[64, 64], &[128, 128], &[256, 256, 256], &[512, 512, 512], &[512, 512, 512]];
const E: &[&[i64]] = &[&[64, 64], &[128, 128], &[256, 256, 256, 256], &[512, 512, 512, 512], &[512, 512, 512, 512]];

pub static ENTRIES: &[ModelEntry] = &[
    ModelEntry { name: "vgg8", family: "vgg", input: CIFAR, build: |p, c| Box::new(Vgg::new(p, c, S)) },
    ModelEntry { name: "vgg11", family: "vgg", input: CIFAR, build: |p, c| Box::new(Vgg::new(p, c, A)) },
    ModelEntry { name: "vgg13", family: "vgg", input: CIFAR, build: |p, c| Box::new(Vgg::new(p, c, B)) },
    ModelEntry { name: "vgg16", family: "vgg", input: CIFAR, build: |p, c| Box::new(Vgg::new(p, c, D)) },
    ModelEntry { name: "vgg19", family: "vgg", input: CIFAR, build: |p, c| Box::new(Vgg::new(p, c, E)) },
];

struct Vgg {
    blocks: Vec<Vec<(nn::Conv2D, nn::BatchNorm)>>,
    classifier: nn::Linear,
}

impl Vgg {
    fn new(p: &nn::Path, c: ModelCfg, cfg: &[&[i64]]) -> Vgg {
        let mut cin = c.in_channels;
        let mut blocks = Vec::new();
        for (b, widths) in cfg.iter().enumerate() {
            let bp = p / format!("block{b}");
            let mut layers = Vec::new();
            for (i, &w) in widths.iter().enumerate() {
                let cv = init::conv(&bp / (3 * i), cin, w, Geom::new(3, 1, 1), CONV);
                layers.push((cv, bn(&bp / (3 * i + 1), w)));
                cin = w;
            }
            blocks.push(layers);
        }
        // 512 for every shipped configuration; a width plan may end narrower.
        Vgg { blocks, classifier: init::linear(p / "classifier", cin, c.num_classes, CLASSIFIER) }
    }
}

/// `name`'s VGG with its convs' widths replaced by `widths` (layer order, same block structure
/// and pooling): prune-then-distill's student formed from a pruned teacher (`vgg19-rwd-st*`).
pub fn with_widths(p: &nn::Path, c: ModelCfg, name: &str, widths: &[i64]) -> Option<Box<dyn Model>> {
    let template = match name {
        "vgg8" => S,
        "vgg11" => A,
        "vgg13" => B,
        "vgg16" => D,
        "vgg19" => E,
        _ => return None,
    };
    if template.iter().map(|b| b.len()).sum::<usize>() != widths.len() {
        return None;
    }
    let mut it = widths.iter().copied();
    let blocks: Vec<Vec<i64>> = template.iter().map(|b| b.iter().filter_map(|_| it.next()).collect()).collect();
    let refs: Vec<&[i64]> = blocks.iter().map(Vec::as_slice).collect();
    Some(Box::new(Vgg::new(p, c, &refs)))
}

impl Model for Vgg {
    fn forward(&self, x: &Tensor, train: bool) -> Output {
        let big = x.size()[2] == 64;
        let mut h = x.shallow_clone();
        let mut feats = Vec::new();
        let mut preact = Vec::new();
        for (b, layers) in self.blocks.iter().enumerate() {
            if b > 0 && (b != 4 || big) {
                h = h.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
            }
            for (i, (c, n)) in layers.iter().enumerate() {
                h = c.forward(&h).apply_t(n, train);
                if i + 1 < layers.len() {
                    h = h.relu();
                }
            }
            let pre = h.shallow_clone();
            h = h.relu();
            // As RepDistiller's `preact=True`: block0's tap is its activated output (f0).
            preact.push(if b == 0 { h.shallow_clone() } else { pre });
            feats.push(h.shallow_clone());
        }
        let pooled = h.adaptive_avg_pool2d([1, 1]).flatten(1, -1);
        let logits = self.classifier.forward(&pooled);
        Output { logits, feats, preact, pooled }
    }

    fn head(&self, pooled: &Tensor) -> Tensor {
        self.classifier.forward(pooled)
    }
}
