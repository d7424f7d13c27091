//! `kd`: Hinton et al. 2015 (methods-logit.md §1).
//! `L = w_ce·CE(z_s, y) + w_kd·T²·(1/N)·Σ_i KL(softmax_T(z_t,i) ‖ softmax_T(z_s,i))`.

use tch::{Kind, Tensor};

use super::{Distiller, MethodInfo, ParamDef, ParamKind, Params, Step, float};
use crate::suite::ParamValue;

pub static INFO: MethodInfo = MethodInfo {
    name: "kd",
    paper: "Hinton et al. 2015, Distilling the Knowledge in a Neural Network",
    needs_teacher: true,
    params: &[
        ParamDef { name: "tau", kind: ParamKind::Float { min: 1e-3, max: 1e3 }, default: ParamValue::Float(4.0), doc: "temperature T" },
        ParamDef { name: "ce_weight", kind: ParamKind::Float { min: 0.0, max: 1e6 }, default: ParamValue::Float(0.1), doc: "weight of CE with the labels" },
        ParamDef {
            name: "kd_weight", kind: ParamKind::Float { min: 0.0, max: 1e6 }, default: ParamValue::Float(0.9), doc: "weight of T²·KL(teacher‖student)"
        },
    ],
    build,
};

fn build(p: &Params) -> anyhow::Result<Box<dyn Distiller>> {
    Ok(Box::new(Kd { tau: float(p, "tau")?, ce_weight: float(p, "ce_weight")?, kd_weight: float(p, "kd_weight")? }))
}

struct Kd {
    tau: f64,
    ce_weight: f64,
    kd_weight: f64,
}

/// `T² · batchmean KL(softmax_T(teacher) ‖ softmax_T(student))`. libtorch's `Mean` reduction
/// divides by N·C, so sum over classes and average over the batch by hand.
pub fn kd_term(student: &Tensor, teacher: &Tensor, tau: f64) -> Tensor {
    let log_ps = (student / tau).log_softmax(1, Kind::Float);
    let log_pt = (teacher.detach() / tau).log_softmax(1, Kind::Float);
    let kl = (log_pt.exp() * (&log_pt - &log_ps)).sum_dim_intlist(1, false, Kind::Float).mean(Kind::Float);
    kl * (tau * tau)
}

impl Distiller for Kd {
    fn losses(&mut self, step: &Step<'_>) -> anyhow::Result<Vec<(&'static str, Tensor)>> {
        let teacher = step.teacher.ok_or_else(|| anyhow::anyhow!("kd needs teacher outputs"))?;
        let ce = step.student.logits.cross_entropy_for_logits(step.labels) * self.ce_weight;
        let kd = kd_term(&step.student.logits, &teacher.logits, self.tau) * self.kd_weight;
        Ok(vec![("ce", ce), ("kd", kd)])
    }
}
