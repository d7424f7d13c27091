//! The teacher gate: a teacher outside its `[[expected]]` accuracy skips its students with both
//! numbers, `--force` trains them; the measurement is recorded once with the checkpoint's hash
//! and shown by `plan` and `status`.

mod common;

use common::*;
use std::path::Path;

/// A digits suite distilling into an mlp from `teacher` (TOML of `[teachers.t]`), expecting
/// `expected` % for the teacher model, with `tolerance`.
fn suite(dir: &Path, teacher: &str, expected: f64, tolerance: f64) {
    let body = format!(
        r#"
[suite]
name = "g"
dataset = "digits"
seeds = [0]

[train]
epochs = 1
batch_size = 128
milestones = []

[teachers.t]
{teacher}

[grid]
pair = [{{ teacher = "t", student = "mlp" }}]
method = ["kd"]

[[expected]]
student = "cnn_tiny"
method = "ce"
top1 = {expected}
metric = "last"
source = "a test"

[report]
expected_tolerance = {tolerance}
"#
    );
    std::fs::write(dir.join("g.toml"), body).unwrap();
}

/// A fresh (untrained) cnn_tiny for the digits: about chance, far below any published value.
fn untrained_teacher(path: &Path) {
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let _m = (harness::models::find("cnn_tiny").unwrap().build)(&vs.root(), harness::models::ModelCfg { in_channels: 1, num_classes: 10 });
    harness::models::checkpoint::save_atomic(&vs, path).unwrap();
}

fn student_finished(dir: &Path) -> bool {
    let runs = dir.join("results/g/runs");
    std::fs::read_dir(&runs).map(|d| d.filter_map(Result::ok).any(|e| e.path().join("summary.json").is_file())).unwrap_or(false)
}

fn records(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_dir(dir.join("results/g/teachers"))
        .map(|d| d.filter_map(Result::ok).map(|e| serde_json::from_str(&std::fs::read_to_string(e.path()).unwrap()).unwrap()).collect())
        .unwrap_or_default()
}

#[test]
fn a_checkpoint_teacher_below_its_expected_accuracy_skips_its_students_until_forced() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    untrained_teacher(&d.join("t.safetensors"));
    suite(d, r#"model = "cnn_tiny"
checkpoint = "t.safetensors""#, 95.0, 1.0);
    let o = harness(&["plan", "g.toml"], d);
    assert!(o.status.success() && text(&o).contains("teacher gate: cnn_tiny (") && text(&o).contains("not measured yet") && text(&o).contains("expected 95.00 ± 1"), "{}", text(&o));

    let o = harness(&["run", "g.toml", "--quiet"], d);
    assert_eq!(o.status.code(), Some(1), "a skipped run is not a success: {}", text(&o));
    let recs = records(d);
    assert_eq!(recs.len(), 1, "measured once");
    let top1 = recs[0]["top1"].as_f64().unwrap();
    assert!((0.0..50.0).contains(&top1), "an untrained teacher: {top1}");
    let hash = blake3::hash(&std::fs::read(d.join("t.safetensors")).unwrap()).to_hex().to_string();
    assert_eq!(recs[0]["hash"], hash.as_str(), "recorded with the checkpoint's hash");
    assert_eq!(recs[0]["outside"], true);
    let reason = format!("teacher cnn_tiny (t.safetensors) tests {top1:.2}% top-1, expected 95.00 ± 1");
    assert!(text(&o).contains(&reason), "the skip names both numbers: {}", text(&o));
    assert!(!student_finished(d), "the student did not train");

    let o = harness(&["status", "g.toml"], d);
    assert!(text(&o).contains("skipped") && text(&o).contains(&reason), "{}", text(&o));
    let o = harness(&["plan", "g.toml"], d);
    assert!(text(&o).contains(&format!("tests {top1:.2}% top-1 on digits; expected 95.00 ± 1: OUTSIDE")) && text(&o).contains(&hash[..12]), "{}", text(&o));

    let o = harness(&["run", "g.toml", "--quiet", "--force"], d);
    assert!(o.status.success(), "{}", text(&o));
    assert!(student_finished(d), "--force trains the student");
    assert_eq!(records(d)[0]["measured_utc"], recs[0]["measured_utc"], "the measurement is reused, not repeated");
    // The report lists the teacher with its accuracy and hash.
    let o = harness(&["report", "g.toml"], d);
    assert!(o.status.success(), "{}", text(&o));
    let index = std::fs::read_to_string(d.join("reports/g/index.md")).unwrap();
    let teachers = index.split("## Teachers").nth(1).unwrap_or_else(|| panic!("no Teachers section: {index}"));
    assert!(teachers.contains(&hash[..12]) && teachers.contains(&format!("{top1:.2}%")) && teachers.contains("OUTSIDE"), "{index}");
}

#[test]
fn a_teacher_inside_the_tolerance_or_without_a_published_value_passes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    untrained_teacher(&d.join("t.safetensors"));
    // Any accuracy is within 100 points of 50.
    suite(d, r#"model = "cnn_tiny"
checkpoint = "t.safetensors""#, 50.0, 100.0);
    let o = harness(&["run", "g.toml", "--quiet"], d);
    assert!(o.status.success() && student_finished(d), "{}", text(&o));
    assert!(text(&o).contains("expected 50.00 ± 100: ok"), "{}", text(&o));
    assert_eq!(records(d)[0]["outside"], false);
}

#[test]
fn a_trained_teacher_is_gated_when_it_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // One epoch of cnn_tiny on the digits is far from 99.9 %.
    suite(d, r#"model = "cnn_tiny""#, 99.9, 0.05);
    let o = harness(&["run", "g.toml", "--quiet"], d);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("expected 99.90 ± 0.05 ([[expected]])"), "{}", text(&o));
    let recs = records(d);
    assert_eq!(recs.len(), 1);
    assert!(recs[0]["source"].as_str().unwrap().starts_with("run "), "{recs:?}");
    let runs: Vec<_> = std::fs::read_dir(d.join("results/g/runs")).unwrap().filter_map(Result::ok).filter(|e| e.path().join("summary.json").is_file()).collect();
    assert_eq!(runs.len(), 1, "only the teacher trained");
    let o = harness(&["run", "g.toml", "--quiet", "--force"], d);
    assert!(o.status.success(), "{}", text(&o));
}
