//! Feature methods (methods-feature-online.md §1, §3): AT, SP, FitNet, RKD, PKT against the spec's
//! golden values (inputs rebuilt with its `det_tensor` sin pattern), through the Rust API and
//! `harness loss-eval`; teacher detachment; FitNet's regressor; end-to-end training and resume.

mod common;
use common::*;

use harness::distill::{at, fitnet, pkt, rkd, sp};
use tch::{Device, Kind, Tensor};

/// `det_tensor(shape, a, b, s)[n] = s·sin(a·n + b)` in row-major order (ref_feature.py).
fn det(shape: &[i64], a: f64, b: f64, s: f64) -> Tensor {
    let n: i64 = shape.iter().product();
    ((Tensor::arange(n, (Kind::Double, Device::Cpu)) * a + b).sin() * s).reshape(shape)
}

fn close(got: f64, want: f64) {
    // The spec prints 10 decimals.
    assert!((got - want).abs() <= 1e-9 * want.abs().max(1.0), "{got} vs {want}");
}

#[test]
fn golden_values_of_the_spec() {
    let b = 4;
    let g_s = det(&[b, 8, 4, 4], 0.37, 0.1, 1.0).relu();
    let g_t = det(&[b, 16, 4, 4], 0.23, 0.7, 1.0).relu();
    close(sp::sp_loss(&g_s, &g_t).double_value(&[]), 0.0923066226);
    // The spec's 2-sample worked example.
    let fs = Tensor::from_slice(&[1.0f64, 0., 2., 0., 1., 1.]).view([2, 3]);
    let ft = Tensor::from_slice(&[1.0f64, 2., 0., 1., 0., 1., 3., 1.]).view([2, 4]);
    close(sp::sp_loss(&fs, &ft).double_value(&[]), 0.0676055498);

    let at_s = [det(&[b, 4, 8, 8], 0.11, 0.3, 1.0), det(&[b, 8, 4, 4], 0.17, 0.5, 1.0), det(&[b, 8, 4, 4], 0.29, 0.9, 1.0)];
    let at_t = [det(&[b, 6, 8, 8], 0.13, 0.2, 1.0), det(&[b, 12, 4, 4], 0.19, 0.4, 1.0), det(&[b, 12, 2, 2], 0.31, 0.8, 1.0)];
    close(at::at_loss(&at_s, &at_t, 2.0).unwrap().double_value(&[]), 0.0156849064);

    let fit_s = det(&[b, 6, 4, 4], 0.41, 0.05, 1.0);
    let fit_t = det(&[b, 6, 4, 4], 0.43, 0.15, 1.0).relu();
    close(fitnet::hint_loss(&fit_s, &fit_t).double_value(&[]), 0.6928976961);

    let e_s = det(&[b, 5], 0.53, 0.3, 1.0);
    let e_t = det(&[b, 7], 0.47, 1.1, 1.0);
    let (ld, la) = rkd::rkd_parts(&e_s, &e_t);
    close(ld.double_value(&[]), 0.0411004255);
    close(la.double_value(&[]), 0.0137211522);
    close(25.0 * ld.double_value(&[]) + 50.0 * la.double_value(&[]), 1.7135682465);
    close(pkt::pkt_loss(&e_s, &e_t).double_value(&[]), 0.0313992951);
}

