//! What a reader of a report sees: legends that name the method and only the settings that
//! differ (no placeholders), the reproduction verdicts of published numbers, the choice of paired
//! or Welch tests, and plots written as SVG + PNG and shown from `index.html`. Runs are written by
//! hand into a results folder (no training), so every number below is known exactly.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{harness, text};
use harness::distill::metrics::Reliability;
use harness::report::{self, Options, plot};
use harness::store::{RunDir, Summary, write_json};
use harness::suite::{DataRef, Expected, ParamValue, Recipe, Role, RunSpec, TeacherRef};

const SUITE: &str = "views";

fn spec(model: &str, method: &str, tau: Option<f64>, seed: u64, role: Role, teachers: Vec<TeacherRef>) -> RunSpec {
    let params: BTreeMap<String, ParamValue> = tau.map(|t| ("tau".to_string(), ParamValue::Float(t))).into_iter().collect();
    let mut s = RunSpec {
        id: String::new(),
        suite: SUITE.into(),
        role,
        dataset: DataRef { name: "digits".into(), fingerprint: "fixture".into() },
        model: model.into(),
        method: method.into(),
        params,
        train: Recipe { epochs: 2, ..Recipe::default() },
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

/// A finished run: last top-1 `last` percent, best = last + 0.5. summary.json stores fractions
/// (the store's unit); the report reads percent.
fn finished(results: &Path, s: &RunSpec, last: f64) {
    let d = RunDir::new(results, SUITE, &s.id);
    std::fs::create_dir_all(&d.path).unwrap();
    write_json(&d.config(), s).unwrap();
    std::fs::write(d.metrics(), format!("epoch,lr,train_loss,test_top1\n1,0.1,1.5,{}\n2,0.01,0.9,{}\n", (last - 10.0) / 100.0, last / 100.0)).unwrap();
    let teacher = !s.teachers.is_empty();
    let summary = Summary {
        id: s.id.clone(),
        epochs: 2,
        best_top1: (last + 0.5) / 100.0,
        best_epoch: 2,
        last_top1: last / 100.0,
        last_top5: 0.99,
        last_ece: 0.04,
        last_test_loss: 0.5,
        agreement: teacher.then_some(0.9),
        pred_kl: teacher.then_some(0.1),
        teacher_top1: teacher.then_some(0.99),
        output_stats: Default::default(),
        reliability: Reliability { count: vec![0, 4, 16, 80], conf_sum: vec![0.0, 1.6, 10.0, 74.0], correct: vec![0.0, 1.0, 11.0, 77.0] },
        peers_last_top1: vec![],
        peers_best_top1: vec![],
        param_count: 1000,
        wall_time_s: 1.0,
        images_per_s: 100.0,
        finished_unix: 1_700_000_000,
        pruned: None,
        student_widths: None,
    };
    write_json(&d.summary(), &summary).unwrap();
}

/// A run that diverged (no summary).
fn diverged(results: &Path, s: &RunSpec) {
    let d = RunDir::new(results, SUITE, &s.id);
    std::fs::create_dir_all(&d.path).unwrap();
    write_json(&d.config(), s).unwrap();
    std::fs::write(d.path.join("status.json"), r#"{"state":"diverged","error":"loss became NaN","epoch":1,"attempt":1}"#).unwrap();
}

/// Teacher cnn_small (99); students cnn_tiny on seeds 0-2: ce 70/72/74 (no teacher), kd τ=4
/// 75/76/77.5 and kd τ=2 73/74/74.5 (same seeds as ce: paired), dkd on seeds 10-12 75/76/77.5
/// (no shared seed: Welch); resnet8 ce: one diverged seed only.
fn fixture(dir: &Path) -> PathBuf {
    let results = dir.join("results");
    let t = spec("cnn_small", "ce", None, 0, Role::Teacher, vec![]);
    finished(&results, &t, 99.0);
    let tref = vec![TeacherRef::Run { id: t.id.clone(), model: "cnn_small".into() }];
    let runs: [(&str, Option<f64>, u64, [f64; 3], bool); 4] = [
        ("ce", None, 0, [70.0, 72.0, 74.0], false),
        ("kd", Some(4.0), 0, [75.0, 76.0, 77.5], true),
        ("kd", Some(2.0), 0, [73.0, 74.0, 74.5], true),
        ("dkd", None, 10, [75.0, 76.0, 77.5], true),
    ];
    for (method, tau, first, values, taught) in runs {
        for (k, v) in values.into_iter().enumerate() {
            let teachers = if taught { tref.clone() } else { vec![] };
            finished(&results, &spec("cnn_tiny", method, tau, first + k as u64, Role::Student, teachers), v);
        }
    }
    diverged(&results, &spec("resnet8", "ce", None, 0, Role::Student, vec![]));
    results.join(SUITE)
}

fn build(dir: &Path) -> report::Report {
    let (suite, records) = report::load::from_dir(dir).unwrap();
    report::Report::build(&suite, records).unwrap()
}

fn expected(teacher: Option<&str>, student: &str, method: &str, top1: f64, metric: &str) -> Expected {
    Expected {
        teacher: teacher.map(str::to_string),
        student: student.into(),
        method: method.into(),
        top1,
        std: None,
        metric: metric.into(),
        source: format!("paper {method}"),
    }
}

/// Every `<text>` of an SVG file.
fn svg_texts(p: &Path) -> Vec<String> {
    let s = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    s.split("<text").skip(1).filter_map(|t| Some(t.split_once('>')?.1.split_once("</text>")?.0.to_string())).collect()
}

#[test]
fn legends_name_the_method_and_only_the_differing_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture(tmp.path());
    let r = build(&dir);
    let students: Vec<&report::Group> = r.groups.iter().filter(|g| r.head(g).spec.role == Role::Student && r.head(g).spec.model == "cnn_tiny").collect();
    let names = report::label::series(&r, &students);
    // ce has no teacher and no τ: nothing is printed for what it lacks; τ is the only difference.
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, ["ce", "dkd", "kd τ=2", "kd τ=4"], "{names:?}");
    for n in &names {
        assert!(report::label::is_clean(n) && n.chars().count() <= 40, "{n}");
    }
    // The written SVGs hold the same names, and never a placeholder or a config path.
    let o = harness(&["report", dir.to_str().unwrap(), "--out", "reports"], tmp.path());
    assert!(o.status.success(), "{}", text(&o));
    let plots = tmp.path().join("reports").join(SUITE).join("plots");
    let mut seen = 0;
    for e in std::fs::read_dir(&plots).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "svg") {
            for t in svg_texts(&p) {
                let t = t.trim().replace("&amp;", "&");
                assert!(report::label::is_clean(&t), "{}: label `{t}`", p.display());
                assert!(t.chars().count() <= 100, "{}: over-long text `{t}`", p.display());
            }
            seen += 1;
        }
    }
    assert!(seen >= 3, "{seen} SVGs");
    let curves = svg_texts(&plots.join("curves_cnn_small_cnn_tiny.svg"));
    for want in ["ce", "kd τ=4", "kd τ=2", "dkd"] {
        assert!(curves.iter().any(|t| t.trim() == want), "legend lacks `{want}`: {curves:?}");
    }
    // The label check refuses a planted placeholder: no file is written with it.
    for planted in ["ce teacher.method=-", "kd param.tau=4", "kd τ=- lr=0.1"] {
        assert!(!report::label::is_clean(planted), "{planted}");
        let chart = plot::Chart::Lines(plot::Lines {
            title: "t".into(),
            subtitle: String::new(),
            x: "x".into(),
            y: "y".into(),
            series: vec![plot::Line {
                name: planted.into(),
                style: plot::Style::plain(plotters::style::RGBColor(0, 0, 0)),
                points: vec![(0.0, 0.0), (1.0, 1.0)],
                band: None,
                err: vec![],
                markers: false,
            }],
            x_range: (0.0, 1.0),
            y_range: (0.0, 1.0),
        });
        let stem = tmp.path().join("planted");
        assert!(plot::render(&chart, &stem).is_err(), "{planted} was drawn");
        assert!(!stem.with_extension("svg").exists());
    }
}

