//! Suites: the TOML schema, validation with file:line errors, grid expansion (zip × product),
//! and the resolved, content-addressed run list (`Plan`).
//!
//! ```toml
//! [suite]
//! name = "quick"
//! dataset = "digits"
//! seeds = [0, 1, 2]
//! [train]                      # default recipe (any key of `Recipe`)
//! epochs = 30
//! [teachers.cnn]               # a named teacher: trained once, shared by its students
//! model = "cnn_small"
//! train = { epochs = 40 }      # (or checkpoint = "file.safetensors")
//! [methods.kd]                 # suite-wide method parameters
//! tau = 4.0
//! [grid]
//! pair = [{ teacher = "cnn", student = "cnn_tiny" }]   # array of tables: a zipped axis
//! method = ["ce", "kd"]                                 # array of values: a crossed axis
//! [executor.slurm]             # defaults for `harness run --executor slurm` (flags override)
//! partition = "gpu"            # also gres, time, array_limit, sbatch_args
//! ```
//! Grid keys: `teacher`, `teachers` (multi-teacher), `chain` (TAKD), `peers` (online), `student`, `method`, `seed`, `save_model`, `exclusive`, `train.<recipe key>`,
//! `teacher.train.<recipe key>`, `teacher.seed`, `teacher.prune.sparsity`, `teacher.prune.method`, `student_from_teacher`, `<method>.<param>`.
//!
//! Pruned teachers (PrUE, prune-then-distill): a teacher entry with
//! `prune = { method = "prue" | "magnitude", sparsity = 0.5, rate = 0.2, batch = 500, train = { ... } }`
//! is trained dense, then pruned and fine-tuned as runs of their own (one per magnitude round),
//! each with its parent's id in its config; students distil from the last stage.

pub mod executor;
pub mod source;
mod parse;
mod resolve;
pub mod spec;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use source::Seg;
use source::Source;
pub use spec::{DataRef, ParamValue, Recipe, Role, RunSpec, TeacherRef};

use crate::error::InputError;
use crate::{data, distill, models};

/// A validated suite file, before expansion.
pub struct Suite {
    pub name: String,
    pub description: String,
    pub dataset: String,
    /// `[suite].data_dir`, resolved against the suite file's directory.
    pub data_dir: Option<PathBuf>,
    pub seeds: Vec<u64>,
    pub train: Recipe,
    pub teachers: BTreeMap<String, TeacherDecl>,
    /// `[methods.<name>]` parameter overrides.
    pub methods: BTreeMap<String, BTreeMap<String, (toml::Value, Vec<Seg>)>>,
    pub axes: Vec<Axis>,
    /// Published results with their source (`[[expected]]`).
    pub expected: Vec<Expected>,
    /// `[report]` layout and check settings.
    pub report: ReportSpec,
    /// `[executor.slurm]` (all `None` when absent).
    pub slurm: executor::SlurmOptions,
    /// Plan with placeholders for teacher checkpoints that do not exist yet (`harness plan`
    /// only: their students' ids are provisional, as without the data).
    pub allow_missing_checkpoints: bool,
    src: Source,
}

/// Stands in for the hash of a teacher checkpoint that is not there yet (`harness plan`).
pub const MISSING_CHECKPOINT: &str = "waiting-for-checkpoint";

/// A `[teachers.<name>]` table.
pub struct TeacherDecl {
    pub model: String,
    pub seed: u64,
    pub train: Vec<(String, toml::Value, Vec<Seg>)>,
    pub checkpoint: Option<PathBuf>,
    /// Teachers this teacher is itself distilled from (teacher assistants, born-again generations).
    pub teachers: Vec<String>,
    /// Its training method: `ce` by default, `kd` by default when it has teachers.
    pub method: Option<String>,
    /// `prune = { ... }`: students get this teacher pruned and fine-tuned (spec §6/§7).
    pub prune: Option<PruneDecl>,
    path: Vec<Seg>,
}

