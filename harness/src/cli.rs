//! Command-line interface: clap commands that wire suite → sched → train → store.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::sched::{self, Outcome};
use crate::suite::{DataRef, Plan, Role, Suite};
use crate::{data, distill, env, models, report, train};

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

#[derive(Args, Debug)]
pub struct DataArgs {
    /// Folder holding the dataset (default: [suite].data_dir, then $KD_HARNESS_DATA, then ./data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Suite file (TOML).
    pub suite: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Results root; runs go to <results>/<suite>/runs/<id>/.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// Where runs execute: auto (all visible GPUs, else CPU), cpu, cuda, cuda:N or cuda:0,1,3
    /// (default auto; local executor only).
    #[arg(long, alias = "device")]
    pub devices: Option<String>,
    /// Runs sharing one GPU.
    #[arg(long, default_value_t = 1)]
    pub per_gpu: usize,
    /// Concurrent runs on the CPU (threads are split among them).
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Intra-op threads per CPU run (default: cores / jobs). CPU results are bit-identical for a
    /// given seed and thread count; a different thread count changes float summation order.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Extra attempts for a failed run (diverged runs are not retried).
    #[arg(long, default_value_t = 0)]
    pub retries: usize,
    /// Most runs trained together in one process when they share dataset, seed, batch size,
    /// epochs and teachers (one data stream, the teachers' forward pass once per batch; results
    /// are identical to training them alone). Default: from available memory (CPU), 4 per GPU.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub cohort: Option<u16>,
    /// Train every run alone (same as --cohort 1).
    #[arg(long, conflicts_with = "cohort")]
    pub no_cohort: bool,
    /// Only runs matching key=value[,key=value] (id, role, model, teacher, method, seed,
    /// train.<key>, <method>.<param>), plus the teachers they need.
    #[arg(long)]
    pub only: Option<String>,
    /// Print what would run, train nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// No progress bars: one line per event.
    #[arg(long)]
    pub quiet: bool,
    /// Move the files of damaged runs (results that fail verification) into
    /// `damaged-<UTC time>/` inside their run directories, kept, and train them again; without
    /// it a suite with damaged runs trains nothing and exits 2.
    #[arg(long)]
    pub retrain_damaged: bool,
    /// Train the students of a teacher whose measured accuracy is outside its [[expected]] value
    /// (the teacher gate skips them otherwise).
    #[arg(long)]
    pub force: bool,
    /// local: child processes on this machine; slurm: one job array per DAG level on the cluster.
    #[arg(long, value_enum, default_value = "local")]
    pub executor: Executor,
    #[command(flatten)]
    pub slurm: SlurmArgs,
}

/// Where `harness run` executes the runs.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum Executor {
    Local,
    Slurm,
}

/// Options of `--executor slurm`; each overrides the suite's `[executor.slurm]` key of the same name.
#[derive(Args, Debug, Default)]
pub struct SlurmArgs {
    /// Slurm partition.
    #[arg(long)]
    pub partition: Option<String>,
    /// Generic resources per run, e.g. gpu:1 (then runs train on the GPU Slurm assigns, else on CPU).
    #[arg(long)]
    pub gres: Option<String>,
    /// Time limit per run, HH:MM:SS (or any Slurm time format).
    #[arg(long)]
    pub time: Option<String>,
    /// Most runs of one DAG level running at once (the job array's %N throttle).
    #[arg(long)]
    pub array_limit: Option<usize>,
    /// Extra sbatch option, passed verbatim (repeatable), e.g. --sbatch-arg=--account=lab.
    #[arg(long = "sbatch-arg", allow_hyphen_values = true)]
    pub sbatch_args: Vec<String>,
    /// Stay until every submitted task has left the queue, then print the table (exit 1 if a run
    /// did not finish).
    #[arg(long)]
    pub wait: bool,
}

impl SlurmArgs {
    fn options(&self) -> crate::suite::executor::SlurmOptions {
        crate::suite::executor::SlurmOptions {
            partition: self.partition.clone(),
            gres: self.gres.clone(),
            time: self.time.clone(),
            array_limit: self.array_limit,
            sbatch_args: self.sbatch_args.clone(),
        }
    }

