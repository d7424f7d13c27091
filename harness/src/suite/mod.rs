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
pub mod spec;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use source::Seg;
use source::{Source, type_name, unknown};
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
#[derive(Clone, Debug, serde::Serialize)]
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
    /// Reads and validates a suite file. Errors are [`InputError`]s naming file, line and key.
    pub fn load(path: &Path) -> anyhow::Result<Suite> {
        let text = crate::files::read_to_string(path, "suite file")?;
        Suite::parse(path, text)
    }

    /// Validates suite text (`path` is used for messages and relative paths).
    pub fn parse(path: &Path, text: String) -> anyhow::Result<Suite> {
        let src = Source::parse(path, text).map_err(input)?;
        let t = &src.table;
        for k in t.keys() {
            if !SUITE_SECTIONS.contains(&k.as_str()) {
                return Err(input(src.error(&[key(k)], unknown("section", k, SUITE_SECTIONS))));
            }
        }
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();

        // [suite]
        let s =
            table_at(&src, t, "suite")?.ok_or_else(|| input(format!("{}: missing [suite] section (needs at least `name` and `dataset`)", path.display())))?;
        for k in s.keys() {
            if !SUITE_KEYS.contains(&k.as_str()) {
                return Err(input(src.error(&[key("suite"), key(k)], unknown("key", k, SUITE_KEYS))));
            }
        }
        let name = req_str(&src, s, &[key("suite")], "name")?;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(input(src.error(&[key("suite"), key("name")], "expected letters, digits, `_` or `-` (it names the results directory)")));
        }
        let description = opt_str(&src, s, &[key("suite")], "description")?.unwrap_or_default();
        let dataset = req_str(&src, s, &[key("suite")], "dataset")?;
        let names: Vec<&str> = data::DATASETS.iter().map(|d| d.name).collect();
        if !names.contains(&dataset.as_str()) {
            return Err(input(src.error(&[key("suite"), key("dataset")], unknown("dataset", &dataset, &names))));
        }
        let data_dir = opt_str(&src, s, &[key("suite")], "data_dir")?.map(|d| base_dir.join(d));
        let seeds = match s.get("seeds") {
            None => vec![0],
            Some(v) => {
                let p = [key("suite"), key("seeds")];
                let arr = v.as_array().ok_or_else(|| input(src.error(&p, format!("expected an array of integers, found {}", type_name(v)))))?;
                if arr.is_empty() {
                    return Err(input(src.error(&p, "expected at least one seed")));
                }
                arr.iter().map(|x| seed_of(x).map_err(|m| input(src.error(&p, m)))).collect::<anyhow::Result<Vec<_>>>()?
            }
        };

        // [train]
        let mut train = Recipe::default();
        if let Some(tr) = table_at(&src, t, "train")? {
            for (k, v) in tr {
                train.set(k, v).map_err(|m| input(src.error(&[key("train"), key(k)], m)))?;
            }
            train.check().map_err(|m| input(src.error(&[key("train")], m)))?;
        }

        // [teachers.<name>]
        let mut teachers = BTreeMap::new();
        if let Some(ts) = table_at(&src, t, "teachers")? {
            for (tname, tv) in ts {
                let p = vec![key("teachers"), key(tname)];
                let tt = tv.as_table().ok_or_else(|| input(src.error(&p, format!("expected a table, found {}", type_name(tv)))))?;
                for k in tt.keys() {
                    if !TEACHER_KEYS.contains(&k.as_str()) {
                        let mut kp = p.clone();
                        kp.push(key(k));
                        return Err(input(src.error(&kp, unknown("key", k, TEACHER_KEYS))));
                    }
                }
                let model = req_str(&src, tt, &p, "model")?;
                check_model(&src, &[p.clone(), vec![key("model")]].concat(), &model)?;
                let seed = match tt.get("seed") {
                    None => 0,
                    Some(v) => seed_of(v).map_err(|m| input(src.error(&[p.clone(), vec![key("seed")]].concat(), m)))?,
                };
                let mut overrides = Vec::new();
                if let Some(trv) = tt.get("train") {
                    let tp = [p.clone(), vec![key("train")]].concat();
                    let trt = trv.as_table().ok_or_else(|| input(src.error(&tp, format!("expected a table, found {}", type_name(trv)))))?;
                    for (k, v) in trt {
                        let kp = [tp.clone(), vec![key(k)]].concat();
                        // Validate now so errors point here, not at first use.
                        Recipe::default().set(k, v).map_err(|m| input(src.error(&kp, m)))?;
                        overrides.push((k.clone(), v.clone(), kp));
                    }
                }
                let checkpoint = opt_str(&src, tt, &p, "checkpoint")?.map(|c| base_dir.join(c));
                let mut ups: Vec<String> = opt_str(&src, tt, &p, "teacher")?.into_iter().collect();
                if let Some(v) = tt.get("teachers") {
                    let tp = [p.clone(), vec![key("teachers")]].concat();
                    let arr = v.as_array().ok_or_else(|| input(src.error(&tp, format!("expected an array of teacher names, found {}", type_name(v)))))?;
                    if !ups.is_empty() {
                        return Err(input(src.error(&tp, "set either `teacher` or `teachers`, not both")));
                    }
                    for x in arr {
                        ups.push(x.as_str().ok_or_else(|| input(src.error(&tp, format!("expected teacher names, found {}", type_name(x)))))?.to_string());
                    }
                }
                let method = opt_str(&src, tt, &p, "method")?;
                if let Some(m) = &method {
                    if distill::find(m).is_none() {
                        return Err(input(src.error(&[p.clone(), vec![key("method")]].concat(), unknown("method", m, &distill::names()))));
                    }
                }
                if checkpoint.is_some() && (!ups.is_empty() || method.is_some()) {
                    return Err(input(src.error(&p, "a checkpoint teacher is not trained: drop `teacher`/`teachers`/`method`, or drop `checkpoint`")));
                }
                let prune = match tt.get("prune") {
                    None => None,
                    Some(pv) => Some(parse_prune(&src, &[p.clone(), vec![key("prune")]].concat(), pv)?),
                };
                teachers.insert(tname.clone(), TeacherDecl { model, seed, train: overrides, checkpoint, teachers: ups, method, prune, path: p });
            }
        }

        for (tname, d) in &teachers {
            for u in &d.teachers {
                if !teachers.contains_key(u) && models::find(u).is_none() {
                    let mut allowed: Vec<&str> = teachers.keys().map(String::as_str).collect();
                    allowed.extend(models::names());
                    return Err(input(src.error(&[d.path.clone(), vec![key("teacher")]].concat(), unknown(&format!("teacher of `{tname}`"), u, &allowed))));
                }
            }
        }

        // [methods.<name>]
        let mut methods = BTreeMap::new();
        if let Some(ms) = table_at(&src, t, "methods")? {
            for (mname, mv) in ms {
                let p = vec![key("methods"), key(mname)];
                let info = distill::find(mname).ok_or_else(|| input(src.error(&p, unknown("method", mname, &distill::names()))))?;
                let mt = mv.as_table().ok_or_else(|| input(src.error(&p, format!("expected a table, found {}", type_name(mv)))))?;
                let mut params = BTreeMap::new();
                for (k, v) in mt {
                    let kp = [p.clone(), vec![key(k)]].concat();
                    info.check_param(k, v).map_err(|m| input(src.error(&kp, m)))?;
                    params.insert(k.clone(), (v.clone(), kp));
                }
                methods.insert(mname.clone(), params);
            }
        }

        // [grid]
        let mut axes = Vec::new();
        if let Some(g) = table_at(&src, t, "grid")? {
            let mut flat = Vec::new();
            flatten(g, String::new(), vec![key("grid")], &mut flat);
            for (k, v, p) in flat {
                let arr = v.as_array().ok_or_else(|| input(src.error(&p, format!("expected an array (a grid axis), found {}", type_name(&v)))))?;
                if arr.is_empty() {
                    return Err(input(src.error(&p, "expected at least one value on the axis")));
                }
                if arr.iter().all(|x| x.is_table()) {
                    let mut entries = Vec::new();
                    for (i, e) in arr.iter().enumerate() {
                        let mut ep = p.clone();
                        ep.push(Seg::Idx(i));
                        let mut settings = Vec::new();
                        let mut ef = Vec::new();
                        flatten(e.as_table().into_iter().flatten(), String::new(), ep, &mut ef);
                        for (ek, evv, epp) in ef {
                            check_grid_key(&src, &epp, &ek)?;
                            check_grid_value(&src, &epp, &ek, &evv, &teachers)?;
                            settings.push(Setting { key: ek, value: evv, path: epp });
                        }
                        entries.push(settings);
                    }
                    axes.push(Axis::Zip { name: k, entries });
                } else if arr.iter().any(|x| x.is_table()) {
                    return Err(input(src.error(&p, "an axis is either all tables (zipped) or all values (crossed), not a mix")));
                } else {
                    check_grid_key(&src, &p, &k)?;
                    for (i, x) in arr.iter().enumerate() {
                        let mut vp = p.clone();
                        vp.push(Seg::Idx(i));
                        check_grid_value(&src, &vp, &k, x, &teachers)?;
                    }
                    let values = arr
                        .iter()
                        .enumerate()
                        .map(|(i, x)| {
                            let mut vp = p.clone();
                            vp.push(Seg::Idx(i));
                            Setting { key: k.clone(), value: x.clone(), path: vp }
                        })
                        .collect();
                    axes.push(Axis::Product { key: k, values });
                }
            }
        }
        // Two axes must not set the same key: the result would depend on axis order.
        let mut owner: BTreeMap<String, String> = BTreeMap::new();
        for a in &axes {
            let (aname, keys): (String, Vec<String>) = match a {
                Axis::Product { key, .. } => (key.clone(), vec![key.clone()]),
                Axis::Zip { name, entries } => {
                    let mut ks: Vec<String> = entries.iter().flatten().map(|s| s.key.clone()).collect();
                    ks.sort();
                    ks.dedup();
                    (name.clone(), ks)
                }
            };
            for k in keys {
                if let Some(prev) = owner.insert(k.clone(), aname.clone()) {
                    return Err(input(
                        src.error(&[key("grid"), key(&aname)], format!("key `{k}` is also set by axis `{prev}`; set each key on one axis only")),
                    ));
                }
            }
        }
        if owner.contains_key("seed") && t.get("suite").and_then(|s| s.get("seeds")).is_some() {
            return Err(input(src.error(&[key("suite"), key("seeds")], "seeds are given both here and as a grid axis `seed`; keep one")));
        }

        let expected = parse_expected(&src)?;
        let report = parse_report(&src)?;
        let slurm = executor::parse(&src)?;
        Ok(Suite { name, description, dataset, data_dir, seeds, train, teachers, methods, axes, expected, report, slurm, allow_missing_checkpoints: false, src })
    }

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

    /// Resolves one grid point into (teacher run if trained here, student run).
    fn resolve(&self, point: &[Setting], data: &DataRef, info: &data::DatasetInfo) -> anyhow::Result<(Vec<RunSpec>, PlannedRun)> {
        let get = |k: &str| point.iter().find(|s| s.key == k);
        let err = |s: &Setting, m: String| input(self.src.error(&s.path, m));
        let str_of = |s: &Setting| -> anyhow::Result<String> {
            s.value.as_str().map(str::to_string).ok_or_else(|| err(s, format!("expected a string, found {}", type_name(&s.value))))
        };

        let student = get("student").ok_or_else(|| {
            input(format!("{}: the grid sets no `student`; add e.g. `student = [\"resnet8x4\"]` under [grid] or in a `pair` entry", self.src.path.display()))
        })?;
        let model = str_of(student)?;
        check_model_for(&self.src, &student.path, &model, info)?;

        let method = match get("method") {
            Some(s) => str_of(s)?,
            None => "ce".to_string(),
        };
        let minfo = match distill::find(&method) {
            Some(m) => m,
            None => {
                let s = get("method").ok_or_else(|| input(format!("unknown method {method}")))?;
                return Err(err(s, unknown("method", &method, &distill::names())));
            }
        };

        let mut params: BTreeMap<String, ParamValue> = BTreeMap::new();
        for p in minfo.params {
            params.insert(p.name.to_string(), p.default.clone());
        }
        if let Some(over) = self.methods.get(&method) {
            for (k, (v, path)) in over {
                let pv = minfo.check_param(k, v).map_err(|m| input(self.src.error(path, m)))?;
                params.insert(k.clone(), pv);
            }
        }
        let mut train = self.train.clone();
        let mut seed = 0u64;
        let mut save_model = false;
        let mut exclusive = false;
        let mut student_from_teacher = false;
        for s in point {
            let k = s.key.as_str();
            if let Some(r) = k.strip_prefix("train.") {
                train.set(r, &s.value).map_err(|m| err(s, m))?;
            } else if k == "seed" {
                seed = seed_of(&s.value).map_err(|m| err(s, m))?;
            } else if k == "exclusive" {
                exclusive = s.value.as_bool().ok_or_else(|| err(s, format!("expected true or false, found {}", type_name(&s.value))))?;
            } else if k == "student_from_teacher" {
                student_from_teacher = s.value.as_bool().ok_or_else(|| err(s, format!("expected true or false, found {}", type_name(&s.value))))?;
                if student_from_teacher && !models::has_width_plan(&model) {
                    return Err(err(s, format!("student `{model}` has no width plan; `student_from_teacher` works for cnn_small, cnn_tiny and vgg8..vgg19")));
                }
            } else if k == "save_model" {
                save_model = s.value.as_bool().ok_or_else(|| err(s, format!("expected true or false, found {}", type_name(&s.value))))?;
            } else if let Some((m, p)) = k.split_once('.') {
                if m == method {
                    let pv = minfo.check_param(p, &s.value).map_err(|e| err(s, e))?;
                    params.insert(p.to_string(), pv);
                } else if let Some(other) = distill::find(m) {
                    other.check_param(p, &s.value).map_err(|e| err(s, e))?;
                }
            }
        }
        train.check().map_err(|m| err(student, m))?;

        // Teachers: `teacher = "name"` or `teachers = ["a", "b", ...]` (multi-teacher methods).
        let mut names: Vec<(String, &Setting)> = Vec::new();
        if let Some(ts) = get("teacher") {
            names.push((str_of(ts)?, ts));
        }
        if let Some(ts) = get("teachers") {
            if !names.is_empty() {
                return Err(err(ts, "set either `teacher` or `teachers`, not both".into()));
            }
            let arr = ts.value.as_array().ok_or_else(|| err(ts, format!("expected an array of teacher names, found {}", type_name(&ts.value))))?;
            for v in arr {
                names.push((v.as_str().ok_or_else(|| err(ts, format!("expected teacher names (strings), found {}", type_name(v))))?.to_string(), ts));
            }
        }
        let anchor = get("method").unwrap_or(student);
        match minfo.teachers {
            distill::Teachers::None | distill::Teachers::Peers => names.clear(),
            distill::Teachers::One if names.len() != 1 && get("chain").is_none() => {
                return Err(err(
                    anchor,
                    format!("method `{method}` needs exactly one teacher; set `teacher` in the grid (a [teachers.<name>] entry or a model name)"),
                ));
            }
            distill::Teachers::Many if names.len() < 2 => {
                return Err(err(anchor, format!("method `{method}` needs two or more teachers; set `teachers = [\"a\", \"b\"]` in the grid")));
            }
            _ => {}
        }
        if let Some(cs) = get("chain") {
            if !names.is_empty() {
                return Err(err(cs, "set either `chain` or `teacher`/`teachers`, not both".into()));
            }
        }
        let mut teacher_runs = Vec::new();
        let mut teachers = Vec::new();
        let mut deps = Vec::new();
        let mut add = |runs: Vec<RunSpec>, tref: TeacherRef, deps: &mut Vec<String>| {
            if let TeacherRef::Run { id, .. } = &tref {
                deps.push(id.clone());
            }
            teacher_runs.extend(runs);
            teachers.push(tref);
        };
        match get("chain") {
            Some(cs) if minfo.teachers == distill::Teachers::Many => {
                return Err(err(cs, format!("method `{method}` distils from several teachers; a `chain` ends in one")));
            }
            Some(cs) if minfo.teachers != distill::Teachers::None => {
                // TAKD: chain = [top teacher, assistant, ...]; each link after the first is trained
                // with this run's method and parameters from the link before it.
                let arr = cs.value.as_array().ok_or_else(|| err(cs, format!("expected an array of teacher/model names, found {}", type_name(&cs.value))))?;
                let links: Vec<String> = arr
                    .iter()
                    .map(|v| v.as_str().map(str::to_string).ok_or_else(|| err(cs, "expected teacher/model names (strings)".into())))
                    .collect::<anyhow::Result<_>>()?;
                if links.is_empty() {
                    return Err(err(cs, "expected at least one link".into()));
                }
                let ctx = At { at: cs, point, data, info, exclusive };
                let (runs, tref) = self.chain_run(&links, &ctx, (&method, &params))?;
                add(runs, tref, &mut deps);
            }
            _ => {
                for (tname, ts) in names {
                    let ctx = At { at: ts, point, data, info, exclusive };
                    let (runs, tref) = self.teacher_run(&tname, &ctx, None, true, 0)?;
                    add(runs, tref, &mut deps);
                }
            }
        }

        if method == "sokd" {
            if let Some(t) = teachers.iter().find(|t| !distill::sokd::has_bridge(t.model())) {
                return Err(err(get("teacher").or(get("chain")).unwrap_or(anchor), distill::sokd::no_bridge(t.model())));
            }
        }

        if let (true, Some(s)) = (student_from_teacher, get("student_from_teacher")) {
            match teachers.as_slice() {
                [t] if t.model() == model => {}
                [t] => {
                    return Err(err(
                        s,
                        format!("a student formed from its teacher has the teacher's architecture: set `student = \"{}\"` (found `{model}`)", t.model()),
                    ));
                }
                _ => return Err(err(s, format!("`student_from_teacher` needs exactly one teacher; method `{method}` has {}", teachers.len()))),
            }
        }

        // Online peers: required by online methods, meaningless for the others.
        let mut peers = Vec::new();
        if let Some(ps) = get("peers") {
            if minfo.teachers != distill::Teachers::Peers {
                return Err(err(ps, format!("method `{method}` trains no online peers; `peers` is for dml, switokd, bdkd_online")));
            }
            for v in ps.value.as_array().into_iter().flatten() {
                let m = v.as_str().unwrap_or_default().to_string();
                check_model_for(&self.src, &ps.path, &m, info)?;
                peers.push(m);
            }
        }
        if minfo.teachers == distill::Teachers::Peers && peers.is_empty() {
            return Err(err(anchor, format!("method `{method}` trains online peers; set `peers = [\"model\", ...]` in the grid")));
        }

        let mut spec = RunSpec {
            id: String::new(),
            suite: self.name.clone(),
            role: Role::Student,
            dataset: data.clone(),
            model,
            method,
            params,
            train,
            seed,
            teachers,
            peers,
            save_model,
            exclusive,
            prune: None,
            student_from_teacher,
        };
        spec.id = spec.compute_id();
        Ok((teacher_runs, PlannedRun { spec, deps }))
    }
}

