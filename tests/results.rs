//! Results in one unit and verified when read: results written before schema 2 (fractions,
//! tests/fixtures/results-v1, made by harness a77196a) read in percent everywhere; damaged runs
//! are named by status, run, report and check, never counted, and retrained only after their
//! files are moved aside; `check` passes against a baseline of the same results; `plan` works
//! without the dataset.

mod common;

use std::path::{Path, PathBuf};

use common::{harness, text};
use harness::store::RunDir;
use harness::store::verify::{self, Health};
use serde_json::{Value, json};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/results-v1")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() { copy_dir(&src, &dst) } else { std::fs::copy(&src, &dst).map(|_| ()).unwrap() }
    }
}

/// The schema-1 fixture (suite files and results) copied into `to`.
fn old_results(to: &Path) {
    copy_dir(&fixture(), to);
}

fn read(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn write(p: &Path, v: &Value) {
    std::fs::write(p, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

/// The run directories of suite `v1` whose config matches `pred`, sorted by id.
fn runs_where(root: &Path, pred: impl Fn(&Value) -> bool) -> Vec<RunDir> {
    let mut v: Vec<RunDir> =
        std::fs::read_dir(root.join("results/v1/runs")).unwrap().map(|e| RunDir { path: e.unwrap().path() }).filter(|d| pred(&read(&d.config()))).collect();
    v.sort_by(|a, b| a.path.cmp(&b.path));
    v
}

fn method_is(m: &'static str) -> impl Fn(&Value) -> bool {
    move |c: &Value| c["method"] == m && c["role"] == "student"
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

#[test]
fn schema1_results_read_in_percent_everywhere() {
    let tmp = tempfile::tempdir().unwrap();
    old_results(tmp.path());
    let all = runs_where(tmp.path(), |_| true);
    assert_eq!(all.len(), 5, "1 teacher + 2 ce + 2 kd");
    for d in &all {
        let raw = read(&d.summary());
        assert!(raw.get("schema").is_none(), "the fixture is schema 1");
        let s = d.read_summary().unwrap();
        assert!(close(s.last_top1, 100.0 * raw["last_top1"].as_f64().unwrap()), "{} vs {raw}", s.last_top1);
        assert!(close(s.last_ece, 100.0 * raw["last_ece"].as_f64().unwrap()));
        let m = verify::metrics(d, s.epochs, true).unwrap();
        let t = m.0.iter().position(|h| h == "test_top1").unwrap();
        assert!(close(m.1.last().unwrap()[t].unwrap(), s.last_top1), "metrics.csv converted like summary.json");
    }
    let o = harness(&["status", "v1.toml", "--results", "results"], tmp.path());
    assert!(o.status.success() && text(&o).contains("v1: 5 done"), "{}", text(&o));
    // Report aggregates in percent, curves included.
    let (suite, records) = harness::report::load::from_dir(&tmp.path().join("results/v1")).unwrap();
    let r = harness::report::Report::build(&suite, records).unwrap();
    for g in &r.groups {
        let s = g.stats["last_top1"];
        assert!(s.n >= 1 && s.mean > 1.0 && s.mean <= 100.0, "{s:?}");
        let head = r.head(g);
        assert!(close(head.curve().last().unwrap().1, head.metric("last_top1").unwrap()));
    }
    // A student trained now reads its schema-1 teacher's accuracy in percent.
    let kd0 = runs_where(tmp.path(), |c| method_is("kd")(c) && c["seed"] == 0).remove(0);
    let teacher_id = read(&kd0.config())["teachers"][0]["id"].as_str().unwrap().to_string();
    let teacher_raw = read(&tmp.path().join("results/v1/runs").join(&teacher_id).join("summary.json"))["last_top1"].as_f64().unwrap();
    std::fs::remove_dir_all(&kd0.path).unwrap();
    let o = harness(&["run", "v1.toml", "--results", "results", "--devices", "cpu", "--threads", "1", "--only", "method=kd,seed=0"], tmp.path());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let s = read(&kd0.summary());
    assert_eq!(s["schema"], 2);
    assert!(close(s["teacher_top1"].as_f64().unwrap(), 100.0 * teacher_raw), "{s}");
    assert!(s["agreement"].as_f64().unwrap() > 1.0, "agreement in percent: {s}");
    assert_eq!(read(&kd0.env())["results_schema"], 2);
    let m = verify::metrics(&kd0, 2, true).unwrap();
    assert!(m.1.iter().all(|r| r[m.0.iter().position(|h| h == "test_top1").unwrap()].unwrap() > 1.0));
    let o = harness(&["status", "v1.toml", "--results", "results"], tmp.path());
    assert!(text(&o).contains("v1: 5 done"), "{}", text(&o));
}

#[test]
fn schema1_partial_run_resumes_in_percent() {
    let tmp = tempfile::tempdir().unwrap();
    old_results(tmp.path());
    let runs = tmp.path().join("results/v1_partial/runs");
    let dir = RunDir { path: std::fs::read_dir(&runs).unwrap().next().unwrap().unwrap().path() };
    let old: Vec<String> = std::fs::read_to_string(dir.metrics()).unwrap().lines().map(str::to_string).collect();
    assert_eq!(old.len(), 2, "header + epoch 1 of 3");
    let col = old[0].split(',').position(|h| h == "test_top1").unwrap();
    let old_top1: f64 = old[1].split(',').nth(col).unwrap().parse().unwrap();
    assert!(old_top1 <= 1.0, "a fraction");
    let o = harness(&["run", "v1_partial.toml", "--results", "results", "--devices", "cpu", "--threads", "1"], tmp.path());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(std::fs::read_to_string(dir.log()).unwrap().contains("resuming"), "it resumed rather than restarted");
    let (h, rows) = verify::metrics(&dir, 3, true).unwrap();
    let t = h.iter().position(|c| c == "test_top1").unwrap();
    assert!(close(rows[0][t].unwrap(), 100.0 * old_top1), "epoch 1 converted: {:?}", rows[0]);
    assert!(rows.iter().all(|r| r[t].unwrap() > 1.0), "one unit in the whole file: {rows:?}");
}

/// A valid resume state of a 2-epoch run after epoch 1.
fn resume_state(id: &str) -> Value {
    json!({"id": id, "epoch": 1, "file": "resume-e1.safetensors", "header": ["epoch", "lr", "test_top1"], "rows": [["1", "0.05", "50"]],
           "best_top1": 0.5, "best_epoch": 1, "last": [1.0, 0.5, 0.9, 0.1], "agreement": null, "pred_kl": null,
           "train_time": 1.0, "images": 100, "elapsed": 1.0})
}

#[test]
fn every_planted_damage_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    old_results(tmp.path());
    let kd = runs_where(tmp.path(), method_is("kd"));
    let ce = runs_where(tmp.path(), method_is("ce"));
    let spec = kd[0].read_spec().unwrap();
    assert!(matches!(verify::check(&kd[0], &spec), Health::Finished(_)), "the pristine run verifies");
    type Plant = Box<dyn Fn(&RunDir)>;
    let edit_summary = |f: fn(&mut Value)| -> Plant {
        Box::new(move |d: &RunDir| {
            let mut v = read(&d.summary());
            f(&mut v);
            write(&d.summary(), &v);
        })
    };
    let edit_metrics = |f: fn(Vec<String>) -> Vec<String>| -> Plant {
        Box::new(move |d: &RunDir| {
            let lines = std::fs::read_to_string(d.metrics()).unwrap().lines().map(str::to_string).collect();
            std::fs::write(d.metrics(), f(lines).join("\n") + "\n").unwrap();
        })
    };
    let other_config = ce[0].config();
    let id = spec.id.clone();
    let unfinished = move |f: fn(&mut Value)| -> Plant {
        let id = id.clone();
        Box::new(move |d: &RunDir| {
            std::fs::remove_file(d.summary()).unwrap();
            let mut v = resume_state(&id);
            f(&mut v);
            write(&d.path.join("resume.json"), &v);
        })
    };
    let cases: Vec<(&str, Plant, &str, &str)> = vec![
        (
            "truncated summary",
            Box::new(|d: &RunDir| {
                let t = std::fs::read_to_string(d.summary()).unwrap();
                std::fs::write(d.summary(), &t[..t.len() / 2]).unwrap();
            }),
            "summary.json",
            "not valid JSON",
        ),
        ("empty summary", Box::new(|d: &RunDir| std::fs::write(d.summary(), "").unwrap()), "summary.json", "empty file"),
        ("wrong type", edit_summary(|v| v["last_top1"] = json!("high")), "summary.json", "not a run summary"),
        ("percent in schema 1", edit_summary(|v| v["last_top1"] = json!(7.5)), "summary.json", "`last_top1` = 7.5 is outside [0, 1]"),
        (
            "over 100 in schema 2",
            edit_summary(|v| {
                v["schema"] = json!(2);
                v["last_top1"] = json!(750.0);
            }),
            "summary.json",
            "`last_top1` = 750 is outside [0, 100]",
        ),
        ("newer schema", edit_summary(|v| v["schema"] = json!(3)), "summary.json", "`schema` 3"),
        ("best below last", edit_summary(|v| v["best_top1"] = json!(0.0)), "summary.json", "must be >= last_top1"),
        ("best epoch after the end", edit_summary(|v| v["best_epoch"] = json!(5)), "summary.json", "best_epoch 5 of epochs 2"),
        ("epochs of another config", edit_summary(|v| v["epochs"] = json!(3)), "summary.json", "`epochs` 3 but the run's config trains 2"),
        ("id of another run", edit_summary(|v| v["id"] = json!("0123456789abcdef")), "summary.json", "is not this run"),
        ("config of another run", Box::new(move |d: &RunDir| std::fs::copy(&other_config, d.config()).map(|_| ()).unwrap()), "config.json", "belongs to run"),
        (
            "metrics row duplicated",
            edit_metrics(|mut l| {
                l.insert(2, l[1].clone());
                l.truncate(3);
                l
            }),
            "metrics.csv",
            "line 3 is epoch Some(1.0), expected epoch 2",
        ),
        ("metrics row missing", edit_metrics(|l| l[..2].to_vec()), "metrics.csv", "1 epoch rows, but the run trains 2"),
        (
            "percent in schema-1 metrics",
            edit_metrics(|mut l| {
                let col = l[0].split(',').position(|h| h == "test_top1").unwrap();
                let mut cells: Vec<String> = l[1].split(',').map(str::to_string).collect();
                cells[col] = "95".into();
                l[1] = cells.join(",");
                l
            }),
            "metrics.csv",
            "column `test_top1` = 95 is outside [0, 1]",
        ),
        ("resume at epoch 99 of 2", unfinished(|v| v["epoch"] = json!(99)), "resume.json", "`epoch` 99: expected 1 to 1"),
        ("resume at epoch 0", unfinished(|v| v["epoch"] = json!(0)), "resume.json", "`epoch` 0"),
        (
            "resume rows duplicated",
            unfinished(|v| v["rows"] = json!([["1", "0.05", "50"], ["1", "0.05", "50"]])),
            "resume.json",
            "`rows` must hold epochs 1 to 1",
        ),
        ("resume of another run", unfinished(|v| v["id"] = json!("0123456789abcdef")), "resume.json", "is not this run"),
    ];
    for (i, (name, plant, file, reason)) in cases.into_iter().enumerate() {
        let d = RunDir { path: tmp.path().join(format!("case{i}")).join(&spec.id) };
        copy_dir(&kd[0].path, &d.path);
        plant(&d);
        match verify::check(&d, &spec) {
            Health::Damaged(dmg) => {
                assert!(dmg.file.ends_with(file) && dmg.reason.contains(reason), "{name}: {dmg}");
            }
            other => panic!("{name}: not flagged: {other:?}"),
        }
    }
    // The valid resume state is accepted (the checks above fail on the defect, not on the state).
    let d = RunDir { path: tmp.path().join("ok").join(&spec.id) };
    copy_dir(&kd[0].path, &d.path);
    std::fs::remove_file(d.summary()).unwrap();
    write(&d.path.join("resume.json"), &resume_state(&spec.id));
    assert!(matches!(verify::check(&d, &spec), Health::Unfinished { epoch: Some(1) }));
}

#[test]
fn damaged_runs_are_reported_never_counted_and_retrained_after_moving_aside() {
    let tmp = tempfile::tempdir().unwrap();
    old_results(tmp.path());
    let p = tmp.path();
    assert!(harness(&["baseline", "results/v1", "--out", "clean.toml"], p).status.success());
    let kd = runs_where(p, method_is("kd"));
    let ce = runs_where(p, method_is("ce"));
    // An impossible accuracy (7.5 as a fraction = 750 %) and another run's config.
    let mut s = read(&kd[1].summary());
    s["last_top1"] = json!(7.5);
    write(&kd[1].summary(), &s);
    std::fs::copy(ce[1].config(), ce[0].config()).unwrap();
    let (bad_kd, bad_ce) = (kd[1].path.file_name().unwrap().to_str().unwrap(), ce[0].path.file_name().unwrap().to_str().unwrap());

    let o = harness(&["status", "v1.toml", "--results", "results"], p);
    let t = text(&o);
    assert!(t.contains("3 done") && t.contains("2 damaged"), "{t}");
    let line = |id: &str| t.lines().find(|l| l.starts_with(id)).unwrap_or_default().to_string();
    assert!(line(bad_kd).contains("damaged") && line(bad_kd).contains("summary.json") && line(bad_kd).contains("7.5"), "{t}");
    assert!(line(bad_ce).contains("config.json") && line(bad_ce).contains("belongs to run"), "{t}");

    // The report lists them and aggregates only the rest: no 750 anywhere.
    let o = harness(&["report", "v1.toml", "--results", "results", "--out", "reports", "--no-plots"], p);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("warning: damaged run"), "{}", text(&o));
    let index = std::fs::read_to_string(p.join("reports/v1/index.md")).unwrap();
    assert!(index.contains("Damaged runs (2)") && index.contains(bad_kd) && index.contains(bad_ce), "{index}");
    let mut tables = String::new();
    for e in std::fs::read_dir(p.join("reports/v1/tables")).unwrap() {
        let t = std::fs::read_to_string(e.unwrap().path()).unwrap();
        assert!(!t.contains("750"), "{t}");
        tables.push_str(&t);
    }
    // ...and the tables say how many runs of a cell were left out as damaged.
    assert!(tables.contains("[1 damaged]"), "{tables}");
    let groups = std::fs::read_to_string(p.join("reports/v1/tables/groups.csv")).unwrap();
    assert!(groups.lines().next().unwrap().contains("damaged"), "{groups}");
    // From the results folder the foreign config cannot say which run it is: listed apart.
    let o = harness(&["report", "results/v1", "--out", "reports2", "--no-plots"], p);
    assert!(o.status.success(), "{}", text(&o));
    let index = std::fs::read_to_string(p.join("reports2/v1/index.md")).unwrap();
    assert!(index.contains("(unknown run)") && index.contains(bad_ce) && index.contains(bad_kd), "{index}");

    // check fails naming them; baseline refuses to freeze their absence.
    let o = harness(&["check", "v1.toml", "--results", "results", "--baseline", "clean.toml"], p);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("damaged") && text(&o).contains("7.5"), "{}", text(&o));
    let o = harness(&["baseline", "v1.toml", "--results", "results", "--out", "b.toml"], p);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("2 damaged run(s)") && !p.join("b.toml").exists(), "{}", text(&o));

    // run trains nothing until told to move them aside; then they are kept and retrained.
    let o = harness(&["run", "v1.toml", "--results", "results", "--devices", "cpu", "--threads", "1"], p);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--retrain-damaged") && text(&o).contains(bad_kd), "{}", text(&o));
    assert_eq!(read(&kd[1].summary())["last_top1"], 7.5, "nothing touched");
    let o = harness(&["run", "v1.toml", "--results", "results", "--devices", "cpu", "--threads", "1", "--retrain-damaged"], p);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("moved the files of damaged run"), "{}", text(&o));
    let aside = |d: &RunDir| {
        std::fs::read_dir(&d.path).unwrap().map(|e| e.unwrap().path()).find(|p| p.file_name().unwrap().to_string_lossy().starts_with("damaged-")).unwrap()
    };
    assert_eq!(read(&aside(&kd[1]).join("summary.json"))["last_top1"], 7.5, "kept, not deleted");
    assert!(aside(&ce[0]).join("config.json").is_file());
    assert_eq!(read(&kd[1].summary())["schema"], 2);
    let o = harness(&["status", "v1.toml", "--results", "results"], p);
    assert!(text(&o).contains("v1: 5 done"), "{}", text(&o));
}

