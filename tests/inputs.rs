//! Malformed inputs of every kind the harness reads (suite files, CIFAR pickles, images, arrays,
//! checkpoints, CLI sizes), each built in a temp dir: the harness must end with exit 2 and an
//! `error:` line naming the file or key, never a panic, an abort or a hang. Every child runs under
//! a deadline and is killed past it, so a hang fails its test instead of stalling CI. Each family
//! has a well-formed control that must succeed, so a broken builder cannot make the cases pass.

mod common;
use common::*;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use harness::models::{self, ModelCfg};
use tch::{Device, Kind, Tensor};

const DEADLINE: Duration = Duration::from_secs(45);

struct Ran {
    code: Option<i32>,
    out: String,
}

/// Runs `harness args` in `dir` with output to files (a full pipe cannot stall it), killing it
/// past [`DEADLINE`].
fn run(dir: &Path, args: &[&str]) -> Ran {
    let (o, e) = (dir.join(".stdout"), dir.join(".stderr"));
    let mut child =
        harness_cmd(args, dir).stdin(Stdio::null()).stdout(File::create(&o).unwrap()).stderr(File::create(&e).unwrap()).spawn().expect("harness starts");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            fail(format!("harness {args:?} hung: still running after {DEADLINE:?}"));
            return Ran { code: None, out: "(killed past the deadline)".into() };
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = format!("{}{}", std::fs::read_to_string(&o).unwrap_or_default(), std::fs::read_to_string(&e).unwrap_or_default());
    Ran { code: status.code(), out }
}

