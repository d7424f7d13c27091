//! Pruning masks for the teacher-side studies (spec methods-feature-online.md §6, §7, §10):
//! PrUE (Wang et al., ECML-PKDD 2022), global magnitude pruning, one shot or iterative as in
//! "Prune Your Model Before Distill It" (Park & No, ECCV 2022), and the student channel plan that
//! paper derives from the pruned teacher.
//!
//! A mask is a 0/1 tensor per prunable weight, keyed by its PyTorch state-dict name. Masks stay
//! fixed while the pruned model is fine-tuned: [`apply`] zeroes the masked weights (and the caller
//! zeroes their momentum, see `Sgd::apply_masks`) after every optimiser step, so a pruned weight
//! is exactly zero in every saved checkpoint and its sparsity can be measured from the file.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use tch::{Device, Kind, Tensor, nn};

pub use crate::store::Measured;
pub use crate::suite::spec::rounds_for;

use crate::data::{Batches, Dataset};
use crate::models::Model;

/// Masks by variable name (0 = pruned, 1 = kept), float32 on the weights' device.
pub type Masks = BTreeMap<String, Tensor>;

/// Which weights a criterion may remove.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every Conv2d weight (PrUE's prunable set; not FC, BN or biases).
    Conv,
    /// Conv2d and Linear weights, the classifier included (prune-then-distill's set).
    ConvLinear,
}

/// The prunable weights of a store, sorted by name: 4-d `*.weight` (convs), and 2-d `*.weight`
/// (linear layers) for [`Scope::ConvLinear`].
pub fn prunable(vs: &nn::VarStore, scope: Scope) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> =
        vs.variables().into_iter().filter(|(n, t)| n.ends_with(".weight") && (t.dim() == 4 || (scope == Scope::ConvLinear && t.dim() == 2))).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Python's `round` (half to even), which `torch.nn.utils.prune` uses to turn an amount into a count.
pub fn round_half_even(x: f64) -> i64 {
    x.round_ties_even() as i64
}

fn flat(ts: &[Tensor]) -> Tensor {
    Tensor::cat(&ts.iter().map(|t| t.detach().reshape([-1]).to_kind(Kind::Double)).collect::<Vec<_>>(), 0)
}

fn split_like(flat: &Tensor, like: &[Tensor]) -> Vec<Tensor> {
    let mut off = 0;
    like.iter()
        .map(|t| {
            let n = t.numel() as i64;
            let m = flat.narrow(0, off, n).reshape(t.size()).to_kind(Kind::Float).to_device(t.device());
            off += n;
            m
        })
        .collect()
}

/// One round of global magnitude pruning among the weights still alive: removes
/// `round_half_even(amount · n_alive)` entries with the smallest |w| (ties as topk returns them).
/// With all-ones masks and amount = s this is PyTorch's one-shot `global_unstructured(L1, s)`;
/// repeated with amount 0.2 it is prune-then-distill's iterative schedule.
pub fn magnitude_round(weights: &[Tensor], masks: &[Tensor], amount: f64) -> Vec<Tensor> {
    let w = flat(weights).abs();
    let m = flat(masks);
    let alive = m.gt(0.5);
    let n_alive = alive.sum(Kind::Int64).int64_value(&[]);
    let k = round_half_even(amount * n_alive as f64).min(n_alive);
    let mut keep = m.gt(0.5).to_kind(Kind::Double);
    if k > 0 {
        // Dead weights can never be chosen again: give them an infinite score.
        let scores = w.where_self(&alive, &Tensor::full([1], f64::INFINITY, (Kind::Double, Device::Cpu)).to_device(w.device()));
        let (_, idx) = scores.topk(k, 0, false, true);
        let _ = keep.index_fill_(0, &idx, 0.0);
    }
    split_like(&keep, weights)
}


