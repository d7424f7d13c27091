//! Distillation methods: one file per method family behind [`Distiller`], and a registry.
//!
//! Adding a method: write `foo.rs` with a `pub static INFO: MethodInfo` and its distiller,
//! then add one line to [`REGISTRY`].

pub mod at;
pub mod bake;
pub mod bdkd;
pub mod camkd;
pub mod ce;
pub mod crd;
pub mod dist;
pub mod dkd;
pub mod dml;
pub mod eval;
pub mod fitnet;
pub mod kd;
pub mod ls;
pub mod metrics;
pub mod mixkd;
pub mod nkd;
pub mod pkt;
pub mod rkd;
pub mod sokd;
pub mod sp;
pub mod switokd;
pub mod tf_nkd;
pub mod zipf_ls;

use std::collections::BTreeMap;

use tch::Tensor;

use crate::models::Output;
use serde::{Deserialize, Serialize};

/// One training step's outputs, handed to a method.
#[derive(Clone, Copy)]
pub struct Step<'a> {
    pub student: &'a Output,
    /// Teacher outputs (eval mode, no-grad), in the suite's order; empty for teacher-free methods.
    pub teachers: &'a [Output],
    /// The other networks an online method trains on the same batch, detached (the exchange):
    /// for the run's network its peers in order; for peer k the run's network first, then the
    /// other peers in order. Empty for every other method.
    pub partners: &'a [Output],
    /// Hard labels (under mixup: the argmax of the mixed targets).
    pub labels: &'a Tensor,
    /// Mixed soft targets (N×C) when mixup is on.
    pub soft_targets: Option<&'a Tensor>,
    /// Per-location argmax votes of the student's classifier (N×L), for methods that ask.
    pub dense_argmax: Option<&'a Tensor>,
    /// Training-set indices of the batch's samples (CRD's memory), when known.
    pub indices: Option<&'a Tensor>,
    /// The recipe's label smoothing ε for the cross-entropy term (0 = plain CE).
    pub label_smoothing: f64,
    /// 1-based epoch (warm-ups depend on it).
    pub epoch: u32,
}

