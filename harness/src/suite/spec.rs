//! Fully resolved run specifications and their content-addressed ids.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::Kind;

pub use crate::distill::ParamValue;


/// The training recipe: optimiser and schedule. Epochs are 1-based; the lr for epoch `e` is
/// `lr · gamma^(#milestones < e)` (mdistiller/RepDistiller: epoch 151 is the first at 0.1× for 150).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Recipe {
    pub epochs: u32,
    pub batch_size: u32,
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub milestones: Vec<u32>,
    pub gamma: f64,
    /// Random crop (dataset padding) + horizontal flip (where the dataset allows it).
    pub augment: bool,
    /// Label smoothing ε of the CE term (Müller et al.; 0 = off). Works for teachers too.
    #[serde(default)]
    pub label_smoothing: f64,
    /// Mixup Beta(α, α) for any method (0 = off; MixKD brings its own).
    #[serde(default)]
    pub mixup_alpha: f64,
    /// Partial mixup: fraction of ⌊p·N⌋ indices (drawn with replacement) left unmixed; 0 = full mixup.
    #[serde(default)]
    pub mixup_partial: f64,
    /// Arithmetic of the forward passes (`crate::train::precision`); absent from the id and
    /// config when fp32, so runs planned before the option keep their ids.
    #[serde(default, skip_serializing_if = "Precision::is_fp32")]
    pub precision: Precision,
}

impl Default for Recipe {
    /// The CIFAR-100 recipe shared by CRD, DKD and their successors (anchors.md §2.1).
    fn default() -> Self {
        Recipe {
            epochs: 240,
            batch_size: 64,
            lr: 0.05,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 5e-4,
            milestones: vec![150, 180, 210],
            gamma: 0.1,
            augment: true,
            label_smoothing: 0.0,
            mixup_alpha: 0.0,
            mixup_partial: 0.0,
            precision: Precision::Fp32,
        }
    }
}

/// Keys a `[train]` table (or a `train.<key>` axis) may set.
pub const RECIPE_KEYS: &[&str] = &[
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "nesterov",
    "weight_decay",
    "milestones",
    "gamma",
    "augment",
    "label_smoothing",
    "mixup_alpha",
    "mixup_partial",
    "precision",
];

impl Recipe {
    /// Learning rate in effect during 1-based `epoch`.
    pub fn lr_at(&self, epoch: u32) -> f64 {
        let n = self.milestones.iter().filter(|&&m| m < epoch).count() as i32;
        self.lr * self.gamma.powi(n)
    }

    /// Sets one key from a TOML value; the error says what was expected.
    pub fn set(&mut self, key: &str, v: &toml::Value) -> Result<(), String> {
        match key {
            "epochs" => self.epochs = positive_int(v)?,
            "batch_size" => self.batch_size = positive_int(v)?,
            "lr" => self.lr = positive_float(v)?,
            "momentum" => {
                let m = float(v)?;
                if !(0.0..1.0).contains(&m) {
                    return Err(format!("expected a number in [0, 1), found {m}"));
                }
                self.momentum = m
            }
            "nesterov" => self.nesterov = boolean(v)?,
            "weight_decay" => {
                let w = float(v)?;
                if w < 0.0 {
                    return Err(format!("expected a number >= 0, found {w}"));
                }
                self.weight_decay = w
            }
            "milestones" => {
                let arr = v.as_array().ok_or_else(|| format!("expected an array of epochs, found {}", super::source::type_name(v)))?;
                let mut ms = Vec::new();
                for x in arr {
                    ms.push(positive_int(x)?);
                }
                if ms.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(format!("expected strictly increasing epochs, found {ms:?}"));
                }
                self.milestones = ms
            }
            "gamma" => self.gamma = positive_float(v)?,
            "augment" => self.augment = boolean(v)?,
            "label_smoothing" => self.label_smoothing = unit(v)?,
            "mixup_alpha" => {
                let a = float(v)?;
                if a < 0.0 {
                    return Err(format!("expected a number >= 0 (0 = off), found {a}"));
                }
                self.mixup_alpha = a
            }
            "mixup_partial" => self.mixup_partial = unit(v)?,
            "precision" => {
                let s = v.as_str().ok_or_else(|| format!("expected one of {}, found {}", PRECISIONS.join(", "), super::source::type_name(v)))?;
                self.precision = Precision::parse(s)?
            }
            other => return Err(super::source::unknown("recipe key", other, RECIPE_KEYS)),
        }
        Ok(())
    }

    /// The recipe's mixup, if on.
    pub fn mixup(&self) -> Option<crate::data::Mixup> {
        (self.mixup_alpha > 0.0).then(|| crate::data::Mixup { alpha: self.mixup_alpha, partial: (self.mixup_partial > 0.0).then_some(self.mixup_partial) })
    }

    /// Cross-key checks, after all keys are set.
    pub fn check(&self) -> Result<(), String> {
        if self.nesterov && self.momentum == 0.0 {
            return Err("nesterov = true needs momentum > 0".into());
        }
        Ok(())
    }
}

