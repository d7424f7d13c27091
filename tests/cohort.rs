//! Cohorts through the binary: runs that share a data stream and their teacher's forward passes
//! train in one child process, and every member's results are bit-identical (CPU, fp32) to the
//! same run trained alone: metrics.csv (times aside), summary, run ids and files. Resume works
//! across the two modes, and one member's failure does not end the others.

mod common;
use common::*;
use std::path::Path;

/// A cnn_tiny teacher, two teacher-free runs (ce, DML with an online peer) and three students of
/// the teacher (kd, dkd, crd with its random negatives): two cohorts of three under `--cohort 8`.
const SUITE: &str = r#"
[suite]
name = "c"
dataset = "digits"
seeds = [0]

[train]
epochs = 3
batch_size = 128
milestones = [2]

[teachers.t]
model = "cnn_tiny"

[methods.crd]
nce_k = 64

[grid]
pair = [
  { teacher = "t", student = "mlp", method = "ce" },
  { teacher = "t", student = "mlp", method = "kd" },
  { teacher = "t", student = "cnn_tiny", method = "dkd" },
  { teacher = "t", student = "cnn_tiny", method = "crd" },
  { student = "mlp", method = "dml", peers = ["mlp"] },
]
"#;

fn write(dir: &Path, body: &str) -> String {
    let p = dir.join("c.toml");
    std::fs::write(&p, body).unwrap();
    p.to_str().unwrap().to_string()
}

fn summary(p: &Path) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p.join("summary.json")).unwrap()).unwrap();
    for k in ["wall_time_s", "images_per_s", "finished_unix"] {
        v.as_object_mut().unwrap().remove(k);
    }
    v
}

fn files(p: &Path) -> Vec<String> {
    let mut f: Vec<String> = std::fs::read_dir(p).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    f.sort();
    f
}

/// Every run of `a` equals the same run of `b` (`runs` of them).
fn assert_same_results(root: &Path, a: &str, b: &str, runs_expected: usize) {
    let runs = root.join(a).join("c/runs");
    let mut n = 0;
    for e in std::fs::read_dir(&runs).unwrap() {
        let id = e.unwrap().file_name();
        let (ra, rb) = (runs.join(&id), root.join(b).join("c/runs").join(&id));
        assert_eq!(files(&ra), files(&rb), "{id:?}: the same files");
        assert_eq!(metrics_without_timing(&ra.join("metrics.csv")), metrics_without_timing(&rb.join("metrics.csv")), "{id:?}: metrics.csv");
        assert_eq!(summary(&ra), summary(&rb), "{id:?}: summary.json");
        n += 1;
    }
    assert_eq!(n, runs_expected, "every run compared");
}

/// The mdistiller table's row (ce, kd, dkd, dist, nkd) over two seeds: per seed one teacher,
/// then its five students as one cohort; every run equals the run trained alone.
#[test]
fn the_mdistiller_row_over_two_seeds_equals_it_trained_alone() {
    let dir = tempfile::tempdir().unwrap();
    let body = SUITE.replace("seeds = [0]", "seeds = [0, 1]").replace("epochs = 3", "epochs = 2").split("[grid]").next().unwrap().to_string()
        + "[grid]\npair = [{ teacher = \"t\", student = \"mlp\" }]\nmethod = [\"ce\", \"kd\", \"dkd\", \"dist\", \"nkd\"]\n";
    let s = write(dir.path(), &body);
    let alone = harness(&["run", &s, "--results", "alone", "--devices", "cpu", "--threads", "1", "--no-cohort"], dir.path());
    assert!(alone.status.success(), "{}", text(&alone));
    let together = harness(&["run", &s, "--results", "together", "--devices", "cpu", "--threads", "1", "--cohort", "8"], dir.path());
    let t = text(&together);
    assert!(together.status.success(), "{t}");
    // No student of the teacher trains alone.
    let starts: Vec<&str> = t.lines().filter(|l| l.starts_with("start") && l.contains("<- cnn_tiny")).collect();
    assert_eq!(starts.len(), 8, "{t}");
    assert!(starts.iter().all(|l| l.contains("[cohort of")), "{t}");
    assert_same_results(dir.path(), "alone", "together", 11); // one teacher (its seed is its own), ten students
}

