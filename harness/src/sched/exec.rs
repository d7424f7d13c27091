//! The child side of the scheduler (`harness exec <run-dir>...`), the same entry point locally
//! and in Slurm array tasks: trains its runs as one cohort, writes each run's summary or its
//! `status.json`, and reports progress to the parent on stdout.

use std::path::{Path, PathBuf};

use super::{EXIT_DIVERGED, EXIT_LOCKED, FailStatus, read_fail, status_path};
use crate::store::{Lock, RunDir};

/// The child side: trains the runs in `dirs` (from their `config.json`) as one cohort, skipping
/// finished runs and runs locked by another process, each resuming from its last completed
/// epoch. Progress goes to stdout as `@epoch <id> <e> <epochs> <top1> <loss> <img/s>` lines (and
/// `@locked <id>`) for the parent; each member that fails gets its `status.json`. Returns the exit
/// status: 0 when every member finished, else that of the first member that did not (2 bad input,
/// [`EXIT_LOCKED`], [`EXIT_DIVERGED`], 1 failed).
pub fn exec(dirs: &[PathBuf], data_dir: &Path, device: tch::Device, gate: Option<&Path>) -> anyhow::Result<i32> {
    let gate = gate.map(super::gate::Gate::load).transpose()?;
    let mut members = Vec::new();
    let mut locks = Vec::new();
    let mut code = 0;
    for dir in dirs {
        let run = RunDir { path: dir.to_path_buf() };
        let spec = run.read_spec().map_err(|e| crate::error::InputError::new(format!("{}: not a run directory: {e:#}", dir.display())))?;
        let Some(lock) = Lock::acquire(&run)? else {
            println!("@locked {}", spec.id);
            code = if code == 0 { EXIT_LOCKED } else { code };
            continue;
        };
        if run.is_finished() {
            continue;
        }
        if let Some(reason) = gate.as_ref().map(|g| super::gate::exec_skip(g, &run, &spec)).transpose()?.flatten() {
            record_skip(&run, &reason)?;
            continue;
        }
        locks.push(lock);
        members.push(crate::train::Member { spec, run });
    }
    if members.is_empty() {
        return Ok(code);
    }
    let ids: Vec<String> = members.iter().map(|m| m.spec.id.clone()).collect();
    let mut attempts = Vec::new();
    for m in &members {
        attempts.push(read_fail(&m.run).map(|f| f.attempt).unwrap_or(0));
        let _ = std::fs::remove_file(status_path(&m.run));
        crate::store::write_json(&cohort_path(&m.run), &ids)?;
    }
    let results = match exec_locked(&members, data_dir, device) {
        Ok(r) => r,
        Err(e) => members.iter().map(|_| Err(crate::train::cohort::shared_error(&e))).collect(),
    };
    for ((m, r), previous) in members.iter().zip(results).zip(attempts) {
        let _ = std::fs::remove_file(cohort_path(&m.run));
        let c = match r {
            Ok(summary) => {
                m.run.write_summary(&summary)?;
                crate::train::clear_resume(&m.run);
                0
            }
            Err(e) => record_failure(&m.run, &e, previous)?,
        };
        if code == 0 {
            code = c;
        }
    }
    Ok(code)
}

/// A student the teacher gate skips: `status.json` says so with the reason (for `status` and
/// `run --wait`), the log too. Not a failure of the task: its exit status stays 0.
fn record_skip(run: &RunDir, reason: &str) -> anyhow::Result<()> {
    let f = FailStatus { state: "skipped".into(), error: reason.to_string(), epoch: None, attempt: 0 };
    crate::store::write_json(&status_path(run), &f)?;
    if let Ok(mut log) = std::fs::OpenOptions::new().create(true).append(true).open(run.log()) {
        use std::io::Write;
        let _ = writeln!(log, "skipped: {reason}");
    }
    Ok(())
}

