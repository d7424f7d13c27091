//! Training: a cohort of runs sharing one data stream and their teachers' forward passes
//! ([`cohort`]), each run a [`learner::Learner`] with SGD (momentum/nesterov, weight decay),
//! a multistep LR, its teachers in eval mode under no-grad, evaluation on the test split after
//! every epoch and per-epoch metrics. A run trained alone is a cohort of one ([`train`]).
//!
//! Determinism: every random draw comes from the run's own seeded streams — initialisation,
//! data order and augmentation (a function of seed, epoch, dataset and batch size only, so every
//! method with the same seed sees the same batches: a paired design), method randomness — and
//! each draw site re-seeds the generator ([`stream_seed`], [`crate::data::site_seed`]). Epoch `e`
//! therefore never depends on earlier epochs' draws (per-epoch resume is exact) nor on the other
//! members of a cohort.
//!
//! Resume: after every epoch the model (with BN statistics), the momentum buffers and the loop's
//! record are saved ([`resume`]); a restarted run continues after the last completed epoch with
//! identical results, alone or in a cohort.

pub mod bench;
pub mod cohort;
pub mod learner;
pub mod precision;
pub mod prune;
pub mod record;
pub mod resume;
pub mod sgd;
pub mod stage;
pub mod trace;
pub mod trainee;

use std::path::PathBuf;

use anyhow::Context;
use tch::{Device, Kind, Tensor, nn};

use crate::data::Dataset;
use crate::distill::metrics;
use crate::models::{self, Model, ModelCfg};
use crate::store::{RunDir, Summary};
use crate::suite::{RunSpec, TeacherRef};

pub use cohort::{Member, cohort_key, teachers_agree, train_cohort};
pub use resume::{clear_resume, resume_json};

/// Test-time batch size (does not affect results beyond float reassociation in BN-free ops).
pub const EVAL_BATCH: i64 = 256;

/// Seed of one of a run's random streams (`init`, `data`, `method`, `mixup`, `prune`) for an
/// epoch (0 for set-up): a function of the run's seed, never of what ran before.
pub fn stream_seed(seed: u64, stream: &str, epoch: u32) -> u64 {
    let h = blake3::hash(format!("kd-harness/{seed}/{stream}/{epoch}").as_bytes());
    let b = h.as_bytes();
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) >> 1
}

/// A built model with its variables.
pub struct Net {
    pub vs: nn::VarStore,
    pub model: Box<dyn Model>,
}

/// Builds a registry model for a dataset on a device.
pub fn build(name: &str, data: &Dataset, device: Device) -> anyhow::Result<Net> {
    let entry = models::find(name).ok_or_else(|| crate::error::InputError::new(format!("unknown model `{name}`; allowed: {}", models::names().join(", "))))?;
    let vs = nn::VarStore::new(device);
    let cfg = ModelCfg { in_channels: data.info.shape.0, num_classes: data.info.classes };
    let model = (entry.build)(&vs.root(), cfg);
    Ok(Net { vs, model })
}

/// Builds `name` with the given conv widths (see [`models::build_with_widths`]).
pub fn build_widths(name: &str, data: &Dataset, device: Device, widths: &[i64]) -> anyhow::Result<Net> {
    let vs = nn::VarStore::new(device);
    let cfg = ModelCfg { in_channels: data.info.shape.0, num_classes: data.info.classes };
    let model = models::build_with_widths(name, &vs.root(), cfg, widths)
        .ok_or_else(|| crate::error::InputError::new(format!("model `{name}` has no width plan for {} conv widths", widths.len())))?;
    Ok(Net { vs, model })
}

/// Prune-then-distill's student plan from a pruned teacher's weights: non-zeros of every conv in
/// layer order, then c_l = round(nnz_l / (k²·c_{l−1})) (spec §7, k² formula of §11.7).
pub fn widths_from_pruned(vs: &nn::VarStore, in_channels: i64) -> anyhow::Result<Vec<i64>> {
    let convs = models::conv_weights_in_order(vs);
    let mut nnz = Vec::new();
    let mut k = None;
    for (n, w) in &convs {
        let s = w.size();
        let kk = s[2] * s[3];
        if *k.get_or_insert(kk) != kk {
            anyhow::bail!("conv {n} has a {}x{} kernel; the student plan assumes one kernel size", s[2], s[3]);
        }
        nnz.push(w.ne(0.0).sum(Kind::Int64).int64_value(&[]));
    }
    let k = k.context("the teacher has no conv layers to form a student from")?;
    let side = (k as f64).sqrt().round() as i64;
    let template: Vec<Option<i64>> = convs.iter().map(|(_, w)| Some(w.size()[0])).collect();
    Ok(prune::student_plan(&nnz, &template, in_channels, side)?.into_iter().flatten().collect())
}

/// Test-set logits in dataset order (eval mode, no-grad), on the CPU as float32.
pub fn test_logits(model: &dyn Model, data: &Dataset) -> anyhow::Result<Tensor> {
    let cl = crate::env::channels_last();
    let mut parts = Vec::new();
    for b in data.test_batches(EVAL_BATCH) {
        let (x, _) = b?;
        let x = if cl { models::to_channels_last(&x) } else { x };
        parts.push(tch::no_grad(|| model.forward(&x, false)).logits.to_device(Device::Cpu).to_kind(Kind::Float));
    }
    Ok(Tensor::cat(&parts, 0))
}

