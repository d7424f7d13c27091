//! Plots (plotters; PNG and SVG; text drawn with the embedded DejaVu Sans, so no system fonts
//! are needed): learning curves with a seed band, bars with error bars, student accuracy vs
//! teacher (the TAKD / sweet-spot question), and reliability diagrams.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::{Group, Options, Report, stats::Moments};
use crate::suite::Role;

/// One written plot.
#[derive(Clone, Debug)]
pub struct Plot {
    pub title: String,
    pub png: PathBuf,
    pub svg: PathBuf,
}

/// A line/point series; `band` draws mean ± spread, `err` vertical error bars.
#[derive(Clone, Debug, Default)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub band: Option<Vec<(f64, f64, f64)>>,
    pub err: Vec<Option<f64>>,
    pub dashed: bool,
}

/// What to draw, independent of the backend.
#[derive(Clone, Debug)]
pub enum Chart {
    Lines { title: String, x: String, y: String, series: Vec<Series>, x_range: (f64, f64), y_range: (f64, f64) },
    Bars { title: String, y: String, bars: Vec<(String, f64, Option<f64>)> },
}

const W: u32 = 900;
const H: u32 = 560;

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
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    if let Some(dir) = stem.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    {
        let root = BitMapBackend::new(&png, (W, H)).into_drawing_area();
        draw(&root, chart).map_err(|e| anyhow::anyhow!("drawing {}: {e}", png.display()))?;
    }
    {
        let root = SVGBackend::new(&svg, (W, H)).into_drawing_area();
        draw(&root, chart).map_err(|e| anyhow::anyhow!("drawing {}: {e}", svg.display()))?;
    }
    let title = match chart {
        Chart::Lines { title, .. } | Chart::Bars { title, .. } => title.clone(),
    };
    Ok(Plot { title, png, svg })
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, chart: &Chart) -> Result<(), String> {
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
    root.fill(&WHITE).map_err(e)?;
    match chart {
        Chart::Lines { title, x, y, series, x_range, y_range } => {
            let mut c = ChartBuilder::on(root)
                .caption(title, ("sans-serif", 22))
                .margin(14)
                .x_label_area_size(44)
                .y_label_area_size(60)
                .build_cartesian_2d(x_range.0..x_range.1, y_range.0..y_range.1)
                .map_err(e)?;
            c.configure_mesh().x_desc(x.as_str()).y_desc(y.as_str()).label_style(("sans-serif", 14)).draw().map_err(e)?;
            for (i, s) in series.iter().enumerate() {
                let color = if s.dashed { RGBAColor(120, 120, 120, 1.0) } else { Palette99::pick(i).to_rgba() };
                if let Some(band) = &s.band {
                    let mut poly: Vec<(f64, f64)> = band.iter().map(|&(x, _, hi)| (x, hi)).collect();
                    poly.extend(band.iter().rev().map(|&(x, lo, _)| (x, lo)));
                    c.draw_series(std::iter::once(Polygon::new(poly, color.mix(0.18).filled()))).map_err(e)?;
                }
                let style = color.stroke_width(2);
                let drawn = if s.dashed {
                    c.draw_series(DashedLineSeries::new(s.points.clone(), 8, 6, style)).map_err(e)?
                } else {
                    c.draw_series(LineSeries::new(s.points.clone(), style)).map_err(e)?
                };
                drawn.label(s.name.as_str()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
                if s.band.is_none() && !s.dashed {
                    c.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(e)?;
                }
                let bars = s.points.iter().zip(&s.err).filter_map(|(&(x, y), e)| e.map(|e| ErrorBar::new_vertical(x, y - e, y, y + e, color.filled(), 8)));
                c.draw_series(bars).map_err(e)?;
            }
            c.configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 13))
                .draw()
                .map_err(e)?;
        }
        Chart::Bars { title, y, bars } => {
            let n = bars.len().max(1) as i32;
            let hi = bars.iter().map(|(_, m, s)| m + s.unwrap_or(0.0)).fold(f64::NEG_INFINITY, f64::max);
            let lo = bars.iter().map(|(_, m, s)| m - s.unwrap_or(0.0)).fold(f64::INFINITY, f64::min);
            let pad = ((hi - lo) * 0.15).max(0.5);
            let (y0, y1) = ((lo - pad).max(0.0), hi + pad);
            let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
            let mut c = ChartBuilder::on(root)
                .caption(title, ("sans-serif", 22))
                .margin(14)
                .x_label_area_size(70)
                .y_label_area_size(60)
                .build_cartesian_2d((0..n - 1).into_segmented(), y0..y1)
                .map_err(e)?;
            let fmt = |v: &SegmentValue<i32>| match v {
                SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
                _ => String::new(),
            };
            c.configure_mesh()
                .disable_x_mesh()
                .x_labels(bars.len())
                .x_label_formatter(&fmt)
                .x_label_style(("sans-serif", 12))
                .y_desc(y.as_str())
                .label_style(("sans-serif", 14))
                .draw()
                .map_err(e)?;
            c.draw_series(bars.iter().enumerate().map(|(i, (_, m, _))| {
                let i = i as i32;
                let mut r = Rectangle::new([(SegmentValue::Exact(i), y0), (SegmentValue::Exact(i + 1), *m)], Palette99::pick(i as usize).mix(0.8).filled());
                r.set_margin(0, 0, 12, 12);
                r
            }))
            .map_err(e)?;
            c.draw_series(
                bars.iter()
                    .enumerate()
                    .filter_map(|(i, (_, m, s))| s.map(|s| ErrorBar::new_vertical(SegmentValue::CenterOf(i as i32), m - s, *m, m + s, BLACK.filled(), 12))),
            )
            .map_err(e)?;
        }
    }
    root.present().map_err(e)?;
    Ok(())
}

