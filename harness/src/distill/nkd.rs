//! `nkd`: Normalized KD, Yang et al. ICCV 2023 (methods-logit.md §4a).
//! `L = CE + L_t + L_non`: `L_t = −mean p^t_y·log p^s_y` (T = 1, p^t_y detached) and
//! `L_non = −γ·T²·mean Σ_{j≠y} p̂^t_j log p̂^s_j`, a soft cross-entropy (not a KL) over the
//! non-target classes at temperature T.

use tch::Tensor;

use super::{Distiller, MethodInfo, Params, Step, Teachers, float, fparam, nontarget_log_softmax};

pub static INFO: MethodInfo = MethodInfo {
    name: "nkd",
    paper: "Yang et al. ICCV 2023, From KD to Self-KD: normalized loss and customized soft labels",
    teachers: Teachers::One,
    inputs: "student and teacher logits",
    params: &[
        fparam("ce_weight", 1.0, 0.0, 1e6, "weight of CE"),
        fparam("tau", 3.0, 1e-3, 1e3, "temperature T of the non-target part (1 on ImageNet)"),
        fparam("gamma", 3.5, 0.0, 1e6, "weight γ of the non-target part (1.5 on ImageNet)"),
    ],
    build,
};

fn build(p: &Params) -> anyhow::Result<Box<dyn Distiller>> {
    Ok(Box::new(Nkd { ce_weight: float(p, "ce_weight")?, tau: float(p, "tau")?, gamma: float(p, "gamma")? }))
}

struct Nkd {
    ce_weight: f64,
    tau: f64,
    gamma: f64,
}

/// (L_t, L_non).
pub fn nkd_parts(zs: &Tensor, zt: &Tensor, y: &Tensor, tau: f64, gamma: f64) -> (Tensor, Tensor) {
    let k = zs.kind();
    let zt = zt.detach();
    let yi = y.unsqueeze(1);
    let pt_y = zt.softmax(1, k).gather(1, &yi, false);
    let log_ps_y = zs.log_softmax(1, k).gather(1, &yi, false);
    let l_t = -(pt_y * log_ps_y).mean(k);
    let pt_hat = nontarget_log_softmax(&(&zt / tau), y).exp();
    let log_ps_hat = nontarget_log_softmax(&(zs / tau), y);
    let l_non = -(pt_hat * log_ps_hat).sum_dim_intlist(1, false, k).mean(k) * (gamma * tau * tau);
    (l_t, l_non)
}

impl Distiller for Nkd {
    fn losses(&mut self, step: &Step<'_>) -> anyhow::Result<Vec<(&'static str, Tensor)>> {
        let t = step.teacher()?;
        let (l_t, l_non) = nkd_parts(&step.student.logits, &t.logits, step.labels, self.tau, self.gamma);
        Ok(vec![("ce", step.ce() * self.ce_weight), ("nkd_target", l_t), ("nkd_nontarget", l_non)])
    }
}
