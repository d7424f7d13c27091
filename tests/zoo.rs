//! The CIFAR model zoo: parameter counts and state-dict names of the RepDistiller/mdistiller
//! definitions (anchors.md §4), forward shapes and the feature taps every model exposes, at
//! 32×32 and at Tiny-ImageNet's 64×64 (mdistiller's Tiny-ImageNet setups use the CIFAR nets).

mod common;

use std::collections::HashMap;

use harness::models::{self, Input, ModelCfg};
use tch::{Device, Kind, Tensor, nn};

const CFG: ModelCfg = ModelCfg { in_channels: 3, num_classes: 100 };
/// Tiny-ImageNet's classes.
const TINY: ModelCfg = ModelCfg { in_channels: 3, num_classes: 200 };

#[test]
fn parameter_counts_match_the_reference_definitions() {
    for (name, n) in [
        ("wrn_16_1", 180_916),
        ("wrn_16_2", 703_284),
        ("wrn_40_1", 569_780),
        ("wrn_40_2", 2_255_156),
        ("vgg8", 3_965_028),
        ("vgg11", 9_277_284),
        ("vgg13", 9_462_180),
        ("vgg16", 14_774_436),
        ("vgg19", 20_086_692),
        ("MobileNetV2", 812_836),
        ("ShuffleV1", 949_258),
        ("ShuffleV2", 1_355_528),
        ("ResNet50", 23_705_252),
        ("ResNet18", 11_220_132),
        // PyTorch's count of mdistiller's mv2_tinyimagenet.py MobileNetV2(num_classes=100).
        ("mobilenetv2_tinyimagenet", 2_369_380),
    ] {
        assert_eq!(models::count_params(models::find(name).unwrap(), CFG), n, "{name}");
    }
    // ... and of MobileNetV2(num_classes=200), the Tiny-ImageNet student.
    assert_eq!(models::count_params(models::find("mobilenetv2_tinyimagenet").unwrap(), TINY), 2_497_480);
}

fn keys(name: &str) -> HashMap<String, Tensor> {
    let vs = nn::VarStore::new(Device::Cpu);
    let _m = (models::find(name).unwrap().build)(&vs.root(), CFG);
    vs.variables()
}