    /// The first Slurm flag given, for "only with --executor slurm" errors.
    fn first_given(&self) -> Option<&'static str> {
        let o = self.options();
        [
            (o.partition.is_some(), "--partition"),
            (o.gres.is_some(), "--gres"),
            (o.time.is_some(), "--time"),
            (o.array_limit.is_some(), "--array-limit"),
            (!o.sbatch_args.is_empty(), "--sbatch-arg"),
            (self.wait, "--wait"),
        ]
        .into_iter()
        .find(|(given, _)| *given)
        .map(|(_, f)| f)
    }
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    pub suite: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
}

/// Which results a report reads: a suite file (its plan, pending runs included) or a
/// `results/<suite>` directory (every run in it).
#[derive(Args, Debug)]
pub struct ResultsArgs {
    /// Suite file (TOML) or a results directory `results/<suite>`.
    pub suite: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// Accuracy shown and checked: `best` (best epoch) or `last` (last epoch); default from
    /// `[report].metric`, else `last`.
    #[arg(long)]
    pub metric: Option<String>,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    #[command(flatten)]
    pub from: ResultsArgs,
    /// Reports root; the report goes to <out>/<suite>/.
    #[arg(long, default_value = "reports")]
    pub out: PathBuf,
    /// Row keys of the paper table, comma-separated (e.g. `method,param.tau`).
    #[arg(long)]
    pub rows: Option<String>,
    /// Column keys (e.g. `pair`, `model`, `train.mixup_alpha`).
    #[arg(long)]
    pub cols: Option<String>,
    /// Method every other method is compared against (Welch's t-test).
    #[arg(long)]
    pub baseline: Option<String>,
    /// Tables and frames only.
    #[arg(long)]
    pub no_plots: bool,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub from: ResultsArgs,
    /// A baseline .toml (`harness baseline`), a runs.parquet (`harness report`), or `expected`
    /// (the suite's published numbers).
    #[arg(long)]
    pub baseline: String,
    /// Absolute tolerance in accuracy points (default: `[report].tolerance`, else k standard errors).
    #[arg(long)]
    pub tolerance: Option<f64>,
    /// Tolerance in standard errors of the difference of means (default `[report].k_se`, else 2).
    #[arg(long)]
    pub k_se: Option<f64>,
    /// Fewest seeds per side for a spread-derived tolerance (default `[report].min_seeds`, else 2).
    #[arg(long)]
    pub min_seeds: Option<usize>,
    /// Absolute tolerance in points for groups with fewer seeds than --min-seeds: a larger drop
    /// fails, a smaller one is a `few_seeds` warning.
    #[arg(long, default_value_t = 1.0)]
    pub few_seeds_tolerance: f64,
    /// `few_seeds` warnings fail the check too.
    #[arg(long)]
    pub strict: bool,
    /// `text` or `json`.
    #[arg(long, default_value = "text")]
    pub format: String,
}

