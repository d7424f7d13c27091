//! Executes a plan like cargo-nextest runs tests: the parent plans and schedules, every run trains
//! in its own child process (`harness exec RUN_DIR`) placed on a slot — a GPU (via
//! `CUDA_VISIBLE_DEVICES`, several runs per GPU with `--per-gpu`) or a CPU job. Teachers run before
//! the students that need them; a crash, panic or divergence in one run cannot take down the suite,
//! and a failed teacher marks its students as skipped while the rest goes on. The same child entry
//! point runs as Slurm array tasks under `--executor slurm` (see [`slurm`]).

pub mod exec;
pub mod gate;
pub mod slurm;

pub use exec::{cohort_of, exec};

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::store::verify::Health;
use crate::store::RunDir;
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
#[derive(Clone)]
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
    /// Most runs trained together in one child (1: every run alone); see [`default_cohort`].
    pub cohort: usize,
    /// Runs the teacher gate skips before anything trains (checkpoint teachers; run id, reason).
    pub gated: Vec<(String, String)>,
    /// Teachers the suite trains are gated when they finish (`None`: `--force`).
    pub gate: Option<std::sync::Arc<gate::Gate>>,
}

/// Estimated memory one CIFAR-size learner needs on the CPU (model, gradients, momentum, the
/// activations of a batch of 64 for resnet32x4: measured ≈ 0.6 GB; doubled for headroom).
const LEARNER_BYTES: u64 = 1_200_000_000;

