//! The Slurm executor: instead of growing its own distributed system, the harness hands a suite's
//! runs to the cluster the lab already has and reads their state back.
//!
//! Runs are grouped by DAG level (teachers at 0, their students at 1, a student of a student at 2,
//! ...). Each level becomes one job array (`results/<suite>/slurm/level<L>.sh`, one task per run,
//! throttled with `%N`) that depends on the previous level with `afterok`, so a student never
//! starts before its teacher finished. Every task runs the same child entry point as the local
//! scheduler (`harness exec <run-dir>`) on the shared results directory, so run ids, atomic
//! writes, locks and resume behave exactly as locally: a preempted, requeued or cancelled task
//! continues from its last completed epoch when it runs again. The job ids of every submission
//! are kept in `results/<suite>/slurm/jobs.json` for `harness status` and `harness cancel`.
//! Nothing here reaches into training: tasks only see a run directory and their command line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::suite::Plan;
use crate::suite::executor::SlurmOptions;

/// How a suite is submitted.
#[derive(Clone, Debug)]
pub struct Submit {
    /// Absolute results root on storage shared with the compute nodes.
    pub results: PathBuf,
    /// Absolute dataset folder as the compute nodes see it.
    pub data_dir: PathBuf,
    /// Intra-op threads per run; `None` uses the task's `SLURM_CPUS_PER_TASK` (else 1).
    pub threads: Option<usize>,
    /// Extra attempts inside a task for a run that fails (not for diverged runs).
    pub retries: usize,
    /// Most runs per array task (one cohort); 1: one run per task.
    pub cohort: usize,
    /// The teacher gate each task applies to its students (`harness exec --gate`); `None`
    /// under `--force` or without published teacher values.
    pub gate: Option<PathBuf>,
    pub options: SlurmOptions,
}

/// One submitted job array (an entry of `jobs.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    pub job_id: String,
    pub level: usize,
    /// The level's run ids.
    pub runs: Vec<String>,
    /// Positions in `runs` each array task trains as one cohort; empty (jobs written before
    /// cohorts): task `i` trains `runs[i]`.
    #[serde(default)]
    pub tasks: Vec<Vec<usize>>,
    pub script: PathBuf,
    /// The sbatch arguments used, script last (to resubmit by hand or to audit).
    pub sbatch: Vec<String>,
    pub submitted_unix: u64,
}

impl Job {
    fn task_count(&self) -> usize {
        if self.tasks.is_empty() { self.runs.len() } else { self.tasks.len() }
    }

    /// (array index, run id) of every run.
    fn run_tasks(&self) -> Vec<(usize, &String)> {
        if self.tasks.is_empty() {
            return self.runs.iter().enumerate().collect();
        }
        self.tasks.iter().enumerate().flat_map(|(t, m)| m.iter().filter_map(move |&p| self.runs.get(p).map(|id| (t, id)))).collect()
    }
}

/// Groups a level's runs (plan indices) into cohorts of runs with equal [`crate::train::cohort_key`],
/// up to `max` each, in plan order; positions refer to `idx`.
fn cohorts(plan: &Plan, idx: &[usize], max: usize) -> Vec<Vec<usize>> {
    let keys: Vec<Option<String>> = idx.iter().map(|&i| if max > 1 { crate::train::cohort_key(&plan.runs[i].spec) } else { None }).collect();
    let mut out: Vec<Vec<usize>> = Vec::new();
    for p in 0..idx.len() {
        let spec = |q: usize| &plan.runs[idx[q]].spec;
        let fits = |c: &Vec<usize>| c.len() < max && keys[c[0]] == keys[p] && c.iter().all(|&q| crate::train::teachers_agree(spec(q), spec(p)));
        let open = keys[p].as_ref().and_then(|_| out.iter().position(fits));
        match open {
            Some(c) => out[c].push(p),
            None => out.push(vec![p]),
        }
    }
    out
}

