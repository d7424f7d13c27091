//! Plots (plotters; PNG and SVG at the width the HTML shows them; text drawn with the embedded
//! DejaVu Sans, so no system fonts are needed): per teacher→student pair the learning curves with
//! a ±std band, the accuracies as dot-and-whisker rows with the published numbers, and reliability
//! diagrams; across pairs the student accuracy against its teacher (the TAKD / sweet-spot
//! question). Legends name the method and only the settings that differ (see [`super::label`]),
//! beside the axes; each method keeps one colour in every plot of a report ([`style::Styles`]).

mod dots;
mod lines;
mod reliability;
mod style;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;

pub use dots::{DotRow, Dots};
pub use lines::{Line, Lines};
pub use reliability::{Panel, Reliability};
pub use style::{Style, Styles};

use super::{Group, Options, Report, label, stats::Moments};
use crate::suite::{Expected, Role, TeacherRef};

/// One written plot.
#[derive(Clone, Debug)]
pub struct Plot {
    pub title: String,
    pub png: PathBuf,
    pub svg: PathBuf,
}

/// What to draw, independent of the backend.
#[derive(Clone, Debug)]
pub enum Chart {
    Lines(Lines),
    Dots(Dots),
    Reliability(Reliability),
}

impl Chart {
    pub fn title(&self) -> &str {
        match self {
            Chart::Lines(c) => &c.title,
            Chart::Dots(c) => &c.title,
            Chart::Reliability(c) => &c.title,
        }
    }

    /// Every series / row / panel name the chart prints.
    pub fn labels(&self) -> Vec<&String> {
        match self {
            Chart::Lines(c) => c.labels(),
            Chart::Dots(c) => c.labels(),
            Chart::Reliability(c) => c.labels(),
        }
    }

    /// Pixel size: the HTML shows plots at this width, so font sizes are what the reader sees.
    pub fn size(&self) -> (u32, u32) {
        let h = match self {
            Chart::Lines(_) => lines::HEIGHT,
            Chart::Dots(c) => c.height(),
            Chart::Reliability(c) => c.height(),
        };
        (style::WIDTH, h)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
        root.fill(&WHITE).map_err(e)?;
        match self {
            Chart::Lines(c) => c.draw(root),
            Chart::Dots(c) => c.draw(root),
            Chart::Reliability(c) => c.draw(root),
        }
        .map_err(e)?;
        root.present().map_err(e)
    }
}

/// Draws the title and, in a smaller grey font, what the marks mean; returns the area below.
fn heading<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    subtitle: &str,
) -> Result<DrawingArea<DB, Shift>, DrawingAreaErrorKind<DB::ErrorType>> {
    let area = root.margin(10, 6, 10, 10).titled(title, style::font(style::TITLE))?;
    if subtitle.is_empty() {
        return Ok(area);
    }
    area.titled(subtitle, ("sans-serif", style::TICK).into_font().color(&RGBColor(90, 90, 90)))
}

/// Registers DejaVu Sans as `sans-serif` (once per process).
fn fonts() -> anyhow::Result<()> {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular()).is_ok()
            && plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold()).is_ok()
    });
    anyhow::ensure!(ok, "cannot load the embedded DejaVu Sans font");
    Ok(())
}

/// Renders a chart to `<stem>.png` and `<stem>.svg`.
pub fn render(chart: &Chart, stem: &Path) -> anyhow::Result<Plot> {
    fonts()?;
    style::check_labels(chart.labels())?;
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    if let Some(dir) = stem.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let size = chart.size();
    {
        let root = BitMapBackend::new(&png, size).into_drawing_area();
        chart.draw(&root).map_err(|e| anyhow::anyhow!("drawing {}: {e}", png.display()))?;
    }
    {
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        chart.draw(&root).map_err(|e| anyhow::anyhow!("drawing {}: {e}", svg.display()))?;
    }
    Ok(Plot { title: chart.title().to_string(), png, svg })
}

/// File-name-safe version of a label.
fn slug(s: &str) -> String {
    let s: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    s.trim_matches('_').to_string()
}

