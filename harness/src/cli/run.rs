//! `harness run`: the teacher gate, the local scheduler or Slurm, and the end-of-run table.

use std::path::Path;

use super::*;

pub(super) fn run(a: RunArgs) -> anyhow::Result<i32> {
    let (suite, mut plan, data_dir) = load_plan(&a.suite, a.data.data_dir.as_deref())?;
    if let Some(only) = &a.only {
        plan = sched::filter(&plan, only)?;
    }
    check_checkpoints(&suite, &plan)?;
    sched::guard_damaged(&plan, &a.results, a.retrain_damaged, a.dry_run)?;
    // The teacher gate: checkpoint teachers measured (once) and compared before anything trains.
    let gate = std::sync::Arc::new(sched::gate::Gate::new(&suite));
    let gated = if a.dry_run { Vec::new() } else { gate_checkpoint_teachers(&a, &plan, &gate, &data_dir)? };
    if a.executor == Executor::Slurm {
        let plan = sched::gate::without(&plan, &gated);
        return run_slurm(&a, &suite, &plan, &data_dir, (!a.force && gate.any()).then_some(gate.as_ref()));
    }
    if let Some(flag) = a.slurm.first_given() {
        crate::input_bail!("{flag} applies to --executor slurm only (this run uses the local executor)");
    }
    let devices = sched::parse_devices(a.devices.as_deref().unwrap_or("auto"))?; // validated before any child starts
    let finished = |r: &crate::suite::PlannedRun| crate::store::RunDir::new(&a.results, &plan.suite, &r.spec.id).is_finished();
    let cached = plan.runs.iter().filter(|r| finished(r)).count();
    println!("suite {}: {} runs ({} teachers, {} students), {} already finished", plan.suite, plan.runs.len(), plan.teachers(), plan.students(), cached);
    if a.dry_run {
        for r in plan.runs.iter().filter(|r| !finished(r)) {
            println!("would run {} {}", r.spec.id, r.spec.label());
        }
        return Ok(0);
    }
    let opts = sched::Options {
        gated,
        gate: (!a.force).then_some(gate),
        results: a.results.clone(),
        data_dir,
        devices: devices.clone(),
        per_gpu: a.per_gpu,
        jobs: a.jobs,
        threads: a.threads,
        retries: a.retries,
        progress: !a.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        cohort: if a.no_cohort { 1 } else { a.cohort.map(usize::from).unwrap_or_else(|| sched::default_cohort(&devices)) },
    };
    let outcomes = sched::run_plan(&plan, &opts)?;
    Ok(print_outcomes(&plan, &a.results, &outcomes))
}

/// Measures the checkpoint teachers of unfinished runs on the first device `run` would use
/// (the submitting machine's for Slurm) and returns the runs the gate skips.
pub(super) fn gate_checkpoint_teachers(a: &RunArgs, plan: &Plan, gate: &sched::gate::Gate, data_dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let devices = if a.executor == Executor::Slurm { sched::Devices::Cpu } else { sched::parse_devices(a.devices.as_deref().unwrap_or("auto"))? };
    let device = match &devices {
        sched::Devices::Cpu => tch::Device::Cpu,
        sched::Devices::Gpus(g) => tch::Device::Cuda(g.first().copied().unwrap_or(0)),
    };
    let pending = |i: usize| !crate::store::RunDir::new(&a.results, &plan.suite, &plan.runs[i].spec.id).is_finished();
    sched::gate::checkpoint_teachers(plan, gate, &a.results, data_dir, device, a.force, &pending)
}

