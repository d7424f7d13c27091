//! `zipf_ls`: Zipf's label smoothing, Liang et al. ECCV 2022 (methods-logit.md §5).
//! Self-distillation: `L = CE + λ·mean_i KL(q_i ‖ p̂^s_i)`, where `p̂^s` is the softmax over the
//! non-target classes and `q ∝ rank^(−power)` over the non-target classes, ranks descending by a
//! score with ties sharing the minimum rank. The score is the dense votes of the classifier over
//! the final feature map (upsampled ×2, the official CIFAR setting), or the student's own
//! detached logits with `rank = "logits"`.

use tch::{Kind, Tensor};

use super::{Distiller, MethodInfo, ParamDef, ParamKind, Params, Step, Teachers, boolean, float, fparam, kl_rows, nontarget_log_softmax, string};
use super::ParamValue;

pub static INFO: MethodInfo = MethodInfo {
    name: "zipf_ls",
    paper: "Liang et al. ECCV 2022, Efficient One Pass Self-distillation with Zipf's Label Smoothing",
    teachers: Teachers::None,
    inputs: "logits; dense classifier votes over the final feature map (rank = dense)",
    params: &[
        fparam("lambda", 0.1, 0.0, 1e6, "weight λ (0.1 CIFAR-100/ImageNet, 1.0 Tiny-ImageNet)"),
        fparam("power", 1.0, 0.0, 100.0, "Zipf exponent"),
        ParamDef {
            name: "rank",
            kind: ParamKind::Choice(&["dense", "logits"]),
            default: ParamValue::Str(std::borrow::Cow::Borrowed("dense")),
            doc: "ranking score: dense votes (official) or own logits",
        },
        ParamDef { name: "loss_mask", kind: ParamKind::Bool, default: ParamValue::Bool(false), doc: "average only over correctly classified samples" },
        ParamDef {
            name: "upsample",
            kind: ParamKind::Int { min: 1, max: 8 },
            default: ParamValue::Int(2),
            doc: "bilinear upsampling of the feature map before voting",
        },
    ],
    build,
};

fn build(p: &Params) -> anyhow::Result<Box<dyn Distiller>> {
    let rank = string(p, "rank")?;
    let upsample = match p.get("upsample") {
        Some(ParamValue::Int(i)) => *i,
        _ => anyhow::bail!("parameter upsample missing"),
    };
    Ok(Box::new(Zipf { lambda: float(p, "lambda")?, power: float(p, "power")?, dense: rank != "logits", loss_mask: boolean(p, "loss_mask")?, upsample }))
}

struct Zipf {
    lambda: f64,
    power: f64,
    dense: bool,
    loss_mask: bool,
    upsample: i64,
}

/// The Zipf target over the non-target classes (N×(C−1)), from a score per class.
pub fn zipf_target(score: &Tensor, y: &Tensor, power: f64, kind: Kind) -> Tensor {
    let s = score.size();
    let (n, c) = (s[0], s[1]);
    // rank[i, c] = 1 + #{k : score[i, k] > score[i, c]}
    let greater = score.unsqueeze(1).gt_tensor(&score.unsqueeze(2));
    let rank = greater.sum_dim_intlist(2, false, kind) + 1.0;
    let w = rank.pow_tensor_scalar(-power);
    let keep = y.one_hot(c).logical_not();
    let w = w.masked_select(&keep).view([n, c - 1]);
    &w / w.sum_dim_intlist(1, true, kind)
}

/// Per-class vote counts from per-location argmax classes (N×L) for C classes.
pub fn votes(dense_argmax: &Tensor, c: i64, kind: Kind) -> Tensor {
    let n = dense_argmax.size()[0];
    let ones = dense_argmax.ones_like().to_kind(kind);
    Tensor::zeros([n, c], (kind, dense_argmax.device())).scatter_add(1, dense_argmax, &ones)
}

/// `mean KL(q ‖ p̂^s)`, optionally over correctly classified samples only (0 if there are none).
pub fn zipf_term(z: &Tensor, y: &Tensor, dense_argmax: Option<&Tensor>, power: f64, loss_mask: bool) -> Tensor {
    let k = z.kind();
    let score = match dense_argmax {
        Some(d) => votes(d, z.size()[1], k),
        None => z.detach(),
    };
    let q = zipf_target(&score, y, power, k).detach();
    let kl = kl_rows(&q.log(), &nontarget_log_softmax(z, y));
    if loss_mask {
        let m = z.argmax(1, false).eq_tensor(y).to_kind(k);
        (kl * &m).sum(k) / m.sum(k).clamp_min(1.0)
    } else {
        kl.mean(k)
    }
}

impl Distiller for Zipf {
    fn losses(&mut self, step: &Step<'_>) -> anyhow::Result<Vec<(&'static str, Tensor)>> {
        let d = if self.dense {
            Some(step.dense_argmax.ok_or_else(|| {
                anyhow::anyhow!("zipf_ls with rank = \"dense\" needs dense votes (a model with a spatial feature map); use rank = \"logits\"")
            })?)
        } else {
            None
        };
        let term = zipf_term(&step.student.logits, step.labels, d, self.power, self.loss_mask) * self.lambda;
        Ok(vec![("ce", step.ce()), ("zipf", term)])
    }

    fn dense_votes(&self) -> Option<i64> {
        self.dense.then_some(self.upsample)
    }
}
