//! Reports: runs → Polars frames (`runs.parquet`, `epochs.parquet`), seed aggregates with
//! Student-t intervals, comparisons against a baseline method (paired tests on shared seeds,
//! Welch otherwise), reproduction verdicts for the suite's published numbers, paper tables
//! (Markdown, LaTeX, CSV, HTML), plots (PNG + SVG), and the regression `check`.
//!
//! Layout of `reports/<suite>/`: `index.md`/`index.html` tie everything together; `tables/`,
//! `plots/`, and the frames. Accuracies are in percent, ECE in percent, KL in nats.

pub mod check;
pub mod label;
pub mod load;
pub mod plot;
pub mod stats;
pub mod table;
pub mod verdict;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use polars::prelude::*;

pub use load::{Cell, Record};
use stats::Moments;

/// Which epoch's accuracy a table shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Best test top-1 over epochs (DKD/mdistiller convention).
    Best,
    /// Last-epoch test top-1 (CRD/RepDistiller convention).
    Last,
}

impl Metric {
    pub fn parse(s: &str) -> Option<Metric> {
        match s {
            "best" => Some(Metric::Best),
            "last" => Some(Metric::Last),
            _ => None,
        }
    }
    /// The summary column it reads.
    pub fn column(self) -> &'static str {
        match self {
            Metric::Best => "best_top1",
            Metric::Last => "last_top1",
        }
    }
    pub fn describe(self) -> &'static str {
        match self {
            Metric::Best => "best-epoch test top-1 (%)",
            Metric::Last => "last-epoch test top-1 (%)",
        }
    }
}

/// Report settings: the suite's `[report]` section, overridable from the command line.
#[derive(Clone, Debug)]
pub struct Options {
    pub metric: Metric,
    pub rows: Vec<String>,
    pub cols: Vec<String>,
    pub baseline: Option<String>,
    pub alpha: f64,
    pub expected_tolerance: f64,
    pub gap_x: String,
    /// Write plots (PNG + SVG).
    pub plots: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            metric: Metric::Last,
            rows: vec!["method".into()],
            cols: vec!["pair".into()],
            baseline: None,
            alpha: 0.05,
            expected_tolerance: 1.0,
            gap_x: "teacher_top1".into(),
            plots: true,
        }
    }
}

/// Aggregate of one metric over a group's finished seeds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stat {
    pub n: usize,
    pub mean: f64,
    pub std: Option<f64>,
    pub min: f64,
    pub max: f64,
    /// Half-width of the 95% Student-t interval of the mean.
    pub ci95: Option<f64>,
}

impl Stat {
    pub fn moments(&self) -> Moments {
        Moments { n: self.n, mean: self.mean, std: self.std }
    }
}

/// Runs that differ only in their seeds.
#[derive(Clone, Debug)]
pub struct Group {
    pub id: String,
    /// Indices into [`Report::records`], in plan order.
    pub members: Vec<usize>,
    pub n_done: usize,
    /// Failed or diverged runs (shown in tables, never dropped silently).
    pub n_failed: usize,
    /// Runs whose results failed verification ([`crate::store::verify`]): not aggregated.
    pub n_damaged: usize,
    /// Metric name → aggregate (absent when no finished run has it).
    pub stats: BTreeMap<String, Stat>,
}

/// Everything a report is made of.
pub struct Report {
    pub suite: String,
    pub records: Vec<Record>,
    pub groups: Vec<Group>,
    pub runs: DataFrame,
    pub epochs: DataFrame,
    pub aggregates: DataFrame,
    /// Run directories whose `config.json` cannot say which run they are (results read from a
    /// folder): listed as damaged, never aggregated.
    pub unreadable: Vec<crate::store::verify::Damage>,
    /// The teacher gate's lines (accuracy, hash, comparison; `sched::gate`), for a suite's report.
    pub teachers: Vec<String>,
}

impl Report {
    /// Builds the frames and aggregates (Polars) from loaded records.
    pub fn build(suite: &str, records: Vec<Record>) -> anyhow::Result<Report> {
        let runs = runs_frame(&records)?;
        let epochs = epochs_frame(&records)?;
        let aggregates = aggregate(&runs)?;
        let groups = groups_from(&records, &aggregates)?;
        let mut r = Report { suite: suite.to_string(), records, groups, runs, epochs, aggregates, unreadable: vec![], teachers: vec![] };
        r.add_intervals()?;
        Ok(r)
    }

