//! Paper-style tables: one layout ([`Table`]) rendered as Markdown, LaTeX (booktabs), HTML and CSV.

use std::collections::BTreeMap;

use super::{Group, Options, Report, stats};
use crate::suite::{Expected, Role};

/// One table cell: display text plus, for numbers, the values behind it (for CSV and bolding).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TCell {
    pub text: String,
    pub bold: bool,
    pub mean: Option<f64>,
    pub std: Option<f64>,
    pub n: Option<usize>,
}

impl TCell {
    pub fn text(s: impl Into<String>) -> TCell {
        TCell { text: s.into(), ..Default::default() }
    }
}

/// A rendered table: `keys` leading label columns, then data columns.
#[derive(Clone, Debug)]
pub struct Table {
    /// File stem under `tables/`.
    pub name: String,
    pub title: String,
    /// What the cells are (metric, spread, markers); printed under the table.
    pub note: String,
    pub header: Vec<String>,
    pub keys: usize,
    pub rows: Vec<Vec<TCell>>,
}

impl Table {
    pub fn markdown(&self) -> String {
        let esc = |s: &str| s.replace('|', "\\|");
        let mut s = format!("| {} |\n", self.header.iter().map(|h| esc(h)).collect::<Vec<_>>().join(" | "));
        s.push_str(&format!("|{}\n", self.header.iter().enumerate().map(|(i, _)| if i < self.keys { " --- |" } else { " ---: |" }).collect::<String>()));
        for r in &self.rows {
            let cells: Vec<String> = r.iter().map(|c| if c.bold && !c.text.is_empty() { format!("**{}**", esc(&c.text)) } else { esc(&c.text) }).collect();
            s.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
        if !self.note.is_empty() {
            s.push_str(&format!("\n{}\n", self.note));
        }
        s
    }

    pub fn latex(&self) -> String {
        let tex = |s: &str| {
            s.replace('\\', "\\textbackslash{}")
                .replace('&', "\\&")
                .replace('%', "\\%")
                .replace('_', "\\_")
                .replace('#', "\\#")
                .replace('±', "$\\pm$")
                .replace('→', "$\\to$")
                .replace('Δ', "$\\Delta$")
                .replace('†', "$^\\dagger$")
                .replace('≥', "$\\geq$")
                .replace('≤', "$\\leq$")
                .replace('τ', "$\\tau$")
                .replace('β', "$\\beta$")
                .replace('α', "$\\alpha$")
                .replace('γ', "$\\gamma$")
                .replace('λ', "$\\lambda$")
                .replace('ω', "$\\omega$")
                .replace('ε', "$\\varepsilon$")
                .replace('μ', "$\\mu$")
        };
        let spec: String = (0..self.header.len()).map(|i| if i < self.keys { 'l' } else { 'r' }).collect();
        let mut s = format!("% {}\n% {}\n\\begin{{tabular}}{{{spec}}}\n\\toprule\n", self.title, self.note.replace('\n', " "));
        s.push_str(&format!("{} \\\\\n\\midrule\n", self.header.iter().map(|h| tex(h)).collect::<Vec<_>>().join(" & ")));
        for r in &self.rows {
            let cells: Vec<String> =
                r.iter().map(|c| if c.bold && !c.text.is_empty() { format!("\\textbf{{{}}}", tex(&c.text)) } else { tex(&c.text) }).collect();
            s.push_str(&format!("{} \\\\\n", cells.join(" & ")));
        }
        s.push_str("\\bottomrule\n\\end{tabular}\n");
        s
    }

    pub fn html(&self) -> String {
        // Label columns (class `k`) read left-aligned and may wrap; numbers stay on one line.
        let class = |i: usize| if i < self.keys { " class=\"k\"" } else { "" };
        let mut s = String::from("<table>\n<tr>");
        for (i, h) in self.header.iter().enumerate() {
            s.push_str(&format!("<th{}>{}</th>", class(i), super::esc(h)));
        }
        s.push_str("</tr>\n");
        for r in &self.rows {
            s.push_str("<tr>");
            for (i, c) in r.iter().enumerate() {
                let t = super::esc(&c.text);
                s.push_str(&if c.bold { format!("<td{}><b>{t}</b></td>", class(i)) } else { format!("<td{}>{t}</td>", class(i)) });
            }
            s.push_str("</tr>\n");
        }
        s.push_str("</table>\n");
        if !self.note.is_empty() {
            s.push_str(&format!("<p>{}</p>\n", super::esc(&self.note)));
        }
        s
    }

    /// Machine-readable: label columns as text; each data column as `<col>`, `<col> mean`,
    /// `<col> std`, `<col> n`.
    pub fn csv(&self) -> anyhow::Result<String> {
        let mut w = csv::Writer::from_writer(Vec::new());
        let mut head: Vec<String> = self.header[..self.keys].to_vec();
        for h in &self.header[self.keys..] {
            head.extend([h.clone(), format!("{h} mean"), format!("{h} std"), format!("{h} n")]);
        }
        w.write_record(&head)?;
        for r in &self.rows {
            let mut rec: Vec<String> = r[..self.keys].iter().map(|c| c.text.clone()).collect();
            for c in &r[self.keys..] {
                let num = |x: Option<f64>| x.map(|v| format!("{v:.4}")).unwrap_or_default();
                rec.extend([c.text.clone(), num(c.mean), num(c.std), c.n.map(|n| n.to_string()).unwrap_or_default()]);
            }
            w.write_record(&rec)?;
        }
        Ok(String::from_utf8(w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?)?)
    }
}

/// `mean ± std` with two decimals (std omitted for a single seed).
pub fn pm(mean: f64, std: Option<f64>) -> String {
    match std {
        Some(s) => format!("{mean:.2} ± {s:.2}"),
        None => format!("{mean:.2}"),
    }
}

/// Every table of a report.
pub fn all(r: &Report, o: &Options, expected: &[Expected]) -> anyhow::Result<Vec<Table>> {
    let mut out = vec![main(r, o, expected)?];
    out.extend(super::verdict::table(r, o, expected));
    out.push(groups(r));
    if let Some(c) = comparisons(r, o) {
        out.push(c);
    }
    if let Some(s) = status(r) {
        out.push(s);
    }
    Ok(out)
}

/// Config columns that never distinguish groups (seed-like) and so never extend a row key.
fn seedlike(k: &str) -> bool {
    k == "seed" || k == "teacher.seed" || k == "role"
}

/// The paper table: rows × columns from `[report]`, cells mean ± std over seeds.
pub fn main(r: &Report, o: &Options, expected: &[Expected]) -> anyhow::Result<Table> {
    let students: Vec<&Group> = r.groups.iter().filter(|g| r.head(g).spec.role == Role::Student).collect();
    let by_pair = o.cols == ["pair"];
    let known: std::collections::BTreeSet<&String> = r.records.iter().flat_map(|x| x.config.keys()).collect();
    for (what, list) in [("rows", &o.rows), ("cols", &o.cols)] {
        for k in list.iter() {
            if !known.contains(k) && !r.records.is_empty() {
                crate::input_bail!(
                    "[report].{what}: unknown column `{k}`; columns of these runs: {}",
                    known.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                );
            }
        }
    }
    let val = |g: &Group, k: &str| r.head(g).key(k).unwrap_or_else(|| "-".into());
    // Columns: the values of `cols`; teacher-free groups join every pair column of their student.
    let col_of = |g: &Group| {
        let parts: Vec<String> = o.cols.iter().map(|k| if k == "pair" || k == "model" { val(g, k) } else { format!("{k}={}", val(g, k)) }).collect();
        parts.join(" / ")
    };
    let mut columns: Vec<String> = Vec::new();
    for g in &students {
        if by_pair && r.head(g).spec.teachers.is_empty() {
            continue;
        }
        let c = col_of(g);
        if !columns.contains(&c) {
            columns.push(c);
        }
    }
    let pair_cols = columns.clone();
    for g in &students {
        let h = r.head(g);
        if by_pair && h.spec.teachers.is_empty() && !pair_cols.iter().any(|c| c.ends_with(&format!("→{}", h.spec.model))) && !columns.contains(&h.spec.model)
        {
            columns.push(h.spec.model.clone());
        }
    }
    let cols_of = |g: &Group| -> Vec<String> {
        let h = r.head(g);
        if by_pair && h.spec.teachers.is_empty() {
            let mine: Vec<String> = pair_cols.iter().filter(|c| c.ends_with(&format!("→{}", h.spec.model))).cloned().collect();
            if mine.is_empty() { vec![h.spec.model.clone()] } else { mine }
        } else {
            vec![col_of(g)]
        }
    };
    // Rows: the values of `rows`, extended by every config key that still splits a cell, so two
    // settings never share a cell silently.
    let mut rows = o.rows.clone();
    loop {
        let mut cell: BTreeMap<(Vec<String>, String), Vec<&Group>> = BTreeMap::new();
        for g in &students {
            for c in cols_of(g) {
                cell.entry((rows.iter().map(|k| val(g, k)).collect(), c)).or_default().push(g);
            }
        }
        let clash = cell.values().find(|v| v.len() > 1);
        let Some(clash) = clash else { break };
        let extra = known.iter().find(|k| !seedlike(k) && !rows.contains(k) && !o.cols.contains(k) && clash.iter().any(|g| val(g, k) != val(clash[0], k)));
        match extra {
            Some(k) => rows.push((*k).clone()),
            None => break, // differ only in unlisted ways (cannot happen: groups differ in config)
        }
    }
    let mut row_keys: Vec<Vec<String>> = Vec::new();
    let mut cells: BTreeMap<(Vec<String>, String), &Group> = BTreeMap::new();
    for g in &students {
        let key: Vec<String> = rows.iter().map(|k| val(g, k)).collect();
        if !row_keys.contains(&key) {
            row_keys.push(key.clone());
        }
        for c in cols_of(g) {
            cells.insert((key.clone(), c), g);
        }
    }
    let metric = o.metric.column();
    let n_max = students.iter().map(|g| g.n_done + g.n_failed + g.n_damaged).max().unwrap_or(0);
    let mut body: Vec<Vec<TCell>> = Vec::new();
    let mut marked = false;
    if by_pair && students.iter().any(|g| !r.head(g).spec.teachers.is_empty()) {
        let mut row: Vec<TCell> = rows.iter().enumerate().map(|(i, _)| TCell::text(if i == 0 { "teacher" } else { "" })).collect();
        for c in &columns {
            // The teacher's own group (its runs' aggregate) when it was trained by the suite,
            // else the accuracy the students recorded for their (checkpoint) teacher.
            let in_col: Vec<&&Group> = students.iter().filter(|g| cols_of(g).contains(c) && !r.head(g).spec.teachers.is_empty()).collect();
            let own = in_col.iter().find_map(|g| match r.head(g).spec.teachers.first() {
                Some(crate::suite::TeacherRef::Run { id, .. }) => {
                    r.groups.iter().find(|t| t.members.iter().any(|&i| &r.records[i].spec.id == id)).and_then(|t| t.stats.get(metric))
                }
                _ => None,
            });
            let t = own.or_else(|| in_col.iter().find_map(|g| g.stats.get("teacher_top1")));
            row.push(
                t.map(|s| TCell { text: pm(s.mean, s.std), mean: Some(s.mean), std: s.std, n: Some(s.n), bold: false }).unwrap_or_else(|| TCell::text("")),
            );
        }
        body.push(row);
    }
    let first_data_row = body.len();
    for key in &row_keys {
        let mut row: Vec<TCell> = key.iter().map(TCell::text).collect();
        for c in &columns {
            let Some(g) = cells.get(&(key.clone(), c.clone())) else {
                row.push(TCell::text(""));
                continue;
            };
            let mut cell = match g.stats.get(metric) {
                Some(s) => TCell { text: pm(s.mean, s.std), mean: Some(s.mean), std: s.std, n: Some(s.n), bold: false },
                None if g.n_failed > 0 => TCell::text("failed"),
                None if g.n_damaged > 0 => TCell::text("damaged"),
                None => TCell::text("pending"),
            };
            if g.stats.contains_key(metric) && g.n_done < n_max {
                cell.text.push_str(&format!(" (n={})", g.n_done));
            }
            if g.n_failed > 0 && g.stats.contains_key(metric) {
                cell.text.push_str(&format!(" [{} failed]", g.n_failed));
            }
            // Damaged runs are never aggregated; the cell says how many were left out.
            if g.n_damaged > 0 && g.stats.contains_key(metric) {
                cell.text.push_str(&format!(" [{} damaged]", g.n_damaged));
            }
            if let Some((e, ours)) = expected_for(r, g, expected) {
                let d = ours - e.top1;
                let out = d.abs() > o.expected_tolerance;
                marked |= out;
                cell.text.push_str(&format!(" (paper {:.2}, Δ {d:+.2}{})", e.top1, if out { " †" } else { "" }));
            }
            row.push(cell);
        }
        body.push(row);
    }
    // Bold: best mean per column among the method rows.
    for j in 0..columns.len() {
        let jj = rows.len() + j;
        let best = body[first_data_row..].iter().filter_map(|row| row[jj].mean).fold(f64::NEG_INFINITY, f64::max);
        for row in body[first_data_row..].iter_mut() {
            if row[jj].mean == Some(best) {
                row[jj].bold = true;
            }
        }
    }
    let mut header = rows.clone();
    header.extend(columns.iter().cloned());
    let mut note = format!("{} over seeds, mean ± sample std; bold: best per column", o.metric.describe());
    if n_max > 0 {
        note.push_str(&format!("; n = {n_max} seeds unless marked"));
    }
    if expected.iter().any(|_| true) {
        note.push_str(&format!(
            "; (paper x, Δ): published number and our difference, each with the metric the paper used; † |Δ| > {} points",
            o.expected_tolerance
        ));
    }
    if marked {
        note.push_str(" (some cells are marked)");
    }
    Ok(Table { name: "main".into(), title: format!("{}: {}", r.suite, o.metric.describe()), note, header, keys: rows.len(), rows: body })
}

/// The published number for a group (same method, student and teacher), with our mean in the
/// paper's metric.
fn expected_for<'a>(r: &Report, g: &Group, expected: &'a [Expected]) -> Option<(&'a Expected, f64)> {
    let s = &r.head(g).spec;
    let teacher = s.teachers.first().map(|t| t.model().to_string());
    let e = expected.iter().find(|e| e.method == s.method && e.student == s.model && e.teacher == teacher)?;
    let ours = g.stats.get(if e.metric == "last" { "last_top1" } else { "best_top1" })?.mean;
    Some((e, ours))
}

