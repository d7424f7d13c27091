//! Regression check against a baseline: a frozen baseline TOML (`harness baseline`), a previous
//! report's `runs.parquet`, or the suite's published `[[expected]]` numbers. A group regresses
//! when its mean drops by more than the tolerance: an absolute number of points, or k standard
//! errors of the difference of means. Missing groups, groups with failed runs and groups with
//! too few seeds for a spread-derived tolerance are verdicts of their own, never passes.

use std::path::Path;

use polars::prelude::*;
use serde::{Deserialize, Serialize};

use super::{Group, Metric, Report, stats};
use crate::error::InputError;
use crate::suite::{Expected, Role};

/// A frozen baseline file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineFile {
    pub suite: String,
    /// `best` or `last`.
    pub metric: String,
    pub created: String,
    pub commit: String,
    #[serde(default, rename = "group")]
    pub groups: Vec<BaselineGroup>,
}

/// One group of a baseline.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineGroup {
    /// The report's seed-free group id.
    pub id: String,
    pub label: String,
    pub n: usize,
    pub mean: f64,
    #[serde(default)]
    pub std: Option<f64>,
}

/// How a baseline group is found among the current results.
#[derive(Clone, Debug)]
enum Key {
    Group(String),
    Published { teacher: Option<String>, student: String, method: String },
}

/// One baseline value to check.
#[derive(Clone, Debug)]
struct Base {
    key: Key,
    label: String,
    metric: Metric,
    /// Seeds behind the baseline (`None` for published numbers).
    n: Option<usize>,
    mean: f64,
    std: Option<f64>,
}

/// Tolerance settings.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Absolute tolerance in points; when unset, `k_se` standard errors of the difference.
    pub tolerance: Option<f64>,
    pub k_se: f64,
    pub min_seeds: usize,
    /// Metric for baselines that do not fix one (runs.parquet).
    pub metric: Metric,
    /// Tolerance for published numbers when no absolute tolerance is given.
    pub expected_tolerance: f64,
}

/// The verdict for one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Ok,
    Regressed,
    /// In the baseline, but no finished run now.
    Missing,
    /// Some of the group's runs failed or diverged.
    FailedRuns,
    /// Fewer than `min_seeds` on either side and no absolute tolerance.
    TooFewSeeds,
    /// Only in the current results (informational).
    New,
}

impl Verdict {
    pub fn fails(self) -> bool {
        matches!(self, Verdict::Regressed | Verdict::Missing | Verdict::FailedRuns | Verdict::TooFewSeeds)
    }
}

/// One line of the check.
#[derive(Clone, Debug, Serialize)]
pub struct Line {
    pub group: String,
    pub label: String,
    pub metric: &'static str,
    pub baseline_mean: Option<f64>,
    pub baseline_n: Option<usize>,
    pub now_mean: Option<f64>,
    pub now_n: usize,
    pub now_failed: usize,
    pub delta: Option<f64>,
    pub tolerance: Option<f64>,
    pub verdict: Verdict,
}

/// The whole check; `exit_code` is 1 when any line fails.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub suite: String,
    pub baseline: String,
    pub lines: Vec<Line>,
    pub failures: usize,
}

impl Outcome {
    pub fn exit_code(&self) -> i32 {
        if self.failures > 0 { 1 } else { 0 }
    }

    pub fn text(&self) -> String {
        let mut s = format!("check {} against {}\n", self.suite, self.baseline);
        s.push_str(&format!(
            "{:<14} {:<12} {:>9} {:>4} {:>9} {:>4} {:>7} {:>6}  {:<13} run\n",
            "group", "metric", "baseline", "n", "now", "n", "Δ", "tol", "verdict"
        ));
        let f = |x: Option<f64>, p: usize| x.map(|v| format!("{v:.p$}")).unwrap_or_else(|| "-".into());
        for l in &self.lines {
            let now_n = if l.now_failed > 0 { format!("{}+{}f", l.now_n, l.now_failed) } else { l.now_n.to_string() };
            s.push_str(&format!(
                "{:<14} {:<12} {:>9} {:>4} {:>9} {:>4} {:>7} {:>6}  {:<13} {}\n",
                l.group,
                l.metric,
                f(l.baseline_mean, 2),
                l.baseline_n.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
                f(l.now_mean, 2),
                now_n,
                l.delta.map(|d| format!("{d:+.2}")).unwrap_or_else(|| "-".into()),
                f(l.tolerance, 2),
                format!("{:?}", l.verdict).to_lowercase(),
                l.label
            ));
        }
        s.push_str(&format!("{} group(s) checked, {} failing\n", self.lines.len(), self.failures));
        s
    }
}

