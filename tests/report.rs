//! Reports and regression checks on a hand-made results directory: aggregation against
//! hand-computed values, Welch's test against scipy, golden tables, decoded plots, and the
//! `check` exit codes (planted drop, noise inside the tolerance, malformed baseline).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{harness, text};
use harness::distill::metrics::{OutputStats, Reliability};
use harness::report::{self, stats};
use harness::store::{RunDir, Summary, write_json};
use harness::suite::{DataRef, ParamValue, Recipe, Role, RunSpec, TeacherRef};

const SUITE: &str = "fx";

fn spec(model: &str, method: &str, seed: u64, role: Role, teachers: Vec<TeacherRef>) -> RunSpec {
    let mut params = BTreeMap::new();
    if method == "kd" {
        params.insert("tau".to_string(), ParamValue::Float(4.0));
    }
    let mut s = RunSpec {
        id: String::new(),
        suite: SUITE.into(),
        role,
        dataset: DataRef { name: "digits".into(), fingerprint: "fixture".into() },
        model: model.into(),
        method: method.into(),
        params,
        train: Recipe { epochs: 3, ..Recipe::default() },
        seed,
        teachers,
        peers: vec![],
        save_model: role == Role::Teacher,
        exclusive: false,
        prune: None,
        student_from_teacher: false,
    };
    s.id = s.compute_id();
    s
}

/// Writes a finished run whose last top-1 is `last` percent (best = last + 1).
fn finished(results: &Path, s: &RunSpec, last: f64) {
    finished_with(results, s, last, 0.99)
}

fn finished_with(results: &Path, s: &RunSpec, last: f64, teacher_top1: f64) {
    let d = RunDir::new(results, SUITE, &s.id);
    std::fs::create_dir_all(&d.path).unwrap();
    write_json(&d.config(), s).unwrap();
    let curve = [last - 20.0, last - 5.0, last];
    let mut m = String::from("epoch,lr,train_loss,test_top1,test_loss\n");
    for (e, v) in curve.iter().enumerate() {
        m.push_str(&format!("{},0.05,{},{},{}\n", e + 1, 1.0 / (e + 1) as f64, v / 100.0, 2.0 - e as f64 * 0.5));
    }
    std::fs::write(d.metrics(), m).unwrap();
    let rel = Reliability { count: vec![0, 10, 30, 60], conf_sum: vec![0.0, 3.0, 18.0, 54.0], correct: vec![0.0, 2.0, 19.0, 57.0] };
    let summary = Summary {
        id: s.id.clone(),
        epochs: 3,
        best_top1: (last + 1.0) / 100.0,
        best_epoch: 2,
        last_top1: last / 100.0,
        last_top5: 0.99,
        last_ece: 0.05,
        last_test_loss: 1.0,
        agreement: (!s.teachers.is_empty()).then_some(0.9),
        pred_kl: (!s.teachers.is_empty()).then_some(0.1),
        teacher_top1: (!s.teachers.is_empty()).then_some(teacher_top1),
        output_stats: OutputStats::default(),
        reliability: rel,
        peers_last_top1: vec![],
        peers_best_top1: vec![],
        param_count: 1000,
        wall_time_s: 10.0,
        images_per_s: 100.0,
        finished_unix: 1_700_000_000,
        pruned: None,
        student_widths: None,
    };
    write_json(&d.summary(), &summary).unwrap();
}

