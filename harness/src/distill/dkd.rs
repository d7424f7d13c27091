//! `dkd`: Decoupled KD, Zhao et al. CVPR 2022 (methods-logit.md §2).
//! `L = w_ce·CE + min(epoch/warmup, 1)·(α·TCKD + β·NCKD)`, both KD parts with T².
//! TCKD compares the binary (target, rest) distributions; NCKD the softmax over non-target
//! classes. The target column is removed (not masked with −1000) and log(rest) is a logsumexp.

use tch::Tensor;

use super::{Distiller, MethodInfo, Params, Step, Teachers, float, fparam, kl_batchmean, nontarget_log_softmax};

pub static INFO: MethodInfo = MethodInfo {
    name: "dkd",
    paper: "Zhao et al. CVPR 2022, Decoupled Knowledge Distillation",
    teachers: Teachers::One,
    inputs: "student and teacher logits, epoch",
    params: &[
        fparam("ce_weight", 1.0, 0.0, 1e6, "weight of CE"),
        fparam("alpha", 1.0, 0.0, 1e6, "weight of TCKD"),
        fparam("beta", 8.0, 0.0, 1e6, "weight of NCKD (per pair: 2, 6 or 8 on CIFAR-100)"),
        fparam("tau", 4.0, 1e-3, 1e3, "temperature T"),
        fparam("warmup", 20.0, 0.0, 1e6, "epochs of linear warm-up of the KD weight (0 = none)"),
    ],
    build,
};

fn build(p: &Params) -> anyhow::Result<Box<dyn Distiller>> {
    Ok(Box::new(Dkd {
        ce_weight: float(p, "ce_weight")?,
        alpha: float(p, "alpha")?,
        beta: float(p, "beta")?,
        tau: float(p, "tau")?,
        warmup: float(p, "warmup")?,
    }))
}

struct Dkd {
    ce_weight: f64,
    alpha: f64,
    beta: f64,
    tau: f64,
    warmup: f64,
}

/// log of the binary (target, non-target) distribution of `softmax_T(z)`: N×2.
fn log_binary(z: &Tensor, y: &Tensor, tau: f64) -> Tensor {
    let logp = (z / tau).log_softmax(1, z.kind());
    let target = logp.gather(1, &y.unsqueeze(1), false);
    let gt = y.one_hot(z.size()[1]).to_kind(tch::Kind::Bool);
    let rest = logp.masked_fill(&gt, f64::NEG_INFINITY).logsumexp([1i64].as_slice(), true);
    Tensor::cat(&[target, rest], 1)
}

/// (TCKD, NCKD), each with T².
pub fn tckd_nckd(zs: &Tensor, zt: &Tensor, y: &Tensor, tau: f64) -> (Tensor, Tensor) {
    let zt = zt.detach();
    let t2 = tau * tau;
    let tckd = kl_batchmean(&log_binary(&zt, y, tau), &log_binary(zs, y, tau)) * t2;
    let nckd = kl_batchmean(&nontarget_log_softmax(&(&zt / tau), y), &nontarget_log_softmax(&(zs / tau), y)) * t2;
    (tckd, nckd)
}

/// `min(epoch / warmup, 1)` with 1-based epochs.
pub fn warmup_factor(epoch: u32, warmup: f64) -> f64 {
    if warmup <= 0.0 { 1.0 } else { (epoch as f64 / warmup).min(1.0) }
}

impl Distiller for Dkd {
    fn losses(&mut self, step: &Step<'_>) -> anyhow::Result<Vec<(&'static str, Tensor)>> {
        let t = step.teacher()?;
        let (tckd, nckd) = tckd_nckd(&step.student.logits, &t.logits, step.labels, self.tau);
        let w = warmup_factor(step.epoch, self.warmup);
        Ok(vec![("ce", step.ce() * self.ce_weight), ("tckd", tckd * (w * self.alpha)), ("nckd", nckd * (w * self.beta))])
    }
}
