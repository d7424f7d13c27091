//! Command-line interface: clap commands that wire suite → sched → train → store.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::sched::{self, Outcome};
use crate::suite::{DataRef, Plan, Role, Suite};
use crate::{data, distill, env, models, report, train};

mod args;
mod plan;
mod results;
mod run;
mod tools;

pub use args::*;
use plan::{cancel_cmd, plan_cmd, status_cmd};
use results::{baseline_cmd, check_cmd, report_cmd};
use run::run;
use tools::{bench_cmd, doctor, eval};

#[derive(Parser, Debug)]
#[command(name = "harness", version, about = "Reproducible knowledge-distillation suites", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
    /// Most runs (grid points) a suite may expand to; a larger grid is refused before it is
    /// expanded (a typo in an axis can otherwise ask for billions).
    #[arg(long, global = true, default_value_t = crate::suite::MAX_GRID_POINTS)]
    pub max_runs: usize,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Train every run of a suite that has not finished (teachers first), then print a table.
    Run(RunArgs),
    /// Print the expanded run list (id, role, models, method, seed, settings) without training.
    Plan(PlanArgs),
    /// Show each run's state: done, running, failed, diverged, pending or skipped, with reasons
    /// (and, for a suite submitted to Slurm, each run's job id and Slurm state).
    Status(PlanArgs),
    /// Aggregate a suite's results over seeds: Parquet frames, paper tables, plots, index.
    Report(ReportArgs),
    /// Compare a suite's results with a baseline; exit 1 on a regression, 2 on bad input.
    Check(CheckArgs),
    /// Freeze a suite's current results as a baseline TOML for `check`.
    Baseline(BaselineArgs),
    /// Time the KD training step (resnet32x4 → resnet8x4 by default) against a PyTorch eager
    /// reference of the same step, side by side.
    Bench(BenchArgs),
    /// Cancel a suite's queued and running Slurm jobs (those `run --executor slurm` recorded).
    Cancel(PlanArgs),
    /// Evaluate a checkpoint on a dataset's test split.
    Eval(EvalArgs),
    /// Write a finished run's weights as a PyTorch state dict (.safetensors, PyTorch names).
    Export(ExportArgs),
    /// Dataset utilities.
    Data {
        #[command(subcommand)]
        cmd: DataCmd,
    },
    /// Versions, libtorch, CUDA and devices.
    Doctor,
    /// List the model zoo with parameter counts and native input sizes.
    Models,
    /// List distillation methods with their parameters and defaults.
    Methods,
    /// Evaluate one method's loss on arrays from a .npz (CPU, float64); prints JSON.
    LossEval(LossEvalArgs),
    /// Internal: train one run directory (what `run` starts in a child process).
    #[command(hide = true)]
    Exec(ExecArgs),
}

/// Runs a command; returns the process exit code (errors are returned for the caller to print).
pub fn main(cli: Cli) -> anyhow::Result<i32> {
    crate::suite::set_max_grid_points(cli.max_runs);
    match cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::Plan(a) => plan_cmd(a),
        Cmd::Status(a) => status_cmd(a),
        Cmd::Report(a) => report_cmd(a),
        Cmd::Check(a) => check_cmd(a),
        Cmd::Baseline(a) => baseline_cmd(a),
        Cmd::Bench(a) => bench_cmd(a),
        Cmd::Cancel(a) => cancel_cmd(a),
        Cmd::Eval(a) => eval(a),
        Cmd::Export(a) => {
            let e = models::checkpoint::export_run(&a.run_dir, &a.out)?;
            println!("exported {} ({} tensors, {} parameters) from {} to {}", e.model, e.tensors, e.params, a.run_dir.display(), a.out.display());
            Ok(0)
        }
        Cmd::Data { cmd: DataCmd::Synth { out, classes, train, test, seed, noise } } => {
            let dir = data::synth::write(&out, classes, train, test, seed, noise)?;
            println!("wrote {classes}-class synthetic data ({train} train, {test} test) to {}", dir.display());
            println!("use it with: dataset = \"{}\" and --data-dir {}", if classes == 10 { "cifar10" } else { "cifar100" }, out.display());
            Ok(0)
        }
        Cmd::Doctor => doctor(),
        Cmd::Models => {
            println!("{:<24} {:<16} {:>12}  native input", "model", "family", "params(100)");
            for e in models::entries() {
                let n = models::count_params(e, models::ModelCfg { in_channels: e.input.shape().map_or(3, |s| s.0), num_classes: 100 });
                println!("{:<24} {:<16} {:>12}  {}", e.name, e.family, n, e.input);
            }
            println!("(models pool globally: any HxW runs, channels follow the dataset, unless marked `only`)");
            Ok(0)
        }
        Cmd::Methods => {
            for m in distill::REGISTRY {
                let t = match m.teachers {
                    distill::Teachers::None => "teacher-free",
                    distill::Teachers::One => "one teacher",
                    distill::Teachers::Many => "two or more teachers",
                    distill::Teachers::Peers => "online peers",
                };
                println!("{} — {} [{t}; inputs: {}]", m.name, m.paper, m.inputs);
                for p in m.params {
                    println!("    {:<12} default {:<8} {}", p.name, p.default.to_string(), p.doc);
                }
            }
            Ok(0)
        }
        Cmd::LossEval(a) => {
            let arrays = data::npz::read_npz(&a.input)?;
            let out = distill::eval::loss_eval(&a.method, &arrays, &a.params, a.epoch).map_err(|e| e.context(format!("{}", a.input.display())))?;
            println!("{out}");
            Ok(0)
        }
        Cmd::Exec(a) => {
            if let Some(t) = a.threads {
                tch::set_num_threads(t);
            }
            let device = env::parse_device(&a.device)?;
            sched::exec(&a.run_dirs, &a.data_dir, device, a.gate.as_deref())
        }
    }
}

