//! Trajectory parity with the official training loops (fp32, CPU): the harness trains a resnet8
//! student from a resnet20 checkpoint teacher with ce, kd, dkd, dist and crd for 30 steps on
//! generated CIFAR-100-format data (100 images, batch 10, 3 epochs; milestone 2, so epoch 3 (step
//! 21 on) runs at 0.1× lr; DKD's warm-up factor goes 1/3, 2/3, 1), tracing every step
//! (`KD_HARNESS_TRACE`, harness/src/train/trace.rs). `scripts/reference/trajectory.py` replays
//! every step with mdistiller's trainer (RepDistiller's loop for crd) and the official loss code,
//! building each batch itself from the data files and the traced crop offsets and flips, and
//! starting each step from the harness's state after the previous one (teacher forcing: the
//! first from the initial weights). After every step, including the last, the loss and every
//! weight, momentum buffer, BN buffer and CRD bank must agree within [`TOL`] relative. Each
//! deliberately wrong knob of the reference (Nesterov, no weight decay on BN, 0-based milestones,
//! reflect padding, 0-based warm-up) must break that agreement.
//!
//! Why teacher forcing: free-running trajectories of this network separate by chaos alone (the
//! reference against itself with a 1e-7 relative perturbation of the initial weights: 1e-3 in the
//! loss and >0.4 relative in momentum buffers after 30 steps), and torch's SGD rounds once where
//! tch's arithmetic rounds twice (`add(alpha=)` is an FMA), so no 1e-4 bound can hold after 30
//! free steps; per step the two agree to about 1e-6.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{harness, harness_cmd, text, venv_python};
use tch::{Kind, Tensor};

/// Relative tolerance: per tensor `max|a − b| / (max|b| + 1e-12)`, per step `|a − b| / (|b| + 1e-12)`
/// (a = harness, b = reference).
const TOL: f64 = 1e-4;

const SUITE: &str = r#"
[suite]
name = "parity"
dataset = "cifar100"
seeds = [0]

[train]
epochs = 3
batch_size = 10
milestones = [2]

[teachers.t]
model = "resnet20"
checkpoint = "teacher.safetensors"

[methods.dkd]
warmup = 3

[methods.crd]
nce_k = 16

[grid]
pair = [{ teacher = "t", student = "resnet8" }]
method = ["ce", "kd", "dkd", "dist", "crd"]
"#;

fn read(path: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).into_iter().collect()
}

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    let d = (&a - &b).abs().max().double_value(&[]);
    d / (b.abs().max().double_value(&[]) + 1e-12)
}

/// Compares a traced harness run with the reference's replay, step by step (the reference starts
/// each step from the harness's previous state); returns the deviations above [`TOL`] (empty =
/// parity), the largest deviation seen with its name, and how many steps were replayed.
fn compare(trace: &Path, reference: &Path) -> (Vec<String>, (f64, String), usize) {
    let mut bad = Vec::new();
    let mut worst = (0.0f64, String::new());
    let mut note = |name: String, dev: f64, bad: &mut Vec<String>| {
        if dev > worst.0 || dev.is_nan() {
            worst = (dev, name.clone());
        }
        if dev.is_nan() || dev > TOL {
            bad.push(format!("{name}: {dev:.3e}"));
        }
    };
    let mut steps: Vec<PathBuf> = std::fs::read_dir(trace).unwrap().flatten().map(|e| e.path()).filter(|p| p.to_string_lossy().contains("step-")).collect();
    steps.sort();
    let mut replayed = 0;
    for (k, p) in steps.iter().enumerate() {
        let rp = reference.join(p.file_name().unwrap());
        if !rp.is_file() {
            continue;
        }
        replayed += 1;
        let s = read(p);
        let r = read(&rp);
        let xdiff = r["ref.x_maxdiff"].double_value(&[0]);
        if xdiff > 1e-6 {
            bad.push(format!("step {}: batch images differ from the official pipeline's by {xdiff:.3e}", k + 1));
        }
        let total: f64 = s.iter().filter(|(n, _)| n.starts_with("loss.")).map(|(_, t)| t.double_value(&[0])).sum();
        let ce = s["loss.ce"].double_value(&[0]);
        let (rt, rc) = (r["ref.loss.total"].double_value(&[0]), r["ref.loss.ce"].double_value(&[0]));
        note(format!("step {} loss", k + 1), (total - rt).abs() / (rt.abs() + 1e-12), &mut bad);
        note(format!("step {} ce", k + 1), (ce - rc).abs() / (rc.abs() + 1e-12), &mut bad);
        // The state after the step: every variable and momentum buffer, under the same names.
        let ours: Vec<&String> = s.keys().filter(|n| n.starts_with("model.") || n.starts_with("aux.") || n.starts_with("momentum.")).collect();
        let theirs: Vec<&String> = r.keys().filter(|n| !n.starts_with("ref.")).collect();
        assert_eq!(ours, theirs, "{}: the state holds the same tensors as the reference's", p.display());
        for n in ours {
            assert_eq!(s[n].size(), r[n].size(), "{n}");
            note(format!("step {} {n}", k + 1), rel(&s[n], &r[n]), &mut bad);
        }
    }
    assert!(replayed > 0, "{}: the reference replayed no step", reference.display());
    (bad, worst, replayed)
}

