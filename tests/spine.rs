//! Library-level tests of the spine: suites, data readers, models, KD, metrics, checkpoints.
//! CPU only, small, deterministic.

use std::path::Path;

use harness::data::{self, RawSplit};
use harness::distill::{self, metrics};
use harness::models::{self, ModelCfg};
use harness::suite::{DataRef, Role, Suite};
use tch::{Device, Kind, Tensor};

fn data_ref() -> DataRef {
    DataRef { name: "digits".into(), fingerprint: "fp0".into() }
}

fn parse(text: &str) -> anyhow::Result<Suite> {
    Suite::parse(Path::new("suites/t.toml"), text.to_string())
}

fn input_err(text: &str) -> String {
    let e = parse(text).err().expect("suite should be rejected");
    assert!(harness::error::is_input_error(&e), "not an input error: {e:#}");
    format!("{e:#}")
}

const BASE: &str = r#"
[suite]
name = "t"
dataset = "digits"
seeds = [0, 1]

[train]
epochs = 3
lr = 0.05

[teachers.big]
model = "cnn_small"
train = { epochs = 5 }

[grid]
pair = [{ teacher = "big", student = "cnn_tiny" }, { teacher = "big", student = "mlp" }]
method = ["ce", "kd"]
"#;

#[test]
fn grid_expands_zip_times_product_with_shared_teacher() {
    let plan = parse(BASE).unwrap().expand(&data_ref()).unwrap();
    assert_eq!(plan.points, 2 * 2 * 2);
    // ce students do not depend on the teacher, so each (student, seed) is one run: 2×2;
    // kd students: 2 pairs × 2 seeds; one teacher shared by all of them.
    assert_eq!(plan.teachers(), 1);
    assert_eq!(plan.students(), 8);
    assert_eq!(plan.runs[0].spec.role, Role::Teacher);
    assert_eq!(plan.runs[0].spec.train.epochs, 5);
    let teacher_id = plan.runs[0].spec.id.clone();
    for r in &plan.runs[1..] {
        assert_eq!(r.spec.train.epochs, 3);
        if r.spec.method == "kd" {
            assert_eq!(r.deps, vec![teacher_id.clone()]);
            assert_eq!(r.spec.params["tau"].as_f64(), Some(4.0));
        } else {
            assert!(r.deps.is_empty() && r.spec.teachers.is_empty());
        }
    }
    let mut ids: Vec<_> = plan.runs.iter().map(|r| r.spec.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), plan.runs.len(), "ids are unique");
}

#[test]
fn ids_ignore_key_order_formatting_and_int_float_spelling() {
    let reordered = r#"
[grid]
method = ["ce", "kd"]
pair = [ { student = "cnn_tiny", teacher = "big" },
         { student = "mlp",      teacher = "big" } ]
[teachers.big]
train.epochs = 5
model = "cnn_small"
[train]
lr = 5e-2
epochs = 3
[methods.kd]
tau = 4
[suite]
seeds = [0, 1]
dataset = "digits"
name = "t"
"#;
    let a = parse(BASE).unwrap().expand(&data_ref()).unwrap();
    let b = parse(reordered).unwrap().expand(&data_ref()).unwrap();
    let ids = |p: &harness::suite::Plan| p.runs.iter().map(|r| r.spec.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&a), ids(&b));
}

#[test]
fn a_changed_key_changes_exactly_the_affected_ids() {
    let base = parse(BASE).unwrap().expand(&data_ref()).unwrap();
    let tau = parse(&BASE.replace("[grid]", "[methods.kd]\ntau = 2.0\n[grid]")).unwrap().expand(&data_ref()).unwrap();
    for (x, y) in base.runs.iter().zip(&tau.runs) {
        assert_eq!(x.spec.id == y.spec.id, x.spec.method != "kd", "{} vs {}", x.spec.label(), y.spec.label());
    }
    let tepochs = parse(&BASE.replace("train = { epochs = 5 }", "train = { epochs = 6 }")).unwrap().expand(&data_ref()).unwrap();
    for (x, y) in base.runs.iter().zip(&tepochs.runs) {
        // The teacher changed, so it and every kd student (whose id includes the teacher's) change.
        let affected = x.spec.role == Role::Teacher || x.spec.method == "kd";
        assert_eq!(x.spec.id != y.spec.id, affected);
    }
    let other_data = parse(BASE).unwrap().expand(&DataRef { name: "digits".into(), fingerprint: "fp1".into() }).unwrap();
    assert!(base.runs.iter().zip(&other_data.runs).all(|(x, y)| x.spec.id != y.spec.id));
}