/// PrUE scores |∂S/∂m| = |w ⊙ ∂S/∂w| of S = Σ_i |p̄_{y_i} − p(x_i)[y_i]|, the within-class spread
/// of the true-class confidence (§6). `forward` maps an input batch to logits using `weights`
/// (leaves that require grad); `batches` starts a pass over the data sorted by label (called
/// once per pass, so each pass draws its own augmentation, as the official code's two loops
/// over its loader do, and nothing is held in memory); gradients accumulate over the whole pass
/// as in the official code (no zeroing between batches).
pub fn prue_scores<'a>(
    weights: &[Tensor],
    batches: &dyn Fn() -> Batches<'a, (Tensor, Tensor)>,
    num_classes: i64,
    forward: &dyn Fn(&Tensor) -> Tensor,
) -> anyhow::Result<Vec<Tensor>> {
    let dev = weights.first().map(Tensor::device).unwrap_or(Device::Cpu);
    let kind = weights.first().map(Tensor::kind).unwrap_or(Kind::Float);
    // Pass 1: p̄_c, the mean true-class probability of class c.
    let mut sums = Tensor::zeros([num_classes], (kind, dev));
    let mut cnts = Tensor::zeros([num_classes], (kind, dev));
    for b in batches() {
        let (x, y) = b?;
        let py = tch::no_grad(|| forward(&x).softmax(1, kind).gather(1, &y.unsqueeze(1), false).squeeze_dim(1));
        sums = sums.index_add(0, &y, &py);
        cnts = cnts.index_add(0, &y, &py.ones_like());
    }
    let pbar = sums / cnts.clamp_min(1.0);
    for w in weights {
        let mut g = w.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
    // Pass 2: accumulate ∂S/∂w over every batch.
    for b in batches() {
        let (x, y) = b?;
        let py = forward(&x).softmax(1, kind).gather(1, &y.unsqueeze(1), false).squeeze_dim(1);
        let s = (pbar.index_select(0, &y) - py).abs().sum(kind);
        s.backward();
    }
    Ok(tch::no_grad(|| weights.iter().map(|w| (w * w.grad()).abs()).collect()))
}

/// PrUE's threshold rule: θ = the k-th smallest score with k = ⌊s·n⌋ (1-indexed); keep the weights
/// scoring strictly above θ, so ties at θ are pruned too. Returns the masks and θ (`None` if k = 0).
pub fn prue_masks(scores: &[Tensor], sparsity: f64) -> (Vec<Tensor>, Option<f64>) {
    let f = flat(scores);
    let n = f.numel() as f64;
    let k = (sparsity * n).floor() as i64;
    if k < 1 {
        return (scores.iter().map(|s| s.ones_like().to_kind(Kind::Float)).collect(), None);
    }
    let (thr, _) = f.kthvalue(k, 0, false);
    let thr = thr.double_value(&[]);
    let keep = f.gt(thr).to_kind(Kind::Double);
    (split_like(&keep, scores), Some(thr))
}

/// The training set's indices sorted by label (stable, so the order within a class is the
/// dataset's): PrUE's `get_cifar_prune_loader` goes over it unshuffled with the training
/// augmentation on.
pub fn label_order(data: &Dataset) -> Vec<i64> {
    let (_, order) = data.train_y.sort_stable(true, 0, false);
    Vec::try_from(&order.to_device(Device::Cpu)).unwrap_or_default()
}

/// PrUE masks for a whole model over its conv weights, the model in eval mode (§6).
/// Each pass over the data draws its own augmentation, from `seed` and the pass number.
pub fn prue_model(vs: &nn::VarStore, model: &dyn Model, data: &Dataset, sparsity: f64, batch: i64, augment: bool, seed: u64) -> anyhow::Result<(Masks, Option<f64>)> {
    let named = prunable(vs, Scope::Conv);
    let weights: Vec<Tensor> = named.iter().map(|(_, t)| t.shallow_clone()).collect();
    let order = label_order(data);
    let pass = std::cell::Cell::new(0u64);
    let batches = || -> Batches<'_, (Tensor, Tensor)> {
        pass.set(pass.get() + 1);
        let s = crate::data::site_seed(seed, pass.get()) as u64;
        Box::new(data.batches_in_order(order.clone(), batch, augment, s).map(|b| b.map(|(x, y, _)| (x, y))))
    };
    let scores = prue_scores(&weights, &batches, data.info.classes, &|x| model.forward(x, false).logits)?;
    for w in &weights {
        let mut g = w.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
    let (masks, thr) = prue_masks(&scores, sparsity);
    Ok((named.into_iter().map(|(n, _)| n).zip(masks).collect(), thr))
}

/// One magnitude round over a whole model, continuing from `previous` masks (all ones if none).
pub fn magnitude_model(vs: &nn::VarStore, scope: Scope, previous: &Masks, amount: f64) -> Masks {
    let named = prunable(vs, scope);
    let weights: Vec<Tensor> = named.iter().map(|(_, t)| t.shallow_clone()).collect();
    let prev: Vec<Tensor> = named.iter().map(|(n, t)| previous.get(n).map(Tensor::shallow_clone).unwrap_or_else(|| t.ones_like())).collect();
    let masks = magnitude_round(&weights, &prev, amount);
    named.into_iter().map(|(n, _)| n).zip(masks).collect()
}

/// Zeroes the pruned entries of the store's variables in place.
pub fn apply(vs: &nn::VarStore, masks: &Masks) {
    let vars = vs.variables();
    tch::no_grad(|| {
        for (n, m) in masks {
            if let Some(v) = vars.get(n) {
                let mut v = v.shallow_clone();
                let _ = v.f_mul_(&m.to_device(v.device()).to_kind(v.kind()));
            }
        }
    });
}

pub fn save(masks: &Masks, path: &Path) -> anyhow::Result<()> {
    let named: Vec<(String, Tensor)> = masks.iter().map(|(n, m)| (n.clone(), m.to_device(Device::Cpu))).collect();
    let tmp = path.with_extension("tmp.safetensors");
    Tensor::write_safetensors(&named, &tmp).map_err(|e| anyhow::anyhow!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))
}