/// Loads a suite and its dataset fingerprint, and expands the plan; an absent dataset is an
/// input error that says how to get it.
fn load_plan(suite_path: &Path, data_flag: Option<&Path>) -> anyhow::Result<(Suite, Plan, PathBuf)> {
    plan_of(Suite::load(suite_path)?, data_flag)
}

/// [`load_plan`] for a suite already read.
fn plan_of(suite: Suite, data_flag: Option<&Path>) -> anyhow::Result<(Suite, Plan, PathBuf)> {
    let dir = data::resolve_dir(data_flag, suite.data_dir.as_deref());
    match (data_flag, &suite.data_dir) {
        (Some(_), _) => data::check_explicit_dir(&suite.dataset, &dir, "--data-dir", false)?,
        (None, Some(_)) => data::check_explicit_dir(&suite.dataset, &dir, &format!("{}: [suite].data_dir", suite.path().display()), true)?,
        (None, None) => {}
    }
    let fp = data::plan_fingerprint(&suite.dataset, &dir).map_err(|e| match data::availability::missing(&suite.dataset, &dir) {
        Some(m) => e.context(format!("{}: dataset {} is not there; to get it: {}", suite.path().display(), suite.dataset, m.how)),
        None => e,
    })?;
    let plan = suite.expand(&DataRef { name: suite.dataset.clone(), fingerprint: fp })?;
    Ok((suite, plan, dir))
}

/// Stands in for the dataset fingerprint in a plan made without the data: ids hash the
/// fingerprint, so such a plan's ids are provisional (shown with a `~`).
const NO_DATA_FINGERPRINT: &str = "waiting-for-data";

/// [`load_plan`] for `harness plan`: when the dataset is absent (not merely broken) the plan is
/// expanded with a placeholder fingerprint and the missing data is returned for the caller to show.
fn load_plan_waiting(suite_path: &Path, data_flag: Option<&Path>) -> anyhow::Result<(Suite, Plan, Option<data::availability::Missing>)> {
    let mut suite = Suite::load(suite_path)?;
    suite.allow_missing_checkpoints = true;
    let dir = data::resolve_dir(data_flag, suite.data_dir.as_deref());
    match data::availability::missing(&suite.dataset, &dir) {
        Some(m) => {
            let plan = suite.expand(&DataRef { name: suite.dataset.clone(), fingerprint: NO_DATA_FINGERPRINT.into() })?;
            Ok((suite, plan, Some(m)))
        }
        None => plan_of(suite, data_flag).map(|(s, p, _)| (s, p, None)),
    }
}

/// Validates every teacher checkpoint the plan uses (names, shapes, dtypes, finite values, BN
/// variances) before anything trains: a bad file is an error at `plan`/`run` time naming the
/// suite key, not a failure of its first student after other runs trained.
fn check_checkpoints(suite: &Suite, plan: &Plan) -> anyhow::Result<()> {
    let info = data::info(&suite.dataset).ok_or_else(|| crate::error::InputError::new(format!("unknown dataset `{}`", suite.dataset)))?;
    let cfg = models::ModelCfg { in_channels: info.shape.0, num_classes: info.classes };
    let mut seen = std::collections::BTreeSet::new();
    for r in &plan.runs {
        let parent = r.spec.prune.as_ref().map(|p| &p.parent);
        for t in r.spec.teachers.iter().chain(parent) {
            if let crate::suite::TeacherRef::Checkpoint { path, model, hash } = t {
                // A checkpoint `plan` is still waiting for has nothing to validate yet.
                if hash != crate::suite::MISSING_CHECKPOINT && seen.insert((path.clone(), model.clone())) {
                    models::checkpoint::validate(Path::new(path), model, cfg).map_err(|e| suite.checkpoint_error(path, e))?;
                }
            }
        }
    }
    Ok(())
}

