//! End-to-end tests through the `harness` binary: tiny suites on digits and synthetic CIFAR data,
//! results layout, skipping finished runs, restarts, determinism, failure isolation, locks.

mod common;
use common::*;
use std::path::{Path, PathBuf};

const TINY: &str = r#"
[suite]
name = "tiny"
dataset = "digits"
seeds = [0]

[train]
epochs = 2
batch_size = 128
lr = 0.05
milestones = [1]

[teachers.t]
model = "cnn_tiny"
train = { epochs = 2 }

[grid]
pair = [{ teacher = "t", student = "mlp" }]
method = ["ce", "kd"]
"#;

fn suite_in(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("tiny.toml");
    std::fs::write(&p, body).unwrap();
    p
}

fn run_dirs(results: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(results.join("tiny/runs")).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn tiny_suite_writes_results_skips_finished_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let suite = suite_in(dir.path(), TINY);
    let s = suite.to_str().unwrap();
    let o = harness(&["run", s, "--results", "r1", "--device", "cpu"], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("3 finished now, 0 cached"), "{}", text(&o));
    let runs = run_dirs(&dir.path().join("r1"));
    assert_eq!(runs.len(), 3);
    let mut roles = vec![];
    for r in &runs {
        for f in ["config.json", "env.json", "metrics.csv", "summary.json", "log.txt"] {
            assert!(r.join(f).is_file(), "{} lacks {f}", r.display());
        }
        assert!(!r.join("lock").exists());
        let cfg = json(&r.join("config.json"));
        let sum = json(&r.join("summary.json"));
        let env = json(&r.join("env.json"));
        assert_eq!(cfg["id"], r.file_name().unwrap().to_str().unwrap());
        assert_eq!(sum["epochs"], 2);
        assert!(env["torch_version"].as_str().unwrap().starts_with("2.11"), "{env}");
        assert_eq!(env["dataset"]["fingerprint"], cfg["dataset"]["fingerprint"]);
        let top1 = sum["last_top1"].as_f64().unwrap();
        assert_eq!(sum["schema"], 2, "accuracies in percent");
        assert!((0.0..=100.0).contains(&top1));
        let rows = metrics_without_timing(&r.join("metrics.csv"));
        assert_eq!(rows.len(), 3, "header + 2 epochs");
        let role = cfg["role"].as_str().unwrap().to_string();
        match (role.as_str(), cfg["method"].as_str().unwrap()) {
            ("teacher", _) => {
                assert!(r.join("model.safetensors").is_file());
                assert!(sum["agreement"].is_null());
            }
            (_, "kd") => {
                assert!(!r.join("model.safetensors").exists());
                assert!(rows[0].contains(&"train_kd".to_string()) && rows[0].contains(&"agreement".to_string()));
                let a = sum["agreement"].as_f64().unwrap();
                assert!((0.0..=100.0).contains(&a));
                assert!(sum["pred_kl"].as_f64().unwrap() >= 0.0);
                assert!(sum["teacher_top1"].as_f64().unwrap() > 0.0);
            }
            _ => assert!(sum["agreement"].is_null()),
        }
        roles.push(role);
    }
    roles.sort();
    assert_eq!(roles, vec!["student", "student", "teacher"]);

    // Re-running skips every finished run and leaves its files untouched.
    let before: Vec<_> = runs.iter().map(|r| std::fs::metadata(r.join("summary.json")).unwrap().modified().unwrap()).collect();
    let o = harness(&["run", s, "--results", "r1", "--device", "cpu"], dir.path());
    assert!(o.status.success() && text(&o).contains("0 finished now, 3 cached"), "{}", text(&o));
    let after: Vec<_> = runs.iter().map(|r| std::fs::metadata(r.join("summary.json")).unwrap().modified().unwrap()).collect();
    assert_eq!(before, after);

    // An unfinished run (no summary) is trained again; the others stay cached.
    let student = runs.iter().find(|r| json(&r.join("config.json"))["method"] == "kd").unwrap();
    let old = metrics_without_timing(&student.join("metrics.csv"));
    std::fs::remove_file(student.join("summary.json")).unwrap();
    let o = harness(&["run", s, "--results", "r1", "--device", "cpu"], dir.path());
    assert!(o.status.success() && text(&o).contains("1 finished now, 2 cached"), "{}", text(&o));
    assert_eq!(metrics_without_timing(&student.join("metrics.csv")), old, "a restarted run reproduces its metrics");

    // Same seed and thread count, fresh results directory, two jobs at once: identical metrics.
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).to_string();
    let o = harness(&["run", s, "--results", "r2", "--device", "cpu", "--jobs", "2", "--threads", &threads], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    for r in &runs {
        let other = dir.path().join("r2/tiny/runs").join(r.file_name().unwrap());
        assert_eq!(metrics_without_timing(&r.join("metrics.csv")), metrics_without_timing(&other.join("metrics.csv")));
    }

    // `plan` lists the runs with their status.
    let o = harness(&["plan", s, "--results", "r1"], dir.path());
    assert!(o.status.success() && text(&o).contains("3 runs = 1 teachers + 2 students") && text(&o).contains("done"), "{}", text(&o));

    // The same weights as an external checkpoint teacher: evaluated once, hash in provenance.
    let teacher = runs.iter().find(|r| json(&r.join("config.json"))["role"] == "teacher").unwrap();
    let ck = dir.path().join("teacher.safetensors");
    std::fs::copy(teacher.join("model.safetensors"), &ck).unwrap();
    let ext = TINY
        .replace("[teachers.t]\nmodel = \"cnn_tiny\"\ntrain = { epochs = 2 }", "[teachers.t]\nmodel = \"cnn_tiny\"\ncheckpoint = \"teacher.safetensors\"")
        .replace("method = [\"ce\", \"kd\"]", "method = [\"kd\"]");
    assert!(ext.contains("checkpoint ="));
    let ext_suite = dir.path().join("ext.toml");
    std::fs::write(&ext_suite, &ext).unwrap();
    let o = harness(&["run", ext_suite.to_str().unwrap(), "--results", "r3", "--device", "cpu"], dir.path());
    assert!(o.status.success() && text(&o).contains("1 runs (0 teachers, 1 students)"), "{}", text(&o));
    let ext_run = run_dirs(&dir.path().join("r3"))[0].clone();
    let tsum = json(&teacher.join("summary.json"));
    assert_eq!(json(&ext_run.join("summary.json"))["teacher_top1"], tsum["last_top1"]);
    let blake = json(&ext_run.join("env.json"))["teacher_checkpoint"]["blake3"].as_str().unwrap().to_string();
    assert_eq!(blake.len(), 64);
    // Distilling from the checkpoint equals distilling from the suite's own teacher run.
    let kd_run = runs.iter().find(|r| json(&r.join("config.json"))["method"] == "kd").unwrap();
    assert_eq!(metrics_without_timing(&kd_run.join("metrics.csv")), metrics_without_timing(&ext_run.join("metrics.csv")));

    // `eval` reproduces the teacher's last-epoch accuracy from its saved weights.
    let npy = dir.path().join("logits.npy");
    let o = harness(
        &[
            "eval",
            "--model",
            "cnn_tiny",
            "--dataset",
            "digits",
            "--device",
            "cpu",
            "--checkpoint",
            teacher.join("model.safetensors").to_str().unwrap(),
            "--save-logits",
            npy.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let top1 = json(&teacher.join("summary.json"))["last_top1"].as_f64().unwrap();
    assert!(text(&o).contains(&format!("top-1 {:.2}%", top1)), "{} vs {top1}", text(&o));
    let bytes = std::fs::read(&npy).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    assert!(String::from_utf8_lossy(&bytes[..128]).replace(' ', "").contains("(360,10"), "npy header");
    assert!(String::from_utf8_lossy(&bytes[..128]).contains("<f4"), "float32");
    assert_eq!(bytes.len() - (bytes[8] as usize + 10), 360 * 10 * 4);
}

#[test]
fn bad_suites_exit_2_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let suite = suite_in(dir.path(), &TINY.replace("epochs = 2\nbatch_size", "epoch = 2\nbatch_size"));
    let o = harness(&["run", suite.to_str().unwrap(), "--results", "r"], dir.path());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("tiny.toml:8:") && text(&o).contains("did you mean `epochs`"), "{}", text(&o));
    assert!(!dir.path().join("r").exists(), "nothing written on a failed validation");
    let o = harness(&["run", "missing.toml"], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("missing.toml"));
    let o = harness(&["run", suite_in(dir.path(), TINY).to_str().unwrap(), "--device", "tpu"], dir.path());
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn a_failed_teacher_skips_its_students_and_the_rest_continues() {
    let dir = tempfile::tempdir().unwrap();
    // lr = 1e30 makes the teacher diverge (non-finite loss) in its first epoch.
    let body = TINY.replace("train = { epochs = 2 }", "train = { epochs = 2, lr = 1e30 }");
    let suite = suite_in(dir.path(), &body);
    let o = harness(&["run", suite.to_str().unwrap(), "--results", "r", "--device", "cpu"], dir.path());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("DIVERGED") && t.contains("diverged at epoch 1"), "{t}");
    assert!(t.contains("skip") && t.contains("did not finish"), "{t}");
    assert!(t.contains("1 finished now, 0 cached, 1 failed, 1 skipped"), "{t}");
}