    /// The group's first record (config columns are shared by the group's members, except seed).
    pub fn head(&self, g: &Group) -> &Record {
        &self.records[g.members[0]]
    }

    /// Every damaged run as `id label: file: reason` (records first, then unreadable folders).
    pub fn damaged(&self) -> Vec<String> {
        let runs = self.records.iter().filter(|r| r.state == "damaged").map(|r| format!("{} {}: {}", r.spec.id, r.spec.label(), r.detail));
        runs.chain(self.unreadable.iter().map(|d| format!("(unknown run): {d}"))).collect()
    }

    /// (seed, value) of a metric over the group's finished runs, in plan order.
    pub fn seed_values(&self, g: &Group, metric: &str) -> Vec<(u64, f64)> {
        g.members.iter().map(|&i| &self.records[i]).filter(|x| x.state == "done").filter_map(|x| x.metric(metric).map(|v| (x.spec.seed, v))).collect()
    }

    /// Human label of a group: role, pair, method and its parameters.
    pub fn label(&self, g: &Group) -> String {
        let s = &self.head(g).spec;
        let mut l = format!("{} {} {}", if s.role == crate::suite::Role::Teacher { "teacher" } else { "student" }, load::pair(s), s.method);
        let params: Vec<String> = s.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if !params.is_empty() {
            l.push_str(&format!(" ({})", params.join(" ")));
        }
        l
    }

    /// Adds the Student-t 95% half-widths to the aggregate frame and the groups.
    fn add_intervals(&mut self) -> anyhow::Result<()> {
        let at: std::collections::HashMap<String, usize> = self.groups.iter().enumerate().map(|(i, g)| (g.id.clone(), i)).collect();
        let ids: Vec<Option<usize>> = self.aggregates.column("group")?.str()?.iter().map(|id| id.and_then(|id| at.get(id).copied())).collect();
        for m in load::METRICS {
            let mut col = Vec::with_capacity(ids.len());
            for gi in &ids {
                let ci = gi.and_then(|gi| self.groups[gi].stats.get_mut(*m)).and_then(|s| {
                    s.ci95 = stats::ci_half_width(s.n, s.std, 0.95);
                    s.ci95
                });
                col.push(ci);
            }
            self.aggregates.with_column(Column::new(format!("{m}_ci95").into(), col))?;
        }
        Ok(())
    }
}

/// Builds a typed column from optional cells: all ints → Int64, numbers → Float64, all bools
/// → Boolean, otherwise strings.
fn column_of(name: &str, cells: &[Option<&Cell>]) -> Column {
    let present: Vec<&Cell> = cells.iter().flatten().copied().collect();
    let name: PlSmallStr = name.into();
    if !present.is_empty() && present.iter().all(|c| matches!(c, Cell::I(_))) {
        Column::new(name, cells.iter().map(|c| c.and_then(|c| if let Cell::I(i) = c { Some(*i) } else { None })).collect::<Vec<_>>())
    } else if !present.is_empty() && present.iter().all(|c| matches!(c, Cell::I(_) | Cell::F(_))) {
        Column::new(name, cells.iter().map(|c| c.and_then(Cell::as_f64)).collect::<Vec<_>>())
    } else if !present.is_empty() && present.iter().all(|c| matches!(c, Cell::B(_))) {
        Column::new(name, cells.iter().map(|c| c.and_then(|c| if let Cell::B(b) = c { Some(*b) } else { None })).collect::<Vec<_>>())
    } else {
        Column::new(name, cells.iter().map(|c| c.map(|c| c.to_string())).collect::<Vec<_>>())
    }
}

