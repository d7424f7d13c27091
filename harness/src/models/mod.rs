//! Model zoo: one file per family, a registry by name, and a common forward that returns
//! logits plus the feature taps distillation methods need. Variable names follow the
//! RepDistiller/mdistiller PyTorch definitions so their state dicts load without renaming.
//!
//! Adding a model: a file with `pub static ENTRIES: &[ModelEntry]` (or one more entry in an
//! existing family), plus one line in [`FAMILIES`]. Pool globally where the reference pools with
//! a window covering the whole final map, and declare the size as [`Input::Native`]; only a model
//! that cannot run at other sizes is [`Input::Fixed`], which the suite check enforces.

pub mod checkpoint;
pub mod init;
pub mod mobilenetv1;
pub mod mobilenetv2;
pub mod mobilenetv2_tiny;
pub mod resnet_cifar;
pub mod resnet_imagenet;
pub mod resnet_v2;
pub mod shufflenet;
pub mod small;
pub mod vgg;
pub mod wrn;

pub use init::bn;
use tch::{Device, Kind, Tensor, nn};

/// What a forward pass returns.
pub struct Output {
    pub logits: Tensor,
    /// Per-stage features after the activation (stem first, last stage before pooling last).
    pub feats: Vec<Tensor>,
    /// The same taps before the final ReLU of each stage (RepDistiller's `preact=True`).
    pub preact: Vec<Tensor>,
    /// Pooled penultimate vector (input of the classifier).
    pub pooled: Tensor,
}

impl Output {
    /// The same outputs cut from the graph (what a partner network sees).
    pub fn detached(&self) -> Output {
        Output {
            logits: self.logits.detach(),
            feats: self.feats.iter().map(Tensor::detach).collect(),
            preact: self.preact.iter().map(Tensor::detach).collect(),
            pooled: self.pooled.detach(),
        }
    }
}

/// A network. Training-mode BN when `train` is true.
pub trait Model: Send {
    fn forward(&self, x: &Tensor, train: bool) -> Output;

    /// The classifier alone, applied to pooled vectors (…×D → …×classes); used for dense
    /// per-location votes over the final feature map.
    fn head(&self, pooled: &Tensor) -> Tensor;

    /// Logits from the output of stage `stage` (`feats[stage]`) onward: the remaining stages, the
    /// pooling and the classifier. SOKD's knowledge bridge is a fresh copy of the teacher run this
    /// way. `None` where a family does not support it.
    fn forward_tail(&self, _f: &Tensor, _stage: usize, _train: bool) -> Option<Tensor> {
        None
    }
}

/// Build-time settings derived from the dataset.
#[derive(Clone, Copy, Debug)]
pub struct ModelCfg {
    pub in_channels: i64,
    pub num_classes: i64,
}

/// The input a model is built for: what `harness models` lists and what the suite check reads.
/// Channels never constrain a model: its first layer is built for the dataset's ([`ModelCfg`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// No native size (the small digits models).
    Any,
    /// Designed for (C, H, W) but pooled globally, so other sizes run too (a CIFAR net on
    /// Tiny-ImageNet's 64×64, as mdistiller's Tiny-ImageNet setups do).
    Native(i64, i64, i64),
    /// Only this H×W runs: a fixed pooling window or a flatten ties the classifier to one map size.
    Fixed(i64, i64, i64),
}

impl Input {
    /// The (C, H, W) the model was designed for, if any.
    pub fn shape(self) -> Option<(i64, i64, i64)> {
        match self {
            Input::Any => None,
            Input::Native(c, h, w) | Input::Fixed(c, h, w) => Some((c, h, w)),
        }
    }

    /// Whether inputs of `shape` (C, H, W) run through the model.
    pub fn accepts(self, shape: (i64, i64, i64)) -> bool {
        match self {
            Input::Fixed(_, h, w) => (h, w) == (shape.1, shape.2),
            Input::Any | Input::Native(..) => true,
        }
    }
}

/// `3x32x32` (native size), `3x32x32 only` (fixed) or `any`.
impl std::fmt::Display for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Input::Any => write!(f, "any"),
            Input::Native(c, h, w) => write!(f, "{c}x{h}x{w}"),
            Input::Fixed(c, h, w) => write!(f, "{c}x{h}x{w} only"),
        }
    }
}

/// Registry entry.
pub struct ModelEntry {
    pub name: &'static str,
    pub family: &'static str,
    pub input: Input,
    pub build: fn(&nn::Path, ModelCfg) -> Box<dyn Model>,
}

/// Every model family; `harness models` lists their entries in this order.
pub static FAMILIES: &[&[ModelEntry]] = &[
    small::ENTRIES,
    resnet_cifar::ENTRIES,
    wrn::ENTRIES,
    vgg::ENTRIES,
    resnet_v2::ENTRIES,
    mobilenetv2::ENTRIES,
    mobilenetv2_tiny::ENTRIES,
    shufflenet::ENTRIES,
    resnet_imagenet::ENTRIES,
    mobilenetv1::ENTRIES,
];

/// All entries.
pub fn entries() -> impl Iterator<Item = &'static ModelEntry> {
    FAMILIES.iter().flat_map(|f| f.iter())
}

