//! GPU readiness, tested on its CPU path: the release bundle (`scripts/bundle.sh`) runs from any
//! folder against this machine's torch, and the device check (`scripts/device-check.sh`) prints
//! one JSON document with every phase, recording a failed phase instead of stopping.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The venv python, or a message why the test cannot run here (a user's own LIBTORCH).
fn python() -> Option<PathBuf> {
    let p = venv_python();
    if p.is_none() {
        eprintln!("skipping: no setup venv (scripts/setup.sh) to run the device check's python");
    }
    p
}

fn json(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("device check printed no JSON ({e}): {}", text(o)))
}

/// Bundles the test binary, unpacks it elsewhere and runs the launcher and the quick device
/// check from there.
#[test]
fn the_bundle_runs_elsewhere_and_its_device_check_reports_every_phase() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let bundle = |max: &str| {
        Command::new(repo().join("scripts/bundle.sh"))
            .args(["--binary", env!("CARGO_BIN_EXE_harness"), "--out"])
            .arg(dir.path().join("dist"))
            .args(["--max-mib", max])
            .output()
            .unwrap()
    };
    // A size limit the bundle exceeds fails it.
    let o = bundle("1");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("over --max-mib 1"), "{}", text(&o));
    let o = bundle("0");
    assert!(o.status.success(), "{}", text(&o));
    let tarball = std::fs::read_dir(dir.path().join("dist")).unwrap().map(|e| e.unwrap().path()).find(|p| p.to_string_lossy().ends_with(".tar.gz")).unwrap();
    let elsewhere = dir.path().join("box");
    std::fs::create_dir(&elsewhere).unwrap();
    let o = Command::new("tar").arg("xzf").arg(&tarball).current_dir(&elsewhere).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let root = std::fs::read_dir(&elsewhere).unwrap().next().unwrap().unwrap().path();
    for f in ["harness", "bin/harness", "scripts/device-check.sh", "scripts/device_check.py", "scripts/reference/bench_kd.py", "suites/quick.toml"] {
        assert!(root.join(f).is_file(), "{f} in the bundle");
    }

    let o = Command::new(root.join("harness")).arg("doctor").env("PYTHON", &py).output().unwrap();
    assert!(o.status.success() && text(&o).contains("libtorch 2.11.0"), "{}", text(&o));
    let o = Command::new(root.join("harness")).arg("doctor").env("PYTHON", "/bin/false").output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("error: /bin/false cannot import torch"), "{}", text(&o));

    let o = Command::new(root.join("scripts/device-check.sh"))
        .args(["--quick", "--device", "cpu"])
        .env("PYTHON", &py)
        .env_remove("HARNESS")
        .current_dir(&elsewhere)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let r = json(&o);
    assert_eq!(r["errors"], serde_json::json!([]), "{r}");
    assert!(r["harness"].as_str().unwrap().ends_with("bin/harness"), "the bundle's own binary: {r}");
    assert_eq!(r["device"], "cpu");
    assert_eq!(r["doctor"]["CUDA available"], "false", "{r}");
    let suite = &r["suite"];
    for m in ["ce", "kd", "dkd", "dist"] {
        let (a, b) = (&suite["cohort4"]["last_top1"][m], &suite["alone"]["last_top1"][m]);
        assert!(a.as_f64().is_some_and(|t| (0.0..=100.0).contains(&t)), "{m}: {suite}");
        assert_eq!(a, b, "{m}: a cohort is bit-identical to runs alone on the CPU");
    }
    assert_eq!(suite["max_top1_diff_cohort_vs_alone"], 0.0);
    assert!(suite["cohort_speedup"].as_f64().unwrap() > 0.0);
    let per: Vec<u64> = r["runs_per_device"].as_array().unwrap().iter().map(|x| x["runs_per_device"].as_u64().unwrap()).collect();
    assert_eq!(per, vec![1, 2]);
    assert!(r["runs_per_device"].as_array().unwrap().iter().all(|x| x["students_per_hour"].as_f64().unwrap() > 0.0), "{r}");
    let bench = &r["bench"]["bf16"];
    assert_eq!(bench["opts"]["cohort"], 4, "{bench}");
    assert!(bench["per_student_images_per_s"]["step"]["median"].as_f64().unwrap() > 0.0, "{bench}");
    assert!(bench["ratio_vs_eager"]["step"].as_f64().unwrap() > 0.0, "the PyTorch reference ran from the bundle: {bench}");
}

/// A phase that fails is named with its command and output; the rest still runs; exit 1. No
/// binary at all is bad usage (exit 2).
#[test]
fn a_failing_phase_is_recorded_and_the_check_exits_1() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    // A harness whose bench is broken and everything else works.
    let broken = dir.path().join("harness");
    std::fs::write(&broken, format!("#!/bin/sh\nif [ \"$1\" = bench ]; then echo 'bench broke' >&2; exit 3; fi\nexec {} \"$@\"\n", env!("CARGO_BIN_EXE_harness"))).unwrap();
    Command::new("chmod").arg("+x").arg(&broken).status().unwrap();
    let check = |harness: &Path| {
        Command::new(repo().join("scripts/device-check.sh"))
            .args(["--quick", "--device", "cpu", "--skip", "suite"])
            .env("PYTHON", &py)
            .env("HARNESS", harness)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let o = check(&broken);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let r = json(&o);
    assert_eq!(r["doctor"]["cores"].as_str().map(|c| c.parse::<u32>().is_ok()), Some(true), "doctor still ran: {r}");
    let errors = r["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{r}");
    assert_eq!(errors[0]["step"], "bench-bf16");
    assert_eq!(errors[0]["exit"], 3);
    assert!(errors[0]["output_tail"].as_str().unwrap().contains("bench broke"), "{r}");

    let o = check(&dir.path().join("missing"));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("error: --harness") && text(&o).contains("not an executable file"), "{}", text(&o));
}
