//! Reading runs back from the results store: one [`Record`] per run directory with its
//! resolved config flattened into named cells, its state, summary and per-epoch metrics.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::Context;

use crate::sched;
use crate::store::verify::{self, Damage};
use crate::store::{RunDir, Summary};
use crate::suite::{ParamValue, Plan, PlannedRun, Role, RunSpec, TeacherRef};

/// One typed value of a config or metric column.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    I(i64),
    F(f64),
    B(bool),
    S(String),
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cell::I(i) => write!(f, "{i}"),
            Cell::F(x) => write!(f, "{x}"),
            Cell::B(b) => write!(f, "{b}"),
            Cell::S(s) => write!(f, "{s}"),
        }
    }
}

impl Cell {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Cell::I(i) => Some(*i as f64),
            Cell::F(x) => Some(*x),
            _ => None,
        }
    }
}

/// A run as the report sees it.
#[derive(Clone, Debug)]
pub struct Record {
    pub spec: RunSpec,
    /// `done`, `running`, `failed`, `diverged`, `damaged`, `skipped` or `pending`.
    pub state: String,
    /// Why it is in that state (error message, progress), for the status table.
    pub detail: String,
    pub summary: Option<Summary>,
    /// Seed-free identity: runs that differ only in their seed (and their teachers' seeds) share it.
    pub group: String,
    /// Config columns: `role`, `dataset`, `model`, `method`, `teacher`, `pair`, `seed`,
    /// `train.*`, `param.*`, and the first suite-trained teacher's config as `teacher.*`.
    pub config: BTreeMap<String, Cell>,
    /// Provenance from `env.json` (commit, torch, device, threads, host).
    pub env: BTreeMap<String, String>,
    /// `metrics.csv`: header and rows (empty cells as `None`), accuracies in percent.
    pub epochs: (Vec<String>, Vec<Vec<Option<f64>>>),
}

/// Accuracy-type summary fields (and ECE) in percent, as stored from schema 2 and converted
/// from older summaries when read; the rest as stored (sparsity as a fraction).
pub const METRICS: &[&str] = &[
    "best_top1",
    "last_top1",
    "last_top5",
    "last_ece",
    "agreement",
    "pred_kl",
    "teacher_top1",
    "best_epoch",
    "param_count",
    "wall_time_s",
    "images_per_s",
    "entropy",
    "nontarget_mass",
    "class_similarity",
    "sparsity",
];

impl Record {
    /// Final metric by name (see [`METRICS`]); `None` when the run has not finished or the
    /// metric does not apply (agreement of a teacher-free run).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let s = self.summary.as_ref()?;
        match name {
            "best_top1" => Some(s.best_top1),
            "last_top1" => Some(s.last_top1),
            "last_top5" => Some(s.last_top5),
            "last_ece" => Some(s.last_ece),
            "agreement" => s.agreement,
            "pred_kl" => s.pred_kl,
            "teacher_top1" => s.teacher_top1,
            "best_epoch" => Some(s.best_epoch as f64),
            "param_count" => Some(s.param_count as f64),
            "wall_time_s" => Some(s.wall_time_s),
            "images_per_s" => Some(s.images_per_s),
            "entropy" => Some(s.output_stats.entropy),
            "nontarget_mass" => Some(s.output_stats.nontarget_mass),
            "class_similarity" => Some(s.output_stats.class_similarity),
            // Measured fraction of zero prunable weights of a pruned model (not assumed).
            "sparsity" => s.pruned.as_ref().map(|p| p.measured.sparsity),
            _ => None,
        }
    }

    /// A config cell rendered as text (`None` when the column does not apply to this run).
    pub fn key(&self, col: &str) -> Option<String> {
        self.config.get(col).map(|c| c.to_string())
    }

    /// The test top-1 curve (percent) from `metrics.csv`.
    pub fn curve(&self) -> Vec<(u32, f64)> {
        let (h, rows) = &self.epochs;
        let (Some(e), Some(t)) = (h.iter().position(|c| c == "epoch"), h.iter().position(|c| c == "test_top1")) else { return vec![] };
        rows.iter().filter_map(|r| Some((r.get(e).copied().flatten()? as u32, r.get(t).copied().flatten()?))).collect()
    }
}

/// Records of every run in a suite's plan, in plan order (pending runs included).
pub fn from_plan(plan: &Plan, results: &Path) -> anyhow::Result<Vec<Record>> {
    let specs: HashMap<String, RunSpec> = plan.runs.iter().map(|r| (r.spec.id.clone(), r.spec.clone())).collect();
    let mut groups = HashMap::new();
    (0..plan.runs.len()).map(|i| record(plan, results, i, &specs, &mut groups)).collect()
}