#[derive(Args, Debug)]
pub struct BaselineArgs {
    #[command(flatten)]
    pub from: ResultsArgs,
    /// Baseline file to write (TOML).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[arg(long, default_value = "resnet32x4")]
    pub teacher: String,
    #[arg(long, default_value = "resnet8x4")]
    pub student: String,
    #[arg(long, default_value_t = 64)]
    pub batch: i64,
    /// Timed steps per measurement (after the warm-up).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Rounds, each measuring harness and reference alternately; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Intra-op threads for both sides (default: all cores).
    #[arg(long)]
    pub threads: Option<i32>,
    /// DataLoader workers of the PyTorch reference.
    #[arg(long, default_value_t = 0)]
    pub ref_workers: usize,
    /// Python with torch 2.11 for the reference (default: the setup script's venv).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Measure the harness alone.
    #[arg(long)]
    pub no_reference: bool,
    /// Harness side in NCHW layout (default: channels-last, as training, unless
    /// KD_HARNESS_CHANNELS_LAST=0).
    #[arg(long)]
    pub nchw: bool,
    /// Synthetic CIFAR-100 training images to draw batches from.
    #[arg(long, default_value_t = 2560)]
    pub images: i64,
    /// Students sharing each teacher forward on the harness side (images/s are per student).
    #[arg(long, default_value_t = 1)]
    pub cohort: i64,
    /// Harness side's precision: fp32, bf16 or fp16 (autocast forward passes, fp32 losses and SGD).
    #[arg(long, default_value = "fp32")]
    pub precision: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Model name from `harness models`.
    #[arg(long)]
    pub model: String,
    /// State dict (.safetensors) with PyTorch names.
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long)]
    pub dataset: String,
    #[command(flatten)]
    pub data: DataArgs,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Write the test-set logits (dataset order) as float32 .npy.
    #[arg(long)]
    pub save_logits: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// A run directory (`results/<suite>/runs/<id>`) with `summary.json` and `model.safetensors`.
    pub run_dir: PathBuf,
    /// Output file; loads with `model.load_state_dict(safetensors.torch.load_file(FILE))`.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct LossEvalArgs {
    /// Method name (see `harness methods`).
    pub method: String,
    /// .npz with `student`, `teacher`, `labels` and, where needed, `teachers`, `soft_targets`,
    /// `dense_argmax`, `features`.
    #[arg(long)]
    pub input: PathBuf,
    /// Method parameter, `key=value` (repeatable); defaults are the CIFAR-100 ones.
    #[arg(long = "param")]
    pub params: Vec<String>,
    /// 1-based epoch (for warm-ups such as DKD's).
    #[arg(long, default_value_t = 240)]
    pub epoch: u32,
}