/// Looks a model up by its suite name.
pub fn find(name: &str) -> Option<&'static ModelEntry> {
    entries().find(|e| e.name == name)
}

/// All model names (for error messages).
pub fn names() -> Vec<&'static str> {
    entries().map(|e| e.name).collect()
}

/// Builds `name`'s architecture with each conv's output channels set from `widths` (layer order):
/// the student prune-then-distill forms from a pruned teacher (spec §7). `None` where the family
/// has no width plan (only the plain CNNs and VGGs have one) or the count of widths is wrong.
pub fn build_with_widths(name: &str, p: &nn::Path, cfg: ModelCfg, widths: &[i64]) -> Option<Box<dyn Model>> {
    match name {
        "cnn_small" | "cnn_tiny" if !widths.is_empty() => Some(small::cnn_with_widths(p, cfg, widths)),
        _ => vgg::with_widths(p, cfg, name, widths),
    }
}

/// Whether [`build_with_widths`] supports a model.
pub fn has_width_plan(name: &str) -> bool {
    matches!(name, "cnn_small" | "cnn_tiny" | "vgg8" | "vgg11" | "vgg13" | "vgg16" | "vgg19")
}

/// Conv weights (4-d `*.weight`) of a store in layer order: names compared with their digit runs
/// as numbers, so `conv10` follows `conv9` and `block1.3` follows `block1.0`.
pub fn conv_weights_in_order(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    fn natural(s: &str) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        let mut num = String::new();
        let mut txt = String::new();
        for ch in s.chars() {
            if ch.is_ascii_digit() {
                if !txt.is_empty() {
                    out.push((u64::MAX, std::mem::take(&mut txt)));
                }
                num.push(ch);
            } else {
                if !num.is_empty() {
                    out.push((num.parse().unwrap_or(u64::MAX - 1), String::new()));
                    num.clear();
                }
                txt.push(ch);
            }
        }
        if !num.is_empty() {
            out.push((num.parse().unwrap_or(u64::MAX - 1), String::new()));
        }
        if !txt.is_empty() {
            out.push((u64::MAX, txt));
        }
        out
    }
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(n, t)| n.ends_with(".weight") && t.dim() == 4).collect();
    v.sort_by_key(|(n, _)| natural(n));
    v
}

/// Number of trainable parameters (BN running statistics excluded, as PyTorch's `parameters()`).
pub fn param_count(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables().iter().map(Tensor::numel).sum::<usize>() as i64
}

/// Builds a model on a fresh CPU VarStore and returns its parameter count.
pub fn count_params(entry: &ModelEntry, cfg: ModelCfg) -> i64 {
    let vs = nn::VarStore::new(Device::Cpu);
    let _m = (entry.build)(&vs.root(), cfg);
    param_count(&vs)
}

/// Feature shapes (per sample) of every tap, from one eval-mode forward of a zero input.
pub fn feature_shapes(entry: &ModelEntry, cfg: ModelCfg, hw: (i64, i64)) -> Vec<Vec<i64>> {
    let vs = nn::VarStore::new(Device::Cpu);
    let m = (entry.build)(&vs.root(), cfg);
    let x = Tensor::zeros([1, cfg.in_channels, hw.0, hw.1], (Kind::Float, Device::Cpu));
    let out = tch::no_grad(|| m.forward(&x, false));
    out.feats.iter().map(|f| f.size()[1..].to_vec()).collect()
}

/// Global average pooling to an N×C vector: where a model's reference pools with a fixed window
/// that covers the whole map at its native size, this is the same there and also runs at others.
pub fn global_pool(h: &Tensor) -> Tensor {
    h.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
}

/// Runs residual stages after a stem: each block returns (output, pre-activation); collects the
/// stem and every stage's output (and its last pre-activation) as feature taps.
pub fn run_stages<B>(stem: Tensor, stages: &[Vec<B>], block: impl Fn(&B, &Tensor) -> (Tensor, Tensor)) -> (Tensor, Vec<Tensor>, Vec<Tensor>) {
    let mut h = stem;
    let mut feats = vec![h.shallow_clone()];
    let mut preact = vec![h.shallow_clone()];
    for stage in stages {
        let mut pre = h.shallow_clone();
        for b in stage {
            let (o, p) = block(b, &h);
            h = o;
            pre = p;
        }
        feats.push(h.shallow_clone());
        preact.push(pre);
    }
    (h, feats, preact)
}

/// The same NCHW tensor stored channels-last (NHWC strides, PyTorch's `channels_last`); other
/// ranks unchanged. Convolutions given channels-last inputs and weights run oneDNN's NHWC
/// kernels and keep the layout through BN, ReLU and additions.
pub fn to_channels_last(t: &Tensor) -> Tensor {
    if t.dim() == 4 { t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]) } else { t.shallow_clone() }
}

/// Re-lays every 4-D variable (conv weights) of a VarStore channels-last, in place: the model's
/// modules share the variables, so they see the new layout. Call before creating the optimiser
/// so its buffers follow the same layout.
pub fn vs_channels_last(vs: &nn::VarStore) {
    tch::no_grad(|| {
        for (_, mut v) in vs.variables() {
            if v.dim() == 4 {
                let cl = to_channels_last(&v);
                v.set_data(&cl);
            }
        }
    });
}