/// Records of every run directory under `<results>/<suite>/runs` (for reports without the suite
/// file); an error names the first directory whose `config.json` cannot say which run it is.
pub fn from_dir(suite_dir: &Path) -> anyhow::Result<(String, Vec<Record>)> {
    let (suite, records, unreadable) = from_dir_checked(suite_dir)?;
    if let Some(d) = unreadable.first() {
        crate::input_bail!("{d}");
    }
    Ok((suite, records))
}

/// [`from_dir`], with the run directories whose `config.json` is damaged (unreadable, or naming
/// another run) returned apart instead of failing: they cannot become records, and a report
/// lists them.
pub fn from_dir_checked(suite_dir: &Path) -> anyhow::Result<(String, Vec<Record>, Vec<Damage>)> {
    let runs = suite_dir.join("runs");
    let suite = suite_dir.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    let mut specs = Vec::new();
    let mut unreadable = Vec::new();
    let entries = std::fs::read_dir(&runs).map_err(|e| crate::error::InputError::new(format!("{}: cannot read results: {e}", runs.display())))?;
    for e in entries {
        let e = e.with_context(|| format!("listing {}", runs.display()))?;
        let dir = RunDir { path: e.path() };
        if !dir.config().is_file() {
            continue;
        }
        let name = e.file_name().to_string_lossy().to_string();
        match dir.read_spec() {
            Ok(spec) if spec.id == name => specs.push(spec),
            Ok(spec) => unreadable.push(Damage { file: dir.config(), reason: format!("belongs to run {} but sits in run directory {name}", spec.id) }),
            Err(err) => unreadable.push(Damage { file: dir.config(), reason: format!("not a run config: {:#}", err.root_cause()) }),
        }
    }
    unreadable.sort_by(|a, b| a.file.cmp(&b.file));
    // Teachers first, then by id: a stable order independent of the file system.
    specs.sort_by(|a, b| (a.role != Role::Teacher, &a.id).cmp(&(b.role != Role::Teacher, &b.id)));
    let plan = Plan {
        suite: suite.clone(),
        runs: specs
            .into_iter()
            .map(|spec| {
                let deps = spec
                    .teachers
                    .iter()
                    .filter_map(|t| match t {
                        TeacherRef::Run { id, .. } => Some(id.clone()),
                        _ => None,
                    })
                    .collect();
                PlannedRun { spec, deps }
            })
            .collect(),
        points: 0,
    };
    let results = suite_dir.parent().unwrap_or(Path::new("."));
    Ok((suite, from_plan(&plan, results)?, unreadable))
}

