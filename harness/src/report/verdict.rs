//! Reproduction verdicts: every published number of the suite (`[[expected]]`) next to ours,
//! with a verdict a reader can count: the published value lies inside our 95% confidence
//! interval of the mean, or within the tolerance (`[report].expected_tolerance` points, default
//! 1), or outside both. Cells without finished runs say so and are never counted as reproduced.

use super::table::{TCell, Table};
use super::{Group, Metric, Options, Report, label};
use crate::suite::Expected;

/// The verdict for one published cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The published value lies in our mean ± 95% Student-t half-width (needs ≥2 seeds).
    InsideCi,
    /// Not inside the interval (or no interval), but |Δ| ≤ the tolerance.
    WithinTolerance,
    Outside,
    /// The suite has matching runs, none finished.
    NoFinishedRuns,
    /// The suite has no run of that method, student and teacher.
    NotInSuite,
}

impl Verdict {
    pub fn reproduced(self) -> bool {
        matches!(self, Verdict::InsideCi | Verdict::WithinTolerance)
    }
}

/// One published cell against one of our groups (a published cell matched by several groups,
/// e.g. a τ sweep, gives one row per group).
#[derive(Clone, Debug)]
pub struct Row<'a> {
    pub expected: &'a Expected,
    pub group: Option<&'a Group>,
    /// Settings that tell this group apart from the others matching the same published cell.
    pub settings: String,
    pub n: usize,
    pub mean: Option<f64>,
    pub std: Option<f64>,
    pub ci95: Option<f64>,
    /// Ours − published.
    pub delta: Option<f64>,
    pub verdict: Verdict,
}

/// Groups (teachers included) of the published cell's method, student and teacher.
fn matching<'a>(r: &'a Report, e: &Expected) -> Vec<&'a Group> {
    r.groups
        .iter()
        .filter(|g| {
            let s = &r.head(g).spec;
            s.method == e.method && s.model == e.student && s.teacher_models() == e.teacher.as_deref().unwrap_or("")
        })
        .collect()
}

/// Verdict rows of every published cell, in the suite's order.
pub fn rows<'a>(r: &'a Report, o: &Options, expected: &'a [Expected]) -> Vec<Row<'a>> {
    let mut out = Vec::new();
    for e in expected {
        let groups = matching(r, e);
        if groups.is_empty() {
            if let Some(row) = checkpoint_teacher(r, e, o) {
                out.push(row);
                continue;
            }
            let none =
                Row { expected: e, group: None, settings: String::new(), n: 0, mean: None, std: None, ci95: None, delta: None, verdict: Verdict::NotInSuite };
            out.push(none);
            continue;
        }
        let metric = if e.metric == "last" { Metric::Last } else { Metric::Best }.column();
        let settings = label::differing(r, &groups);
        for (g, s) in groups.into_iter().zip(settings) {
            let Some(st) = g.stats.get(metric) else {
                let settings = s.join(" ");
                out.push(Row { expected: e, group: Some(g), settings, n: 0, mean: None, std: None, ci95: None, delta: None, verdict: Verdict::NoFinishedRuns });
                continue;
            };
            let delta = st.mean - e.top1;
            let verdict = if st.ci95.is_some_and(|c| delta.abs() <= c) {
                Verdict::InsideCi
            } else if delta.abs() <= o.expected_tolerance {
                Verdict::WithinTolerance
            } else {
                Verdict::Outside
            };
            let row = Row {
                expected: e,
                group: Some(g),
                settings: s.join(" "),
                n: st.n,
                mean: Some(st.mean),
                std: st.std,
                ci95: st.ci95,
                delta: Some(delta),
                verdict,
            };
            out.push(row);
        }
    }
    out
}

/// The label of a published teacher cell measured from a checkpoint (no run trains it).
const CHECKPOINT: &str = "released checkpoint, measured by its students";

/// A published teacher cell (`student = <model>`, `method = "ce"`, no teacher) for a teacher the
/// suite reads from a checkpoint: no run trains it, but every student of it evaluated it on the
/// test set when it started (`teacher_top1`). One checkpoint is one number: no interval, so the
/// verdict is within the tolerance or outside.
fn checkpoint_teacher<'a>(r: &Report, e: &'a Expected, o: &Options) -> Option<Row<'a>> {
    if e.teacher.is_some() || e.method != "ce" {
        return None;
    }
    let from_checkpoint = |x: &&super::load::Record| {
        x.state == "done" && matches!(x.spec.teachers.as_slice(), [crate::suite::TeacherRef::Checkpoint { model, .. }] if *model == e.student)
    };
    let top1 = r.records.iter().filter(from_checkpoint).find_map(|x| x.summary.as_ref()?.teacher_top1)?;
    let delta = top1 - e.top1;
    let verdict = if delta.abs() <= o.expected_tolerance { Verdict::WithinTolerance } else { Verdict::Outside };
    Some(Row { expected: e, group: None, settings: CHECKPOINT.into(), n: 1, mean: Some(top1), std: None, ci95: None, delta: Some(delta), verdict })
}

