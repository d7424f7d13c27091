//! One run inside a cohort: its trainees (its network and, for an online method, each peer: see
//! `trainee.rs`), the method's modules, the record, resume state and run directory. The cohort
//! hands it shared batches and teacher outputs; everything random it draws itself comes from its
//! own seeded streams.

use std::io::Write;
use std::time::Instant;

use anyhow::Context;
use tch::{Device, Kind, Tensor, nn};

use super::record::{EpochResult, EpochSums, History, images_per_s, pct};
use super::resume::{self, Loaded, ResumeState, Stores};
use super::precision::Amp;
use super::trainee::Trainee;
use super::{Net, Progress, Teacher, build, build_widths, dense_argmax, evaluate, prune, sgd, stream_seed, test_logits, widths_from_pruned};
use crate::data::{Dataset, Mixup, site_seed};
use crate::distill::{self, Distiller, Step, metrics};
use crate::models::{self, ModelCfg, Output};
use crate::store::{RunDir, Summary};
use crate::suite::RunSpec;

/// What a method asks of the loop, read once at set-up (the method's declarations, never
/// re-checked inline). The first three shape the data stream and the teachers' passes, so they
/// decide whether a run can share them with other runs ([`Caps::shares_stream`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Caps {
    /// Mixed inputs (the method's own mixup, else the recipe's).
    pub mixup: Option<Mixup>,
    /// Same-class images per anchor (BAKE's sampler); 0 = plain shuffling.
    pub group: usize,
    /// Teachers in train mode (SOKD): their BN statistics move.
    pub teacher_train: bool,
    /// Dense classifier votes with this upsampling (Zipf LS).
    pub dense: Option<i64>,
    /// Learning-rate scale of online peers.
    pub peer_scale: f64,
}

impl Caps {
    pub fn of(d: &dyn Distiller, spec: &RunSpec) -> Caps {
        Caps {
            mixup: d.mixup().or_else(|| spec.train.mixup()),
            group: d.same_class_per_anchor(),
            teacher_train: d.teacher_train_mode(),
            dense: d.dense_votes(),
            peer_scale: d.peer_lr().unwrap_or(1.0),
        }
    }

    /// Whether the run sees the plain shared stream (shuffled batches, teachers in eval mode).
    pub fn shares_stream(&self) -> bool {
        self.mixup.is_none() && self.group == 0 && !self.teacher_train
    }
}

/// The method named by a spec, with its parameters.
pub fn distiller_of(spec: &RunSpec) -> anyhow::Result<Box<dyn Distiller>> {
    let info = distill::find(&spec.method).ok_or_else(|| anyhow::anyhow!("unknown method {}", spec.method))?;
    let need = match info.teachers {
        distill::Teachers::None | distill::Teachers::Peers => 0..=0,
        distill::Teachers::One => 1..=1,
        distill::Teachers::Many => 2..=usize::MAX,
    };
    if !need.contains(&spec.teachers.len()) {
        anyhow::bail!("method {} got {} teacher(s)", spec.method, spec.teachers.len());
    }
    info.instantiate(&spec.params)
}

/// One batch as the cohort hands it to every learner.
pub struct Batch<'a> {
    pub x: &'a Tensor,
    pub y: &'a Tensor,
    /// Mixed soft targets (mixup).
    pub soft: Option<&'a Tensor>,
    pub idx: &'a Tensor,
    /// Position in the epoch (the learner's method draws at site `(stream, index)`).
    pub index: u64,
    pub teachers: &'a [Output],
}