pub fn load(path: &Path, device: Device) -> anyhow::Result<Masks> {
    let v = Tensor::read_safetensors(path).with_context(|| format!("reading masks {}", path.display()))?;
    Ok(v.into_iter().map(|(n, t)| (n, t.to_device(device).to_kind(Kind::Float))).collect())
}

pub fn measure(path: &Path, scope: Scope) -> anyhow::Result<Measured> {
    let tensors = Tensor::read_safetensors(path).with_context(|| format!("reading {}", path.display()))?;
    let mut m = Measured::default();
    for (n, t) in tensors {
        if !(n.ends_with(".weight") && (t.dim() == 4 || (scope == Scope::ConvLinear && t.dim() == 2))) {
            continue;
        }
        let size = t.numel() as i64;
        let nnz = t.ne(0.0).sum(Kind::Int64).int64_value(&[]);
        m.prunable += size;
        m.zeros += size - nnz;
        m.layers.insert(n, (nnz, size));
    }
    m.sparsity = if m.prunable > 0 { m.zeros as f64 / m.prunable as f64 } else { 0.0 };
    Ok(m)
}

/// Prune-then-distill's student channel plan (§7, with the k² fix of §11.7):
/// c_l = max(1, round(nnz_l / (k²·c_{l−1}))), c_0 = input channels, so each student conv has about
/// as many dense weights as the pruned teacher layer has non-zeros. `template` marks pooling
/// positions with `None`, which are copied through.
pub fn student_plan(nnz: &[i64], template: &[Option<i64>], in_channels: i64, k: i64) -> anyhow::Result<Vec<Option<i64>>> {
    let mut prev = in_channels;
    let mut it = nnz.iter();
    let mut plan = Vec::new();
    for t in template {
        match t {
            None => plan.push(None),
            Some(_) => {
                let n = it.next().context("fewer non-zero counts than conv layers in the template")?;
                let c = round_half_even(*n as f64 / (k * k * prev) as f64).max(1);
                plan.push(Some(c));
                prev = c;
            }
        }
    }
    if it.next().is_some() {
        anyhow::bail!("more non-zero counts ({}) than conv layers in the template", nnz.len());
    }
    Ok(plan)
}