#[test]
fn expansion_is_deterministic_and_sweeps_any_key() {
    let text = BASE.replace("method = [\"ce\", \"kd\"]", "method = [\"kd\"]\n\"kd.tau\" = [1.0, 2.0, 4.0]\n\"teacher.train.batch_size\" = [32, 64]");
    let a = parse(&text).unwrap().expand(&data_ref()).unwrap();
    let b = parse(&text).unwrap().expand(&data_ref()).unwrap();
    assert_eq!(a.runs.iter().map(|r| &r.spec.id).collect::<Vec<_>>(), b.runs.iter().map(|r| &r.spec.id).collect::<Vec<_>>());
    assert_eq!(a.teachers(), 2, "one teacher per teacher batch size");
    assert_eq!(a.students(), 2 * 3 * 2 * 2);
}

#[test]
fn validation_errors_name_file_line_key_and_choices() {
    let e = input_err(&BASE.replace("lr = 0.05", "lrr = 0.05"));
    assert!(e.contains("suites/t.toml:9:"), "{e}");
    assert!(e.contains("did you mean `lr`"), "{e}");

    let e = input_err(&BASE.replace("epochs = 3", "epochs = \"three\""));
    assert!(e.contains("suites/t.toml:8:") && e.contains("expected an integer"), "{e}");

    let e = input_err(&BASE.replace("student = \"mlp\"", "student = \"resnet9\""));
    assert!(e.contains("unknown model `resnet9`") || e.contains("resnet8"), "{e}");

    let e = input_err(&BASE.replace("[\"ce\", \"kd\"]", "[\"ce\", \"kdd\"]"));
    assert!(e.contains(":17:") && e.contains("did you mean `kd`"), "{e}");

    let e = input_err(&BASE.replace("dataset = \"digits\"", "dataset = \"cifar1000\""));
    assert!(e.contains(":4:") && e.contains("cifar100"), "{e}");

    let e = input_err(&format!("{BASE}\n[methods.kd]\ntemperature = 4\n"));
    assert!(e.contains("unknown parameter of method `kd` `temperature`") && e.contains("tau"), "{e}");

    let e = input_err(&BASE.replace("[suite]", "[suit]"));
    assert!(e.contains(":2:") && e.contains("did you mean `suite`"), "{e}");
}

#[test]
fn impossible_combinations_are_rejected_before_training() {
    // kd without a teacher
    let s = parse("[suite]\nname='x'\ndataset='digits'\n[grid]\nstudent=['cnn_tiny']\nmethod=['kd']\n").unwrap();
    let e = s.expand(&data_ref()).err().unwrap();
    assert!(format!("{e}").contains("needs exactly one teacher"), "{e}");
    // the same key on two axes
    let e = input_err(&BASE.replace("method = [\"ce\", \"kd\"]", "method = [\"ce\", \"kd\"]\nstudent = [\"mlp\"]"));
    assert!(e.contains("also set by axis"), "{e}");
    // out-of-range values
    let e = input_err(&BASE.replace("lr = 0.05", "lr = -1"));
    assert!(e.contains("expected a number > 0"), "{e}");
}

/// Models that pool globally run at any size: the suite check takes the CIFAR nets on
/// Tiny-ImageNet (mdistiller's setups) and on the 1×8×8 digits. A name is never swapped for
/// another: `MobileNetV2` stays the CIFAR mobile_half next to mdistiller's Tiny-ImageNet one.
#[test]
fn globally_pooled_models_are_accepted_at_other_input_sizes() {
    let s = parse(
        "[suite]\nname='x'\ndataset='tiny-imagenet'\n[teachers.r18]\nmodel='ResNet18'\n[grid]\n\
         pair=[{teacher='r18',student='ShuffleV2'},{teacher='r18',student='mobilenetv2_tinyimagenet'},{teacher='r18',student='MobileNetV2'}]\n\
         method=['kd']\n",
    )
    .unwrap();
    let plan = s.expand(&DataRef { name: "tiny-imagenet".into(), fingerprint: "fp0".into() }).unwrap();
    let mut models: Vec<&str> = plan.runs.iter().map(|r| r.spec.model.as_str()).collect();
    models.sort();
    assert_eq!(models, ["MobileNetV2", "ResNet18", "ShuffleV2", "mobilenetv2_tinyimagenet"]);
    let s = parse("[suite]\nname='x'\ndataset='digits'\n[grid]\nstudent=['resnet8', 'vgg8', 'ResNet18']\n").unwrap();
    assert_eq!(s.expand(&data_ref()).unwrap().runs.len(), 3);
}