#[test]
fn cohort_members_equal_their_runs_trained_alone() {
    let dir = tempfile::tempdir().unwrap();
    let s = write(dir.path(), SUITE);
    let alone = harness(&["run", &s, "--results", "alone", "--devices", "cpu", "--threads", "1", "--no-cohort"], dir.path());
    assert!(alone.status.success(), "{}", text(&alone));
    assert!(!text(&alone).contains("cohort of"), "{}", text(&alone));
    let together = harness(&["run", &s, "--results", "together", "--devices", "cpu", "--threads", "1", "--cohort", "8"], dir.path());
    let t = text(&together);
    assert!(together.status.success(), "{t}");
    // The teacher trains beside the teacher-free runs (ce, DML); then its three students together.
    assert_eq!(t.matches("[cohort of 3 with").count(), 6, "two children of three runs:\n{t}");
    assert_same_results(dir.path(), "alone", "together", 6);
    // The cohort is recorded where each run trained.
    let env = std::fs::read_to_string(dir.path().join("together/c/runs").join(&ids(dir.path(), &s)[1].0).join("env.json")).unwrap();
    assert!(env.contains("\"cohort\""), "{env}");
}

#[test]
fn a_failing_member_leaves_the_cohort_and_the_others_finish_and_resume_across_modes() {
    let dir = tempfile::tempdir().unwrap();
    let s = write(dir.path(), SUITE);
    let runs = ids(dir.path(), &s);
    let kd = runs.iter().find(|r| r.2 == "kd").unwrap().0.clone();
    // kd panics after epoch 2 (its resume state for epoch 2 is written); the other four finish.
    let o = harness_cmd(&["run", &s, "--results", "r", "--devices", "cpu", "--threads", "1", "--cohort", "8"], dir.path())
        .env("KD_HARNESS_FAULT", format!("panic:{kd}:2"))
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains(&format!("FAIL  {kd}")) && t.contains("injected fault"), "{t}");
    assert!(t.contains("5 finished now, 0 cached, 1 failed"), "{t}");
    let st = text(&harness(&["status", &s, "--results", "r"], dir.path()));
    assert!(st.contains("failed") && st.contains("5 done"), "{st}");
    // Resumed alone, it ends where an uninterrupted run ends.
    let o = harness(&["run", &s, "--results", "r", "--devices", "cpu", "--threads", "1", "--no-cohort"], dir.path());
    assert!(o.status.success() && text(&o).contains("1 finished now, 5 cached"), "{}", text(&o));
    let log = std::fs::read_to_string(dir.path().join("r/c/runs").join(&kd).join("log.txt")).unwrap();
    assert!(log.contains("resuming run") && log.contains("after epoch 2"), "{log}");
    let o = harness(&["run", &s, "--results", "ref", "--devices", "cpu", "--threads", "1", "--no-cohort"], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    assert_same_results(dir.path(), "r", "ref", 6);
}

#[test]
fn runs_that_cannot_share_train_alone_and_exec_refuses_a_mixed_cohort() {
    let dir = tempfile::tempdir().unwrap();
    // mixup and another seed change the stream: three runs, three children.
    let body = "[suite]\nname = \"c\"\ndataset = \"digits\"\n[train]\nepochs = 1\nbatch_size = 128\nmilestones = []\n[grid]\npair = [\n\
        { student = \"mlp\", method = \"ce\", seed = 0 },\n\
        { student = \"mlp\", method = \"ce\", seed = 0, \"train.mixup_alpha\" = 0.2 },\n\
        { student = \"mlp\", method = \"ce\", seed = 1 },\n]\n";
    let s = write(dir.path(), body);
    let o = harness(&["plan", &s], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let o = harness(&["run", &s, "--results", "r", "--devices", "cpu", "--cohort", "8"], dir.path());
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(!t.contains("cohort of"), "nothing could share:\n{t}");
    // `harness exec` with runs of different seeds is bad input (exit 2), and trains nothing.
    let runs: Vec<String> = ids(dir.path(), &s).into_iter().map(|r| r.0).collect();
    assert_eq!(runs.len(), 3);
    let dirs: Vec<String> = runs.iter().map(|id| dir.path().join("r/c/runs").join(id).to_string_lossy().into_owned()).collect();
    for d in &dirs {
        std::fs::remove_file(Path::new(d).join("summary.json")).unwrap();
    }
    let mut args = vec!["exec"];
    args.extend(dirs.iter().map(String::as_str));
    args.extend(["--data-dir", ".", "--device", "cpu"]);
    let o = harness(&args, dir.path());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("cannot train in one cohort"), "{}", text(&o));
}