/// teacher cnn_small (99); students cnn_tiny: ce 70/72/74, kd 75/76/77.5, dkd 78/79 + one failed;
/// teacher mlp (95) with kd students 74/75/76.
fn fixture(dir: &Path) -> PathBuf {
    let results = dir.join("results");
    let t = spec("cnn_small", "ce", 0, Role::Teacher, vec![]);
    finished(&results, &t, 99.0);
    let tref = vec![TeacherRef::Run { id: t.id.clone(), model: "cnn_small".into() }];
    for (seed, v) in [70.0, 72.0, 74.0].into_iter().enumerate() {
        finished(&results, &spec("cnn_tiny", "ce", seed as u64, Role::Student, vec![]), v);
    }
    for (seed, v) in [75.0, 76.0, 77.5].into_iter().enumerate() {
        finished(&results, &spec("cnn_tiny", "kd", seed as u64, Role::Student, tref.clone()), v);
    }
    for (seed, v) in [78.0, 79.0].into_iter().enumerate() {
        finished(&results, &spec("cnn_tiny", "dkd", seed as u64, Role::Student, tref.clone()), v);
    }
    // A second, weaker teacher (for the student-vs-teacher plot).
    let t2 = spec("mlp", "ce", 0, Role::Teacher, vec![]);
    finished(&results, &t2, 95.0);
    let t2ref = vec![TeacherRef::Run { id: t2.id.clone(), model: "mlp".into() }];
    for (seed, v) in [74.0, 75.0, 76.0].into_iter().enumerate() {
        finished_with(&results, &spec("cnn_tiny", "kd", seed as u64, Role::Student, t2ref.clone()), v, 0.95);
    }
    let failed = spec("cnn_tiny", "dkd", 2, Role::Student, tref);
    let d = RunDir::new(&results, SUITE, &failed.id);
    std::fs::create_dir_all(&d.path).unwrap();
    write_json(&d.config(), &failed).unwrap();
    std::fs::write(d.path.join("status.json"), r#"{"state":"diverged","error":"loss became NaN at epoch 2","epoch":2,"attempt":1}"#).unwrap();
    results.join(SUITE)
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn aggregates_match_hand_computed_values() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture(tmp.path());
    let (suite, records) = report::load::from_dir(&dir).unwrap();
    assert_eq!(suite, SUITE);
    assert_eq!(records.len(), 14);
    let r = report::Report::build(&suite, records).unwrap();
    // Two teachers, ce, kd from each teacher, dkd: seeds collapse into six groups.
    assert_eq!(r.groups.len(), 6, "{:?}", r.groups.iter().map(|g| r.label(g)).collect::<Vec<_>>());
    let by = |method: &str| {
        r.groups.iter().find(|g| r.head(g).spec.method == method && r.head(g).spec.role == Role::Student && r.head(g).spec.teacher_models() != "mlp").unwrap()
    };
    let ce = by("ce").stats["last_top1"];
    assert_eq!(ce.n, 3);
    assert!(close(ce.mean, 72.0, 1e-9) && close(ce.std.unwrap(), 2.0, 1e-9), "{ce:?}");
    assert!(close(ce.min, 70.0, 1e-9) && close(ce.max, 74.0, 1e-9));
    // t_{0.975, 2} · 2 / √3 (scipy.stats.t.ppf).
    assert!(close(ce.ci95.unwrap(), 4.9682754235006605, 1e-9), "{ce:?}");
    let best = by("ce").stats["best_top1"];
    assert!(close(best.mean, 73.0, 1e-9));
    let kd = by("kd").stats["last_top1"];
    assert!(close(kd.mean, 76.16666666666667, 1e-9) && close(kd.std.unwrap(), 1.2583057392117916, 1e-9), "{kd:?}");
    let dkd = by("dkd");
    assert_eq!((dkd.n_done, dkd.n_failed), (2, 1), "the diverged seed is counted, not dropped");
    assert!(close(dkd.stats["last_top1"].mean, 78.5, 1e-9));
    // Teacher-free runs have no agreement; students of a teacher do.
    assert!(!by("ce").stats.contains_key("agreement"));
    assert!(close(by("kd").stats["agreement"].mean, 90.0, 1e-9));
    // The Polars frames: one row per run, one per (run, epoch).
    assert_eq!(r.runs.height(), 14);
    assert_eq!(r.epochs.height(), 13 * 3);
    for c in ["id", "group", "status", "seed", "model", "method", "teacher", "pair", "train.lr", "param.tau", "teacher.model", "last_top1"] {
        assert!(r.runs.column(c).is_ok(), "runs frame lacks column {c}");
    }
}

#[test]
fn welch_matches_scipy() {
    // scipy.stats.ttest_ind(a, b, equal_var=False)
    let cases: [(&[f64], &[f64], f64, f64, f64); 3] = [
        (&[75.0, 76.0, 77.5], &[70.0, 72.0, 74.0], WELCH[0].0, WELCH[0].1, WELCH[0].2),
        (&[78.0, 79.0], &[70.0, 72.0, 74.0], WELCH[1].0, WELCH[1].1, WELCH[1].2),
        (&[71.2, 70.8, 71.5, 70.9, 71.1], &[70.1, 71.0, 69.8], WELCH[2].0, WELCH[2].1, WELCH[2].2),
    ];
    for (a, b, t, p, df) in cases {
        let w = stats::welch(&stats::Moments::of(a), &stats::Moments::of(b)).unwrap();
        assert!(close(w.t, t, 1e-9), "t {} vs {t}", w.t);
        assert!(close(w.df, df, 1e-9), "df {} vs {df}", w.df);
        assert!(close(w.p, p, 1e-8), "p {} vs {p}", w.p);
    }
    // One seed has no spread: no test rather than a made-up p-value.
    assert!(stats::welch(&stats::Moments::of(&[1.0]), &stats::Moments::of(&[1.0, 2.0])).is_none());
}

/// (t, p, df) from scipy 1.17.1 `ttest_ind(a, b, equal_var=False)` for the cases above.
const WELCH: [(f64, f64, f64); 3] = [
    (3.054236108907634, 0.04746357845155669, 3.3688555347091933),
    (5.165676192553671, 0.019235143306535373, 2.6350364963503647),
    (2.100902925755547, 0.14560819379317974, 2.4717119764878737),
];

fn golden(name: &str, got: &str) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/report").join(name);
    if std::env::var_os("KD_HARNESS_BLESS").is_some() {
        std::fs::write(&p, got).unwrap();
    }
    let want = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e} (KD_HARNESS_BLESS=1 writes it)", p.display()));
    assert_eq!(got, want, "{name} differs from the golden file {}", p.display());
}