#[test]
fn lr_schedule_is_one_based_multistep() {
    let r = harness::suite::Recipe::default();
    assert!((r.lr_at(1) - 0.05).abs() < 1e-12);
    assert!((r.lr_at(150) - 0.05).abs() < 1e-12);
    assert!((r.lr_at(151) - 0.005).abs() < 1e-12);
    assert!((r.lr_at(211) - 0.00005).abs() < 1e-12);
}

// ---------------------------------------------------------------- data

fn fixture(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(p)
}

fn formula(n: usize, split: usize) -> Vec<u8> {
    (0..n).flat_map(|i| (0..3072).map(move |j| ((i * 31 + j * 7 + split) % 256) as u8)).collect()
}

#[test]
fn cifar_python_layout_reads_numpy_pickles() {
    let (info, train, test, _) = data::read("cifar100", &fixture("")).unwrap();
    assert_eq!(info.classes, 100);
    assert_eq!(train.x, formula(12, 0));
    assert_eq!(train.y, (0..12).collect::<Vec<i64>>());
    assert_eq!(test.x, formula(5, 1));
    let (_, train, test, _) = data::read("cifar10", &fixture("")).unwrap();
    assert_eq!(train.x, formula(15, 0), "five batches concatenated in order");
    assert_eq!(train.y, (0..15).map(|i| i % 10).collect::<Vec<i64>>());
    assert_eq!(test.y, vec![0, 1, 2, 3]);
}

#[test]
fn cifar_binary_layout_roundtrips_and_fingerprints_match_python_layout() {
    let dir = tempfile::tempdir().unwrap();
    let (_, train, test, _) = data::read("cifar100", &fixture("")).unwrap();
    data::cifar::write_binary(data::cifar::Kind::C100, dir.path(), &train, &test).unwrap();
    let raw = std::fs::read(dir.path().join("cifar-100-binary/train.bin")).unwrap();
    assert_eq!(raw.len(), 12 * 3074);
    assert_eq!((raw[3074], raw[3075]), (0, 1), "coarse then fine label");
    let (info, train2, test2, _) = data::read("cifar100", dir.path()).unwrap();
    assert_eq!((train2.x == train.x, train2.y == train.y, test2.y == test.y), (true, true, true));
    assert_eq!(data::fingerprint(info, &train, &test), data::fingerprint(info, &train2, &test2));

    let synth = tempfile::tempdir().unwrap();
    data::synth::write(synth.path(), 10, 50, 20, 3, 40.0).unwrap();
    let (_, a, b, _) = data::read("cifar10", synth.path()).unwrap();
    assert_eq!((a.y.len(), b.y.len(), a.x.len()), (50, 20, 50 * 3072));
    let (ga, gb) = data::synth::generate(10, 50, 20, 3, 40.0);
    assert!(ga.x == a.x && gb.y == b.y, "synthetic data is deterministic and read back exactly");
}

#[test]
fn malformed_or_missing_data_gives_input_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = data::read("cifar10", dir.path()).err().unwrap();
    assert!(harness::error::is_input_error(&e) && format!("{e}").contains("cifar-10-batches-py"), "{e}");
    let bin = dir.path().join("cifar-100-binary");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("train.bin"), vec![0u8; 3074 * 2 + 5]).unwrap();
    std::fs::write(bin.join("test.bin"), vec![0u8; 3074]).unwrap();
    let e = format!("{}", data::read("cifar100", dir.path()).err().unwrap());
    assert!(e.contains("train.bin") && e.contains("3074-byte records"), "{e}");
    let py = dir.path().join("p/cifar-100-python");
    std::fs::create_dir_all(&py).unwrap();
    let good = std::fs::read(fixture("cifar-100-python/train")).unwrap();
    std::fs::write(py.join("train"), &good[..good.len() / 2]).unwrap();
    let e = format!("{}", data::read("cifar100", &dir.path().join("p")).err().unwrap());
    assert!(e.contains("cifar-100-python/train") && e.contains("truncated"), "{e}");
}