impl Suite {
    /// Resolves one teacher by name (a `[teachers.*]` entry or a model name) into the runs it
    /// needs (its own teachers first, recursively) and the reference a student stores.
    /// `upstream`: a precomputed (runs, reference, method, params) this teacher distils from
    /// (chains); `direct`: grid keys `teacher.train.*`/`teacher.seed` apply only to direct teachers.
    fn teacher_run(&self, name: &str, ctx: &At, upstream: Option<Upstream>, direct: bool, depth: usize) -> anyhow::Result<(Vec<RunSpec>, TeacherRef)> {
        let (mut runs, tref) = self.dense_teacher_run(name, ctx, upstream, direct, depth)?;
        let (point, data, exclusive) = (ctx.point, ctx.data, ctx.exclusive);
        let decl = self.teachers.get(name);
        let mut prune = decl.and_then(|d| d.prune.clone());
        if direct {
            for s in point {
                if s.key == "teacher.prune.sparsity" || s.key == "teacher.prune.method" {
                    let p = prune.as_mut().ok_or_else(|| {
                        input(self.src.error(&s.path, format!("`{}` needs a pruned teacher, but teacher `{name}` has no `prune` table (add e.g. prune = {{ method = \"prue\", sparsity = 0.5 }} to [teachers.{name}])", s.key)))
                    })?;
                    if s.key == "teacher.prune.sparsity" {
                        p.sparsity = sparsity_of(&s.value).map_err(|m| input(self.src.error(&s.path, m)))?;
                    } else {
                        p.method = prune_method_of(&s.value).map_err(|m| input(self.src.error(&s.path, m)))?;
                    }
                }
            }
        }
        let Some(p) = prune else { return Ok((runs, tref)) };
        // The fine-tuning recipe: the teacher's own, then the `prune.train` overrides.
        let (mut train, seed) = match runs.last() {
            Some(t) if matches!(&tref, TeacherRef::Run { id, .. } if *id == t.id) => (t.train.clone(), t.seed),
            _ => (self.teacher_recipe(decl, point, direct)?, decl.map(|d| d.seed).unwrap_or(0)),
        };
        for (k, v, kp) in &p.train {
            train.set(k, v).map_err(|m| input(self.src.error(kp, m)))?;
        }
        train.check().map_err(|m| input(self.src.error(&p.path, m)))?;
        let (rounds, amount) = if p.method == "prue" {
            (1, p.sparsity)
        } else {
            let n = crate::train::prune::rounds_for(p.sparsity, p.rate);
            if n == 0 {
                return Err(input(self.src.error(
                    &p.path,
                    format!("sparsity {} is closer to 0 than to one round removing {} of the weights; raise `sparsity` or lower `rate`", p.sparsity, p.rate),
                )));
            }
            (n, p.rate)
        };
        let ce = distill::find("ce").ok_or_else(|| input("method `ce` is not registered".to_string()))?;
        let model = tref.model().to_string();
        let mut parent = tref;
        for round in 1..=rounds {
            let mut t = RunSpec {
                id: String::new(),
                suite: self.name.clone(),
                role: Role::Teacher,
                dataset: data.clone(),
                model: model.clone(),
                method: "ce".into(),
                params: ce.defaults(),
                train: train.clone(),
                seed,
                teachers: vec![],
                peers: vec![],
                save_model: true,
                exclusive,
                prune: Some(spec::PruneStage {
                    method: p.method.clone(),
                    amount,
                    round,
                    rounds,
                    target: p.sparsity,
                    batch: if p.method == "prue" { p.batch } else { 0 },
                    parent: parent.clone(),
                }),
                student_from_teacher: false,
            };
            t.id = t.compute_id();
            parent = TeacherRef::Run { id: t.id.clone(), model: model.clone() };
            runs.push(t);
        }
        Ok((runs, parent))
    }