thread_local! {
    /// Cases of the running test that were not refused cleanly; a test reports all of them at its
    /// end (one hang or panic does not hide the other cases).
    static FAILED: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn fail(msg: String) {
    FAILED.with(|f| f.borrow_mut().push(msg));
}

/// Panics with every case [`refused`] or [`ok`] recorded as failing in this test.
fn all_cases_passed() {
    let v = FAILED.with(|f| std::mem::take(&mut *f.borrow_mut()));
    assert!(v.is_empty(), "{} case(s) failed:\n\n{}", v.len(), v.join("\n\n"));
}

/// Checks a clean refusal: exit 2, an `error:` line, every needle in the error, no panic report.
fn refused(dir: &Path, args: &[&str], needles: &[&str]) -> String {
    let r = run(dir, args);
    if r.code.is_none() && r.out.starts_with("(killed") {
        // Recorded by `run` as a hang.
    } else if r.code.is_none() {
        fail(format!("harness {args:?}: ended by a signal (abort, stack overflow):\n{}", r.out));
    } else if r.out.contains("panicked") || r.out.contains("RUST_BACKTRACE") {
        fail(format!("harness {args:?} panicked:\n{}", r.out));
    } else if r.code != Some(2) {
        fail(format!("harness {args:?}: expected exit 2 (bad input), got {:?}:\n{}", r.code, r.out));
    } else if let Some(at) = r.out.find("error:") {
        for n in needles {
            if !r.out[at..].contains(n) {
                fail(format!("harness {args:?}: the error does not mention `{n}`:\n{}", r.out));
            }
        }
    } else {
        fail(format!("harness {args:?}: no `error:` line:\n{}", r.out));
    }
    r.out
}

/// Records a failed expectation of the running test.
fn check(cond: bool, msg: impl FnOnce() -> String) {
    if !cond {
        fail(msg());
    }
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let r = run(dir, args);
    if r.code != Some(0) {
        fail(format!("harness {args:?} failed ({:?}):\n{}", r.code, r.out));
    }
    r.out
}

#[cfg(unix)]
fn mkfifo(p: &Path) {
    let st = std::process::Command::new("mkfifo").arg(p).status().expect("mkfifo runs");
    assert!(st.success());
}

// ------------------------------------------------------------------ CIFAR pickles

/// Protocol-2 pickle pieces, as Python writes a CIFAR batch (numpy's `_reconstruct` + BUILD).
mod pk {
    pub fn global(m: &str, n: &str) -> Vec<u8> {
        format!("c{m}\n{n}\n").into_bytes()
    }
    pub fn text(s: &str) -> Vec<u8> {
        let mut v = vec![b'X'];
        v.extend((s.len() as u32).to_le_bytes());
        v.extend(s.as_bytes());
        v
    }
    pub fn bytes(b: &[u8]) -> Vec<u8> {
        let mut v = vec![b'B'];
        v.extend((b.len() as u32).to_le_bytes());
        v.extend(b);
        v
    }
    pub fn long(i: u64) -> Vec<u8> {
        let mut v = vec![0x8a, 8];
        v.extend(i.to_le_bytes());
        v
    }
    /// `numpy.ndarray` of uint8 with `shape` and `payload`.
    pub fn ndarray(shape: &[u64], payload: &[u8]) -> Vec<u8> {
        let mut v = global("numpy.core.multiarray", "_reconstruct");
        v.push(b'(');
        v.extend(global("numpy", "ndarray"));
        v.extend([b'K', 0, 0x85]);
        v.extend(bytes(b"b"));
        v.extend([b't', b'R', b'(', b'K', 1, b'(']);
        for &d in shape {
            v.extend(long(d));
        }
        v.push(b't');
        v.extend(global("numpy", "dtype"));
        v.push(b'(');
        v.extend(text("u1"));
        v.extend([0x89, 0x88, b't', b'R', b'(', b'K', 3]);
        v.extend(text("|"));
        v.extend([b'N', b'N', b'N', b'J', 0xff, 0xff, 0xff, 0xff, b'J', 0xff, 0xff, 0xff, 0xff, b'K', 0, b't', b'b']);
        v.push(0x89);
        v.extend(bytes(payload));
        v.extend([b't', b'b']);
        v
    }
    /// A CIFAR-10 batch dict `{'data': ndarray, 'labels': [...]}`.
    pub fn batch(shape: &[u64], payload: &[u8], labels: &[u8]) -> Vec<u8> {
        let mut v = vec![0x80, 2, b'}', b'('];
        v.extend(text("data"));
        v.extend(ndarray(shape, payload));
        v.extend(text("labels"));
        v.extend([b']', b'(']);
        for &l in labels {
            v.extend([b'K', l]);
        }
        v.extend([b'e', b'u', b'.']);
        v
    }
}

fn valid_batch() -> Vec<u8> {
    let payload: Vec<u8> = (0..2 * 3072).map(|i| (i % 251) as u8).collect();
    pk::batch(&[2, 3072], &payload, &[3, 7])
}

const CIFAR_SUITE: &str = "[suite]\nname = \"c\"\ndataset = \"cifar10\"\n[grid]\nstudent = [\"cnn_tiny\"]\n";

/// A CIFAR-10 python-layout folder `d/cifar-10-batches-py` of well-formed two-image batches.
fn cifar_dir(dir: &Path) -> PathBuf {
    let py = dir.join("d/cifar-10-batches-py");
    std::fs::create_dir_all(&py).unwrap();
    for f in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"] {
        std::fs::write(py.join(f), valid_batch()).unwrap();
    }
    std::fs::write(dir.join("c.toml"), CIFAR_SUITE).unwrap();
    py
}

/// Memo doubling: level i+1 is `[level i, level i]` fetched from the memo; 2^48 nodes if copied.
fn memo_bomb() -> Vec<u8> {
    let mut v = vec![0x80, 2, b']', b'K', 1, b'a', b'q', 0];
    for i in 0..48u8 {
        v.extend([b'(', b'h', i, b'h', i, b'l', b'q', i + 1]);
    }
    v.push(b'.');
    v
}

