//! Fresh weights follow each family's official initialisation, tensor by tensor: every registered
//! model is built here and by the PyTorch reference (scripts/reference/models.py, which applies
//! the init loop of the official file and is cross-checked against mdistiller's files by
//! `init_stats.py --official`), and each state-dict tensor's statistics must agree: constants
//! exactly, random tensors in family (normal vs uniform), spread, centre and, for uniform ones,
//! bounds, within the sampling tolerance of their size.

mod common;

use std::collections::HashMap;

use harness::models::{self, ModelCfg};
use tch::{Device, Kind, Tensor, nn};

const CFG: ModelCfg = ModelCfg { in_channels: 3, num_classes: 100 };

/// Shape, mean, population std, min, max (as init_stats.py writes them).
#[derive(Debug, serde::Deserialize)]
struct Stats(Vec<i64>, f64, f64, f64, f64);

fn stats(t: &Tensor) -> Stats {
    let x = t.to_kind(Kind::Double).flatten(0, -1);
    let v = |t: Tensor| t.double_value(&[]);
    Stats(t.size(), v(x.mean(Kind::Double)), v(x.std(false)), v(x.min()), v(x.max()))
}

/// Largest magnitude over the std: ≤ √3 (+ sampling) for a uniform tensor, ≥ 2.6 for all but
/// vanishingly few normal tensors of at least [`FAMILY_MIN`] draws.
fn tail(s: &Stats) -> f64 {
    s.3.abs().max(s.4.abs()) / s.2
}

/// Below this size the family is not told apart by the tail (a few normal draws can all be small).
const FAMILY_MIN: f64 = 400.0;

/// Whether `ours` could be drawn from the same rule as `want` (tolerances of n draws: the relative
/// SE of a sample std is ≤ 1/√(2n), of a ratio of two ≤ 1/√n; five of them, plus a floor).
fn compare(ours: &Stats, want: &Stats) -> Result<(), String> {
    if ours.0 != want.0 {
        return Err(format!("shape {:?}, reference {:?}", ours.0, want.0));
    }
    let n = want.0.iter().product::<i64>().max(1) as f64;
    if want.2 == 0.0 {
        return if ours.3 == want.3 && ours.4 == want.4 { Ok(()) } else { Err(format!("constant {} in the reference, ours spans [{}, {}]", want.3, ours.3, ours.4)) };
    }
    let ratio = ours.2 / want.2;
    if (ratio - 1.0).abs() > 5.0 / n.sqrt() + 0.005 {
        return Err(format!("std {:.5} vs {:.5} (×{ratio:.3}, n = {n})", ours.2, want.2));
    }
    if (ours.1 - want.1).abs() > 5.0 * want.2 * (2.0 / n).sqrt() {
        return Err(format!("mean {:.5} vs {:.5} (std {:.5}, n = {n})", ours.1, want.1, want.2));
    }
    if n >= FAMILY_MIN {
        let (u_ours, u_want) = (tail(ours) < 2.0, tail(want) < 2.0);
        if u_ours != u_want {
            let fam = |u: bool| if u { "uniform" } else { "normal" };
            return Err(format!("{} (max/std {:.2}), reference {} ({:.2})", fam(u_ours), tail(ours), fam(u_want), tail(want)));
        }
        // The max of n uniform draws falls short of the bound by b/n on average.
        let (b_ours, b_want) = (ours.3.abs().max(ours.4.abs()), want.3.abs().max(want.4.abs()));
        if u_want && (b_ours / b_want - 1.0).abs() > 20.0 / n {
            return Err(format!("bound {b_ours:.5} vs {b_want:.5}"));
        }
    }
    Ok(())
}