    /// A teacher's recipe: the suite's, its `[teachers.*].train`, then (direct teachers) the grid's
    /// `teacher.train.*` keys.
    fn teacher_recipe(&self, decl: Option<&TeacherDecl>, point: &[Setting], direct: bool) -> anyhow::Result<Recipe> {
        let mut train = self.train.clone();
        for (k, v, p) in decl.map(|d| d.train.clone()).unwrap_or_default() {
            train.set(&k, &v).map_err(|m| input(self.src.error(&p, m)))?;
        }
        if direct {
            for s in point {
                if let Some(r) = s.key.strip_prefix("teacher.train.") {
                    train.set(r, &s.value).map_err(|m| input(self.src.error(&s.path, m)))?;
                }
            }
        }
        Ok(train)
    }

    /// The unpruned teacher (see [`Suite::teacher_run`]).
    fn dense_teacher_run(&self, name: &str, ctx: &At, upstream: Option<Upstream>, direct: bool, depth: usize) -> anyhow::Result<(Vec<RunSpec>, TeacherRef)> {
        let (point, data, info, exclusive) = (ctx.point, ctx.data, ctx.info, ctx.exclusive);
        let err = |m: String| input(self.src.error(&ctx.at.path, m));
        if depth > MAX_CHAIN {
            return Err(err(format!("teacher `{name}` is part of a cycle of teachers distilling from each other")));
        }
        let decl = self.teachers.get(name);
        let tmodel = match decl {
            Some(d) => d.model.clone(),
            None if models::find(name).is_some() => name.to_string(),
            None => {
                let mut allowed: Vec<&str> = self.teachers.keys().map(String::as_str).collect();
                allowed.extend(models::names());
                return Err(err(unknown("teacher", name, &allowed)));
            }
        };
        check_model_for(&self.src, &ctx.at.path, &tmodel, info)?;
        if let Some(ck) = decl.and_then(|d| d.checkpoint.clone()) {
            let decl_path = decl.map(|d| d.path.clone()).unwrap_or_default();
            if self.allow_missing_checkpoints && std::fs::symlink_metadata(&ck).is_err() {
                return Ok((vec![], TeacherRef::Checkpoint { path: ck.display().to_string(), model: tmodel, hash: MISSING_CHECKPOINT.into() }));
            }
            let bytes = crate::files::read(&ck, "teacher checkpoint")
                .map_err(|e| input(self.src.error(&[decl_path, vec![key("checkpoint")]].concat(), format!("{e:#}"))))?;
            return Ok((vec![], TeacherRef::Checkpoint { path: ck.display().to_string(), model: tmodel, hash: blake3::hash(&bytes).to_hex().to_string() }));
        }
        let mut runs = Vec::new();
        let mut refs = Vec::new();
        let (method, params) = match upstream {
            Some((r, t, m, p)) => {
                runs.extend(r);
                refs.push(t);
                (m, p)
            }
            None => {
                let ups = decl.map(|d| d.teachers.clone()).unwrap_or_default();
                let m = decl.and_then(|d| d.method.clone()).unwrap_or_else(|| if ups.is_empty() { "ce".into() } else { "kd".into() });
                let minfo = distill::find(&m).ok_or_else(|| err(unknown("method", &m, &distill::names())))?;
                let ok = match minfo.teachers {
                    distill::Teachers::None => ups.is_empty(),
                    distill::Teachers::One => ups.len() == 1,
                    distill::Teachers::Many => ups.len() >= 2,
                    distill::Teachers::Peers => false,
                };
                if !ok {
                    return Err(err(format!("teacher `{name}` is trained with `{m}` ({:?} teacher(s)), but names {} teacher(s)", minfo.teachers, ups.len())));
                }
                let mut params = minfo.defaults();
                if let Some(over) = self.methods.get(&m) {
                    for (k, (v, path)) in over {
                        params.insert(k.clone(), minfo.check_param(k, v).map_err(|e| input(self.src.error(path, e)))?);
                    }
                }
                for u in &ups {
                    let (r, t) = self.teacher_run(u, ctx, None, false, depth + 1)?;
                    runs.extend(r);
                    refs.push(t);
                }
                (m, params)
            }
        };
        let train = self.teacher_recipe(decl, point, direct)?;
        train.check().map_err(&err)?;
        let mut seed = decl.map(|d| d.seed).unwrap_or(0);
        if direct {
            for s in point.iter().filter(|s| s.key == "teacher.seed") {
                seed = seed_of(&s.value).map_err(|m| input(self.src.error(&s.path, m)))?;
            }
        }
        let mut t = RunSpec {
            id: String::new(),
            suite: self.name.clone(),
            role: Role::Teacher,
            dataset: data.clone(),
            model: tmodel.clone(),
            method,
            params,
            train,
            seed,
            teachers: refs,
            peers: vec![],
            save_model: true,
            exclusive,
            prune: None,
            student_from_teacher: false,
        };
        t.id = t.compute_id();
        let tref = TeacherRef::Run { id: t.id.clone(), model: tmodel };
        runs.push(t);
        Ok((runs, tref))
    }

