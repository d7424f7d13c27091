//! Scheduler tests through the binary: DAG order, failure isolation (panic, divergence), retries,
//! kill -9 of the whole suite then resume with identical metrics, concurrent `harness run`s,
//! `--only`, `--dry-run`, `status`, and device selection on a CPU-only machine.

mod common;
use common::*;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use harness::sched::{Devices, Slot, slots};

fn write_suite(dir: &Path, body: &str) -> String {
    let p = dir.join("s.toml");
    std::fs::write(&p, body).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn slots_cover_devices() {
    assert_eq!(slots(&Devices::Cpu, 4, 3).len(), 3);
    let s = slots(&Devices::Gpus(vec![0, 2]), 2, 9);
    assert_eq!(s, vec![Slot { gpu: Some(0) }, Slot { gpu: Some(0) }, Slot { gpu: Some(2) }, Slot { gpu: Some(2) }]);
    if !tch::Cuda::is_available() {
        assert_eq!(harness::sched::parse_devices("auto").unwrap(), Devices::Cpu);
        let e = harness::sched::parse_devices("cuda:0").err().unwrap();
        assert!(harness::error::is_input_error(&e) && format!("{e}").contains("cuda:0"), "{e}");
    }
    assert!(harness::sched::parse_devices("tpu:0").is_err());
}

#[test]
fn dag_order_only_dry_run_and_bad_devices() {
    let dir = tempfile::tempdir().unwrap();
    let s = write_suite(dir.path(), TINY_KD_SUITE);
    let o = harness(&["run", &s, "--only", "method=kd", "--dry-run"], dir.path());
    let t = text(&o);
    assert!(o.status.success() && t.contains("2 runs (1 teachers, 1 students)") && t.matches("would run").count() == 2, "{t}");
    assert!(t.contains("mlp kd") && !t.contains("mlp ce"), "{t}");
    let o = harness(&["run", &s, "--only", "colour=red"], dir.path());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    if !tch::Cuda::is_available() {
        let o = harness(&["run", &s, "--devices", "cuda:0"], dir.path());
        assert_eq!(o.status.code(), Some(2));
        assert!(text(&o).contains("CUDA is not available"), "{}", text(&o));
    }
    let o = harness(&["run", &s, "--results", "r", "--devices", "cpu", "--jobs", "2"], dir.path());
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let runs = ids(dir.path(), &s);
    let teacher = &runs.iter().find(|r| r.1 == "teacher").unwrap().0;
    let kd = &runs.iter().find(|r| r.2 == "kd").unwrap().0;
    let done_t = t.find(&format!("done  {teacher}")).unwrap();
    let start_kd = t.find(&format!("start {kd}")).unwrap();
    assert!(done_t < start_kd, "the kd student started before its teacher finished:\n{t}");
    let o = harness(&["status", &s, "--results", "r"], dir.path());
    assert!(text(&o).contains("s: 3 done"), "{}", text(&o));
}

#[test]
fn a_panicking_run_is_isolated_retried_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let s = write_suite(dir.path(), TINY_KD_SUITE);
    let runs = ids(dir.path(), &s);
    let teacher = runs.iter().find(|r| r.1 == "teacher").unwrap().0.clone();
    // A panic in the teacher's last epoch (after which no resume state is written): the retry
    // resumes from epoch 2 and panics again, so the teacher fails and its student is skipped.
    let o = harness_cmd(&["run", &s, "--results", "r", "--devices", "cpu", "--retries", "1"], dir.path())
        .env("KD_HARNESS_FAULT", format!("panic:{teacher}:3"))
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains(&format!("retry {teacher}")) && t.contains("injected fault") && t.contains("(attempt 2)"), "{t}");
    assert!(t.contains("1 finished now, 0 cached, 1 failed, 1 skipped"), "{t}");
    let o = harness(&["status", &s, "--results", "r"], dir.path());
    let st = text(&o);
    assert!(st.contains("failed") && st.contains("injected fault") && st.contains("skipped") && st.contains("1 done"), "{st}");
    // Without the fault a plain re-run resumes the teacher at its last epoch and finishes the student.
    let o = harness(&["run", &s, "--results", "r", "--devices", "cpu"], dir.path());
    assert!(o.status.success() && text(&o).contains("2 finished now, 1 cached"), "{}", text(&o));
    let log = std::fs::read_to_string(dir.path().join("r/s/runs").join(&teacher).join("log.txt")).unwrap();
    assert!(log.contains("resuming run") && log.contains("after epoch 2"), "{log}");
    assert!(!dir.path().join("r/s/runs").join(&teacher).join("status.json").exists());
}

#[test]
fn a_diverging_run_is_marked_diverged_with_its_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let s = write_suite(dir.path(), &TINY_KD_SUITE.replace("model = \"cnn_tiny\"", "model = \"cnn_tiny\"\ntrain = { lr = 1e30 }"));
    let o = harness(&["run", &s, "--results", "r", "--devices", "cpu", "--retries", "2"], dir.path());
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("DIVERGED") && !t.contains("retry"), "diverged runs are not retried:\n{t}");
    let o = harness(&["status", &s, "--results", "r"], dir.path());
    assert!(text(&o).contains("diverged") && text(&o).contains("at epoch 1"), "{}", text(&o));
    // The report shows the diverged run (and its skipped students) instead of dropping them.
    let o = harness(&["report", &s, "--results", "r", "--out", "reports"], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let status = std::fs::read_to_string(dir.path().join("reports/s/tables/status.md")).unwrap();
    assert!(status.contains("| diverged |") && status.contains("at epoch 1"), "{status}");
    let main = std::fs::read_to_string(dir.path().join("reports/s/tables/main.md")).unwrap();
    assert!(main.contains("pending") || main.contains("failed"), "{main}");
}