impl<'a> Step<'a> {
    /// A step with only logits-level inputs (no peers, mixup, votes, indices or smoothing).
    pub fn new(student: &'a Output, teachers: &'a [Output], labels: &'a Tensor, epoch: u32) -> Step<'a> {
        Step { student, teachers, partners: &[], labels, soft_targets: None, dense_argmax: None, indices: None, label_smoothing: 0.0, epoch }
    }

    /// The (first) teacher's outputs.
    pub fn teacher(&self) -> anyhow::Result<&Output> {
        self.teachers.first().ok_or_else(|| anyhow::anyhow!("this method needs teacher outputs"))
    }

    /// The task loss every method shares: CE with the labels, or with the mixed targets under
    /// mixup, with the recipe's label smoothing (Müller et al.: ε/K on every class).
    pub fn ce(&self) -> Tensor {
        self.ce_smoothed(self.label_smoothing)
    }

    /// [`Step::ce`] with an explicit smoothing ε.
    pub fn ce_smoothed(&self, eps: f64) -> Tensor {
        let z = &self.student.logits;
        match self.soft_targets {
            Some(y) => {
                let k = z.size()[1] as f64;
                let y = if eps > 0.0 { y * (1.0 - eps) + eps / k } else { y.shallow_clone() };
                soft_ce(z, &y)
            }
            None if eps > 0.0 => label_smoothed_ce(z, self.labels, eps),
            None => hard_ce(z, self.labels),
        }
    }
}

/// The partners of network `k` among the networks an online run trains (`outs` in order: the
/// run's network, then its peers): the others' outputs, detached, in order ([`Step::partners`]).
pub fn partners(outs: &[Output], k: usize) -> Vec<Output> {
    outs.iter().enumerate().filter(|&(j, _)| j != k).map(|(_, o)| o.detached()).collect()
}

/// Mean over rows of `−log softmax(z)_y`, in the logits' precision (tch's
/// `cross_entropy_for_logits` computes in float32).
pub fn hard_ce(z: &Tensor, y: &Tensor) -> Tensor {
    -z.log_softmax(1, z.kind()).gather(1, &y.unsqueeze(1), false).mean(z.kind())
}

/// Mean over rows of `−Σ_j target_j · log softmax(z)_j`.
pub fn soft_ce(z: &Tensor, target: &Tensor) -> Tensor {
    -(target * z.log_softmax(1, z.kind())).sum_dim_intlist(1, false, z.kind()).mean(z.kind())
}

/// CE against `(1−ε)·onehot(y) + ε/K` (uniform over all K classes, the Müller et al. convention).
pub fn label_smoothed_ce(z: &Tensor, y: &Tensor, eps: f64) -> Tensor {
    let k = z.size()[1];
    let target = y.one_hot(k).to_kind(z.kind()) * (1.0 - eps) + eps / k as f64;
    soft_ce(z, &target)
}

/// Batch mean of `KL(softmax(lt) ‖ softmax(ls))` from log-probabilities (xlogy convention:
/// rows are summed over classes, then averaged over the batch — "batchmean").
pub fn kl_batchmean(log_pt: &Tensor, log_ps: &Tensor) -> Tensor {
    kl_rows(log_pt, log_ps).mean(log_ps.kind())
}

/// Per-row `KL(p_t ‖ p_s)` from log-probabilities; entries with `p_t = 0` contribute 0.
pub fn kl_rows(log_pt: &Tensor, log_ps: &Tensor) -> Tensor {
    let pt = log_pt.exp();
    let terms = (&pt * (log_pt - log_ps)).where_self(&pt.gt(0.0), &pt.zeros_like());
    terms.sum_dim_intlist(1, false, log_ps.kind())
}

/// Log-softmax over the non-target classes (target column removed, order kept): N×(C−1).
pub fn nontarget_log_softmax(z: &Tensor, y: &Tensor) -> Tensor {
    let s = z.size();
    let (n, c) = (s[0], s[1]);
    let keep = y.one_hot(c).logical_not();
    z.masked_select(&keep).view([n, c - 1]).log_softmax(1, z.kind())
}

/// A distillation method: named loss terms whose sum is optimised; each term is logged.
pub trait Distiller: Send {
    fn losses(&mut self, step: &Step<'_>) -> anyhow::Result<Vec<(&'static str, Tensor)>>;

    /// Mixup this method does itself (MixKD); `None` leaves the recipe's mixup option in charge.
    fn mixup(&self) -> Option<crate::data::Mixup> {
        None
    }

    /// Same-class images added per anchor in a batch (BAKE's sampler); 0 = plain shuffling.
    fn same_class_per_anchor(&self) -> usize {
        0
    }

    /// Upsampling factor of the final feature map for dense classifier votes (Zipf LS), if used.
    fn dense_votes(&self) -> Option<i64> {
        None
    }

    /// Learning rate of the online peers relative to the run's lr (`None`: the same).
    fn peer_lr(&self) -> Option<f64> {
        None
    }

    /// The loss of online peer `k` (a network of `peers = [..]`), as a distiller of its own: the
    /// loop trains every peer like any network of a cohort (its forward on the shared batch,
    /// this loss over its output and its partners' detached outputs, its own optimiser and
    /// step). A peer whose loss returns no terms is not updated by that batch (SwitOKD's expert
    /// mode). `None`: the method trains no peers.
    fn peer(&self, _k: usize) -> Option<Box<dyn Distiller>> {
        None
    }

    /// Per-epoch statistics to log (e.g. SwitOKD's mode fractions); read and reset at epoch end.
    fn epoch_stats(&mut self) -> Vec<(&'static str, f64)> {
        vec![]
    }

    /// The run's model names and the dataset's model settings, before [`Distiller::init_modules`]
    /// (SOKD builds a fresh copy of its teacher's architecture).
    fn set_models(&mut self, _student: &str, _teachers: &[String], _cfg: crate::models::ModelCfg) {}

    /// Whether the (frozen) teachers run in train mode (BN batch statistics); SOKD's official
    /// code does this. Default: eval mode.
    fn teacher_train_mode(&self) -> bool {
        false
    }

    /// Labels of the whole training split, before [`Distiller::init_modules`] (CRD samples its
    /// negatives from other classes and sizes its memory from them).
    fn set_train_labels(&mut self, _labels: &Tensor) {}

