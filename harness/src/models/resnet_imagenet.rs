//! ImageNet ResNet-18/34/50 with torchvision's state-dict names (`conv1`, `bn1`,
//! `layer{1..4}.{i}.conv{1,2,3}`/`bn{1,2,3}`, `downsample.0/.1`, `fc`), so torchvision's v1
//! weights (mdistiller's ImageNet teachers) load after conversion. Bottleneck strides on the 3×3
//! conv (torchvision's "v1.5"). The blocks are RepDistiller's CIFAR `ResNet18/50` blocks
//! ([`super::resnet_v2`]) with the projection named `downsample`.
//!
//! Feature taps follow mdistiller's `models/imagenet/resnet.py`, which has the same parameters
//! but moves each block's last ReLU into the next block so that it can return pre-activations:
//! `feats` = ReLU(stem BN) before max-pooling, then each stage's output; `preact` = the same
//! taps before their ReLU. torchvision's own forward returns neither.
//!
//! Init (torchvision `torchvision/models/resnet.py` `ResNet.__init__`, and mdistiller's
//! `mdistiller/models/imagenet/resnet.py` 116–122 with its `normal_(0, sqrt(2 / n))`, the same
//! distribution): convs Kaiming-normal fan-out, BN 1/0 (`zero_init_residual=False`), `fc` left to
//! PyTorch's `nn.Linear` default.

use tch::{Tensor, nn, nn::Module};

use super::init::{self, PYTORCH_DEFAULT, kaiming_conv as conv};
use super::resnet_v2::{self, Block};
use super::{Input, Model, ModelCfg, ModelEntry, Output, bn};

const IMAGENET: Input = Input::Native(3, 224, 224);

pub static ENTRIES: &[ModelEntry] = &[
    ModelEntry { name: "resnet18", family: "resnet_imagenet", input: IMAGENET, build: |p, c| Box::new(ResNet::new(p, c, false, [2, 2, 2, 2])) },
    ModelEntry { name: "resnet34", family: "resnet_imagenet", input: IMAGENET, build: |p, c| Box::new(ResNet::new(p, c, false, [3, 4, 6, 3])) },
    ModelEntry { name: "resnet50", family: "resnet_imagenet", input: IMAGENET, build: |p, c| Box::new(ResNet::new(p, c, true, [3, 4, 6, 3])) },
];

struct ResNet {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    layers: Vec<Vec<Block>>,
    fc: nn::Linear,
}

impl ResNet {
    fn new(p: &nn::Path, c: ModelCfg, bottleneck: bool, nb: [i64; 4]) -> ResNet {
        let (layers, cin) = resnet_v2::layers(p, bottleneck, nb, "downsample");
        ResNet {
            conv1: conv(p / "conv1", c.in_channels, 64, 7, 2, 3),
            bn1: bn(p / "bn1", 64),
            layers,
            fc: init::linear(p / "fc", cin, c.num_classes, PYTORCH_DEFAULT),
        }
    }

    /// Stages `from..` on `h`, collecting (output, pre-activation) per stage.
    fn stages(&self, mut h: Tensor, from: usize, train: bool, feats: &mut Vec<Tensor>, preact: &mut Vec<Tensor>) -> Tensor {
        for stage in &self.layers[from..] {
            let mut pre = h.shallow_clone();
            for b in stage {
                let (o, p) = b.forward(&h, train);
                h = o;
                pre = p;
            }
            feats.push(h.shallow_clone());
            preact.push(pre);
        }
        h
    }

    fn pool(h: &Tensor) -> Tensor {
        h.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }
}

/// torchvision's `MaxPool2d(kernel_size=3, stride=2, padding=1)` after the stem.
fn maxpool(x: &Tensor) -> Tensor {
    x.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)
}

impl Model for ResNet {
    fn forward(&self, x: &Tensor, train: bool) -> Output {
        let stem = self.conv1.forward(x).apply_t(&self.bn1, train);
        let act = stem.relu();
        let mut feats = vec![act.shallow_clone()];
        let mut preact = vec![stem];
        let h = self.stages(maxpool(&act), 0, train, &mut feats, &mut preact);
        let pooled = Self::pool(&h);
        let logits = self.fc.forward(&pooled);
        Output { logits, feats, preact, pooled }
    }

    fn head(&self, pooled: &Tensor) -> Tensor {
        self.fc.forward(pooled)
    }

    /// `stage` 0 is the stem tap, taken before max-pooling, so the pooling is applied first.
    fn forward_tail(&self, f: &Tensor, stage: usize, train: bool) -> Option<Tensor> {
        if stage > self.layers.len() {
            return None;
        }
        let h = if stage == 0 { maxpool(f) } else { f.shallow_clone() };
        let h = self.stages(h, stage, train, &mut Vec::new(), &mut Vec::new());
        Some(self.fc.forward(&Self::pool(&h)))
    }
}
