//! Executes a plan: every run in its own child process (`harness exec RUN_DIR`), teachers before
//! the students that need them, up to `jobs` at a time. A crash in one run cannot take down the
//! suite; a failed teacher marks its students as skipped, and the rest of the suite goes on.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::store::{Lock, RunDir};
use crate::suite::{Plan, Role};

/// How `harness run` executes a plan.
#[derive(Clone, Debug)]
pub struct Options {
    pub results: PathBuf,
    pub data_dir: PathBuf,
    /// Passed to each child: `auto`, `cpu`, `cuda`, `cuda:N`.
    pub device: String,
    /// Concurrent child processes.
    pub jobs: usize,
    /// Intra-op threads per child; `None` splits the cores among the jobs.
    pub threads: Option<usize>,
    /// Show progress bars (off in tests and when output is not a terminal).
    pub progress: bool,
}

/// What happened to one run.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Already finished before this invocation.
    Cached,
    Finished,
    Failed(String),
    /// Not started because a dependency failed.
    Skipped(String),
    /// Another live process holds its lock.
    Locked,
}

/// Exit status `harness exec` uses when the run is locked by another process.
pub const EXIT_LOCKED: i32 = 3;

/// Writes every run's `config.json` (idempotent) and executes the unfinished runs.
pub fn run_plan(plan: &Plan, opts: &Options) -> anyhow::Result<Vec<Outcome>> {
    let n = plan.runs.len();
    let dirs: Vec<RunDir> = plan.runs.iter().map(|r| RunDir::new(&opts.results, &plan.suite, &r.spec.id)).collect();
    let mut outcome: Vec<Option<Outcome>> = vec![None; n];
    for (i, (r, d)) in plan.runs.iter().zip(&dirs).enumerate() {
        if d.is_finished() {
            outcome[i] = Some(Outcome::Cached);
        } else {
            crate::store::write_json(&d.config(), &r.spec)?;
        }
    }
    let exe = std::env::current_exe().context("locating the harness executable")?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let jobs = opts.jobs.max(1);
    let threads = opts.threads.unwrap_or(cores / jobs).max(1);

    let mp = if opts.progress { MultiProgress::new() } else { MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden()) };
    let suite_bar = mp.add(ProgressBar::new(n as u64));
    suite_bar.set_style(ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} runs {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> "));
    suite_bar.set_prefix(plan.suite.clone());
    suite_bar.set_position(outcome.iter().filter(|o| o.is_some()).count() as u64);

    struct Running {
        idx: usize,
        child: Child,
        reader: std::thread::JoinHandle<()>,
        bar: ProgressBar,
    }
    let mut running: Vec<Running> = Vec::new();
    let index_of = |id: &str| plan.runs.iter().position(|r| r.spec.id == id);
    loop {
        // Skip runs whose dependencies failed; start ready runs.
        for i in 0..n {
            if outcome[i].is_some() || running.iter().any(|r| r.idx == i) {
                continue;
            }
            let mut blocked = None;
            let mut ready = true;
            for d in &plan.runs[i].deps {
                match index_of(d).and_then(|j| outcome[j].clone()) {
                    Some(Outcome::Cached) | Some(Outcome::Finished) => {}
                    Some(Outcome::Failed(_)) | Some(Outcome::Skipped(_)) | Some(Outcome::Locked) => {
                        let j = index_of(d).unwrap_or(0);
                        blocked = Some(format!("teacher {} ({}) did not finish", d, plan.runs[j].spec.model));
                    }
                    None => ready = false,
                }
            }
            if let Some(reason) = blocked {
                say(&mp, opts.progress, format!("skip  {} {}: {reason}", plan.runs[i].spec.id, plan.runs[i].spec.label()));
                outcome[i] = Some(Outcome::Skipped(reason));
                suite_bar.inc(1);
                continue;
            }
            if !ready || running.len() >= jobs {
                continue;
            }
            let dir = &dirs[i];
            let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.log()).with_context(|| format!("opening {}", dir.log().display()))?;
            let mut child = Command::new(&exe)
                .arg("exec")
                .arg(&dir.path)
                .arg("--data-dir")
                .arg(&opts.data_dir)
                .arg("--device")
                .arg(&opts.device)
                .arg("--threads")
                .arg(threads.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::from(log))
                .spawn()
                .with_context(|| format!("starting {} exec", exe.display()))?;
            let bar = mp.add(ProgressBar::new(plan.runs[i].spec.train.epochs as u64));
            bar.set_style(ProgressStyle::with_template("  {prefix} [{bar:20}] epoch {pos}/{len} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> "));
            bar.set_prefix(format!("{} {}", &plan.runs[i].spec.id[..8], plan.runs[i].spec.label()));
            let stdout = child.stdout.take().context("child stdout")?;
            let b = bar.clone();
            let reader = std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(rest) = line.strip_prefix("@epoch ") {
                        let f: Vec<&str> = rest.split_whitespace().collect();
                        if let (Some(e), Some(acc)) = (f.first().and_then(|x| x.parse::<u64>().ok()), f.get(2)) {
                            b.set_position(e);
                            b.set_message(format!("top-1 {acc}"));
                        }
                    }
                }
            });
            running.push(Running { idx: i, child, reader, bar });
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        let mut k = 0;
        while k < running.len() {
            match running[k].child.try_wait()? {
                None => k += 1,
                Some(status) => {
                    let r = running.remove(k);
                    let _ = r.reader.join();
                    r.bar.finish_and_clear();
                    mp.remove(&r.bar);
                    let spec = &plan.runs[r.idx].spec;
                    let o = if status.success() && dirs[r.idx].is_finished() {
                        let s = dirs[r.idx].read_summary().map(|s| format!("top-1 last {:.4} best {:.4}", s.last_top1, s.best_top1)).unwrap_or_default();
                        say(&mp, opts.progress, format!("done  {} {}: {s}", &spec.id, spec.label()));
                        Outcome::Finished
                    } else if status.code() == Some(EXIT_LOCKED) {
                        say(&mp, opts.progress, format!("busy  {} {}: locked by another process", &spec.id, spec.label()));
                        Outcome::Locked
                    } else {
                        let reason = last_error(&dirs[r.idx].log()).unwrap_or_else(|| format!("exit status {status}"));
                        say(&mp, opts.progress, format!("FAIL  {} {}: {reason} (log: {})", &spec.id, spec.label(), dirs[r.idx].log().display()));
                        Outcome::Failed(reason)
                    };
                    outcome[r.idx] = Some(o);
                    suite_bar.inc(1);
                }
            }
        }
    }
    suite_bar.finish_and_clear();
    Ok(outcome.into_iter().map(|o| o.unwrap_or(Outcome::Skipped("not scheduled".into()))).collect())
}

