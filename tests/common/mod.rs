//! Helpers shared by the binary-level tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// A `harness` command in `cwd`; decoded-dataset caches go to `cwd/.kd-harness-cache`, not the
/// user's home.
pub fn harness_cmd(args: &[&str], cwd: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_harness"));
    c.args(args).current_dir(cwd).env("KD_HARNESS_CACHE", cwd.join(".kd-harness-cache"));
    c
}

/// Runs `harness` to completion.
pub fn harness(args: &[&str], cwd: &Path) -> Output {
    harness_cmd(args, cwd).output().expect("harness runs")
}

/// stdout and stderr together.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// metrics.csv without the timing columns (which legitimately differ between runs).
pub fn metrics_without_timing(p: &Path) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_path(p).unwrap();
    let h: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    let keep: Vec<usize> = (0..h.len()).filter(|&i| !h[i].contains("time") && !h[i].contains("per_s")).collect();
    let mut rows = vec![keep.iter().map(|&i| h[i].clone()).collect()];
    for rec in r.records() {
        let rec = rec.unwrap();
        rows.push(keep.iter().map(|&i| rec[i].to_string()).collect());
    }
    rows
}

/// The venv python the setup script installs (none when the user brings their own LIBTORCH).
pub fn venv_python() -> Option<std::path::PathBuf> {
    let home = std::env::var_os("KD_HARNESS_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache/kd-harness")))?;
    let p = home.join("venv/bin/python");
    p.is_file().then_some(p)
}

/// A teacher (cnn_tiny) and an mlp student trained plainly and with KD, 3 epochs each on digits:
/// the smallest suite with a DAG (the kd student needs the teacher).
pub const TINY_KD_SUITE: &str = r#"
[suite]
name = "s"
dataset = "digits"
seeds = [0]

[train]
epochs = 3
batch_size = 128
milestones = [2]

[teachers.t]
model = "cnn_tiny"

[grid]
pair = [{ teacher = "t", student = "mlp" }]
method = ["ce", "kd"]
"#;

/// (id, role, method) of every run of a suite, from `harness plan`.
pub fn ids(dir: &Path, suite: &str) -> Vec<(String, String, String)> {
    let o = harness(&["plan", suite], dir);
    text(&o)
        .lines()
        .filter(|l| !l.starts_with("id ") && (l.contains(" teacher ") || l.contains(" student ")))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f[1].to_string(), f[4].to_string())
        })
        .collect()
}

/// Writes a freshly initialised `model` (3-channel input, `classes` outputs) as a checkpoint the
/// harness loads strictly: a stand-in for a released teacher in suites that name one.
pub fn write_checkpoint(model: &str, classes: i64, path: &Path) {
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let entry = harness::models::find(model).unwrap_or_else(|| panic!("unknown model {model}"));
    let _m = (entry.build)(&vs.root(), harness::models::ModelCfg { in_channels: 3, num_classes: classes });
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    harness::models::checkpoint::save_atomic(&vs, path).unwrap();
}