/// A Slurm array task as the queue (or the accounting database) reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskState {
    /// `<job>_<index>`.
    pub task: String,
    /// Slurm's state (`PENDING`, `RUNNING`, `COMPLETED`, `CANCELLED`, ...) or `gone` when Slurm no
    /// longer knows the job (purged and no accounting).
    pub state: String,
    /// Why a pending task waits (`Dependency`, `JobArrayTaskLimit`, ...), else empty.
    pub reason: String,
}

impl TaskState {
    /// Still queued or running (anything Slurm has not finished with).
    pub fn active(&self) -> bool {
        const DONE: &[&str] = &[
            "gone",
            "COMPLETED",
            "CANCELLED",
            "FAILED",
            "TIMEOUT",
            "NODE_FAIL",
            "PREEMPTED",
            "OUT_OF_MEMORY",
            "BOOT_FAIL",
            "DEADLINE",
            "REVOKED",
            "SPECIAL_EXIT",
        ];
        !DONE.contains(&self.state.as_str())
    }
}

/// `results/<suite>/slurm`: batch scripts, task logs and `jobs.json`.
pub fn dir(results: &Path, suite: &str) -> PathBuf {
    results.join(suite).join("slurm")
}

fn jobs_path(results: &Path, suite: &str) -> PathBuf {
    dir(results, suite).join("jobs.json")
}

/// Every submission recorded for the suite, oldest first (empty when it was never submitted).
pub fn read_jobs(results: &Path, suite: &str) -> anyhow::Result<Vec<Job>> {
    let p = jobs_path(results, suite);
    if !p.exists() {
        return Ok(vec![]);
    }
    crate::store::read_json(&p)
}

/// DAG level of every unfinished run (0 without unfinished dependencies, else one more than its
/// deepest unfinished dependency); `None` for finished runs. A dependency outside the plan (not
/// possible after `filter`) is treated as satisfied.
pub fn levels(plan: &Plan, finished: &[bool]) -> Vec<Option<usize>> {
    fn level(plan: &Plan, finished: &[bool], i: usize, memo: &mut Vec<Option<Option<usize>>>, depth: usize) -> Option<usize> {
        if let Some(l) = memo[i] {
            return l;
        }
        let l = if finished[i] || depth > plan.runs.len() {
            None
        } else {
            let deps = plan.runs[i].deps.iter().filter_map(|d| plan.runs.iter().position(|r| &r.spec.id == d));
            Some(deps.filter_map(|j| level(plan, finished, j, memo, depth + 1)).map(|l| l + 1).max().unwrap_or(0))
        };
        memo[i] = Some(l);
        l
    }
    let mut memo = vec![None; plan.runs.len()];
    (0..plan.runs.len()).map(|i| level(plan, finished, i, &mut memo, 0)).collect()
}

