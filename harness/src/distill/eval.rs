//! `harness loss-eval`: one method's loss on given arrays (CPU, float64), so any implementation
//! can be checked against a reference implementation of the paper. Arrays (a .npz) are named as
//! in methods-logit.md §0.2: `student`, `teacher`, `labels`, `teachers` (K×N×C), `soft_targets`,
//! `dense_argmax`, `features`, and for feature methods `feat_s`/`feat_t` (or lists `feat_s_0`, …).

use std::collections::BTreeMap;

use tch::{Device, Kind, Tensor};

use super::{Step, Teachers};
use crate::error::InputError;
use crate::models::Output;

fn output(logits: &Tensor, pooled: Option<&Tensor>) -> Output {
    Output { logits: logits.shallow_clone(), feats: vec![], preact: vec![], pooled: pooled.unwrap_or(logits).shallow_clone() }
}

/// Feature arrays `<base>_0, <base>_1, …` or a single `<base>`.
fn feature_list(arrays: &BTreeMap<String, Tensor>, base: &str) -> Vec<Tensor> {
    let mut v = Vec::new();
    while let Some(t) = arrays.get(&format!("{base}_{}", v.len())) {
        v.push(t.to_device(Device::Cpu).to_kind(Kind::Double));
    }
    if v.is_empty() {
        if let Some(t) = arrays.get(base) {
            v.push(t.to_device(Device::Cpu).to_kind(Kind::Double));
        }
    }
    v
}

/// Attaches `feat_s`/`feat_t` arrays as feature maps (and, when 2-D, as the pooled vector).
/// AT reads every stage but the stem, so for `at` the given maps follow a placeholder stem.
fn with_features(mut o: Output, feats: Vec<Tensor>, method: &str) -> Output {
    if let Some(last) = feats.last() {
        if last.dim() == 2 {
            o.pooled = last.shallow_clone();
        }
    }
    o.feats = if method == "at" && !feats.is_empty() { std::iter::once(feats[0].shallow_clone()).chain(feats).collect() } else { feats };
    o
}

/// Runs `method` with `params` (`key=value` strings, values in TOML syntax or bare strings) at
/// `epoch`; returns `{"method", "epoch", "total", "terms": {name: value}}`.
pub fn loss_eval(method: &str, arrays: &BTreeMap<String, Tensor>, params: &[String], epoch: u32) -> anyhow::Result<serde_json::Value> {
    let Some(info) = super::find(method) else {
        crate::input_bail!("unknown method `{method}`; allowed: {}", super::names().join(", "));
    };
    let mut resolved = info.defaults();
    for p in params {
        let Some((k, v)) = p.split_once('=') else { crate::input_bail!("--param `{p}`: expected key=value") };
        let value =
            toml::from_str::<toml::Table>(&format!("v = {v}")).ok().and_then(|t| t.get("v").cloned()).unwrap_or_else(|| toml::Value::String(v.to_string()));
        let typed = info.check_param(k.trim(), &value).map_err(|m| InputError::new(format!("--param {p}: {m}")))?;
        resolved.insert(k.trim().to_string(), typed);
    }
    let get = |name: &str| -> Option<Tensor> { arrays.get(name).map(|t| t.to_device(Device::Cpu)) };
    let need =
        |name: &str| -> anyhow::Result<Tensor> { get(name).ok_or_else(|| anyhow::Error::new(InputError::new(format!("the input has no `{name}` array")))) };
    let f64_ = |t: Tensor| t.to_kind(Kind::Double);
    let student = f64_(need("student")?);
    let labels = need("labels")?.to_kind(Kind::Int64).view([-1]);
    let features = get("features").map(f64_);
    let s_out = with_features(output(&student, features.as_ref()), feature_list(arrays, "feat_s"), method);
    let teachers: Vec<Output> = match info.teachers {
        Teachers::None => vec![],
        Teachers::One => vec![with_features(output(&f64_(need("teacher")?), None), feature_list(arrays, "feat_t"), method)],
        Teachers::Many => {
            let ts = f64_(need("teachers")?);
            (0..ts.size()[0]).map(|k| output(&ts.get(k), None)).collect()
        }
        Teachers::Peers => vec![],
    };
    // Online methods: the peers are `teachers[1..]` when given (a cohort), else `teacher`.
    let peers: Vec<Output> = if info.teachers == Teachers::Peers {
        match get("teachers") {
            Some(ts) => {
                let ts = f64_(ts);
                (1..ts.size()[0]).map(|k| output(&ts.get(k), None)).collect()
            }
            None => vec![output(&f64_(need("teacher")?), None)],
        }
    } else {
        vec![]
    };
    let mut distiller = info.instantiate(&resolved)?;
    distiller.init_modules(&tch::nn::VarStore::new(Device::Cpu).root(), &s_out, &teachers)?;
    // Mixed targets go only to methods that mix their own batches (their loss is defined on them).
    let soft = if distiller.mixup().is_some() { get("soft_targets").map(f64_) } else { None };
    let dense = get("dense_argmax").map(|t| t.to_kind(Kind::Int64));
    let step = Step {
        student: &s_out,
        teachers: &teachers,
        peers: &peers,
        labels: &labels,
        soft_targets: soft.as_ref(),
        dense_argmax: dense.as_ref(),
        indices: None,
        label_smoothing: 0.0,
        epoch,
    };
    let terms = distiller.losses(&step)?;
    let mut map = serde_json::Map::new();
    let mut total = 0.0;
    for (name, t) in &terms {
        let v = t.double_value(&[]);
        total += v;
        map.insert(name.to_string(), serde_json::json!(v));
    }
    Ok(serde_json::json!({"method": method, "epoch": epoch, "total": total, "terms": map}))
}