#[test]
fn malformed_cifar_pickles_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let py = cifar_dir(dir.path());
    ok(dir.path(), &["plan", "c.toml", "--data-dir", "d"]);

    let mut deep = vec![0x80, 2];
    deep.extend(std::iter::repeat_n(b']', 300_000));
    deep.extend(std::iter::repeat_n(b'a', 299_999));
    deep.push(b'.');
    let mut len64 = vec![0x80, 4, 0x8e];
    len64.extend(u64::MAX.to_le_bytes());
    let mut cut = vec![0x80, 2, b'}', b'('];
    cut.extend(pk::text("data"));
    cut.extend(b"cnumpy.core.multi");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("cut inside GLOBAL", cut, "truncated"),
        ("64-bit length", len64, "truncated"),
        ("shape product overflow", pk::batch(&[1 << 40, 1 << 40], &[0; 16], &[1]), "shape"),
        ("negative shape", pk::batch(&[u64::MAX, 3072], &[0; 16], &[1]), "shape"),
        ("deep nesting", deep, "deeper"),
        ("memo bomb", memo_bomb(), "memo"),
        ("payload shorter than shape", pk::batch(&[2, 3072], &[0; 100], &[1, 2]), "needs"),
        ("odd dict items", vec![0x80, 2, b'(', b'K', 1, b'd', b'.'], "pairs"),
    ];
    for (what, bytes, why) in cases {
        std::fs::write(py.join("data_batch_1"), &bytes).unwrap();
        let out = refused(dir.path(), &["plan", "c.toml", "--data-dir", "d"], &["data_batch_1", why]);
        check(out.contains("error:"), || format!("{what}: not refused"));
    }
    all_cases_passed();
}

#[cfg(unix)]
#[test]
fn special_files_are_refused_not_waited_on() {
    let dir = tempfile::tempdir().unwrap();
    let py = cifar_dir(dir.path());
    // A FIFO as a CIFAR batch, and a broken link, are named.
    std::fs::remove_file(py.join("data_batch_2")).unwrap();
    mkfifo(&py.join("data_batch_2"));
    refused(dir.path(), &["plan", "c.toml", "--data-dir", "d"], &["data_batch_2", "FIFO"]);
    std::fs::remove_file(py.join("data_batch_2")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("gone"), py.join("data_batch_2")).unwrap();
    refused(dir.path(), &["plan", "c.toml", "--data-dir", "d"], &["data_batch_2", "broken symbolic link"]);
    // The first batch a broken link: not "no CIFAR data found".
    std::fs::remove_file(py.join("data_batch_1")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("gone"), py.join("data_batch_1")).unwrap();
    refused(dir.path(), &["plan", "c.toml", "--data-dir", "d"], &["data_batch_1", "broken symbolic link"]);

    // A FIFO as the suite file.
    mkfifo(&dir.path().join("fifo.toml"));
    refused(dir.path(), &["plan", "fifo.toml"], &["fifo.toml", "FIFO"]);
    refused(dir.path(), &["run", "fifo.toml", "--dry-run"], &["fifo.toml", "FIFO"]);

    // A FIFO among ImageNet's JPEGs is refused when the folder is listed (plan time).
    let img = image::RgbImage::from_pixel(8, 8, image::Rgb([9, 99, 199]));
    let jpg = harness::data::jpeg::encode(&img, 90).unwrap();
    for split in ["train", "val"] {
        let c = dir.path().join(format!("in/imagenet/{split}/n01"));
        std::fs::create_dir_all(&c).unwrap();
        std::fs::write(c.join("a.JPEG"), &jpg).unwrap();
    }
    std::fs::write(dir.path().join("in.toml"), "[suite]\nname = \"i\"\ndataset = \"imagenet\"\n[grid]\nstudent = [\"resnet18\"]\n").unwrap();
    ok(dir.path(), &["plan", "in.toml", "--data-dir", "in"]);
    mkfifo(&dir.path().join("in/imagenet/train/n01/b.JPEG"));
    refused(dir.path(), &["plan", "in.toml", "--data-dir", "in"], &["b.JPEG", "FIFO"]);
    // A class folder that is a broken link would silently shift every later label.
    std::fs::remove_file(dir.path().join("in/imagenet/train/n01/b.JPEG")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("gone"), dir.path().join("in/imagenet/train/n00")).unwrap();
    refused(dir.path(), &["plan", "in.toml", "--data-dir", "in"], &["n00", "broken symbolic link"]);
    all_cases_passed();
}

// ------------------------------------------------------------------ suite files