#[test]
fn check_passes_on_its_own_baseline_and_fails_on_a_planted_drop() {
    let tmp = tempfile::tempdir().unwrap();
    old_results(tmp.path());
    let p = tmp.path();
    let check = |extra: &[&str]| {
        let mut args = vec!["check", "results/v1", "--baseline", "b.toml"];
        args.extend_from_slice(extra);
        harness(&args, p)
    };
    let o = harness(&["baseline", "results/v1", "--out", "b.toml"], p);
    assert!(o.status.success(), "{}", text(&o));
    // The single-seed teacher is a warning, not a failure: the gate passes on itself.
    let o = check(&[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("1 with too few seeds"), "{}", text(&o));
    assert_eq!(check(&["--strict"]).status.code(), Some(1));
    // Fewer seeds than --min-seeds: compared within the absolute tolerance, a warning...
    let o = check(&["--min-seeds", "3"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("fewseeds") && text(&o).contains("--strict makes them fail"), "{}", text(&o));
    // ...that fails under --strict.
    assert_eq!(check(&["--min-seeds", "3", "--strict"]).status.code(), Some(1));
    // A planted drop (every kd seed to 0 % top-1) fails both ways.
    for d in runs_where(p, method_is("kd")) {
        let mut s = d.read_summary().unwrap();
        s.last_top1 = 0.0;
        d.write_summary(&s).unwrap();
    }
    for extra in [&[][..], &["--min-seeds", "3"][..]] {
        let o = check(extra);
        assert_eq!(o.status.code(), Some(1), "{extra:?}: {}", text(&o));
        assert!(text(&o).contains("regressed"), "{}", text(&o));
    }
    // A baseline without groups checks nothing: refused.
    std::fs::write(p.join("b.toml"), "suite = \"v1\"\nmetric = \"last\"\ncreated = \"x\"\ncommit = \"y\"\n").unwrap();
    let o = check(&[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no [[group]]"), "{}", text(&o));
}

#[test]
fn plan_shows_runs_without_the_data_and_run_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path();
    let empty = p.join("no-data");
    std::fs::create_dir(&empty).unwrap();
    let suites = Path::new(env!("CARGO_MANIFEST_DIR")).join("../suites");
    let cifar = suites.join("cifar100.toml");
    let o = harness(&["plan", cifar.to_str().unwrap(), "--data-dir", empty.to_str().unwrap()], p);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("waiting for data") && t.contains(empty.to_str().unwrap()) && t.contains("torchvision.datasets.CIFAR100"), "{t}");
    assert!(t.lines().filter(|l| l.starts_with('~') && l.contains("no data")).count() > 10, "{t}");
    let o = harness(&["run", cifar.to_str().unwrap(), "--data-dir", empty.to_str().unwrap(), "--results", "r"], p);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no CIFAR-100 data found") && text(&o).contains("to get it"), "{}", text(&o));
    // Data that is there but broken is an error, not a wait.
    std::fs::create_dir(empty.join("cifar-100-python")).unwrap();
    std::fs::write(empty.join("cifar-100-python/train"), b"junk").unwrap();
    let o = harness(&["plan", cifar.to_str().unwrap(), "--data-dir", empty.to_str().unwrap()], p);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    std::fs::remove_dir_all(empty.join("cifar-100-python")).unwrap();
    // The other downloadable datasets too (the digits suites have their data embedded).
    for (suite, how) in [("tiny_imagenet.toml", "tiny-imagenet-200.zip"), ("imagenet.toml", "image-net.org")] {
        let o = harness(&["plan", suites.join(suite).to_str().unwrap(), "--data-dir", empty.to_str().unwrap()], p);
        assert_eq!(o.status.code(), Some(0), "{suite}: {}", text(&o));
        assert!(text(&o).contains("waiting for data") && text(&o).contains(how), "{suite}: {}", text(&o));
    }
}

#[test]
fn a_damaged_resume_state_never_ends_a_run_early() {
    let tmp = tempfile::tempdir().unwrap();
    old_results(tmp.path());
    let runs = tmp.path().join("results/v1_partial/runs");
    let dir = RunDir { path: std::fs::read_dir(&runs).unwrap().next().unwrap().unwrap().path() };
    let mut st = read(&dir.path.join("resume.json"));
    st["epoch"] = json!(99);
    write(&dir.path.join("resume.json"), &st);
    let o = harness(&["run", "v1_partial.toml", "--results", "results", "--devices", "cpu", "--threads", "1"], tmp.path());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("resume.json") && text(&o).contains("`epoch` 99: expected 1 to 2"), "{}", text(&o));
    // The child on its own (as a Slurm task would run it) refuses the state and trains all 3 epochs.
    let o = harness(&["exec", dir.path.to_str().unwrap(), "--data-dir", "data", "--device", "cpu", "--threads", "1"], tmp.path());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(std::fs::read_to_string(dir.log()).unwrap().contains("ignoring unusable resume state"));
    let s = dir.read_summary().unwrap();
    assert_eq!((s.epochs, verify::metrics(&dir, 3, true).unwrap().1.len()), (3, 3));
}
