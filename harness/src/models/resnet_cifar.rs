//! CIFAR ResNets of RepDistiller/mdistiller (`models/resnet.py`): BasicBlock, n = (depth−2)/6
//! blocks per stage, 1×1-conv ("option B") shortcuts where stride or width changes,
//! global average pooling, classifier `fc`. Widths [16,16,32,64], or [32,64,128,256] for the x4 nets.
//!
//! Init (mdistiller `mdistiller/models/cifar/resnet.py` 126–131, RepDistiller `models/resnet.py`):
//! convs `kaiming_normal_(mode="fan_out", nonlinearity="relu")`, BN 1/0, `fc` left to PyTorch's
//! `nn.Linear` default (U(±1/√fan_in) weight and bias).

use tch::{Tensor, nn, nn::Module};

use super::init::{self, PYTORCH_DEFAULT, kaiming_conv as conv};
use super::{Input, Model, ModelCfg, ModelEntry, Output, bn, global_pool};

const W1: [i64; 4] = [16, 16, 32, 64];
const W4: [i64; 4] = [32, 64, 128, 256];
const CIFAR: Input = Input::Native(3, 32, 32);

pub static ENTRIES: &[ModelEntry] = &[
    ModelEntry { name: "resnet8", family: "resnet_cifar", input: CIFAR, build: |p, c| Box::new(ResNet::new(p, c, 8, W1)) },
    ModelEntry { name: "resnet14", family: "resnet_cifar", input: CIFAR, build: |p, c| Box::new(ResNet::new(p, c, 14, W1)) },
    ModelEntry { name: "resnet20", family: "resnet_cifar", input: CIFAR, build: |p, c| Box::new(ResNet::new(p, c, 20, W1)) },
    ModelEntry { name: "resnet32", family: "resnet_cifar", input: CIFAR, build: |p, c| Box::new(ResNet::new(p, c, 32, W1)) },
    ModelEntry { name: "resnet44", family: "resnet_cifar", input: CIFAR, build: |p, c| Box::new(ResNet::new(p, c, 44, W1)) },
    ModelEntry { name: "resnet56", family: "resnet_cifar", input: CIFAR, build: |p, c| Box::new(ResNet::new(p, c, 56, W1)) },
    ModelEntry { name: "resnet110", family: "resnet_cifar", input: CIFAR, build: |p, c| Box::new(ResNet::new(p, c, 110, W1)) },
    ModelEntry { name: "resnet8x4", family: "resnet_cifar", input: CIFAR, build: |p, c| Box::new(ResNet::new(p, c, 8, W4)) },
    ModelEntry { name: "resnet32x4", family: "resnet_cifar", input: CIFAR, build: |p, c| Box::new(ResNet::new(p, c, 32, W4)) },
];

struct BasicBlock {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    downsample: Option<(nn::Conv2D, nn::BatchNorm)>,
}

impl BasicBlock {
    fn new(p: nn::Path, cin: i64, planes: i64, stride: i64) -> Self {
        let downsample = (stride != 1 || cin != planes).then(|| (conv(&p / "downsample" / 0, cin, planes, 1, stride, 0), bn(&p / "downsample" / 1, planes)));
        BasicBlock {
            conv1: conv(&p / "conv1", cin, planes, 3, stride, 1),
            bn1: bn(&p / "bn1", planes),
            conv2: conv(&p / "conv2", planes, planes, 3, 1, 1),
            bn2: bn(&p / "bn2", planes),
            downsample,
        }
    }

    /// Returns (output, pre-activation sum).
    fn forward(&self, x: &Tensor, train: bool) -> (Tensor, Tensor) {
        let out = self.conv1.forward(x).apply_t(&self.bn1, train).relu();
        let out = self.conv2.forward(&out).apply_t(&self.bn2, train);
        let residual = match &self.downsample {
            Some((c, b)) => c.forward(x).apply_t(b, train),
            None => x.shallow_clone(),
        };
        let preact = out + residual;
        (preact.relu(), preact)
    }
}

struct ResNet {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    layers: Vec<Vec<BasicBlock>>,
    fc: nn::Linear,
}

impl ResNet {
    fn new(p: &nn::Path, c: ModelCfg, depth: i64, w: [i64; 4]) -> Self {
        let n = (depth - 2) / 6;
        let mut inplanes = w[0];
        let mut layers = Vec::new();
        for (s, &planes) in w[1..].iter().enumerate() {
            let stride = if s == 0 { 1 } else { 2 };
            let lp = p / format!("layer{}", s + 1);
            let mut blocks = Vec::new();
            for i in 0..n {
                blocks.push(BasicBlock::new(&lp / i, inplanes, planes, if i == 0 { stride } else { 1 }));
                inplanes = planes;
            }
            layers.push(blocks);
        }
        ResNet {
            conv1: conv(p / "conv1", c.in_channels, w[0], 3, 1, 1),
            bn1: bn(p / "bn1", w[0]),
            layers,
            fc: init::linear(p / "fc", w[3], c.num_classes, PYTORCH_DEFAULT),
        }
    }
}

impl Model for ResNet {
    fn forward(&self, x: &Tensor, train: bool) -> Output {
        let (h, feats, preact) = super::run_stages(self.conv1.forward(x).apply_t(&self.bn1, train).relu(), &self.layers, |b, h| b.forward(h, train));
        // Global: the reference's AvgPool(8) covers the 8×8 map of a 32×32 input exactly.
        let pooled = global_pool(&h);
        let logits = self.fc.forward(&pooled);
        Output { logits, feats, preact, pooled }
    }

    fn head(&self, pooled: &Tensor) -> Tensor {
        self.fc.forward(pooled)
    }

    fn forward_tail(&self, f: &Tensor, stage: usize, train: bool) -> Option<Tensor> {
        let rest = self.layers.get(stage..)?;
        let (h, _, _) = super::run_stages(f.shallow_clone(), rest, |b, h| b.forward(h, train));
        Some(self.fc.forward(&global_pool(&h)))
    }
}