/// One row per run: id, group, state, every config column, every final metric, provenance.
pub fn runs_frame(records: &[Record]) -> anyhow::Result<DataFrame> {
    let n = records.len();
    let mut cols = vec![
        Column::new("id".into(), records.iter().map(|r| r.spec.id.clone()).collect::<Vec<_>>()),
        Column::new("group".into(), records.iter().map(|r| r.group.clone()).collect::<Vec<_>>()),
        Column::new("status".into(), records.iter().map(|r| r.state.clone()).collect::<Vec<_>>()),
        Column::new("detail".into(), records.iter().map(|r| r.detail.clone()).collect::<Vec<_>>()),
    ];
    let keys: std::collections::BTreeSet<&String> = records.iter().flat_map(|r| r.config.keys()).collect();
    for k in keys {
        let cells: Vec<Option<&Cell>> = records.iter().map(|r| r.config.get(k)).collect();
        cols.push(column_of(k, &cells));
    }
    for m in load::METRICS {
        cols.push(Column::new((*m).into(), records.iter().map(|r| r.metric(m)).collect::<Vec<_>>()));
    }
    let env_keys: std::collections::BTreeSet<&String> = records.iter().flat_map(|r| r.env.keys()).collect();
    for k in env_keys {
        cols.push(Column::new(format!("env.{k}").into(), records.iter().map(|r| r.env.get(k).cloned()).collect::<Vec<_>>()));
    }
    Ok(DataFrame::new(n, cols)?)
}

/// One row per (run, epoch): id, group, seed, and every `metrics.csv` column (union over runs).
pub fn epochs_frame(records: &[Record]) -> anyhow::Result<DataFrame> {
    let mut names: Vec<String> = Vec::new();
    for r in records {
        for h in &r.epochs.0 {
            if !names.contains(h) {
                names.push(h.clone());
            }
        }
    }
    let (mut id, mut group, mut seed) = (Vec::new(), Vec::new(), Vec::new());
    let mut values: Vec<Vec<Option<f64>>> = vec![Vec::new(); names.len()];
    for r in records {
        let (h, rows) = &r.epochs;
        let at: Vec<Option<usize>> = names.iter().map(|n| h.iter().position(|x| x == n)).collect();
        for row in rows {
            id.push(r.spec.id.clone());
            group.push(r.group.clone());
            seed.push(r.spec.seed as i64);
            for (j, a) in at.iter().enumerate() {
                values[j].push(a.and_then(|a| row.get(a).copied().flatten()));
            }
        }
    }
    let n = id.len();
    let mut cols = vec![Column::new("id".into(), id), Column::new("group".into(), group), Column::new("seed".into(), seed)];
    for (name, v) in names.iter().zip(values) {
        cols.push(Column::new(name.as_str().into(), v));
    }
    Ok(DataFrame::new(n, cols)?)
}

/// Per group: run counts by state, and n / mean / std / min / max of every metric over the
/// finished runs (lazy Polars; std with ddof = 1).
pub fn aggregate(runs: &DataFrame) -> anyhow::Result<DataFrame> {
    let failed = col("status").eq(lit("failed")).or(col("status").eq(lit("diverged")));
    let counts = runs.clone().lazy().group_by_stable([col("group")]).agg([
        len().cast(DataType::Int64).alias("n_runs"),
        col("status").eq(lit("done")).sum().cast(DataType::Int64).alias("n_done"),
        failed.sum().cast(DataType::Int64).alias("n_failed"),
        col("status").eq(lit("damaged")).sum().cast(DataType::Int64).alias("n_damaged"),
    ]);
    let mut aggs = Vec::new();
    for m in load::METRICS {
        let c = || col(*m);
        aggs.push(c().count().cast(DataType::Int64).alias(format!("{m}_n")));
        aggs.push(c().mean().alias(format!("{m}_mean")));
        aggs.push(c().std(1).alias(format!("{m}_std")));
        aggs.push(c().min().alias(format!("{m}_min")));
        aggs.push(c().max().alias(format!("{m}_max")));
    }
    let done = runs.clone().lazy().filter(col("status").eq(lit("done"))).group_by([col("group")]).agg(aggs);
    let out = counts.join(done, [col("group")], [col("group")], JoinArgs::new(JoinType::Left)).collect()?;
    Ok(out)
}

/// A column as `f64` values (cast once; nulls as `None`).
fn f64s(df: &DataFrame, name: &str) -> anyhow::Result<Vec<Option<f64>>> {
    let c = df.column(name)?.cast(&DataType::Float64)?;
    Ok(c.f64()?.iter().collect())
}

