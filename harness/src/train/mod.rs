//! The training loop: SGD with momentum/nesterov and weight decay, multistep LR, the teacher in
//! eval mode under no-grad, evaluation on the test split after every epoch, per-epoch metrics.
//!
//! Determinism: the global generator is re-seeded from (seed, epoch) before initialisation and at
//! the start of every epoch, so data order and augmentation of epoch `e` never depend on earlier
//! epochs' random draws (this also makes per-epoch resume exact).
//!
//! Resume: after every epoch the model (with BN statistics), the momentum buffers and the loop's
//! counters are saved (`resume-e<N>.safetensors` + `resume.json`, atomically, keeping the last good
//! pair); a restarted run continues after the last completed epoch with identical results.

pub mod bench;
pub mod precision;
pub mod prune;
pub mod sgd;

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn};

use crate::data::Dataset;
use crate::distill::{self, Step, metrics};
use crate::models::{self, Model, ModelCfg};
use crate::store::{RunDir, Summary};
use crate::suite::{RunSpec, TeacherRef};

/// Test-time batch size (does not affect results beyond float reassociation in BN-free ops).
pub const EVAL_BATCH: i64 = 256;

/// Seed of the global generator for (run seed, epoch); epoch 0 is initialisation.
pub fn epoch_seed(seed: u64, epoch: u32) -> i64 {
    let h = blake3::hash(format!("kd-harness/{seed}/{epoch}").as_bytes());
    let b = h.as_bytes();
    (u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) >> 1) as i64
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