#[derive(Subcommand, Debug)]
pub enum DataCmd {
    /// Write a class-structured synthetic dataset in the CIFAR binary layout.
    Synth {
        /// Output folder (gets cifar-10-batches-bin/ or cifar-100-binary/).
        #[arg(long)]
        out: PathBuf,
        /// 10 or 100.
        #[arg(long, default_value_t = 10)]
        classes: i64,
        #[arg(long, default_value_t = 5000)]
        train: i64,
        #[arg(long, default_value_t = 1000)]
        test: i64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Std of the per-pixel Gaussian noise (0–255 scale); higher is harder.
        #[arg(long, default_value_t = 40.0)]
        noise: f64,
    },
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Run directories to train together as one cohort (one data stream, shared teachers).
    #[arg(required = true)]
    pub run_dirs: Vec<PathBuf>,
    #[arg(long)]
    pub data_dir: PathBuf,
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Intra-op threads for this run.
    #[arg(long)]
    pub threads: Option<i32>,
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
            sched::exec(&a.run_dirs, &a.data_dir, device)
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

/// Loads the records a report works on, with the suite (when a suite file was given).
fn load_report(a: &ResultsArgs) -> anyhow::Result<(Option<Suite>, crate::report::Report, report::Options)> {
    let (suite, name, records, unreadable, teachers) = if a.suite.is_dir() {
        let (name, records, unreadable) = report::load::from_dir_checked(&a.suite)?;
        (None, name, records, unreadable, vec![])
    } else {
        let (suite, plan, _) = load_plan(&a.suite, a.data.data_dir.as_deref())?;
        let records = report::load::from_plan(&plan, &a.results)?;
        let teachers = sched::gate::teacher_lines(&plan, &sched::gate::Gate::new(&suite), &a.results);
        (Some(suite), plan.suite, records, vec![], teachers)
    };
    let mut o = report::Options::default();
    if let Some(s) = &suite {
        let r = &s.report;
        if let Some(m) = r.metric.as_deref().and_then(report::Metric::parse) {
            o.metric = m;
        }
        if let Some(v) = &r.rows {
            o.rows = v.clone();
        }
        if let Some(v) = &r.cols {
            o.cols = v.clone();
        }
        o.baseline = r.baseline.clone();
        o.alpha = r.alpha.unwrap_or(o.alpha);
        o.expected_tolerance = r.expected_tolerance.unwrap_or(o.expected_tolerance);
        o.gap_x = r.gap_x.clone().unwrap_or(o.gap_x);
    }
    if let Some(m) = &a.metric {
        o.metric = report::Metric::parse(m).ok_or_else(|| crate::error::InputError::new(format!("--metric: expected `best` or `last`, found `{m}`")))?;
    }
    let mut rep = report::Report::build(&name, records)?;
    rep.unreadable = unreadable;
    rep.teachers = teachers;
    Ok((suite, rep, o))
}

fn list(s: &str) -> Vec<String> {
    s.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect()
}

fn report_cmd(a: ReportArgs) -> anyhow::Result<i32> {
    let (suite, rep, mut o) = load_report(&a.from)?;
    for d in rep.damaged() {
        eprintln!("warning: damaged run, not aggregated (listed in the report): {d}");
    }
    if let Some(r) = &a.rows {
        o.rows = list(r);
    }
    if let Some(c) = &a.cols {
        o.cols = list(c);
    }
    if let Some(b) = &a.baseline {
        if distill::find(b).is_none() {
            crate::input_bail!("--baseline: unknown method `{b}`; see `harness methods`");
        }
        o.baseline = Some(b.clone());
    }
    o.plots = !a.no_plots;
    let expected = suite.as_ref().map(|s| s.expected.clone()).unwrap_or_default();
    let out = a.out.join(&rep.suite);
    let written = report::write(&rep, &o, &expected, &out).map_err(|e| match (&suite, crate::error::is_input_error(&e)) {
        (Some(s), true) => e.context(format!("{}", s.path().display())),
        _ => e,
    })?;
    print!("{}", report::table::main(&rep, &o, &expected)?.markdown());
    println!("\nwrote {} files to {} (open index.md or index.html)", written.files.len(), written.dir.display());
    Ok(0)
}

fn check_cmd(a: CheckArgs) -> anyhow::Result<i32> {
    let (suite, rep, o) = load_report(&a.from)?;
    let r = suite.as_ref().map(|s| s.report.clone()).unwrap_or_default();
    if let Some(t) = a.tolerance {
        if !(t >= 0.0 && t.is_finite()) {
            crate::input_bail!("--tolerance: expected points >= 0, found {t}");
        }
    }
    let k_se = a.k_se.or(r.k_se).unwrap_or(2.0);
    if !(k_se > 0.0 && k_se.is_finite()) {
        crate::input_bail!("--k-se: expected a number > 0, found {k_se}");
    }
    let min_seeds = a.min_seeds.or(r.min_seeds).unwrap_or(2);
    if min_seeds < 2 {
        crate::input_bail!("--min-seeds: expected at least 2 (a spread needs two seeds), found {min_seeds}");
    }
    if a.format != "text" && a.format != "json" {
        crate::input_bail!("--format: expected `text` or `json`, found `{}`", a.format);
    }
    let f = a.few_seeds_tolerance;
    if !(f >= 0.0 && f.is_finite()) {
        crate::input_bail!("--few-seeds-tolerance: expected points >= 0, found {f}");
    }
    let co = report::check::CheckOptions {
        tolerance: a.tolerance.or(r.tolerance),
        k_se,
        min_seeds,
        metric: o.metric,
        expected_tolerance: o.expected_tolerance,
        few_seeds_tolerance: f,
        strict: a.strict,
    };
    let expected = suite.as_ref().map(|s| s.expected.clone()).unwrap_or_default();
    let out = report::check::check(&rep, &a.baseline, &expected, &co)?;
    if a.format == "json" {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", out.text());
    }
    Ok(out.exit_code())
}

fn baseline_cmd(a: BaselineArgs) -> anyhow::Result<i32> {
    let (_suite, rep, o) = load_report(&a.from)?;
    let damaged = rep.damaged();
    if !damaged.is_empty() {
        crate::input_bail!(
            "{} damaged run(s); a baseline would freeze their absence. Retrain them (`harness run --retrain-damaged`) first:\n  {}",
            damaged.len(),
            damaged.join("\n  ")
        );
    }
    let b = report::check::freeze(&rep, o.metric);
    let text = format!("# harness baseline: `harness check <suite> --baseline {}`\n{}", a.out.display(), toml::to_string(&b)?);
    crate::store::write_atomic(&a.out, text.as_bytes())?;
    println!("wrote {} groups of {} ({}) to {}", b.groups.len(), b.suite, o.metric.describe(), a.out.display());
    Ok(0)
}

fn bench_cmd(a: BenchArgs) -> anyhow::Result<i32> {
    for (flag, v) in [("--batch", a.batch), ("--images", a.images), ("--steps", a.steps as i64), ("--rounds", a.rounds as i64), ("--cohort", a.cohort)] {
        if v < 1 {
            crate::input_bail!("{flag}: expected an integer >= 1, found {v}");
        }
    }
    if a.images < a.batch {
        crate::input_bail!("--images {}: expected at least one batch ({})", a.images, a.batch);
    }
    for m in [&a.teacher, &a.student] {
        if models::find(m).is_none() {
            crate::input_bail!("unknown model `{m}`; allowed: {}", models::names().join(", "));
        }
    }
    let precision = match train::precision::Precision::parse(&a.precision) {
        Ok(p) => p,
        Err(e) => crate::input_bail!("--precision: {e}"),
    };
    let device = env::parse_device(&a.device)?;
    train::precision::check_device(precision, device)?;
    let python = if a.no_reference {
        None
    } else {
        let p = a.python.clone().or_else(|| {
            let home = std::env::var_os("KD_HARNESS_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kd-harness")))?;
            Some(home.join("venv/bin/python"))
        });
        match p {
            Some(p) if p.is_file() => Some(p),
            Some(p) => crate::input_bail!("--python {}: not found; pass --python PATH (a python with torch 2.11) or --no-reference", p.display()),
            None => crate::input_bail!("no python for the reference; pass --python PATH or --no-reference"),
        }
    };
    let dir = std::env::temp_dir().join(format!("kd-harness-bench-{}", std::process::id()));
    data::synth::write(&dir, 100, a.images, 100, 0, 40.0)?;
    let result = (|| {
        let data = data::Dataset::load("cifar100", &dir, device)?;
        let threads = a.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get() as i32).unwrap_or(1));
        let o = train::bench::BenchOpts {
            teacher: a.teacher.clone(),
            student: a.student.clone(),
            batch: a.batch,
            steps: a.steps,
            warmup: a.warmup,
            rounds: a.rounds,
            threads,
            ref_workers: a.ref_workers,
            channels_last: !a.nchw && env::channels_last(),
            cohort: a.cohort as usize,
            precision,
            device,
            python,
        };
        let quiet = a.json;
        train::bench::run(&o, &data, &dir, &mut |msg| {
            if !quiet {
                eprintln!("{msg}");
            }
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let r = result?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", r.text());
    }
    Ok(0)
}

