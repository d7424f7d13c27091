//! mdistiller's Tiny-ImageNet `MobileNetV2` (`models/cifar/mv2_tinyimagenet.py`, the student
//! `tiny_imagenet_model_dict["MobileNetV2"]`), registered under its function name
//! `mobilenetv2_tinyimagenet`: a full-width MobileNetV2, not the CIFAR `MobileNetV2` (mobile_half).
//! Every conv is biased and every activation is ReLU6. The stem `pre.0/.1` is a 1×1 conv with
//! padding 1 (64×64 becomes 66×66); linear bottlenecks `residual.{0,1,3,4,6,7}` in `stage1`..`stage7`,
//! where the single-block stages 1 and 7 are bare blocks (no index) and only stages 2–4 stride;
//! `conv1.0/.1` to 1280 channels, global average pooling, and a 1×1 conv classifier `conv2`.
//!
//! Taps are mdistiller's five: after `pre`, `stage2`, `stage3`, `stage4` and `conv1`. The model
//! returns no pre-activations, so `preact` repeats `feats`: the stage taps end in a linear
//! bottleneck (nothing to precede), and `pre`/`conv1` stay after their ReLU6, as in `MobileNetV2`.
//!
//! Init: `mv2_tinyimagenet.py` has no init loop, so every conv (the classifier too) keeps
//! PyTorch's `nn.Conv2d` default, U(±1/√fan_in) weight and bias, and BN is 1/0.

use tch::{Tensor, nn, nn::Module};

use super::init::{self, Geom, PYTORCH_DEFAULT};
use super::mobilenetv2::Inverted;
use super::{Input, Model, ModelCfg, ModelEntry, Output, bn, global_pool};

pub static ENTRIES: &[ModelEntry] =
    &[ModelEntry { name: "mobilenetv2_tinyimagenet", family: "mobilenetv2_tiny", input: Input::Native(3, 64, 64), build: |p, c| Box::new(Mv2Tiny::new(p, c)) }];

/// (expansion t, output channels, blocks, stride of the first block) of `stage1`..`stage7`.
const STAGES: [(i64, i64, i64, i64); 7] = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 1), (6, 320, 1, 1)];

/// Stage (0-based) after which `feats[k + 1]` is taken (`stage2`, `stage3`, `stage4`).
const TAPS: [usize; 3] = [1, 2, 3];

/// PyTorch's default `Conv2d`, which mv2_tinyimagenet.py keeps: biased, weight and bias uniform
/// in ±1/√fan_in.
fn cv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, padding: i64, groups: i64) -> nn::Conv2D {
    init::conv(p, cin, cout, Geom::new(k, stride, padding).groups(groups), PYTORCH_DEFAULT)
}

/// The biased conv with padding kernel/2 that `LinearBottleNeck` uses.
fn block_cv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, groups: i64) -> nn::Conv2D {
    cv(p, cin, cout, k, stride, k / 2, groups)
}

struct Mv2Tiny {
    pre: (nn::Conv2D, nn::BatchNorm),
    stages: Vec<Vec<Inverted>>,
    conv1: (nn::Conv2D, nn::BatchNorm),
    conv2: nn::Conv2D,
}

impl Mv2Tiny {
    fn new(p: &nn::Path, c: ModelCfg) -> Mv2Tiny {
        let mut cin = 32;
        let pre = (cv(p / "pre" / 0, c.in_channels, cin, 1, 1, 1, 1), bn(p / "pre" / 1, cin));
        let mut stages = Vec::new();
        for (s, &(t, out, n, stride)) in STAGES.iter().enumerate() {
            let sp = p / format!("stage{}", s + 1);
            let mut blocks = Vec::new();
            for i in 0..n {
                // A one-block stage is the block itself in PyTorch, not a Sequential of one.
                let bp = if n == 1 { sp.clone() } else { &sp / i };
                blocks.push(Inverted::new(bp, "residual", (cin, out, if i == 0 { stride } else { 1 }, t), block_cv, Tensor::relu6));
                cin = out;
            }
            stages.push(blocks);
        }
        let conv1 = (cv(p / "conv1" / 0, cin, 1280, 1, 1, 0, 1), bn(p / "conv1" / 1, 1280));
        Mv2Tiny { pre, stages, conv1, conv2: cv(p / "conv2", 1280, c.num_classes, 1, 1, 0, 1) }
    }

    /// Stages from `from` on, then `conv1`: the map that is pooled (`feats[4]`).
    fn rest(&self, h: &Tensor, from: usize, train: bool) -> Tensor {
        let mut h = h.shallow_clone();
        for b in self.stages.iter().skip(from).flatten() {
            h = b.forward(&h, train);
        }
        self.conv1.0.forward(&h).apply_t(&self.conv1.1, train).relu6()
    }
}

impl Model for Mv2Tiny {
    fn forward(&self, x: &Tensor, train: bool) -> Output {
        let mut h = self.pre.0.forward(x).apply_t(&self.pre.1, train).relu6();
        let mut feats = vec![h.shallow_clone()];
        for (s, blocks) in self.stages.iter().enumerate() {
            for b in blocks {
                h = b.forward(&h, train);
            }
            if TAPS.contains(&s) {
                feats.push(h.shallow_clone());
            }
        }
        let out = self.conv1.0.forward(&h).apply_t(&self.conv1.1, train).relu6();
        feats.push(out.shallow_clone());
        let pooled = global_pool(&out);
        let logits = self.head(&pooled);
        Output { logits, preact: feats.iter().map(Tensor::shallow_clone).collect(), feats, pooled }
    }

    /// The 1×1 conv classifier on 1×1 maps is a linear layer with the flattened kernel.
    fn head(&self, pooled: &Tensor) -> Tensor {
        pooled.linear(&self.conv2.ws.flatten(1, -1), self.conv2.bs.as_ref())
    }

    fn forward_tail(&self, f: &Tensor, stage: usize, train: bool) -> Option<Tensor> {
        let out = match stage {
            0 => self.rest(f, 0, train),
            1..=3 => self.rest(f, TAPS[stage - 1] + 1, train),
            4 => f.shallow_clone(),
            _ => return None,
        };
        Some(self.head(&global_pool(&out)))
    }
}