#[test]
fn digits_has_fixed_split() {
    let (info, train, test, src) = data::read("digits", Path::new("/nonexistent")).unwrap();
    assert!(src.contains("embedded"));
    assert_eq!((train.y.len(), test.y.len()), (1437, 360));
    assert_eq!(info.shape, (1, 8, 8));
    assert_eq!(test.y[0], 0, "row 0 (label 0) is test sample 0");
    for c in 0..10 {
        let n = train.y.iter().filter(|&&y| y == c).count();
        assert!((130..160).contains(&n), "class {c} has {n} train samples");
    }
    assert_eq!(*train.x.iter().max().unwrap(), 255);
}

#[test]
fn crop_flip_takes_a_window_of_the_padded_image() {
    tch::manual_seed(7);
    let x = Tensor::arange(2 * 3 * 6 * 6, (Kind::Int64, Device::Cpu)).remainder(250).to_kind(Kind::Uint8).view([2, 3, 6, 6]);
    assert!(data::crop_flip(&x, 0, false).equal(&x));
    let out = data::crop_flip(&x, 2, true);
    let padded = x.constant_pad_nd([2, 2, 2, 2]);
    for b in 0..2 {
        let mut found = false;
        for oy in 0..5 {
            for ox in 0..5 {
                let win = padded.get(b).narrow(1, oy, 6).narrow(2, ox, 6);
                found |= win.equal(&out.get(b)) || win.flip([2]).equal(&out.get(b));
            }
        }
        assert!(found, "sample {b} is not a (flipped) window");
    }
}

// ---------------------------------------------------------------- models

#[test]
fn cifar_resnets_match_reference_parameter_counts_and_names() {
    let cfg = ModelCfg { in_channels: 3, num_classes: 100 };
    for (name, n) in [
        ("resnet8", 83_892),
        ("resnet14", 181_108),
        ("resnet20", 278_324),
        ("resnet32", 472_756),
        ("resnet44", 667_188),
        ("resnet56", 861_620),
        ("resnet110", 1_736_564),
        ("resnet8x4", 1_233_540),
        ("resnet32x4", 7_433_860),
    ] {
        assert_eq!(models::count_params(models::find(name).unwrap(), cfg), n, "{name}");
    }
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let m = (models::find("resnet8x4").unwrap().build)(&vs.root(), cfg);
    let vars = vs.variables();
    for k in [
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.running_mean",
        "layer3.0.conv2.weight",
        "fc.weight",
        "fc.bias",
    ] {
        assert!(vars.contains_key(k), "missing {k}");
    }
    assert_eq!(vars["fc.weight"].size(), vec![100, 256]);
    let out = tch::no_grad(|| m.forward(&Tensor::zeros([2, 3, 32, 32], (Kind::Float, Device::Cpu)), false));
    assert_eq!(out.logits.size(), vec![2, 100]);
    assert_eq!(out.pooled.size(), vec![2, 256]);
    let shapes: Vec<Vec<i64>> = out.feats.iter().map(|f| f.size()[1..].to_vec()).collect();
    assert_eq!(shapes, vec![vec![32, 32, 32], vec![64, 32, 32], vec![128, 16, 16], vec![256, 8, 8]]);
    assert_eq!(models::feature_shapes(models::find("resnet8x4").unwrap(), cfg, (32, 32)), shapes);
    let vs1 = tch::nn::VarStore::new(Device::Cpu);
    let _ = (models::find("resnet8").unwrap().build)(&vs1.root(), cfg);
    assert!(!vs1.variables().contains_key("layer1.0.downsample.0.weight"), "resnet8 layer1 keeps the identity shortcut");
}

