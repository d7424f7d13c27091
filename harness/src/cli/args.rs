//! The commands' flags (clap derive), one struct per command.

use std::path::PathBuf;

use clap::{Args, Subcommand};

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
    pub(super) fn options(&self) -> crate::suite::executor::SlurmOptions {
        crate::suite::executor::SlurmOptions {
            partition: self.partition.clone(),
            gres: self.gres.clone(),
            time: self.time.clone(),
            array_limit: self.array_limit,
            sbatch_args: self.sbatch_args.clone(),
        }
    }

    /// The first Slurm flag given, for "only with --executor slurm" errors.
    pub(super) fn first_given(&self) -> Option<&'static str> {
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
    /// The teacher gate (`teachers/gate.json` written by `run --executor slurm`): students of a
    /// trained teacher outside its published value are recorded as skipped, not trained.
    #[arg(long)]
    pub gate: Option<PathBuf>,
}
