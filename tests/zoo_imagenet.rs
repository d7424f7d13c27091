//! The ImageNet models: torchvision's ResNet-18/34/50 and mdistiller's MobileNetV1. Parameter
//! counts against the published numbers, state-dict names, forward shapes at 224×224, and
//! logits equal to PyTorch reference definitions (tests/fixtures/imagenet_reference.py) for the
//! same weights, when the harness venv's python is there.

mod common;
use common::venv_python;

use std::path::Path;

use harness::models::{self, ModelCfg};
use tch::{Device, Kind, Tensor, nn};

const IMAGENET: ModelCfg = ModelCfg { in_channels: 3, num_classes: 1000 };

fn build(name: &str, cfg: ModelCfg) -> (nn::VarStore, Box<dyn models::Model>) {
    let vs = nn::VarStore::new(Device::Cpu);
    let m = (models::find(name).unwrap_or_else(|| panic!("{name} is not registered")).build)(&vs.root(), cfg);
    (vs, m)
}

#[test]
fn parameter_counts_are_the_published_ones() {
    // torchvision's documented counts; mdistiller's MobileNetV1 counted from its definition.
    for (name, n) in [("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032), ("mobilenetv1", 4_231_976)] {
        assert_eq!(models::count_params(models::find(name).unwrap(), IMAGENET), n, "{name}");
        assert_eq!(models::find(name).unwrap().input, models::Input::Native(3, 224, 224), "{name}");
    }
}

#[test]
fn state_dict_names_are_torchvisions_and_mdistillers() {
    let checks: &[(&str, &[(&str, &[i64])])] = &[
        (
            "resnet18",
            &[
                ("conv1.weight", &[64, 3, 7, 7]),
                ("layer2.0.downsample.0.weight", &[128, 64, 1, 1]),
                ("layer4.1.bn2.running_var", &[512]),
                ("fc.weight", &[1000, 512]),
            ],
        ),
        ("resnet34", &[("layer3.5.conv2.weight", &[256, 256, 3, 3]), ("fc.bias", &[1000])]),
        (
            "resnet50",
            &[
                ("layer1.0.downsample.0.weight", &[256, 64, 1, 1]),
                ("layer4.2.conv3.weight", &[2048, 512, 1, 1]),
                ("layer2.0.conv2.weight", &[128, 128, 3, 3]),
                ("fc.weight", &[1000, 2048]),
            ],
        ),
        (
            "mobilenetv1",
            &[
                ("model.0.0.weight", &[32, 3, 3, 3]),
                ("model.0.1.running_mean", &[32]),
                ("model.1.0.weight", &[32, 1, 3, 3]),
                ("model.1.3.weight", &[64, 32, 1, 1]),
                ("model.13.4.bias", &[1024]),
                ("fc.weight", &[1000, 1024]),
            ],
        ),
    ];
    for (model, expected) in checks {
        let (vs, _) = build(model, IMAGENET);
        let k = vs.variables();
        for (name, shape) in expected.iter() {
            let t = k.get(*name).unwrap_or_else(|| panic!("{model} lacks {name}"));
            assert_eq!(t.size(), shape.to_vec(), "{model}.{name}");
        }
    }
    // resnet18/34 layer1 keeps identity shortcuts; resnet50's first block projects 64 -> 256.
    assert!(!build("resnet34", IMAGENET).0.variables().contains_key("layer1.0.downsample.0.weight"));
}

#[test]
fn forward_shapes_and_taps_at_224() {
    let x = Tensor::zeros([2, 3, 224, 224], (Kind::Float, Device::Cpu));
    let cfg = ModelCfg { in_channels: 3, num_classes: 10 };
    for (name, feats, pooled) in [
        ("resnet18", vec![vec![64, 112, 112], vec![64, 56, 56], vec![128, 28, 28], vec![256, 14, 14], vec![512, 7, 7]], 512),
        ("resnet50", vec![vec![64, 112, 112], vec![256, 56, 56], vec![512, 28, 28], vec![1024, 14, 14], vec![2048, 7, 7]], 2048),
        ("mobilenetv1", vec![vec![128, 56, 56], vec![256, 28, 28], vec![512, 14, 14], vec![1024, 7, 7]], 1024),
    ] {
        let (_vs, m) = build(name, cfg);
        let out = tch::no_grad(|| m.forward(&x, false));
        assert_eq!(out.logits.size(), vec![2, 10], "{name}");
        assert_eq!(out.pooled.size(), vec![2, pooled], "{name}");
        let got: Vec<Vec<i64>> = out.feats.iter().map(|f| f.size()[1..].to_vec()).collect();
        assert_eq!(got, feats, "{name} feats");
        let pre: Vec<Vec<i64>> = out.preact.iter().map(|f| f.size()[1..].to_vec()).collect();
        assert_eq!(pre, feats, "{name} preact");
        assert!(tch::no_grad(|| m.head(&out.pooled)).allclose(&out.logits, 1e-5, 1e-6, false), "{name}: head(pooled) != logits");
    }
}

#[test]
fn preact_taps_and_forward_tail_of_the_imagenet_resnet() {
    tch::manual_seed(0);
    let cfg = ModelCfg { in_channels: 3, num_classes: 10 };
    let (_vs, m) = build("resnet18", cfg);
    let x = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu));
    let out = tch::no_grad(|| m.forward(&x, false));
    for i in 0..out.feats.len() {
        assert!(out.preact[i].relu().allclose(&out.feats[i], 1e-6, 1e-6, false), "relu(preact[{i}]) != feats[{i}]");
        assert!(out.preact[i].min().double_value(&[]) < 0.0, "preact[{i}] has no negatives");
        let z = tch::no_grad(|| m.forward_tail(&out.feats[i], i, false)).unwrap();
        assert!(z.allclose(&out.logits, 1e-4, 1e-5, false), "forward_tail from stage {i}");
    }
    let (_vs, mv1) = build("mobilenetv1", cfg);
    let out = tch::no_grad(|| mv1.forward(&x, false));
    for i in 0..out.feats.len() {
        assert!(out.preact[i].relu().allclose(&out.feats[i], 1e-6, 1e-6, false), "mobilenetv1: relu(preact[{i}]) != feats[{i}]");
    }
}

