//! Helpers shared by the binary-level tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// A `harness` command in `cwd`.
pub fn harness_cmd(args: &[&str], cwd: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_harness"));
    c.args(args).current_dir(cwd);
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

/// The harness venv's python (torch installed by the setup script), if there.
pub fn venv_python() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    let home =
        std::env::var_os("KD_HARNESS_HOME").map(PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kd-harness")))?;
    let p = home.join("venv/bin/python");
    p.is_file().then_some(p)
}