fn float(v: &toml::Value) -> Result<f64, String> {
    match v {
        toml::Value::Float(f) if f.is_finite() => Ok(*f),
        toml::Value::Integer(i) => Ok(*i as f64),
        other => Err(format!("expected a number, found {}", super::source::type_name(other))),
    }
}
fn unit(v: &toml::Value) -> Result<f64, String> {
    let f = float(v)?;
    if !(0.0..=1.0).contains(&f) {
        return Err(format!("expected a number in [0, 1], found {f}"));
    }
    Ok(f)
}
fn positive_float(v: &toml::Value) -> Result<f64, String> {
    let f = float(v)?;
    if f <= 0.0 {
        return Err(format!("expected a number > 0, found {f}"));
    }
    Ok(f)
}
fn positive_int(v: &toml::Value) -> Result<u32, String> {
    match v {
        toml::Value::Integer(i) if *i >= 1 && *i <= u32::MAX as i64 => Ok(*i as u32),
        toml::Value::Integer(i) => Err(format!("expected an integer >= 1, found {i}")),
        other => Err(format!("expected an integer, found {}", super::source::type_name(other))),
    }
}
fn boolean(v: &toml::Value) -> Result<bool, String> {
    v.as_bool().ok_or_else(|| format!("expected true or false, found {}", super::source::type_name(v)))
}

/// Whether a run is a teacher (others depend on its weights) or a student.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Teacher,
    Student,
}

/// The dataset a run trains on; the fingerprint (hash of the files) is part of the id.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DataRef {
    pub name: String,
    pub fingerprint: String,
}

/// Where a student's teacher comes from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TeacherRef {
    /// A teacher trained by this suite (its run id names the sibling run directory).
    Run { id: String, model: String },
    /// An external checkpoint; `hash` (blake3 of the file) is what the id depends on.
    Checkpoint { path: String, model: String, hash: String },
}

impl TeacherRef {
    pub fn model(&self) -> &str {
        match self {
            TeacherRef::Run { model, .. } | TeacherRef::Checkpoint { model, .. } => model,
        }
    }
}

/// A fully resolved run: every default filled in. Serialised as the run's `config.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunSpec {
    pub id: String,
    pub suite: String,
    pub role: Role,
    pub dataset: DataRef,
    pub model: String,
    pub method: String,
    pub params: BTreeMap<String, ParamValue>,
    pub train: Recipe,
    pub seed: u64,
    /// Teachers in the suite's order (none for teacher-free methods, several for multi-teacher).
    pub teachers: Vec<TeacherRef>,
    /// Online peers (model names) trained from scratch alongside this network (DML, SwitOKD).
    #[serde(default)]
    pub peers: Vec<String>,
    /// Write `model.safetensors` at the end (always for teachers).
    pub save_model: bool,
    /// Needs a whole GPU (or all CPU slots) to itself; a scheduling hint, not part of the id.
    #[serde(default)]
    pub exclusive: bool,
    /// A pruning stage: the run starts from its parent's weights instead of a random init.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<PruneStage>,
    /// The student is formed from its (pruned) teacher (prune-then-distill §7): the teacher's
    /// architecture with conv widths c_l = round(nnz_l / (k²·c_{l−1})), fixed when the run starts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub student_from_teacher: bool,
}

/// One pruning stage of a teacher (spec §6/§7/§10): start from `parent`'s weights (and masks, for a
/// later magnitude round), compute the masks, then fine-tune with them fixed (this run's recipe).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PruneStage {
    /// `prue` (one shot over the conv weights, Wang et al.) or `magnitude` (global L1 over conv and
    /// linear weights, one round of prune-then-distill's iterative schedule).
    pub method: String,
    /// PrUE: the sparsity over all conv weights. magnitude: the fraction of the weights still alive
    /// that this round removes.
    pub amount: f64,
    /// 1-based round of `rounds` (1 of 1 for PrUE).
    pub round: u32,
    pub rounds: u32,
    /// The sparsity the whole schedule aims at (as the suite requested it).
    pub target: f64,
    /// Batch of PrUE's sorted-by-label criterion pass (the official code: 500).
    pub batch: u32,
    /// The model this stage prunes: the dense teacher, or the previous round.
    pub parent: TeacherRef,
}

/// Names of the pruning criteria a suite may request.
pub const PRUNE_METHODS: &[&str] = &["prue", "magnitude"];