fn wait_for(p: &Path, secs: u64) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        if p.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn kill_9_of_the_whole_suite_then_rerun_resumes_with_identical_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let body = "[suite]\nname = \"s\"\ndataset = \"digits\"\n[train]\nepochs = 12\nbatch_size = 32\nmilestones = [8]\n[grid]\nstudent = [\"cnn_small\"]\n";
    let s = write_suite(dir.path(), body);
    let id = ids(dir.path(), &s)[0].0.clone();
    let run: PathBuf = dir.path().join("r/s/runs").join(&id);
    let mut child = harness_cmd(&["run", &s, "--results", "r", "--devices", "cpu", "--threads", "1"], dir.path())
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until epoch 3 has been checkpointed, then kill the parent and its child at once.
    assert!(wait_for(&run.join("resume-e3.safetensors"), 120), "no checkpoint appeared");
    let pgid = child.id() as i32;
    // Only ever signal the group the spawned `harness run` leads (never our own).
    let stat = std::fs::read_to_string(format!("/proc/{pgid}/stat")).unwrap();
    let pgrp: i32 = stat.rsplit(')').next().unwrap().split_whitespace().nth(2).unwrap().parse().unwrap();
    assert_eq!(pgrp, pgid, "harness run is not a process-group leader");
    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    // SAFETY: plain syscall wrapper; -pgid addresses exactly that process group.
    assert_eq!(unsafe { kill(-pgid, 9) }, 0);
    let _ = child.wait();
    assert!(!run.join("summary.json").exists(), "the run must have been interrupted");
    assert!(run.join("lock").exists(), "a stale lock is left behind");

    let o = harness(&["run", &s, "--results", "r", "--devices", "cpu", "--threads", "1"], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let log = std::fs::read_to_string(run.join("log.txt")).unwrap();
    assert!(log.contains("resuming run"), "{log}");
    assert!(!run.join("resume.json").exists(), "resume state is removed once finished");

    let o = harness(&["run", &s, "--results", "fresh", "--devices", "cpu", "--threads", "1"], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let fresh = dir.path().join("fresh/s/runs").join(&id);
    assert_eq!(metrics_without_timing(&run.join("metrics.csv")), metrics_without_timing(&fresh.join("metrics.csv")));
    let a: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    let b: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fresh.join("summary.json")).unwrap()).unwrap();
    for k in ["best_top1", "best_epoch", "last_top1", "last_top5", "last_ece", "last_test_loss"] {
        assert_eq!(a[k], b[k], "{k}");
    }
}

#[test]
fn concurrent_runs_on_one_results_dir_do_not_duplicate_work() {
    let dir = tempfile::tempdir().unwrap();
    let s = write_suite(dir.path(), TINY_KD_SUITE);
    let spawn = || {
        harness_cmd(&["run", &s, "--results", "r", "--devices", "cpu", "--threads", "1"], dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (oa, ob) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    // Each run trained exactly once; whichever process found a run locked reports it, and a
    // re-run finds everything finished.
    for (id, _, _) in ids(dir.path(), &s) {
        let run = dir.path().join("r/s/runs").join(&id);
        let log = std::fs::read_to_string(run.join("log.txt")).unwrap();
        assert_eq!(log.matches(&format!("run {id} —")).count(), 1, "{id} trained more than once:\n{log}\n{}\n{}", text(&oa), text(&ob));
        assert!(run.join("summary.json").is_file());
    }
    let o = harness(&["run", &s, "--results", "r", "--devices", "cpu"], dir.path());
    assert!(o.status.success() && text(&o).contains("0 finished now, 3 cached"), "{}", text(&o));
}

#[test]
fn an_exclusive_run_has_the_machine_to_itself() {
    let dir = tempfile::tempdir().unwrap();
    let body = "[suite]\nname = \"x\"\ndataset = \"digits\"\n[train]\nepochs = 2\nbatch_size = 128\nmilestones = []\n[grid]\npair = [{ student = \"cnn_small\", exclusive = true }, { student = \"mlp\" }, { student = \"cnn_tiny\" }]\n";
    let s = write_suite(dir.path(), body);
    let o = harness(&["run", &s, "--results", "r", "--devices", "cpu", "--jobs", "2"], dir.path());
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    // Events in order: while the exclusive run is active nothing else starts, and it starts only
    // when nothing else runs.
    let mut active: Vec<String> = Vec::new();
    for line in t.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.first() {
            Some(&"start") => {
                let label = f[2..].join(" ");
                assert!(!active.iter().any(|a| a.starts_with("cnn_small")), "{label} started beside the exclusive run:\n{t}");
                if label.starts_with("cnn_small") {
                    assert!(active.is_empty(), "the exclusive run started beside {active:?}:\n{t}");
                }
                active.push(label);
            }
            Some(&"done") => {
                let label = f[2..].join(" ");
                let label = label.split(':').next().unwrap_or("").to_string();
                active.retain(|a| !a.starts_with(&label) && !label.starts_with(a.split(" on ").next().unwrap_or("")));
            }
            _ => {}
        }
    }
}
