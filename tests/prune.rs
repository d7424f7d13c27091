//! Pruned-teacher studies (methods-feature-online.md §6 PrUE, §7 prune-then-distill, §10 masks):
//! masks against the spec's golden values (`reference/ref_feature.py`, inputs rebuilt with its
//! `det_tensor` sin pattern), masks kept through SGD with momentum, the derived student plan, and
//! both pipelines end to end on the digits through `harness run`, with a kill/resume of a
//! fine-tuning stage.

mod common;
use common::*;

use std::collections::BTreeMap;

use harness::train::prune;
use tch::{Device, Kind, Tensor, nn};

/// `det_tensor(shape, a, b, s)[n] = s·sin(a·n + b)` in row-major order (ref_feature.py).
fn det(shape: &[i64], a: f64, b: f64, s: f64) -> Tensor {
    let n: i64 = shape.iter().product();
    ((Tensor::arange(n, (Kind::Double, Device::Cpu)) * a + b).sin() * s).reshape(shape)
}

fn kept(m: &Tensor) -> i64 {
    m.sum(Kind::Double).double_value(&[]).round() as i64
}

/// The two "det convs" of ref_feature.py's pruning section.
fn det_convs() -> (Tensor, Tensor) {
    (det(&[4, 3, 3, 3], 0.77, 0.3, 0.5), det(&[4, 4, 3, 3], 0.83, 0.9, 0.4))
}

#[test]
fn magnitude_masks_match_the_spec() {
    let (w1, w2) = det_convs();
    let ws = [w1.shallow_clone(), w2.shallow_clone()];
    let ones: Vec<Tensor> = ws.iter().map(Tensor::ones_like).collect();
    // ref_feature.py "global_magnitude_s0.5": n_total 252, kept 126 (conv1 62, conv2 64).
    let m = prune::magnitude_round(&ws, &ones, 0.5);
    assert_eq!((kept(&m[0]), kept(&m[1])), (62, 64));
    // The smallest |w| are the ones removed: every kept |w| ≥ every pruned |w|.
    let a = Tensor::cat(&[w1.abs().reshape([-1]), w2.abs().reshape([-1])], 0);
    let k = Tensor::cat(&[m[0].reshape([-1]), m[1].reshape([-1])], 0).to_kind(Kind::Double);
    let min_kept = (&a + (-&k + 1.0) * 1e9).min().double_value(&[]);
    let max_pruned = (&a * (-&k + 1.0)).max().double_value(&[]);
    assert!(min_kept >= max_pruned, "{min_kept} < {max_pruned}");
    // "iterative_7_rounds_frozen_weights": 53 of 252 kept, sparsity 0.7897.
    let mut masks = ones;
    for _ in 0..7 {
        masks = prune::magnitude_round(&ws, &masks, 0.2);
    }
    assert_eq!(kept(&masks[0]) + kept(&masks[1]), 53);
    // "lr_rewinding_rounds".
    for (t, n) in [(0.36, 2), (0.59, 4), (0.79, 7), (0.8, 7), (0.9, 10)] {
        assert_eq!(prune::rounds_for(t, 0.2), n, "target {t}");
    }
}

/// ref_feature.py's `_tiny_convnet`: conv(3→4) → ReLU → conv(4→4) → ReLU → GAP → fixed fc(4→3).
fn tiny_convnet(x: &Tensor, w1: &Tensor, w2: &Tensor) -> Tensor {
    let h = x.conv2d(w1, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1).relu();
    let h = h.conv2d(w2, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1).relu();
    let h = h.mean_dim([2i64, 3].as_slice(), false, Kind::Double);
    h.matmul(&det(&[3, 4], 0.91, 0.2, 0.8).tr()) + det(&[3], 0.5, 0.1, 0.1)
}

#[test]
fn prue_masks_match_the_spec() {
    let (w1, w2) = det_convs();
    let (w1, w2) = (w1.set_requires_grad(true), w2.set_requires_grad(true));
    // 3 classes × 2 samples, sorted by label, batch 2 (ref_feature.py "prue_tiny_s0.5").
    let xs = det(&[6, 3, 6, 6], 0.057, 0.4, 1.0);
    let ys = Tensor::from_slice(&[0i64, 0, 1, 1, 2, 2]);
    let batches: Vec<(Tensor, Tensor)> = (0..3).map(|i| (xs.narrow(0, 2 * i, 2), ys.narrow(0, 2 * i, 2))).collect();
    let (a, b) = (w1.shallow_clone(), w2.shallow_clone());
    let pass = || -> harness::data::Batches<'_, (Tensor, Tensor)> { Box::new(batches.iter().map(|(x, y)| Ok((x.shallow_clone(), y.shallow_clone())))) };
    let scores = prune::prue_scores(&[w1.shallow_clone(), w2.shallow_clone()], &pass, 3, &|x| tiny_convnet(x, &a, &b)).unwrap();
    let (masks, thr) = prune::prue_masks(&scores, 0.5);
    let thr = thr.unwrap();
    assert!((thr - 0.00042259182892642684).abs() <= 1e-12, "threshold {thr}");
    assert_eq!((kept(&masks[0]), kept(&masks[1])), (90, 36));
    // 84 kept weights overlap with the s = 0.5 magnitude mask.
    let ones = [w1.ones_like(), w2.ones_like()];
    let mm = prune::magnitude_round(&[w1.detach(), w2.detach()], &ones, 0.5);
    assert_eq!(kept(&(&masks[0] * &mm[0])) + kept(&(&masks[1] * &mm[1])), 84);
}