#[test]
fn checkpoints_load_strictly_with_a_full_list_of_problems() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ModelCfg { in_channels: 1, num_classes: 10 };
    tch::manual_seed(1);
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let m = (models::find("cnn_tiny").unwrap().build)(&vs.root(), cfg);
    let p = dir.path().join("tiny.safetensors");
    models::checkpoint::save_atomic(&vs, &p).unwrap();

    tch::manual_seed(2);
    let mut vs2 = tch::nn::VarStore::new(Device::Cpu);
    let m2 = (models::find("cnn_tiny").unwrap().build)(&vs2.root(), cfg);
    models::checkpoint::load_strict(&mut vs2, &p, "cnn_tiny").unwrap();
    let x = Tensor::randn([4, 1, 8, 8], (Kind::Float, Device::Cpu));
    let (a, b) = tch::no_grad(|| (m.forward(&x, false).logits, m2.forward(&x, false).logits));
    assert!(a.equal(&b));

    let mut vs3 = tch::nn::VarStore::new(Device::Cpu);
    let _ = (models::find("cnn_small").unwrap().build)(&vs3.root(), cfg);
    let e = models::checkpoint::load_strict(&mut vs3, &p, "cnn_small").err().unwrap();
    let msg = format!("{e}");
    assert!(harness::error::is_input_error(&e));
    assert!(msg.contains("missing keys") && msg.contains("conv3.weight") && msg.contains("shape mismatches"), "{msg}");
    std::fs::write(dir.path().join("junk.safetensors"), b"not a safetensors file").unwrap();
    let e = models::checkpoint::load_strict(&mut vs3, &dir.path().join("junk.safetensors"), "cnn_small").err().unwrap();
    assert!(format!("{e}").contains("junk.safetensors"));
}

// ---------------------------------------------------------------- KD and metrics (methods-logit.md §0.2)

fn worked_example() -> (Tensor, Tensor, Tensor) {
    let s = Tensor::from_slice(&[2.0f32, 1.0, 0.1, -1.0, 0.5, 0.3, 2.2, -0.4]).view([2, 4]);
    let t = Tensor::from_slice(&[3.0f32, 0.5, 0.2, -2.0, 0.1, 0.2, 3.1, 0.0]).view([2, 4]);
    let y = Tensor::from_slice(&[0i64, 2]);
    (s, t, y)
}

fn close(a: f64, b: f64) {
    let tol = if b.abs() < 0.1 { 1e-6 } else { 1e-5 * b.abs() };
    assert!((a - b).abs() <= tol, "{a} vs {b}");
}

fn output(logits: &Tensor) -> models::Output {
    models::Output { logits: logits.shallow_clone(), feats: vec![], preact: vec![], pooled: logits.shallow_clone() }
}

#[test]
fn kd_matches_the_spec_worked_example() {
    let (s, t, y) = worked_example();
    close(distill::kd::kd_term(&s, &t, 4.0).double_value(&[]), 0.213160624);
    let info = distill::find("kd").unwrap();
    let total = |params: &[(&str, f64)]| {
        let p = params.iter().map(|(k, v)| (k.to_string(), harness::suite::ParamValue::Float(*v))).collect();
        let mut d = info.instantiate(&p).unwrap();
        let (so, to) = (output(&s), output(&t));
        let teachers = [to];
        let step = distill::Step::new(&so, &teachers, &y, 1);
        let terms = d.losses(&step).unwrap();
        terms.iter().map(|(_, v)| v.double_value(&[])).sum::<f64>()
    };
    close(total(&[("tau", 4.0), ("ce_weight", 0.1), ("kd_weight", 0.9)]), 0.231366344);
    close(total(&[("tau", 1.0), ("ce_weight", 0.5), ("kd_weight", 0.5)]), 0.252907641);
    close(metrics::cross_entropy(&s, &y), 0.395217819);
}

#[test]
fn kd_gradient_matches_the_closed_form_and_vanishes_at_the_teacher() {
    tch::manual_seed(3);
    let (n, c, tau) = (6i64, 7i64, 3.0);
    let s = (Tensor::randn([n, c], (Kind::Double, Device::Cpu)) * 2.0).set_requires_grad(true);
    let t = Tensor::randn([n, c], (Kind::Double, Device::Cpu)) * 2.0;
    let loss = distill::kd::kd_term(&s, &t, tau);
    loss.backward();
    // d/dz_s [T² · mean_i KL(p_t‖p_s)] = (T/N) · (softmax(z_s/T) − softmax(z_t/T))
    let expect = ((&s / tau).softmax(1, Kind::Double) - (&t / tau).softmax(1, Kind::Double)) * (tau / n as f64);
    let diff = (s.grad() - expect).abs().max().double_value(&[]);
    assert!(diff < 1e-6, "gradient differs by {diff}");
    let zero = distill::kd::kd_term(&t, &t, tau).double_value(&[]);
    assert!(zero.abs() < 1e-6, "KD(z, z) = {zero}");
}