/// Random weights with non-trivial BN statistics, so eval-mode BN is exercised.
fn randomise(vs: &nn::VarStore) {
    tch::no_grad(|| {
        for (k, mut v) in vs.variables() {
            if k.ends_with("running_var") {
                v.copy_(&(Tensor::rand_like(&v) + 0.5));
            } else if k.ends_with("running_mean") || k.ends_with("bn1.bias") || k.ends_with(".1.bias") {
                v.copy_(&(Tensor::randn_like(&v) * 0.1));
            } else if k.ends_with("weight") && v.dim() == 1 {
                v.copy_(&(Tensor::rand_like(&v) + 0.5));
            }
        }
    });
}

/// Runs the PyTorch reference on `weights` and `x`; returns its logits.
pub fn reference_logits(py: &Path, model: &str, classes: i64, weights: &Path, x: &Tensor, dir: &Path) -> Tensor {
    let inp = dir.join(format!("{model}.input.safetensors"));
    Tensor::write_safetensors(&[("x", x)], &inp).unwrap();
    let out = dir.join(format!("{model}.logits.f32"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/imagenet_reference.py");
    let o = std::process::Command::new(py).arg(&script).arg(model).arg(classes.to_string()).arg(weights).arg(&inp).arg(&out).output().unwrap();
    assert!(o.status.success(), "{model}: reference failed:\n{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(&out).unwrap();
    let v: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Tensor::from_slice(&v).view([x.size()[0], classes])
}

#[test]
fn logits_equal_the_pytorch_reference_for_the_same_weights() {
    let Some(py) = venv_python() else {
        eprintln!("SKIPPED: no ~/.cache/kd-harness/venv python with torch; the reference comparison needs it");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    tch::manual_seed(1);
    // 112×112 keeps the ResNets fast; MobileNetV1's AvgPool2d(7) in the reference needs 224.
    for (name, hw) in [("resnet18", 112), ("resnet34", 112), ("resnet50", 112), ("mobilenetv1", 224)] {
        let cfg = ModelCfg { in_channels: 3, num_classes: 7 };
        let (vs, m) = build(name, cfg);
        randomise(&vs);
        let w = dir.path().join(format!("{name}.safetensors"));
        vs.save(&w).unwrap();
        let x = Tensor::randn([2, 3, hw, hw], (Kind::Float, Device::Cpu));
        let ours = tch::no_grad(|| m.forward(&x, false)).logits;
        let theirs = reference_logits(&py, name, 7, &w, &x, dir.path());
        let diff = (&ours - &theirs).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "{name}: max |logit difference| {diff} (ours {ours}, reference {theirs})");
        assert!(ours.abs().max().double_value(&[]) > 1e-3, "{name}: degenerate logits");
    }
}
