//! mdistiller's released CIFAR-100 teachers: scripts/convert_released_teachers.sh turns a
//! `cifar_teachers.tar` (members `cifar_teachers/<model>_vanilla/ckpt_epoch_240.pth`, each
//! `torch.save({"model": state_dict, ...})`) into state dicts the harness loads strictly, and
//! suites/cifar100_released.toml points its teachers at them. The tar here is synthetic, built in
//! the released format from the PyTorch reference model.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{harness, text};
use harness::models::{self, ModelCfg};
use tch::{Device, nn};

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p)
}

/// Writes `dir/cifar_teachers.tar` holding `model`'s released-format checkpoint built from the
/// reference definition of `arch` (a different architecture plants a wrong checkpoint), and
/// `dir/orig.safetensors`, its state dict without `num_batches_tracked`.
fn released_tar(py: &Path, dir: &Path, model: &str, arch: &str) {
    let make = r#"
import os, sys, tarfile, torch
sys.path.insert(0, sys.argv[1])
import models, st
dir, model, arch = sys.argv[2], sys.argv[3], sys.argv[4]
torch.manual_seed(0)
m = models.build(arch, 100)
with torch.no_grad():  # not the init: any weights, BN variances positive
    for k, v in m.state_dict().items():
        if v.is_floating_point():
            v.copy_(torch.rand_like(v) + 0.5 if k.endswith("running_var") else torch.randn_like(v) * 0.1)
sd = m.state_dict()
os.makedirs(f"{dir}/cifar_teachers/{model}_vanilla", exist_ok=True)
torch.save({"epoch": 240, "model": sd, "accuracy": torch.tensor(72.34), "optimizer": {"state": {}, "param_groups": [{"lr": 5e-4}]}},
           f"{dir}/cifar_teachers/{model}_vanilla/ckpt_epoch_240.pth")
st.save({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, f"{dir}/orig.safetensors")
with tarfile.open(f"{dir}/cifar_teachers.tar", "w") as t:
    t.add(f"{dir}/cifar_teachers", arcname="cifar_teachers")
"#;
    let o = Command::new(py).arg("-c").arg(make).arg(repo("scripts/reference")).arg(dir).args([model, arch]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

fn convert(args: &[&Path], models: &[&str]) -> std::process::Output {
    Command::new(repo("scripts/convert_released_teachers.sh")).args(args).args(models).output().unwrap()
}

#[test]
fn released_teachers_convert_load_strictly_and_evaluate() {
    let Some(py) = common::venv_python() else {
        eprintln!("SKIPPED: no ~/.cache/kd-harness/venv python; the conversion needs torch");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    released_tar(&py, d, "resnet56", "resnet56");
    let (tar, out) = (d.join("cifar_teachers.tar"), d.join("out"));
    let o = convert(&[&tar, &out], &["resnet56"]);
    assert!(o.status.success() && text(&o).contains("loads strictly as resnet56"), "{}", text(&o));
    let ck = out.join("resnet56.safetensors");

    // The harness's strict load gives back exactly the checkpoint's tensors.
    let mut vs = nn::VarStore::new(Device::Cpu);
    let _m = (models::find("resnet56").unwrap().build)(&vs.root(), ModelCfg { in_channels: 3, num_classes: 100 });
    models::checkpoint::load_strict(&mut vs, &ck, "resnet56").unwrap();
    let orig: std::collections::HashMap<String, tch::Tensor> = tch::Tensor::read_safetensors(d.join("orig.safetensors")).unwrap().into_iter().collect();
    let vars = vs.variables();
    assert_eq!(vars.len(), orig.len());
    for (k, t) in &vars {
        assert!(t.equal(&orig[k]), "{k} differs after the conversion");
    }
    // ... and `harness eval` evaluates it on (fixture-sized) CIFAR-100.
    let fixtures = repo("tests/fixtures");
    let o = harness(&["eval", "--model", "resnet56", "--dataset", "cifar100", "--device", "cpu", "--data-dir", fixtures.to_str().unwrap(), "--checkpoint", ck.to_str().unwrap()], d);
    assert!(o.status.success() && text(&o).contains("top-1"), "{}", text(&o));

    // The unpacked folder (or its parent) converts the same.
    let o = convert(&[&d.join("cifar_teachers"), &d.join("out2")], &["resnet56"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(&ck).unwrap(), std::fs::read(d.join("out2/resnet56.safetensors")).unwrap());

    // A member the tar lacks, and a checkpoint of another architecture, stop with exit 2.
    let o = convert(&[&tar, &d.join("out3")], &["resnet56", "vgg13"]);
    assert!(o.status.code() == Some(2) && text(&o).contains("cifar_teachers/vgg13_vanilla/ckpt_epoch_240.pth"), "{}", text(&o));
    let bad = d.join("bad");
    std::fs::create_dir(&bad).unwrap();
    released_tar(&py, &bad, "resnet56", "resnet20");
    let o = convert(&[&bad.join("cifar_teachers.tar"), &bad.join("out")], &["resnet56"]);
    assert!(o.status.code() == Some(2) && text(&o).contains("is not a 100-class resnet56"), "{}", text(&o));
}

/// The suite names the converted files; without them `plan` waits for them (exit 0) and `run`
/// stops with exit 2 naming the file.
#[test]
fn released_suite_points_at_the_converted_teachers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("suites")).unwrap();
    let suite = d.join("suites/cifar100_released.toml");
    std::fs::copy(repo("suites/cifar100_released.toml"), &suite).unwrap();
    let data = repo("tests/fixtures");
    let plan = || harness(&["plan", suite.to_str().unwrap(), "--data-dir", data.to_str().unwrap()], d);
    // Without them `plan` shows the table anyway (provisional ids) and says how to get them;
    // `run` refuses (exit 2) naming the file.
    let o = plan();
    let t = text(&o);
    assert!(o.status.success() && t.contains("waiting for teacher `resnet56`") && t.contains("convert_released_teachers.sh"), "{t}");
    assert!(t.contains("265 runs") && t.contains("no teacher"), "{t}");
    let o = harness(&["run", suite.to_str().unwrap(), "--data-dir", data.to_str().unwrap(), "--results", "r", "--dry-run"], d);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("teachers/mdistiller/") && text(&o).contains("checkpoint"), "{}", text(&o));

    // With the six files there (fresh weights of each model: plan validates them completely),
    // the table plans: 11 pairs × 5 methods × 5 seeds, no teacher runs, the 45 ce students shared
    // by pairs with one student.
    for t in ["resnet56", "resnet110", "resnet32x4", "wrn_40_2", "vgg13", "ResNet50"] {
        common::write_checkpoint(t, 100, &d.join(format!("teachers/mdistiller/{t}.safetensors")));
    }
    let o = plan();
    assert!(o.status.success() && text(&o).contains("265 runs = 0 teachers + 265 students"), "{}", text(&o));
}