const DIGITS: &str = "[suite]\nname = \"s\"\ndataset = \"digits\"\n[train]\nepochs = 1\n[teachers.t]\nmodel = \"cnn_tiny\"\n[grid]\npair = [{ teacher = \"t\", student = \"mlp\" }]\nmethod = [\"ce\", \"kd\"]\n";

#[test]
fn suite_values_sizes_and_selections_that_mislead_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("s.toml"), DIGITS).unwrap();
    ok(d, &["plan", "s.toml"]);
    ok(d, &["run", "s.toml", "--only", "method=kd", "--dry-run"]);

    let write = |name: &str, body: &str| std::fs::write(d.join(name), body).unwrap();
    write("nan.toml", &DIGITS.replace("epochs = 1\n", "epochs = 1\nlr = nan\n"));
    refused(d, &["plan", "nan.toml"], &["nan.toml:", "train.lr", "NaN", "not allowed"]);
    write("inf.toml", &format!("{DIGITS}[methods.kd]\ntau = inf\n"));
    refused(d, &["plan", "inf.toml"], &["inf.toml:", "methods.kd.tau", "inf", "not allowed"]);
    write("neg.toml", &DIGITS.replace("method = [", "\"kd.tau\" = [-inf]\nmethod = ["));
    refused(d, &["plan", "neg.toml"], &["neg.toml:", "-inf", "not allowed"]);

    // 1000 x 1000 x 1000 grid points: refused before expanding, naming the axes.
    let axis = |k: &str| format!("\"{k}\" = [{}]\n", (1..=1000).map(|i| i.to_string()).collect::<Vec<_>>().join(", "));
    write("big.toml", &format!("{}{}{}{}", DIGITS.replace("method = [\"ce\", \"kd\"]\n", ""), axis("seed"), axis("train.epochs"), axis("train.batch_size")));
    refused(d, &["plan", "big.toml"], &["big.toml:", "1000000000 runs", "100000", "seed (1000)", "--max-runs"]);
    // --max-runs moves the limit both ways.
    write("mid.toml", &format!("{}{}", DIGITS.replace("method = [\"ce\", \"kd\"]\n", ""), axis("seed")));
    refused(d, &["plan", "mid.toml", "--max-runs", "999"], &["mid.toml:", "1000 runs", "limit of 999"]);
    ok(d, &["plan", "mid.toml"]);
    ok(d, &["plan", "mid.toml", "--max-runs", "1000"]);

    // --only selecting nothing names the key and the values present.
    refused(d, &["run", "s.toml", "--only", "method=nope", "--dry-run"], &["method=nope", "selects no run", "ce, kd"]);
    refused(d, &["run", "s.toml", "--only", "kd.tau=9", "--dry-run"], &["kd.tau", "4"]);

    // A data folder the user named but that would not be used.
    refused(d, &["plan", "s.toml", "--data-dir", "nowhere"], &["--data-dir", "nowhere", "does not exist"]);
    std::fs::create_dir(d.join("empty")).unwrap();
    let out = ok(d, &["plan", "s.toml", "--data-dir", "empty"]);
    check(out.contains("note:") && out.contains("embedded"), || format!("a --data-dir without digits.csv.gz falls back silently:\n{out}"));
    write("dd.toml", &DIGITS.replace("dataset = \"digits\"\n", "dataset = \"digits\"\ndata_dir = \"nowhere\"\n"));
    refused(d, &["plan", "dd.toml"], &["dd.toml", "data_dir", "nowhere", "does not exist"]);
    write("de.toml", &DIGITS.replace("dataset = \"digits\"\n", "dataset = \"digits\"\ndata_dir = \"empty\"\n"));
    refused(d, &["plan", "de.toml"], &["de.toml", "data_dir", "digits.csv.gz", "embedded"]);

    // SOKD needs a teacher whose last stage can be its bridge: said at plan time, in suite terms.
    write("sokd.toml", &DIGITS.replace("[\"ce\", \"kd\"]", "[\"sokd\"]"));
    refused(d, &["plan", "sokd.toml"], &["sokd.toml:", "sokd", "cnn_tiny", "teacher"]);

    // A baseline with no groups would pass every check.
    write("b.toml", "suite = \"s\"\nmetric = \"last\"\ncreated = \"now\"\ncommit = \"x\"\n");
    refused(d, &["check", "s.toml", "--baseline", "b.toml"], &["b.toml", "without groups"]);
    all_cases_passed();
}