#[test]
fn report_writes_golden_tables_and_decodable_plots() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture(tmp.path());
    let o = harness(&["report", dir.to_str().unwrap(), "--out", "reports", "--baseline", "kd"], tmp.path());
    assert!(o.status.success(), "{}", text(&o));
    let out = tmp.path().join("reports").join(SUITE);
    for (f, golden_name) in
        [("tables/main.md", "main.md"), ("tables/main.tex", "main.tex"), ("tables/main.csv", "main.csv"), ("tables/comparisons.md", "comparisons.md")]
    {
        golden(golden_name, &std::fs::read_to_string(out.join(f)).unwrap());
    }
    // The diverged run is shown, with its reason.
    let status = std::fs::read_to_string(out.join("tables/status.md")).unwrap();
    assert!(status.contains("diverged") && status.contains("loss became NaN"), "{status}");
    let index = std::fs::read_to_string(out.join("index.md")).unwrap();
    assert!(index.contains("suite: fx") && index.contains("plots/curves_cnn_small_cnn_tiny.png"), "{index}");
    assert!(std::fs::read_to_string(out.join("index.html")).unwrap().contains("<table>"));
    // Frames readable back.
    let runs = polars::prelude::ParquetReader::new(std::fs::File::open(out.join("runs.parquet")).unwrap());
    use polars::prelude::SerReader;
    assert_eq!(runs.finish().unwrap().height(), 14);
    // Plots: PNGs decode at the expected size and are not blank; SVGs exist.
    for stem in ["curves_cnn_small_cnn_tiny", "accuracy_cnn_small_cnn_tiny", "reliability_cnn_small_cnn_tiny", "curves_mlp_cnn_tiny", "teacher_gap"] {
        let png = out.join("plots").join(format!("{stem}.png"));
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.width, 1100, "{stem}");
        let px = &buf[..info.buffer_size()];
        let non_white = px.chunks(3).filter(|c| c.iter().any(|&v| v < 200)).count();
        assert!(non_white > 2000, "{stem}: only {non_white} drawn pixels");
        let svg = std::fs::read_to_string(out.join("plots").join(format!("{stem}.svg"))).unwrap();
        assert!(svg.contains("<svg") && svg.contains("<text"), "{stem}.svg");
    }
}