/// `--cohort` when not given: as many learners as a quarter of the available memory holds
/// (`MemAvailable` of /proc/meminfo), at least 1 and at most 8; 4 on GPUs (their memory is not
/// visible through libtorch here; a learner of the CIFAR zoo needs well under 1 GB).
pub fn default_cohort(devices: &Devices) -> usize {
    if let Devices::Gpus(_) = devices {
        return 4;
    }
    let avail = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| t.lines().find(|l| l.starts_with("MemAvailable:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
        .map(|kb| kb * 1024);
    match avail {
        Some(b) => ((b / 4) / LEARNER_BYTES).clamp(1, 8) as usize,
        None => 1,
    }
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
    if !keep.contains(&true) {
        return Err(nothing_selected(plan, only, &conds));
    }
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

/// The values each `--only` key takes in the plan, for the error of a selection that selects nothing.
fn nothing_selected(plan: &Plan, only: &str, conds: &[(String, String)]) -> anyhow::Error {
    let values = |k: &str| -> Vec<String> {
        let mut v: Vec<String> = plan
            .runs
            .iter()
            .flat_map(|r| {
                let s = &r.spec;
                match k {
                    "id" => vec![s.id.clone()],
                    "role" => vec![if s.role == Role::Teacher { "teacher".into() } else { "student".into() }],
                    "model" | "student" => vec![s.model.clone()],
                    "teacher" => s.teachers.iter().map(|t| t.model().to_string()).collect(),
                    "method" => vec![s.method.clone()],
                    "seed" => vec![s.seed.to_string()],
                    _ => match k.split_once('.') {
                        Some(("train", b)) => serde_json::to_value(&s.train).ok().and_then(|j| j.get(b).map(|x| x.to_string())).into_iter().collect(),
                        Some((m, b)) if *m == s.method => s.params.get(b).map(|p| p.to_string()).into_iter().collect(),
                        _ => vec![],
                    },
                }
            })
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let parts: Vec<String> = conds
        .iter()
        .map(|(k, v)| {
            let present = values(k);
            let shown = if present.is_empty() { "none".to_string() } else { present.iter().take(20).cloned().collect::<Vec<_>>().join(", ") };
            let more = if present.len() > 20 { format!(" (and {} more)", present.len() - 20) } else { String::new() };
            format!("`{k}` is {} in this suite{more} (you asked for `{v}`)", shown)
        })
        .collect();
    anyhow::Error::new(crate::error::InputError::new(format!("--only {only}: selects no run of suite {}; {}", plan.suite, parts.join("; "))))
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

/// Damaged runs of a plan stop `run` before anything trains (exit 2), unless `retrain`: then
/// their files are moved aside (kept) and they train again. A dry run only lists them.
pub fn guard_damaged(plan: &Plan, results: &Path, retrain: bool, dry_run: bool) -> anyhow::Result<()> {
    let mut found = Vec::new();
    for r in &plan.runs {
        let dir = RunDir::new(results, &plan.suite, &r.spec.id);
        if let Health::Damaged(d) = crate::store::verify::check(&dir, &r.spec) {
            eprintln!("damaged {} {}: {d}", r.spec.id, r.spec.label());
            found.push((r, dir));
        }
    }
    if found.is_empty() || dry_run {
        return Ok(());
    }
    if !retrain {
        crate::input_bail!(
            "{} damaged run(s) in {} (listed above); nothing was trained. `harness run --retrain-damaged` moves their files into \
             damaged-<time>/ inside each run directory (kept, not deleted) and trains them again",
            found.len(),
            results.join(&plan.suite).display()
        );
    }
    for (r, dir) in found {
        if crate::store::lock_holder_alive(&dir) {
            crate::input_bail!("{}: damaged but locked by a live process; stop it first", dir.path.display());
        }
        let to = crate::store::verify::move_aside(&dir)?;
        println!("moved the files of damaged run {} {} to {}; it trains again", r.spec.id, r.spec.label(), to.display());
    }
    Ok(())
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
        idxs: Vec<usize>,
        slots: Vec<usize>,
        child: Child,
        reader: std::thread::JoinHandle<Vec<String>>,
        bars: Vec<ProgressBar>,
    }
    let mut running: Vec<Running> = Vec::new();
    // Trained teachers compared with their [[expected]] value once they finish (id → skip reason).
    let mut gated_teachers = TeacherGate { gate: opts.gate.clone(), results: &opts.results, verdicts: Vec::new() };
    let index_of = |id: &str| plan.runs.iter().position(|r| r.spec.id == id);
    // Runs with equal keys may share a child (one data stream, the teachers' passes once).
    let keys: Vec<Option<String>> = plan.runs.iter().map(|r| if opts.cohort > 1 { crate::train::cohort_key(&r.spec) } else { None }).collect();
    loop {
        let mut ready: Vec<usize> = Vec::new();
        for i in 0..n {
            if outcome[i].is_some() || running.iter().any(|r| r.idxs.contains(&i)) {
                continue;
            }
            if let Some((_, reason)) = opts.gated.iter().find(|(id, _)| *id == plan.runs[i].spec.id) {
                say(&mp, opts.progress, format!("skip  {} {}: {reason}", plan.runs[i].spec.id, plan.runs[i].spec.label()));
                outcome[i] = Some(Outcome::Skipped(reason.clone()));
                suite_bar.inc(1);
                continue;
            }
            match readiness(plan, i, &outcome, &index_of, &mut gated_teachers) {
                Ready::Yes => ready.push(i),
                Ready::Wait => {}
                Ready::Blocked(reason) => {
                    say(&mp, opts.progress, format!("skip  {} {}: {reason}", plan.runs[i].spec.id, plan.runs[i].spec.label()));
                    outcome[i] = Some(Outcome::Skipped(reason));
                    suite_bar.inc(1);
                }
            }
        }
        let mut taken_runs: Vec<usize> = Vec::new();
        for &i in &ready {
            if taken_runs.contains(&i) {
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
            // Its cohort: ready runs with the same key, in plan order, up to --cohort.
            let mut idxs = vec![i];
            if let Some(k) = &keys[i] {
                for &j in &ready {
                    let fits = |m: &usize| crate::train::teachers_agree(&plan.runs[*m].spec, &plan.runs[j].spec);
                    if idxs.len() < opts.cohort && j != i && !taken_runs.contains(&j) && keys[j].as_ref() == Some(k) && idxs.iter().all(fits) {
                        idxs.push(j);
                    }
                }
            }
            taken_runs.extend(&idxs);
            let slot = &slots[taken[0]];
            let mut cmd = Command::new(&exe);
            cmd.arg("exec").args(idxs.iter().map(|&j| &dirs[j].path)).arg("--data-dir").arg(&opts.data_dir);
            match slot.gpu {
                Some(g) => {
                    cmd.env("CUDA_VISIBLE_DEVICES", g.to_string()).arg("--device").arg("cuda:0");
                }
                None => {
                    let t = if exclusive { cores.max(1) } else { cpu_threads };
                    cmd.env("CUDA_VISIBLE_DEVICES", "").arg("--device").arg("cpu").arg("--threads").arg(t.to_string());
                }
            }
            // The child's stderr goes to the first member's log; every member's own log gets its lines too.
            let log = std::fs::OpenOptions::new().create(true).append(true).open(dirs[i].log()).with_context(|| format!("opening {}", dirs[i].log().display()))?;
            let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::from(log)).spawn().with_context(|| format!("starting {} exec", exe.display()))?;
            let place = slot.gpu.map(|g| format!("cuda:{g}")).unwrap_or_else(|| "cpu".into());
            let cohort_note = |j: usize| match idxs.len() {
                1 => String::new(),
                k => format!(" [cohort of {k} with {}]", idxs.iter().filter(|&&o| o != j).map(|&o| &plan.runs[o].spec.id[..8]).collect::<Vec<_>>().join(", ")),
            };
            let mut bars = Vec::new();
            for &j in &idxs {
                attempts[j] += 1;
                let spec = &plan.runs[j].spec;
                let again = if attempts[j] > 1 { format!(" (attempt {})", attempts[j]) } else { String::new() };
                say(&mp, opts.progress, format!("start {} {} on {place}{again}{}", spec.id, spec.label(), cohort_note(j)));
                let bar = mp.insert_before(&suite_bar, ProgressBar::new(spec.train.epochs as u64));
                bar.set_style(
                    ProgressStyle::with_template("  {prefix} [{bar:20}] epoch {pos}/{len} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                bar.set_prefix(format!("{place:>6} {} {}", &spec.id[..8], spec.label()));
                bars.push(bar);
            }
            let stdout = child.stdout.take().context("child stdout")?;
            let reader = progress_reader(stdout, idxs.iter().map(|&j| plan.runs[j].spec.id.clone()).zip(bars.iter().cloned()).collect());
            for &s in &taken {
                busy[s] = Some(i);
            }
            running.push(Running { idxs, slots: taken, child, reader, bars });
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
            let locked = r.reader.join().unwrap_or_default();
            for s in &r.slots {
                busy[*s] = None;
            }
            for b in &r.bars {
                b.finish_and_clear();
                mp.remove(b);
            }
            for &j in &r.idxs {
                let spec = &plan.runs[j].spec;
                let dir = &dirs[j];
                let o = if dir.is_finished() {
                    let s = dir.read_summary().map(|s| format!("top-1 last {:.2}% best {:.2}%", s.last_top1, s.best_top1)).unwrap_or_default();
                    say(&mp, opts.progress, format!("done  {} {}: {s}", &spec.id, spec.label()));
                    Outcome::Finished
                } else if locked.contains(&spec.id) {
                    say(&mp, opts.progress, format!("busy  {} {}: locked by another process", &spec.id, spec.label()));
                    Outcome::Locked
                } else {
                    let fail = read_fail(dir).unwrap_or_else(|| {
                        // The child died without a word (signal, OOM kill): record it ourselves.
                        let error = last_error(&dir.log()).unwrap_or_else(|| format!("exit status {status}"));
                        let f = FailStatus { state: "failed".into(), error, epoch: None, attempt: attempts[j] };
                        let _ = crate::store::write_json(&status_path(dir), &f);
                        f
                    });
                    if fail.state == "diverged" {
                        say(&mp, opts.progress, format!("DIVERGED {} {}: {} (log: {})", &spec.id, spec.label(), fail.error, dir.log().display()));
                        Outcome::Diverged(fail.error)
                    } else if attempts[j] <= opts.retries {
                        say(&mp, opts.progress, format!("retry {} {}: {} (attempt {} of {})", &spec.id, spec.label(), fail.error, attempts[j], opts.retries + 1));
                        continue; // outcome stays None: scheduled again
                    } else {
                        say(&mp, opts.progress, format!("FAIL  {} {}: {} (log: {})", &spec.id, spec.label(), fail.error, dir.log().display()));
                        Outcome::Failed(fail.error)
                    }
                };
                outcome[j] = Some(o);
                suite_bar.inc(1);
            }
        }
    }
    suite_bar.finish_and_clear();
    Ok(outcome.into_iter().map(|o| o.unwrap_or(Outcome::Skipped("not scheduled".into()))).collect())
}

/// Whether a run can start now.
enum Ready {
    Yes,
    /// A dependency has not finished yet.
    Wait,
    /// A dependency failed (or is missing): the run is skipped.
    Blocked(String),
}

/// The gate for teachers the suite trains, each compared once after it finished.
struct TeacherGate<'a> {
    gate: Option<std::sync::Arc<gate::Gate>>,
    results: &'a Path,
    verdicts: Vec<(String, Option<String>)>,
}

impl TeacherGate<'_> {
    /// Why the students of the finished teacher run `t` are skipped, if they are.
    fn blocks(&mut self, t: &crate::suite::RunSpec) -> Option<String> {
        let gate = self.gate.as_ref()?;
        if let Some((_, v)) = self.verdicts.iter().find(|(id, _)| *id == t.id) {
            return v.clone();
        }
        let v = gate::trained_teacher(gate, self.results, t, false).unwrap_or_else(|e| Some(format!("teacher gate: {e:#}")));
        self.verdicts.push((t.id.clone(), v.clone()));
        v
    }
}

fn readiness(plan: &Plan, i: usize, outcome: &[Option<Outcome>], index_of: &dyn Fn(&str) -> Option<usize>, gate: &mut TeacherGate<'_>) -> Ready {
    let mut ready = Ready::Yes;
    for d in &plan.runs[i].deps {
        let j = index_of(d);
        match j.and_then(|j| outcome[j].clone()) {
            Some(o) if o.done() => {
                // Only plainly trained teachers have a published value of their own.
                let t = j.map(|j| &plan.runs[j].spec).filter(|t| t.role == Role::Teacher && t.teachers.is_empty());
                if let Some(reason) = t.filter(|_| plan.runs[i].spec.role == Role::Student).and_then(|t| gate.blocks(t)) {
                    return Ready::Blocked(reason);
                }
            }
            Some(_) => return Ready::Blocked(format!("teacher {} ({}) did not finish", d, j.map(|j| plan.runs[j].spec.model.as_str()).unwrap_or("?"))),
            None if j.is_none() => return Ready::Blocked(format!("dependency {d} is not in this plan")),
            None => ready = Ready::Wait,
        }
    }
    ready
}

/// Reads a child's `@epoch <id> ...` lines into the members' bars; returns the ids it reported
/// as locked by another process.
fn progress_reader(stdout: std::process::ChildStdout, bars: Vec<(String, ProgressBar)>) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut locked = Vec::new();
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(id) = line.strip_prefix("@locked ") {
                locked.push(id.trim().to_string());
            } else if let Some(rest) = line.strip_prefix("@epoch ") {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let Some((_, b)) = f.first().and_then(|id| bars.iter().find(|(i, _)| i == id)) else { continue };
                if let (Some(e), Some(acc), Some(loss), Some(ips)) = (f.get(1).and_then(|x| x.parse::<u64>().ok()), f.get(3), f.get(4), f.get(5)) {
                    b.set_position(e);
                    b.set_message(format!("loss {loss} top-1 {acc} {ips} img/s"));
                }
            }
        }
        locked
    })
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

/// A run's state for `harness status`.
pub fn state_of(plan: &Plan, results: &Path, i: usize) -> (String, String) {
    let r = &plan.runs[i];
    let dir = RunDir::new(results, &plan.suite, &r.spec.id);
    let epoch = match crate::store::verify::check(&dir, &r.spec) {
        Health::Finished(s) => return ("done".into(), format!("last top-1 {:.2}%, best {:.2}% (epoch {})", s.last_top1, s.best_top1, s.best_epoch)),
        Health::Damaged(d) => return ("damaged".into(), format!("{d}; `harness run --retrain-damaged` moves its files aside and trains it again")),
        Health::Unfinished { epoch } => epoch,
    };
    let progress = epoch.map(|e| format!("epoch {e}/{} done", r.spec.train.epochs)).unwrap_or_default();
    if crate::store::lock_holder_alive(&dir) {
        let cohort = cohort_of(&dir).filter(|c| c.len() > 1).map(|c| {
            let others: Vec<&str> = c.iter().filter(|id| **id != r.spec.id).map(|id| &id[..id.len().min(8)]).collect();
            format!("; cohort of {} with {}", c.len(), others.join(", "))
        });
        return ("running".into(), format!("{progress}{}", cohort.unwrap_or_default()));
    }
    if let Some(f) = read_fail(&dir) {
        let at = f.epoch.map(|e| format!(" at epoch {e}")).unwrap_or_default();
        return (f.state.clone(), format!("{}{at}; log {}", f.error, dir.log().display()));
    }
    if let Some(reason) = gate::skipped_by(results, &r.spec) {
        return ("skipped".into(), reason);
    }
    for d in &r.deps {
        if let Some(j) = plan.runs.iter().position(|x| &x.spec.id == d) {
            let (st, _) = state_of(plan, results, j);
            if st == "failed" || st == "diverged" || st == "skipped" || st == "damaged" {
                return ("skipped".into(), format!("teacher {d} {st}"));
            }
        }
    }
    ("pending".into(), progress)
}

/// Groups finished runs of a plan for the end-of-run table: (role, model, method, teacher,
/// params) → (best top-1, last top-1) in percent over seeds; damaged runs are left out.
pub fn summarize(plan: &Plan, results: &Path) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut groups: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for r in &plan.runs {
        let d = RunDir::new(results, &plan.suite, &r.spec.id);
        let Health::Finished(s) = crate::store::verify::check(&d, &r.spec) else { continue };
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