    /// A TAKD chain `[top, assistant, ...]`: the first link is resolved as a teacher; every later
    /// link is trained with (method, params) from the one before.
    fn chain_run(&self, links: &[String], ctx: &At, how: (&str, &BTreeMap<String, ParamValue>)) -> anyhow::Result<(Vec<RunSpec>, TeacherRef)> {
        let n = links.len();
        if n == 1 {
            return self.teacher_run(&links[0], ctx, None, true, 0);
        }
        let (runs, up) = self.chain_run(&links[..n - 1], ctx, how)?;
        self.teacher_run(&links[n - 1], ctx, Some((runs, up, how.0.to_string(), how.1.clone())), false, n)
    }
}

/// The grid point a teacher is resolved for: the setting that named it (errors point there),
/// the point's settings, the data and whether the student's runs are exclusive.
struct At<'a> {
    at: &'a Setting,
    point: &'a [Setting],
    data: &'a DataRef,
    info: &'a data::DatasetInfo,
    exclusive: bool,
}

/// A chain link's upstream: the runs before it, the link it learns from, and the chain's method
/// and parameters.
type Upstream = (Vec<RunSpec>, TeacherRef, String, BTreeMap<String, ParamValue>);

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

fn parse_report(src: &Source) -> anyhow::Result<ReportSpec> {
    let Some(v) = src.table.get("report") else { return Ok(ReportSpec::default()) };
    let p = vec![key("report")];
    let t = v.as_table().ok_or_else(|| input(src.error(&p, format!("expected a table, found {}", type_name(v)))))?;
    let at = |k: &str| [p.clone(), vec![key(k)]].concat();
    for k in t.keys() {
        if !REPORT_KEYS.contains(&k.as_str()) {
            return Err(input(src.error(&at(k), unknown("key", k, REPORT_KEYS))));
        }
    }
    let names = |k: &str| -> anyhow::Result<Option<Vec<String>>> {
        match t.get(k) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(vec![s.clone()])),
            Some(toml::Value::Array(a)) if !a.is_empty() => a
                .iter()
                .map(|x| {
                    x.as_str().map(str::to_string).ok_or_else(|| input(src.error(&at(k), format!("expected column names (strings), found {}", type_name(x)))))
                })
                .collect::<anyhow::Result<Vec<_>>>()
                .map(Some),
            Some(other) => Err(input(src.error(&at(k), format!("expected a column name or a non-empty array of them, found {}", type_name(other))))),
        }
    };
    let num = |k: &str, lo: f64, hi: f64| -> anyhow::Result<Option<f64>> {
        let x = match t.get(k) {
            None => return Ok(None),
            Some(toml::Value::Float(f)) => *f,
            Some(toml::Value::Integer(i)) => *i as f64,
            Some(other) => return Err(input(src.error(&at(k), format!("expected a number, found {}", type_name(other))))),
        };
        if !(x > lo && x < hi) {
            return Err(input(src.error(&at(k), format!("expected a number in ({lo}, {hi}), found {x}"))));
        }
        Ok(Some(x))
    };
    let metric = opt_str(src, t, &p, "metric")?;
    if let Some(m) = &metric {
        if m != "best" && m != "last" {
            return Err(input(src.error(&at("metric"), unknown("metric", m, &["best", "last"]))));
        }
    }
    let baseline = opt_str(src, t, &p, "baseline")?;
    if let Some(b) = &baseline {
        if distill::find(b).is_none() {
            return Err(input(src.error(&at("baseline"), unknown("method", b, &distill::names()))));
        }
    }
    let min_seeds = match t.get("min_seeds") {
        None => None,
        Some(toml::Value::Integer(i)) if *i >= 2 => Some(*i as usize),
        Some(other) => return Err(input(src.error(&at("min_seeds"), format!("expected an integer >= 2, found {other}")))),
    };
    Ok(ReportSpec {
        rows: names("rows")?,
        cols: names("cols")?,
        metric,
        baseline,
        alpha: num("alpha", 0.0, 1.0)?,
        tolerance: num("tolerance", 0.0, f64::INFINITY)?,
        k_se: num("k_se", 0.0, f64::INFINITY)?,
        min_seeds,
        expected_tolerance: num("expected_tolerance", 0.0, f64::INFINITY)?,
        gap_x: opt_str(src, t, &p, "gap_x")?,
    })
}

