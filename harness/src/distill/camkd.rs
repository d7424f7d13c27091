//! `camkd`: Confidence-Aware Multi-teacher KD, Zhang, Chen, Wang ICASSP 2022 (methods-logit.md §9),
//! logit part: per-sample teacher weights `w_{k,i} = (1 − softmax_k(CE_{·,i})_k)/(K−1)` (softmax across
//! teachers of their CE with the label) favour the more confident teacher;
//! `L = γ·CE + α·T²·(1/(N·K))·Σ_k Σ_i w_{k,i}·KL(softmax_T(z^{t,k}_i) ‖ softmax_T(z^s_i))`.
//! The intermediate-feature part (adapters, teacher heads) comes with the feature methods.

use tch::Tensor;

use super::{Distiller, MethodInfo, Params, Step, Teachers, float, fparam, kl_rows};

pub static INFO: MethodInfo = MethodInfo {
    name: "camkd",
    paper: "Zhang, Chen, Wang ICASSP 2022, Confidence-Aware Multi-Teacher Knowledge Distillation (logit part)",
    teachers: Teachers::Many,
    inputs: "student logits and K >= 2 teachers' logits",
    params: &[
        fparam("tau", 4.0, 1e-3, 1e3, "temperature T"),
        fparam("gamma", 1.0, 0.0, 1e6, "weight of CE"),
        fparam("alpha", 1.0, 0.0, 1e6, "weight of the weighted KD term"),
    ],
    build,
};

fn build(p: &Params) -> anyhow::Result<Box<dyn Distiller>> {
    Ok(Box::new(CaMkd { tau: float(p, "tau")?, gamma: float(p, "gamma")?, alpha: float(p, "alpha")? }))
}

struct CaMkd {
    tau: f64,
    gamma: f64,
    alpha: f64,
}

/// Per-teacher, per-sample weights (K×N) from the teachers' CE with the labels.
pub fn teacher_weights(zts: &[Tensor], y: &Tensor) -> Tensor {
    let k = zts.len() as f64;
    let ce: Vec<Tensor> = zts.iter().map(|z| -z.detach().log_softmax(1, z.kind()).gather(1, &y.unsqueeze(1), false).squeeze_dim(1)).collect();
    let ce = Tensor::stack(&ce, 0);
    (1.0 - ce.softmax(0, ce.kind())) / (k - 1.0)
}

/// The weighted KD term `T²·Σ w·KL / (N·K)`.
pub fn camkd_term(zs: &Tensor, zts: &[Tensor], y: &Tensor, tau: f64) -> Tensor {
    let kind = zs.kind();
    let w = teacher_weights(zts, y);
    let log_ps = (zs / tau).log_softmax(1, kind);
    let kls: Vec<Tensor> = zts.iter().map(|z| kl_rows(&(z.detach() / tau).log_softmax(1, kind), &log_ps)).collect();
    let n = zs.size()[0] as f64;
    (w * Tensor::stack(&kls, 0)).sum(kind) * (tau * tau) / (n * zts.len() as f64)
}

impl Distiller for CaMkd {
    fn losses(&mut self, step: &Step<'_>) -> anyhow::Result<Vec<(&'static str, Tensor)>> {
        if step.teachers.len() < 2 {
            anyhow::bail!("camkd needs at least two teachers, got {}", step.teachers.len());
        }
        let zts: Vec<Tensor> = step.teachers.iter().map(|t| t.logits.shallow_clone()).collect();
        let term = camkd_term(&step.student.logits, &zts, step.labels, self.tau);
        Ok(vec![("ce", step.ce() * self.gamma), ("camkd", term * self.alpha)])
    }
}