#[test]
fn state_dict_names_and_shapes_are_pytorchs() {
    let checks: &[(&str, &[(&str, &[i64])])] = &[
        (
            "wrn_40_2",
            &[
                ("conv1.weight", &[16, 3, 3, 3]),
                ("block1.layer.0.convShortcut.weight", &[32, 16, 1, 1]),
                ("block3.layer.5.conv2.weight", &[128, 128, 3, 3]),
                ("bn1.running_var", &[128]),
                ("fc.weight", &[100, 128]),
            ],
        ),
        (
            "vgg8",
            &[
                ("block0.0.weight", &[64, 3, 3, 3]),
                ("block0.0.bias", &[64]),
                ("block0.1.running_mean", &[64]),
                ("block4.0.weight", &[512, 512, 3, 3]),
                ("classifier.weight", &[100, 512]),
            ],
        ),
        ("vgg13", &[("block0.3.weight", &[64, 64, 3, 3]), ("block0.4.weight", &[64]), ("block4.3.bias", &[512])]),
        (
            "MobileNetV2",
            &[
                ("conv1.0.weight", &[16, 3, 3, 3]),
                ("blocks.0.0.conv.0.weight", &[16, 16, 1, 1]),
                ("blocks.1.0.conv.3.weight", &[48, 1, 3, 3]),
                ("blocks.6.0.conv.7.running_var", &[160]),
                ("conv2.0.weight", &[1280, 160, 1, 1]),
                ("classifier.0.weight", &[100, 1280]),
            ],
        ),
        (
            "ShuffleV1",
            &[
                ("conv1.weight", &[24, 3, 1, 1]),
                ("layer1.0.conv1.weight", &[54, 24, 1, 1]),
                ("layer1.1.conv1.weight", &[60, 80, 1, 1]),
                ("linear.weight", &[100, 960]),
            ],
        ),
        (
            "ShuffleV2",
            &[
                ("layer1.0.conv1.weight", &[24, 1, 3, 3]),
                ("layer1.0.conv5.weight", &[58, 58, 1, 1]),
                ("layer1.1.conv2.weight", &[58, 1, 3, 3]),
                ("conv2.weight", &[1024, 464, 1, 1]),
                ("linear.weight", &[100, 1024]),
            ],
        ),
        ("ResNet50", &[("layer1.0.shortcut.0.weight", &[256, 64, 1, 1]), ("layer4.2.conv3.weight", &[2048, 512, 1, 1]), ("linear.weight", &[100, 2048])]),
        ("ResNet18", &[("layer2.0.shortcut.1.running_mean", &[128]), ("layer4.1.conv2.weight", &[512, 512, 3, 3])]),
        (
            "mobilenetv2_tinyimagenet",
            &[
                ("pre.0.weight", &[32, 3, 1, 1]),
                ("pre.0.bias", &[32]),
                ("pre.1.running_mean", &[32]),
                ("stage1.residual.0.weight", &[32, 32, 1, 1]),
                ("stage1.residual.3.weight", &[32, 1, 3, 3]),
                ("stage1.residual.6.bias", &[16]),
                ("stage2.0.residual.0.weight", &[96, 16, 1, 1]),
                ("stage2.1.residual.7.running_var", &[24]),
                ("stage6.2.residual.3.weight", &[960, 1, 3, 3]),
                ("stage7.residual.6.weight", &[320, 960, 1, 1]),
                ("conv1.0.weight", &[1280, 320, 1, 1]),
                ("conv1.1.weight", &[1280]),
                ("conv2.weight", &[100, 1280, 1, 1]),
                ("conv2.bias", &[100]),
            ],
        ),
    ];
    for (model, expected) in checks {
        let k = keys(model);
        for (name, shape) in expected.iter() {
            let t = k.get(*name).unwrap_or_else(|| panic!("{model} lacks {name}"));
            assert_eq!(t.size(), shape.to_vec(), "{model}.{name}");
        }
    }
    // wrn_*_1 keeps the identity shortcut in block1 (16 -> 16 channels).
    assert!(!keys("wrn_16_1").contains_key("block1.layer.0.convShortcut.weight"));
}

#[test]
fn every_model_runs_and_exposes_its_taps() {
    for e in models::entries().filter(|e| e.input == Input::Native(3, 32, 32)) {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = (e.build)(&vs.root(), CFG);
        let out = tch::no_grad(|| m.forward(&Tensor::zeros([2, 3, 32, 32], (Kind::Float, Device::Cpu)), false));
        assert_eq!(out.logits.size(), vec![2, 100], "{}", e.name);
        assert!(out.feats.len() >= 4 && out.feats.iter().all(|f| f.dim() == 4), "{}: {} taps", e.name, out.feats.len());
        assert_eq!(out.pooled.size()[0], 2, "{}", e.name);
        let head = tch::no_grad(|| m.head(&out.pooled));
        assert!(head.allclose(&out.logits, 1e-5, 1e-6, false), "{}: head(pooled) != logits", e.name);
        assert_eq!(out.feats.len(), out.preact.len(), "{}", e.name);
    }
}

/// Tiny-ImageNet (3×64×64, 200 classes) through every CIFAR-registered model and mdistiller's
/// Tiny-ImageNet MobileNetV2: they pool globally, so the suite check lets them run there.
#[test]
fn cifar_models_run_at_tiny_imagenet_size() {
    let tiny = harness::data::info("tiny-imagenet").unwrap();
    assert_eq!((tiny.shape, tiny.classes), ((3, 64, 64), TINY.num_classes));
    let x = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu));
    let cifar: Vec<_> = models::entries().filter(|e| e.input == Input::Native(3, 32, 32)).collect();
    assert!(cifar.len() >= 20);
    for e in cifar.into_iter().chain(models::find("mobilenetv2_tinyimagenet")) {
        assert!(e.input.accepts(tiny.shape), "{}: {}", e.name, e.input);
        let vs = nn::VarStore::new(Device::Cpu);
        let m = (e.build)(&vs.root(), TINY);
        let out = tch::no_grad(|| m.forward(&x, false));
        assert_eq!(out.logits.size(), vec![2, 200], "{}", e.name);
        assert_eq!(out.pooled.dim(), 2, "{}", e.name);
        assert!(tch::no_grad(|| m.head(&out.pooled)).allclose(&out.logits, 1e-5, 1e-6, false), "{}: head(pooled) != logits", e.name);
        assert!(out.feats.len() >= 4 && out.feats.len() == out.preact.len(), "{}", e.name);
        // The last tap is a map larger than at 32×32 (not pooled away by a fixed window).
        let last = out.feats.last().unwrap().size();
        assert!(last.len() == 4 && last[2] >= 2, "{}: last tap {last:?}", e.name);
    }
}