/// Single-quotes a string for bash.
fn sh(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The batch script of one level: task `i` trains the cohort `tasks[i]` (run directories).
fn batch_script(suite: &str, level: usize, tasks: &[Vec<PathBuf>], exe: &Path, s: &Submit) -> String {
    let mut t = String::new();
    t.push_str("#!/bin/bash\n");
    t.push_str(&format!("# kd-harness suite `{suite}`, DAG level {level}: one array task per cohort, written by `harness run --executor slurm`.\n"));
    t.push_str("# Each task runs the local scheduler's child entry point (`harness exec`) on its run directories (a cohort\n");
    t.push_str("# shares one data stream and the teachers' passes); a requeued or resubmitted task resumes every run\n# from its last completed epoch.\n");
    t.push_str("case $SLURM_ARRAY_TASK_ID in\n");
    for (i, runs) in tasks.iter().enumerate() {
        let list: Vec<String> = runs.iter().map(|r| sh(&r.to_string_lossy())).collect();
        t.push_str(&format!("  {i}) RUNS=({}) ;;\n", list.join(" ")));
    }
    t.push_str("  *) echo \"kd-harness: no cohort for array task $SLURM_ARRAY_TASK_ID\" >&2; exit 2 ;;\nesac\n");
    t.push_str("RUN=${RUNS[0]}\n");
    match s.threads {
        Some(n) => t.push_str(&format!("THREADS={n}\n")),
        None => t.push_str("THREADS=${SLURM_CPUS_PER_TASK:-1}\n"),
    }
    let device = if s.options.wants_gpu() {
        // Slurm exposes the allocated GPU(s) through CUDA_VISIBLE_DEVICES.
        "auto"
    } else {
        t.push_str("export CUDA_VISIBLE_DEVICES=\n");
        "cpu"
    };
    // Where and when each task started, in the run's own log (next to "resuming run ...").
    t.push_str("echo \"slurm task ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} on $(hostname) starts at unix time $(date +%s)\" >>\"$RUN/log.txt\"\n");
    t.push_str(&format!("for attempt in $(seq 1 {}); do\n", s.retries + 1));
    t.push_str(&format!(
        "  {} exec \"${{RUNS[@]}}\" --data-dir {} --device {device} --threads \"$THREADS\"{} 2>>\"$RUN/log.txt\"\n",
        sh(&exe.to_string_lossy()),
        sh(&s.data_dir.to_string_lossy()),
        s.gate.as_ref().map(|g| format!(" --gate {}", sh(&g.to_string_lossy()))).unwrap_or_default()
    ));
    t.push_str("  code=$?\n");
    t.push_str(&format!(
        "  # finished, bad input, locked by another process, diverged: another attempt cannot help\n  case $code in 0|2|{}|{}) exit $code ;; esac\n",
        super::EXIT_LOCKED,
        super::EXIT_DIVERGED
    ));
    t.push_str("  echo \"kd-harness: attempt $attempt for $RUN exited with $code\" >&2\n");
    t.push_str("done\nexit $code\n");
    t
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Runs a Slurm client command; an absent command names the likely cause.
fn slurm_cmd(cmd: &mut Command, name: &str) -> anyhow::Result<std::process::Output> {
    cmd.output()
        .with_context(|| format!("running `{name}`: is this a Slurm login node with the Slurm client installed? (scripts/slurm.sh up starts a local one)"))
}

/// Submits the unfinished runs of `plan`, one job array per DAG level chained with `afterok`, and
/// records the jobs in `jobs.json`. Refuses while earlier jobs of the suite are still queued, so a
/// run is never queued twice. Returns the new jobs (none when everything had finished).
pub fn submit(plan: &Plan, s: &Submit) -> anyhow::Result<Vec<Job>> {
    let earlier = read_jobs(&s.results, &plan.suite)?;
    let live: Vec<String> = query(&earlier)?.into_values().filter(TaskState::active).map(|t| t.task).collect();
    if !live.is_empty() {
        anyhow::bail!(
            "suite {} still has Slurm tasks in the queue ({}); wait for them (`harness status`) or cancel them (`harness cancel`) before submitting again",
            plan.suite,
            live.join(", ")
        );
    }
    let (dirs, finished) = super::prepare(plan, &s.results)?;
    let level = levels(plan, &finished);
    let exe = std::env::current_exe().context("locating the harness executable")?;
    let out = dir(&s.results, &plan.suite);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut all = earlier;
    let mut new = Vec::new();
    let depth = level.iter().flatten().max().map(|m| m + 1).unwrap_or(0);
    for l in 0..depth {
        let idx: Vec<usize> = (0..plan.runs.len()).filter(|&i| level[i] == Some(l)).collect();
        let tasks = cohorts(plan, &idx, s.cohort);
        let task_dirs: Vec<Vec<PathBuf>> = tasks.iter().map(|c| c.iter().map(|&p| dirs[idx[p]].path.clone()).collect()).collect();
        let script = out.join(format!("level{l}.sh"));
        crate::store::write_atomic(&script, batch_script(&plan.suite, l, &task_dirs, &exe, s).as_bytes())?;
        let throttle = s.options.array_limit.map(|n| format!("%{n}")).unwrap_or_default();
        let mut args = vec![
            "--parsable".to_string(),
            format!("--job-name=kd-{}-L{l}", plan.suite),
            format!("--array=0-{}{throttle}", tasks.len() - 1),
            format!("--output={}", out.join("%A_%a.out").display()),
        ];
        if let Some(prev) = new.last().map(|j: &Job| j.job_id.clone()) {
            // A level waits for the whole previous level; if any of it fails or is cancelled,
            // Slurm cancels this level instead of leaving it pending forever.
            args.push(format!("--dependency=afterok:{prev}"));
            args.push("--kill-on-invalid-dep=yes".into());
        }
        for (flag, v) in [("--partition", &s.options.partition), ("--gres", &s.options.gres), ("--time", &s.options.time)] {
            if let Some(v) = v {
                args.push(format!("{flag}={v}"));
            }
        }
        args.extend(s.options.sbatch_args.iter().cloned());
        args.push(script.to_string_lossy().into_owned());
        let o = slurm_cmd(Command::new("sbatch").args(&args), "sbatch")?;
        let stdout = String::from_utf8_lossy(&o.stdout);
        let job_id = stdout.trim().split(';').next().unwrap_or("").to_string();
        if !o.status.success() || job_id.is_empty() || !job_id.chars().all(|c| c.is_ascii_digit()) {
            anyhow::bail!("sbatch {} failed ({}): {}{}", args.join(" "), o.status, String::from_utf8_lossy(&o.stderr).trim(), stdout.trim());
        }
        let runs = idx.iter().map(|&i| plan.runs[i].spec.id.clone()).collect();
        let job = Job { job_id, level: l, runs, tasks, script, sbatch: args, submitted_unix: now_unix() };
        all.push(job.clone());
        new.push(job);
        // Recorded after every submission, so a failure at a later level loses no job id.
        crate::store::write_json(&jobs_path(&s.results, &plan.suite), &all)?;
    }
    Ok(new)
}

/// The state of every task of `jobs`, keyed `<job>_<index>`: live and recently finished tasks
/// from `squeue`, older ones from `sacct` where the cluster keeps accounting, else `gone`.
pub fn query(jobs: &[Job]) -> anyhow::Result<BTreeMap<String, TaskState>> {
    let mut out = BTreeMap::new();
    if jobs.is_empty() {
        return Ok(out);
    }
    let ids: Vec<&str> = jobs.iter().map(|j| j.job_id.as_str()).collect();
    let o = slurm_cmd(Command::new("squeue").args(["-h", "-r", "-t", "all", "-o", "%i|%T|%r", "-j", &ids.join(",")]), "squeue")?;
    let err = String::from_utf8_lossy(&o.stderr);
    // squeue fails when none of the ids is known any more (purged); that is not an error here.
    if !o.status.success() && !err.contains("Invalid job id") {
        anyhow::bail!("squeue failed ({}): {}", o.status, err.trim());
    }
    let parse = |text: &str, out: &mut BTreeMap<String, TaskState>| {
        for line in text.lines() {
            let f: Vec<&str> = line.trim().split('|').collect();
            if let [task, state, rest @ ..] = f.as_slice() {
                // sacct says `CANCELLED by 0`; pending, not yet split arrays show as `12_[3-5]`.
                let state = state.split_whitespace().next().unwrap_or("").to_string();
                if task.contains('_') && !task.contains('[') {
                    out.insert(task.to_string(), TaskState { task: task.to_string(), state, reason: rest.first().map(|r| r.to_string()).unwrap_or_default() });
                }
            }
        }
    };
    parse(&String::from_utf8_lossy(&o.stdout), &mut out);
    let tasks = || jobs.iter().flat_map(|j| (0..j.task_count()).map(move |i| format!("{}_{i}", j.job_id)));
    let missing: Vec<String> = tasks().filter(|t| !out.contains_key(t)).collect();
    if !missing.is_empty() {
        // Without an accounting database sacct fails; the tasks are then simply gone.
        if let Ok(o) = Command::new("sacct").args(["-n", "-X", "-P", "-o", "JobID,State", "-j", &ids.join(",")]).output() {
            if o.status.success() {
                let mut found = BTreeMap::new();
                parse(&String::from_utf8_lossy(&o.stdout), &mut found);
                for (k, v) in found {
                    out.entry(k).or_insert(TaskState { reason: String::new(), ..v });
                }
            }
        }
    }
    for t in tasks() {
        out.entry(t.clone()).or_insert(TaskState { task: t, state: "gone".into(), reason: String::new() });
    }
    Ok(out)
}

/// The Slurm task of each run of the suite from its latest submission, with the task's state.
pub fn run_tasks(results: &Path, suite: &str) -> anyhow::Result<BTreeMap<String, TaskState>> {
    let jobs = read_jobs(results, suite)?;
    let states = query(&jobs)?;
    let mut out = BTreeMap::new();
    for j in &jobs {
        for (i, id) in j.run_tasks() {
            if let Some(st) = states.get(&format!("{}_{i}", j.job_id)) {
                out.insert(id.clone(), st.clone()); // later submissions overwrite earlier ones
            }
        }
    }
    Ok(out)
}

/// Blocks until every task of `jobs` has left the queue, printing each task's state changes.
pub fn wait(plan: &Plan, jobs: &[Job], poll: Duration) -> anyhow::Result<()> {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut failures = 0;
    loop {
        // A busy controller can time out a query now and then; only a lasting failure ends the wait.
        let states = match query(jobs) {
            Ok(s) => {
                failures = 0;
                s
            }
            Err(e) if failures < 10 => {
                failures += 1;
                eprintln!("warning: {e:#} (retrying)");
                std::thread::sleep(poll);
                continue;
            }
            Err(e) => return Err(e.context("waiting for the suite's Slurm jobs (they keep running; `harness status` shows them)")),
        };
        for j in jobs {
            for (i, id) in j.run_tasks() {
                let Some(st) = states.get(&format!("{}_{i}", j.job_id)) else { continue };
                if seen.get(&format!("{}/{id}", st.task)) != Some(&st.state) {
                    let label = plan.runs.iter().find(|r| &r.spec.id == id).map(|r| r.spec.label()).unwrap_or_default();
                    let why = if st.reason.is_empty() || st.reason == "None" { String::new() } else { format!(" ({})", st.reason) };
                    println!("slurm {:<10} {:<10} {id} {label}{why}", st.task, st.state);
                    seen.insert(format!("{}/{id}", st.task), st.state.clone());
                }
            }
        }
        if !states.values().any(TaskState::active) {
            return Ok(());
        }
        std::thread::sleep(poll);
    }
}

/// Cancels the suite's queued and running tasks (`scancel` on their jobs); returns the job ids.
pub fn cancel(results: &Path, suite: &str) -> anyhow::Result<Vec<String>> {
    let jobs = read_jobs(results, suite)?;
    let states = query(&jobs)?;
    let live: Vec<String> = jobs
        .iter()
        .filter(|j| (0..j.task_count()).any(|i| states.get(&format!("{}_{i}", j.job_id)).is_some_and(TaskState::active)))
        .map(|j| j.job_id.clone())
        .collect();
    if live.is_empty() {
        return Ok(live);
    }
    let o = slurm_cmd(Command::new("scancel").args(&live), "scancel")?;
    if !o.status.success() {
        anyhow::bail!("scancel {} failed ({}): {}", live.join(" "), o.status, String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(live)
}