fn parse_expected(src: &Source) -> anyhow::Result<Vec<Expected>> {
    let Some(v) = src.table.get("expected") else { return Ok(vec![]) };
    let p = vec![key("expected")];
    let arr = v.as_array().ok_or_else(|| input(src.error(&p, "expected an array of tables: [[expected]]")))?;
    let mut out = Vec::new();
    for (i, e) in arr.iter().enumerate() {
        let ep = vec![key("expected"), Seg::Idx(i)];
        let t = e.as_table().ok_or_else(|| input(src.error(&ep, format!("expected a table, found {}", type_name(e)))))?;
        for k in t.keys() {
            if !EXPECTED_KEYS.contains(&k.as_str()) {
                return Err(input(src.error(&[ep.clone(), vec![key(k)]].concat(), unknown("key", k, EXPECTED_KEYS))));
            }
        }
        let student = req_str(src, t, &ep, "student")?;
        check_model(src, &[ep.clone(), vec![key("student")]].concat(), &student)?;
        let teacher = opt_str(src, t, &ep, "teacher")?;
        if let Some(tm) = &teacher {
            check_model(src, &[ep.clone(), vec![key("teacher")]].concat(), tm)?;
        }
        let method = req_str(src, t, &ep, "method")?;
        if distill::find(&method).is_none() {
            return Err(input(src.error(&[ep.clone(), vec![key("method")]].concat(), unknown("method", &method, &distill::names()))));
        }
        let num = |k: &str| -> anyhow::Result<Option<f64>> {
            match t.get(k) {
                None => Ok(None),
                Some(toml::Value::Float(f)) => Ok(Some(*f)),
                Some(toml::Value::Integer(i)) => Ok(Some(*i as f64)),
                Some(other) => Err(input(src.error(&[ep.clone(), vec![key(k)]].concat(), format!("expected a number, found {}", type_name(other))))),
            }
        };
        let top1 = num("top1")?.ok_or_else(|| input(src.error(&ep, "missing required key `top1` (percent)")))?;
        let metric = opt_str(src, t, &ep, "metric")?.unwrap_or_else(|| "best".into());
        if metric != "best" && metric != "last" {
            return Err(input(src.error(&[ep.clone(), vec![key("metric")]].concat(), unknown("metric", &metric, &["best", "last"]))));
        }
        let source = req_str(src, t, &ep, "source")?;
        out.push(Expected { teacher, student, method, top1, std: num("std")?, metric, source });
    }
    Ok(out)
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

fn flatten<'a>(t: impl IntoIterator<Item = (&'a String, &'a toml::Value)>, prefix: String, path: Vec<Seg>, out: &mut Vec<(String, toml::Value, Vec<Seg>)>) {
    for (k, v) in t {
        let full = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        let mut p = path.clone();
        p.push(Seg::Key(k.clone()));
        match v {
            toml::Value::Table(sub) => flatten(sub, full, p, out),
            _ => out.push((full, v.clone(), p)),
        }
    }
}

