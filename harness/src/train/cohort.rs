//! The training loop over a cohort: several runs that share one data stream and their teachers'
//! forward passes, each with its own model, method, optimiser, record, resume state and run
//! directory ([`Learner`]). A run trained alone is a cohort of one.
//!
//! Phases: set-up (learners, teachers' test predictions once) → epochs (per batch: the teachers
//! forward once, then every learner steps) → evaluation and checkpoint per learner → summaries.
//! A cohort is an execution strategy, not a setting: every draw of a run comes from its own
//! seeded streams (initialisation, data order and augmentation, method randomness), each draw
//! site re-seeding the generator, so a member's results are bit-identical (CPU, fp32, same
//! threads) to the same run trained alone. A member that fails or diverges leaves the cohort;
//! the others go on.

use std::time::Instant;

use tch::Device;

use super::learner::{Batch, Caps, Learner, distiller_of, teacher_test_logits};
use super::{Progress, Teacher, evaluate, stream_seed};
use crate::data::{Dataset, site_seed};
use crate::models;
use crate::store::{RunDir, Summary};
use crate::suite::RunSpec;

/// A run to train: its resolved spec and directory.
pub struct Member {
    pub spec: RunSpec,
    pub run: RunDir,
}

/// What a run shares with the rest of its cohort: the data stream's settings. Runs with equal
/// keys may train together when [`teachers_agree`]; `None`: the run trains alone (its stream is
/// its own: mixup, BAKE's grouped sampler, SOKD's teacher in train mode, or a whole device).
pub fn cohort_key(spec: &RunSpec) -> Option<String> {
    let caps = Caps::of(distiller_of(spec).ok()?.as_ref(), spec);
    if !caps.shares_stream() || spec.exclusive {
        return None;
    }
    let r = &spec.train;
    let key = serde_json::json!({
        "dataset": [&spec.dataset.name, &spec.dataset.fingerprint],
        "seed": spec.seed,
        "batch_size": r.batch_size,
        "epochs": r.epochs,
        "augment": r.augment,
        // The teachers' shared pass runs in the members' precision.
        "precision": r.precision,
    });
    Some(key.to_string())
}

/// Whether two runs can share their teachers' passes: the same teachers, or one has none (a
/// baseline trains beside the students of any teacher).
pub fn teachers_agree(a: &RunSpec, b: &RunSpec) -> bool {
    a.teachers.is_empty() || b.teachers.is_empty() || a.teachers == b.teachers
}

/// The teachers a run uses from its cohort's.
fn own<'a>(spec: &RunSpec, teachers: &'a [Teacher]) -> &'a [Teacher] {
    if spec.teachers.is_empty() { &[] } else { teachers }
}

/// The stream settings every member must share.
#[derive(PartialEq, Debug)]
struct Stream {
    seed: u64,
    batch_size: i64,
    epochs: u32,
    augment: bool,
    mixup: Option<crate::data::Mixup>,
    group: usize,
    teacher_train: bool,
    precision: super::precision::Precision,
}

impl Stream {
    fn of(l: &Learner) -> Stream {
        let r = &l.spec.train;
        Stream {
            seed: l.spec.seed,
            batch_size: r.batch_size as i64,
            epochs: r.epochs,
            augment: r.augment,
            mixup: l.caps.mixup.clone(),
            group: l.caps.group,
            teacher_train: l.caps.teacher_train,
            precision: r.precision,
        }
    }
}

/// Runs `f`, turning a panic into an error, so one member's panic cannot end the others.
fn guarded<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "unknown panic".into());
        Err(anyhow::anyhow!("panic: {msg}"))
    })
}

/// One error for every member it ends (a message copy that stays an input error if it was one).
pub fn shared_error(e: &anyhow::Error) -> anyhow::Error {
    let msg = format!("{e:#}");
    if crate::error::is_input_error(e) { crate::error::InputError::new(msg).into() } else { anyhow::anyhow!(msg) }
}

/// The cohort's live learners by member index; a failed one leaves its result behind.
struct Slots {
    live: Vec<Option<Learner>>,
    done: Vec<Option<anyhow::Result<Summary>>>,
}

impl Slots {
    fn fail(&mut self, i: usize, e: anyhow::Error) {
        self.live[i] = None;
        self.done[i] = Some(Err(e));
    }

    fn active(&self, epoch: u32) -> Vec<usize> {
        (0..self.live.len()).filter(|&i| self.live[i].as_ref().is_some_and(|l| l.first_epoch <= epoch)).collect()
    }
}