/// Student groups by teacher→student pair; teacher-free groups join each pair of their student.
fn by_pair(r: &Report) -> Vec<(String, Vec<&Group>)> {
    let students: Vec<&Group> = r.groups.iter().filter(|g| r.head(g).spec.role == Role::Student).collect();
    let mut pairs: Vec<(String, Vec<&Group>)> = Vec::new();
    for g in students.iter().filter(|g| !r.head(g).spec.teachers.is_empty()) {
        let p = super::load::pair(&r.head(g).spec);
        match pairs.iter_mut().find(|(k, _)| *k == p) {
            Some((_, v)) => v.push(g),
            None => pairs.push((p, vec![g])),
        }
    }
    for g in students.iter().filter(|g| r.head(g).spec.teachers.is_empty()) {
        let model = &r.head(g).spec.model;
        let mut placed = false;
        for (p, v) in pairs.iter_mut() {
            if p.ends_with(&format!("→{model}")) {
                v.insert(0, g);
                placed = true;
            }
        }
        if !placed {
            pairs.push((model.clone(), vec![g]));
        }
    }
    pairs
}

/// Mean ± std of test top-1 per epoch over a group's finished seeds.
fn curve(r: &Report, g: &Group) -> Vec<(f64, f64, f64)> {
    let mut at: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    for &i in &g.members {
        if r.records[i].state == "done" {
            for (e, v) in r.records[i].curve() {
                at.entry(e).or_default().push(v);
            }
        }
    }
    at.into_iter()
        .map(|(e, v)| {
            let m = Moments::of(&v);
            (e as f64, m.mean, m.std.unwrap_or(0.0))
        })
        .collect()
}

fn range(vals: impl Iterator<Item = f64>, floor: Option<f64>) -> (f64, f64) {
    let (lo, hi) = vals.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(0.5);
    (floor.map_or(lo - pad, |f| (lo - pad).max(f)), hi + pad)
}

/// Every plot the report's data supports.
pub fn all(r: &Report, o: &Options, expected: &[Expected], dir: &Path) -> anyhow::Result<Vec<Plot>> {
    let styles = Styles::of(r);
    let mut out = Vec::new();
    for (pair, mut groups) in by_pair(r) {
        // Legend order: methods in report order, then by label (τ=2 before τ=4).
        let first = |m: &str| r.groups.iter().position(|g| r.head(g).spec.method == m).unwrap_or(usize::MAX);
        let named: Vec<String> = label::series(r, &groups);
        let mut order: Vec<usize> = (0..groups.len()).collect();
        order.sort_by_key(|&i| (first(&r.head(groups[i]).spec.method), named[i].clone()));
        groups = order.iter().map(|&i| groups[i]).collect();
        let names: Vec<String> = order.iter().map(|&i| named[i].clone()).collect();
        let stem = slug(&pair);
        if let Some(c) = curves(r, &styles, &pair, &groups, &names) {
            out.push(render(&c, &dir.join(format!("curves_{stem}")))?);
        }
        if let Some(c) = accuracy(r, o, expected, &styles, &pair, &groups, &names) {
            out.push(render(&c, &dir.join(format!("accuracy_{stem}")))?);
        }
        if let Some(c) = calibration(r, &styles, &pair, &groups, &names) {
            out.push(render(&c, &dir.join(format!("reliability_{stem}")))?);
        }
    }
    if let Some(c) = gap(r, o, &styles) {
        out.push(render(&c, &dir.join("teacher_gap"))?);
    }
    Ok(out)
}

/// Learning curves of a pair's groups: mean test top-1 per epoch, band ±1 std over seeds.
fn curves(r: &Report, styles: &Styles, pair: &str, groups: &[&Group], names: &[String]) -> Option<Chart> {
    let series: Vec<Line> = groups
        .iter()
        .zip(names)
        .zip(styles.within(r, groups))
        .map(|((g, name), style)| {
            let c = curve(r, g);
            Line {
                name: name.clone(),
                style,
                points: c.iter().map(|&(e, m, _)| (e, m)).collect(),
                band: Some(c.iter().map(|&(e, m, s)| (e, m - s, m + s)).collect()),
                err: vec![],
                markers: false,
            }
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    if series.is_empty() {
        return None;
    }
    let seeds = groups.iter().map(|g| g.n_done).max().unwrap_or(0);
    let x_range = range(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)), Some(0.0));
    let y_range = range(series.iter().flat_map(|s| s.band.iter().flatten().flat_map(|b| [b.1, b.2])), Some(0.0));
    Some(Chart::Lines(Lines {
        title: format!("{pair}: test top-1 per epoch"),
        subtitle: format!("line: mean over finished seeds (up to {seeds}); band: ±1 sample std"),
        x: "epoch".into(),
        y: "test top-1 (%)".into(),
        series,
        x_range: (x_range.0.max(0.0), x_range.1),
        y_range: (y_range.0, y_range.1.min(100.5)),
    }))
}

