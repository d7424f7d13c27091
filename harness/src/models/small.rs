//! Small models for the digits dataset and fast tests: `mlp`, `cnn_small` (teacher-sized),
//! `cnn_tiny` (student-sized). Any input size (global average pooling).
//!
//! No official file defines these; they take the CIFAR ResNets' init (`resnet.py`): convs
//! Kaiming-normal fan-out, BN 1/0, every linear layer PyTorch's `nn.Linear` default (the
//! reference is `scripts/reference/models.py`).

use tch::{Tensor, nn, nn::Module};

use super::init::{self, PYTORCH_DEFAULT, kaiming_conv as conv};
use super::{Input, Model, ModelCfg, ModelEntry, Output, bn};

pub static ENTRIES: &[ModelEntry] = &[
    ModelEntry { name: "mlp", family: "small", input: Input::Any, build: |p, c| Box::new(Mlp::new(p, c)) },
    ModelEntry { name: "cnn_small", family: "small", input: Input::Any, build: |p, c| Box::new(Cnn::new(p, c, &[32, 64, 128])) },
    ModelEntry { name: "cnn_tiny", family: "small", input: Input::Any, build: |p, c| Box::new(Cnn::new(p, c, &[16, 32])) },
];

/// A `cnn_*` with the given conv widths (one per conv, stem first): the student plan of
/// prune-then-distill on the digits.
pub fn cnn_with_widths(p: &nn::Path, c: ModelCfg, widths: &[i64]) -> Box<dyn Model> {
    Box::new(Cnn::new(p, c, widths))
}

/// Two hidden layers of 128 units on the flattened image (input size fixed at first forward
/// via a lazy-free design: the first layer takes C·H·W, so the digits shape is assumed).
struct Mlp {
    fc1: nn::Linear,
    fc2: nn::Linear,
    fc: nn::Linear,
}

/// Input features of the MLP: it flattens 8×8 digits; other inputs are average-pooled to 8×8 first.
const MLP_SIDE: i64 = 8;

impl Mlp {
    fn new(p: &nn::Path, c: ModelCfg) -> Self {
        let d = c.in_channels * MLP_SIDE * MLP_SIDE;
        Mlp {
            fc1: init::linear(p / "fc1", d, 128, PYTORCH_DEFAULT),
            fc2: init::linear(p / "fc2", 128, 128, PYTORCH_DEFAULT),
            fc: init::linear(p / "fc", 128, c.num_classes, PYTORCH_DEFAULT),
        }
    }
}

impl Model for Mlp {
    fn forward(&self, x: &Tensor, _train: bool) -> Output {
        let x = if x.size()[2] != MLP_SIDE || x.size()[3] != MLP_SIDE { x.adaptive_avg_pool2d([MLP_SIDE, MLP_SIDE]) } else { x.shallow_clone() };
        let x = x.flatten(1, -1);
        let h1p = self.fc1.forward(&x);
        let h1 = h1p.relu();
        let h2p = self.fc2.forward(&h1);
        let h2 = h2p.relu();
        let logits = self.fc.forward(&h2);
        Output { logits, feats: vec![h1, h2.shallow_clone()], preact: vec![h1p, h2p], pooled: h2 }
    }

    fn head(&self, pooled: &Tensor) -> Tensor {
        self.fc.forward(pooled)
    }
}

/// Stride-1 stem then stride-2 stages: `conv{i}`/`bn{i}`, then `fc`.
struct Cnn {
    convs: Vec<(nn::Conv2D, nn::BatchNorm)>,
    fc: nn::Linear,
}

impl Cnn {
    fn new(p: &nn::Path, c: ModelCfg, widths: &[i64]) -> Self {
        let mut convs = Vec::new();
        let mut cin = c.in_channels;
        for (i, &w) in widths.iter().enumerate() {
            let stride = if i == 0 { 1 } else { 2 };
            convs.push((conv(p / format!("conv{}", i + 1), cin, w, 3, stride, 1), bn(p / format!("bn{}", i + 1), w)));
            cin = w;
        }
        Cnn { convs, fc: init::linear(p / "fc", cin, c.num_classes, PYTORCH_DEFAULT) }
    }
}

impl Model for Cnn {
    fn forward(&self, x: &Tensor, train: bool) -> Output {
        let mut h = x.shallow_clone();
        let mut feats = Vec::new();
        let mut preact = Vec::new();
        for (c, b) in &self.convs {
            let pre = c.forward(&h).apply_t(b, train);
            h = pre.relu();
            preact.push(pre);
            feats.push(h.shallow_clone());
        }
        let pooled = h.adaptive_avg_pool2d([1, 1]).flatten(1, -1);
        let logits = self.fc.forward(&pooled);
        Output { logits, feats, preact, pooled }
    }

    fn head(&self, pooled: &Tensor) -> Tensor {
        self.fc.forward(pooled)
    }
}