fn check_grid_key(src: &Source, path: &[Seg], k: &str) -> anyhow::Result<()> {
    let ok = match k {
        "teacher"
        | "teachers"
        | "chain"
        | "peers"
        | "student"
        | "method"
        | "seed"
        | "save_model"
        | "exclusive"
        | "teacher.seed"
        | "teacher.prune.sparsity"
        | "teacher.prune.method"
        | "student_from_teacher" => Ok(()),
        _ => {
            if let Some(r) = k.strip_prefix("teacher.train.").or_else(|| k.strip_prefix("train.")) {
                if spec::RECIPE_KEYS.contains(&r) { Ok(()) } else { Err(unknown("recipe key", r, spec::RECIPE_KEYS)) }
            } else if let Some((m, p)) = k.split_once('.') {
                match distill::find(m) {
                    Some(info) if info.params.iter().any(|d| d.name == p) => Ok(()),
                    Some(info) => {
                        let allowed: Vec<&str> = info.params.iter().map(|d| d.name).collect();
                        Err(unknown(&format!("parameter of method `{m}`"), p, &allowed))
                    }
                    None => Err(unknown("method", m, &distill::names())),
                }
            } else {
                Err(unknown("grid key", k, GRID_KEYS))
            }
        }
    };
    ok.map_err(|m| input(src.error(path, m)))
}