#[test]
fn gradients_reach_the_student_features_only() {
    let b = 4;
    let cases: Vec<(&str, Box<dyn Fn(&Tensor, &Tensor) -> Tensor>, Vec<i64>, Vec<i64>)> = vec![
        ("sp", Box::new(|s, t| sp::sp_loss(s, t)), vec![b, 8, 4, 4], vec![b, 16, 4, 4]),
        ("at", Box::new(|s, t| at::at_single(s, t, 2.0)), vec![b, 8, 4, 4], vec![b, 12, 2, 2]),
        (
            "rkd",
            Box::new(|s, t| {
                let (d, a) = rkd::rkd_parts(s, t);
                d + a
            }),
            vec![b, 5],
            vec![b, 7],
        ),
        ("pkt", Box::new(|s, t| pkt::pkt_loss(s, t)), vec![b, 5], vec![b, 7]),
        ("fitnet", Box::new(|s, t| fitnet::hint_loss(s, t)), vec![b, 6, 4, 4], vec![b, 6, 4, 4]),
    ];
    for (name, f, ss, ts) in cases {
        let s = det(&ss, 0.37, 0.1, 1.0).relu().set_requires_grad(true);
        let t = det(&ts, 0.23, 0.7, 1.0).relu().set_requires_grad(true);
        f(&s, &t).backward();
        assert!(s.grad().abs().sum(Kind::Double).double_value(&[]) > 0.0, "{name}: no gradient to the student");
        assert!(!t.grad().defined(), "{name}: gradient reached the teacher");
    }
}