fn plan_cmd(a: PlanArgs) -> anyhow::Result<i32> {
    let (suite, plan, waiting) = load_plan_waiting(&a.suite, a.data.data_dir.as_deref())?;
    let missing = suite.missing_checkpoints();
    check_checkpoints(&suite, &plan)?;
    println!(
        "suite {} ({}): {} runs = {} teachers + {} students, from {} grid points",
        plan.suite,
        suite.path().display(),
        plan.runs.len(),
        plan.teachers(),
        plan.students(),
        plan.points
    );
    if let Some(m) = &waiting {
        println!("waiting for data: dataset {} not found (looked in {} for {})", suite.dataset, m.looked_in.display(), m.expected);
        println!("  to get it: {}", m.how);
        println!("  ids marked ~ are provisional: a run id includes the data's fingerprint, known once the data is there");
    }
    for (name, path) in &missing {
        println!("waiting for teacher `{name}`: checkpoint {} does not exist yet", path.display());
    }
    if !missing.is_empty() {
        println!("  to get mdistiller's released CIFAR-100 teachers: scripts/convert_released_teachers.sh cifar_teachers.tar (see README, Released teachers)");
        println!("  ids marked ~ are provisional: a student's id includes its teacher checkpoint's hash");
    }
    for line in sched::gate::teacher_lines(&plan, &sched::gate::Gate::new(&suite), &a.results) {
        println!("{line}");
    }
    let provisional = |s: &crate::suite::RunSpec| {
        waiting.is_some() || s.teachers.iter().any(|t| matches!(t, crate::suite::TeacherRef::Checkpoint { hash, .. } if hash == crate::suite::MISSING_CHECKPOINT))
    };
    // Columns as wide as the longest name (`mobilenetv2_tinyimagenet`), at least 12.
    let mw = plan.runs.iter().map(|r| r.spec.model.len()).max().unwrap_or(0).max(12);
    let tw = plan.runs.iter().map(|r| r.spec.teacher_models().len()).max().unwrap_or(0).max(12);
    println!("{:<16} {:<7} {:<mw$} {:<tw$} {:<6} {:>4}  {:<8} settings", "id", "role", "model", "teacher", "method", "seed", "status");
    for r in &plan.runs {
        let s = &r.spec;
        let status = match (&waiting, crate::store::verify::check(&crate::store::RunDir::new(&a.results, &plan.suite, &s.id), s)) {
            (Some(_), _) => "no data",
            _ if provisional(s) => "no teacher",
            (None, crate::store::verify::Health::Finished(_)) => "done",
            (None, crate::store::verify::Health::Damaged(_)) => "damaged",
            (None, _) => "pending",
        };
        let id = if provisional(s) { format!("~{}", s.id.get(..15).unwrap_or(&s.id)) } else { s.id.clone() };
        let role = if s.role == Role::Teacher { "teacher" } else { "student" };
        let mut params: Vec<String> = s.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if s.train.label_smoothing > 0.0 {
            params.push(format!("label_smoothing={}", s.train.label_smoothing));
        }
        if s.train.mixup_alpha > 0.0 {
            params.push(format!("mixup_alpha={}", s.train.mixup_alpha));
        }
        if !s.peers.is_empty() {
            params.push(format!("peers={}", s.peers.join("+")));
        }
        println!(
            "{:<16} {:<7} {:<mw$} {:<tw$} {:<6} {:>4}  {:<8} epochs={} bs={} lr={} {}",
            id,
            role,
            s.model,
            if s.teachers.is_empty() { "-".to_string() } else { s.teacher_models() },
            s.method,
            s.seed,
            status,
            s.train.epochs,
            s.train.batch_size,
            s.train.lr,
            params.join(" ")
        );
    }
    Ok(0)
}