/// File-name-safe version of a label.
fn slug(s: &str) -> String {
    let s: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    s.trim_matches('_').to_string()
}

/// Series labels of a pair's groups: method and parameters, plus every other config key whose
/// value differs among them (a label-smoothed teacher, mixup, a teacher's epochs...), so two
/// series never share a label.
fn labels(r: &Report, groups: &[&Group]) -> Vec<String> {
    let shown = |k: &str| k.starts_with("param.") || matches!(k, "method" | "seed" | "teacher.seed" | "role" | "pair" | "teacher" | "model");
    let keys: std::collections::BTreeSet<&String> = groups.iter().flat_map(|g| r.head(g).config.keys()).collect();
    let varying: Vec<&String> = keys.into_iter().filter(|k| !shown(k) && groups.iter().any(|g| r.head(g).key(k) != r.head(groups[0]).key(k))).collect();
    groups
        .iter()
        .map(|g| {
            let h = r.head(g);
            let mut l = h.spec.method.clone();
            let params: Vec<String> = h.spec.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            if !params.is_empty() {
                l.push_str(&format!(" {}", params.join(" ")));
            }
            for k in &varying {
                l.push_str(&format!(" {k}={}", h.key(k).unwrap_or_else(|| "-".into())));
            }
            l
        })
        .collect()
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
pub fn all(r: &Report, o: &Options, dir: &Path) -> anyhow::Result<Vec<Plot>> {
    let mut out = Vec::new();
    let metric = o.metric.column();
    for (pair, groups) in by_pair(r) {
        let names = labels(r, &groups);
        // Learning curves.
        let series: Vec<Series> = groups
            .iter()
            .zip(&names)
            .map(|(g, name)| {
                let c = curve(r, g);
                Series {
                    name: name.clone(),
                    points: c.iter().map(|&(e, m, _)| (e, m)).collect(),
                    band: Some(c.iter().map(|&(e, m, s)| (e, m - s, m + s)).collect()),
                    ..Default::default()
                }
            })
            .filter(|s| !s.points.is_empty())
            .collect();
        if !series.is_empty() {
            let x_range = range(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)), Some(0.0));
            let y_range = range(series.iter().flat_map(|s| s.band.iter().flatten().flat_map(|b| [b.1, b.2])), Some(0.0));
            let chart = Chart::Lines {
                title: format!("{pair}: test top-1 per epoch (mean ± std over seeds)"),
                x: "epoch".into(),
                y: "test top-1 (%)".into(),
                series,
                x_range: (x_range.0.max(0.0), x_range.1),
                y_range: (y_range.0, y_range.1.min(100.5)),
            };
            out.push(render(&chart, &dir.join(format!("curves_{}", slug(&pair))))?);
        }
        // Bars with error bars.
        let bars: Vec<(String, f64, Option<f64>)> =
            groups.iter().zip(&names).filter_map(|(g, name)| g.stats.get(metric).map(|s| (name.clone(), s.mean, s.std))).collect();
        if !bars.is_empty() {
            let chart = Chart::Bars { title: format!("{pair}: {} (error bars: std over seeds)", o.metric.describe()), y: o.metric.describe().into(), bars };
            out.push(render(&chart, &dir.join(format!("bars_{}", slug(&pair))))?);
        }
        // Reliability diagram: pooled bins of each group's finished seeds.
        let mut rel = Vec::new();
        for (g, name) in groups.iter().zip(&names) {
            let mut count = vec![0u64; 0];
            let (mut conf, mut correct) = (Vec::new(), Vec::new());
            for &i in &g.members {
                let Some(s) = &r.records[i].summary else { continue };
                let b = &s.reliability;
                if count.is_empty() {
                    count = vec![0; b.count.len()];
                    conf = vec![0.0; b.count.len()];
                    correct = vec![0.0; b.count.len()];
                }
                if b.count.len() != count.len() {
                    continue;
                }
                for k in 0..count.len() {
                    count[k] += b.count[k];
                    conf[k] += b.conf_sum[k];
                    correct[k] += b.correct[k];
                }
            }
            let pts: Vec<(f64, f64)> = (0..count.len()).filter(|&k| count[k] > 0).map(|k| (conf[k] / count[k] as f64, correct[k] / count[k] as f64)).collect();
            if !pts.is_empty() {
                rel.push(Series { name: name.clone(), err: vec![None; pts.len()], points: pts, ..Default::default() });
            }
        }
        if !rel.is_empty() {
            rel.push(Series { name: "perfect calibration".into(), points: vec![(0.0, 0.0), (1.0, 1.0)], dashed: true, ..Default::default() });
            let chart = Chart::Lines {
                title: format!("{pair}: reliability (15 bins, pooled over seeds)"),
                x: "confidence".into(),
                y: "accuracy".into(),
                series: rel,
                x_range: (0.0, 1.0),
                y_range: (0.0, 1.0),
            };
            out.push(render(&chart, &dir.join(format!("reliability_{}", slug(&pair))))?);
        }
    }
    if let Some(p) = gap(r, o, dir)? {
        out.push(p);
    }
    Ok(out)
}