/// A teacher's `prune` table.
#[derive(Clone, Debug)]
pub struct PruneDecl {
    /// `prue` (one shot) or `magnitude` (iterative, 20% of the remaining weights per round).
    pub method: String,
    /// Target sparsity in (0, 1); the grid key `teacher.prune.sparsity` overrides it.
    pub sparsity: f64,
    /// magnitude: fraction of the remaining weights removed per round (prune-then-distill: 0.2).
    pub rate: f64,
    /// PrUE: batch of the sorted-by-label criterion pass (official code: 500).
    pub batch: u32,
    /// Recipe overrides for fine-tuning (PrUE) or each retraining round (magnitude), applied on
    /// top of the teacher's own recipe.
    pub train: Vec<(String, toml::Value, Vec<Seg>)>,
    path: Vec<Seg>,
}

const PRUNE_KEYS: &[&str] = &["method", "sparsity", "rate", "batch", "train"];

/// A key assignment inside a grid point, with where it came from (for errors).
#[derive(Clone, Debug)]
pub struct Setting {
    pub key: String,
    pub value: toml::Value,
    pub path: Vec<Seg>,
}

/// One grid axis: a crossed list of values for one key, or a zipped list of key groups.
#[derive(Clone, Debug)]
pub enum Axis {
    Product { key: String, values: Vec<Setting> },
    Zip { name: String, entries: Vec<Vec<Setting>> },
}

impl Axis {
    fn len(&self) -> usize {
        match self {
            Axis::Product { values, .. } => values.len(),
            Axis::Zip { entries, .. } => entries.len(),
        }
    }
    fn point(&self, i: usize) -> Vec<Setting> {
        match self {
            Axis::Product { values, .. } => vec![values[i].clone()],
            Axis::Zip { entries, .. } => entries[i].clone(),
        }
    }
}

/// One planned run and the runs it waits for.
#[derive(Clone, Debug)]
pub struct PlannedRun {
    pub spec: RunSpec,
    pub deps: Vec<String>,
}

/// The expanded suite: runs in execution order (teachers first), deduplicated by id.
#[derive(Clone, Debug)]
pub struct Plan {
    pub suite: String,
    pub runs: Vec<PlannedRun>,
    /// Grid points before deduplication.
    pub points: usize,
}

impl Plan {
    pub fn teachers(&self) -> usize {
        self.runs.iter().filter(|r| r.spec.role == Role::Teacher).count()
    }
    pub fn students(&self) -> usize {
        self.runs.len() - self.teachers()
    }
}

const SUITE_SECTIONS: &[&str] = &["suite", "train", "teachers", "methods", "grid", "expected", "report", "executor"];
const REPORT_KEYS: &[&str] = &["rows", "cols", "metric", "baseline", "alpha", "tolerance", "k_se", "min_seeds", "expected_tolerance", "gap_x"];

/// How `harness report` lays out the suite's tables and how `harness check` judges it
/// (`[report]`); every key is optional. Column names are checked against the results at
/// report time, since they include method parameters.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ReportSpec {
    /// Row keys of the paper table (default `["method"]`).
    pub rows: Option<Vec<String>>,
    /// Column keys (default `["pair"]`, i.e. teacher→student).
    pub cols: Option<Vec<String>>,
    /// `best` or `last` epoch top-1.
    pub metric: Option<String>,
    /// Method every other method is compared against per teacher/student pair.
    pub baseline: Option<String>,
    /// Significance level of the Welch tests.
    pub alpha: Option<f64>,
    /// `check`: absolute tolerance in accuracy points.
    pub tolerance: Option<f64>,
    /// `check`: tolerance in standard errors of the difference, when no absolute one is set.
    pub k_se: Option<f64>,
    /// `check`: fewest seeds per group for a spread-derived tolerance.
    pub min_seeds: Option<usize>,
    /// Largest |ours − published| (points) before a cell is marked.
    pub expected_tolerance: Option<f64>,
    /// x axis of the teacher-gap plot: `teacher_top1`, `teacher_params` (teacher size) or a
    /// numeric column such as `teacher.train.epochs`.
    pub gap_x: Option<String>,
}
const EXPECTED_KEYS: &[&str] = &["teacher", "student", "method", "top1", "std", "metric", "source"];