fn status_cmd(a: PlanArgs) -> anyhow::Result<i32> {
    let (suite, plan, _) = load_plan(&a.suite, a.data.data_dir.as_deref())?;
    for line in sched::gate::teacher_lines(&plan, &sched::gate::Gate::new(&suite), &a.results) {
        println!("{line}");
    }
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    // A suite submitted to Slurm also shows each run's job array task and its Slurm state.
    let submitted = !sched::slurm::read_jobs(&a.results, &plan.suite)?.is_empty();
    let tasks = if submitted {
        // The harness's own states stand without Slurm (e.g. on a machine without its client).
        sched::slurm::run_tasks(&a.results, &plan.suite).unwrap_or_else(|e| {
            eprintln!("warning: cannot read the Slurm states: {e:#}");
            Default::default()
        })
    } else {
        Default::default()
    };
    if submitted {
        println!("{:<16} {:<8} {:<34} {:<12} {:<12} detail", "id", "state", "run", "slurm job", "slurm state");
    } else {
        println!("{:<16} {:<8} {:<34} detail", "id", "state", "run");
    }
    for i in 0..plan.runs.len() {
        let (state, detail) = sched::state_of(&plan, &a.results, i);
        let (id, label) = (&plan.runs[i].spec.id, plan.runs[i].spec.label());
        if submitted {
            let (job, st) = match tasks.get(id) {
                Some(t) if t.reason.is_empty() || t.reason == "None" => (t.task.clone(), t.state.clone()),
                Some(t) => (t.task.clone(), format!("{}({})", t.state, t.reason)),
                None => ("-".into(), "-".into()),
            };
            println!("{id:<16} {state:<8} {label:<34} {job:<12} {st:<12} {detail}");
        } else {
            println!("{id:<16} {state:<8} {label:<34} {detail}");
        }
        *counts.entry(state).or_default() += 1;
    }
    let c: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    println!("{}: {}", plan.suite, c.join(", "));
    Ok(0)
}