/// Trains the members to completion (each continuing from its last completed epoch), writing
/// their `metrics.csv` and resume states, and returns each member's summary or error, in order.
/// The caller writes `summary.json`. `teachers` are those of every member that has teachers
/// (members without use none).
pub fn train_cohort(
    members: &[Member],
    data: &Dataset,
    device: Device,
    teachers: &[Teacher],
    on_epoch: &mut dyn FnMut(&RunSpec, &Progress),
) -> Vec<anyhow::Result<Summary>> {
    let mut s = Slots { live: members.iter().map(|_| None).collect(), done: members.iter().map(|_| None).collect() };
    prepare_device(device, teachers);
    // The teachers as loaded (before a resumed SOKD member restores its moved BN statistics).
    let (teacher_test, teacher_top1) = match teacher_predictions(teachers, data) {
        Ok(v) => v,
        Err(e) => return members.iter().map(|_| Err(shared_error(&e))).collect(),
    };
    for (i, m) in members.iter().enumerate() {
        match guarded(|| Learner::new(&m.spec, &m.run, data, device, own(&m.spec, teachers))) {
            Ok(l) => s.live[i] = Some(l),
            Err(e) => s.fail(i, e),
        }
    }
    if let Err(e) = check_stream(&s) {
        return members.iter().map(|_| Err(shared_error(&e))).collect();
    }
    let stream = s.live.iter().flatten().next().map(Stream::of);
    if let Some(stream) = stream {
        let first = s.live.iter().flatten().map(|l| l.first_epoch).min().unwrap_or(1);
        for epoch in first..=stream.epochs {
            if let Err(e) = epoch_steps(&mut s, &stream, epoch, data, device, teachers) {
                for i in s.active(epoch) {
                    s.fail(i, shared_error(&e));
                }
            }
            for i in s.active(epoch) {
                let Some(l) = s.live[i].as_mut() else { continue };
                let test = if l.spec.teachers.is_empty() { None } else { teacher_test.as_ref() };
                let r = guarded(|| {
                    let p = l.end_epoch(epoch, data, own(&l.spec, teachers), test)?;
                    on_epoch(&l.spec, &p);
                    fault_hook(&l.spec.id, epoch);
                    Ok(())
                });
                if let Err(e) = r {
                    s.fail(i, e);
                }
            }
        }
    }
    for i in 0..members.len() {
        if let Some(l) = s.live[i].take() {
            let top1 = if l.spec.teachers.is_empty() { None } else { teacher_top1 };
            s.done[i] = Some(guarded(|| l.finish(top1)));
        }
    }
    s.done.into_iter().map(|r| r.unwrap_or_else(|| Err(anyhow::anyhow!("the run was not trained")))).collect()
}

/// Members must draw the same stream; a run trained alone always does.
fn check_stream(s: &Slots) -> anyhow::Result<()> {
    let mut it = s.live.iter().flatten();
    let Some(first) = it.next() else { return Ok(()) };
    let want = Stream::of(first);
    let taught = s.live.iter().flatten().find(|l| !l.spec.teachers.is_empty()).unwrap_or(first);
    for l in it {
        if Stream::of(l) != want || !teachers_agree(&l.spec, &taught.spec) {
            crate::input_bail!(
                "runs {} and {} cannot train in one cohort: they differ in seed, batch size, epochs, augmentation, sampler, mixup or teachers",
                taught.spec.id,
                l.spec.id
            );
        }
    }
    Ok(())
}

/// cuDNN autotuning for fixed shapes (GPU runs are not bit-reproducible anyway) and
/// channels-last teachers (faster oneDNN/cuDNN kernels; files stay NCHW).
fn prepare_device(device: Device, teachers: &[Teacher]) {
    if let Device::Cuda(_) = device {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    if crate::env::channels_last() {
        for t in teachers {
            models::vs_channels_last(&t.net.vs);
        }
    }
}

/// The teachers' test predictions (for agreement / predictive KL) and their top-1 in percent, once
/// per cohort.
fn teacher_predictions(teachers: &[Teacher], data: &Dataset) -> anyhow::Result<(Option<tch::Tensor>, Option<f64>)> {
    let test = teacher_test_logits(teachers, data)?;
    let top1 = match (teachers, &test) {
        ([t], _) if t.top1.is_some() => t.top1,
        (_, Some(tl)) => Some(super::record::pct(evaluate(tl, &data.test_y).top1)),
        _ => None,
    };
    Ok((test, top1))
}

/// One epoch's training steps: the shared batches, the teachers' pass once per batch, then each
/// active learner's step. `Err`: the stream itself failed (every active member fails with it).
fn epoch_steps(s: &mut Slots, stream: &Stream, epoch: u32, data: &Dataset, device: Device, teachers: &[Teacher]) -> anyhow::Result<()> {
    let active = s.active(epoch);
    if active.is_empty() {
        return Ok(());
    }
    for &i in &active {
        if let Some(l) = s.live[i].as_mut() {
            l.begin_epoch(epoch, device);
        }
    }
    let seed = stream_seed(stream.seed, "data", epoch);
    let batches = match stream.group {
        0 => data.train_batches(stream.batch_size, stream.augment, seed),
        m => data.train_batches_grouped(stream.batch_size, m, stream.augment, seed),
    };
    let channels_last = crate::env::channels_last();
    let amp = super::precision::Amp::new(device, stream.precision)?;
    for (index, batch) in batches.enumerate() {
        let t0 = Instant::now();
        let (x, y, idx) = batch?;
        let x = if channels_last { models::to_channels_last(&x) } else { x };
        let (x, y, soft) = match &stream.mixup {
            Some(m) => {
                tch::manual_seed(site_seed(stream_seed(stream.seed, "mixup", epoch), index as u64));
                let (xm, ym) = m.apply(&x, &y, data.info.classes);
                (xm, ym.argmax(1, false), Some(ym))
            }
            None => (x, y, None),
        };
        let t_out: Vec<models::Output> =
            teachers.iter().map(|t| tch::no_grad(|| amp.forward(t.net.model.as_ref(), &x, stream.teacher_train))).collect::<anyhow::Result<_>>()?;
        let live = s.active(epoch);
        let shared = t0.elapsed().as_secs_f64() / live.len().max(1) as f64;
        for i in live {
            let Some(l) = s.live[i].as_mut() else { continue };
            l.add_shared_time(shared);
            let t = if l.spec.teachers.is_empty() { &[][..] } else { &t_out[..] };
            let b = Batch { x: &x, y: &y, soft: soft.as_ref(), idx: &idx, index: index as u64, teachers: t };
            if let Err(e) = guarded(|| l.step(&b, epoch, own(&l.spec, teachers))) {
                s.fail(i, e);
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