/// Every group with every aggregate: n, best and last top-1 with 95% CI, top-5, ECE,
/// agreement, predictive KL, wall time.
pub fn groups(r: &Report) -> Table {
    let header = ["group", "run", "n", "failed", "damaged", "best top-1", "±95% CI", "last top-1", "±95% CI", "top-5", "ECE %", "agreement %", "pred-KL", "wall s"];
    let mut rows = Vec::new();
    for g in &r.groups {
        let num =
            |m: &str| g.stats.get(m).map(|s| TCell { text: pm(s.mean, s.std), mean: Some(s.mean), std: s.std, n: Some(s.n), bold: false }).unwrap_or_default();
        let ci = |m: &str| TCell::text(g.stats.get(m).and_then(|s| s.ci95).map(|c| format!("{c:.2}")).unwrap_or_default());
        let kl = g
            .stats
            .get("pred_kl")
            .map(|s| TCell { text: format!("{:.4}", s.mean), mean: Some(s.mean), std: s.std, n: Some(s.n), bold: false })
            .unwrap_or_default();
        let wall = g
            .stats
            .get("wall_time_s")
            .map(|s| TCell { text: format!("{:.1}", s.mean), mean: Some(s.mean), std: s.std, n: Some(s.n), bold: false })
            .unwrap_or_default();
        rows.push(vec![
            TCell::text(&g.id),
            TCell::text(r.label(g)),
            TCell::text(g.n_done.to_string()),
            TCell::text(g.n_failed.to_string()),
            TCell::text(g.n_damaged.to_string()),
            num("best_top1"),
            ci("best_top1"),
            num("last_top1"),
            ci("last_top1"),
            num("last_top5"),
            num("last_ece"),
            num("agreement"),
            kl,
            wall,
        ]);
    }
    Table {
        name: "groups".into(),
        title: "All groups (runs that differ only in seed)".into(),
        note: "mean ± sample std over finished seeds; ±95% CI: Student-t half-width of the mean; accuracies and ECE in percent, predictive KL(teacher‖student) in nats".into(),
        header: header.iter().map(|s| s.to_string()).collect(),
        keys: 2,
        rows,
    }
}