#[test]
fn student_plan_matches_the_spec_example() {
    // ref_feature.py "student_plan_example": a pruned VGG-11-like teacher.
    let nnz = [1036, 36864, 132710, 235929, 353894, 471859, 353894, 235929];
    let t = |c| Some(c);
    let template = [t(64), None, t(128), None, t(256), t(256), None, t(512), t(512), None, t(512), t(512)];
    let plan = prune::student_plan(&nnz, &template, 3, 3).unwrap();
    assert_eq!(plan, vec![t(38), None, t(108), None, t(137), t(191), None, t(206), t(255), None, t(154), t(170)]);
    assert!(prune::student_plan(&nnz[..7], &template, 3, 3).is_err());
}

#[test]
fn masked_weights_stay_dead_under_momentum_and_weight_decay() {
    let vs = nn::VarStore::new(Device::Cpu);
    let w = vs.root().var("w", &[6], nn::Init::Const(1.0));
    let mask = Tensor::from_slice(&[1.0f32, 0., 1., 0., 1., 0.]);
    let masks: BTreeMap<String, Tensor> = [("w".to_string(), mask.shallow_clone())].into();
    let mut opt = harness::train::sgd::Sgd::new(&vs, 0.1, 0.9, 5e-4, false);
    let coef = Tensor::from_slice(&[1.0f32, 2., 3., 4., 5., 6.]);
    // Momentum built up before pruning, as in a teacher trained dense.
    opt.backward_step(&(&w * &coef).sum(Kind::Float)).unwrap();
    prune::apply(&vs, &masks);
    opt.apply_masks(&masks).unwrap();
    for _ in 0..5 {
        opt.backward_step(&(&w * &coef).sum(Kind::Float)).unwrap();
        opt.apply_masks(&masks).unwrap();
        let dead = (&w * (-&mask + 1.0)).abs().sum(Kind::Float).double_value(&[]);
        assert_eq!(dead, 0.0, "a pruned weight came back: {w}");
    }
    for (n, b) in opt.state() {
        assert_eq!((&b * (-&mask + 1.0)).abs().sum(Kind::Float).double_value(&[]), 0.0, "{n} keeps momentum for pruned weights");
    }
    // Without re-applying, the very next step would move them (so the check above can fail).
    opt.backward_step(&(&w * &coef).sum(Kind::Float)).unwrap();
    assert!((&w * (-&mask + 1.0)).abs().sum(Kind::Float).double_value(&[]) > 0.0);
}

