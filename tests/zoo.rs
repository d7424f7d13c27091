//! The CIFAR model zoo: parameter counts and state-dict names of the RepDistiller/mdistiller
//! definitions (anchors.md §4), forward shapes and the feature taps every model exposes.

use harness::models::{self, ModelCfg};
use tch::{Device, Kind, Tensor, nn};

const CFG: ModelCfg = ModelCfg { in_channels: 3, num_classes: 100 };

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
    ] {
        assert_eq!(models::count_params(models::find(name).unwrap(), CFG), n, "{name}");
    }
}

fn keys(name: &str) -> std::collections::HashMap<String, Tensor> {
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
    for e in models::entries().filter(|e| e.input == Some((3, 32, 32))) {
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

#[test]
fn forward_tail_continues_the_forward_from_a_stage() {
    tch::manual_seed(0);
    for name in ["resnet8", "wrn_16_1", "ResNet18"] {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = (models::find(name).unwrap().build)(&vs.root(), CFG);
        let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let out = tch::no_grad(|| m.forward(&x, false));
        for stage in 1..out.feats.len() {
            let z = tch::no_grad(|| m.forward_tail(&out.feats[stage], stage, false)).unwrap();
            assert!(z.allclose(&out.logits, 1e-4, 1e-5, false), "{name} from stage {stage}");
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