/// Only a fixed-size model is refused, on the spatial size alone (channels follow the dataset).
#[test]
fn only_fixed_inputs_refuse_other_sizes() {
    assert!(Input::Native(3, 32, 32).accepts((3, 64, 64)) && Input::Native(3, 32, 32).accepts((1, 8, 8)) && Input::Any.accepts((3, 224, 224)));
    assert!(!Input::Fixed(3, 32, 32).accepts((3, 64, 64)) && Input::Fixed(3, 32, 32).accepts((1, 32, 32)));
    assert_eq!([Input::Any, Input::Native(3, 32, 32), Input::Fixed(3, 32, 32)].map(|i| i.to_string()), ["any", "3x32x32", "3x32x32 only"]);
    assert_eq!(models::find("mobilenetv2_tinyimagenet").unwrap().input, Input::Native(3, 64, 64));
}

#[test]
fn forward_tail_continues_the_forward_from_a_stage() {
    tch::manual_seed(0);
    for (name, side) in [("resnet8", 32), ("wrn_16_1", 32), ("ResNet18", 32), ("resnet8", 64), ("wrn_16_1", 64), ("mobilenetv2_tinyimagenet", 64)] {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = (models::find(name).unwrap().build)(&vs.root(), CFG);
        let x = Tensor::randn([2, 3, side, side], (Kind::Float, Device::Cpu));
        let out = tch::no_grad(|| m.forward(&x, false));
        for stage in 0..out.feats.len() {
            let z = tch::no_grad(|| m.forward_tail(&out.feats[stage], stage, false)).unwrap();
            assert!(z.allclose(&out.logits, 1e-4, 1e-5, false), "{name} at {side}x{side} from stage {stage}");
        }
    }
    let vs = nn::VarStore::new(Device::Cpu);
    let vgg = (models::find("vgg8").unwrap().build)(&vs.root(), CFG);
    assert!(vgg.forward_tail(&Tensor::zeros([1, 64, 32, 32], (Kind::Float, Device::Cpu)), 1, false).is_none());
}

#[test]
fn preact_taps_are_repdistillers() {
    tch::manual_seed(0);
    let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
    let run = |name: &str| {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = (models::find(name).unwrap().build)(&vs.root(), CFG);
        tch::no_grad(|| m.forward(&x, true))
    };
    // WRN: stage sums through the BN that follows them (train mode: per-channel batch mean 0); the
    // last one, activated and pooled, is the pooled vector.
    let out = run("wrn_16_1");
    assert!(out.preact[0].equal(&out.feats[0]));
    for i in 1..4 {
        assert_eq!(out.preact[i].size(), out.feats[i].size());
        let mean = out.preact[i].mean_dim([0i64, 2, 3].as_slice(), false, Kind::Float).abs().max().double_value(&[]);
        assert!(mean < 1e-4, "wrn preact[{i}] is not batch-normalised: {mean}");
        assert!(!out.preact[i].allclose(&out.feats[i], 1e-3, 1e-3, false), "wrn preact[{i}] == feats[{i}]");
    }
    assert!(out.preact[3].relu().mean_dim([2i64, 3].as_slice(), false, Kind::Float).allclose(&out.pooled, 1e-5, 1e-6, false));
    // VGG, ResNet18/50, ShuffleV1/V2: the stem tap is the activated one, later taps are the sums
    // before each stage's final ReLU.
    for name in ["vgg8", "ResNet18", "ShuffleV1"] {
        let out = run(name);
        assert!(out.preact[0].equal(&out.feats[0]), "{name}: preact[0] != feats[0]");
        for i in 1..out.feats.len() {
            assert!(out.preact[i].relu().allclose(&out.feats[i], 1e-6, 1e-6, false), "{name}: relu(preact[{i}]) != feats[{i}]");
            assert!(out.preact[i].min().double_value(&[]) < 0.0, "{name}: preact[{i}] has no negatives");
        }
    }
}