/// init_stats.py running in the background for the named models (it takes as long as building
/// them here, so the two overlap).
struct Reference {
    child: std::process::Child,
    out: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Reference {
    fn start(names: &[&str]) -> Option<Reference> {
        let Some(py) = common::venv_python() else {
            eprintln!("SKIPPED: no ~/.cache/kd-harness/venv python (LIBTORCH set by the user); the reference needs torch");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("stats.json");
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/reference/init_stats.py");
        let child = std::process::Command::new(py)
            .arg(&script)
            .arg(CFG.num_classes.to_string())
            .arg(&out)
            .args(names)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        Some(Reference { child, out, _dir: dir })
    }

    /// The reference's statistics per model and tensor.
    fn stats(self) -> HashMap<String, HashMap<String, Stats>> {
        let o = self.child.wait_with_output().unwrap();
        assert!(o.status.success(), "init_stats.py: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        serde_json::from_str(&std::fs::read_to_string(&self.out).unwrap()).unwrap()
    }
}

/// A fresh model's state dict (the harness names tensors as PyTorch's state dict does).
fn fresh(name: &str) -> (nn::VarStore, HashMap<String, Tensor>) {
    let vs = nn::VarStore::new(Device::Cpu);
    let _m = (models::find(name).unwrap().build)(&vs.root(), CFG);
    let vars = vs.variables();
    (vs, vars)
}

fn all_stats(vars: &HashMap<String, Tensor>) -> HashMap<String, Stats> {
    vars.iter().map(|(k, t)| (k.clone(), stats(t))).collect()
}

/// Every disagreement between a model's tensors and the reference's: `model.tensor: why`.
fn mismatches(name: &str, ours: &HashMap<String, Stats>, want: &HashMap<String, Stats>) -> Vec<String> {
    let mut bad = Vec::new();
    for k in want.keys().filter(|k| !ours.contains_key(*k)) {
        bad.push(format!("{name}.{k}: missing here"));
    }
    for (k, s) in ours {
        match want.get(k) {
            None => bad.push(format!("{name}.{k}: not in the reference's state dict")),
            Some(w) => {
                if let Err(e) = compare(s, w) {
                    bad.push(format!("{name}.{k}: {e}"));
                }
            }
        }
    }
    bad.sort();
    bad
}

#[test]
fn fresh_weights_follow_the_official_init_of_every_model() {
    tch::manual_seed(0);
    let names = models::names();
    let Some(reference) = Reference::start(&names) else { return };
    let ours: Vec<(&str, HashMap<String, Stats>)> = names.iter().map(|name| (*name, all_stats(&fresh(name).1))).collect();
    let want = reference.stats();
    let mut bad = Vec::new();
    let mut tensors = 0;
    for (name, ours) in &ours {
        tensors += ours.len();
        bad.extend(mismatches(name, ours, &want[*name]));
    }
    assert!(bad.is_empty(), "{} of {tensors} tensors differ from the official init:\n{}", bad.len(), bad[..bad.len().min(40)].join("\n"));
    assert!(names.len() >= 30 && tensors > 4000, "{} models, {tensors} tensors compared", names.len());
}

/// The comparison catches the defects the official init rules out: tch's default linear weight
/// (√6 too wide), a random classifier bias where the official file zeroes it, and Kaiming-normal
/// convs where PyTorch's uniform default applies.
#[test]
fn the_comparison_catches_planted_init_defects() {
    tch::manual_seed(0);
    let Some(reference) = Reference::start(&["resnet32x4", "vgg8", "ShuffleV1"]) else { return };
    let want = reference.stats();
    let plant = |name: &str, key: &str, init: nn::Init| {
        let (_vs, vars) = fresh(name);
        assert!(mismatches(name, &all_stats(&vars), &want[name]).is_empty(), "{name} fails before the defect is planted");
        let t = &vars[key];
        tch::no_grad(|| t.shallow_clone().copy_(&nn::init(init, &t.size(), Device::Cpu)));
        let bad = mismatches(name, &all_stats(&vars), &want[name]);
        assert!(bad.len() == 1 && bad[0].starts_with(&format!("{name}.{key}:")), "{name}.{key} planted: {bad:?}");
        bad[0].clone()
    };
    let e = plant("resnet32x4", "fc.weight", nn::init::DEFAULT_KAIMING_UNIFORM);
    assert!(e.contains("std"), "{e}");
    let b = 1.0 / 512f64.sqrt();
    plant("vgg8", "classifier.bias", nn::Init::Uniform { lo: -b, up: b });
    let e = plant("ShuffleV1", "layer2.0.conv1.weight", harness::models::init::kaiming_normal_fan_out(60));
    assert!(e.contains("normal") || e.contains("std"), "{e}");
}

/// Model files build layers only through models::init, which takes the rule explicitly: no call
/// can fall back to a tch default.
#[test]
fn model_files_build_layers_only_through_the_init_helpers() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/models");
    let banned = ["nn::linear(", "nn::conv2d(", "nn::conv(", "nn::conv1d(", "nn::batch_norm", "nn::Init", "ConvConfig", "LinearConfig", "BatchNormConfig", ".var(", "Default::default()"];
    let mut found = Vec::new();
    let mut files = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "rs") && p.file_name().is_some_and(|f| f != "init.rs") {
            files += 1;
            let text = std::fs::read_to_string(&p).unwrap();
            found.extend(banned.iter().filter(|b| text.contains(**b)).map(|b| format!("{}: {b}", p.display())));
        }
    }
    assert!(files >= 10, "read {files} model files");
    assert!(found.is_empty(), "layers built outside models::init:\n{}", found.join("\n"));
}