/// The baseline group a student group is compared with: the baseline method on the same
/// dataset and student (and teacher, when the baseline uses one), preferring the same recipe.
pub fn baseline_of<'a>(r: &'a Report, g: &Group, method: &str) -> Option<&'a Group> {
    let h = r.head(g);
    r.groups
        .iter()
        .filter(|b| {
            let bh = r.head(b);
            bh.spec.method == method
                && bh.spec.role == Role::Student
                && bh.spec.model == h.spec.model
                && bh.spec.dataset == h.spec.dataset
                && (bh.spec.teachers.is_empty() || bh.spec.teacher_models() == h.spec.teacher_models())
        })
        .max_by_key(|b| {
            let bh = r.head(b);
            bh.config.iter().filter(|(k, v)| k.starts_with("train.") && h.config.get(*k) == Some(v)).count()
        })
}

/// A p-value with four decimals, or in scientific notation when smaller than that shows.
fn p_text(p: f64) -> String {
    if p < 1e-4 { format!("{p:.1e}") } else { format!("{p:.4}") }
}

/// Each method against the suite's baseline method per student (and teacher): Δ mean and a
/// two-sided test: paired (t-test, and Wilcoxon signed-rank from enough pairs) when the two
/// groups ran on the same seeds, Welch's t-test otherwise.
pub fn comparisons(r: &Report, o: &Options) -> Option<Table> {
    let method = o.baseline.as_deref()?;
    let m = o.metric.column();
    let min_pairs = stats::wilcoxon_min_pairs(o.alpha);
    let mut rows = Vec::new();
    for g in r.groups.iter().filter(|g| r.head(g).spec.role == Role::Student && r.head(g).spec.method != method) {
        let Some(b) = baseline_of(r, g, method) else { continue };
        let (Some(a), Some(bs)) = (g.stats.get(m), b.stats.get(m)) else { continue };
        let c = stats::compare(&r.seed_values(g, m), &r.seed_values(b, m), o.alpha);
        let test = c.t();
        let d = c.delta();
        let sig = if test.is_some_and(|t| t.p < o.alpha) { "*" } else { "" };
        let (n, signed_rank) = match c {
            stats::Comparison::Paired { n, wilcoxon, .. } => (
                format!("{n} pairs"),
                match wilcoxon {
                    Some(w) => format!("{} ({})", p_text(w.p), if w.exact { "exact" } else { "normal approx." }),
                    None if n < min_pairs => format!("n/a (needs ≥{min_pairs} pairs)"),
                    None => "n/a (all differences zero)".into(),
                },
            ),
            stats::Comparison::Welch { n_a, n_b, .. } => (format!("{n_a} vs {n_b}"), "n/a (unpaired)".into()),
        };
        let (t, df, p) = match test {
            Some(t) => (format!("{:.2}", t.t), format!("{:.1}", t.df), p_text(t.p)),
            None => match c {
                stats::Comparison::Paired { .. } => (String::new(), String::new(), "n/a (differences without spread)".into()),
                stats::Comparison::Welch { .. } => (String::new(), String::new(), "n/a (needs ≥2 seeds each)".into()),
            },
        };
        rows.push(vec![
            TCell::text(r.label(g)),
            TCell::text(r.label(b)),
            TCell { text: pm(a.mean, a.std), mean: Some(a.mean), std: a.std, n: Some(a.n), bold: false },
            TCell { text: pm(bs.mean, bs.std), mean: Some(bs.mean), std: bs.std, n: Some(bs.n), bold: false },
            TCell { text: format!("{d:+.2}{sig}"), mean: Some(d), ..Default::default() },
            TCell::text(c.test_name()),
            TCell::text(n),
            TCell::text(t),
            TCell::text(df),
            TCell::text(p),
            TCell::text(signed_rank),
        ]);
    }
    Some(Table {
        name: "comparisons".into(),
        title: format!("Against the baseline `{method}` ({})", o.metric.describe()),
        note: format!(
            "two-sided tests; * p < {a} (t-test). Groups trained on the same seeds (same initialisation and data order) are compared \
             paired on their shared seeds: paired t-test, Δ = mean of the per-seed differences, and the Wilcoxon signed-rank test \
             (exact or normal approximation as scipy's default chooses) from {min_pairs} pairs, the fewest at which it can reach p < {a}. \
             Other groups: Welch's unequal-variance t-test, Δ = difference of the means.",
            a = o.alpha
        ),
        header: ["run", "baseline", "run mean ± std", "baseline mean ± std", "Δ", "test", "n", "t", "df", "p", "Wilcoxon p"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        keys: 2,
        rows,
    })
}

/// Runs that have not finished, with the reason (failed and diverged runs are never dropped).
pub fn status(r: &Report) -> Option<Table> {
    let rows: Vec<Vec<TCell>> = r
        .records
        .iter()
        .filter(|x| x.state != "done")
        .map(|x| vec![TCell::text(&x.spec.id), TCell::text(x.spec.label()), TCell::text(&x.state), TCell::text(&x.detail)])
        .collect();
    (!rows.is_empty()).then(|| Table {
        name: "status".into(),
        title: "Runs not finished".into(),
        note: String::new(),
        header: ["id", "run", "state", "detail"].iter().map(|s| s.to_string()).collect(),
        keys: 4,
        rows,
    })
}