/// Early checks of names in the grid (the full check happens when a point is resolved).
fn check_grid_value(src: &Source, path: &[Seg], k: &str, v: &toml::Value, teachers: &BTreeMap<String, TeacherDecl>) -> anyhow::Result<()> {
    let name = || -> anyhow::Result<&str> { v.as_str().ok_or_else(|| input(src.error(path, format!("expected a string, found {}", type_name(v))))) };
    match k {
        "student" => check_model(src, path, name()?),
        "peers" => {
            let arr = v.as_array().ok_or_else(|| input(src.error(path, format!("expected an array of model names, found {}", type_name(v)))))?;
            for m in arr {
                let m = m.as_str().ok_or_else(|| input(src.error(path, format!("expected model names, found {}", type_name(m)))))?;
                check_model(src, path, m)?;
            }
            Ok(())
        }
        "method" => {
            let m = name()?;
            if distill::find(m).is_none() {
                return Err(input(src.error(path, unknown("method", m, &distill::names()))));
            }
            Ok(())
        }
        "teacher" | "teachers" | "chain" => {
            let list: Vec<&toml::Value> = match v.as_array() {
                Some(a) if k != "teacher" => a.iter().collect(),
                _ => vec![v],
            };
            for item in list {
                let t = item.as_str().ok_or_else(|| input(src.error(path, format!("expected a teacher name, found {}", type_name(item)))))?;
                if !teachers.contains_key(t) && models::find(t).is_none() {
                    let mut allowed: Vec<&str> = teachers.keys().map(String::as_str).collect();
                    allowed.extend(models::names());
                    return Err(input(src.error(path, unknown("teacher", t, &allowed))));
                }
            }
            Ok(())
        }
        "seed" | "teacher.seed" => seed_of(v).map(|_| ()).map_err(|m| input(src.error(path, m))),
        "teacher.prune.sparsity" => sparsity_of(v).map(|_| ()).map_err(|m| input(src.error(path, m))),
        "teacher.prune.method" => prune_method_of(v).map(|_| ()).map_err(|m| input(src.error(path, m))),
        _ => Ok(()),
    }
}

