//! Regression check against a baseline: a frozen baseline TOML (`harness baseline`), a previous
//! report's `runs.parquet`, or the suite's published `[[expected]]` numbers. A group regresses
//! when its mean drops by more than the tolerance: an absolute number of points, or k standard
//! errors of the difference of means. Missing groups and groups with failed or damaged runs are
//! verdicts of their own, never passes. Groups with fewer than `min_seeds` seeds on either side
//! have no spread-derived tolerance: they are compared within an absolute `few_seeds_tolerance`,
//! fail beyond it, and within it are a warning (`few_seeds`) that fails only under `strict`, so a
//! check against a baseline frozen from the same results passes.

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
pub struct Base {
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
    /// Absolute tolerance in points for groups with fewer than `min_seeds` seeds.
    pub few_seeds_tolerance: f64,
    /// Few-seed groups fail instead of warning.
    pub strict: bool,
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
    /// Some of the group's results failed verification (named in the line's label).
    Damaged,
    /// Fewer than `min_seeds` on either side: within the few-seeds tolerance, but without a
    /// spread to judge by (a warning; a failure under `--strict`).
    FewSeeds,
    /// Only in the current results (informational).
    New,
}

impl Verdict {
    pub fn fails(self, strict: bool) -> bool {
        matches!(self, Verdict::Regressed | Verdict::Missing | Verdict::FailedRuns | Verdict::Damaged) || (strict && self == Verdict::FewSeeds)
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
    pub now_damaged: usize,
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
    /// Few-seed groups within their tolerance (not failures unless `strict`).
    pub warnings: usize,
    pub strict: bool,
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
        s.push_str(&format!("{} group(s) checked, {} failing", self.lines.len(), self.failures));
        if self.warnings > 0 {
            let how = if self.strict { "failing under --strict" } else { "warnings; --strict makes them fail" };
            s.push_str(&format!(", {} with too few seeds for a spread-derived tolerance ({how})", self.warnings));
        }
        s.push('\n');
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
    if f.groups.is_empty() {
        return Err(bad(path, "no [[group]] tables: a baseline without groups checks nothing"));
    }
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

/// Loads a baseline: `expected` (the suite's published numbers), a `.toml` baseline or a `.parquet`,
/// every value validated (an input error naming the file otherwise).
pub fn load(spec: &str, expected: &[Expected], metric: Metric) -> anyhow::Result<Vec<Base>> {
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
        let now_damaged = g.map_or(0, |g| g.n_damaged);
        let mut line = Line {
            group: g.map(|g| g.id.clone()).unwrap_or_else(|| if let Key::Group(id) = &b.key { id.clone() } else { "-".into() }),
            label: b.label.clone(),
            metric: b.metric.column(),
            baseline_mean: Some(b.mean),
            baseline_n: b.n,
            now_mean: stat.map(|s| s.mean),
            now_n: stat.map_or(0, |s| s.n),
            now_failed,
            now_damaged,
            delta: stat.map(|s| s.mean - b.mean),
            tolerance: None,
            verdict: Verdict::Missing,
        };
        if let Some(s) = stat {
            let spread = match (o.tolerance, b.n) {
                (Some(t), _) => Some(t),
                (None, None) => Some(o.expected_tolerance),
                (None, Some(bn)) if bn >= o.min_seeds && s.n >= o.min_seeds => {
                    stats::se_diff(&stats::Moments { n: bn, mean: b.mean, std: b.std }, &s.moments()).map(|se| o.k_se * se)
                }
                _ => None,
            };
            let tol = spread.unwrap_or(o.few_seeds_tolerance);
            line.tolerance = Some(tol);
            line.verdict = match spread {
                _ if now_damaged > 0 => Verdict::Damaged,
                _ if now_failed > 0 => Verdict::FailedRuns,
                _ if s.mean - b.mean < -tol => Verdict::Regressed,
                None => Verdict::FewSeeds,
                Some(_) => Verdict::Ok,
            };
        } else if now_damaged > 0 {
            line.verdict = Verdict::Damaged;
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
                now_damaged: g.n_damaged,
                delta: None,
                tolerance: None,
                verdict: if g.n_damaged > 0 {
                    Verdict::Damaged
                } else if g.n_failed > 0 {
                    Verdict::FailedRuns
                } else {
                    Verdict::New
                },
            });
        }
    }
    // A damaged group's line names each damaged run, file and reason.
    for l in lines.iter_mut().filter(|l| l.verdict == Verdict::Damaged) {
        if let Some(g) = r.groups.iter().find(|g| g.id == l.group) {
            let why: Vec<String> =
                g.members.iter().map(|&i| &r.records[i]).filter(|x| x.state == "damaged").map(|x| format!("{}: {}", x.spec.id, x.detail)).collect();
            l.label = format!("{} [damaged: {}]", l.label, why.join("; "));
        }
    }
    // Folders that cannot say which run they are: their group is unknown, the damage is not.
    for d in &r.unreadable {
        lines.push(Line {
            group: "-".into(),
            label: d.to_string(),
            metric: o.metric.column(),
            baseline_mean: None,
            baseline_n: None,
            now_mean: None,
            now_n: 0,
            now_failed: 0,
            now_damaged: 1,
            delta: None,
            tolerance: None,
            verdict: Verdict::Damaged,
        });
    }
    let failures = lines.iter().filter(|l| l.verdict.fails(o.strict)).count();
    let warnings = lines.iter().filter(|l| l.verdict == Verdict::FewSeeds).count();
    Ok(Outcome { suite: r.suite.clone(), baseline: baseline.to_string(), lines, failures, warnings, strict: o.strict })
}