/// Writes a member's `status.json` and its log line; returns its exit status.
fn record_failure(run: &RunDir, e: &anyhow::Error, previous: usize) -> anyhow::Result<i32> {
    let (state, epoch, code) = match e.downcast_ref::<crate::train::Diverged>() {
        Some(d) => ("diverged", Some(d.epoch), EXIT_DIVERGED),
        None => ("failed", None, if crate::error::is_input_error(e) { 2 } else { 1 }),
    };
    let f = FailStatus { state: state.into(), error: format!("{e:#}"), epoch, attempt: previous + 1 };
    crate::store::write_json(&status_path(run), &f)?;
    if let Ok(mut log) = std::fs::OpenOptions::new().create(true).append(true).open(run.log()) {
        use std::io::Write;
        let _ = writeln!(log, "error: {e:#}");
    }
    eprintln!("error: {}: {e:#}", run.path.display());
    Ok(code)
}

/// `cohort.json`: the ids of the runs a running run trains with (removed when the child ends).
fn cohort_path(run: &RunDir) -> PathBuf {
    run.path.join("cohort.json")
}

/// The members of the cohort a running run belongs to (itself included), if it is in one.
pub fn cohort_of(run: &RunDir) -> Option<Vec<String>> {
    crate::store::read_json(&cohort_path(run)).ok()
}

fn exec_locked(members: &[crate::train::Member], data_dir: &Path, device: tch::Device) -> anyhow::Result<Vec<anyhow::Result<crate::store::Summary>>> {
    let first = &members[0];
    for m in members {
        if !crate::train::resume_json(&m.run).is_file() {
            m.run.clear_partial()?;
        } else if crate::store::verify::upgrade_partial(&m.run)? {
            eprintln!("note: converted the fractions of {} and resume.json to percent (schema {})", m.run.metrics().display(), crate::store::SCHEMA);
        }
        if m.spec.dataset != first.spec.dataset {
            crate::input_bail!("runs {} and {} use different datasets and cannot train in one cohort", first.spec.id, m.spec.id);
        }
    }
    // The cohort's teachers: those of its members that have any (they agree, or exec refuses).
    let with_teachers = members.iter().find(|m| !m.spec.teachers.is_empty()).unwrap_or(first);
    let spec = &with_teachers.spec;
    let data = crate::data::Dataset::load(&spec.dataset.name, data_dir, device)?;
    if data.fingerprint != spec.dataset.fingerprint {
        crate::input_bail!(
            "{}: dataset {} has fingerprint {} but the run was planned with {}; the data changed — re-run `harness run` to re-plan",
            data.source,
            spec.dataset.name,
            data.fingerprint,
            spec.dataset.fingerprint
        );
    }
    let teachers = spec.teachers.iter().map(|t| crate::train::load_teacher(t, &with_teachers.run, &data, device)).collect::<anyhow::Result<Vec<_>>>()?;
    for m in members {
        write_env(m, &data, device)?;
    }
    Ok(crate::train::train_cohort(members, &data, device, &teachers, &mut |spec, p| {
        println!("@epoch {} {} {} {:.4} {:.4} {:.0}", spec.id, p.epoch, p.epochs, p.test_top1, p.train_loss, p.images_per_s);
    }))
}

/// `env.json`: where and with what a run trained (provenance), including its cohort.
fn write_env(m: &crate::train::Member, data: &crate::data::Dataset, device: tch::Device) -> anyhow::Result<()> {
    let spec = &m.spec;
    let mut env = serde_json::to_value(crate::env::Provenance::for_run(device, spec.train.precision))?;
    // How to read metrics.csv (a CSV file has no place for a version of its own).
    env["results_schema"] = crate::store::SCHEMA.into();
    env["dataset"] = serde_json::json!({"name": spec.dataset.name, "fingerprint": data.fingerprint, "source": data.source});
    let checkpoints: Vec<serde_json::Value> = spec
        .teachers
        .iter()
        .filter_map(|t| match t {
            crate::suite::TeacherRef::Checkpoint { path, hash, .. } => Some(serde_json::json!({"path": path, "blake3": hash})),
            _ => None,
        })
        .collect();
    if let Some(first) = checkpoints.first() {
        env["teacher_checkpoint"] = first.clone();
        env["teacher_checkpoints"] = serde_json::Value::Array(checkpoints.clone());
    }
    if let Some(c) = cohort_of(&m.run) {
        env["cohort"] = serde_json::json!(c);
    }
    crate::store::write_json(&m.run.env(), &env)
}