/// A published number the suite should reproduce (`[[expected]]`), for reports to compare against.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Expected {
    pub teacher: Option<String>,
    pub student: String,
    pub method: String,
    /// Top-1 in percent.
    pub top1: f64,
    pub std: Option<f64>,
    /// `best` (best epoch, the DKD convention) or `last` (last epoch, the CRD convention).
    pub metric: String,
    pub source: String,
}
const SUITE_KEYS: &[&str] = &["name", "description", "dataset", "data_dir", "seeds"];
const TEACHER_KEYS: &[&str] = &["model", "seed", "train", "checkpoint", "teacher", "teachers", "method", "prune"];
/// Deepest teacher chain followed before reporting a cycle.
const MAX_CHAIN: usize = 32;
const GRID_KEYS: &[&str] = &[
    "teacher",
    "teachers",
    "chain",
    "peers",
    "student",
    "method",
    "seed",
    "save_model",
    "exclusive",
    "student_from_teacher",
    "train.<key>",
    "teacher.train.<key>",
    "teacher.seed",
    "teacher.prune.sparsity",
    "teacher.prune.method",
    "<method>.<param>",
];

fn key(k: &str) -> Seg {
    Seg::Key(k.to_string())
}

fn input(msg: String) -> anyhow::Error {
    anyhow::Error::new(InputError(msg))
}

impl Suite {
    /// Teacher checkpoints the suite names that do not exist (what `plan` waits for).
    pub fn missing_checkpoints(&self) -> Vec<(String, PathBuf)> {
        self.teachers.iter().filter_map(|(n, d)| d.checkpoint.as_ref().filter(|c| std::fs::symlink_metadata(c).is_err()).map(|c| (n.clone(), c.clone()))).collect()
    }

    /// The suite file this was read from.
    pub fn path(&self) -> &Path {
        &self.src.path
    }

    /// Expands the grid into resolved runs for a dataset (its fingerprint goes into every id).
    /// Deterministic: axes in key order, seeds innermost; duplicates (same id) are merged.
    pub fn expand(&self, data: &DataRef) -> anyhow::Result<Plan> {
        let info = data::info(&self.dataset).ok_or_else(|| input(format!("unknown dataset {}", self.dataset)))?;
        let mut axes = self.axes.clone();
        if !axes.iter().any(|a| matches!(a, Axis::Product { key, .. } if key == "seed"))
            && !axes.iter().any(|a| matches!(a, Axis::Zip { entries, .. } if entries.iter().flatten().any(|s| s.key == "seed")))
        {
            let values = self
                .seeds
                .iter()
                .enumerate()
                .map(|(i, s)| Setting { key: "seed".into(), value: toml::Value::Integer(*s as i64), path: vec![key("suite"), key("seeds"), Seg::Idx(i)] })
                .collect();
            axes.push(Axis::Product { key: "seed".into(), values });
        }
        let total = grid_size(&self.src, &axes)?;
        let mut teachers: Vec<PlannedRun> = Vec::new();
        let mut students: Vec<PlannedRun> = Vec::new();
        let mut index: BTreeMap<String, (Role, usize)> = BTreeMap::new();
        for n in 0..total {
            // Mixed-radix decomposition: the first axis varies slowest.
            let mut rem = n;
            let mut point = Vec::new();
            let mut idx = vec![0; axes.len()];
            for (ai, a) in axes.iter().enumerate().rev() {
                idx[ai] = rem % a.len();
                rem /= a.len();
            }
            for (ai, a) in axes.iter().enumerate() {
                point.extend(a.point(idx[ai]));
            }
            let (teacher_runs, student) = self.resolve(&point, data, info)?;
            for t in teacher_runs {
                let parent = t.prune.as_ref().map(|p| &p.parent);
                let deps = t.teachers.iter().chain(parent).filter_map(|r| if let TeacherRef::Run { id, .. } = r { Some(id.clone()) } else { None }).collect();
                add_run(&mut index, &mut teachers, &mut students, PlannedRun { spec: t, deps });
            }
            add_run(&mut index, &mut teachers, &mut students, student);
        }
        let mut runs = teachers;
        runs.extend(students);
        Ok(Plan { suite: self.name.clone(), runs, points: total })
    }
}