fn check_model(src: &Source, path: &[Seg], name: &str) -> anyhow::Result<()> {
    if models::find(name).is_none() {
        return Err(input(src.error(path, unknown("model", name, &models::names()))));
    }
    Ok(())
}

/// A model runs on a dataset unless it is [`models::Input::Fixed`] to another H×W; channels
/// always come from the dataset.
fn check_model_for(src: &Source, path: &[Seg], name: &str, info: &data::DatasetInfo) -> anyhow::Result<()> {
    check_model(src, path, name)?;
    if let Some(m) = models::find(name).filter(|m| !m.input.accepts(info.shape)) {
        let (c, h, w) = info.shape;
        return Err(input(src.error(path, format!("model `{name}` needs {} inputs but dataset `{}` has {c}x{h}x{w}", m.input, info.name))));
    }
    Ok(())
}

fn table_at<'a>(src: &Source, t: &'a toml::Table, k: &str) -> anyhow::Result<Option<&'a toml::Table>> {
    match t.get(k) {
        None => Ok(None),
        Some(toml::Value::Table(tt)) => Ok(Some(tt)),
        Some(v) => Err(input(src.error(&[key(k)], format!("expected a table, found {}", type_name(v))))),
    }
}

fn opt_str(src: &Source, t: &toml::Table, at: &[Seg], k: &str) -> anyhow::Result<Option<String>> {
    match t.get(k) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(input(src.error(&[at.to_vec(), vec![key(k)]].concat(), format!("expected a string, found {}", type_name(v))))),
    }
}

fn req_str(src: &Source, t: &toml::Table, at: &[Seg], k: &str) -> anyhow::Result<String> {
    opt_str(src, t, at, k)?.ok_or_else(|| input(src.error(at, format!("missing required key `{k}`"))))
}

fn seed_of(v: &toml::Value) -> Result<u64, String> {
    match v {
        toml::Value::Integer(i) if *i >= 0 => Ok(*i as u64),
        other => Err(format!("expected a non-negative integer seed, found {}", type_name(other))),
    }
}

fn sparsity_of(v: &toml::Value) -> Result<f64, String> {
    let f = match v {
        toml::Value::Float(f) => *f,
        toml::Value::Integer(i) => *i as f64,
        other => return Err(format!("expected a sparsity in (0, 1), found {}", type_name(other))),
    };
    if !(f > 0.0 && f < 1.0) {
        return Err(format!("expected a sparsity in (0, 1), found {f}"));
    }
    Ok(f)
}

fn prune_method_of(v: &toml::Value) -> Result<String, String> {
    match v.as_str() {
        Some(m) if spec::PRUNE_METHODS.contains(&m) => Ok(m.to_string()),
        Some(m) => Err(unknown("pruning method", m, spec::PRUNE_METHODS)),
        None => Err(format!("expected a pruning method name, found {}", type_name(v))),
    }
}

/// Validates a teacher's `prune = { method, sparsity, rate, batch, train }` table.
fn parse_prune(src: &Source, p: &[Seg], v: &toml::Value) -> anyhow::Result<PruneDecl> {
    let t =
        v.as_table().ok_or_else(|| input(src.error(p, format!("expected a table like {{ method = \"prue\", sparsity = 0.5 }}, found {}", type_name(v)))))?;
    let at = |k: &str| [p.to_vec(), vec![key(k)]].concat();
    for k in t.keys() {
        if !PRUNE_KEYS.contains(&k.as_str()) {
            return Err(input(src.error(&at(k), unknown("key of `prune`", k, PRUNE_KEYS))));
        }
    }
    let method = match t.get("method") {
        Some(m) => prune_method_of(m).map_err(|e| input(src.error(&at("method"), e)))?,
        None => return Err(input(src.error(p, format!("missing required key `method` (one of: {})", spec::PRUNE_METHODS.join(", "))))),
    };
    let sparsity = match t.get("sparsity") {
        Some(x) => sparsity_of(x).map_err(|e| input(src.error(&at("sparsity"), e)))?,
        None => 0.5,
    };
    let rate = match t.get("rate") {
        Some(x) => sparsity_of(x).map_err(|e| input(src.error(&at("rate"), e.replace("sparsity", "rate"))))?,
        None => 0.2,
    };
    let batch = match t.get("batch") {
        None => 500,
        Some(toml::Value::Integer(i)) if *i >= 1 && *i <= u32::MAX as i64 => *i as u32,
        Some(x) => return Err(input(src.error(&at("batch"), format!("expected an integer >= 1, found {x}")))),
    };
    let mut train = Vec::new();
    if let Some(trv) = t.get("train") {
        let tp = at("train");
        let trt = trv.as_table().ok_or_else(|| input(src.error(&tp, format!("expected a table, found {}", type_name(trv)))))?;
        for (k, v) in trt {
            let kp = [tp.clone(), vec![key(k)]].concat();
            Recipe::default().set(k, v).map_err(|m| input(src.error(&kp, m)))?;
            train.push((k.clone(), v.clone(), kp));
        }
    }
    Ok(PruneDecl { method, sparsity, rate, batch, train, path: p.to_vec() })
}