#[test]
fn check_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture(tmp.path());
    let d = dir.to_str().unwrap();
    let o = harness(&["baseline", d, "--out", "base.toml"], tmp.path());
    assert!(o.status.success(), "{}", text(&o));
    // Unchanged results: every group passes except the one with a diverged run, which is reported.
    let o = harness(&["check", d, "--baseline", "base.toml", "--format", "json"], tmp.path());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    let verdicts: Vec<&str> = v["lines"].as_array().unwrap().iter().map(|l| l["verdict"].as_str().unwrap()).collect();
    assert_eq!(verdicts.iter().filter(|v| **v == "failed_runs").count(), 1, "{verdicts:?}");
    assert_eq!(o.status.code(), Some(1), "a group with a diverged run never passes silently");
    // Remove the diverged run: clean pass.
    for e in std::fs::read_dir(dir.join("runs")).unwrap() {
        let p = e.unwrap().path();
        if p.join("status.json").exists() {
            std::fs::remove_dir_all(&p).unwrap();
        }
    }
    // The single-seed teacher has no spread-derived tolerance: a warning, failing under --strict.
    let o = harness(&["check", d, "--baseline", "base.toml"], tmp.path());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("fewseeds"), "{}", text(&o));
    let o = harness(&["check", d, "--baseline", "base.toml", "--strict"], tmp.path());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    // Without the teacher in the baseline it is only `new` (informational): clean pass.
    let mut b: report::check::BaselineFile = toml::from_str(&std::fs::read_to_string(tmp.path().join("base.toml")).unwrap()).unwrap();
    b.groups.retain(|g| !g.label.starts_with("teacher"));
    std::fs::write(tmp.path().join("base.toml"), toml::to_string(&b).unwrap()).unwrap();
    let o = harness(&["check", d, "--baseline", "base.toml"], tmp.path());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("new"), "{}", text(&o));
    // Lower every kd seed: by 0.2 points (noise, inside 2 SE ≈ 2.4) → pass; by 5 → regression.
    let shift = |by: f64| {
        for e in std::fs::read_dir(dir.join("runs")).unwrap() {
            let run = RunDir { path: e.unwrap().path() };
            let spec = run.read_spec().unwrap();
            if spec.method == "kd" {
                let mut s = run.read_summary().unwrap();
                s.last_top1 -= by;
                run.write_summary(&s).unwrap();
            }
        }
    };
    shift(0.2);
    let o = harness(&["check", d, "--baseline", "base.toml"], tmp.path());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    shift(4.8);
    let o = harness(&["check", d, "--baseline", "base.toml"], tmp.path());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("regressed"), "{}", text(&o));
    // An absolute tolerance larger than the drop passes it.
    let o = harness(&["check", d, "--baseline", "base.toml", "--tolerance", "6"], tmp.path());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // A baseline group with no results now is missing, not passed.
    let mut b = std::fs::read_to_string(tmp.path().join("base.toml")).unwrap();
    b.push_str("\n[[group]]\nid = \"000000000000\"\nlabel = \"gone\"\nn = 3\nmean = 50.0\nstd = 1.0\n");
    std::fs::write(tmp.path().join("gone.toml"), b).unwrap();
    let o = harness(&["check", d, "--baseline", "gone.toml", "--tolerance", "6"], tmp.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("missing"), "{}", text(&o));
    // Malformed baselines: exit 2 naming the file.
    std::fs::write(tmp.path().join("bad.toml"), "suite = \"fx\"\nmetric = \"median\"\ncreated = \"x\"\ncommit = \"y\"\n").unwrap();
    let o = harness(&["check", d, "--baseline", "bad.toml"], tmp.path());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("bad.toml") && text(&o).contains("metric"), "{}", text(&o));
    std::fs::write(tmp.path().join("junk.toml"), "this is not toml [").unwrap();
    let o = harness(&["check", d, "--baseline", "junk.toml"], tmp.path());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = harness(&["check", d, "--baseline", "nope.csv"], tmp.path());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn check_against_runs_parquet_and_too_few_seeds() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture(tmp.path());
    let d = dir.to_str().unwrap();
    let o = harness(&["report", d, "--out", "reports", "--no-plots"], tmp.path());
    assert!(o.status.success(), "{}", text(&o));
    let parquet = tmp.path().join("reports").join(SUITE).join("runs.parquet");
    let o = harness(&["check", d, "--baseline", parquet.to_str().unwrap(), "--format", "json"], tmp.path());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    let lines = v["lines"].as_array().unwrap();
    let verdict = |label: &str| lines.iter().find(|l| l["label"].as_str().unwrap().contains(label)).map(|l| l["verdict"].as_str().unwrap().to_string());
    // The teacher has one seed: no spread-derived tolerance, reported as a warning.
    assert_eq!(verdict("teacher").as_deref(), Some("few_seeds"), "{lines:?}");
    assert_eq!(verdict("kd").as_deref(), Some("ok"), "{lines:?}");
    assert_eq!(o.status.code(), Some(1), "the diverged dkd run still fails the check");
}