/// Replays every job (trace, run, output folder, knobs) with the reference, in one Python process.
fn replay(py: &Path, script: &Path, dir: &Path, jobs: &[(PathBuf, PathBuf, PathBuf, Vec<&str>)]) {
    let mut lines = String::new();
    for (trace, run, out, knobs) in jobs {
        let args = [trace.clone(), run.join("config.json"), dir.join("synth/cifar-100-binary"), dir.join("teacher.safetensors"), out.clone()];
        let mut l: Vec<String> = args.iter().map(|p| p.display().to_string()).collect();
        l.extend(knobs.iter().map(|k| k.to_string()));
        lines.push_str(&l.join(" "));
        lines.push('\n');
    }
    let file = dir.join("jobs.txt");
    std::fs::write(&file, lines).unwrap();
    let o = std::process::Command::new(py).arg(script).arg("--jobs").arg(&file).output().unwrap();
    assert!(o.status.success(), "trajectory.py: {}", text(&o));
}

#[test]
fn official_loops_reproduce_every_step_and_wrong_knobs_do_not() {
    let Some(py) = venv_python() else {
        eprintln!("skipping: no venv python (scripts/setup.sh installs it)");
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/reference/trajectory.py");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = harness(&["data", "synth", "--out", "synth", "--classes", "100", "--train", "100", "--test", "16"], d);
    assert!(o.status.success(), "{}", text(&o));
    let o = std::process::Command::new(&py).arg(&script).args(["--make-teacher", "resnet20", "100"]).arg(d.join("teacher.safetensors")).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    std::fs::write(d.join("parity.toml"), SUITE).unwrap();
    let t0 = std::time::Instant::now();
    let o = harness_cmd(&["run", "parity.toml", "--data-dir", "synth", "--results", "r", "--devices", "cpu", "--jobs", "2", "--threads", "1"], d)
        .env("KD_HARNESS_TRACE", d.join("trace"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // DKD once more in PyTorch's default NCHW layout (the official code's), traced apart.
    std::fs::write(d.join("nchw.toml"), SUITE.replace(r#"method = ["ce", "kd", "dkd", "dist", "crd"]"#, r#"method = ["dkd"]"#)).unwrap();
    let o = harness_cmd(&["run", "nchw.toml", "--data-dir", "synth", "--results", "r0", "--devices", "cpu", "--threads", "1"], d)
        .env("KD_HARNESS_TRACE", d.join("trace-nchw"))
        .env("KD_HARNESS_CHANNELS_LAST", "0")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));

    let mut runs: BTreeMap<String, PathBuf> = BTreeMap::new();
    for e in std::fs::read_dir(d.join("r/parity/runs")).unwrap().flatten() {
        let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(e.path().join("config.json")).unwrap()).unwrap();
        runs.insert(cfg["method"].as_str().unwrap().to_string(), e.path());
    }
    assert_eq!(runs.keys().cloned().collect::<Vec<_>>(), ["ce", "crd", "dist", "dkd", "kd"]);
    let trace_of = |run: &Path| d.join("trace").join(run.file_name().unwrap());
    let knob_sets: [&[&str]; 5] = [&["--nesterov"], &["--no-wd-on-bn"], &["--milestone-zero-based"], &["--pad-mode", "reflect"], &["--warmup-zero-based"]];
    // The harness runs convolutions channels-last by default (KD_HARNESS_CHANNELS_LAST): the
    // reference then does too, so both sum in the same order (the layouts alone differ by up to
    // 1e-2 in one step's momentum buffers).
    let mut jobs: Vec<(PathBuf, PathBuf, PathBuf, Vec<&str>)> =
        runs.iter().map(|(m, run)| (trace_of(run), run.clone(), d.join(format!("ref-{m}")), vec!["--channels-last"])).collect();
    let nchw = d.join("trace-nchw").join(runs["dkd"].file_name().unwrap());
    jobs.push((nchw.clone(), runs["dkd"].clone(), d.join("ref-dkd-nchw"), vec![]));
    // Each wrong knob of the reference must be caught (on DKD: it has a warm-up and a teacher).
    // Teacher forcing makes steps independent, so the first step of epochs 1 and 2 suffice: the
    // 0-based milestone shows at step 11 (epoch 2), every other knob from step 1.
    for (k, knobs) in knob_sets.iter().enumerate() {
        let mut args = knobs.to_vec();
        args.extend(["--channels-last", "--steps", "1,11"]);
        jobs.push((trace_of(&runs["dkd"]), runs["dkd"].clone(), d.join(format!("ref-dkd-knob{k}")), args));
    }
    let t1 = std::time::Instant::now();
    replay(&py, &script, d, &jobs);
    eprintln!("harness {:.1}s, reference {:.1}s", (t1 - t0).as_secs_f64(), t1.elapsed().as_secs_f64());

    for (method, run) in &runs {
        let trace = trace_of(run);
        let steps = std::fs::read_dir(&trace).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with("step-")).count();
        assert_eq!(steps, 30, "{method}: 3 epochs of 10 steps traced");
        let (bad, worst, replayed) = compare(&trace, &d.join(format!("ref-{method}")));
        assert_eq!(replayed, 30, "{method}: every step replayed");
        eprintln!("{method}: largest deviation {:.3e} ({})", worst.0, worst.1);
        assert!(bad.is_empty(), "{method}: the harness deviates from the official loop:\n{}", bad.join("\n"));
    }
    let (bad, worst, replayed) = compare(&nchw, &d.join("ref-dkd-nchw"));
    eprintln!("dkd (NCHW): largest deviation {:.3e} ({})", worst.0, worst.1);
    assert!(replayed == 30 && bad.is_empty(), "dkd in NCHW layout deviates from the official loop:\n{}", bad.join("\n"));
    for (k, knobs) in knob_sets.iter().enumerate() {
        let (bad, worst, _) = compare(&trace_of(&runs["dkd"]), &d.join(format!("ref-dkd-knob{k}")));
        eprintln!("knob {knobs:?}: {} deviations above {TOL}; largest {:.3e} ({})", bad.len(), worst.0, worst.1);
        assert!(!bad.is_empty(), "the reference with {knobs:?} still matched: the comparison cannot see that defect");
    }
}