/// Same weights and input → the same logits, pooled vector and feature taps (post- and
/// pre-activation) as independent PyTorch definitions of the architectures
/// (scripts/reference/models.py), BN in eval mode with non-trivial statistics. Returns what the
/// reference computed per model; `None` without the venv's torch.
fn matches_reference(names: &[&str], cfg: ModelCfg, x: &Tensor) -> Option<HashMap<String, HashMap<String, Tensor>>> {
    let Some(py) = common::venv_python() else {
        eprintln!("SKIPPED: no ~/.cache/kd-harness/venv python (LIBTORCH set by the user); the reference needs torch");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/reference/forward.py");
    let xp = dir.path().join("x.safetensors");
    Tensor::write_safetensors(&[("x", x)], &xp).unwrap();
    let mut all = HashMap::new();
    for &name in names {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = (models::find(name).unwrap().build)(&vs.root(), cfg);
        tch::no_grad(|| {
            for (k, mut v) in vs.variables() {
                let r = Tensor::rand_like(&v);
                // 1-d weights are BN scales in every zoo model.
                if k.ends_with("running_var") || k.ends_with("weight") && v.dim() == 1 {
                    v.copy_(&(r * 1.0 + 0.5));
                } else if k.ends_with("running_mean") || (v.dim() == 1 && k.ends_with("bias")) {
                    v.copy_(&((r - 0.5) * 0.2));
                }
            }
        });
        let wp = dir.path().join(format!("{name}.safetensors"));
        models::checkpoint::save_atomic(&vs, &wp).unwrap();
        let op = dir.path().join(format!("{name}.out.safetensors"));
        let o = std::process::Command::new(&py).arg(&script).args([name, &cfg.num_classes.to_string()]).arg(&wp).arg(&xp).arg(&op).output().unwrap();
        assert!(o.status.success(), "{name}: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        let want: HashMap<String, Tensor> = Tensor::read_safetensors(&op).unwrap().into_iter().collect();
        let out = tch::no_grad(|| m.forward(x, false));
        let side = x.size()[2];
        let check = |what: &str, got: &Tensor, want: &Tensor| {
            assert_eq!(got.size(), want.size(), "{name} at {side}x{side} {what}: shape");
            let scale = 1.0 + want.abs().max().double_value(&[]);
            let err = (got - want).abs().max().double_value(&[]);
            assert!(err <= 1e-4 * scale, "{name} at {side}x{side} {what}: max |Δ| = {err} (scale {scale})");
        };
        check("logits", &out.logits, &want["logits"]);
        assert_eq!(out.logits.size()[1], cfg.num_classes);
        check("pooled", &out.pooled, &want["pooled"]);
        assert_eq!(out.feats.len(), want.keys().filter(|k| k.starts_with("feat.")).count(), "{name}: number of feature taps");
        for (i, f) in out.feats.iter().enumerate() {
            check(&format!("feat.{i}"), f, &want[&format!("feat.{i}")]);
        }
        for (i, f) in out.preact.iter().enumerate() {
            check(&format!("preact.{i}"), f, &want[&format!("preact.{i}")]);
        }
        all.insert(name.to_string(), want);
    }
    Some(all)
}

#[test]
fn forward_matches_pytorch_reference_definitions() {
    let names = [
        "resnet8",
        "resnet20",
        "resnet8x4",
        "resnet32x4",
        "wrn_16_1",
        "wrn_40_2",
        "vgg8",
        "vgg13",
        "MobileNetV2",
        "ShuffleV1",
        "ShuffleV2",
        "ResNet18",
        "ResNet50",
    ];
    tch::manual_seed(7);
    matches_reference(&names, CFG, &Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu)));
}

