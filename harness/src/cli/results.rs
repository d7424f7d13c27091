//! `report`, `check`, `baseline`: reading a suite's results.

use super::*;

/// Loads the records a report works on, with the suite (when a suite file was given).
pub(super) fn load_report(a: &ResultsArgs) -> anyhow::Result<(Option<Suite>, crate::report::Report, report::Options)> {
    let (suite, name, records, unreadable, teachers) = if a.suite.is_dir() {
        let (name, records, unreadable) = report::load::from_dir_checked(&a.suite)?;
        (None, name, records, unreadable, vec![])
    } else {
        let (suite, plan, _) = load_plan(&a.suite, a.data.data_dir.as_deref())?;
        let records = report::load::from_plan(&plan, &a.results)?;
        let teachers = sched::gate::teacher_lines(&plan, &sched::gate::Gate::new(&suite), &a.results);
        (Some(suite), plan.suite, records, vec![], teachers)
    };
    let mut o = report::Options::default();
    if let Some(s) = &suite {
        let r = &s.report;
        if let Some(m) = r.metric.as_deref().and_then(report::Metric::parse) {
            o.metric = m;
        }
        if let Some(v) = &r.rows {
            o.rows = v.clone();
        }
        if let Some(v) = &r.cols {
            o.cols = v.clone();
        }
        o.baseline = r.baseline.clone();
        o.alpha = r.alpha.unwrap_or(o.alpha);
        o.expected_tolerance = r.expected_tolerance.unwrap_or(o.expected_tolerance);
        o.gap_x = r.gap_x.clone().unwrap_or(o.gap_x);
    }
    if let Some(m) = &a.metric {
        o.metric = report::Metric::parse(m).ok_or_else(|| crate::error::InputError::new(format!("--metric: expected `best` or `last`, found `{m}`")))?;
    }
    let mut rep = report::Report::build(&name, records)?;
    rep.unreadable = unreadable;
    rep.teachers = teachers;
    Ok((suite, rep, o))
}

pub(super) fn list(s: &str) -> Vec<String> {
    s.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect()
}

pub(super) fn report_cmd(a: ReportArgs) -> anyhow::Result<i32> {
    let (suite, rep, mut o) = load_report(&a.from)?;
    for d in rep.damaged() {
        eprintln!("warning: damaged run, not aggregated (listed in the report): {d}");
    }
    if let Some(r) = &a.rows {
        o.rows = list(r);
    }
    if let Some(c) = &a.cols {
        o.cols = list(c);
    }
    if let Some(b) = &a.baseline {
        if distill::find(b).is_none() {
            crate::input_bail!("--baseline: unknown method `{b}`; see `harness methods`");
        }
        o.baseline = Some(b.clone());
    }
    o.plots = !a.no_plots;
    let expected = suite.as_ref().map(|s| s.expected.clone()).unwrap_or_default();
    let out = a.out.join(&rep.suite);
    let written = report::write(&rep, &o, &expected, &out).map_err(|e| match (&suite, crate::error::is_input_error(&e)) {
        (Some(s), true) => e.context(format!("{}", s.path().display())),
        _ => e,
    })?;
    print!("{}", report::table::main(&rep, &o, &expected)?.markdown());
    println!("\nwrote {} files to {} (open index.md or index.html)", written.files.len(), written.dir.display());
    Ok(0)
}

pub(super) fn check_cmd(a: CheckArgs) -> anyhow::Result<i32> {
    let (suite, rep, o) = load_report(&a.from)?;
    let r = suite.as_ref().map(|s| s.report.clone()).unwrap_or_default();
    if let Some(t) = a.tolerance {
        if !(t >= 0.0 && t.is_finite()) {
            crate::input_bail!("--tolerance: expected points >= 0, found {t}");
        }
    }
    let k_se = a.k_se.or(r.k_se).unwrap_or(2.0);
    if !(k_se > 0.0 && k_se.is_finite()) {
        crate::input_bail!("--k-se: expected a number > 0, found {k_se}");
    }
    let min_seeds = a.min_seeds.or(r.min_seeds).unwrap_or(2);
    if min_seeds < 2 {
        crate::input_bail!("--min-seeds: expected at least 2 (a spread needs two seeds), found {min_seeds}");
    }
    if a.format != "text" && a.format != "json" {
        crate::input_bail!("--format: expected `text` or `json`, found `{}`", a.format);
    }
    let f = a.few_seeds_tolerance;
    if !(f >= 0.0 && f.is_finite()) {
        crate::input_bail!("--few-seeds-tolerance: expected points >= 0, found {f}");
    }
    let co = report::check::CheckOptions {
        tolerance: a.tolerance.or(r.tolerance),
        k_se,
        min_seeds,
        metric: o.metric,
        expected_tolerance: o.expected_tolerance,
        few_seeds_tolerance: f,
        strict: a.strict,
    };
    let expected = suite.as_ref().map(|s| s.expected.clone()).unwrap_or_default();
    let out = report::check::check(&rep, &a.baseline, &expected, &co)?;
    if a.format == "json" {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", out.text());
    }
    Ok(out.exit_code())
}

pub(super) fn baseline_cmd(a: BaselineArgs) -> anyhow::Result<i32> {
    let (_suite, rep, o) = load_report(&a.from)?;
    let damaged = rep.damaged();
    if !damaged.is_empty() {
        crate::input_bail!(
            "{} damaged run(s); a baseline would freeze their absence. Retrain them (`harness run --retrain-damaged`) first:\n  {}",
            damaged.len(),
            damaged.join("\n  ")
        );
    }
    let b = report::check::freeze(&rep, o.metric);
    let text = format!("# harness baseline: `harness check <suite> --baseline {}`\n{}", a.out.display(), toml::to_string(&b)?);
    crate::store::write_atomic(&a.out, text.as_bytes())?;
    println!("wrote {} groups of {} ({}) to {}", b.groups.len(), b.suite, o.metric.describe(), a.out.display());
    Ok(0)
}