/// What the id hashes: the computation, not where or why it runs (suite, role, saving excluded),
/// and not the checkpoint's path (only its hash).
#[derive(Serialize)]
struct IdView<'a> {
    schema: u32,
    dataset: &'a DataRef,
    model: &'a str,
    method: &'a str,
    params: &'a BTreeMap<String, ParamValue>,
    train: &'a Recipe,
    seed: u64,
    teachers: Vec<IdTeacher<'a>>,
    peers: &'a [String],
    /// Absent for unpruned runs, so their ids are unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    prune: Option<IdPrune<'a>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    student_from_teacher: bool,
}

#[derive(Serialize)]
struct IdPrune<'a> {
    method: &'a str,
    amount: f64,
    round: u32,
    rounds: u32,
    target: f64,
    batch: u32,
    parent: IdTeacher<'a>,
}

fn id_teacher(t: &TeacherRef) -> IdTeacher<'_> {
    match t {
        TeacherRef::Run { id, .. } => IdTeacher::Run(id),
        TeacherRef::Checkpoint { model, hash, .. } => IdTeacher::Checkpoint(model, hash),
    }
}

#[derive(Serialize)]
enum IdTeacher<'a> {
    Run(&'a str),
    Checkpoint(&'a str, &'a str),
}

/// Bumped when the meaning of a resolved config changes, so old results are not reused.
pub const ID_SCHEMA: u32 = 1;

impl RunSpec {
    /// The canonical JSON hashed into the id (field order fixed by the struct, maps sorted).
    pub fn canonical_json(&self) -> String {
        let view = IdView {
            schema: ID_SCHEMA,
            dataset: &self.dataset,
            model: &self.model,
            method: &self.method,
            params: &self.params,
            train: &self.train,
            seed: self.seed,
            teachers: self.teachers.iter().map(id_teacher).collect(),
            peers: &self.peers,
            prune: self.prune.as_ref().map(|p| IdPrune {
                method: &p.method,
                amount: p.amount,
                round: p.round,
                rounds: p.rounds,
                target: p.target,
                batch: p.batch,
                parent: id_teacher(&p.parent),
            }),
            student_from_teacher: self.student_from_teacher,
        };
        // Serialising plain structs/BTreeMaps cannot fail.
        serde_json::to_string(&view).unwrap_or_default()
    }

    /// Content-addressed id: 16 hex digits of blake3(canonical JSON).
    pub fn compute_id(&self) -> String {
        let h = blake3::hash(self.canonical_json().as_bytes());
        h.to_hex()[..16].to_string()
    }

    /// Teacher model names joined with `+`.
    pub fn teacher_models(&self) -> String {
        self.teachers.iter().map(|t| t.model()).collect::<Vec<_>>().join("+")
    }

    /// Short human label, e.g. `cnn_tiny kd(tau=4) <- cnn_small s1`.
    pub fn label(&self) -> String {
        let mut s = format!("{} {}", self.model, self.method);
        if !self.teachers.is_empty() {
            s.push_str(&format!(" <- {}", self.teacher_models()));
        }
        if !self.peers.is_empty() {
            s.push_str(&format!(" + {}", self.peers.join("+")));
        }
        if let Some(p) = &self.prune {
            s.push_str(&format!(" pruned {} {}/{} of {}", p.method, p.round, p.rounds, p.parent.model()));
        }
        s.push_str(&format!(" seed {}", self.seed));
        s
    }
}

/// Arithmetic of a run's forward passes. Part of the run id only when not fp32, so fp32 ids are
/// those of runs planned before the option existed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
    Fp16,
}

/// Values `train.precision` accepts.
pub const PRECISIONS: &[&str] = &["fp32", "bf16", "fp16"];

impl Precision {
    pub fn parse(s: &str) -> Result<Precision, String> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "bf16" => Ok(Precision::Bf16),
            "fp16" => Ok(Precision::Fp16),
            other => Err(format!("expected one of {}, found \"{other}\"", PRECISIONS.join(", "))),
        }
    }

    pub fn as_str(self) -> &'static str {
        PRECISIONS[self as usize]
    }

    pub fn is_fp32(&self) -> bool {
        *self == Precision::Fp32
    }

    /// The low dtype conv/matmul run in under autocast.
    pub fn kind(self) -> Kind {
        match self {
            Precision::Fp32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
            Precision::Fp16 => Kind::Half,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Rounds n of 20%-of-the-remaining pruning whose sparsity 1 − 0.8ⁿ is closest to `target`
/// (ties → fewer rounds), as prune-then-distill picks them: 0.36 → 2, 0.59 → 4, 0.8 → 7.
pub fn rounds_for(target: f64, rate: f64) -> u32 {
    let keep = 1.0 - rate;
    let mut n = 0u32;
    while 1.0 - keep.powi(n as i32) <= target && n < 1000 {
        n += 1;
    }
    if n == 0 {
        return 0;
    }
    let lower = (target - (1.0 - keep.powi(n as i32 - 1))).abs();
    let upper = (target - (1.0 - keep.powi(n as i32))).abs();
    if lower <= upper { n - 1 } else { n }
}
