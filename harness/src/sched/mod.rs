//! Executes a plan like cargo-nextest runs tests: the parent plans and schedules, every run trains
//! in its own child process (`harness exec RUN_DIR`) placed on a slot — a GPU (via
//! `CUDA_VISIBLE_DEVICES`, several runs per GPU with `--per-gpu`) or a CPU job. Teachers run before
//! the students that need them; a crash, panic or divergence in one run cannot take down the suite,
//! and a failed teacher marks its students as skipped while the rest goes on. The same child entry
//! point runs as Slurm array tasks under `--executor slurm` (see [`slurm`]).

pub mod slurm;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::store::{Lock, RunDir};
use crate::suite::{Plan, PlannedRun, Role};

/// Where runs execute.
#[derive(Clone, Debug, PartialEq)]
pub enum Devices {
    Cpu,
    /// Physical GPU indices (as `CUDA_VISIBLE_DEVICES` numbers them for the parent).
    Gpus(Vec<usize>),
}

/// Parses `auto`, `cpu`, `cuda`, `cuda:N` or `cuda:0,1,3`.
pub fn parse_devices(s: &str) -> anyhow::Result<Devices> {
    let count = || if tch::Cuda::is_available() { tch::Cuda::device_count() as usize } else { 0 };
    match s {
        "auto" => Ok(if count() > 0 { Devices::Gpus((0..count()).collect()) } else { Devices::Cpu }),
        "cpu" => Ok(Devices::Cpu),
        "cuda" => {
            if count() == 0 {
                crate::input_bail!("--devices cuda: CUDA is not available here (see `harness doctor`)");
            }
            Ok(Devices::Gpus((0..count()).collect()))
        }
        other => {
            let Some(list) = other.strip_prefix("cuda:") else {
                crate::input_bail!("--devices `{other}`: expected auto, cpu, cuda, cuda:N or cuda:0,1,3");
            };
            let mut gpus = Vec::new();
            for n in list.split(',') {
                let Ok(i) = n.trim().parse::<usize>() else { crate::input_bail!("--devices `{other}`: `{n}` is not a GPU index") };
                gpus.push(i);
            }
            let c = count();
            if c == 0 {
                crate::input_bail!("--devices `{other}`: CUDA is not available here (see `harness doctor`)");
            }
            if let Some(bad) = gpus.iter().find(|&&i| i >= c) {
                crate::input_bail!("--devices `{other}`: cuda:{bad} does not exist ({c} CUDA device(s) visible)");
            }
            gpus.dedup();
            Ok(Devices::Gpus(gpus))
        }
    }
}

/// One place a run can execute.
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    pub gpu: Option<usize>,
}

/// The slots for a device choice: `per_gpu` per GPU, or `jobs` CPU slots.
pub fn slots(devices: &Devices, per_gpu: usize, jobs: usize) -> Vec<Slot> {
    match devices {
        Devices::Cpu => (0..jobs.max(1)).map(|_| Slot { gpu: None }).collect(),
        Devices::Gpus(g) => g.iter().flat_map(|&i| (0..per_gpu.max(1)).map(move |_| Slot { gpu: Some(i) })).collect(),
    }
}

/// How `harness run` executes a plan.
#[derive(Clone, Debug)]
pub struct Options {
    pub results: PathBuf,
    pub data_dir: PathBuf,
    pub devices: Devices,
    pub per_gpu: usize,
    /// Concurrent CPU runs.
    pub jobs: usize,
    /// Intra-op threads per CPU child; `None` splits the cores among the jobs.
    pub threads: Option<usize>,
    /// Extra attempts for runs that fail (not for diverged runs).
    pub retries: usize,
    /// Progress bars (else one plain line per event, for logs and CI).
    pub progress: bool,
}

/// What happened to one run.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Already finished before this invocation.
    Cached,
    Finished,
    Failed(String),
    Diverged(String),
    /// Not started because a dependency did not finish.
    Skipped(String),
    /// Another live process holds its lock.
    Locked,
}

impl Outcome {
    fn done(&self) -> bool {
        matches!(self, Outcome::Cached | Outcome::Finished)
    }
}

/// Exit status of `harness exec` when the run is locked by another process.
pub const EXIT_LOCKED: i32 = 3;
/// Exit status of `harness exec` when the loss became non-finite.
pub const EXIT_DIVERGED: i32 = 4;