/// Accuracy-type metrics of a set of logits.
#[derive(Clone, Copy, Debug)]
pub struct Eval {
    pub loss: f64,
    pub top1: f64,
    pub top5: f64,
    pub ece: f64,
}

pub fn evaluate(logits: &Tensor, labels: &Tensor) -> Eval {
    let labels = labels.to_device(Device::Cpu);
    Eval {
        loss: metrics::cross_entropy(logits, &labels),
        top1: metrics::topk_accuracy(logits, &labels, 1),
        top5: metrics::topk_accuracy(logits, &labels, 5),
        ece: metrics::ece(logits, &labels, 15),
    }
}

/// A loaded teacher and its test-set accuracy.
pub struct Teacher {
    pub net: Net,
    pub top1: Option<f64>,
}

/// Loads a student's teacher: a finished run of this suite (sibling run directory) or a checkpoint.
pub fn load_teacher(tref: &TeacherRef, run: &RunDir, data: &Dataset, device: Device) -> anyhow::Result<Teacher> {
    match tref {
        TeacherRef::Run { id, model } => {
            let dir = RunDir { path: run.path.parent().map(|p| p.join(id)).context("run directory has no parent")? };
            if !dir.is_finished() {
                anyhow::bail!("teacher run {id} ({model}) has not finished; run the suite so it trains first");
            }
            let mut net = build(model, data, device)?;
            models::checkpoint::load_strict(&mut net.vs, &dir.model(), model)?;
            let top1 = dir.read_summary().ok().map(|s| s.last_top1);
            Ok(Teacher { net, top1 })
        }
        TeacherRef::Checkpoint { path, model, hash } => {
            let p = PathBuf::from(path);
            let bytes = std::fs::read(&p).map_err(|e| crate::error::InputError::new(format!("{path}: cannot read teacher checkpoint: {e}")))?;
            let now = blake3::hash(&bytes).to_hex().to_string();
            if &now != hash {
                crate::input_bail!(
                    "{path}: teacher checkpoint changed since the suite was planned (hash {now}, planned {hash}); re-run `harness run` to re-plan"
                );
            }
            let mut net = build(model, data, device)?;
            models::checkpoint::load_strict(&mut net.vs, &p, model)?;
            Ok(Teacher { net, top1: None })
        }
    }
}

/// Per-location argmax classes (N×L) of the classifier over the final feature map, upsampled
/// bilinearly by `up` (Zipf LS's dense votes). No gradient.
pub fn dense_argmax(model: &dyn Model, out: &crate::models::Output, up: i64) -> anyhow::Result<Tensor> {
    let Some(f) = out.feats.last().filter(|f| f.dim() == 4) else {
        anyhow::bail!("dense votes need a model whose last feature is a spatial map (N×C×H×W); use zipf_ls rank = \"logits\"");
    };
    // The classifier must read that map's channels (ShuffleNet and MobileNetV2 add a 1×1 conv
    // between their last stage and the pooling, so their last tap does not feed the head).
    let (c, d) = (f.size()[1], out.pooled.size().last().copied().unwrap_or(-1));
    if c != d {
        anyhow::bail!(
            "dense votes apply the classifier to every location of the last feature map, but its {c} channels do not feed \
             the classifier ({d} inputs) in this model; use zipf_ls rank = \"logits\""
        );
    }
    Ok(tch::no_grad(|| {
        let s = f.size();
        let f = if up > 1 { f.detach().upsample_bilinear2d([s[2] * up, s[3] * up], false, None, None) } else { f.detach() };
        let (n, d) = (s[0], s[1]);
        let flat = f.permute([0, 2, 3, 1]).reshape([-1, d]);
        model.head(&flat).argmax(1, false).view([n, -1])
    }))
}

/// Per-epoch progress reported to the caller (the scheduler prints it).
pub struct Progress {
    pub epoch: u32,
    pub epochs: u32,
    pub test_top1: f64,
    pub train_loss: f64,
    pub images_per_s: f64,
}

/// A run stopped because its loss became non-finite.
#[derive(Debug, thiserror::Error)]
#[error("training diverged at epoch {epoch} (loss {loss}); lower train.lr or check the method's weights")]
pub struct Diverged {
    pub epoch: u32,
    pub loss: f64,
}

/// Trains one run to completion (a cohort of one), continuing from its last completed epoch
/// when resume state exists; returns the summary. The caller writes `summary.json` (the marker
/// of a finished run).
pub fn train(spec: &RunSpec, run: &RunDir, data: &Dataset, device: Device, teachers: &[Teacher], on_epoch: &mut dyn FnMut(&Progress)) -> anyhow::Result<Summary> {
    let member = Member { spec: spec.clone(), run: run.clone() };
    let mut results = train_cohort(std::slice::from_ref(&member), data, device, teachers, &mut |_, p| on_epoch(p));
    results.pop().context("the cohort returned no result")?
}

/// The weights a stage's criterion may remove: PrUE prunes convs only; prune-then-distill's
/// magnitude rounds also prune the linear layers.
pub fn stage_scope(stage: &crate::suite::spec::PruneStage) -> prune::Scope {
    if stage.method == "prue" { prune::Scope::Conv } else { prune::Scope::ConvLinear }
}