#[test]
fn published_numbers_are_compared_and_marked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture(tmp.path());
    let (suite, records) = report::load::from_dir(&dir).unwrap();
    let r = report::Report::build(&suite, records).unwrap();
    let e = |method: &str, top1: f64, metric: &str| harness::suite::Expected {
        teacher: Some("cnn_small".into()),
        student: "cnn_tiny".into(),
        method: method.into(),
        top1,
        std: None,
        metric: metric.into(),
        source: "test".into(),
    };
    // kd last = 76.17: paper 75.0 (Δ +1.17 > 1 → marked); dkd best = 79.5: paper 79.0 (inside).
    let t = report::table::main(&r, &report::Options::default(), &[e("kd", 75.0, "last"), e("dkd", 79.0, "best")]).unwrap();
    let md = t.markdown();
    assert!(md.contains("76.17 ± 1.26 (paper 75.00, Δ +1.17 †)"), "{md}");
    assert!(md.contains("(paper 79.00, Δ +0.50)"), "{md}");
}

#[test]
fn report_section_is_validated() {
    let tmp = tempfile::tempdir().unwrap();
    let base = "[suite]\nname = \"r\"\ndataset = \"digits\"\nseeds = [0]\n[train]\nepochs = 1\n[grid]\nstudent = [\"cnn_tiny\"]\nmethod = [\"ce\"]\n";
    std::fs::write(tmp.path().join("a.toml"), format!("{base}[report]\nmetric = \"median\"\n")).unwrap();
    let o = harness(&["plan", "a.toml"], tmp.path());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("a.toml:11") && text(&o).contains("report.metric") && text(&o).contains("best, last"), "{}", text(&o));
    std::fs::write(tmp.path().join("b.toml"), format!("{base}[report]\nrow = \"method\"\n")).unwrap();
    let o = harness(&["plan", "b.toml"], tmp.path());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("did you mean `rows`"), "{}", text(&o));
    // A column that does not exist in the results: exit 2, naming the key and the columns there are.
    std::fs::write(tmp.path().join("c.toml"), format!("{base}[report]\nrows = [\"method\", \"param.temperature\"]\n")).unwrap();
    let o = harness(&["report", "c.toml", "--no-plots"], tmp.path());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("param.temperature") && text(&o).contains("c.toml"), "{}", text(&o));
}