#[test]
fn metrics_match_the_spec() {
    let (s, t, y) = worked_example();
    close(metrics::ece(&s, &y, 15), 0.325480968);
    close(metrics::ece(&t, &y, 15), 0.130242860);
    close(metrics::agreement(&s, &t), 1.0);
    close(metrics::predictive_kl(&s, &t), 0.110597462);
    close(metrics::topk_accuracy(&s, &y, 1), 1.0);
    let wrong = Tensor::from_slice(&[1i64, 3]);
    close(metrics::topk_accuracy(&s, &wrong, 1), 0.0);
    close(metrics::topk_accuracy(&s, &wrong, 2), 0.5);
    close(metrics::topk_accuracy(&s, &wrong, 5), 1.0);
}

#[test]
fn pickle_reader_rejects_what_it_cannot_decode() {
    assert!(data::pickle::load(&[0x80, 2, b'}', 0xff]).unwrap_err().contains("0xff"));
    assert!(data::pickle::load(&[0x80, 2, b'X', 10, 0, 0, 0, b'a']).unwrap_err().contains("truncated"));
    let _ = RawSplit::default();
}

#[test]
fn teacher_assistant_chains_and_born_again_generations_are_runs_in_the_dag() {
    let text = r#"
[suite]
name = "c"
dataset = "digits"
[teachers.big]
model = "cnn_small"
[teachers.gen0]
model = "cnn_tiny"
[teachers.gen1]
model = "cnn_tiny"
teacher = "gen0"
[grid]
pair = [
  { chain = ["big", "mlp"], student = "cnn_tiny", method = "kd" },
  { chain = ["big", "mlp"], student = "mlp", method = "dkd" },
  { teacher = "gen1", student = "cnn_tiny", method = "kd" },
]
"#;
    let plan = parse(text).unwrap().expand(&data_ref()).unwrap();
    let by_id = |id: &str| plan.runs.iter().find(|r| r.spec.id == id).unwrap();
    let pos = |id: &str| plan.runs.iter().position(|r| r.spec.id == id).unwrap();
    // big (ce), mlp TA by kd, mlp TA by dkd, gen0 (ce), gen1 (kd from gen0), then 3 students.
    assert_eq!((plan.teachers(), plan.students()), (5, 3), "{:#?}", plan.runs.iter().map(|r| r.spec.label()).collect::<Vec<_>>());
    for r in &plan.runs {
        for d in &r.deps {
            assert!(pos(d) < pos(&r.spec.id), "{} runs before its teacher {d}", r.spec.label());
        }
        if r.spec.role == Role::Student {
            let ta = by_id(&r.deps[0]);
            assert_eq!(ta.spec.role, Role::Teacher);
            assert_eq!(ta.spec.method, r.spec.method, "each chain link is trained with the run's method");
        }
    }
    let gen1 = plan.runs.iter().find(|r| r.spec.role == Role::Teacher && r.spec.model == "cnn_tiny" && !r.deps.is_empty()).unwrap();
    assert_eq!(gen1.spec.method, "kd");
    assert_eq!(by_id(&gen1.deps[0]).spec.model, "cnn_tiny");
    // Both chains share the top teacher.
    let tops: Vec<_> = plan.runs.iter().filter(|r| r.spec.model == "cnn_small").collect();
    assert_eq!(tops.len(), 1);

    let cyc = "[suite]\nname='c'\ndataset='digits'\n[teachers.a]\nmodel='mlp'\nteacher='b'\n[teachers.b]\nmodel='mlp'\nteacher='a'\n[grid]\npair=[{teacher='a', student='mlp', method='kd'}]\n";
    let e = format!("{:#}", parse(cyc).unwrap().expand(&data_ref()).err().unwrap());
    assert!(e.contains("cycle"), "{e}");
}

#[test]
fn output_statistics_have_their_limiting_values() {
    let y = Tensor::from_slice(&[0i64, 1, 2, 0]);
    let sharp = y.one_hot(3).to_kind(Kind::Double) * 60.0;
    let s = metrics::output_stats(&sharp, &y);
    assert!(s.entropy < 1e-9 && s.nontarget_mass < 1e-9 && s.class_similarity.abs() < 1e-9, "{s:?}");
    let flat = Tensor::zeros([4, 3], (Kind::Double, Device::Cpu));
    let f = metrics::output_stats(&flat, &y);
    assert!((f.entropy - 3f64.ln()).abs() < 1e-12 && (f.nontarget_mass - 2.0 / 3.0).abs() < 1e-12 && (f.class_similarity - 1.0).abs() < 1e-12, "{f:?}");
}