fn record(plan: &Plan, results: &Path, i: usize, specs: &HashMap<String, RunSpec>, groups: &mut HashMap<String, String>) -> anyhow::Result<Record> {
    let spec = plan.runs[i].spec.clone();
    let dir = RunDir::new(results, &plan.suite, &spec.id);
    let (state, mut detail) = sched::state_of(plan, results, i);
    let summary = if state == "done" { Some(dir.read_summary()?) } else { None };
    let mut config = flatten(&spec);
    if let Some(TeacherRef::Run { id, .. }) = spec.teachers.first() {
        let teacher = specs.get(id).cloned().or_else(|| RunDir::new(results, &plan.suite, id).read_spec().ok());
        if let Some(t) = teacher {
            for (k, v) in flatten(&t) {
                if !matches!(k.as_str(), "role" | "pair" | "dataset") {
                    config.insert(format!("teacher.{k}"), v);
                }
            }
        }
    }
    let env = crate::store::read_json::<serde_json::Value>(&dir.env())
        .ok()
        .and_then(|v| v.as_object().cloned())
        .map(|o| {
            o.into_iter()
                .filter(|(_, v)| !v.is_object() && !v.is_array())
                .map(|(k, v)| (k, v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    // A damaged run's curve is not shown; an unfinished run's unreadable curve is named.
    let epochs = match (state.as_str(), dir.metrics().is_file()) {
        ("damaged", _) | (_, false) => (vec![], vec![]),
        _ => verify::metrics(&dir, spec.train.epochs, state == "done").unwrap_or_else(|d| {
            detail = format!("{detail} (curve not shown: {d})");
            (vec![], vec![])
        }),
    };
    let group = group_of(&spec, specs, results, &plan.suite, groups);
    Ok(Record { spec, state, detail, summary, group, config, env, epochs })
}

/// The resolved config as named cells. Recipe fields come through serde so a new recipe key
/// becomes a column without touching this code.
pub fn flatten(spec: &RunSpec) -> BTreeMap<String, Cell> {
    let mut m = BTreeMap::new();
    let role = if spec.role == Role::Teacher { "teacher" } else { "student" };
    m.insert("role".into(), Cell::S(role.into()));
    m.insert("dataset".into(), Cell::S(spec.dataset.name.clone()));
    m.insert("model".into(), Cell::S(spec.model.clone()));
    m.insert("method".into(), Cell::S(spec.method.clone()));
    m.insert("seed".into(), Cell::I(spec.seed as i64));
    m.insert("teacher".into(), Cell::S(spec.teacher_models()));
    m.insert("pair".into(), Cell::S(pair(spec)));
    m.insert("peers".into(), Cell::S(spec.peers.join("+")));
    if let Ok(serde_json::Value::Object(o)) = serde_json::to_value(&spec.train) {
        for (k, v) in o {
            let c = match v {
                serde_json::Value::Bool(b) => Cell::B(b),
                serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => Cell::I(n.as_i64().unwrap_or(i64::MAX)),
                serde_json::Value::Number(n) => Cell::F(n.as_f64().unwrap_or(f64::NAN)),
                serde_json::Value::String(s) => Cell::S(s),
                serde_json::Value::Array(a) => Cell::S(a.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",")),
                other => Cell::S(other.to_string()),
            };
            m.insert(format!("train.{k}"), c);
        }
    }
    // Left out of the serialised recipe when fp32 (to keep ids); a column for every run.
    m.insert("train.precision".into(), Cell::S(spec.train.precision.as_str().into()));
    if let Some(p) = &spec.prune {
        m.insert("prune.method".into(), Cell::S(p.method.clone()));
        m.insert("prune.target".into(), Cell::F(p.target));
        m.insert("prune.round".into(), Cell::I(p.round as i64));
        m.insert("prune.rounds".into(), Cell::I(p.rounds as i64));
    }
    if spec.student_from_teacher {
        m.insert("student_from_teacher".into(), Cell::B(true));
    }
    for (k, v) in &spec.params {
        let c = match v {
            ParamValue::Bool(b) => Cell::B(*b),
            ParamValue::Int(i) => Cell::I(*i),
            ParamValue::Float(f) => Cell::F(*f),
            ParamValue::Str(s) => Cell::S(s.to_string()),
        };
        m.insert(format!("param.{k}"), c);
    }
    m
}

/// `teacher→student`, or the student alone for teacher-free runs.
pub fn pair(spec: &RunSpec) -> String {
    if spec.teachers.is_empty() { spec.model.clone() } else { format!("{}→{}", spec.teacher_models(), spec.model) }
}

/// Seed-free identity of a run: its canonical config without id, seed and bookkeeping, with
/// each suite-trained teacher replaced by the teacher's own group (so students of teachers
/// that differ only in seed land in one group).
fn group_of(spec: &RunSpec, specs: &HashMap<String, RunSpec>, results: &Path, suite: &str, memo: &mut HashMap<String, String>) -> String {
    if let Some(g) = memo.get(&spec.id) {
        return g.clone();
    }
    let teachers: Vec<serde_json::Value> = spec
        .teachers
        .iter()
        .map(|t| match t {
            TeacherRef::Run { id, model } => {
                let t = specs.get(id).cloned().or_else(|| RunDir::new(results, suite, id).read_spec().ok());
                match t {
                    Some(t) => serde_json::json!({"group": group_of(&t, specs, results, suite, memo)}),
                    None => serde_json::json!({"run": id, "model": model}),
                }
            }
            TeacherRef::Checkpoint { model, hash, .. } => serde_json::json!({"checkpoint": hash, "model": model}),
        })
        .collect();
    // A pruning stage's parent is identified by its group too (not its seeded run id).
    let prune = spec.prune.as_ref().map(|p| {
        let mut v = serde_json::to_value(p).unwrap_or_default();
        if let crate::suite::TeacherRef::Run { id, .. } = &p.parent {
            if let Some(t) = specs.get(id).cloned().or_else(|| RunDir::new(results, suite, id).read_spec().ok()) {
                v["parent"] = serde_json::json!({"group": group_of(&t, specs, results, suite, memo)});
            }
        }
        v
    });
    let view = serde_json::json!({
        "dataset": spec.dataset,
        "model": spec.model,
        "method": spec.method,
        "params": spec.params,
        "train": spec.train,
        "teachers": teachers,
        "peers": spec.peers,
        "prune": prune,
        "student_from_teacher": spec.student_from_teacher,
    });
    let g = blake3::hash(view.to_string().as_bytes()).to_hex()[..12].to_string();
    memo.insert(spec.id.clone(), g.clone());
    g
}