#[test]
fn reproduction_verdicts_and_summary_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture(tmp.path());
    let r = build(&dir);
    let o = Options::default();
    // ce last = 72 ± 4.97 (95% CI [67.03, 76.97]); dkd best = 76.67 ± 3.13 (no CI contains 80).
    let exp = [
        expected(None, "cnn_small", "ce", 98.5, "last"),               // teacher, 1 seed: Δ +0.5 ≤ 1 → tolerance
        expected(None, "cnn_tiny", "ce", 75.0, "last"),                // inside the CI
        expected(Some("cnn_small"), "cnn_tiny", "dkd", 80.5, "best"),  // Δ −3.83, CI ±3.13 → outside
        expected(Some("cnn_small"), "cnn_tiny", "kd", 75.0, "last"),   // two groups (τ = 4 and 2), both inside
        expected(None, "resnet8", "ce", 60.0, "last"),                 // only a diverged run
        expected(Some("cnn_small"), "cnn_tiny", "dist", 77.0, "last"), // not in the suite
    ];
    let t = report::verdict::table(&r, &o, &exp).unwrap();
    let mut verdicts: Vec<(&str, &str, &str)> = t.rows.iter().map(|row| (row[0].text.as_str(), row[1].text.as_str(), row[9].text.as_str())).collect();
    // Groups of one published cell come in report order (run ids); compare them as a set.
    verdicts[3..5].sort();
    assert_eq!(
        verdicts,
        [
            ("cnn_small ce (teacher)", "", "within ±1"),
            ("cnn_tiny ce", "", "inside CI"),
            ("cnn_small→cnn_tiny dkd", "", "outside"),
            ("cnn_small→cnn_tiny kd", "τ=2", "inside CI"),
            ("cnn_small→cnn_tiny kd", "τ=4", "inside CI"),
            ("resnet8 ce", "", "no finished runs (1 planned, 1 failed)"),
            ("cnn_small→cnn_tiny dist", "", "no such runs in the suite"),
        ],
        "{}",
        t.markdown()
    );
    // Ours, interval and Δ of one row, in the paper's metric (dkd: best epoch).
    let dkd = &t.rows[2];
    assert_eq!((dkd[3].text.as_str(), dkd[5].text.as_str(), dkd[7].text.as_str(), dkd[8].text.as_str()), ("best epoch", "76.67", "3", "-3.83"));
    assert_eq!(dkd[6].text, "[73.54, 79.79]");
    let rows = report::verdict::rows(&r, &o, &exp);
    let line = report::verdict::summary(&rows, &o);
    assert_eq!(line, "4/7 published cells reproduced (3 inside our 95% CI, 1 within ±1 points); 1 outside; 2 without finished runs");
    // A tighter tolerance turns the teacher's cell into `outside`.
    let strict = Options { expected_tolerance: 0.25, ..Options::default() };
    assert!(report::verdict::summary(&report::verdict::rows(&r, &strict, &exp), &strict).starts_with("3/7"));
    // Every format carries the verdicts and the summary.
    assert!(t.markdown().contains(&line) && t.markdown().contains("| inside CI |"));
    assert!(t.latex().contains("inside CI") && t.latex().contains("$\\Delta$") && t.latex().contains("$\\tau$=2"), "{}", t.latex());
    assert!(t.html().contains("<td>outside</td>"));
    let csv = t.csv().unwrap();
    assert!(csv.lines().next().unwrap().starts_with("published cell,settings,source,metric,published,published mean"), "{csv}");
    assert_eq!(csv.lines().count(), 8);
    // Without [[expected]] there is no such table.
    assert!(report::verdict::table(&r, &o, &[]).is_none());
}