#[test]
fn data_synth_checks_its_sizes_and_noise() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    refused(d, &["data", "synth", "--out", "x", "--train", "100000000"], &["--train", "1000000"]);
    refused(d, &["data", "synth", "--out", "x", "--noise", "nan"], &["--noise", "NaN"]);
    refused(d, &["data", "synth", "--out", "x", "--noise=-1"], &["--noise"]);
    check(!d.join("x").exists(), || "data synth wrote files for refused sizes".into());
    all_cases_passed();
}

// ------------------------------------------------------------------ loss-eval arrays

#[test]
fn loss_eval_arrays_are_checked_before_libtorch_sees_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let z = f64s(&[0.1, 0.5, -0.3, 1.2, 0.0, 0.7]);
    let student = || ("student", npy("<f8", &[2, 3], &z));
    let teacher = || ("teacher", npy("<f8", &[2, 3], &f64s(&[0.3, -0.1, 0.2, 0.9, 0.4, 0.1])));
    let labels = || ("labels", npy("<i8", &[2], &i64s(&[0, 2])));
    npz(&d.join("good.npz"), &[student(), teacher(), labels()]);
    let out = ok(d, &["loss-eval", "kd", "--input", "good.npz"]);
    check(out.contains("\"total\""), || format!("no result: {out}"));

    let cases: Vec<(&str, Vec<(&str, Vec<u8>)>, &[&str], &str)> = vec![
        ("label out of range", vec![student(), teacher(), ("labels", npy("<i8", &[2], &i64s(&[0, 7])))], &["labels", "0..3"], "kd"),
        ("negative label", vec![student(), teacher(), ("labels", npy("<i8", &[2], &i64s(&[-1, 0])))], &["labels"], "kd"),
        ("teacher with fewer columns", vec![student(), ("teacher", npy("<f8", &[2, 2], &f64s(&[0.0; 4]))), labels()], &["teacher", "[2, 3]"], "kd"),
        ("1-D student", vec![("student", npy("<f8", &[6], &z)), teacher(), labels()], &["student", "2 dimensions"], "kd"),
        ("0-class batch", vec![("student", npy("<f8", &[2, 0], &[])), ("teacher", npy("<f8", &[2, 0], &[])), labels()], &["student"], "kd"),
        ("fewer labels than rows", vec![student(), teacher(), ("labels", npy("<i8", &[1], &i64s(&[0])))], &["labels", "[2]"], "kd"),
        ("short payload", vec![student(), ("teacher", npy("<f8", &[2, 3], &f64s(&[0.5]))), labels()], &["teacher", "48 bytes"], "kd"),
        ("float labels", vec![student(), teacher(), ("labels", npy("<f8", &[2], &f64s(&[0.0, 2.0])))], &["labels", "integer"], "kd"),
        ("bool labels", vec![student(), teacher(), ("labels", npy("|b1", &[2], &[1, 0]))], &["labels", "integer"], "kd"),
        ("complex labels", vec![student(), teacher(), ("labels", npy("<c16", &[2], &[0; 32]))], &["labels", "integer"], "kd"),
        ("NaN logits", vec![("student", npy("<f8", &[2, 3], &f64s(&[f64::NAN, 0.0, 0.0, 0.0, 0.0, 0.0]))), teacher(), labels()], &["student", "NaN"], "kd"),
        ("huge declared shape", vec![student(), teacher(), ("labels", npy("<i8", &[1 << 40, 1 << 40], &[]))], &["labels", "larger than"], "kd"),
        ("big-endian", vec![student(), ("teacher", npy(">f8", &[2, 3], &z)), labels()], &["teacher", "big-endian"], "kd"),
        ("one teacher for a multi-teacher method", vec![student(), labels(), ("teachers", npy("<f8", &[1, 2, 3], &z))], &["teachers", "K >= 2"], "camkd"),
        ("stage counts differ", vec![student(), teacher(), labels(), ("feat_s_0", npy("<f8", &[2, 1, 2, 2], &f64s(&[0.5; 8])))], &["at", "stages"], "at"),
        ("a method arrays cannot define", vec![student(), teacher(), labels()], &["sokd", "cannot be evaluated on arrays"], "sokd"),
    ];
    for (what, arrays, needles, method) in cases {
        npz(&d.join("bad.npz"), &arrays);
        let out = refused(d, &["loss-eval", method, "--input", "bad.npz"], needles);
        check(out.contains("bad.npz"), || format!("{what}: the error names no file:\n{out}"));
    }
    std::fs::write(d.join("trunc.npz"), &std::fs::read(d.join("good.npz")).unwrap()[..100]).unwrap();
    refused(d, &["loss-eval", "kd", "--input", "trunc.npz"], &["trunc.npz"]);
    refused(d, &["loss-eval", "kd", "--input", "good.npz", "--param", "tau=nan"], &["tau"]);
    all_cases_passed();
}