fn json(p: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

fn tensors(p: &std::path::Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(p).unwrap().into_iter().collect()
}

const SUITE: &str = r#"
[suite]
name = "p"
dataset = "digits"
[train]
epochs = 2
batch_size = 128
milestones = []
[teachers.t]
model = "cnn_small"
train = { epochs = 3 }
[teachers.t_prue]
model = "cnn_small"
train = { epochs = 3 }
prune = { method = "prue", sparsity = 0.5, train = { epochs = 2, lr = 0.01 } }
[teachers.t_mag]
model = "cnn_small"
train = { epochs = 3 }
prune = { method = "magnitude", sparsity = 0.36, train = { epochs = 1, lr = 0.01 } }
[grid]
pair = [
  { teacher = "t", student = "cnn_tiny", method = "kd" },
  { teacher = "t_prue", student = "cnn_tiny", method = "kd" },
  { teacher = "t_prue", student = "cnn_tiny", method = "kd", "teacher.prune.sparsity" = 0.7 },
  { teacher = "t_mag", student = "cnn_small", method = "kd", student_from_teacher = true, save_model = true },
]
"#;

#[test]
fn pruned_teacher_pipelines_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.toml"), SUITE).unwrap();
    let o = harness(&["run", "p.toml", "--results", "a", "--devices", "cpu", "--threads", "1"], dir.path());
    // Dense teacher once (shared by all three entries), PrUE at 0.5 and 0.7, two magnitude rounds, four students.
    assert!(o.status.success() && text(&o).contains("9 finished now"), "{}", text(&o));
    let rd = dir.path().join("a/p/runs");
    let runs: Vec<(String, serde_json::Value)> = std::fs::read_dir(&rd)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (p.file_name().unwrap().to_string_lossy().into_owned(), json(&p.join("config.json")))
        })
        .collect();
    let cfg = |id: &str| runs.iter().find(|(i, _)| i == id).map(|(_, c)| c.clone()).unwrap();
    let dense: Vec<&String> = runs.iter().filter(|(_, c)| c["role"] == "teacher" && c["prune"].is_null()).map(|(i, _)| i).collect();
    assert_eq!(dense.len(), 1, "the dense teacher is trained once");
    let dense = dense[0].clone();
    let students: Vec<&serde_json::Value> = runs.iter().filter(|(_, c)| c["role"] == "student").map(|(_, c)| c).collect();
    assert_eq!(students.len(), 4);

    let mut prue_seen = Vec::new();
    for s in &students {
        let tid = s["teachers"][0]["id"].as_str().unwrap().to_string();
        let t = cfg(&tid);
        let ts = json(&rd.join(&tid).join("summary.json"));
        let ss = json(&rd.join(s["id"].as_str().unwrap()).join("summary.json"));
        if t["prune"].is_null() {
            assert_eq!(tid, dense);
            continue;
        }
        // The student distils from the pruned model: the teacher accuracy it records is the stage's.
        assert_eq!(ss["teacher_top1"], ts["last_top1"], "{ss}");
        let p = &ts["pruned"];
        let measured = p["measured"]["sparsity"].as_f64().unwrap();
        let target = p["target"].as_f64().unwrap();
        // Zeros counted in the saved checkpoint are the masked entries, exactly.
        let model = tensors(&rd.join(&tid).join("model.safetensors"));
        let masks = tensors(&rd.join(&tid).join("mask.safetensors"));
        let mut zeros = 0i64;
        for (n, m) in &masks {
            let w = &model[n];
            assert_eq!((w * (-m + 1.0)).abs().sum(Kind::Double).double_value(&[]), 0.0, "{tid}: {n} has non-zero pruned weights");
            zeros += w.eq(0.0).sum(Kind::Int64).int64_value(&[]);
        }
        assert_eq!(zeros, p["measured"]["zeros"].as_i64().unwrap());
        match t["prune"]["method"].as_str().unwrap() {
            "prue" => {
                // k = int(s·n) with ties pruned: at least the requested fraction, barely more.
                let n = p["measured"]["prunable"].as_f64().unwrap();
                assert!(measured * n >= (target * n).floor() && measured - target < 1e-3, "PrUE sparsity {measured} for {target}");
                assert_eq!(t["prune"]["parent"]["id"].as_str().unwrap(), dense);
                assert_eq!(p["parent"]["id"], t["prune"]["parent"]["id"]);
                assert!(masks.keys().all(|n| model[n].dim() == 4), "PrUE prunes convs only");
                prue_seen.push(target);
            }
            "magnitude" => {
                // Two rounds of 20% of the remaining weights: 1 − 0.8² = 0.36 (up to rounding per round).
                assert_eq!((p["round"].as_u64(), p["rounds"].as_u64()), (Some(2), Some(2)));
                assert!((measured - 0.36).abs() < 1e-4, "magnitude sparsity {measured}");
                assert!(masks.keys().any(|n| model[n].dim() == 2), "prune-then-distill prunes the classifier too");
                let r1 = t["prune"]["parent"]["id"].as_str().unwrap().to_string();
                let c1 = cfg(&r1);
                assert_eq!(c1["prune"]["round"], 1);
                assert_eq!(c1["prune"]["parent"]["id"].as_str().unwrap(), dense);
                let m1 = json(&rd.join(&r1).join("summary.json"))["pruned"]["measured"]["sparsity"].as_f64().unwrap();
                assert!((m1 - 0.2).abs() < 1e-4, "round 1 sparsity {m1}");
                // The student's widths follow from the pruned teacher's non-zeros (k² formula).
                let convs: Vec<(&String, &Tensor)> = {
                    let mut v: Vec<(&String, &Tensor)> = model.iter().filter(|(n, w)| n.ends_with(".weight") && w.dim() == 4).collect();
                    v.sort_by_key(|(n, _)| n.trim_start_matches("conv").trim_end_matches(".weight").parse::<u32>().unwrap());
                    v
                };
                let nnz: Vec<i64> = convs.iter().map(|(_, w)| (*w).ne(0.0).sum(Kind::Int64).int64_value(&[])).collect();
                let template: Vec<Option<i64>> = convs.iter().map(|(_, w)| Some(w.size()[0])).collect();
                let want: Vec<i64> = prune::student_plan(&nnz, &template, 1, 3).unwrap().into_iter().flatten().collect();
                let got: Vec<i64> = ss["student_widths"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
                assert_eq!(got, want);
                assert!(got.iter().zip([32, 64, 128]).all(|(g, d)| *g < d), "{got:?}");
                assert!(ss["param_count"].as_i64().unwrap() < ts["param_count"].as_i64().unwrap());
                // `export` builds the student at the widths its summary records.
                let sdir = rd.join(s["id"].as_str().unwrap());
                let out = dir.path().join("formed.safetensors");
                let o = harness(&["export", sdir.to_str().unwrap(), "--out", out.to_str().unwrap()], dir.path());
                assert!(o.status.success() && text(&o).contains("exported cnn_small"), "{}", text(&o));
                let (saved, exported) = (tensors(&sdir.join("model.safetensors")), tensors(&out));
                assert_eq!(saved.keys().collect::<Vec<_>>(), exported.keys().collect::<Vec<_>>());
                for (n, w) in &saved {
                    assert!(w.to_kind(Kind::Float).equal(&exported[n]), "{n} differs in the export");
                }
            }
            other => panic!("unexpected pruning method {other}"),
        }
    }
    prue_seen.sort_by(f64::total_cmp);
    assert_eq!(prue_seen, vec![0.5, 0.7]);

    // Kill the PrUE fine-tuning after epoch 1 in a second store and resume: same metrics, same masks.
    let stage = runs.iter().find(|(_, c)| c["prune"]["method"] == "prue" && c["prune"]["target"] == 0.5).map(|(i, _)| i.clone()).unwrap();
    let o = harness_cmd(&["run", "p.toml", "--results", "b", "--devices", "cpu", "--threads", "1", "--only", &format!("id={stage}")], dir.path())
        .env("KD_HARNESS_FAULT", format!("panic:{stage}:1"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = harness(&["run", "p.toml", "--results", "b", "--devices", "cpu", "--threads", "1", "--only", &format!("id={stage}")], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let (ra, rb) = (rd.join(&stage), dir.path().join("b/p/runs").join(&stage));
    assert!(std::fs::read_to_string(rb.join("log.txt")).unwrap().contains("resuming run"));
    assert_eq!(metrics_without_timing(&ra.join("metrics.csv")), metrics_without_timing(&rb.join("metrics.csv")));
    let (ma, mb) = (tensors(&ra.join("mask.safetensors")), tensors(&rb.join("mask.safetensors")));
    assert_eq!(ma.keys().collect::<Vec<_>>(), mb.keys().collect::<Vec<_>>());
    for (n, m) in &ma {
        assert!(m.equal(&mb[n]), "{n}: masks differ after resume");
    }
    assert_eq!(json(&ra.join("summary.json"))["pruned"], json(&rb.join("summary.json"))["pruned"]);
}

#[test]
fn prune_keys_are_validated_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("prune = { method = \"snip\" }", "prune.method", "prue, magnitude"),
        ("prune = { method = \"prue\", sparsity = 1.5 }", "prune.sparsity", "(0, 1)"),
        ("prune = { method = \"prue\", ratio = 0.5 }", "prune.ratio", "sparsity"),
    ];
    for (line, key, expect) in cases {
        let body = format!(
            "[suite]\nname = \"v\"\ndataset = \"digits\"\n[teachers.t]\nmodel = \"cnn_small\"\n{line}\n[grid]\npair = [{{ teacher = \"t\", student = \"cnn_tiny\", method = \"kd\" }}]\n"
        );
        std::fs::write(dir.path().join("v.toml"), body).unwrap();
        let t = text(&harness(&["plan", "v.toml"], dir.path()));
        assert!(t.contains("v.toml:6") && t.contains(key) && t.contains(expect), "{line}: {t}");
    }
    // A grid sparsity for a teacher without a `prune` table names the grid entry.
    let body = "[suite]\nname = \"v\"\ndataset = \"digits\"\n[teachers.t]\nmodel = \"cnn_small\"\n[grid]\npair = [\n  { teacher = \"t\", student = \"cnn_tiny\", method = \"kd\", \"teacher.prune.sparsity\" = 0.5 },\n]\n";
    std::fs::write(dir.path().join("v.toml"), body).unwrap();
    let t = text(&harness(&["plan", "v.toml"], dir.path()));
    assert!(t.contains("v.toml:8") && t.contains("teacher.prune.sparsity") && t.contains("no `prune` table"), "{t}");
}
