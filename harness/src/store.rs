//! Results on disk: `results/<suite>/runs/<run-id>/` with `config.json`, `env.json`,
//! `metrics.csv`, `summary.json` (its presence means finished), `model.safetensors`, `log.txt`.
//! Every file is written atomically (temp file in the same directory, fsync, rename), and a
//! lock file keeps two processes off one run. Runs are verified when read ([`verify`]).
//!
//! Units (schema 2): accuracies (top-1, top-5, agreement, teacher and peer top-1) and ECE are
//! in percent in `summary.json` and `metrics.csv`; losses in nats; probabilities (reliability
//! bins, output statistics) and sparsity stay fractions. Files written before (schema 1) held
//! fractions and are converted when read.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::suite::RunSpec;

pub mod verify;

/// Version of the results files this harness writes: `schema` in `summary.json`,
/// `results_schema` in `env.json` (which says how to read `metrics.csv`).
pub const SCHEMA: u32 = 2;

/// Final metrics of a finished run (`summary.json`), accuracies in percent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub id: String,
    pub epochs: u32,
    /// Best test top-1 over epochs (the DKD/mdistiller convention) and its 1-based epoch.
    pub best_top1: f64,
    pub best_epoch: u32,
    /// Last-epoch test top-1 (the CRD/RepDistiller convention).
    pub last_top1: f64,
    pub last_top5: f64,
    /// ECE with 15 bins, in percent (a fraction in schema 1).
    pub last_ece: f64,
    pub last_test_loss: f64,
    /// Top-1 agreement with the teacher on the test set (students with a teacher).
    pub agreement: Option<f64>,
    /// Mean KL(teacher‖student) at T = 1 on the test set, in nats.
    pub pred_kl: Option<f64>,
    /// The teacher's own test top-1 (evaluated once for checkpoint teachers, read for run teachers).
    pub teacher_top1: Option<f64>,
    /// Entropy / non-target mass / inter-class similarity of the final test predictions.
    #[serde(default)]
    pub output_stats: OutputStats,
    /// Reliability-diagram bins (15) of the final test predictions.
    #[serde(default)]
    pub reliability: Reliability,
    /// Last- and best-epoch test top-1 of each online peer (DML cohort, SwitOKD teacher).
    #[serde(default)]
    pub peers_last_top1: Vec<f64>,
    #[serde(default)]
    pub peers_best_top1: Vec<f64>,
    pub param_count: i64,
    pub wall_time_s: f64,
    /// Training images per second (training steps only, evaluation excluded).
    pub images_per_s: f64,
    pub finished_unix: u64,
    /// Pruning stages only: what was requested, the parent, and the sparsity measured by counting
    /// zeros in the saved weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned: Option<PruneSummary>,
    /// Conv widths of a student formed from its pruned teacher (prune-then-distill).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub student_widths: Option<Vec<i64>>,
}

/// The pruning record of a pruned model's summary.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct PruneSummary {
    pub method: String,
    pub round: u32,
    pub rounds: u32,
    /// The sparsity the suite asked for (the whole schedule's target).
    pub target: f64,
    /// The model this one was pruned from (provenance).
    pub parent: crate::suite::TeacherRef,
    pub measured: Measured,
}

/// One run's directory.
#[derive(Clone, Debug)]
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    /// `<results>/<suite>/runs/<id>`.
    pub fn new(results: &Path, suite: &str, id: &str) -> RunDir {
        RunDir { path: results.join(suite).join("runs").join(id) }
    }
    pub fn config(&self) -> PathBuf {
        self.path.join("config.json")
    }
    pub fn env(&self) -> PathBuf {
        self.path.join("env.json")
    }
    pub fn metrics(&self) -> PathBuf {
        self.path.join("metrics.csv")
    }
    pub fn summary(&self) -> PathBuf {
        self.path.join("summary.json")
    }
    pub fn model(&self) -> PathBuf {
        self.path.join("model.safetensors")
    }
    /// Pruning masks of a pruned run (0 = pruned), saved next to its checkpoint.
    pub fn masks(&self) -> PathBuf {
        self.path.join("mask.safetensors")
    }
    pub fn log(&self) -> PathBuf {
        self.path.join("log.txt")
    }
    pub fn lock(&self) -> PathBuf {
        self.path.join("lock")
    }

    /// True when `summary.json` exists (see [`verify::check`] for whether it can be trusted).
    pub fn is_finished(&self) -> bool {
        self.summary().is_file()
    }

    /// True when `summary.json` exists and the run verifies against `spec`.
    pub fn is_done(&self, spec: &RunSpec) -> bool {
        matches!(verify::check(self, spec), verify::Health::Finished(_))
    }

    pub fn read_spec(&self) -> anyhow::Result<RunSpec> {
        read_json(&self.config())
    }

    /// `summary.json` in the current schema, its values checked (damage is an input error).
    pub fn read_summary(&self) -> anyhow::Result<Summary> {
        verify::read_summary(&self.summary()).map_err(|d| anyhow::Error::new(crate::error::InputError::new(d.to_string())))
    }

    /// Writes `summary.json` with the current `schema`, atomically.
    pub fn write_summary(&self, s: &Summary) -> anyhow::Result<()> {
        write_json(&self.summary(), &verify::summary_json(s)?)
    }

    /// Removes the partial outputs of an unfinished run so it restarts cleanly.
    pub fn clear_partial(&self) -> anyhow::Result<()> {
        for p in [self.metrics(), self.model(), self.env()] {
            if p.exists() {
                std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
        Ok(())
    }
}

/// Reads and parses a JSON file, naming it on error.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

pub use crate::files::write_atomic;

/// Pretty JSON, written atomically.
pub fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let mut s = serde_json::to_string_pretty(value).context("serialising JSON")?;
    s.push('\n');
    write_atomic(path, s.as_bytes())
}