/// One line a reader can quote, e.g. `3/5 published cells reproduced (2 inside our 95% CI,
/// 1 within ±1 points); 1 outside; 1 without finished runs`.
pub fn summary(rows: &[Row], o: &Options) -> String {
    let count = |v: Verdict| rows.iter().filter(|r| r.verdict == v).count();
    let ok = rows.iter().filter(|r| r.verdict.reproduced()).count();
    let mut s = format!(
        "{ok}/{} published cells reproduced ({} inside our 95% CI, {} within ±{} points)",
        rows.len(),
        count(Verdict::InsideCi),
        count(Verdict::WithinTolerance),
        o.expected_tolerance
    );
    s.push_str(&format!("; {} outside", count(Verdict::Outside)));
    let missing = count(Verdict::NoFinishedRuns) + count(Verdict::NotInSuite);
    if missing > 0 {
        s.push_str(&format!("; {missing} without finished runs"));
    }
    s
}

/// The verdict table (Markdown, LaTeX, CSV, HTML through [`Table`]).
pub fn table(r: &Report, o: &Options, expected: &[Expected]) -> Option<Table> {
    if expected.is_empty() {
        return None;
    }
    let rows = rows(r, o, expected);
    let body = rows.iter().map(|x| row_cells(r, x, o)).collect();
    let note = format!(
        "{}. Ours: mean over n finished seeds in the metric the paper used, with the 95% Student-t interval of the mean; \
         Δ = ours − published. Verdict: inside CI = the published value lies in our interval; within ±{tol} = |Δ| ≤ {tol} points \
         ([report].expected_tolerance) though outside the interval (or a single seed); outside = neither. Cells without finished \
         runs are not counted as reproduced.",
        summary(&rows, o),
        tol = o.expected_tolerance
    );
    let header = ["published cell", "settings", "source", "metric", "published", "ours", "95% CI", "n", "Δ", "verdict"];
    Some(Table {
        name: "reproduction".into(),
        title: "Reproduction of published numbers".into(),
        note,
        header: header.iter().map(|s| s.to_string()).collect(),
        keys: 4,
        rows: body,
    })
}

fn row_cells(r: &Report, x: &Row, o: &Options) -> Vec<TCell> {
    let e = x.expected;
    let cell = match &e.teacher {
        Some(t) => format!("{t}→{} {}", e.student, e.method),
        None => format!("{} {}", e.student, e.method),
    };
    let role = x.group.map(|g| r.head(g).spec.role);
    let cell = if role == Some(crate::suite::Role::Teacher) { format!("{cell} (teacher)") } else { cell };
    let metric = if e.metric == "last" { "last epoch" } else { "best epoch" };
    let published = TCell { text: super::table::pm(e.top1, e.std), mean: Some(e.top1), std: e.std, n: None, bold: false };
    let (ours, ci) = match x.mean {
        Some(m) => (
            TCell { text: format!("{m:.2}"), mean: Some(m), std: x.std, n: Some(x.n), bold: false },
            TCell::text(x.ci95.map(|c| format!("[{:.2}, {:.2}]", m - c, m + c)).unwrap_or_else(|| {
                if x.settings == CHECKPOINT { "n/a (one checkpoint)".into() } else { "n/a (1 seed)".into() }
            })),
        ),
        None => (TCell::text(""), TCell::text("")),
    };
    let verdict = match x.verdict {
        Verdict::InsideCi => "inside CI".to_string(),
        Verdict::WithinTolerance => format!("within ±{}", o.expected_tolerance),
        Verdict::Outside => "outside".into(),
        Verdict::NoFinishedRuns => {
            let g = x.group.map(|g| (g.members.len(), g.n_failed)).unwrap_or_default();
            format!("no finished runs ({} planned, {} failed)", g.0, g.1)
        }
        Verdict::NotInSuite => "no such runs in the suite".into(),
    };
    vec![
        TCell::text(cell),
        TCell::text(&x.settings),
        TCell::text(&e.source),
        TCell::text(metric),
        published,
        ours,
        ci,
        TCell::text(if x.mean.is_some() { x.n.to_string() } else { String::new() }),
        x.delta.map(|d| TCell { text: format!("{d:+.2}"), mean: Some(d), ..Default::default() }).unwrap_or_default(),
        TCell::text(verdict),
    ]
}