/// Student accuracy against its teacher (accuracy, or a teacher setting such as
/// `teacher.train.epochs`): one series per student model and method, drawn when some series
/// has at least two different teachers.
fn gap(r: &Report, o: &Options, dir: &Path) -> anyhow::Result<Option<Plot>> {
    let metric = o.metric.column();
    let mut series: BTreeMap<String, Vec<(f64, f64, Option<f64>)>> = BTreeMap::new();
    for g in r.groups.iter().filter(|g| r.head(g).spec.role == Role::Student && !r.head(g).spec.teachers.is_empty()) {
        let h = r.head(g);
        let x = match o.gap_x.as_str() {
            "teacher_top1" => g.stats.get("teacher_top1").map(|s| s.mean),
            // Teacher size: the parameter count its own run recorded.
            "teacher_params" => match h.spec.teachers.first() {
                Some(crate::suite::TeacherRef::Run { id, .. }) => {
                    r.records.iter().find(|t| &t.spec.id == id).and_then(|t| t.metric("param_count")).map(|p| p / 1e6)
                }
                _ => None,
            },
            k => h.config.get(k).and_then(|c| c.as_f64()),
        };
        let (Some(x), Some(y)) = (x, g.stats.get(metric)) else { continue };
        let params: Vec<String> = h.spec.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        series.entry(format!("{} {} {}", h.spec.model, h.spec.method, params.join(" "))).or_default().push((x, y.mean, y.std));
    }
    series.retain(|_, v| v.len() >= 2);
    if series.is_empty() {
        return Ok(None);
    }
    let series: Vec<Series> = series
        .into_iter()
        .map(|(name, mut v)| {
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series { name: name.trim().to_string(), points: v.iter().map(|p| (p.0, p.1)).collect(), err: v.iter().map(|p| p.2).collect(), ..Default::default() }
        })
        .collect();
    let x_range = range(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)), None);
    let y_range = range(series.iter().flat_map(|s| s.points.iter().zip(&s.err).flat_map(|(p, e)| [p.1 - e.unwrap_or(0.0), p.1 + e.unwrap_or(0.0)])), Some(0.0));
    let xname = match o.gap_x.as_str() {
        "teacher_top1" => "teacher test top-1 (%)".to_string(),
        "teacher_params" => "teacher parameters (millions)".to_string(),
        k => k.to_string(),
    };
    let chart =
        Chart::Lines { title: format!("student {} vs teacher", o.metric.describe()), x: xname, y: o.metric.describe().into(), series, x_range, y_range };
    Ok(Some(render(&chart, &dir.join("teacher_gap"))?))
}