#[test]
fn shared_seeds_are_compared_paired_others_with_welch() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture(tmp.path());
    let r = build(&dir);
    let o = Options { baseline: Some("ce".into()), ..Options::default() };
    let t = report::table::comparisons(&r, &o).unwrap();
    let header = &t.header;
    let unique: std::collections::BTreeSet<&String> = header.iter().collect();
    assert_eq!(unique.len(), header.len(), "duplicate column names: {header:?}");
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let row = |label: &str| t.rows.iter().find(|row| row[0].text.contains(label)).unwrap_or_else(|| panic!("no row {label}: {}", t.markdown()));
    // kd τ=4 against ce, seeds 0-2 on both sides: paired. scipy 1.17.1 ttest_rel([75, 76, 77.5],
    // [70, 72, 74]) = (9.44911182523068, p 0.01101528483845556, df 2).
    let kd = row("tau=4");
    assert_eq!(kd[col("test")].text, "paired t");
    assert_eq!(kd[col("n")].text, "3 pairs");
    assert_eq!((kd[col("t")].text.as_str(), kd[col("df")].text.as_str(), kd[col("p")].text.as_str()), ("9.45", "2.0", "0.0110"));
    assert_eq!(kd[col("Δ")].text, "+4.17*");
    assert_eq!(kd[col("Wilcoxon p")].text, "n/a (needs ≥6 pairs)");
    // dkd on seeds 10-12 shares none: Welch. scipy ttest_ind(..., equal_var=False) = (3.054236108907634,
    // p 0.04746357845155669, df 3.3688555347091933).
    let dkd = row("dkd");
    assert_eq!(dkd[col("test")].text, "Welch t");
    assert_eq!(dkd[col("n")].text, "3 vs 3");
    assert_eq!((dkd[col("t")].text.as_str(), dkd[col("df")].text.as_str(), dkd[col("p")].text.as_str()), ("3.05", "3.4", "0.0475"));
    assert_eq!(dkd[col("Wilcoxon p")].text, "n/a (unpaired)");
    // The same numbers as in the Welch row, paired, give a different (smaller) p: pairing is used.
    let p_paired = harness::report::stats::paired_t(&[75.0, 76.0, 77.5], &[70.0, 72.0, 74.0]).unwrap().p;
    assert!((p_paired - 0.01101528483845556).abs() < 1e-6);
}