    /// Builds the method's own trainable modules (FitNet's regressor) under `vs`, from one
    /// probe forward of the student and teachers. They join the optimiser and the checkpoint.
    fn init_modules(&mut self, _vs: &tch::nn::Path, _student: &Output, _teachers: &[Output]) -> anyhow::Result<()> {
        Ok(())
    }
}

/// A method parameter value (typed by the method's declaration, so `4` and `4.0` hash alike).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ParamValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    /// `Cow` so declarations can hold `'static` defaults.
    Str(std::borrow::Cow<'static, str>),
}

impl ParamValue {
    /// Numeric value (ints widen); `None` for bools and strings.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            ParamValue::Float(f) => Some(*f),
            ParamValue::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
}

impl std::fmt::Display for ParamValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamValue::Bool(b) => write!(f, "{b}"),
            ParamValue::Int(i) => write!(f, "{i}"),
            ParamValue::Float(x) => write!(f, "{x}"),
            ParamValue::Str(s) => write!(f, "{s}"),
        }
    }
}

/// Parameters every feature method shares: its CE weight γ and an optional KD term (α, T),
/// as RepDistiller combines them (`L = γ·CE + α·KD + β·L_method`; α = 0 by default).
pub const FEAT_CE: ParamDef = fparam("ce_weight", 1.0, 0.0, 1e6, "weight γ of CE");
/// See [`FEAT_CE`].
pub const FEAT_KD: ParamDef = fparam("kd_weight", 0.0, 0.0, 1e6, "weight α of an added KD term (0 = none; e.g. 1 for CRD+KD-style combinations)");
/// See [`FEAT_CE`].
pub const FEAT_TAU: ParamDef = fparam("tau", 4.0, 1e-3, 1e3, "temperature of the added KD term");

/// The CE and (when α > 0) KD terms of a feature method.
pub fn feature_logit_terms(step: &Step<'_>, p: &Params) -> anyhow::Result<Vec<(&'static str, Tensor)>> {
    let mut terms = vec![("ce", step.ce() * float(p, "ce_weight")?)];
    let kd_w = float(p, "kd_weight")?;
    if kd_w > 0.0 {
        terms.push(("kd", kd::kd_term(&step.student.logits, &step.teacher()?.logits, float(p, "tau")?) * kd_w));
    }
    Ok(terms)
}

/// How many teachers a method distils from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Teachers {
    /// Teacher-free (baselines, self-distillation).
    None,
    One,
    /// Two or more (multi-teacher).
    Many,
    /// No pre-trained teacher; one or more online peers (`peers = [..]`) train alongside.
    Peers,
}

/// The kind and bounds of a method parameter (checked at suite validation).
#[derive(Clone, Copy, Debug)]
pub enum ParamKind {
    /// A finite float in `[min, max]`.
    Float {
        min: f64,
        max: f64,
    },
    /// One of a fixed set of strings.
    Choice(&'static [&'static str]),
    Bool,
    /// An integer in `[min, max]`.
    Int {
        min: i64,
        max: i64,
    },
}

/// A declared method parameter with its default (from the spec's CIFAR-100 settings).
pub struct ParamDef {
    pub name: &'static str,
    pub kind: ParamKind,
    pub default: ParamValue,
    pub doc: &'static str,
}

/// Resolved parameters handed to a method's constructor.
pub type Params = BTreeMap<String, ParamValue>;

/// Registry entry for a method.
pub struct MethodInfo {
    pub name: &'static str,
    /// Paper (and spec section) the method follows.
    pub paper: &'static str,
    pub teachers: Teachers,
    /// Inputs beyond logits and labels, for `harness methods`.
    pub inputs: &'static str,
    pub params: &'static [ParamDef],
    pub build: fn(&Params) -> anyhow::Result<Box<dyn Distiller>>,
}

/// Every method, in the order `harness methods` lists them. One line per method.
pub static REGISTRY: &[&MethodInfo] = &[
    &ce::INFO,
    &ls::INFO,
    &kd::INFO,
    &dkd::INFO,
    &dist::INFO,
    &nkd::INFO,
    &tf_nkd::INFO,
    &bdkd::INFO,
    &zipf_ls::INFO,
    &bake::INFO,
    &mixkd::INFO,
    &camkd::INFO,
    &crd::INFO,
    &fitnet::INFO,
    &at::INFO,
    &sp::INFO,
    &rkd::INFO,
    &pkt::INFO,
    &dml::INFO,
    &switokd::INFO,
    &sokd::INFO,
    &bdkd::ONLINE,
];