// ------------------------------------------------------------------ checkpoints

const DIGITS_CFG: ModelCfg = ModelCfg { in_channels: 1, num_classes: 10 };

/// cnn_tiny's state dict for digits, with `edit` applied to its tensors.
fn checkpoint(path: &Path, edit: impl Fn(&str, Tensor) -> Tensor) {
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let _m = (models::find("cnn_tiny").unwrap().build)(&vs.root(), DIGITS_CFG);
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().map(|(k, t)| (k.clone(), edit(&k, t.detach().copy()))).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::write_safetensors(&named, path).unwrap();
}

fn ck_suite(d: &Path, ck: &str) {
    let body = DIGITS.replace("model = \"cnn_tiny\"\n", &format!("model = \"cnn_tiny\"\ncheckpoint = \"{ck}\"\n"));
    std::fs::write(d.join("k.toml"), body).unwrap();
}

#[test]
fn checkpoints_are_validated_completely_at_plan_time() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    checkpoint(&d.join("good.safetensors"), |_, t| t);
    ck_suite(d, "good.safetensors");
    ok(d, &["plan", "k.toml"]);
    ok(d, &["eval", "--model", "cnn_tiny", "--dataset", "digits", "--checkpoint", "good.safetensors", "--device", "cpu"]);

    let nan = |k: &str, t: Tensor| if k == "fc.weight" { t.full_like(f64::NAN) } else { t };
    checkpoint(&d.join("nan.safetensors"), nan);
    checkpoint(&d.join("inf.safetensors"), |k, t| if k == "conv1.weight" { t.full_like(f64::INFINITY) } else { t });
    checkpoint(&d.join("negvar.safetensors"), |k, t| if k == "bn1.running_var" { t.full_like(-1.0) } else { t });
    checkpoint(&d.join("int.safetensors"), |k, t| if k == "conv1.weight" { t.to_kind(Kind::Int64) } else { t });
    checkpoint(&d.join("bool.safetensors"), |k, t| if k == "fc.bias" { t.gt(0.0) } else { t });
    checkpoint(&d.join("shape.safetensors"), |k, t| if k == "fc.weight" { Tensor::zeros([5, 32], (Kind::Float, Device::Cpu)) } else { t });
    let good = std::fs::read(d.join("good.safetensors")).unwrap();
    std::fs::write(d.join("trunc.safetensors"), &good[..good.len() / 2]).unwrap();
    std::fs::write(d.join("empty.safetensors"), b"").unwrap();
    std::fs::write(d.join("t.pth"), &good).unwrap();
    let cases: &[(&str, &[&str])] = &[
        ("nan.safetensors", &["non-finite", "fc.weight"]),
        ("inf.safetensors", &["non-finite", "conv1.weight"]),
        ("negvar.safetensors", &["running_var", "bn1.running_var"]),
        ("int.safetensors", &["conv1.weight", "I64"]),
        ("bool.safetensors", &["fc.bias", "BOOL"]),
        ("shape.safetensors", &["fc.weight", "[5, 32]"]),
        ("trunc.safetensors", &["trunc.safetensors"]),
        ("empty.safetensors", &["empty"]),
        ("t.pth", &[".pth"]),
    ];
    for (file, needles) in cases {
        ck_suite(d, file);
        let mut n = vec!["k.toml:", "teachers.t.checkpoint", *file];
        n.extend(needles.iter());
        refused(d, &["plan", "k.toml"], &n);
        // `eval --checkpoint` runs the same check (a sample of the cases: each start loads libtorch).
        if ["nan.safetensors", "negvar.safetensors", "int.safetensors"].contains(file) {
            let mut n = vec![*file];
            n.extend(needles.iter());
            refused(d, &["eval", "--model", "cnn_tiny", "--dataset", "digits", "--checkpoint", file, "--device", "cpu"], &n);
        }
    }
    // `run` refuses before anything trains (the `ce` student needs no teacher).
    ck_suite(d, "nan.safetensors");
    refused(d, &["run", "k.toml", "--results", "r", "--devices", "cpu"], &["nan.safetensors", "non-finite"]);
    check(!d.join("r/s/runs").exists(), || "a run trained before the checkpoint was refused".into());
    #[cfg(unix)]
    {
        mkfifo(&d.join("fifo.safetensors"));
        ck_suite(d, "fifo.safetensors");
        refused(d, &["plan", "k.toml"], &["fifo.safetensors", "FIFO"]);
        refused(d, &["eval", "--model", "cnn_tiny", "--dataset", "digits", "--checkpoint", "fifo.safetensors", "--device", "cpu"], &["FIFO"]);
    }
    all_cases_passed();
}