/// Prints a line above the progress bars, or plainly when bars are hidden.
fn say(mp: &MultiProgress, bars: bool, line: String) {
    if bars {
        let _ = mp.println(&line);
    } else {
        println!("{line}");
    }
}

/// The last `error:` line (or panic message) a child wrote to its log.
fn last_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().rev().find(|l| l.starts_with("error:") || l.contains("panicked at")).map(|l| l.trim_start_matches("error:").trim().to_string())
}

/// The child side: trains the run in `dir` (from its `config.json`) unless finished or locked.
/// Progress goes to stdout as `@epoch <e> <epochs> <top1>` lines for the parent.
pub fn exec(dir: &Path, data_dir: &Path, device: tch::Device) -> anyhow::Result<i32> {
    let run = RunDir { path: dir.to_path_buf() };
    let spec = run.read_spec().map_err(|e| crate::error::InputError::new(format!("{}: not a run directory: {e:#}", dir.display())))?;
    let Some(_lock) = Lock::acquire(&run)? else { return Ok(EXIT_LOCKED) };
    if run.is_finished() {
        return Ok(0);
    }
    run.clear_partial()?;
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
    let teacher = match &spec.teacher {
        Some(t) => Some(crate::train::load_teacher(t, &run, &data, device)?),
        None => None,
    };
    let mut env = serde_json::to_value(crate::env::Provenance::collect(device))?;
    env["dataset"] = serde_json::json!({"name": spec.dataset.name, "fingerprint": data.fingerprint, "source": data.source});
    if let Some(crate::suite::TeacherRef::Checkpoint { path, hash, .. }) = &spec.teacher {
        env["teacher_checkpoint"] = serde_json::json!({"path": path, "blake3": hash});
    }
    crate::store::write_json(&run.env(), &env)?;
    let summary = crate::train::train(&spec, &run, &data, device, teacher, &mut |p| {
        println!("@epoch {} {} {:.4}", p.epoch, p.epochs, p.test_top1);
    })?;
    crate::store::write_json(&run.summary(), &summary)?;
    Ok(0)
}

/// Groups finished runs of a plan for the end-of-run table: (role, model, method, teacher) →
/// values of (best top-1, last top-1) over seeds.
pub fn summarize(plan: &Plan, results: &Path) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut groups: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for r in &plan.runs {
        let d = RunDir::new(results, &plan.suite, &r.spec.id);
        let Ok(s) = d.read_summary() else { continue };
        let role = if r.spec.role == Role::Teacher { "teacher" } else { "student" };
        let mut key = format!("{role:<7} {:<12} {:<6}", r.spec.model, r.spec.method);
        if let Some(t) = &r.spec.teacher {
            key.push_str(&format!(" <- {}", t.model()));
        }
        let mut params: Vec<String> = r.spec.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        params.sort();
        if !params.is_empty() {
            key.push_str(&format!(" ({})", params.join(", ")));
        }
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push((s.best_top1, s.last_top1)),
            None => groups.push((key, vec![(s.best_top1, s.last_top1)])),
        }
    }
    groups
}

/// Mean and sample standard deviation (0 for one value).
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    let v = if xs.len() > 1 { xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (m, v.sqrt())
}