/// Freezes the current results as a baseline (groups with at least one finished seed).
pub fn freeze(r: &Report, metric: Metric) -> BaselineFile {
    let groups = r
        .groups
        .iter()
        .filter_map(|g| g.stats.get(metric.column()).map(|s| BaselineGroup { id: g.id.clone(), label: r.label(g), n: s.n, mean: s.mean, std: s.std }))
        .collect();
    BaselineFile {
        suite: r.suite.clone(),
        metric: if metric == Metric::Best { "best".into() } else { "last".into() },
        created: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        commit: crate::env::git_commit().into(),
        groups,
    }
}

fn bad(path: &Path, msg: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(InputError::new(format!("{}: {msg}", path.display())))
}

/// Reads a baseline TOML written by `harness baseline`, validating every value.
fn read_toml(path: &Path) -> anyhow::Result<Vec<Base>> {
    let text = std::fs::read_to_string(path).map_err(|e| bad(path, format!("cannot read baseline: {e}")))?;
    let f: BaselineFile = toml::from_str(&text).map_err(|e| {
        bad(path, format!("not a harness baseline (expected keys suite, metric, created, commit and [[group]] tables with id, label, n, mean, std): {e}"))
    })?;
    let metric = Metric::parse(&f.metric).ok_or_else(|| bad(path, format!("`metric`: expected \"best\" or \"last\", found {:?}", f.metric)))?;
    f.groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            if g.n == 0 || !g.mean.is_finite() || g.std.is_some_and(|s| !s.is_finite() || s < 0.0) {
                return Err(bad(path, format!("group[{i}] ({}): expected n >= 1, a finite mean and std >= 0", g.id)));
            }
            Ok(Base { key: Key::Group(g.id.clone()), label: g.label.clone(), metric, n: Some(g.n), mean: g.mean, std: g.std })
        })
        .collect()
}

/// Aggregates a previous report's `runs.parquet` per group (finished runs only).
fn read_parquet(path: &Path, metric: Metric) -> anyhow::Result<Vec<Base>> {
    let file = std::fs::File::open(path).map_err(|e| bad(path, format!("cannot open: {e}")))?;
    let df = ParquetReader::new(file).finish().map_err(|e| bad(path, format!("not a Parquet file: {e}")))?;
    for c in ["group", "status", "role", "pair", "method", metric.column()] {
        if df.column(c).is_err() {
            return Err(bad(path, format!("missing column `{c}`; expected the runs.parquet that `harness report` writes")));
        }
    }
    let m = metric.column();
    let agg = df
        .lazy()
        .filter(col("status").eq(lit("done")))
        .group_by_stable([col("group")])
        .agg([
            col(m).count().cast(DataType::Int64).alias("n"),
            col(m).mean().alias("mean"),
            col(m).std(1).alias("std"),
            col("role").first().alias("role"),
            col("pair").first().alias("pair"),
            col("method").first().alias("method"),
        ])
        .collect()
        .map_err(|e| bad(path, format!("cannot aggregate: {e}")))?;
    let mut out = Vec::new();
    let s = |c: &str| -> anyhow::Result<StringChunked> { Ok(agg.column(c)?.cast(&DataType::String)?.str()?.clone()) };
    let (ids, roles, pairs, methods) = (s("group")?, s("role")?, s("pair")?, s("method")?);
    let n = agg.column("n")?.cast(&DataType::Float64)?;
    let mean = agg.column("mean")?.cast(&DataType::Float64)?;
    let std = agg.column("std")?.cast(&DataType::Float64)?;
    for i in 0..agg.height() {
        let (Some(id), Some(mu)) = (ids.get(i), mean.f64()?.get(i)) else { continue };
        let count = n.f64()?.get(i).unwrap_or(0.0) as usize;
        if count == 0 {
            continue;
        }
        let label = format!("{} {} {}", roles.get(i).unwrap_or(""), pairs.get(i).unwrap_or(""), methods.get(i).unwrap_or(""));
        out.push(Base { key: Key::Group(id.to_string()), label, metric, n: Some(count), mean: mu, std: std.f64()?.get(i) });
    }
    Ok(out)
}

