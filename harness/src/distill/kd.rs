//! `kd`: Hinton et al. 2015 (methods-logit.md §1).
//! `L = w_ce·CE(z_s, y) + w_kd·T²·(1/N)·Σ_i KL(softmax_T(z_t,i) ‖ softmax_T(z_s,i))`.

use tch::Tensor;

use super::{Distiller, MethodInfo, Params, Step, Teachers, float, fparam, kl_batchmean};

pub static INFO: MethodInfo = MethodInfo {
    name: "kd",
    paper: "Hinton et al. 2015, Distilling the Knowledge in a Neural Network",
    teachers: Teachers::One,
    inputs: "student and teacher logits",
    params: &[
        fparam("tau", 4.0, 1e-3, 1e3, "temperature T"),
        fparam("ce_weight", 0.1, 0.0, 1e6, "weight of CE with the labels"),
        fparam("kd_weight", 0.9, 0.0, 1e6, "weight of T²·KL(teacher‖student)"),
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
    let k = student.kind();
    let log_ps = (student / tau).log_softmax(1, k);
    let log_pt = (teacher.detach() / tau).log_softmax(1, k);
    kl_batchmean(&log_pt, &log_ps) * (tau * tau)
}

impl Distiller for Kd {
    fn losses(&mut self, step: &Step<'_>) -> anyhow::Result<Vec<(&'static str, Tensor)>> {
        let teacher = step.teacher()?;
        let ce = step.ce() * self.ce_weight;
        let kd = kd_term(&step.student.logits, &teacher.logits, self.tau) * self.kd_weight;
        Ok(vec![("ce", ce), ("kd", kd)])
    }
}