/// The suite-trained teacher group of a pair's students, if any.
fn teacher_group<'a>(r: &'a Report, groups: &[&Group]) -> Option<&'a Group> {
    groups.iter().find_map(|g| match r.head(g).spec.teachers.first() {
        Some(TeacherRef::Run { id, .. }) => r.groups.iter().find(|t| t.members.iter().any(|&i| &r.records[i].spec.id == id)),
        _ => None,
    })
}

/// Published numbers for a group in metric `column` (same method, student and teacher).
fn published(r: &Report, g: &Group, expected: &[Expected], column: &str) -> Vec<f64> {
    let s = &r.head(g).spec;
    let metric = if column == "best_top1" { "best" } else { "last" };
    expected
        .iter()
        .filter(|e| e.metric == metric && e.method == s.method && e.student == s.model && e.teacher.as_deref().unwrap_or("") == s.teacher_models())
        .map(|e| e.top1)
        .collect()
}

/// The pair's accuracies as dot-and-whisker rows, its teacher first.
fn accuracy(r: &Report, o: &Options, expected: &[Expected], styles: &Styles, pair: &str, groups: &[&Group], names: &[String]) -> Option<Chart> {
    let metric = o.metric.column();
    let teacher = teacher_group(r, groups).map(|t| (t, format!("teacher {}", r.head(t).spec.model)));
    let shown: Vec<(&Group, &String)> = teacher.iter().map(|(t, n)| (*t, n)).chain(groups.iter().copied().zip(names)).collect();
    let row_styles = styles.within(r, &shown.iter().map(|x| x.0).collect::<Vec<_>>());
    let rows: Vec<DotRow> = shown
        .into_iter()
        .zip(row_styles)
        .filter_map(|((g, name), style)| {
            let s = g.stats.get(metric)?;
            Some(DotRow {
                name: name.clone(),
                style,
                seeds: r.seed_values(g, metric).into_iter().map(|(_, v)| v).collect(),
                mean: s.mean,
                ci: s.ci95,
                published: published(r, g, expected, metric),
            })
        })
        .collect();
    if rows.is_empty() {
        return None;
    }
    let other = if metric == "best_top1" { "last" } else { "best" };
    let hidden = groups.iter().any(|g| !published(r, g, expected, if other == "best" { "best_top1" } else { "last_top1" }).is_empty());
    let mut subtitle = "dot: mean; whisker: 95% Student-t CI of the mean (arrow: beyond the axis); faint dots: single seeds".to_string();
    if rows.iter().any(|x| !x.published.is_empty()) {
        subtitle.push_str("; diamond: published");
    }
    if hidden {
        subtitle.push_str(&format!(" ({other}-epoch numbers: see the reproduction table)"));
    }
    Some(Chart::Dots(Dots { title: format!("{pair}: {}", o.metric.describe()), subtitle, x: o.metric.describe().into(), rows }))
}