/// Reads the aggregate frame back into [`Group`]s, in the order of first appearance.
fn groups_from(records: &[Record], agg: &DataFrame) -> anyhow::Result<Vec<Group>> {
    let mut members: std::collections::HashMap<&str, Vec<usize>> = std::collections::HashMap::new();
    let mut order = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let e = members.entry(r.group.as_str()).or_default();
        if e.is_empty() {
            order.push(r.group.as_str());
        }
        e.push(i);
    }
    let ids = agg.column("group")?.str()?;
    let mut row_of = std::collections::HashMap::new();
    for (i, id) in ids.iter().enumerate() {
        if let Some(id) = id {
            row_of.insert(id.to_string(), i);
        }
    }
    let n_done = f64s(agg, "n_done")?;
    let n_failed = f64s(agg, "n_failed")?;
    let n_damaged = f64s(agg, "n_damaged")?;
    let mut cols: Vec<[Vec<Option<f64>>; 5]> = Vec::new();
    for m in load::METRICS {
        let get = |s: &str| f64s(agg, &format!("{m}_{s}"));
        cols.push([get("n")?, get("mean")?, get("std")?, get("min")?, get("max")?]);
    }
    let mut out = Vec::with_capacity(order.len());
    for g in order {
        let i = *row_of.get(g).context("group missing from the aggregate frame")?;
        let mut stats = BTreeMap::new();
        for (m, [n, mean, std, min, max]) in load::METRICS.iter().zip(&cols) {
            let n = n[i].unwrap_or(0.0) as usize;
            if n == 0 {
                continue;
            }
            let nan = f64::NAN;
            stats.insert(
                m.to_string(),
                Stat { n, mean: mean[i].unwrap_or(nan), std: std[i], min: min[i].unwrap_or(nan), max: max[i].unwrap_or(nan), ci95: None },
            );
        }
        let count = |v: &Vec<Option<f64>>| v[i].unwrap_or(0.0) as usize;
        out.push(Group {
            id: g.to_string(),
            members: members.remove(g).unwrap_or_default(),
            n_done: count(&n_done),
            n_failed: count(&n_failed),
            n_damaged: count(&n_damaged),
            stats,
        });
    }
    Ok(out)
}

/// Writes a frame as Parquet (zstd), atomically.
pub fn write_parquet(df: &DataFrame, path: &Path) -> anyhow::Result<()> {
    let mut df = df.clone();
    let mut buf = Vec::new();
    ParquetWriter::new(&mut buf)
        .with_compression(ParquetCompression::Zstd(None))
        .finish(&mut df)
        .map_err(|e| anyhow::anyhow!("encoding {}: {e}", path.display()))?;
    crate::store::write_atomic(path, &buf)
}

/// Writes a frame as CSV, atomically.
pub fn write_csv(df: &DataFrame, path: &Path) -> anyhow::Result<()> {
    let mut df = df.clone();
    let mut buf = Vec::new();
    CsvWriter::new(&mut buf).include_header(true).finish(&mut df).map_err(|e| anyhow::anyhow!("encoding {}: {e}", path.display()))?;
    crate::store::write_atomic(path, &buf)
}

/// What `write` produced, for the caller to print.
pub struct Written {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
}

/// Writes the whole report to `out` (`reports/<suite>`): frames, tables, plots, index.
pub fn write(report: &Report, opts: &Options, expected: &[crate::suite::Expected], out: &Path) -> anyhow::Result<Written> {
    std::fs::create_dir_all(out.join("tables")).with_context(|| format!("creating {}", out.display()))?;
    let mut files = Vec::new();
    for (df, name) in [(&report.runs, "runs"), (&report.epochs, "epochs"), (&report.aggregates, "groups")] {
        let p = out.join(format!("{name}.parquet"));
        write_parquet(df, &p)?;
        files.push(p);
    }
    let p = out.join("groups.csv");
    write_csv(&report.aggregates, &p)?;
    files.push(p);
    let tables = table::all(report, opts, expected)?;
    for t in &tables {
        for (ext, text) in [("md", t.markdown()), ("tex", t.latex()), ("csv", t.csv()?)] {
            let p = out.join("tables").join(format!("{}.{ext}", t.name));
            crate::store::write_atomic(&p, text.as_bytes())?;
            files.push(p);
        }
    }
    let plots = if opts.plots { plot::all(report, opts, expected, &out.join("plots"))? } else { vec![] };
    files.extend(plots.iter().flat_map(|p| [p.png.clone(), p.svg.clone()]));
    let (md, html) = index(report, opts, expected, &tables, &plots);
    for (name, text) in [("index.md", md), ("index.html", html)] {
        let p = out.join(name);
        crate::store::write_atomic(&p, text.as_bytes())?;
        files.push(p);
    }
    Ok(Written { dir: out.to_path_buf(), files })
}