/// Submits the suite to Slurm; with `--wait`, stays until its tasks have left the queue and
/// reports like the local executor.
pub(super) fn run_slurm(a: &RunArgs, suite: &Suite, plan: &Plan, data_dir: &Path, gate: Option<&sched::gate::Gate>) -> anyhow::Result<i32> {
    for (given, flag, instead) in [
        (a.devices.is_some(), "--devices", "--gres gpu:1"),
        (a.jobs != 1, "--jobs", "--array-limit"),
        (a.per_gpu != 1, "--per-gpu", "--gres"),
        (a.dry_run, "--dry-run", "`harness plan`"),
    ] {
        if given {
            crate::input_bail!("{flag} applies to the local executor; with --executor slurm use {instead}");
        }
    }
    let flags = a.slurm.options();
    flags
        .check()
        .map_err(|(k, m)| crate::error::InputError::new(format!("--{}: {m}", if k == "sbatch_args" { "sbatch-arg".into() } else { k.replace('_', "-") })))?;
    let absolute = |p: &Path| std::path::absolute(p).with_context(|| format!("resolving {}", p.display()));
    // Students of suite-trained teachers are gated by their own task, when the teacher finished.
    let gate = match gate {
        Some(g) => Some(absolute(&g.save(&a.results, &plan.suite)?)?),
        None => None,
    };
    let submit = sched::slurm::Submit {
        gate,
        results: absolute(&a.results)?,
        data_dir: absolute(data_dir)?,
        threads: a.threads,
        retries: a.retries,
        cohort: if a.no_cohort { 1 } else { a.cohort.map(usize::from).unwrap_or(4) },
        options: suite.slurm.merged(&flags),
    };
    let finished_before: Vec<bool> = plan.runs.iter().map(|r| crate::store::RunDir::new(&a.results, &plan.suite, &r.spec.id).is_finished()).collect();
    println!(
        "suite {}: {} runs ({} teachers, {} students), {} already finished",
        plan.suite,
        plan.runs.len(),
        plan.teachers(),
        plan.students(),
        finished_before.iter().filter(|f| **f).count()
    );
    let jobs = sched::slurm::submit(plan, &submit)?;
    for j in &jobs {
        println!("submitted level {}: Slurm job {} ({} run(s), script {})", j.level, j.job_id, j.runs.len(), j.script.display());
    }
    if !a.slurm.wait {
        println!("`harness status {}` shows their state; `harness cancel {}` cancels them", a.suite.display(), a.suite.display());
        return Ok(0);
    }
    sched::slurm::wait(plan, &jobs, std::time::Duration::from_secs(2))?;
    let outcomes: Vec<Outcome> = (0..plan.runs.len())
        .map(|i| {
            let (state, detail) = sched::state_of(plan, &a.results, i);
            if state != "done" {
                // As the local executor says it: the run and why (the gate's numbers, an error).
                let r = &plan.runs[i].spec;
                println!("{:<5} {} {}: {detail}", if state == "skipped" { "skip" } else { state.as_str() }, r.id, r.label());
            }
            match state.as_str() {
                "done" if finished_before[i] => Outcome::Cached,
                "done" => Outcome::Finished,
                "failed" => Outcome::Failed(detail),
                "diverged" => Outcome::Diverged(detail),
                other => Outcome::Skipped(format!("{other} {detail}")),
            }
        })
        .collect();
    Ok(print_outcomes(plan, &a.results, &outcomes))
}

/// The end-of-run table and counts; the exit status (1 when a run failed or did not run).
pub(super) fn print_outcomes(plan: &Plan, results: &Path, outcomes: &[Outcome]) -> i32 {
    let count = |f: &dyn Fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    let failed = count(&|o| matches!(o, Outcome::Failed(_) | Outcome::Diverged(_)));
    let skipped = count(&|o| matches!(o, Outcome::Skipped(_) | Outcome::Locked));
    println!();
    println!("{:<58} {:>3}  {:>16}  {:>16}", "run group (mean ± std over seeds)", "n", "best top-1 %", "last top-1 %");
    for (k, v) in sched::summarize(plan, results) {
        let (bm, bs) = sched::mean_std(&v.iter().map(|x| x.0).collect::<Vec<_>>());
        let (lm, ls) = sched::mean_std(&v.iter().map(|x| x.1).collect::<Vec<_>>());
        println!("{k:<58} {:>3}  {:>7.2} ± {:<6.2}  {:>7.2} ± {:<6.2}", v.len(), bm, bs, lm, ls);
    }
    println!();
    println!(
        "{} finished now, {} cached, {} failed, {} skipped; results in {}",
        count(&|o| *o == Outcome::Finished),
        count(&|o| *o == Outcome::Cached),
        failed,
        skipped,
        results.join(&plan.suite).display()
    );
    if failed + skipped > 0 { 1 } else { 0 }
}