/// Tiny-ImageNet's 64×64 with 200 classes: mdistiller's teacher (ResNet18) and students
/// (ShuffleV2, its own MobileNetV2), and other CIFAR students; VGG adds its 64×64-only `pool3`.
#[test]
fn forward_at_64x64_matches_pytorch_reference_definitions() {
    let names = ["ResNet18", "ShuffleV2", "mobilenetv2_tinyimagenet", "MobileNetV2", "resnet8x4", "wrn_16_2", "vgg8", "ShuffleV1"];
    tch::manual_seed(11);
    // Scaled so that ReLU6 clamps in mobilenetv2_tinyimagenet (checked below).
    let x = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu)) * 8.0;
    let Some(want) = matches_reference(&names, TINY, &x) else { return };
    let f0 = &want["mobilenetv2_tinyimagenet"]["feat.0"];
    assert_eq!(f0.size(), vec![2, 32, 66, 66], "the 1x1 stem with padding 1 grows the map");
    assert_eq!(f0.max().double_value(&[]), 6.0, "ReLU6 never clamped: the test does not tell it from ReLU");
    assert_eq!(want["vgg8"]["feat.4"].size(), vec![2, 512, 4, 4], "vgg pool3 applies at 64x64");
}

/// Channels-last weights and inputs compute the same function as NCHW, and checkpoints written
/// from channels-last weights hold PyTorch's NCHW layout (bit-identical values).
#[test]
fn channels_last_matches_nchw_and_saves_nchw() {
    let dir = tempfile::tempdir().unwrap();
    tch::manual_seed(3);
    let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    for name in ["resnet8x4", "wrn_16_2", "vgg8", "MobileNetV2", "mobilenetv2_tinyimagenet", "ShuffleV1", "ShuffleV2", "ResNet18"] {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = (models::find(name).unwrap().build)(&vs.root(), ModelCfg { in_channels: 3, num_classes: 100 });
        let before: std::collections::HashMap<String, Tensor> = vs.variables().into_iter().map(|(k, v)| (k, v.copy())).collect();
        let nchw = tch::no_grad(|| m.forward(&x, false));
        models::vs_channels_last(&vs);
        for (k, v) in vs.variables().into_iter().filter(|(_, v)| v.dim() == 4) {
            // Channels-last: the channel dimension is innermost (stride 1).
            assert!(v.stride()[1] == 1 || v.size()[1] == 1, "{name}: {k} is not channels-last: strides {:?}", v.stride());
        }
        let cl = tch::no_grad(|| m.forward(&models::to_channels_last(&x), false));
        let err = (&cl.logits - &nchw.logits).abs().max().double_value(&[]);
        assert!(err <= 1e-4 * (1.0 + nchw.logits.abs().max().double_value(&[])), "{name}: logits differ by {err}");
        for (a, b) in cl.feats.iter().zip(&nchw.feats) {
            assert!((a - b).abs().max().double_value(&[]) <= 1e-4 * (1.0 + b.abs().max().double_value(&[])), "{name}: feature taps differ");
        }
        let p = dir.path().join(format!("{name}.safetensors"));
        models::checkpoint::save_atomic(&vs, &p).unwrap();
        for (k, t) in Tensor::read_safetensors(&p).unwrap() {
            assert!(t.is_contiguous() && t.equal(&before[&k]), "{name}: {k} not saved as the NCHW original");
        }
    }
}

/// Zipf LS's dense votes apply the classifier to every location of the last tap: fine where that
/// map feeds the classifier, a clear error (not a shape panic) where a 1×1 conv sits in between.
#[test]
fn dense_votes_need_the_map_that_feeds_the_classifier() {
    let x = tch::Tensor::randn([2, 3, 32, 32], (tch::Kind::Float, tch::Device::Cpu));
    for (name, ok) in [("resnet8", true), ("ShuffleV2", false), ("MobileNetV2", false)] {
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let m = (harness::models::find(name).unwrap().build)(&vs.root(), harness::models::ModelCfg { in_channels: 3, num_classes: 10 });
        let out = tch::no_grad(|| m.forward(&x, false));
        match harness::train::dense_argmax(m.as_ref(), &out, 2) {
            Ok(v) => assert!(ok && v.size()[0] == 2, "{name}: {:?}", v.size()),
            Err(e) => assert!(!ok && format!("{e:#}").contains("rank = \"logits\""), "{name}: {e:#}"),
        }
    }
}
