//! Wide ResNets of RepDistiller (`models/wrn.py`): pre-activation blocks, n = (depth−4)/6 per
//! stage, widths [16, 16k, 32k, 64k], `convShortcut` only where channels change, final `bn1`,
//! classifier `fc`. Stage features are the raw residual sums (no BN/ReLU), as RepDistiller's; the
//! pre-activation taps are, as its `preact=True`, those sums through the BN that follows them
//! (`block2.layer.0.bn1`, `block3.layer.0.bn1`, final `bn1`), taken from the forward itself so
//! BN statistics are updated once.
//!
//! Init (mdistiller `mdistiller/models/cifar/wrn.py` 97–105, RepDistiller `models/wrn.py`): convs
//! `normal_(0, sqrt(2 / (k·k·out)))` (= Kaiming-normal fan-out), BN 1/0, `fc` weight left to
//! PyTorch's `nn.Linear` default but its **bias zeroed**.

use tch::{Tensor, nn, nn::Module};

use super::init::{self, Bias, Rule, Weight, kaiming_conv as conv};
use super::{Input, Model, ModelCfg, ModelEntry, Output, bn, global_pool};

/// `fc`: PyTorch's default weight, `m.bias.data.zero_()`.
const FC: Rule = Rule { weight: Weight::PytorchDefault, bias: Bias::Zeros };

const CIFAR: Input = Input::Native(3, 32, 32);

pub static ENTRIES: &[ModelEntry] = &[
    ModelEntry { name: "wrn_16_1", family: "wrn", input: CIFAR, build: |p, c| Box::new(Wrn::new(p, c, 16, 1)) },
    ModelEntry { name: "wrn_16_2", family: "wrn", input: CIFAR, build: |p, c| Box::new(Wrn::new(p, c, 16, 2)) },
    ModelEntry { name: "wrn_40_1", family: "wrn", input: CIFAR, build: |p, c| Box::new(Wrn::new(p, c, 40, 1)) },
    ModelEntry { name: "wrn_40_2", family: "wrn", input: CIFAR, build: |p, c| Box::new(Wrn::new(p, c, 40, 2)) },
];

struct Block {
    bn1: nn::BatchNorm,
    conv1: nn::Conv2D,
    bn2: nn::BatchNorm,
    conv2: nn::Conv2D,
    shortcut: Option<nn::Conv2D>,
}

impl Block {
    fn new(p: nn::Path, cin: i64, cout: i64, stride: i64) -> Block {
        Block {
            bn1: bn(&p / "bn1", cin),
            conv1: conv(&p / "conv1", cin, cout, 3, stride, 1),
            bn2: bn(&p / "bn2", cout),
            conv2: conv(&p / "conv2", cout, cout, 3, 1, 1),
            shortcut: (cin != cout).then(|| conv(&p / "convShortcut", cin, cout, 1, stride, 0)),
        }
    }

    /// Returns (output, `bn1(x)`: the block's input after its first BN, before the ReLU).
    fn forward(&self, x: &Tensor, train: bool) -> (Tensor, Tensor) {
        let n = x.apply_t(&self.bn1, train);
        let a = n.relu();
        let out = self.conv1.forward(&a).apply_t(&self.bn2, train).relu();
        let out = self.conv2.forward(&out);
        let y = match &self.shortcut {
            // The official block feeds the activated input to the shortcut when channels change.
            Some(s) => s.forward(&a) + out,
            None => x + out,
        };
        (y, n)
    }
}

struct Wrn {
    conv1: nn::Conv2D,
    blocks: Vec<Vec<Block>>,
    bn1: nn::BatchNorm,
    fc: nn::Linear,
}

impl Wrn {
    fn new(p: &nn::Path, c: ModelCfg, depth: i64, k: i64) -> Wrn {
        let n = (depth - 4) / 6;
        let w = [16, 16 * k, 32 * k, 64 * k];
        let mut blocks = Vec::new();
        for s in 0..3 {
            let lp = p / format!("block{}", s + 1) / "layer";
            blocks.push((0..n).map(|i| Block::new(&lp / i, if i == 0 { w[s] } else { w[s + 1] }, w[s + 1], if i == 0 && s > 0 { 2 } else { 1 })).collect());
        }
        Wrn {
            conv1: conv(p / "conv1", c.in_channels, 16, 3, 1, 1),
            blocks,
            bn1: bn(p / "bn1", w[3]),
            fc: init::linear(p / "fc", w[3], c.num_classes, FC),
        }
    }

    /// Final BN (pre-activation tap), then ReLU and global average pooling (the reference's 8×8
    /// window is the whole map at 32×32).
    fn pool(&self, h: &Tensor, train: bool) -> (Tensor, Tensor) {
        let n = h.apply_t(&self.bn1, train);
        let pooled = global_pool(&n.relu());
        (n, pooled)
    }
}

impl Model for Wrn {
    fn forward(&self, x: &Tensor, train: bool) -> Output {
        let mut h = self.conv1.forward(x);
        let mut feats = vec![h.shallow_clone()];
        let mut preact = vec![h.shallow_clone()];
        for (s, stage) in self.blocks.iter().enumerate() {
            for (i, b) in stage.iter().enumerate() {
                let (o, n) = b.forward(&h, train);
                // The first block's bn1 of stages 2 and 3 normalises the previous stage's output.
                if i == 0 && s > 0 {
                    preact.push(n);
                }
                h = o;
            }
            feats.push(h.shallow_clone());
        }
        let (n, pooled) = self.pool(&h, train);
        preact.push(n);
        let logits = self.fc.forward(&pooled);
        Output { logits, feats, preact, pooled }
    }

    fn head(&self, pooled: &Tensor) -> Tensor {
        self.fc.forward(pooled)
    }

    fn forward_tail(&self, f: &Tensor, stage: usize, train: bool) -> Option<Tensor> {
        let mut h = f.shallow_clone();
        for b in self.blocks.get(stage..)?.iter().flatten() {
            h = b.forward(&h, train).0;
        }
        Some(self.fc.forward(&self.pool(&h, train).1))
    }
}
