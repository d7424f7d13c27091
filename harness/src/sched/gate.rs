//! The teacher gate. Users report released teachers testing points below their paper number
//! (RepDistiller#29); a table distilled from such a teacher costs its GPU-hours for nothing. So a
//! teacher is measured before its first student trains and compared with the suite's published
//! value for it (an `[[expected]]` entry with the teacher's model, method `ce` and no teacher);
//! outside `[report].expected_tolerance` points (default 1, as the reproduction verdicts) its
//! students are skipped with both numbers in the reason. `harness run --force` trains them anyway.
//!
//! A checkpoint teacher is measured once per (checkpoint hash, dataset fingerprint) and recorded
//! with its hash in `results/<suite>/teachers/`; a teacher the suite trains is read from its
//! summary (the metric its `[[expected]]` entry names). `plan` and `status` show those records.
//! Under Slurm a student's task applies the gate itself when it starts (its teacher finished in
//! an earlier DAG level): `run` writes the suite's values to `teachers/gate.json` and the task's
//! `harness exec --gate` reads them ([`exec_skip`]).

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::store::RunDir;
use crate::store::verify::Health;
use crate::suite::{DataRef, Expected, Plan, RunSpec, Suite, TeacherRef};

/// What a teacher measured and how it compares (`results/<suite>/teachers/<key>.json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub model: String,
    /// The checkpoint file (checkpoint teachers) or the run id (trained teachers).
    pub source: String,
    /// blake3 of the checkpoint (what student ids depend on); the run id for trained teachers.
    pub hash: String,
    pub dataset: String,
    pub fingerprint: String,
    /// Test top-1 in percent.
    pub top1: f64,
    pub measured_utc: String,
    /// The published value and tolerance it was last compared with, and the outcome.
    pub expected: Option<f64>,
    pub tolerance: f64,
    pub outside: bool,
}

impl Record {
    /// One line for `plan`, `status` and `run`.
    pub fn describe(&self) -> String {
        // Records are files a user can edit: cut by characters, not bytes.
        let short: String = self.hash.chars().take(12).collect();
        let cmp = match self.expected {
            Some(e) if self.outside => format!("; expected {e:.2} ± {}: OUTSIDE, its students are skipped (`harness run --force` trains them)", self.tolerance),
            Some(e) => format!("; expected {e:.2} ± {}: ok", self.tolerance),
            None => "; no [[expected]] value to compare with".into(),
        };
        format!("teacher gate: {} ({}, {short}) tests {:.2}% top-1 on {}{cmp}", self.model, self.source, self.top1, self.dataset)
    }

    /// Why the students are skipped.
    fn reason(&self) -> String {
        format!(
            "teacher {} ({}) tests {:.2}% top-1, expected {:.2} ± {} ([[expected]]); `harness run --force` trains its students anyway",
            self.model,
            self.source,
            self.top1,
            self.expected.unwrap_or(f64::NAN),
            self.tolerance
        )
    }
}

/// The suite's published teacher values and tolerance.
#[derive(Serialize, Deserialize)]
pub struct Gate {
    expected: Vec<Expected>,
    tolerance: f64,
}

impl Gate {
    pub fn new(suite: &Suite) -> Gate {
        Gate { expected: suite.expected.clone(), tolerance: suite.report.expected_tolerance.unwrap_or(1.0) }
    }

    /// Whether any teacher model has a published value (else the gate never skips anything).
    pub fn any(&self) -> bool {
        self.expected.iter().any(|e| e.teacher.is_none() && e.method == "ce")
    }

    /// Writes the gate for the tasks of a Slurm submission: `results/<suite>/teachers/gate.json`.
    pub fn save(&self, results: &Path, suite: &str) -> anyhow::Result<PathBuf> {
        let d = dir(results, suite);
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        let p = d.join("gate.json");
        crate::store::write_json(&p, self)?;
        Ok(p)
    }

    /// Reads a gate written by [`Gate::save`].
    pub fn load(path: &Path) -> anyhow::Result<Gate> {
        crate::store::read_json(path).with_context(|| format!("reading the teacher gate {}", path.display()))
    }

    /// The `[[expected]]` entry of a teacher model: no teacher of its own, plain training.
    fn expected(&self, model: &str) -> Option<&Expected> {
        self.expected.iter().find(|e| e.teacher.is_none() && e.method == "ce" && e.student == model)
    }