#[test]
fn live_locks_are_respected_and_stale_ones_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let body = TINY.replace("method = [\"ce\", \"kd\"]", "method = [\"ce\"]");
    let suite = suite_in(dir.path(), &body);
    let s = suite.to_str().unwrap();
    let o = harness(&["plan", s], dir.path());
    let id = text(&o).lines().find(|l| l.contains(" student ")).unwrap().split_whitespace().next().unwrap().to_string();
    let run = dir.path().join("r/tiny/runs").join(&id);
    std::fs::create_dir_all(&run).unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    std::fs::write(run.join("lock"), format!("{} {host}\n", std::process::id())).unwrap();
    let o = harness(&["run", s, "--results", "r", "--device", "cpu"], dir.path());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("locked by another process"), "{}", text(&o));
    assert!(!run.join("summary.json").exists());
    std::fs::write(run.join("lock"), format!("999999999 {host}\n")).unwrap();
    let o = harness(&["run", s, "--results", "r", "--device", "cpu"], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    assert!(run.join("summary.json").exists() && !run.join("lock").exists());
}

#[test]
fn synthetic_cifar_trains_a_cifar_resnet_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let o = harness(&["data", "synth", "--out", "synth", "--classes", "10", "--train", "256", "--test", "64", "--noise", "20"], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    assert!(dir.path().join("synth/cifar-10-batches-bin/data_batch_5.bin").is_file());
    let body = r#"
[suite]
name = "tiny"
dataset = "cifar10"
[train]
epochs = 2
batch_size = 64
milestones = []
[grid]
pair = [{ teacher = "resnet8", student = "resnet8", method = "kd" }]
"#;
    let suite = suite_in(dir.path(), body);
    let o = harness(&["run", suite.to_str().unwrap(), "--results", "r", "--data-dir", "synth", "--device", "cpu"], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let runs = run_dirs(&dir.path().join("r"));
    assert_eq!(runs.len(), 2);
    for r in runs {
        let s = json(&r.join("summary.json"));
        assert!(s["param_count"].as_i64().unwrap() == 78_042, "resnet8 with 10 classes: {s}");
    }
}

#[test]
fn a_takd_chain_trains_the_assistant_before_the_student() {
    let dir = tempfile::tempdir().unwrap();
    let body = "[suite]\nname = \"tiny\"\ndataset = \"digits\"\n[train]\nepochs = 1\nbatch_size = 128\nmilestones = []\n[grid]\npair = [{ chain = [\"cnn_small\", \"cnn_tiny\"], student = \"mlp\", method = \"kd\" }]\n";
    let suite = suite_in(dir.path(), body);
    let o = harness(&["run", suite.to_str().unwrap(), "--results", "r", "--devices", "cpu"], dir.path());
    let t = text(&o);
    assert!(o.status.success() && t.contains("3 finished now"), "{t}");
    let (top, ta, st) = (t.find("done  ").unwrap(), t.find("cnn_tiny kd <- cnn_small").unwrap(), t.find("mlp kd <- cnn_tiny").unwrap());
    assert!(top < ta && ta < st, "{t}");
    let runs = run_dirs(&dir.path().join("r"));
    let ta_dir = runs.iter().find(|r| json(&r.join("config.json"))["model"] == "cnn_tiny").unwrap();
    assert!(ta_dir.join("model.safetensors").is_file(), "the assistant's weights are kept for its student");
    assert!(json(&ta_dir.join("summary.json"))["agreement"].is_number());
}

#[test]
fn a_pytorch_checkpoint_converts_and_loads_as_a_teacher() {
    let Some(py) = venv_python() else {
        eprintln!("SKIPPED: no ~/.cache/kd-harness/venv python (LIBTORCH set by the user); the converter needs torch");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Weights from a harness model, re-saved the way mdistiller does: {"model": sd, "epoch", ...}
    // with num_batches_tracked entries and a DataParallel prefix.
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let _ = (harness::models::find("resnet8").unwrap().build)(&vs.root(), harness::models::ModelCfg { in_channels: 3, num_classes: 10 });
    harness::models::checkpoint::save_atomic(&vs, &dir.path().join("orig.safetensors")).unwrap();
    let make = r#"
import sys, torch
sys.path.insert(0, sys.argv[3])
import st
sd = {}
for k, v in st.load(sys.argv[1]).items():
    sd['module.' + k] = v
    if k.endswith('running_var'):
        sd['module.' + k[:-len('running_var')] + 'num_batches_tracked'] = torch.tensor(7)
torch.save({'model': sd, 'epoch': 240, 'best_acc': torch.tensor(70.0)}, sys.argv[2])
"#;
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/reference");
    let st = std::process::Command::new(&py)
        .arg("-c")
        .arg(make)
        .arg(dir.path().join("orig.safetensors"))
        .arg(dir.path().join("ckpt.pth"))
        .arg(&reference)
        .status()
        .unwrap();
    assert!(st.success());
    let conv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pth_to_safetensors.py");
    let o = std::process::Command::new(&py).arg(&conv).arg(dir.path().join("ckpt.pth")).arg(dir.path().join("conv.safetensors")).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let mut vs2 = tch::nn::VarStore::new(tch::Device::Cpu);
    let _ = (harness::models::find("resnet8").unwrap().build)(&vs2.root(), harness::models::ModelCfg { in_channels: 3, num_classes: 10 });
    harness::models::checkpoint::load_strict(&mut vs2, &dir.path().join("conv.safetensors"), "resnet8").unwrap();
    let (a, b) = (vs.variables(), vs2.variables());
    assert_eq!(a.len(), b.len());
    for (k, t) in a {
        assert!(t.equal(&b[&k]), "{k} differs after the round trip");
    }
    // A non-tensor pickle needs --trust-pickle, and the error says so.
    let bad = r#"
import argparse, sys, torch
torch.save({'model': {}, 'opt': argparse.Namespace(lr=0.05)}, sys.argv[1])
"#;
    assert!(std::process::Command::new(&py).arg("-c").arg(bad).arg(dir.path().join("ns.pth")).status().unwrap().success());
    let o = std::process::Command::new(&py).arg(&conv).arg(dir.path().join("ns.pth")).arg(dir.path().join("x.safetensors")).output().unwrap();
    assert!(!o.status.success() && text(&o).contains("--trust-pickle"), "{}", text(&o));
}