/// An exclusive claim on a run directory, released on drop. A lock left by a dead process
/// (same host, pid gone) is taken over; a live one is respected.
pub struct Lock {
    path: PathBuf,
}

impl Lock {
    /// Tries to take the lock; `Ok(None)` when another live process holds it.
    pub fn acquire(run: &RunDir) -> anyhow::Result<Option<Lock>> {
        std::fs::create_dir_all(&run.path).with_context(|| format!("creating {}", run.path.display()))?;
        let path = run.lock();
        let pid = std::process::id();
        let start = proc_stat(pid).map(|(_, s)| s).unwrap_or_default();
        let me = format!("{pid} {} {start}\n", hostname());
        for _ in 0..2 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    f.write_all(me.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
                    return Ok(Some(Lock { path }));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let alive = holder_alive(&path);
                    if alive {
                        return Ok(None);
                    }
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
        Ok(None)
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether the process named in a lock file is alive: same host, `/proc/<pid>` present and not a
/// zombie, and the same start time (so a recycled pid does not keep a dead run locked).
/// For another host we cannot tell, and assume it is.
fn holder_alive(path: &Path) -> bool {
    let held = std::fs::read_to_string(path).unwrap_or_default();
    let mut it = held.split_whitespace();
    let pid: Option<u32> = it.next().and_then(|p| p.parse().ok());
    let host = it.next().unwrap_or("");
    let start = it.next();
    match pid {
        Some(pid) if host == hostname() => match proc_stat(pid) {
            Some((state, st)) => state != 'Z' && state != 'X' && start.is_none_or(|s| s == st),
            None => false,
        },
        Some(_) => true,
        None => false, // empty or garbled: a crash between create and write
    }
}

/// (state, start time) of a process from `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Option<(char, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: state is the 1st, starttime the 20th.
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some((rest.first()?.chars().next()?, rest.get(19)?.to_string()))
}

/// True when a live process holds the run's lock.
pub fn lock_holder_alive(run: &RunDir) -> bool {
    run.lock().exists() && holder_alive(&run.lock())
}

/// This machine's host name (for lock ownership).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "localhost".into())
}

/// Sparsity measured from a saved state dict: zeros among the prunable weights (never assumed
/// from the requested amount).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Measured {
    /// Fraction of prunable weights that are exactly zero.
    pub sparsity: f64,
    pub prunable: i64,
    pub zeros: i64,
    /// Non-zeros and size of every prunable tensor, by name.
    pub layers: std::collections::BTreeMap<String, (i64, i64)>,
}

/// Per-bin sums of a reliability diagram, bins `(b/n, (b+1)/n]` on T = 1 probabilities.
/// Stored in `summary.json` so reports can draw the diagram and pool it over seeds.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Reliability {
    pub count: Vec<u64>,
    /// Σ confidence (max probability) of the samples in each bin.
    pub conf_sum: Vec<f64>,
    /// Number of correct predictions in each bin.
    pub correct: Vec<f64>,
}

impl Reliability {
    /// Expected calibration error, as a fraction: Σ_b |B_b|/n · |acc_b − conf_b| = Σ_b |Σacc − Σconf| / n
    /// (empty bins contribute 0).
    pub fn ece(&self) -> f64 {
        let n: u64 = self.count.iter().sum();
        if n == 0 {
            return 0.0;
        }
        self.correct.iter().zip(&self.conf_sum).map(|(a, c)| (a - c).abs()).sum::<f64>() / n as f64
    }
}

/// Statistics of a network's test predictions that the "sweet spot" study relates to how well
/// it teaches (Vats & Crandall attribute bad teaching to lost inter-class similarity).
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct OutputStats {
    /// Mean entropy of softmax(z) (T = 1), nats.
    pub entropy: f64,
    /// Mean probability given to classes other than the true one.
    pub nontarget_mass: f64,
    /// Mean cosine similarity between the class-conditional mean probability vectors of two
    /// different classes (how much the predictions keep classes alike).
    pub class_similarity: f64,
}