    fn compare(&self, mut r: Record) -> Record {
        r.expected = self.expected(&r.model).map(|e| e.top1);
        r.tolerance = self.tolerance;
        r.outside = r.expected.is_some_and(|e| (r.top1 - e).abs() > self.tolerance);
        r
    }
}

fn dir(results: &Path, suite: &str) -> PathBuf {
    results.join(suite).join("teachers")
}

fn key(tref: &TeacherRef, data: &DataRef) -> String {
    let cut = |s: &str| s.chars().filter(char::is_ascii_alphanumeric).take(16).collect::<String>();
    match tref {
        TeacherRef::Checkpoint { model, hash, .. } => format!("{model}-{}-{}.json", cut(hash), cut(&data.fingerprint)),
        TeacherRef::Run { id, .. } => format!("run-{id}.json"),
    }
}

/// The last record of a teacher, if it was measured.
pub fn read(results: &Path, suite: &str, tref: &TeacherRef, data: &DataRef) -> Option<Record> {
    let text = std::fs::read_to_string(dir(results, suite).join(key(tref, data))).ok()?;
    serde_json::from_str(&text).ok()
}

fn write(results: &Path, suite: &str, tref: &TeacherRef, data: &DataRef, r: &Record) -> anyhow::Result<()> {
    let d = dir(results, suite);
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    crate::store::write_atomic(&d.join(key(tref, data)), serde_json::to_string_pretty(r)?.as_bytes())
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Measures a checkpoint teacher's test top-1 (once: a record for the same hash and data is reused).
fn measure_checkpoint(results: &Path, suite: &str, tref: &TeacherRef, data: &DataRef, data_dir: &Path, device: tch::Device) -> anyhow::Result<Record> {
    if let Some(r) = read(results, suite, tref, data) {
        return Ok(r);
    }
    let TeacherRef::Checkpoint { path, model, hash } = tref else { anyhow::bail!("not a checkpoint teacher") };
    let set = crate::data::Dataset::load(&data.name, data_dir, device)?;
    let mut net = crate::train::build(model, &set, device)?;
    crate::models::checkpoint::load_strict(&mut net.vs, Path::new(path), model)?;
    let logits = crate::train::test_logits(net.model.as_ref(), &set)?;
    let e = crate::train::evaluate(&logits, &set.test_y.to_device(tch::Device::Cpu));
    Ok(Record {
        model: model.clone(),
        source: path.clone(),
        hash: hash.clone(),
        dataset: data.name.clone(),
        fingerprint: data.fingerprint.clone(),
        top1: e.top1 * 100.0,
        measured_utc: now(),
        expected: None,
        tolerance: 0.0,
        outside: false,
    })
}

/// Measures (or reads) every checkpoint teacher of the runs `pending` selects and compares it;
/// prints one line per teacher. Returns (run id, reason) for the runs to skip (none with `force`).
pub fn checkpoint_teachers(
    plan: &Plan,
    gate: &Gate,
    results: &Path,
    data_dir: &Path,
    device: tch::Device,
    force: bool,
    pending: &dyn Fn(usize) -> bool,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut skip = Vec::new();
    let mut seen: Vec<(String, Record)> = Vec::new();
    for (i, r) in plan.runs.iter().enumerate() {
        for t in &r.spec.teachers {
            let TeacherRef::Checkpoint { hash, .. } = t else { continue };
            if hash == crate::suite::MISSING_CHECKPOINT || !pending(i) {
                continue;
            }
            let k = key(t, &r.spec.dataset);
            let rec = match seen.iter().find(|(s, _)| *s == k) {
                Some((_, rec)) => rec.clone(),
                None => {
                    let rec = gate.compare(measure_checkpoint(results, &plan.suite, t, &r.spec.dataset, data_dir, device)?);
                    write(results, &plan.suite, t, &r.spec.dataset, &rec)?;
                    println!("{}", rec.describe());
                    seen.push((k, rec.clone()));
                    rec
                }
            };
            if rec.outside && !force && !skip.iter().any(|(id, _): &(String, String)| *id == r.spec.id) {
                skip.push((r.spec.id.clone(), rec.reason()));
            }
        }
    }
    Ok(skip)
}

/// After a trained teacher finished: the reason to skip its students, if it is outside (none
/// with `force` or without an `[[expected]]` value). Records the measurement and comparison.
pub fn trained_teacher(gate: &Gate, results: &Path, teacher: &RunSpec, force: bool) -> anyhow::Result<Option<String>> {
    let dir = RunDir::new(results, &teacher.suite, &teacher.id);
    let Health::Finished(s) = crate::store::verify::check(&dir, teacher) else { return Ok(None) };
    let top1 = if gate.expected(&teacher.model).is_some_and(|e| e.metric == "best") { s.best_top1 } else { s.last_top1 };
    let tref = TeacherRef::Run { id: teacher.id.clone(), model: teacher.model.clone() };
    let rec = gate.compare(Record {
        model: teacher.model.clone(),
        source: format!("run {}", teacher.id),
        hash: teacher.id.clone(),
        dataset: teacher.dataset.name.clone(),
        fingerprint: teacher.dataset.fingerprint.clone(),
        top1,
        measured_utc: now(),
        expected: None,
        tolerance: 0.0,
        outside: false,
    });
    write(results, &teacher.suite, &tref, &teacher.dataset, &rec)?;
    if rec.expected.is_some() {
        println!("{}", rec.describe());
    }
    Ok((rec.outside && !force).then(|| rec.reason()))
}

/// In a Slurm task (`harness exec --gate`): why the student in `run` is skipped, if a plainly
/// trained teacher of it (finished in an earlier DAG level) is outside its published value. The
/// comparison is recorded as the local scheduler records it.
pub fn exec_skip(gate: &Gate, run: &RunDir, spec: &RunSpec) -> anyhow::Result<Option<String>> {
    if spec.role != crate::suite::Role::Student {
        return Ok(None);
    }
    // results/<suite>/runs/<id>
    let Some(results) = run.path.parent().and_then(Path::parent).and_then(Path::parent) else { return Ok(None) };
    for t in &spec.teachers {
        let TeacherRef::Run { id, .. } = t else { continue };
        let tdir = RunDir::new(results, &spec.suite, id);
        let tspec = tdir.read_spec()?;
        if tspec.role == crate::suite::Role::Teacher && tspec.teachers.is_empty() {
            if let Some(reason) = trained_teacher(gate, results, &tspec, false)? {
                return Ok(Some(reason));
            }
        }
    }
    Ok(None)
}

/// For `status`: the reason a pending run's students were last skipped by the gate, if so.
pub fn skipped_by(results: &Path, spec: &RunSpec) -> Option<String> {
    spec.teachers.iter().filter_map(|t| read(results, &spec.suite, t, &spec.dataset)).find(|r| r.outside).map(|r| r.reason())
}

/// The plan without the gated runs and the runs that need them (Slurm submits what remains).
pub fn without(plan: &Plan, gated: &[(String, String)]) -> Plan {
    let mut gone: Vec<&str> = gated.iter().map(|(id, _)| id.as_str()).collect();
    for (id, reason) in gated {
        println!("skip  {id}: {reason}");
    }
    loop {
        let more: Vec<&str> = plan.runs.iter().filter(|r| !gone.contains(&r.spec.id.as_str()) && r.deps.iter().any(|d| gone.contains(&d.as_str()))).map(|r| r.spec.id.as_str()).collect();
        if more.is_empty() {
            break;
        }
        gone.extend(more);
    }
    Plan { runs: plan.runs.iter().filter(|r| !gone.contains(&r.spec.id.as_str())).cloned().collect(), ..plan.clone() }
}

/// One line per teacher the plan's students use: its record (accuracy, hash, comparison), or
/// that it is measured before its first student trains. For `plan` and `status`.
pub fn teacher_lines(plan: &Plan, gate: &Gate, results: &Path) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    let mut lines = Vec::new();
    for r in plan.runs.iter().filter(|r| r.spec.role == crate::suite::Role::Student) {
        for t in &r.spec.teachers {
            let k = key(t, &r.spec.dataset);
            if seen.contains(&k) || matches!(t, TeacherRef::Checkpoint { hash, .. } if hash == crate::suite::MISSING_CHECKPOINT) {
                continue;
            }
            seen.push(k);
            let line = match read(results, &plan.suite, t, &r.spec.dataset) {
                Some(rec) => gate.compare(rec).describe(),
                None => {
                    let (what, hash) = match t {
                        TeacherRef::Checkpoint { path, hash, .. } => (path.clone(), hash.clone()),
                        TeacherRef::Run { id, .. } => (format!("run {id}"), id.clone()),
                    };
                    let exp = gate.expected(t.model()).map(|e| format!("; expected {:.2} ± {}", e.top1, gate.tolerance)).unwrap_or_default();
                    let short: String = hash.chars().take(12).collect();
                    format!("teacher gate: {} ({what}, {short}) not measured yet (measured before the first of its students trains){exp}", t.model())
                }
            };
            lines.push(line);
        }
    }
    lines
}