/// `index.md` and `index.html`: suite, commit, date, every table and plot.
fn index(report: &Report, opts: &Options, expected: &[crate::suite::Expected], tables: &[table::Table], plots: &[plot::Plot]) -> (String, String) {
    let commits: std::collections::BTreeSet<&str> = report.records.iter().filter_map(|r| r.env.get("git_commit").map(String::as_str)).collect();
    let mut header = vec![
        format!("suite: {}", report.suite),
        format!("runs: {} in {} groups", report.records.len(), report.groups.len()),
        format!("tables show the {}", opts.metric.describe()),
        format!("runs trained by harness commit(s): {}", if commits.is_empty() { "-".into() } else { commits.into_iter().collect::<Vec<_>>().join(", ") }),
        format!(
            "report written by harness {} (commit {}) at {}",
            crate::env::harness_version(),
            crate::env::git_commit(),
            chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
        ),
    ];
    if !expected.is_empty() {
        header.push(format!("reproduction: {}", verdict::summary(&verdict::rows(report, opts, expected), opts)));
    }
    let mut md = format!("# Report: {}\n\n", report.suite);
    let mut html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Report: {0}</title>\n<style>body{{font-family:sans-serif;max-width:1220px;margin:2em auto;padding:0 1em}}.t{{overflow-x:auto}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:right}}td{{white-space:nowrap}}td:last-child{{white-space:normal}}.k{{text-align:left;white-space:normal;min-width:6em}}figure{{margin:1em 0 2.5em}}figure img{{width:100%;max-width:1100px;height:auto;display:block}}figcaption{{font-size:.9em;color:#555}}</style></head><body>\n<h1>Report: {0}</h1>\n<ul>\n",
        esc(&report.suite)
    );
    for h in &header {
        md.push_str(&format!("- {h}\n"));
        html.push_str(&format!("<li>{}</li>\n", esc(h)));
    }
    md.push('\n');
    html.push_str("</ul>\n");
    let damaged = report.damaged();
    if !damaged.is_empty() {
        let title = format!("Damaged runs ({}): not aggregated; `harness run --retrain-damaged` moves their files aside and trains them again", damaged.len());
        md.push_str(&format!("## {title}\n\n"));
        html.push_str(&format!("<h2>{}</h2>\n<ul>\n", esc(&title)));
        for d in &damaged {
            md.push_str(&format!("- {d}\n"));
            html.push_str(&format!("<li>{}</li>\n", esc(d)));
        }
        md.push('\n');
        html.push_str("</ul>\n");
    }
    if !report.teachers.is_empty() {
        md.push_str("## Teachers\n\n");
        html.push_str("<h2>Teachers</h2>\n<ul>\n");
        for t in &report.teachers {
            md.push_str(&format!("- {t}\n"));
            html.push_str(&format!("<li>{}</li>\n", esc(t)));
        }
        md.push('\n');
        html.push_str("</ul>\n");
    }
    for t in tables {
        md.push_str(&format!(
            "## {}\n\n{}\n[Markdown](tables/{n}.md) · [LaTeX](tables/{n}.tex) · [CSV](tables/{n}.csv)\n\n",
            t.title,
            t.markdown(),
            n = t.name
        ));
        html.push_str(&format!("<h2>{}</h2>\n<div class=\"t\">{}</div>\n", esc(&t.title), t.html()));
    }
    if !plots.is_empty() {
        md.push_str("## Plots\n\n");
        html.push_str("<h2>Plots</h2>\n");
        let rel = |p: &Path| format!("plots/{}", p.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default());
        for p in plots {
            let (png, svg) = (rel(&p.png), rel(&p.svg));
            md.push_str(&format!("### {}\n\n![{}]({png})\n\n[SVG]({svg})\n\n", p.title, p.title));
            html.push_str(&format!(
                "<figure><img src=\"{svg}\" alt=\"{t}\"><figcaption>{t} · <a href=\"{svg}\">SVG</a> · <a href=\"{png}\">PNG</a></figcaption></figure>\n",
                t = esc(&p.title)
            ));
        }
    }
    html.push_str("</body></html>\n");
    (md, html)
}

/// HTML escaping for text nodes and attributes.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