impl<'a> Batch<'a> {
    /// The method's view of this batch for one network of the run.
    fn step(&self, student: &'a Output, partners: &'a [Output], votes: Option<&'a Tensor>, label_smoothing: f64, epoch: u32) -> Step<'a> {
        Step {
            student,
            teachers: self.teachers,
            partners,
            labels: self.y,
            soft_targets: self.soft,
            dense_argmax: votes,
            indices: Some(self.idx),
            label_smoothing,
            epoch,
        }
    }
}

pub struct Learner {
    pub spec: RunSpec,
    pub run: RunDir,
    pub caps: Caps,
    log: std::fs::File,
    /// The run's network with the method's loss, optimiser (network and the method's modules)
    /// and loss scaler.
    own: Trainee,
    /// Online peers (DML, SwitOKD, BD-KD online), each trained like any network of a cohort with
    /// the method's loss for it; filed with the run (`peer<k>_top1`, `peer<k>.safetensors`).
    peers: Vec<Trainee>,
    aux: nn::VarStore,
    masks: Option<prune::Masks>,
    widths: Option<Vec<i64>>,
    param_count: i64,
    /// First epoch still to train (after a resume: the one after the saved state).
    pub first_epoch: u32,
    history: History,
    sums: Option<EpochSums>,
    final_stats: (metrics::OutputStats, metrics::Reliability),
    peers_last: Vec<f64>,
    started: Instant,
    /// Per-step trace for the parity test (`KD_HARNESS_TRACE`), else `None`.
    trace: Option<super::trace::Trace>,
    /// Autocast around the forward passes (`train.precision`); fp32 outputs for the losses.
    amp: Amp,
    /// Steps the scaler had skipped when the epoch began.
    skipped_before: u64,
}

impl Learner {
    /// Set-up: the network from the run's init stream, a pruning stage's parent and masks, the
    /// online peers, the method's modules (from one probe forward), the optimiser, and the resume
    /// state if there is one.
    pub fn new(spec: &RunSpec, run: &RunDir, data: &Dataset, device: Device, teachers: &[Teacher]) -> anyhow::Result<Learner> {
        let started = Instant::now();
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(run.log()).with_context(|| format!("opening {}", run.log().display()))?;
        let mut distiller = distiller_of(spec)?;
        let caps = Caps::of(distiller.as_ref(), spec);
        // Prune-then-distill's student formed from the pruned teacher: widths from its non-zeros.
        let widths = match spec.student_from_teacher {
            true => {
                let t = teachers.first().context("a student formed from its teacher needs the teacher")?;
                let w = widths_from_pruned(&t.net.vs, data.info.shape.0)?;
                writeln!(log, "student formed from the pruned teacher: conv widths {w:?}")?;
                Some(w)
            }
            false => None,
        };
        let (net, masks, peers) = init_nets(spec, run, data, device, widths.as_deref(), &mut log)?;
        let aux = nn::VarStore::new(device);
        init_modules(distiller.as_mut(), spec, data, &net, &aux, teachers)?;
        let channels_last = crate::env::channels_last();
        if channels_last {
            for vs in std::iter::once(&net.vs).chain(peers.iter().map(|p| &p.vs)).chain([&aux]) {
                models::vs_channels_last(vs);
            }
        }
        let param_count = models::param_count(&net.vs);
        let amp = Amp::new(device, spec.train.precision)?;
        let peers = peers
            .into_iter()
            .enumerate()
            .map(|(k, p)| {
                let d = distiller.peer(k).with_context(|| format!("method {} declares no loss for its peer {k}", spec.method))?;
                Ok(Trainee::new(p, d, &format!("peer{k}."), &[], caps.peer_scale, &amp, &spec.train))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let own = Trainee::new(net, distiller, "", &[("aux.", &aux)], 1.0, &amp, &spec.train);
        let mut l = Learner {
            spec: spec.clone(),
            run: run.clone(),
            caps,
            log,
            own,
            peers,
            aux,
            masks,
            widths,
            param_count,
            first_epoch: 1,
            history: History::new(),
            sums: None,
            final_stats: Default::default(),
            peers_last: vec![],
            started,
            trace: None,
            amp,
            skipped_before: 0,
        };
        l.resume(teachers)?;
        let moving = if l.caps.teacher_train { teachers } else { &[] };
        l.trace = super::trace::Trace::start(&spec.id, l.first_epoch, &stores_of(&l.own, &l.aux, &l.peers, moving))?;
        writeln!(l.log, "run {} — {} params, device {device:?}, epochs {}..={}", spec.id, l.param_count, l.first_epoch, spec.train.epochs)?;
        Ok(l)
    }

    /// Continues from the saved state, if any. An unusable state (checked before anything is
    /// loaded) costs the progress, never correctness: the run starts over.
    fn resume(&mut self, teachers: &[Teacher]) -> anyhow::Result<()> {
        let moving = if self.caps.teacher_train { teachers } else { &[] };
        // Each trainee lends its store to the state and its optimiser to the momentum buffers.
        let (mut opts, mut peer_vs) = (vec![&mut self.own.opt], vec![]);
        for p in self.peers.iter_mut() {
            peer_vs.push(&p.net.vs);
            opts.push(&mut p.opt);
        }
        let stores = named_stores(&self.own.net.vs, &self.aux, peer_vs, moving);
        match resume::load(&self.run, &self.spec, &stores, &mut opts)? {
            Loaded::Resumed(st) => {
                writeln!(self.log, "resuming run {} after epoch {}", self.spec.id, st.epoch)?;
                self.first_epoch = st.epoch + 1;
                self.history = st.history;
                self.own.scaler = st.scaler.or(self.own.scaler.take());
                for (p, sc) in self.peers.iter_mut().zip(st.peer_scalers) {
                    p.scaler = p.scaler.take().map(|_| sc);
                }
            }
            Loaded::None => {}
            Loaded::Unusable(e) => {
                writeln!(self.log, "ignoring unusable resume state ({e:#}); starting from epoch 1")?;
                resume::clear_resume(&self.run);
            }
        }
        Ok(())
    }

    /// Start of an epoch: the learning rate of the schedule, fresh sums.
    pub fn begin_epoch(&mut self, epoch: u32, device: Device) {
        let lr = self.spec.train.lr_at(epoch);
        for t in std::iter::once(&mut self.own).chain(self.peers.iter_mut()) {
            t.opt.lr = lr;
        }
        self.skipped_before = self.own.scaler.as_ref().map_or(0, |s| s.skipped);
        self.sums = Some(EpochSums::new(device));
    }

    /// One training step on a shared batch: every network of the run forwards, then each learns
    /// from its own output and its partners' detached outputs (the run's network first, then each
    /// online peer). `teachers`: the learner's own (for the trace of a train-mode teacher's moving
    /// statistics).
    pub fn step(&mut self, b: &Batch<'_>, epoch: u32, teachers: &[Teacher]) -> anyhow::Result<()> {
        let t0 = Instant::now();
        // The method's own randomness (CRD's negatives, ...) from the run's method stream.
        tch::manual_seed(site_seed(stream_seed(self.spec.seed, "method", epoch), b.index));
        let outs: Vec<Output> = std::iter::once(&self.own).chain(&self.peers).map(|t| t.forward(&self.amp, b.x)).collect::<anyhow::Result<_>>()?;
        let votes = match self.caps.dense {
            Some(up) => Some(dense_argmax(self.own.net.model.as_ref(), &outs[0], up)?),
            None => None,
        };
        let sums = self.sums.as_mut().context("step outside an epoch")?;
        let eps = self.spec.train.label_smoothing;
        let partners = distill::partners(&outs, 0);
        let (terms, total) = self
            .own
            .learn(&b.step(&outs[0], &partners, votes.as_ref(), eps, epoch), self.masks.as_ref())?
            .with_context(|| format!("method {} returned no loss terms", self.spec.method))?;
        sums.add(&terms, &total, &outs[0].logits, b.y);
        for (k, p) in self.peers.iter_mut().enumerate() {
            let partners = distill::partners(&outs, k + 1);
            if let Some((terms, total)) = p.learn(&b.step(&outs[k + 1], &partners, None, eps, epoch), None)? {
                sums.add_partner(&terms, &total, b.y);
            }
        }
        if let Some(t) = &mut self.trace {
            let moving = if self.caps.teacher_train { teachers } else { &[] };
            let opts: Vec<&sgd::Sgd> = std::iter::once(&self.own).chain(&self.peers).map(|t| &t.opt).collect();
            t.step(epoch, self.own.opt.lr, b.x, b.y, b.idx, &terms, &stores_of(&self.own, &self.aux, &self.peers, moving), &opts)?;
        }
        sums.seconds += t0.elapsed().as_secs_f64();
        Ok(())
    }

    /// Adds time spent for this learner outside its steps (its share of the cohort's data and
    /// teacher passes).
    pub fn add_shared_time(&mut self, seconds: f64) {
        if let Some(s) = self.sums.as_mut() {
            s.seconds += seconds;
        }
    }

    /// End of an epoch: divergence check, evaluation, the record, `metrics.csv` and the resume
    /// state. `teacher_test`: the teachers' (ensembled) test logits, computed once per cohort.
    pub fn end_epoch(&mut self, epoch: u32, data: &Dataset, teachers: &[Teacher], teacher_test: Option<&Tensor>) -> anyhow::Result<Progress> {
        let sums = self.sums.take().context("end of an epoch that did not begin")?;
        let (train_loss, terms, train_top1) = sums.means();
        if !train_loss.is_finite() {
            writeln!(self.log, "epoch {epoch}: training loss is {train_loss}; stopping")?;
            return Err(super::Diverged { epoch, loss: train_loss }.into());
        }
        let logits = test_logits(self.own.net.model.as_ref(), data)?;
        let test = evaluate(&logits, &data.test_y);
        let epochs = self.spec.train.epochs;
        if epoch == epochs {
            let y = data.test_y.to_device(Device::Cpu);
            self.final_stats = (metrics::output_stats(&logits, &y), metrics::reliability(&logits, &y, 15));
        }
        let (agreement, pred_kl) = match teacher_test {
            Some(tl) => (Some(metrics::agreement(&logits, tl)), Some(metrics::predictive_kl(&logits, tl))),
            None => (None, None),
        };
        // Online peers are evaluated like the network itself; method statistics are logged too.
        self.peers_last =
            self.peers.iter().map(|p| Ok(evaluate(&test_logits(p.net.model.as_ref(), data)?, &data.test_y).top1)).collect::<anyhow::Result<_>>()?;
        let stats = self.own.distiller.epoch_stats();
        let lr = self.own.opt.lr;
        self.history.record(&EpochResult {
            epoch,
            lr,
            train_loss,
            terms: &terms,
            train_top1,
            test,
            agreement,
            pred_kl,
            seconds: sums.seconds,
            seen: sums.seen,
            peer_top1: &self.peers_last,
            stats: &stats,
            skipped_steps: self.own.scaler.as_ref().map(|s| s.skipped - self.skipped_before),
        });
        self.history.write_csv(&self.run)?;
        if epoch < epochs {
            let mut history = self.history.clone();
            history.elapsed += self.started.elapsed().as_secs_f64();
            let st = ResumeState {
                id: self.spec.id.clone(),
                epoch,
                file: format!("resume-e{epoch}.safetensors"),
                history,
                scaler: self.own.scaler.clone(),
                peer_scalers: self.peers.iter().filter_map(|p| p.scaler.clone()).collect(),
            };
            let moving = if self.caps.teacher_train { teachers } else { &[] };
            let opts: Vec<&sgd::Sgd> = std::iter::once(&self.own).chain(&self.peers).map(|t| &t.opt).collect();
            resume::save(&self.run, &stores_of(&self.own, &self.aux, &self.peers, moving), &opts, &st)?;
        }
        writeln!(
            self.log,
            "epoch {epoch}/{epochs}: lr {lr} train_loss {train_loss:.4} test_top1 {:.4} test_loss {:.4} ({:.1}s)",
            test.top1, test.loss, sums.seconds
        )?;
        Ok(Progress { epoch, epochs, test_top1: pct(test.top1), train_loss, images_per_s: images_per_s(sums.seen, sums.seconds) })
    }

    /// After the last epoch: the model files, a pruning stage's measured sparsity, the summary
    /// (accuracies in percent; `teacher_top1` already is).
    pub fn finish(self, teacher_top1: Option<f64>) -> anyhow::Result<Summary> {
        let run = &self.run;
        let spec = &self.spec;
        if spec.save_model || spec.prune.is_some() {
            models::checkpoint::save_atomic(&self.own.net.vs, &run.model())?;
        }
        if spec.save_model {
            for (k, p) in self.peers.iter().enumerate() {
                models::checkpoint::save_atomic(&p.net.vs, &run.path.join(format!("peer{k}.safetensors")))?;
            }
        }
        let pruned = match &spec.prune {
            Some(stage) => Some(prune_summary(stage, run, self.log)?),
            None => None,
        };
        let h = &self.history;
        let last = h.last_eval();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        Ok(Summary {
            id: spec.id.clone(),
            epochs: spec.train.epochs,
            best_top1: pct(h.best_top1),
            best_epoch: h.best_epoch,
            last_top1: pct(last.top1),
            last_top5: pct(last.top5),
            last_ece: pct(last.ece),
            last_test_loss: last.loss,
            agreement: h.agreement.map(pct),
            pred_kl: h.pred_kl,
            teacher_top1,
            output_stats: self.final_stats.0,
            reliability: self.final_stats.1,
            peers_last_top1: self.peers_last.iter().copied().map(pct).collect(),
            peers_best_top1: h.peers_best.iter().copied().map(pct).collect(),
            param_count: self.param_count,
            wall_time_s: h.elapsed + self.started.elapsed().as_secs_f64(),
            images_per_s: images_per_s(h.images, h.train_time),
            finished_unix: now,
            pruned,
            student_widths: self.widths,
        })
    }
}

/// The stores a run's state holds, with their name prefixes. Teachers are included only when they
/// run in train mode (SOKD): their BN statistics then move.
fn stores_of<'a>(own: &'a Trainee, aux: &'a nn::VarStore, peers: &'a [Trainee], moving_teachers: &'a [Teacher]) -> Stores<'a> {
    named_stores(&own.net.vs, aux, peers.iter().map(|p| &p.net.vs).collect(), moving_teachers)
}

/// [`stores_of`] from the stores themselves.
fn named_stores<'a>(net: &'a nn::VarStore, aux: &'a nn::VarStore, peers: Vec<&'a nn::VarStore>, moving_teachers: &'a [Teacher]) -> Stores<'a> {
    let mut v = vec![("model.".to_string(), net), ("aux.".to_string(), aux)];
    v.extend(peers.into_iter().enumerate().map(|(k, p)| (format!("peer{k}."), p)));
    v.extend(moving_teachers.iter().enumerate().map(|(k, t)| (format!("teacher{k}."), &t.net.vs)));
    v
}

/// The network (from the run's init stream), a pruning stage's start, and the online peers
/// (initialised right after the network, from the same stream).
fn init_nets(
    spec: &RunSpec,
    run: &RunDir,
    data: &Dataset,
    device: Device,
    widths: Option<&[i64]>,
    log: &mut std::fs::File,
) -> anyhow::Result<(Net, Option<prune::Masks>, Vec<Net>)> {
    tch::manual_seed(stream_seed(spec.seed, "init", 0) as i64);
    let mut net = match widths {
        Some(w) => build_widths(&spec.model, data, device, w)?,
        None => build(&spec.model, data, device)?,
    };
    // A pruning stage starts from its parent's weights, pruned; the masks stay fixed from here on.
    let masks = match &spec.prune {
        Some(stage) => Some(super::stage::start_pruned(stage, spec, run, data, device, &mut net, log)?),
        None => None,
    };
    let peers = spec.peers.iter().map(|m| build(m, data, device)).collect::<anyhow::Result<_>>()?;
    Ok((net, masks, peers))
}

/// The method's own trainable modules (e.g. FitNet's regressor) live in a second store, built
/// from one probe forward, so the model's checkpoint keeps exactly the PyTorch state-dict names.
fn init_modules(d: &mut dyn Distiller, spec: &RunSpec, data: &Dataset, net: &Net, aux: &nn::VarStore, teachers: &[Teacher]) -> anyhow::Result<()> {
    let probe = data.probe(spec.train.batch_size.min(2) as i64)?;
    let (s, t) = tch::no_grad(|| (net.model.forward(&probe, false), teachers.iter().map(|t| t.net.model.forward(&probe, false)).collect::<Vec<_>>()));
    d.set_train_labels(&data.train_y);
    let tnames: Vec<String> = spec.teachers.iter().map(|t| t.model().to_string()).collect();
    d.set_models(&spec.model, &tnames, ModelCfg { in_channels: data.info.shape.0, num_classes: data.info.classes });
    d.init_modules(&aux.root(), &s, &t)
}

/// Sparsity of a pruning stage, measured from the saved weights, never taken from the request.
fn prune_summary(stage: &crate::suite::spec::PruneStage, run: &RunDir, mut log: std::fs::File) -> anyhow::Result<crate::store::PruneSummary> {
    let measured = prune::measure(&run.model(), super::stage_scope(stage))?;
    writeln!(
        log,
        "pruned {} round {}/{}: measured sparsity {:.6} ({} of {} weights zero)",
        stage.method, stage.round, stage.rounds, measured.sparsity, measured.zeros, measured.prunable
    )?;
    Ok(crate::store::PruneSummary {
        method: stage.method.clone(),
        round: stage.round,
        rounds: stage.rounds,
        target: stage.target,
        parent: stage.parent.clone(),
        measured,
    })
}

/// The teachers' test predictions, fixed for the whole run: one teacher's logits, or several
/// teachers' ensemble (the log of the averaged probabilities).
pub fn teacher_test_logits(teachers: &[Teacher], data: &Dataset) -> anyhow::Result<Option<Tensor>> {
    Ok(match teachers.len() {
        0 => None,
        1 => Some(test_logits(teachers[0].net.model.as_ref(), data)?),
        k => {
            let lps: Vec<Tensor> =
                teachers.iter().map(|t| Ok(test_logits(t.net.model.as_ref(), data)?.log_softmax(1, Kind::Float))).collect::<anyhow::Result<_>>()?;
            Some(Tensor::stack(&lps, 0).logsumexp([0i64].as_slice(), false) - (k as f64).ln())
        }
    })
}