#[test]
fn plots_are_svg_and_png_and_the_html_shows_the_svg() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture(tmp.path());
    let o = harness(&["report", dir.to_str().unwrap(), "--out", "reports", "--baseline", "ce"], tmp.path());
    assert!(o.status.success(), "{}", text(&o));
    let out = tmp.path().join("reports").join(SUITE);
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    let md = std::fs::read_to_string(out.join("index.md")).unwrap();
    for stem in ["curves_cnn_small_cnn_tiny", "accuracy_cnn_small_cnn_tiny", "reliability_cnn_small_cnn_tiny"] {
        let png = out.join("plots").join(format!("{stem}.png"));
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.width, 1100, "{stem}: drawn at the width the HTML shows it");
        let svg = std::fs::read_to_string(out.join("plots").join(format!("{stem}.svg"))).unwrap();
        assert!(svg.contains("<svg") && svg.contains("<text"), "{stem}.svg");
        assert!(html.contains(&format!("<img src=\"plots/{stem}.svg\"")), "index.html does not show {stem}.svg");
        assert!(html.contains(&format!("href=\"plots/{stem}.png\"")), "index.html does not link {stem}.png");
        assert!(md.contains(&format!("](plots/{stem}.png)")), "index.md does not show {stem}.png");
    }
    // Plots at full width, not thumbnails.
    assert!(html.contains("figure img{width:100%;max-width:1100px"), "{html}");
    assert!(html.contains("<h2>Against the baseline"));
}

/// Published accuracies of teachers read from checkpoints (the released-teacher suites): no run
/// trains them, so the verdict uses the accuracy their students measured (`teacher_top1`).
#[test]
fn checkpoint_teachers_get_verdicts_from_their_students() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    let tref = vec![TeacherRef::Checkpoint { path: "t.safetensors".into(), model: "cnn_small".into(), hash: "h".into() }];
    for seed in 0..2 {
        finished(&results, &spec("cnn_tiny", "kd", Some(4.0), seed, Role::Student, tref.clone()), 75.0);
    }
    let r = build(&results.join(SUITE));
    let o = Options::default();
    let exp = [expected(None, "cnn_small", "ce", 99.5, "last"), expected(None, "cnn_small", "ce", 97.0, "last"), expected(None, "resnet8", "ce", 60.0, "last")];
    let t = report::verdict::table(&r, &o, &exp).unwrap();
    let cells: Vec<(&str, &str, &str, &str)> = t.rows.iter().map(|row| (row[1].text.as_str(), row[5].text.as_str(), row[6].text.as_str(), row[9].text.as_str())).collect();
    assert_eq!(
        cells,
        [
            ("released checkpoint, measured by its students", "99.00", "n/a (one checkpoint)", "within ±1"),
            ("released checkpoint, measured by its students", "99.00", "n/a (one checkpoint)", "outside"),
            ("", "", "", "no such runs in the suite"),
        ],
        "{}",
        t.markdown()
    );
}