fn cancel_cmd(a: PlanArgs) -> anyhow::Result<i32> {
    let suite = Suite::load(&a.suite)?;
    let jobs = sched::slurm::cancel(&a.results, &suite.name)?;
    if jobs.is_empty() {
        println!("{}: no queued or running Slurm jobs", suite.name);
    } else {
        println!("{}: cancelled Slurm job(s) {}; `harness run` resumes the unfinished runs", suite.name, jobs.join(", "));
    }
    Ok(0)
}

fn run(a: RunArgs) -> anyhow::Result<i32> {
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
        return run_slurm(&a, &suite, &plan, &data_dir);
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
fn gate_checkpoint_teachers(a: &RunArgs, plan: &Plan, gate: &sched::gate::Gate, data_dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
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
fn run_slurm(a: &RunArgs, suite: &Suite, plan: &Plan, data_dir: &Path) -> anyhow::Result<i32> {
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
    let submit = sched::slurm::Submit {
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
fn print_outcomes(plan: &Plan, results: &Path, outcomes: &[Outcome]) -> i32 {
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

fn eval(a: EvalArgs) -> anyhow::Result<i32> {
    let device = env::parse_device(&a.device)?;
    let dir = data::resolve_dir(a.data.data_dir.as_deref(), None);
    if a.data.data_dir.is_some() {
        data::check_explicit_dir(&a.dataset, &dir, "--data-dir", false)?;
    }
    // Streamed datasets (ImageNet) decode the test split batch by batch.
    let data = data::Dataset::load(&a.dataset, &dir, device)?;
    let mut net = train::build(&a.model, &data, device)?;
    models::checkpoint::load_strict(&mut net.vs, &a.checkpoint, &a.model)?;
    let (logits, labels) = (train::test_logits(net.model.as_ref(), &data)?, data.test_y.to_device(tch::Device::Cpu));
    let e = train::evaluate(&logits, &labels);
    println!(
        "{} on {} test ({} images): top-1 {:.2}%  top-5 {:.2}%  ECE-15 {:.2}%  loss {:.4}",
        a.model,
        a.dataset,
        labels.size()[0],
        e.top1 * 100.0,
        e.top5 * 100.0,
        e.ece * 100.0,
        e.loss
    );
    if let Some(p) = a.save_logits {
        logits.write_npy(&p).map_err(|err| crate::error::InputError::new(format!("--save-logits {}: cannot write: {err}", p.display())))?;
        println!("wrote logits {:?} to {}", logits.size(), p.display());
    }
    Ok(0)
}

fn doctor() -> anyhow::Result<i32> {
    println!("harness {} (commit {})", env::harness_version(), env::git_commit());
    let ok = std::panic::catch_unwind(|| tch::Tensor::from_slice(&[1.0f32, 2.0]).sum(tch::Kind::Float).double_value(&[]));
    match ok {
        Ok(v) if v == 3.0 => {}
        _ => {
            eprintln!("error: libtorch is loaded but cannot run a tensor op; reinstall (see README)");
            return Ok(1);
        }
    }
    println!("libtorch {} at {}", env::torch_version(), env::torch_lib_dir().map(|p| p.display().to_string()).unwrap_or_else(|| "?".into()));
    let cuda_linked = env::torch_lib_dir().map(|d| d.join("libtorch_cuda.so")).filter(|p| p.exists()).is_some();
    let cuda_loaded = std::fs::read_to_string("/proc/self/maps").map(|m| m.contains("libtorch_cuda.so")).unwrap_or(false);
    println!(
        "libtorch_cuda: {}",
        if cuda_loaded {
            "loaded"
        } else if cuda_linked {
            "present but NOT loaded (CUDA disabled; check the link flags)"
        } else {
            "not in this libtorch (CPU build)"
        }
    );
    println!("CUDA available: {}", tch::Cuda::is_available());
    println!("CUDA devices: {}", tch::Cuda::device_count());
    for (i, n) in env::gpu_names().iter().enumerate() {
        println!("  cuda:{i}: {n}");
    }
    println!("cuDNN available: {}", tch::Cuda::cudnn_is_available());
    println!("intra-op threads: {}", tch::get_num_threads());
    println!("cores: {}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    Ok(0)
}