/// One SGD over the network (group 0), the method's modules (group 1) and the online peers
/// (groups 2.., at `peer_scale` times the lr).
fn optimiser(net: &Net, aux: &nn::VarStore, peers: &[Net], peer_scale: f64, r: &crate::suite::Recipe) -> sgd::Sgd {
    let prefixes: Vec<String> = (0..peers.len()).map(|k| format!("peer{k}.")).collect();
    let mut stores: Vec<(&str, &nn::VarStore, f64)> = vec![("", &net.vs, 1.0), ("aux.", aux, 1.0)];
    stores.extend(peers.iter().zip(&prefixes).map(|(p, pre)| (pre.as_str(), &p.vs, peer_scale)));
    sgd::Sgd::over(&stores, r.lr, r.momentum, r.weight_decay, r.nesterov)
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

/// The loop's state after a completed epoch (`resume.json`); tensors live in `file`.
#[derive(Serialize, Deserialize)]
struct ResumeState {
    id: String,
    epoch: u32,
    file: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    best_top1: f64,
    best_epoch: u32,
    last: [Option<f64>; 4],
    agreement: Option<f64>,
    pred_kl: Option<f64>,
    train_time: f64,
    images: i64,
    elapsed: f64,
    #[serde(default)]
    peers_best: Vec<f64>,
    /// fp16's loss scale and counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scaler: Option<precision::LossScaler>,
}

fn fin(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// Path of the resume state in a run directory.
pub fn resume_json(run: &RunDir) -> PathBuf {
    run.path.join("resume.json")
}

/// Removes resume files (after the run's summary is written).
pub fn clear_resume(run: &RunDir) {
    if let Ok(rd) = std::fs::read_dir(&run.path) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n == "resume.json" || (n.starts_with("resume-e") && n.ends_with(".safetensors")) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// The stores a run's resume state holds, with their name prefixes.
/// Teachers are included only when they run in train mode (SOKD): their BN statistics then move.
fn stores<'a>(net: &'a Net, aux: &'a nn::VarStore, peers: &'a [Net], moving_teachers: &'a [Teacher]) -> Vec<(String, &'a nn::VarStore)> {
    let mut v = vec![("model.".to_string(), &net.vs), ("aux.".to_string(), aux)];
    v.extend(peers.iter().enumerate().map(|(k, p)| (format!("peer{k}."), &p.vs)));
    v.extend(moving_teachers.iter().enumerate().map(|(k, t)| (format!("teacher{k}."), &t.net.vs)));
    v
}

fn load_resume(run: &RunDir, spec: &RunSpec, stores: &[(String, &nn::VarStore)], opt: &mut sgd::Sgd) -> anyhow::Result<Option<ResumeState>> {
    let p = resume_json(run);
    if !p.is_file() {
        return Ok(None);
    }
    let st: ResumeState = crate::store::read_json(&p)?;
    if st.id != spec.id {
        anyhow::bail!("{}: resume state belongs to run {}", p.display(), st.id);
    }
    let file = run.path.join(&st.file);
    let tensors: std::collections::BTreeMap<String, Tensor> =
        Tensor::read_safetensors(&file).with_context(|| format!("reading {}", file.display()))?.into_iter().collect();
    // Check everything first, so a damaged state never leaves a half-loaded model behind.
    for (prefix, store) in stores {
        for (name, v) in store.variables() {
            let t = tensors.get(&format!("{prefix}{name}")).with_context(|| format!("{}: no {prefix}{name}", file.display()))?;
            if t.size() != v.size() {
                anyhow::bail!("{}: {prefix}{name} has shape {:?}, expected {:?}", file.display(), t.size(), v.size());
            }
        }
    }
    tch::no_grad(|| -> anyhow::Result<()> {
        for (prefix, store) in stores {
            for (name, mut v) in store.variables() {
                v.f_copy_(&tensors[&format!("{prefix}{name}")].to_device(v.device()))?;
            }
        }
        Ok(())
    })?;
    opt.load_state(&tensors)?;
    Ok(Some(st))
}

fn save_resume(run: &RunDir, stores: &[(String, &nn::VarStore)], opt: &sgd::Sgd, st: &ResumeState) -> anyhow::Result<()> {
    let mut named: Vec<(String, Tensor)> =
        stores.iter().flat_map(|(p, vs)| vs.variables().into_iter().map(move |(n, t)| (format!("{p}{n}"), t.contiguous()))).collect();
    named.extend(opt.state().into_iter().map(|(n, t)| (n, t.contiguous())));
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let tmp = run.path.join(format!(".{}.tmp.safetensors", st.file));
    Tensor::write_safetensors(&named, &tmp).map_err(|e| anyhow::anyhow!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, run.path.join(&st.file)).with_context(|| format!("renaming {}", tmp.display()))?;
    crate::store::write_json(&resume_json(run), st)?;
    // Only now is the previous epoch's state obsolete.
    if let Ok(rd) = std::fs::read_dir(&run.path) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("resume-e") && n.ends_with(".safetensors") && n != st.file {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

/// Test hook: `KD_HARNESS_FAULT=panic:<run-id prefix>:<epoch>` panics after that epoch of
/// matching runs (used by the failure-isolation tests); `stall:<prefix>:<epoch>` sleeps for ten
/// minutes instead, so a test can kill the run at a known point (after that epoch's resume state
/// was written) without racing the training. Unset in normal use.
fn fault_hook(id: &str, epoch: u32) {
    if let Ok(f) = std::env::var("KD_HARNESS_FAULT") {
        let p: Vec<&str> = f.split(':').collect();
        if p.len() == 3 && id.starts_with(p[1]) && p[2] == epoch.to_string() {
            match p[0] {
                "panic" => panic!("injected fault at epoch {epoch} (KD_HARNESS_FAULT)"),
                "stall" => std::thread::sleep(std::time::Duration::from_secs(600)),
                _ => {}
            }
        }
    }
}

/// Trains one run to completion (continuing from its last completed epoch when resume state
/// exists), writing `metrics.csv` and the resume state after every epoch, and returns the
/// summary. The caller writes `summary.json` (the marker of a finished run).
pub fn train(
    spec: &RunSpec,
    run: &RunDir,
    data: &Dataset,
    device: Device,
    teachers: Vec<Teacher>,
    on_epoch: &mut dyn FnMut(&Progress),
) -> anyhow::Result<Summary> {
    let start = Instant::now();
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(run.log()).with_context(|| format!("opening {}", run.log().display()))?;
    let minfo = distill::find(&spec.method).ok_or_else(|| anyhow::anyhow!("unknown method {}", spec.method))?;
    let need = match minfo.teachers {
        distill::Teachers::None => 0..=0,
        distill::Teachers::One => 1..=1,
        distill::Teachers::Many => 2..=usize::MAX,
        distill::Teachers::Peers => 0..=0,
    };
    if !need.contains(&teachers.len()) {
        anyhow::bail!("method {} got {} teacher(s)", spec.method, teachers.len());
    }
    let mut distiller = minfo.instantiate(&spec.params)?;
    // Prune-then-distill's student formed from the pruned teacher: widths from its non-zeros.
    let widths = if spec.student_from_teacher {
        let t = teachers.first().context("a student formed from its teacher needs the teacher")?;
        let w = widths_from_pruned(&t.net.vs, data.info.shape.0)?;
        writeln!(log, "student formed from the pruned teacher: conv widths {w:?}")?;
        Some(w)
    } else {
        None
    };
    let make = |device| match &widths {
        Some(w) => build_widths(&spec.model, data, device, w),
        None => build(&spec.model, data, device),
    };
    tch::manual_seed(epoch_seed(spec.seed, 0));
    let mut net = make(device)?;
    // A pruning stage starts from its parent's weights, pruned; the masks stay fixed from here on.
    let masks = match &spec.prune {
        Some(stage) => Some(start_pruned(stage, spec, run, data, device, &mut net, &mut log)?),
        None => None,
    };
    // Online peers (DML's cohort, SwitOKD's teacher) are initialised right after the network.
    let peers: Vec<Net> = spec.peers.iter().map(|m| build(m, data, device)).collect::<anyhow::Result<_>>()?;
    let param_count = models::param_count(&net.vs);
    let r = &spec.train;
    // The method's own trainable modules (e.g. FitNet's regressor) live in a second store, built
    // from one probe forward, so the model's checkpoint keeps exactly the PyTorch state-dict names.
    let aux = nn::VarStore::new(device);
    {
        let n = r.batch_size.min(2) as i64;
        let probe = data.probe(n)?;
        let (s, t) = tch::no_grad(|| (net.model.forward(&probe, false), teachers.iter().map(|t| t.net.model.forward(&probe, false)).collect::<Vec<_>>()));
        distiller.set_train_labels(&data.train_y);
        let tnames: Vec<String> = spec.teachers.iter().map(|t| t.model().to_string()).collect();
        distiller.set_models(&spec.model, &tnames, ModelCfg { in_channels: data.info.shape.0, num_classes: data.info.classes });
        distiller.init_modules(&aux.root(), &s, &t)?;
    }
    let peer_scale = distiller.peer_lr().unwrap_or(1.0);
    // Channels-last convolutions (faster oneDNN/cuDNN kernels); before the optimiser exists, so
    // its buffers take the same layout. Files are always written in PyTorch's NCHW layout.
    let channels_last = crate::env::channels_last();
    if let Device::Cuda(_) = device {
        // Fixed input shapes: let cuDNN pick the fastest algorithms once (GPU runs are not
        // bit-reproducible anyway).
        tch::Cuda::cudnn_set_benchmark(true);
    }
    if channels_last {
        for vs in std::iter::once(&net.vs).chain(peers.iter().map(|p| &p.vs)).chain(teachers.iter().map(|t| &t.net.vs)).chain([&aux]) {
            models::vs_channels_last(vs);
        }
    }
    let mut opt = optimiser(&net, &aux, &peers, peer_scale, r);
    let amp = precision::Amp::new(device, r.precision)?;
    let mut scaler = amp.scaler();
    let peer_groups: Vec<usize> = (2..2 + peers.len()).collect();

    // The teachers' test predictions are fixed: compute them once for agreement / predictive KL
    // (several teachers: their ensemble, the log of the averaged probabilities).
    let teacher_test = match teachers.len() {
        0 => None,
        1 => Some(test_logits(teachers[0].net.model.as_ref(), data)?),
        k => {
            let lps: Vec<Tensor> =
                teachers.iter().map(|t| Ok(test_logits(t.net.model.as_ref(), data)?.log_softmax(1, Kind::Float))).collect::<anyhow::Result<_>>()?;
            Some(Tensor::stack(&lps, 0).logsumexp([0i64].as_slice(), false) - (k as f64).ln())
        }
    };
    let mut teacher_top1 = if teachers.len() == 1 { teachers[0].top1 } else { None };
    if let (Some(tl), None) = (&teacher_test, teacher_top1) {
        teacher_top1 = Some(evaluate(tl, &data.test_y).top1);
    }
    let mixup = distiller.mixup().or_else(|| r.mixup());
    let group = distiller.same_class_per_anchor();
    let dense = distiller.dense_votes();
    let teacher_train = distiller.teacher_train_mode();

    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header: Vec<String> = Vec::new();
    let (mut best_top1, mut best_epoch) = (f64::NEG_INFINITY, 0u32);
    let mut last = Eval { loss: f64::NAN, top1: 0.0, top5: 0.0, ece: 0.0 };
    let mut stats_out = metrics::OutputStats::default();
    let mut reliability = metrics::Reliability::default();
    let (mut agreement, mut pred_kl) = (None, None);
    let mut train_time = 0.0f64;
    let mut images = 0i64;
    let mut elapsed_before = 0.0f64;
    let mut first_epoch = 1u32;
    let mut peers_best: Vec<f64> = Vec::new();
    let mut peers_last: Vec<f64> = Vec::new();
    let moving: &[Teacher] = if teacher_train { &teachers } else { &[] };
    let loaded = load_resume(run, spec, &stores(&net, &aux, &peers, moving), &mut opt);
    match loaded {
        Ok(Some(st)) => {
            writeln!(log, "resuming run {} after epoch {}", spec.id, st.epoch)?;
            first_epoch = st.epoch + 1;
            header = st.header;
            rows = st.rows;
            best_top1 = st.best_top1;
            best_epoch = st.best_epoch;
            last =
                Eval { loss: st.last[0].unwrap_or(f64::NAN), top1: st.last[1].unwrap_or(0.0), top5: st.last[2].unwrap_or(0.0), ece: st.last[3].unwrap_or(0.0) };
            agreement = st.agreement;
            pred_kl = st.pred_kl;
            train_time = st.train_time;
            images = st.images;
            elapsed_before = st.elapsed;
            peers_best = st.peers_best;
            scaler = st.scaler.or(scaler);
        }
        Ok(None) => {}
        Err(e) => {
            // A damaged resume state costs the progress, never correctness: start over.
            writeln!(log, "ignoring unusable resume state ({e:#}); starting from epoch 1")?;
            clear_resume(run);
            tch::manual_seed(epoch_seed(spec.seed, 0));
            net = make(device)?;
            if let Some(stage) = &spec.prune {
                start_pruned(stage, spec, run, data, device, &mut net, &mut log)?;
            }
            if channels_last {
                models::vs_channels_last(&net.vs);
            }
            opt = optimiser(&net, &aux, &peers, peer_scale, r);
        }
    }
    writeln!(log, "run {} — {} params, device {:?}, teacher top-1 {:?}, epochs {}..={}", spec.id, param_count, device, teacher_top1, first_epoch, r.epochs)?;

    for epoch in first_epoch..=r.epochs {
        let lr = r.lr_at(epoch);
        opt.lr = lr;
        tch::manual_seed(epoch_seed(spec.seed, epoch));
        let t0 = Instant::now();
        let mut names: Vec<&'static str> = Vec::new();
        let mut sums: Vec<Tensor> = Vec::new();
        let mut total_sum = Tensor::zeros([], (Kind::Float, device));
        let mut correct = Tensor::zeros([], (Kind::Int64, device));
        let mut seen = 0i64;
        let skipped_before = scaler.as_ref().map_or(0, |s| s.skipped);
        let batches =
            if group > 0 { data.train_batches_grouped(r.batch_size as i64, group, r.augment) } else { data.train_batches(r.batch_size as i64, r.augment) };
        for batch in batches {
            let (x, y, idx) = batch?;
            let x = if channels_last { models::to_channels_last(&x) } else { x };
            let bs = y.size()[0];
            let (x, y, soft) = match &mixup {
                Some(m) => {
                    let (xm, ym) = m.apply(&x, &y, data.info.classes);
                    (xm, ym.argmax(1, false), Some(ym))
                }
                None => (x, y, None),
            };
            let t_out: Vec<crate::models::Output> =
                teachers.iter().map(|t| tch::no_grad(|| amp.forward(t.net.model.as_ref(), &x, teacher_train))).collect::<anyhow::Result<_>>()?;
            let s_out = amp.forward(net.model.as_ref(), &x, true)?;
            let p_out: Vec<crate::models::Output> = peers.iter().map(|p| amp.forward(p.model.as_ref(), &x, true)).collect::<anyhow::Result<_>>()?;
            let votes = match dense {
                Some(up) => Some(dense_argmax(net.model.as_ref(), &s_out, up)?),
                None => None,
            };
            let step = Step {
                student: &s_out,
                teachers: &t_out,
                peers: &p_out,
                labels: &y,
                soft_targets: soft.as_ref(),
                dense_argmax: votes.as_ref(),
                indices: Some(&idx),
                label_smoothing: r.label_smoothing,
                epoch,
            };
            let terms = distiller.losses(&step)?;
            if terms.is_empty() {
                anyhow::bail!("method {} returned no loss terms", spec.method);
            }
            let mut total = terms[0].1.shallow_clone();
            for (_, t) in &terms[1..] {
                total = total + t;
            }
            let step_peers = distiller.step_peers();
            for g in &peer_groups {
                opt.set_active(*g, step_peers);
            }
            match scaler.as_mut() {
                Some(s) => {
                    s.backward_step(&mut opt, &total)?;
                }
                None => opt.backward_step(&total),
            }
            if let Some(m) = &masks {
                opt.apply_masks(m);
            }
            if names.is_empty() {
                names = terms.iter().map(|(n, _)| *n).collect();
                sums = terms.iter().map(|_| Tensor::zeros([], (Kind::Float, device))).collect();
            }
            for (s, (_, t)) in sums.iter_mut().zip(&terms) {
                *s += t.detach() * bs as f64;
            }
            total_sum += total.detach() * bs as f64;
            correct += s_out.logits.detach().argmax(1, false).eq_tensor(&y).sum(Kind::Int64);
            seen += bs;
        }
        // One host sync per epoch.
        let train_loss = total_sum.double_value(&[]) / seen as f64;
        if !train_loss.is_finite() {
            writeln!(log, "epoch {epoch}: training loss is {train_loss}; stopping")?;
            return Err(Diverged { epoch, loss: train_loss }.into());
        }
        let term_means: Vec<f64> = sums.iter().map(|s| s.double_value(&[]) / seen as f64).collect();
        let train_top1 = correct.int64_value(&[]) as f64 / seen as f64;
        let epoch_train_s = t0.elapsed().as_secs_f64();
        train_time += epoch_train_s;
        images += seen;

        let logits = test_logits(net.model.as_ref(), data)?;
        last = evaluate(&logits, &data.test_y);
        if epoch == r.epochs {
            stats_out = metrics::output_stats(&logits, &data.test_y.to_device(Device::Cpu));
            reliability = metrics::reliability(&logits, &data.test_y.to_device(Device::Cpu), 15);
        }
        if let Some(tl) = &teacher_test {
            agreement = Some(metrics::agreement(&logits, tl));
            pred_kl = Some(metrics::predictive_kl(&logits, tl));
        }
        if last.top1 > best_top1 {
            best_top1 = last.top1;
            best_epoch = epoch;
        }
        // Online peers are evaluated like the network itself; method statistics are logged too.
        let peer_top1: Vec<f64> =
            peers.iter().map(|p| Ok(evaluate(&test_logits(p.model.as_ref(), data)?, &data.test_y).top1)).collect::<anyhow::Result<_>>()?;
        for (k, t) in peer_top1.iter().enumerate() {
            if peers_best.len() <= k {
                peers_best.push(*t);
            }
            peers_best[k] = peers_best[k].max(*t);
        }
        peers_last = peer_top1.clone();
        let stats = distiller.epoch_stats();
        if header.is_empty() {
            header = ["epoch", "lr", "train_loss"].iter().map(|s| s.to_string()).collect();
            header.extend(names.iter().map(|n| format!("train_{n}")));
            header.extend(
                ["train_top1", "test_loss", "test_top1", "test_top5", "test_ece", "agreement", "pred_kl", "epoch_time_s", "images_per_s"]
                    .iter()
                    .map(|s| s.to_string()),
            );
            header.extend((0..peers.len()).map(|k| format!("peer{k}_top1")));
            header.extend(stats.iter().map(|(n, _)| n.to_string()));
            if scaler.is_some() {
                header.push("skipped_steps".into());
            }
        }
        let mut row = vec![epoch.to_string(), format!("{lr}"), format!("{train_loss}")];
        row.extend(term_means.iter().map(|v| format!("{v}")));
        let opt_s = |v: Option<f64>| v.map(|x| format!("{x}")).unwrap_or_default();
        let ips = seen as f64 / epoch_train_s.max(1e-9);
        row.extend([
            format!("{train_top1}"),
            format!("{}", last.loss),
            format!("{}", last.top1),
            format!("{}", last.top5),
            format!("{}", last.ece),
            opt_s(agreement),
            opt_s(pred_kl),
            format!("{epoch_train_s:.3}"),
            format!("{ips:.1}"),
        ]);
        row.extend(peer_top1.iter().map(|v| format!("{v}")));
        row.extend(stats.iter().map(|(_, v)| format!("{v}")));
        if let Some(s) = &scaler {
            row.push((s.skipped - skipped_before).to_string());
        }
        rows.push(row);
        write_csv(run, &header, &rows)?;
        if epoch < r.epochs {
            let st = ResumeState {
                id: spec.id.clone(),
                epoch,
                file: format!("resume-e{epoch}.safetensors"),
                header: header.clone(),
                rows: rows.clone(),
                best_top1,
                best_epoch,
                last: [fin(last.loss), fin(last.top1), fin(last.top5), fin(last.ece)],
                agreement,
                pred_kl,
                train_time,
                images,
                elapsed: elapsed_before + start.elapsed().as_secs_f64(),
                peers_best: peers_best.clone(),
                scaler: scaler.clone(),
            };
            save_resume(run, &stores(&net, &aux, &peers, moving), &opt, &st)?;
        }
        writeln!(
            log,
            "epoch {epoch}/{}: lr {lr} train_loss {train_loss:.4} test_top1 {:.4} test_loss {:.4} ({epoch_train_s:.1}s)",
            r.epochs, last.top1, last.loss
        )?;
        on_epoch(&Progress { epoch, epochs: r.epochs, test_top1: last.top1, train_loss, images_per_s: ips });
        fault_hook(&spec.id, epoch);
    }
    if spec.save_model {
        models::checkpoint::save_atomic(&net.vs, &run.model())?;
        for (k, p) in peers.iter().enumerate() {
            models::checkpoint::save_atomic(&p.vs, &run.path.join(format!("peer{k}.safetensors")))?;
        }
    }
    // Sparsity is measured from the saved weights, never taken from the request.
    let pruned = match &spec.prune {
        Some(stage) => {
            if !spec.save_model {
                models::checkpoint::save_atomic(&net.vs, &run.model())?;
            }
            let measured = prune::measure(&run.model(), stage_scope(stage))?;
            writeln!(
                log,
                "pruned {} round {}/{}: measured sparsity {:.6} ({} of {} weights zero)",
                stage.method, stage.round, stage.rounds, measured.sparsity, measured.zeros, measured.prunable
            )?;
            Some(crate::store::PruneSummary {
                method: stage.method.clone(),
                round: stage.round,
                rounds: stage.rounds,
                target: stage.target,
                parent: stage.parent.clone(),
                measured,
            })
        }
        None => None,
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    Ok(Summary {
        id: spec.id.clone(),
        epochs: r.epochs,
        best_top1,
        best_epoch,
        last_top1: last.top1,
        last_top5: last.top5,
        last_ece: last.ece,
        last_test_loss: last.loss,
        agreement,
        pred_kl,
        teacher_top1,
        output_stats: stats_out,
        reliability,
        peers_last_top1: peers_last,
        peers_best_top1: peers_best,
        param_count,
        wall_time_s: elapsed_before + start.elapsed().as_secs_f64(),
        images_per_s: images as f64 / train_time.max(1e-9),
        finished_unix: now,
        pruned,
        student_widths: widths,
    })
}

/// The weights a stage's criterion may remove: PrUE prunes convs only; prune-then-distill's
/// magnitude rounds also prune the linear layers.
pub fn stage_scope(stage: &crate::suite::spec::PruneStage) -> prune::Scope {
    if stage.method == "prue" { prune::Scope::Conv } else { prune::Scope::ConvLinear }
}

/// Loads a pruning stage's parent into `net`, computes this stage's masks (or reads them back when
/// the run resumes, so a restart never re-draws PrUE's augmentation) and applies them.
fn start_pruned(
    stage: &crate::suite::spec::PruneStage,
    spec: &RunSpec,
    run: &RunDir,
    data: &Dataset,
    device: Device,
    net: &mut Net,
    log: &mut std::fs::File,
) -> anyhow::Result<prune::Masks> {
    if stage.parent.model() != spec.model {
        anyhow::bail!("pruning stage of {} starts from a {} model", spec.model, stage.parent.model());
    }
    let parent = load_teacher(&stage.parent, run, data, device)?;
    net.vs.copy(&parent.net.vs).with_context(|| format!("copying the parent weights of pruning stage {}", spec.id))?;
    let path = run.masks();
    let masks = if resume_json(run).is_file() && path.is_file() {
        prune::load(&path, device)?
    } else {
        let masks = match stage.method.as_str() {
            "prue" => {
                let (m, thr) = prune::prue_model(&net.vs, net.model.as_ref(), data, stage.amount, stage.batch as i64, spec.train.augment)?;
                writeln!(log, "PrUE threshold {thr:?} at sparsity {}", stage.amount)?;
                m
            }
            "magnitude" => {
                // The previous rounds' masks come with the parent; a dense parent has none.
                let pm = parent_masks(&stage.parent, run, device)?;
                prune::magnitude_model(&net.vs, prune::Scope::ConvLinear, &pm, stage.amount)
            }
            other => anyhow::bail!("unknown pruning method {other}"),
        };
        prune::save(&masks, &path)?;
        masks
    };
    prune::apply(&net.vs, &masks);
    Ok(masks)
}

/// The masks a parent run was fine-tuned with (empty for an unpruned parent).
fn parent_masks(parent: &TeacherRef, run: &RunDir, device: Device) -> anyhow::Result<prune::Masks> {
    if let TeacherRef::Run { id, .. } = parent {
        let dir = RunDir { path: run.path.parent().map(|p| p.join(id)).context("run directory has no parent")? };
        if dir.masks().is_file() {
            return prune::load(&dir.masks(), device);
        }
    }
    Ok(prune::Masks::new())
}

fn write_csv(run: &RunDir, header: &[String], rows: &[Vec<String>]) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(header)?;
    for r in rows {
        w.write_record(r)?;
    }
    let bytes = w.into_inner().map_err(|e| anyhow::anyhow!("csv: {e}"))?;
    crate::store::write_atomic(&run.metrics(), &bytes)
}