/// Why a run did not finish (`status.json` in its directory; removed when it finishes).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FailStatus {
    /// `failed` or `diverged`.
    pub state: String,
    pub error: String,
    pub epoch: Option<u32>,
    pub attempt: usize,
}

fn status_path(run: &RunDir) -> PathBuf {
    run.path.join("status.json")
}

/// Reads `status.json` if present.
pub fn read_fail(run: &RunDir) -> Option<FailStatus> {
    crate::store::read_json(&status_path(run)).ok()
}

/// Runs and their dependencies (recursively) matching `--only` filters `key=value[,key=value]`.
/// Keys: `id` (prefix), `role`, `model`, `student`, `teacher`, `method`, `seed`,
/// `train.<key>`, `<method>.<param>`.
pub fn filter(plan: &Plan, only: &str) -> anyhow::Result<Plan> {
    let mut conds = Vec::new();
    for part in only.split(',').filter(|p| !p.trim().is_empty()) {
        let Some((k, v)) = part.split_once('=') else { crate::input_bail!("--only `{part}`: expected key=value") };
        conds.push((k.trim().to_string(), v.trim().to_string()));
    }
    let known = ["id", "role", "model", "student", "teacher", "method", "seed"];
    for (k, _) in &conds {
        if !known.contains(&k.as_str()) && !k.contains('.') {
            crate::input_bail!("--only: unknown key `{k}`; use one of {}, train.<key> or <method>.<param>", known.join(", "));
        }
    }
    let matches = |r: &PlannedRun| {
        let s = &r.spec;
        conds.iter().all(|(k, v)| match k.as_str() {
            "id" => s.id.starts_with(v.as_str()),
            "role" => (s.role == Role::Teacher && v == "teacher") || (s.role == Role::Student && v == "student"),
            "model" | "student" => &s.model == v,
            "teacher" => s.teachers.iter().any(|t| t.model() == v),
            "method" => &s.method == v,
            "seed" => s.seed.to_string() == *v,
            _ => {
                let (a, b) = k.split_once('.').unwrap_or(("", ""));
                if a == "train" {
                    serde_json::to_value(&s.train)
                        .ok()
                        .and_then(|j| j.get(b).map(|x| x.to_string() == *v || x.as_f64().zip(v.parse::<f64>().ok()).is_some_and(|(x, y)| x == y)))
                        .unwrap_or(false)
                } else {
                    s.method == a && s.params.get(b).is_some_and(|p| p.to_string() == *v || p.as_f64().zip(v.parse::<f64>().ok()).is_some_and(|(x, y)| x == y))
                }
            }
        })
    };
    let mut keep: Vec<bool> = plan.runs.iter().map(|r| matches(r)).collect();
    // Pull in dependencies until nothing changes.
    loop {
        let mut changed = false;
        for i in 0..plan.runs.len() {
            if keep[i] {
                for d in &plan.runs[i].deps {
                    if let Some(j) = plan.runs.iter().position(|r| &r.spec.id == d) {
                        if !keep[j] {
                            keep[j] = true;
                            changed = true;
                        }
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    let runs = plan.runs.iter().zip(&keep).filter(|(_, k)| **k).map(|(r, _)| r.clone()).collect();
    Ok(Plan { suite: plan.suite.clone(), runs, points: plan.points })
}

/// The run directories of a plan, with `config.json` written for every unfinished run (what
/// `harness exec` reads, locally or on a cluster node), and which runs had already finished.
pub fn prepare(plan: &Plan, results: &Path) -> anyhow::Result<(Vec<RunDir>, Vec<bool>)> {
    let dirs: Vec<RunDir> = plan.runs.iter().map(|r| RunDir::new(results, &plan.suite, &r.spec.id)).collect();
    let mut finished = Vec::with_capacity(dirs.len());
    for (r, d) in plan.runs.iter().zip(&dirs) {
        finished.push(d.is_finished());
        if !d.is_finished() {
            crate::store::write_json(&d.config(), &r.spec)?;
        }
    }
    Ok((dirs, finished))
}

/// Writes every run's `config.json` (idempotent) and executes the unfinished runs.
pub fn run_plan(plan: &Plan, opts: &Options) -> anyhow::Result<Vec<Outcome>> {
    let n = plan.runs.len();
    let (dirs, finished) = prepare(plan, &opts.results)?;
    let mut outcome: Vec<Option<Outcome>> = finished.iter().map(|&f| f.then_some(Outcome::Cached)).collect();
    let exe = std::env::current_exe().context("locating the harness executable")?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let slots = slots(&opts.devices, opts.per_gpu, opts.jobs);
    let cpu_threads = opts.threads.unwrap_or(cores / slots.len().max(1)).max(1);
    let mut busy: Vec<Option<usize>> = vec![None; slots.len()];
    let mut attempts = vec![0usize; n];

    let mp = if opts.progress { MultiProgress::new() } else { MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden()) };
    let suite_bar = mp.add(ProgressBar::new(n as u64));
    suite_bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} runs, elapsed {elapsed}, ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    suite_bar.set_prefix(plan.suite.clone());
    suite_bar.set_position(outcome.iter().filter(|o| o.is_some()).count() as u64);

    struct Running {
        idx: usize,
        slots: Vec<usize>,
        child: Child,
        reader: std::thread::JoinHandle<()>,
        bar: ProgressBar,
    }
    let mut running: Vec<Running> = Vec::new();
    let index_of = |id: &str| plan.runs.iter().position(|r| r.spec.id == id);
    loop {
        for i in 0..n {
            if outcome[i].is_some() || running.iter().any(|r| r.idx == i) {
                continue;
            }
            let mut blocked = None;
            let mut ready = true;
            for d in &plan.runs[i].deps {
                let j = index_of(d);
                match j.and_then(|j| outcome[j].clone()) {
                    Some(o) if o.done() => {}
                    Some(_) => blocked = Some(format!("teacher {} ({}) did not finish", d, j.map(|j| plan.runs[j].spec.model.as_str()).unwrap_or("?"))),
                    None if j.is_none() => blocked = Some(format!("dependency {d} is not in this plan")),
                    None => ready = false,
                }
            }
            if let Some(reason) = blocked {
                say(&mp, opts.progress, format!("skip  {} {}: {reason}", plan.runs[i].spec.id, plan.runs[i].spec.label()));
                outcome[i] = Some(Outcome::Skipped(reason));
                suite_bar.inc(1);
                continue;
            }
            if !ready {
                continue;
            }
            // Place the run: one free slot, or a whole free GPU (all CPU slots) when exclusive.
            let exclusive = plan.runs[i].spec.exclusive;
            let take: Option<Vec<usize>> = if exclusive {
                let groups: Vec<Vec<usize>> = match &opts.devices {
                    Devices::Cpu => vec![(0..slots.len()).collect()],
                    Devices::Gpus(g) => g.iter().map(|&gi| (0..slots.len()).filter(|&s| slots[s].gpu == Some(gi)).collect()).collect(),
                };
                groups.into_iter().find(|grp| grp.iter().all(|&s| busy[s].is_none()))
            } else {
                (0..slots.len()).find(|&s| busy[s].is_none()).map(|s| vec![s])
            };
            let Some(taken) = take else { continue };
            let slot = &slots[taken[0]];
            let dir = &dirs[i];
            let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.log()).with_context(|| format!("opening {}", dir.log().display()))?;
            let mut cmd = Command::new(&exe);
            cmd.arg("exec").arg(&dir.path).arg("--data-dir").arg(&opts.data_dir);
            match slot.gpu {
                Some(g) => {
                    cmd.env("CUDA_VISIBLE_DEVICES", g.to_string()).arg("--device").arg("cuda:0");
                }
                None => {
                    let t = if exclusive { cores.max(1) } else { cpu_threads };
                    cmd.env("CUDA_VISIBLE_DEVICES", "").arg("--device").arg("cpu").arg("--threads").arg(t.to_string());
                }
            }
            let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::from(log)).spawn().with_context(|| format!("starting {} exec", exe.display()))?;
            attempts[i] += 1;
            let spec = &plan.runs[i].spec;
            let place = slot.gpu.map(|g| format!("cuda:{g}")).unwrap_or_else(|| "cpu".into());
            say(
                &mp,
                opts.progress,
                format!("start {} {} on {place}{}", spec.id, spec.label(), if attempts[i] > 1 { format!(" (attempt {})", attempts[i]) } else { String::new() }),
            );
            let bar = mp.insert_before(&suite_bar, ProgressBar::new(spec.train.epochs as u64));
            bar.set_style(
                ProgressStyle::with_template("  {prefix} [{bar:20}] epoch {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_prefix(format!("{place:>6} {} {}", &spec.id[..8], spec.label()));
            let stdout = child.stdout.take().context("child stdout")?;
            let b = bar.clone();
            let reader = std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(rest) = line.strip_prefix("@epoch ") {
                        let f: Vec<&str> = rest.split_whitespace().collect();
                        if let (Some(e), Some(acc), Some(loss), Some(ips)) = (f.first().and_then(|x| x.parse::<u64>().ok()), f.get(2), f.get(3), f.get(4)) {
                            b.set_position(e);
                            b.set_message(format!("loss {loss} top-1 {acc} {ips} img/s"));
                        }
                    }
                }
            });
            for &s in &taken {
                busy[s] = Some(i);
            }
            running.push(Running { idx: i, slots: taken, child, reader, bar });
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        let mut k = 0;
        while k < running.len() {
            let Some(status) = running[k].child.try_wait()? else {
                k += 1;
                continue;
            };
            let r = running.remove(k);
            let _ = r.reader.join();
            for s in &r.slots {
                busy[*s] = None;
            }
            r.bar.finish_and_clear();
            mp.remove(&r.bar);
            let spec = &plan.runs[r.idx].spec;
            let dir = &dirs[r.idx];
            let o = if status.success() && dir.is_finished() {
                let s = dir.read_summary().map(|s| format!("top-1 last {:.4} best {:.4}", s.last_top1, s.best_top1)).unwrap_or_default();
                say(&mp, opts.progress, format!("done  {} {}: {s}", &spec.id, spec.label()));
                Outcome::Finished
            } else if status.code() == Some(EXIT_LOCKED) {
                say(&mp, opts.progress, format!("busy  {} {}: locked by another process", &spec.id, spec.label()));
                Outcome::Locked
            } else {
                let fail = read_fail(dir).unwrap_or_else(|| {
                    // The child died without a word (signal, panic, OOM kill): record it ourselves.
                    let error = last_error(&dir.log()).unwrap_or_else(|| format!("exit status {status}"));
                    let f = FailStatus { state: "failed".into(), error, epoch: None, attempt: attempts[r.idx] };
                    let _ = crate::store::write_json(&status_path(dir), &f);
                    f
                });
                if fail.state == "diverged" || status.code() == Some(EXIT_DIVERGED) {
                    say(&mp, opts.progress, format!("DIVERGED {} {}: {} (log: {})", &spec.id, spec.label(), fail.error, dir.log().display()));
                    Outcome::Diverged(fail.error)
                } else if attempts[r.idx] <= opts.retries {
                    say(
                        &mp,
                        opts.progress,
                        format!("retry {} {}: {} (attempt {} of {})", &spec.id, spec.label(), fail.error, attempts[r.idx], opts.retries + 1),
                    );
                    continue; // outcome stays None: scheduled again
                } else {
                    say(&mp, opts.progress, format!("FAIL  {} {}: {} (log: {})", &spec.id, spec.label(), fail.error, dir.log().display()));
                    Outcome::Failed(fail.error)
                }
            };
            outcome[r.idx] = Some(o);
            suite_bar.inc(1);
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
    let lines: Vec<&str> = text.lines().collect();
    let i = lines.iter().rposition(|l| l.starts_with("error:") || l.contains("panicked at"))?;
    let mut msg = lines[i].trim_start_matches("error:").trim().to_string();
    if lines[i].contains("panicked at") {
        if let Some(next) = lines.get(i + 1) {
            msg = format!("panic: {}", next.trim());
        }
    }
    Some(msg)
}

/// The child side: trains the run in `dir` (from its `config.json`) unless finished or locked,
/// resuming from its last completed epoch. Progress goes to stdout as
/// `@epoch <e> <epochs> <top1> <loss> <img/s>` lines for the parent. Returns the exit status.
pub fn exec(dir: &Path, data_dir: &Path, device: tch::Device) -> anyhow::Result<i32> {
    let run = RunDir { path: dir.to_path_buf() };
    let spec = run.read_spec().map_err(|e| crate::error::InputError::new(format!("{}: not a run directory: {e:#}", dir.display())))?;
    let Some(_lock) = Lock::acquire(&run)? else { return Ok(EXIT_LOCKED) };
    if run.is_finished() {
        return Ok(0);
    }
    let previous = read_fail(&run).map(|f| f.attempt).unwrap_or(0);
    let _ = std::fs::remove_file(status_path(&run));
    match exec_locked(&run, &spec, data_dir, device) {
        Ok(()) => Ok(0),
        Err(e) => {
            let (state, epoch, code) = match e.downcast_ref::<crate::train::Diverged>() {
                Some(d) => ("diverged", Some(d.epoch), EXIT_DIVERGED),
                None => ("failed", None, if crate::error::is_input_error(&e) { 2 } else { 1 }),
            };
            let f = FailStatus { state: state.into(), error: format!("{e:#}"), epoch, attempt: previous + 1 };
            crate::store::write_json(&status_path(&run), &f)?;
            eprintln!("error: {e:#}");
            Ok(code)
        }
    }
}

fn exec_locked(run: &RunDir, spec: &crate::suite::RunSpec, data_dir: &Path, device: tch::Device) -> anyhow::Result<()> {
    if !crate::train::resume_json(run).is_file() {
        run.clear_partial()?;
    }
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
    let teachers = spec.teachers.iter().map(|t| crate::train::load_teacher(t, run, &data, device)).collect::<anyhow::Result<Vec<_>>>()?;
    let mut env = serde_json::to_value(crate::env::Provenance::for_run(device, spec.train.precision))?;
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
    crate::store::write_json(&run.env(), &env)?;
    let summary = crate::train::train(spec, run, &data, device, teachers, &mut |p| {
        println!("@epoch {} {} {:.4} {:.4} {:.0}", p.epoch, p.epochs, p.test_top1, p.train_loss, p.images_per_s);
    })?;
    crate::store::write_json(&run.summary(), &summary)?;
    crate::train::clear_resume(run);
    Ok(())
}

/// A run's state for `harness status`.
pub fn state_of(plan: &Plan, results: &Path, i: usize) -> (String, String) {
    let r = &plan.runs[i];
    let dir = RunDir::new(results, &plan.suite, &r.spec.id);
    if dir.is_finished() {
        let s = dir.read_summary().map(|s| format!("last top-1 {:.4}, best {:.4} (epoch {})", s.last_top1, s.best_top1, s.best_epoch)).unwrap_or_default();
        return ("done".into(), s);
    }
    let progress = crate::store::read_json::<serde_json::Value>(&crate::train::resume_json(&dir))
        .ok()
        .and_then(|v| v["epoch"].as_u64())
        .map(|e| format!("epoch {e}/{} done", r.spec.train.epochs))
        .unwrap_or_default();
    if crate::store::lock_holder_alive(&dir) {
        return ("running".into(), progress);
    }
    if let Some(f) = read_fail(&dir) {
        let at = f.epoch.map(|e| format!(" at epoch {e}")).unwrap_or_default();
        return (f.state.clone(), format!("{}{at}; log {}", f.error, dir.log().display()));
    }
    for d in &r.deps {
        if let Some(j) = plan.runs.iter().position(|x| &x.spec.id == d) {
            let (st, _) = state_of(plan, results, j);
            if st == "failed" || st == "diverged" || st == "skipped" {
                return ("skipped".into(), format!("teacher {d} {st}"));
            }
        }
    }
    ("pending".into(), progress)
}

/// Groups finished runs of a plan for the end-of-run table: (role, model, method, teacher,
/// params) → (best top-1, last top-1) over seeds.
pub fn summarize(plan: &Plan, results: &Path) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut groups: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for r in &plan.runs {
        let d = RunDir::new(results, &plan.suite, &r.spec.id);
        let Ok(s) = d.read_summary() else { continue };
        let role = if r.spec.role == Role::Teacher { "teacher" } else { "student" };
        let mut key = format!("{role:<7} {:<10} {:<6}", r.spec.model, r.spec.method);
        if !r.spec.teachers.is_empty() {
            key.push_str(&format!(" <- {}", r.spec.teacher_models()));
        }
        let params: Vec<String> = r.spec.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if !params.is_empty() {
            key.push_str(&format!(" ({})", params.join(" ")));
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