#[test]
fn loss_eval_reads_feature_arrays() {
    let dir = tempfile::tempdir().unwrap();
    let b = 4;
    let z = det(&[b, 5], 0.61, 0.2, 2.0);
    let y = Tensor::from_slice(&[0i64, 2, 4, 1]);
    let arrays = [
        ("student", z.shallow_clone()),
        ("teacher", det(&[b, 5], 0.59, 1.3, 3.0)),
        ("labels", y),
        ("feat_s_0", det(&[b, 4, 8, 8], 0.11, 0.3, 1.0)),
        ("feat_s_1", det(&[b, 8, 4, 4], 0.17, 0.5, 1.0)),
        ("feat_s_2", det(&[b, 8, 4, 4], 0.29, 0.9, 1.0)),
        ("feat_t_0", det(&[b, 6, 8, 8], 0.13, 0.2, 1.0)),
        ("feat_t_1", det(&[b, 12, 4, 4], 0.19, 0.4, 1.0)),
        ("feat_t_2", det(&[b, 12, 2, 2], 0.31, 0.8, 1.0)),
    ];
    let p = dir.path().join("at.npz");
    Tensor::write_npz(&arrays, &p).unwrap();
    let o = harness(&["loss-eval", "at", "--input", p.to_str().unwrap(), "--param", "beta=1", "--param", "ce_weight=0"], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    close(v["terms"]["at"].as_f64().unwrap(), 0.0156849064);

    let vec_arrays = [
        ("student", z.shallow_clone()),
        ("teacher", det(&[b, 5], 0.59, 1.3, 3.0)),
        ("labels", Tensor::from_slice(&[0i64, 2, 4, 1])),
        ("feat_s", det(&[b, 5], 0.53, 0.3, 1.0)),
        ("feat_t", det(&[b, 7], 0.47, 1.1, 1.0)),
    ];
    let p = dir.path().join("vec.npz");
    Tensor::write_npz(&vec_arrays, &p).unwrap();
    for (method, key, want, scale) in [("pkt", "pkt", 0.0313992951, 1.0), ("rkd", "rkd_angle", 0.0137211522, 50.0), ("sp", "sp", f64::NAN, 1.0)] {
        let o = harness(&["loss-eval", method, "--input", p.to_str().unwrap(), "--param", "beta=1"], dir.path());
        assert!(o.status.success(), "{method}: {}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        if want.is_finite() {
            close(v["terms"][key].as_f64().unwrap() / scale, want);
        }
    }
}

#[test]
fn fitnet_regressor_follows_the_map_sizes() {
    let info = harness::distill::find("fitnet").unwrap();
    let mut p = info.defaults();
    p.insert("hint_layer".into(), harness::suite::ParamValue::Int(0));
    let out = |c: i64, h: i64| harness::models::Output {
        logits: Tensor::zeros([2, 3], (Kind::Float, Device::Cpu)),
        feats: vec![Tensor::ones([2, c, h, h], (Kind::Float, Device::Cpu))],
        preact: vec![],
        pooled: Tensor::zeros([2, 3], (Kind::Float, Device::Cpu)),
    };
    for (sh, th) in [(8, 4), (4, 8), (6, 4), (4, 4)] {
        let mut d = info.instantiate(&p).unwrap();
        let vs = tch::nn::VarStore::new(Device::Cpu);
        d.init_modules(&vs.root(), &out(5, sh), &[out(7, th)]).unwrap();
        let y = Tensor::zeros([2], (Kind::Int64, Device::Cpu));
        let (s, t) = (out(5, sh), out(7, th));
        let teachers = [t];
        let step = harness::distill::Step::new(&s, &teachers, &y, 1);
        let terms = d.losses(&step).unwrap();
        assert!(terms.iter().any(|(n, _)| *n == "hint"), "{sh}->{th}");
        assert!(vs.variables().keys().any(|k| k.starts_with("regressor.conv")), "{sh}->{th}: {:?}", vs.variables().keys());
    }
    let mut d = info.instantiate(&p).unwrap();
    let vs = tch::nn::VarStore::new(Device::Cpu);
    assert!(d.init_modules(&vs.root(), &out(5, 2), &[out(7, 8)]).is_err(), "a student map smaller than the teacher's is rejected");
}

#[test]
fn feature_methods_train_and_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let body = r#"
[suite]
name = "f"
dataset = "digits"
[train]
epochs = 3
batch_size = 128
milestones = []
[teachers.t]
model = "cnn_small"
train = { epochs = 1 }
[grid]
pair = [
  { teacher = "t", student = "cnn_tiny", method = "fitnet", "fitnet.hint_layer" = 1 },
  { teacher = "t", student = "cnn_small", method = "at" },
  { teacher = "t", student = "cnn_tiny", method = "sp" },
  { teacher = "t", student = "cnn_tiny", method = "rkd" },
  { teacher = "t", student = "cnn_tiny", method = "pkt", "pkt.kd_weight" = 0.9 },
]
"#;
    std::fs::write(dir.path().join("f.toml"), body).unwrap();
    let o = harness(&["run", "f.toml", "--results", "a", "--devices", "cpu", "--threads", "1"], dir.path());
    assert!(o.status.success() && text(&o).contains("6 finished now"), "{}", text(&o));
    // FitNet's regressor is part of the resume state: interrupt it after epoch 2 and resume.
    let plan = text(&harness(&["plan", "f.toml"], dir.path()));
    let fit = plan.lines().find(|l| l.contains(" fitnet ")).unwrap().split_whitespace().next().unwrap().to_string();
    let o = harness_cmd(&["run", "f.toml", "--results", "b", "--devices", "cpu", "--threads", "1", "--only", &format!("id={fit}")], dir.path())
        .env("KD_HARNESS_FAULT", format!("panic:{fit}:2"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = harness(&["run", "f.toml", "--results", "b", "--devices", "cpu", "--threads", "1", "--only", &format!("id={fit}")], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let (ra, rb) = (dir.path().join("a/f/runs").join(&fit), dir.path().join("b/f/runs").join(&fit));
    assert!(std::fs::read_to_string(rb.join("log.txt")).unwrap().contains("resuming run"));
    assert_eq!(metrics_without_timing(&ra.join("metrics.csv")), metrics_without_timing(&rb.join("metrics.csv")));
    // The student's checkpoint holds only the model's own (PyTorch-named) variables.
    let model_keys: Vec<String> = Tensor::read_safetensors(
        ra.parent().unwrap().read_dir().unwrap().map(|e| e.unwrap().path()).find(|p| p.join("model.safetensors").exists()).unwrap().join("model.safetensors"),
    )
    .unwrap()
    .into_iter()
    .map(|(k, _)| k)
    .collect();
    assert!(model_keys.iter().all(|k| !k.starts_with("regressor")), "{model_keys:?}");
}

#[test]
fn crd_step_matches_the_reference_algorithm() {
    use harness::distill::crd;
    let (n, d, b) = (10, 4, 4);
    let stdv = 1.0 / (d as f64 / 3.0).sqrt();
    let mem = |a: f64, c: f64| (det(&[n, d], a, c, 1.0) + 1.0) / 2.0 * (2.0 * stdv) - stdv;
    let (mut mem_s, mut mem_t) = (mem(0.71, 0.1), mem(0.73, 0.6));
    let embed = |x: &Tensor, w: &Tensor, bias: &Tensor| {
        let y = x.matmul(&w.tr()) + bias;
        &y / y.norm_scalaropt_dim(2, [1i64].as_slice(), true)
    };
    let v_s = embed(&det(&[b, 5], 0.53, 0.3, 1.0), &det(&[d, 5], 0.31, 0.2, 0.5), &det(&[d], 0.2, 0.0, 0.1));
    let v_t = embed(&det(&[b, 7], 0.47, 1.1, 1.0), &det(&[d, 7], 0.33, 0.9, 0.5), &det(&[d], 0.3, 0.5, 0.1));
    let idx = Tensor::from_slice(&[0i64, 3, 5, 8]);
    let neg = Tensor::from_slice(&[1i64, 2, 4, 0, 6, 9, 2, 7, 3, 1, 4, 6]).view([4, 3]);
    let contrast = Tensor::cat(&[idx.unsqueeze(1), neg], 1);
    let mut z = Tensor::zeros([2], (Kind::Double, Device::Cpu));
    let l1 = crd::crd_step(&v_s, &v_t, &mut mem_s, &mut mem_t, &mut z, &idx, &contrast, 0.07, 0.5);
    close(l1.double_value(&[]), 16.279934457177507);
    close(z.double_value(&[0]) / 1e6, 1662862.5787276428 / 1e6);
    close(z.double_value(&[1]), 24.116029795541895);
    let row0: Vec<f64> = Vec::try_from(mem_s.get(0)).unwrap();
    for (g, w) in row0.iter().zip([0.48424291671160136, 0.8176321026897223, 0.2572137886940675, 0.1755779290556427]) {
        close(*g, w);
    }
    // Z stays fixed after the first batch; the banks moved, so the loss changes.
    let l2 = crd::crd_step(&v_s, &v_t, &mut mem_s, &mut mem_t, &mut z, &idx, &contrast, 0.07, 0.5);
    close(l2.double_value(&[]), 10.502585170589693);
    close(z.double_value(&[1]), 24.116029795541895);
}

#[test]
fn crd_trains_with_memory_banks_that_resume() {
    let dir = tempfile::tempdir().unwrap();
    let body = "[suite]\nname = \"f\"\ndataset = \"digits\"\n[train]\nepochs = 2\nbatch_size = 64\nmilestones = []\n[methods.crd]\nnce_k = 256\n[grid]\npair = [{ teacher = \"cnn_small\", student = \"cnn_tiny\", method = \"crd\" }]\n";
    std::fs::write(dir.path().join("f.toml"), body).unwrap();
    let plan = text(&harness(&["plan", "f.toml"], dir.path()));
    let id = plan.lines().find(|l| l.contains(" crd ")).unwrap().split_whitespace().next().unwrap().to_string();
    let o = harness(&["run", "f.toml", "--results", "a", "--devices", "cpu", "--threads", "1"], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let o = harness_cmd(&["run", "f.toml", "--results", "b", "--devices", "cpu", "--threads", "1"], dir.path())
        .env("KD_HARNESS_FAULT", format!("panic:{id}:1"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let state = dir.path().join("b/f/runs").join(&id).join("resume-e1.safetensors");
    let keys: Vec<String> = Tensor::read_safetensors(&state).unwrap().into_iter().map(|(k, _)| k).collect();
    assert!(keys.iter().any(|k| k == "aux.memory_s") && keys.iter().any(|k| k == "aux.z"), "{keys:?}");
    let o = harness(&["run", "f.toml", "--results", "b", "--devices", "cpu", "--threads", "1"], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let (a, b) = (dir.path().join("a/f/runs").join(&id), dir.path().join("b/f/runs").join(&id));
    assert_eq!(metrics_without_timing(&a.join("metrics.csv")), metrics_without_timing(&b.join("metrics.csv")));
    let rows = metrics_without_timing(&a.join("metrics.csv"));
    let i = rows[0].iter().position(|h| h == "train_crd").unwrap();
    assert!(rows[1][i].parse::<f64>().unwrap().is_finite());
}

#[test]
fn dml_and_switokd_match_the_spec() {
    use harness::distill::{dml, switokd};
    let (b, c) = (4, 5);
    let z_s = det(&[b, c], 0.61, 0.2, 2.0);
    let z_t = det(&[b, c], 0.59, 1.3, 3.0);
    let y = Tensor::from_slice(&[0i64, 2, 4, 1]);
    let two = dml::dml_losses(&[z_s.shallow_clone(), z_t.shallow_clone()], &y);
    close(two[0].double_value(&[]), 3.031600931946537);
    close(two[1].double_value(&[]), 4.0088346345482115);
    let three = dml::dml_losses(&[z_s.shallow_clone(), z_t.shallow_clone(), det(&[b, c], 0.67, 0.4, 1.5)], &y);
    for (g, w) in three.iter().zip([2.818444104946315, 3.608439206949627, 2.9227578207985054]) {
        close(g.double_value(&[]), w);
    }
    let d = switokd::decide(&z_t, &z_s, &y);
    close(d.d_s, 1.7529370374420814);
    close(d.d_t, 1.7464025221211166);
    close(d.gap, 1.124787967213933);
    close(d.epsilon, 0.6070972287265752);
    close(d.delta, 0.6927009060212501);
    assert!(d.expert);
    let confident = Tensor::zeros([b, c], (Kind::Double, Device::Cpu)).index_put(
        &[Some(Tensor::arange(b, (Kind::Int64, Device::Cpu))), Some(y.shallow_clone())],
        &Tensor::from(6.0f64),
        false,
    );
    let d2 = switokd::decide(&confident, &det(&[b, c], 0.61, 0.2, 0.5), &y);
    close(d2.gap, 1.6159634947544594);
    close(d2.delta, 1.6161950441861404);
    assert!(!d2.expert);
}

#[test]
fn online_methods_train_every_network_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let body = r#"
[suite]
name = "o"
dataset = "digits"
[train]
epochs = 3
batch_size = 128
milestones = []
[grid]
pair = [
  { student = "cnn_tiny", method = "dml", peers = ["cnn_tiny", "mlp"] },
  { student = "cnn_tiny", method = "switokd", peers = ["cnn_small"], "switokd.peer_lr" = 2.0 },
  { student = "cnn_tiny", method = "bdkd_online", peers = ["cnn_small"] },
]
"#;
    std::fs::write(dir.path().join("o.toml"), body).unwrap();
    let o = harness(&["run", "o.toml", "--results", "a", "--devices", "cpu", "--threads", "1"], dir.path());
    assert!(o.status.success() && text(&o).contains("3 finished now"), "{}", text(&o));
    let plan = text(&harness(&["plan", "o.toml"], dir.path()));
    let sw = plan.lines().find(|l| l.contains(" switokd ")).unwrap().split_whitespace().next().unwrap().to_string();
    let dml = plan.lines().find(|l| l.contains(" dml ")).unwrap().split_whitespace().next().unwrap().to_string();
    let rd = dir.path().join("a/o/runs");
    let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(rd.join(&dml).join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["peers_last_top1"].as_array().unwrap().len(), 2, "{s}");
    let rows = metrics_without_timing(&rd.join(&sw).join("metrics.csv"));
    for col in ["peer0_top1", "expert_frac", "d_s", "d_t", "gap", "delta", "train_teacher_ce"] {
        assert!(rows[0].iter().any(|h| h == col), "missing {col}: {:?}", rows[0]);
    }
    // Peers (and their momentum) are part of the resume state.
    let o = harness_cmd(&["run", "o.toml", "--results", "b", "--devices", "cpu", "--threads", "1", "--only", &format!("id={sw}")], dir.path())
        .env("KD_HARNESS_FAULT", format!("panic:{sw}:2"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = harness(&["run", "o.toml", "--results", "b", "--devices", "cpu", "--threads", "1", "--only", &format!("id={sw}")], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(metrics_without_timing(&rd.join(&sw).join("metrics.csv")), metrics_without_timing(&dir.path().join("b/o/runs").join(&sw).join("metrics.csv")));
    // Suite validation: online methods need peers, others refuse them.
    let bad = "[suite]\nname='o'\ndataset='digits'\n[grid]\nstudent=['mlp']\nmethod=['dml']\n";
    std::fs::write(dir.path().join("bad.toml"), bad).unwrap();
    let o = harness(&["plan", "bad.toml"], dir.path());
    assert!(o.status.code() == Some(2) && text(&o).contains("set `peers"), "{}", text(&o));
}

#[test]
fn sokd_trains_a_knowledge_bridge_from_the_frozen_teacher() {
    let dir = tempfile::tempdir().unwrap();
    let o = harness(&["data", "synth", "--out", "synth", "--classes", "10", "--train", "128", "--test", "64"], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let body = "[suite]\nname = \"s\"\ndataset = \"cifar10\"\n[train]\nepochs = 2\nbatch_size = 64\nmilestones = []\n[teachers.t]\nmodel = \"resnet8\"\ntrain = { epochs = 1 }\n[grid]\npair = [{ teacher = \"t\", student = \"resnet8\", method = \"sokd\" }]\n";
    std::fs::write(dir.path().join("s.toml"), body).unwrap();
    let plan = text(&harness(&["plan", "s.toml", "--data-dir", "synth"], dir.path()));
    let id = plan.lines().find(|l| l.contains(" sokd ")).unwrap().split_whitespace().next().unwrap().to_string();
    let o = harness(&["run", "s.toml", "--data-dir", "synth", "--results", "a", "--devices", "cpu", "--threads", "1"], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let o = harness_cmd(&["run", "s.toml", "--data-dir", "synth", "--results", "r", "--devices", "cpu", "--threads", "1"], dir.path())
        .env("KD_HARNESS_FAULT", format!("panic:{id}:1"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let run = dir.path().join("r/s/runs").join(&id);
    let keys: Vec<String> = Tensor::read_safetensors(run.join("resume-e1.safetensors")).unwrap().into_iter().map(|(k, _)| k).collect();
    assert!(keys.iter().any(|k| k.starts_with("aux.bridge.layer3.0.conv1")), "the bridge is a trained module: {keys:?}");
    assert!(keys.iter().any(|k| k.starts_with("teacher0.layer1")), "a train-mode teacher's BN statistics are resumed too");
    let o = harness(&["run", "s.toml", "--data-dir", "synth", "--results", "r", "--devices", "cpu", "--threads", "1"], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let rows = metrics_without_timing(&run.join("metrics.csv"));
    assert_eq!(rows, metrics_without_timing(&dir.path().join("a/s/runs").join(&id).join("metrics.csv")), "resumed = uninterrupted");
    for col in ["train_bridge_ce", "train_bridge_kd_teacher", "train_kd_from_bridge", "bridge_train_top1"] {
        assert!(rows[0].iter().any(|h| h == col), "missing {col}: {:?}", rows[0]);
    }
    // A teacher family without a bridge is refused clearly.
    let bad = body.replace("model = \"resnet8\"\ntrain", "model = \"vgg8\"\ntrain");
    std::fs::write(dir.path().join("b.toml"), bad.replace("name = \"s\"", "name = \"b\"")).unwrap();
    let o = harness(&["run", "b.toml", "--data-dir", "synth", "--results", "r", "--devices", "cpu"], dir.path());
    assert_eq!(o.status.code(), Some(2), "bad input, refused before anything trains: {}", text(&o));
    assert!(text(&o).contains("has no such stage"), "{}", text(&o));
}