// ------------------------------------------------------------------ mutation fuzzing (in process)

#[test]
fn mutated_pickles_give_a_value_or_an_error() {
    let seed = valid_batch();
    let v = harness::data::pickle::load(&seed).unwrap();
    assert_eq!(v.get("data").unwrap().as_u8_array().unwrap().0, vec![2, 3072]);
    mutations(&seed, fuzz_iters(3000), |b| {
        if let Ok(v) = harness::data::pickle::load(b) {
            let _ = v.get("data").map(|d| d.as_u8_array());
            let _ = v.get("labels").map(|l| l.as_int_list());
        }
    });
}

#[test]
fn mutated_npy_arrays_give_a_value_or_an_error() {
    let seed = npy("<f8", &[2, 3], &f64s(&[0.1, 0.5, -0.3, 1.2, 0.0, 0.7]));
    let t = harness::data::npz::read_npy(&mut seed.as_slice(), "seed").unwrap();
    assert_eq!(t.size(), vec![2, 3]);
    mutations(&seed, fuzz_iters(3000), |b| {
        if let Ok(t) = harness::data::npz::read_npy(&mut &b[..], "m") {
            // A successful read holds exactly its declared elements.
            let _ = t.numel();
        }
    });
}

// ------------------------------------------------------------------ plan-time method checks

/// The suite refuses `sokd` with a teacher outside `BRIDGE_FAMILIES` at plan time; that list must
/// be exactly the families whose last stage the bridge can re-run (the check sokd itself makes).
#[test]
fn sokd_bridge_families_match_the_models_that_can_host_one() {
    let mut seen = std::collections::BTreeSet::new();
    for e in models::entries().filter(|e| seen.insert(e.family)) {
        // Small inputs keep it fast: every family but `Fixed` ones pools globally.
        let (c, h, w) = match e.input {
            models::Input::Fixed(c, h, w) => (c, h, w),
            other => (other.shape().map_or(1, |s| s.0), 32, 32),
        };
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let m = (e.build)(&vs.root(), ModelCfg { in_channels: c, num_classes: 10 });
        let out = tch::no_grad(|| m.forward(&Tensor::zeros([1, c, h, w], (Kind::Float, Device::Cpu)), false));
        let stage = out.feats.len().saturating_sub(2);
        let bridge = stage > 0 && tch::no_grad(|| m.forward_tail(&out.feats[stage], stage, false)).is_some();
        assert_eq!(bridge, harness::distill::sokd::has_bridge(e.name), "family {} ({})", e.family, e.name);
    }
}