impl Suite {
    /// An input error pointing at `[report].<field>` in the suite file.
    pub fn report_error(&self, field: &str, msg: impl Into<String>) -> anyhow::Error {
        input(self.src.error(&[key("report"), key(field)], msg.into()))
    }

    /// An input error pointing at the `checkpoint` key of the teacher declaring `path`.
    pub fn checkpoint_error(&self, path: &str, e: anyhow::Error) -> anyhow::Error {
        let at = self.teachers.values().find(|d| d.checkpoint.as_ref().is_some_and(|c| c.display().to_string() == path));
        match at {
            Some(d) => input(self.src.error(&[d.path.clone(), vec![key("checkpoint")]].concat(), format!("{e:#}"))),
            None => e,
        }
    }
}

/// Most grid points a suite may expand to (runs before deduplication). Expansion resolves every
/// point in memory, so a typo such as a 1000-value axis crossed with others is refused up front.
pub const MAX_GRID_POINTS: usize = 100_000;

/// The limit in force: [`MAX_GRID_POINTS`] unless `--max-runs` raised (or lowered) it.
static GRID_LIMIT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(MAX_GRID_POINTS);

/// Sets the most grid points a suite may expand to (the CLI's `--max-runs`).
pub fn set_max_grid_points(n: usize) {
    GRID_LIMIT.store(n, std::sync::atomic::Ordering::Relaxed);
}

/// The number of grid points, computed with checked arithmetic before anything is expanded.
fn grid_size(src: &Source, axes: &[Axis]) -> anyhow::Result<usize> {
    let total = axes.iter().try_fold(1usize, |acc, a| acc.checked_mul(a.len()));
    let limit = GRID_LIMIT.load(std::sync::atomic::Ordering::Relaxed);
    match total {
        Some(n) if n <= limit => Ok(n),
        _ => {
            let sizes: Vec<String> = axes
                .iter()
                .map(|a| match a {
                    Axis::Product { key, values } => format!("{key} ({})", values.len()),
                    Axis::Zip { name, entries } => format!("{name} ({})", entries.len()),
                })
                .collect();
            let n = total.map(|n| n.to_string()).unwrap_or_else(|| "more than 2^64".into());
            Err(input(src.error(
                &[key("grid")],
                format!("the grid expands to {n} runs ({}), more than the limit of {limit}; split the suite, shorten an axis, or raise the limit with --max-runs", sizes.join(" x ")),
            )))
        }
    }
}

/// Adds a run unless its id exists; a run that is both a teacher and a student becomes a teacher.
fn add_run(index: &mut BTreeMap<String, (Role, usize)>, teachers: &mut Vec<PlannedRun>, students: &mut Vec<PlannedRun>, run: PlannedRun) {
    match index.get(&run.spec.id).copied() {
        None => {
            let id = run.spec.id.clone();
            match run.spec.role {
                Role::Teacher => {
                    index.insert(id, (Role::Teacher, teachers.len()));
                    teachers.push(run);
                }
                Role::Student => {
                    index.insert(id, (Role::Student, students.len()));
                    students.push(run);
                }
            }
        }
        Some((Role::Student, i)) if run.spec.role == Role::Teacher => {
            // Promote: the earlier student entry is the same computation; keep it as the teacher.
            let mut s = students.remove(i);
            s.spec.role = Role::Teacher;
            s.spec.save_model = true;
            for (_, (r, j)) in index.iter_mut() {
                if *r == Role::Student && *j > i {
                    *j -= 1;
                }
            }
            index.insert(s.spec.id.clone(), (Role::Teacher, teachers.len()));
            teachers.push(s);
        }
        Some((Role::Student, i)) => students[i].spec.save_model |= run.spec.save_model,
        Some((Role::Teacher, _)) => {}
    }
}