/// Headless Chromium, or why not (the test skips then, except under CI:
/// `KD_HARNESS_REQUIRE_BROWSER`, set by `.ci/run`; `scripts/browser.sh` installs it).
fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser"].iter().find_map(|b| {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).map(|d| d.join(b)).find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(std::env::var_os("KD_HARNESS_REQUIRE_BROWSER").is_none(), "KD_HARNESS_REQUIRE_BROWSER is set but there is no chromium (scripts/browser.sh installs it)");
        eprintln!("skipping: no chromium on PATH (scripts/browser.sh installs Debian's)");
    }
    found
}

fn headless(browser: &Path, profile: &Path, args: &[&str], page: &Path) -> std::process::Output {
    std::process::Command::new("timeout")
        .arg("120")
        .arg(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap()
}

/// What a person sees: the report's index.html in a 1280-px window. Every image loads, nothing
/// sticks out of the window (outside the tables' own scroll boxes), the tables are there; a
/// screenshot is kept at target/report-index.png.
#[test]
fn index_html_reads_in_a_real_browser() {
    let Some(browser) = chromium() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture(tmp.path());
    let o = harness(&["report", dir.to_str().unwrap(), "--out", "reports", "--baseline", "kd"], tmp.path());
    assert!(o.status.success(), "{}", text(&o));
    let out = tmp.path().join("reports").join(SUITE);
    let index = std::fs::read_to_string(out.join("index.html")).unwrap();
    // The same page with a probe that writes its measurements into the DOM once loaded.
    let probe = r#"<script>
window.addEventListener('load', () => {
  const W = document.documentElement.clientWidth;
  const scrolls = e => { for (let a = e.parentElement; a; a = a.parentElement) { const o = getComputedStyle(a).overflowX; if (o === 'auto' || o === 'scroll' || o === 'hidden') return true; } return false; };
  const wide = [...document.querySelectorAll('body *')].filter(e => e.id !== 'kd-check' && e.getBoundingClientRect().right > W + 1 && !scrolls(e)).map(e => e.tagName + ' ' + (e.textContent || e.getAttribute('src') || '').slice(0, 60));
  const imgs = [...document.images];
  const r = { width: W, scroll_width: document.documentElement.scrollWidth, images: imgs.length,
    broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src')),
    narrow: imgs.filter(i => i.getBoundingClientRect().width < 600).map(i => i.getAttribute('src')),
    tables: document.querySelectorAll('table').length, wide };
  const pre = document.createElement('pre'); pre.id = 'kd-check'; pre.textContent = JSON.stringify(r); document.body.appendChild(pre);
});
</script>"#;
    assert!(index.contains("</body>"), "{index}");
    let check = out.join("check.html");
    std::fs::write(&check, index.replace("</body>", &format!("{probe}</body>"))).unwrap();
    let o = headless(&browser, &tmp.path().join("profile"), &["--window-size=1280,1000", "--virtual-time-budget=10000", "--dump-dom"], &check);
    let dom = String::from_utf8_lossy(&o.stdout);
    let json = dom.split("<pre id=\"kd-check\">").nth(1).and_then(|s| s.split("</pre>").next()).unwrap_or_else(|| panic!("no probe output; chromium said: {}", text(&o)));
    let r: serde_json::Value = serde_json::from_str(&json.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")).unwrap();
    assert_eq!(r["width"], 1280, "{r}");
    assert!(r["images"].as_u64().unwrap() >= 5, "the plots are on the page: {r}");
    assert_eq!(r["broken"], serde_json::json!([]), "every image loads: {r}");
    assert_eq!(r["narrow"], serde_json::json!([]), "plots are shown large, not shrunk: {r}");
    assert!(r["tables"].as_u64().unwrap() >= 3, "{r}");
    assert!(r["scroll_width"].as_u64().unwrap() <= 1280, "the page scrolls sideways: {r}");
    assert_eq!(r["wide"], serde_json::json!([]), "elements stick out of the window: {r}");

    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/report-index.png");
    let o = headless(&browser, &tmp.path().join("profile2"), &["--window-size=1280,2400", &format!("--screenshot={}", shot.display())], &out.join("index.html"));
    assert!(shot.is_file(), "no screenshot: {}", text(&o));
}