/// The methods' own modules follow the official code's init too: CRD's embeddings
/// (RepDistiller `crd/criterion.py` `Embed`: `nn.Linear`) and FitNet's regressor (`models/util.py`
/// `ConvReg`: `nn.Conv2d`) are left to PyTorch's default, U(±1/√fan_in) for weight and bias.
#[test]
fn method_modules_take_pytorch_default_init() {
    use harness::distill;
    use harness::models::{self, ModelCfg};
    tch::manual_seed(0);
    let cfg = ModelCfg { in_channels: 3, num_classes: 100 };
    let net = |name: &str| {
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let m = (models::find(name).unwrap().build)(&vs.root(), cfg);
        (vs, m)
    };
    let (_svs, s) = net("resnet8x4");
    let (_tvs, t) = net("resnet32x4");
    let x = tch::Tensor::randn([2, 3, 32, 32], (tch::Kind::Float, tch::Device::Cpu));
    let (so, to) = tch::no_grad(|| (s.forward(&x, false), t.forward(&x, false)));
    for method in ["crd", "fitnet"] {
        let info = distill::find(method).unwrap();
        let mut d = info.instantiate(&info.defaults()).unwrap();
        d.set_train_labels(&tch::Tensor::arange(100, (tch::Kind::Int64, tch::Device::Cpu)));
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        d.init_modules(&vs.root(), &so, std::slice::from_ref(&to)).unwrap();
        let mut checked = 0;
        for (name, w) in vs.variables() {
            let is_weight = name.ends_with(".weight") && w.dim() >= 2;
            if !is_weight || name.contains("bn") {
                continue;
            }
            let fan_in = w.size()[1..].iter().product::<i64>() as f64;
            let bound = 1.0 / fan_in.sqrt();
            let max = w.abs().max().double_value(&[]);
            let std = w.std(true).double_value(&[]);
            assert!(max <= bound * 1.0001, "{method} {name}: max |w| {max} > 1/sqrt(fan_in) = {bound}");
            assert!((std / (bound / 3f64.sqrt()) - 1.0).abs() < 0.05, "{method} {name}: std {std}, U(±{bound}) has {}", bound / 3f64.sqrt());
            let b = name.replace(".weight", ".bias");
            let bias = vs.variables().get(&b).map(|b| b.abs().max().double_value(&[])).unwrap_or_else(|| panic!("{method} {b}: no bias"));
            assert!(bias <= bound * 1.0001 && bias > 0.0, "{method} {b}: max |b| {bias}, expected U(±{bound})");
            checked += 1;
        }
        assert!(checked >= 1, "{method}: no module weight found in {:?}", vs.variables().keys().collect::<Vec<_>>());
    }
}
