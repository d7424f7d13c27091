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

// ------------------------------------------------------------------ .npy / .npz writers

/// A `.npy` file (format 1.0) holding `data` as `descr` with `shape`.
pub fn npy(descr: &str, shape: &[i64], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if shape.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (h.len() + 11) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend((h.len() as u16).to_le_bytes());
    v.extend(h.as_bytes());
    v.extend(data);
    v
}

pub fn f64s(x: &[f64]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn i64s(x: &[i64]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// An uncompressed `.npz` (what `numpy.savez` writes) of the named `.npy` payloads.
pub fn npz(path: &Path, arrays: &[(&str, Vec<u8>)]) {
    use std::io::Write;
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    for (name, bytes) in arrays {
        z.start_file(format!("{name}.npy"), zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored)).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
}

// ------------------------------------------------------------------ mutation fuzzing

/// `n` scaled by `KD_HARNESS_FUZZ_SCALE` (default 1): CI runs the bounded count, a longer local
/// run raises it (README, "Fuzzing").
pub fn fuzz_iters(n: usize) -> usize {
    let scale = std::env::var("KD_HARNESS_FUZZ_SCALE").ok().and_then(|s| s.parse::<usize>().ok()).unwrap_or(1);
    n.saturating_mul(scale.max(1))
}

/// Deterministic mutations of `seed` (flip a bit, overwrite with an extreme byte, insert a token
/// that parsers special-case, cut, duplicate a span), `n` of them, each handed to `check`, which
/// must see a value or an error, never a panic or a stack overflow. `KD_HARNESS_FUZZ_SEED`
/// changes the sequence (default 17).
pub fn mutations(seed: &[u8], n: usize, mut check: impl FnMut(&[u8])) {
    use rand::{Rng, SeedableRng};
    const TOKENS: &[&[u8]] = &[b"nan", b"inf", b"-1", b"1e999", b"0", b"18446744073709551616", b"\"", b"[", b"{", b"]]", b"\n[", b",", b"=", b"\\u0000", b"\xff\xfe"];
    let s = std::env::var("KD_HARNESS_FUZZ_SEED").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or(17);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(s);
    for _ in 0..n {
        let mut b = seed.to_vec();
        for _ in 0..rng.gen_range(1..4) {
            let i = rng.gen_range(0..b.len());
            match rng.gen_range(0..5) {
                0 => b[i] ^= 1 << rng.gen_range(0..8),
                1 => b[i] = [0u8, 0x7f, 0x80, 0xff, b'(', b'.', b'h', b'q'][rng.gen_range(0..8)],
                2 => b.truncate(i.max(1)),
                3 => {
                    let t = TOKENS[rng.gen_range(0..TOKENS.len())];
                    let end = (i + rng.gen_range(0..3)).min(b.len());
                    b.splice(i..end, t.iter().copied());
                }
                _ => {
                    let j = rng.gen_range(i..b.len());
                    let span = b[i..j].to_vec();
                    b.splice(i..i, span);
                }
            }
        }
        check(&b);
    }
}