fn from_expected(expected: &[Expected]) -> Vec<Base> {
    expected
        .iter()
        .map(|e| Base {
            key: Key::Published { teacher: e.teacher.clone(), student: e.student.clone(), method: e.method.clone() },
            label: format!("{}{} {} (published: {})", e.teacher.as_ref().map(|t| format!("{t}→")).unwrap_or_default(), e.student, e.method, e.source),
            metric: if e.metric == "last" { Metric::Last } else { Metric::Best },
            n: None,
            mean: e.top1,
            std: e.std,
        })
        .collect()
}

/// Loads a baseline: `expected` (the suite's published numbers), a `.toml` baseline or a `.parquet`.
fn load(spec: &str, expected: &[Expected], metric: Metric) -> anyhow::Result<Vec<Base>> {
    if spec == "expected" {
        if expected.is_empty() {
            crate::input_bail!("--baseline expected: the suite has no [[expected]] entries");
        }
        return Ok(from_expected(expected));
    }
    let path = Path::new(spec);
    match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => read_toml(path),
        Some("parquet") => read_parquet(path, metric),
        _ => Err(bad(path, "expected a baseline .toml (from `harness baseline`), a runs.parquet (from `harness report`) or the word `expected`")),
    }
}

/// Checks the current results against a baseline.
pub fn check(r: &Report, baseline: &str, expected: &[Expected], o: &CheckOptions) -> anyhow::Result<Outcome> {
    let bases = load(baseline, expected, o.metric)?;
    if bases.is_empty() {
        // Nothing to compare would pass every check: an empty baseline is bad input.
        crate::input_bail!("--baseline {baseline}: holds no groups to compare against; freeze one with `harness baseline` after runs finished");
    }
    let mut lines = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for b in &bases {
        let g: Option<&Group> = match &b.key {
            Key::Group(id) => r.groups.iter().find(|g| &g.id == id),
            Key::Published { teacher, student, method } => r.groups.iter().find(|g| {
                let s = &r.head(g).spec;
                s.role == Role::Student && &s.method == method && &s.model == student && s.teachers.first().map(|t| t.model().to_string()) == *teacher
            }),
        };
        if let Some(g) = g {
            seen.insert(g.id.clone());
        }
        let stat = g.and_then(|g| g.stats.get(b.metric.column()));
        let now_failed = g.map_or(0, |g| g.n_failed);
        let mut line = Line {
            group: g.map(|g| g.id.clone()).unwrap_or_else(|| if let Key::Group(id) = &b.key { id.clone() } else { "-".into() }),
            label: b.label.clone(),
            metric: b.metric.column(),
            baseline_mean: Some(b.mean),
            baseline_n: b.n,
            now_mean: stat.map(|s| s.mean),
            now_n: stat.map_or(0, |s| s.n),
            now_failed,
            delta: stat.map(|s| s.mean - b.mean),
            tolerance: None,
            verdict: Verdict::Missing,
        };
        if let Some(s) = stat {
            let tol = match (o.tolerance, b.n) {
                (Some(t), _) => Some(t),
                (None, None) => Some(o.expected_tolerance),
                (None, Some(bn)) if bn >= o.min_seeds && s.n >= o.min_seeds => {
                    stats::se_diff(&stats::Moments { n: bn, mean: b.mean, std: b.std }, &s.moments()).map(|se| o.k_se * se)
                }
                _ => None,
            };
            line.tolerance = tol;
            line.verdict = match tol {
                _ if now_failed > 0 => Verdict::FailedRuns,
                None => Verdict::TooFewSeeds,
                Some(t) if s.mean - b.mean < -t => Verdict::Regressed,
                Some(_) => Verdict::Ok,
            };
        } else if now_failed > 0 {
            line.verdict = Verdict::FailedRuns;
        }
        lines.push(line);
    }
    if bases.iter().all(|b| matches!(b.key, Key::Group(_))) {
        for g in r.groups.iter().filter(|g| !seen.contains(&g.id)) {
            let s = g.stats.get(o.metric.column());
            lines.push(Line {
                group: g.id.clone(),
                label: r.label(g),
                metric: o.metric.column(),
                baseline_mean: None,
                baseline_n: None,
                now_mean: s.map(|s| s.mean),
                now_n: s.map_or(0, |s| s.n),
                now_failed: g.n_failed,
                delta: None,
                tolerance: None,
                verdict: if g.n_failed > 0 { Verdict::FailedRuns } else { Verdict::New },
            });
        }
    }
    let failures = lines.iter().filter(|l| l.verdict.fails()).count();
    Ok(Outcome { suite: r.suite.clone(), baseline: baseline.to_string(), lines, failures })
}
