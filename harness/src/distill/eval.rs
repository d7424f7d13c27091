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

/// Names of the feature arrays `<base>_0, <base>_1, …`, or a single `<base>`.
fn feature_names(arrays: &BTreeMap<String, Tensor>, base: &str) -> Vec<String> {
    let mut v = Vec::new();
    while arrays.contains_key(&format!("{base}_{}", v.len())) {
        v.push(format!("{base}_{}", v.len()));
    }
    if v.is_empty() && arrays.contains_key(base) {
        v.push(base.to_string());
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

/// Methods whose loss arrays alone do not define, with why (what they build besides the arrays).
const NOT_FROM_ARRAYS: &[(&str, &str)] = &[
    ("sokd", "its knowledge bridge is a freshly initialised copy of the teacher's last stage, built from the teacher's architecture"),
    ("crd", "its memory bank holds a random embedding of every training image, indexed by dataset position"),
];

fn bad(msg: String) -> anyhow::Error {
    anyhow::Error::new(InputError(msg))
}

fn is_float(k: Kind) -> bool {
    matches!(k, Kind::Half | Kind::BFloat16 | Kind::Float | Kind::Double)
}

fn is_int(k: Kind) -> bool {
    matches!(k, Kind::Int8 | Kind::Uint8 | Kind::Int16 | Kind::Int | Kind::Int64)
}

/// A float array `name` with `dims` dimensions (`None`: any ≥ 1), finite, as CPU float64.
fn float_array(t: &Tensor, name: &str, dims: Option<usize>) -> anyhow::Result<Tensor> {
    if !is_float(t.kind()) {
        return Err(bad(format!("array `{name}`: expected floating-point values, found dtype {:?}", t.kind())));
    }
    if let Some(d) = dims {
        if t.dim() != d {
            return Err(bad(format!("array `{name}`: expected {d} dimensions, found shape {:?}", t.size())));
        }
    } else if t.dim() == 0 {
        return Err(bad(format!("array `{name}`: expected an array with a batch dimension, found a scalar")));
    }
    let t = t.to_device(Device::Cpu).to_kind(Kind::Double);
    if t.numel() > 0 && !bool::try_from(t.isfinite().all()).unwrap_or(false) {
        return Err(bad(format!("array `{name}`: contains NaN or inf; expected finite values")));
    }
    Ok(t)
}

/// Checks that the first dimension of `t` is the batch size `n`.
fn same_batch(t: &Tensor, name: &str, n: i64) -> anyhow::Result<()> {
    match t.size().first() {
        Some(&m) if m == n => Ok(()),
        _ => Err(bad(format!("array `{name}`: expected {n} rows (the batch of `student`), found shape {:?}", t.size()))),
    }
}

/// Integer array `name` of shape `shape` with every value in `0..classes`, as CPU int64.
fn index_array(t: &Tensor, name: &str, shape: &[i64], classes: i64) -> anyhow::Result<Tensor> {
    if !is_int(t.kind()) {
        return Err(bad(format!("array `{name}`: expected integer class indices, found dtype {:?}", t.kind())));
    }
    if t.size() != shape {
        return Err(bad(format!("array `{name}`: expected shape {shape:?}, found {:?}", t.size())));
    }
    let t = t.to_device(Device::Cpu).to_kind(Kind::Int64);
    if t.numel() > 0 {
        let (lo, hi) = (t.min().int64_value(&[]), t.max().int64_value(&[]));
        if lo < 0 || hi >= classes {
            return Err(bad(format!("array `{name}`: values must be class indices in 0..{classes} (the columns of `student`), found {lo}..={hi}")));
        }
    }
    Ok(t)
}

/// Logits of one network: N×C floats like the student's.
fn logits_like(t: &Tensor, name: &str, nc: &[i64]) -> anyhow::Result<Tensor> {
    let t = float_array(t, name, Some(nc.len()))?;
    if t.size() != nc {
        return Err(bad(format!("array `{name}`: expected shape {nc:?} (as `student`), found {:?}", t.size())));
    }
    Ok(t)
}

/// Validated inputs of one evaluation.
struct Inputs {
    student: Tensor,
    labels: Tensor,
    features: Option<Tensor>,
    soft: Option<Tensor>,
    dense: Option<Tensor>,
    feat_s: Vec<Tensor>,
    feat_t: Vec<Tensor>,
}

/// Checks the arrays every method reads: `student` N×C (N, C ≥ 1), `labels` N integers in 0..C,
/// and the optional ones when present.
fn inputs(arrays: &BTreeMap<String, Tensor>) -> anyhow::Result<Inputs> {
    let need = |name: &str| arrays.get(name).ok_or_else(|| bad(format!("the input has no `{name}` array")));
    let student = float_array(need("student")?, "student", Some(2))?;
    let (n, c) = (student.size()[0], student.size()[1]);
    if n < 1 || c < 1 {
        return Err(bad(format!("array `student`: expected N×C logits with N, C >= 1, found shape {:?}", student.size())));
    }
    let labels = need("labels")?;
    let labels = if labels.dim() == 2 && labels.size()[1] == 1 { labels.view([-1]) } else { labels.shallow_clone() };
    let labels = index_array(&labels, "labels", &[n], c)?;
    let opt_float = |name: &str| -> anyhow::Result<Option<Tensor>> {
        arrays.get(name).map(|t| float_array(t, name, None).and_then(|t| same_batch(&t, name, n).map(|_| t))).transpose()
    };
    let features = opt_float("features")?;
    let soft = match arrays.get("soft_targets") {
        Some(t) => Some(logits_like(t, "soft_targets", &[n, c])?),
        None => None,
    };
    let dense = match arrays.get("dense_argmax") {
        Some(t) if t.dim() == 2 => Some(index_array(t, "dense_argmax", &[n, t.size()[1]], c)?),
        Some(t) => return Err(bad(format!("array `dense_argmax`: expected N×L class votes, found shape {:?}", t.size()))),
        None => None,
    };
    let list = |base: &str| -> anyhow::Result<Vec<Tensor>> {
        feature_names(arrays, base).iter().map(|name| float_array(&arrays[name], name, None).and_then(|t| same_batch(&t, name, n).map(|_| t))).collect()
    };
    Ok(Inputs { student, labels, features, soft, dense, feat_s: list("feat_s")?, feat_t: list("feat_t")? })
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
    if let Some((_, why)) = NOT_FROM_ARRAYS.iter().find(|(m, _)| *m == method) {
        crate::input_bail!("method `{method}` cannot be evaluated on arrays: {why}; train it in a suite instead");
    }
    let x = inputs(arrays)?;
    let nc = x.student.size();
    let s_out = with_features(output(&x.student, x.features.as_ref()), x.feat_s, method);
    let need = |name: &str, why: &str| arrays.get(name).ok_or_else(|| bad(format!("method `{method}` needs a `{name}` array ({why})")));
    let stacked = |min: i64, why: &str| -> anyhow::Result<Vec<Tensor>> {
        let ts = float_array(need("teachers", why)?, "teachers", Some(3))?;
        if ts.size()[0] < min || ts.size()[1..] != nc[..] {
            return Err(bad(format!("array `teachers`: expected K×{}×{} logits with K >= {min}, found shape {:?}", nc[0], nc[1], ts.size())));
        }
        Ok((0..ts.size()[0]).map(|k| ts.get(k)).collect())
    };
    let teachers: Vec<Output> = match info.teachers {
        Teachers::None | Teachers::Peers => vec![],
        Teachers::One => vec![with_features(output(&logits_like(need("teacher", "N×C teacher logits")?, "teacher", &nc)?, None), x.feat_t, method)],
        Teachers::Many => stacked(2, "K×N×C logits of K >= 2 teachers")?.iter().map(|t| output(t, None)).collect(),
    };
    // Online methods: the peers are `teachers[1..]` when given (a cohort), else `teacher`.
    let peers: Vec<Output> = match info.teachers {
        Teachers::Peers if arrays.contains_key("teachers") => stacked(2, "")?.iter().skip(1).map(|t| output(t, None)).collect(),
        Teachers::Peers => vec![output(&logits_like(need("teacher", "the peer's N×C logits, or `teachers` for a cohort")?, "teacher", &nc)?, None)],
        _ => vec![],
    };
    let mut distiller = info.instantiate(&resolved)?;
    // Mixed targets go only to methods that mix their own batches (their loss is defined on them).
    let soft = if distiller.mixup().is_some() { x.soft } else { None };
    let step = Step {
        student: &s_out,
        teachers: &teachers,
        partners: &peers,
        labels: &x.labels,
        soft_targets: soft.as_ref(),
        dense_argmax: x.dense.as_ref(),
        indices: None,
        label_smoothing: 0.0,
        epoch,
    };
    // The arrays were checked above; what a method still refuses (feature maps it cannot pair,
    // an error raised inside libtorch) is a problem with the arrays too, reported as such.
    let terms = quietly(|| -> anyhow::Result<Vec<(&'static str, f64)>> {
        distiller.init_modules(&tch::nn::VarStore::new(Device::Cpu).root(), &s_out, &teachers)?;
        let mut terms = distiller.losses(&step)?;
        // An online method's peers, each with the method's loss for it, as the loop trains them.
        let all: Vec<Output> = std::iter::once(s_out.detached()).chain(peers.iter().map(Output::detached)).collect();
        for k in 0..peers.len() {
            let mut d = distiller.peer(k).ok_or_else(|| anyhow::anyhow!("method {method} declares no loss for its peer {k}"))?;
            let partners = super::partners(&all, k + 1);
            terms.extend(d.losses(&Step { student: &all[k + 1], partners: &partners, ..step })?);
        }
        // Terms of the same name (DML's peers) are summed, as the run's record sums them.
        let mut summed: Vec<(&'static str, f64)> = vec![];
        for (name, t) in &terms {
            let v = t.f_double_value(&[])?;
            match summed.iter_mut().find(|(n, _)| n == name) {
                Some((_, s)) => *s += v,
                None => summed.push((*name, v)),
            }
        }
        Ok(summed)
    })
    .map_err(|m| bad(format!("method `{method}` cannot use these arrays: {m}")))?;
    let mut map = serde_json::Map::new();
    let mut total = 0.0;
    for (name, v) in terms {
        total += v;
        map.insert(name.to_string(), serde_json::json!(v));
    }
    Ok(serde_json::json!({"method": method, "epoch": epoch, "total": total, "terms": map}))
}

/// Runs `f`, turning its error or a panic raised by libtorch (tch's infallible ops panic on
/// C++ errors) into a one-line message, without printing a panic report.
fn quietly<T>(f: impl FnOnce() -> anyhow::Result<T>) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(p) => {
            let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            // libtorch's message without its C++ backtrace.
            let first = msg.split("Exception raised from").next().unwrap_or("").trim();
            Err(first.lines().next().unwrap_or("libtorch refused the arrays").to_string())
        }
    }
}