/// Looks a method up by suite name.
pub fn find(name: &str) -> Option<&'static MethodInfo> {
    REGISTRY.iter().copied().find(|m| m.name == name)
}

/// All method names (for error messages).
pub fn names() -> Vec<&'static str> {
    REGISTRY.iter().map(|m| m.name).collect()
}

impl MethodInfo {
    pub fn needs_teacher(&self) -> bool {
        self.teachers != Teachers::None
    }

    /// Validates a parameter value from a suite; returns it typed.
    pub fn check_param(&self, name: &str, v: &toml::Value) -> Result<ParamValue, String> {
        let Some(def) = self.params.iter().find(|p| p.name == name) else {
            let allowed: Vec<&str> = self.params.iter().map(|p| p.name).collect();
            if allowed.is_empty() {
                return Err(format!("method `{}` takes no parameters (got `{name}`)", self.name));
            }
            return Err(crate::error::unknown(&format!("parameter of method `{}`", self.name), name, &allowed));
        };
        let tn = crate::error::type_name;
        match def.kind {
            ParamKind::Float { min, max } => {
                let x = match v {
                    toml::Value::Float(f) => *f,
                    toml::Value::Integer(i) => *i as f64,
                    other => return Err(format!("expected a number in [{min}, {max}], found {}", tn(other))),
                };
                if !x.is_finite() || x < min || x > max {
                    return Err(format!("expected a number in [{min}, {max}], found {x}"));
                }
                Ok(ParamValue::Float(x))
            }
            ParamKind::Choice(options) => match v.as_str() {
                Some(s) if options.contains(&s) => Ok(ParamValue::Str(s.to_string().into())),
                Some(s) => Err(crate::error::unknown("value", s, options)),
                None => Err(format!("expected one of {}, found {}", options.join(", "), tn(v))),
            },
            ParamKind::Int { min, max } => match v {
                toml::Value::Integer(i) if (min..=max).contains(i) => Ok(ParamValue::Int(*i)),
                other => Err(format!("expected an integer in [{min}, {max}], found {}", other)),
            },
            ParamKind::Bool => v.as_bool().map(ParamValue::Bool).ok_or_else(|| format!("expected true or false, found {}", tn(v))),
        }
    }

    /// Builds the distiller after checking the resolved parameters are complete.
    pub fn instantiate(&self, params: &Params) -> anyhow::Result<Box<dyn Distiller>> {
        for p in self.params {
            if !params.contains_key(p.name) {
                anyhow::bail!("method {}: parameter {} missing from the resolved config", self.name, p.name);
            }
        }
        (self.build)(params)
    }

    /// Defaults of every parameter.
    pub fn defaults(&self) -> Params {
        self.params.iter().map(|p| (p.name.to_string(), p.default.clone())).collect()
    }
}

/// Shorthand for a float parameter declaration.
pub const fn fparam(name: &'static str, default: f64, min: f64, max: f64, doc: &'static str) -> ParamDef {
    ParamDef { name, kind: ParamKind::Float { min, max }, default: ParamValue::Float(default), doc }
}

/// Reads a string parameter.
pub fn string(params: &Params, name: &str) -> anyhow::Result<String> {
    match params.get(name) {
        Some(ParamValue::Str(s)) => Ok(s.to_string()),
        _ => anyhow::bail!("parameter {name} missing or not a string"),
    }
}

/// Reads a bool parameter.
pub fn boolean(params: &Params, name: &str) -> anyhow::Result<bool> {
    match params.get(name) {
        Some(ParamValue::Bool(b)) => Ok(*b),
        _ => anyhow::bail!("parameter {name} missing or not a bool"),
    }
}

/// Reads a float parameter (present after `instantiate`'s check).
pub fn float(params: &Params, name: &str) -> anyhow::Result<f64> {
    params.get(name).and_then(ParamValue::as_f64).ok_or_else(|| anyhow::anyhow!("parameter {name} missing or not a number"))
}