/// Reliability panels of a pair's groups, bins pooled over finished seeds.
fn calibration(r: &Report, styles: &Styles, pair: &str, groups: &[&Group], names: &[String]) -> Option<Chart> {
    let mut panels = Vec::new();
    for ((g, name), style) in groups.iter().zip(names).zip(styles.within(r, groups)) {
        let mut p = Panel { name: name.clone(), style, bins: Default::default() };
        for &i in &g.members {
            let Some(s) = &r.records[i].summary else { continue };
            let (b, pooled) = (&s.reliability, &mut p.bins);
            if pooled.count.is_empty() {
                let k = b.count.len();
                *pooled = crate::distill::metrics::Reliability { count: vec![0; k], conf_sum: vec![0.0; k], correct: vec![0.0; k] };
            }
            if b.count.len() != pooled.count.len() || b.conf_sum.len() != pooled.count.len() || b.correct.len() != pooled.count.len() {
                continue;
            }
            for k in 0..pooled.count.len() {
                pooled.count[k] += b.count[k];
                pooled.conf_sum[k] += b.conf_sum[k];
                pooled.correct[k] += b.correct[k];
            }
        }
        if p.bins.count.iter().any(|&c| c > 0) {
            panels.push(p);
        }
    }
    let bins = panels.first()?.bins.count.len();
    Some(Chart::Reliability(Reliability {
        title: format!("{pair}: reliability ({bins} confidence bins, test set, pooled over seeds)"),
        subtitle: String::new(),
        panels,
    }))
}

/// Student accuracy against its teacher (accuracy, or a teacher setting such as
/// `teacher.train.epochs`): one series per student configuration (model, method, settings),
/// drawn when some series has at least two different teachers.
fn gap(r: &Report, o: &Options, styles: &Styles) -> Option<Chart> {
    let metric = o.metric.column();
    let teacherish = |k: &str| k == "teacher" || k.starts_with("teacher.") || matches!(k, "seed" | "role" | "pair");
    let mut series: BTreeMap<String, Vec<(&Group, f64, f64, Option<f64>)>> = BTreeMap::new();
    for g in r.groups.iter().filter(|g| r.head(g).spec.role == Role::Student && !r.head(g).spec.teachers.is_empty()) {
        let h = r.head(g);
        let x = match o.gap_x.as_str() {
            "teacher_top1" => g.stats.get("teacher_top1").map(|s| s.mean),
            // Teacher size: the parameter count its own run recorded.
            "teacher_params" => match h.spec.teachers.first() {
                Some(TeacherRef::Run { id, .. }) => r.records.iter().find(|t| &t.spec.id == id).and_then(|t| t.metric("param_count")).map(|p| p / 1e6),
                _ => None,
            },
            k => h.config.get(k).and_then(|c| c.as_f64()),
        };
        let (Some(x), Some(y)) = (x, g.stats.get(metric)) else { continue };
        let key: Vec<String> = h.config.iter().filter(|(k, _)| !teacherish(k)).map(|(k, v)| format!("{k}={v}")).collect();
        series.entry(key.join(" ")).or_default().push((g, x, y.mean, y.std));
    }
    series.retain(|_, v| v.len() >= 2);
    if series.is_empty() {
        return None;
    }
    let reps: Vec<&Group> = series.values().map(|v| v[0].0).collect();
    let settings = label::differing_in(r, &reps, |k| !teacherish(k));
    let lines: Vec<Line> = series
        .into_values()
        .zip(settings)
        .zip(styles.within(r, &reps))
        .map(|((mut v, s), style)| {
            v.sort_by(|a, b| a.1.total_cmp(&b.1));
            let h = r.head(v[0].0);
            let name = [h.spec.method.clone()].into_iter().chain(s).collect::<Vec<_>>().join(" ");
            Line { name, style, points: v.iter().map(|p| (p.1, p.2)).collect(), err: v.iter().map(|p| p.3).collect(), band: None, markers: true }
        })
        .collect();
    let x_range = range(lines.iter().flat_map(|s| s.points.iter().map(|p| p.0)), None);
    let y_range = range(lines.iter().flat_map(|s| s.points.iter().zip(&s.err).flat_map(|(p, e)| [p.1 - e.unwrap_or(0.0), p.1 + e.unwrap_or(0.0)])), Some(0.0));
    let x = match o.gap_x.as_str() {
        "teacher_top1" => "teacher test top-1 (%)".to_string(),
        "teacher_params" => "teacher parameters (millions)".to_string(),
        k => label::symbol(k),
    };
    Some(Chart::Lines(Lines {
        title: format!("student {} vs teacher", o.metric.describe()),
        subtitle: "points: mean over seeds; error bars: ±1 sample std".into(),
        x,
        y: o.metric.describe().into(),
        series: lines,
        x_range,
        y_range,
    }))
}
