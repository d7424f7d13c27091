//! `bdkd`: BD-KD, Amara et al. arXiv 2212.12965 — **reconstructed from the paper's description**
//! (methods-logit.md §10: no official code; the weighting rule is an assumption).
//! Student: `CE + T²·mean_i [w_F·KL(p^t‖p^s) + w_R·KL(p^s‖p^t)]`, the weights set per sample by
//! the entropy gap (see [`weights`]). This is the offline form (teacher fixed); the online form,
//! where the teacher trains with `CE + T²·KL(p^t‖p^s)`, belongs with the online methods.

use tch::Tensor;

use super::{Distiller, MethodInfo, Params, Step, Teachers, float, fparam, kl_rows};

pub static INFO: MethodInfo = MethodInfo {
    name: "bdkd",
    paper: "Amara et al. 2022, Balancing the Divergences for Online KD — RECONSTRUCTED weighting (no official code)",
    teachers: Teachers::One,
    inputs: "student and teacher logits",
    params: &[
        fparam("ce_weight", 1.0, 0.0, 1e6, "weight of CE"),
        fparam("tau", 1.0, 1e-3, 1e3, "temperature T (assumed 1, the DML setting)"),
        fparam("lambda", 2.0, 0.0, 1e6, "weight of the divergence favoured by the entropy gap (assumed 2; 1 = symmetric KL)"),
    ],
    build,
};

/// The online setting: the teacher (`peers = [model]`) trains alongside with
/// `CE + T²·KL(p^t ‖ p^s)` (student detached) — also reconstructed, see the module docs.
pub static ONLINE: MethodInfo = MethodInfo {
    name: "bdkd_online",
    paper: "Amara et al. 2022, Balancing the Divergences for Online KD, online setting — RECONSTRUCTED weighting (no official code)",
    teachers: Teachers::Peers,
    inputs: "student logits and the online teacher's (peers = [teacher model])",
    params: &[
        fparam("ce_weight", 1.0, 0.0, 1e6, "weight of CE"),
        fparam("tau", 1.0, 1e-3, 1e3, "temperature T (assumed 1, the DML setting)"),
        fparam("lambda", 2.0, 0.0, 1e6, "weight of the divergence favoured by the entropy gap (assumed 2; 1 = symmetric KL)"),
        fparam("peer_lr", 1.0, 1e-6, 1e6, "teacher's learning rate relative to train.lr"),
    ],
    build: build_online,
};

fn build(p: &Params) -> anyhow::Result<Box<dyn Distiller>> {
    Ok(Box::new(Bdkd { ce_weight: float(p, "ce_weight")?, tau: float(p, "tau")?, lambda: float(p, "lambda")?, peer_lr: None }))
}

fn build_online(p: &Params) -> anyhow::Result<Box<dyn Distiller>> {
    Ok(Box::new(Bdkd { ce_weight: float(p, "ce_weight")?, tau: float(p, "tau")?, lambda: float(p, "lambda")?, peer_lr: Some(float(p, "peer_lr")?) }))
}

/// The teacher's online term `T²·mean KL(p^t ‖ p^s)`, student detached.
pub fn teacher_term(zs: &Tensor, zt: &Tensor, tau: f64) -> Tensor {
    let k = zt.kind();
    let log_pt = (zt / tau).log_softmax(1, k);
    let log_ps = (zs.detach() / tau).log_softmax(1, k);
    super::kl_batchmean(&log_pt, &log_ps) * (tau * tau)
}

struct Bdkd {
    ce_weight: f64,
    tau: f64,
    lambda: f64,
    /// `Some` in the online setting.
    peer_lr: Option<f64>,
}

/// The ASSUMED sample-wise weighting (kept in one place so it can be replaced): a less confident
/// student (H_s > H_t) gets (w_F, w_R) = (1, λ), an over-confident one (λ, 1), equal entropies (1, 1).
pub fn weights(h_s: &Tensor, h_t: &Tensor, lambda: f64) -> (Tensor, Tensor) {
    let one = h_s.ones_like();
    let lam = &one * lambda;
    let less = h_s.gt_tensor(h_t);
    let more = h_s.lt_tensor(h_t);
    let w_f = one.where_self(&less, &lam.where_self(&more, &one));
    let w_r = lam.where_self(&less, &one);
    (w_f, w_r)
}

/// `T²·mean_i [w_F·FKL + w_R·RKL]`, teacher detached.
pub fn student_term(zs: &Tensor, zt: &Tensor, tau: f64, lambda: f64) -> Tensor {
    let k = zs.kind();
    let log_ps = (zs / tau).log_softmax(1, k);
    let log_pt = (zt.detach() / tau).log_softmax(1, k);
    let entropy = |lp: &Tensor| -(lp.exp() * lp).sum_dim_intlist(1, false, k);
    let (w_f, w_r) = weights(&entropy(&log_ps.detach()), &entropy(&log_pt), lambda);
    let fkl = kl_rows(&log_pt, &log_ps);
    let rkl = kl_rows(&log_ps, &log_pt);
    (w_f * fkl + w_r * rkl).mean(k) * (tau * tau)
}

impl Distiller for Bdkd {
    fn losses(&mut self, step: &Step<'_>) -> anyhow::Result<Vec<(&'static str, Tensor)>> {
        let t = match self.peer_lr {
            Some(_) => step.partners.first().ok_or_else(|| anyhow::anyhow!("bdkd_online needs its teacher as a peer (peers = [model])"))?,
            None => step.teacher()?,
        };
        Ok(vec![("ce", step.ce() * self.ce_weight), ("bdkd", student_term(&step.student.logits, &t.logits, self.tau, self.lambda))])
    }

    fn peer_lr(&self) -> Option<f64> {
        self.peer_lr
    }

    fn peer(&self, _k: usize) -> Option<Box<dyn Distiller>> {
        self.peer_lr.map(|_| Box::new(OnlineTeacher { ce_weight: self.ce_weight, tau: self.tau }) as Box<dyn Distiller>)
    }
}

/// The online teacher's side, a peer network of the cohort: `ce_weight·CE + T²·KL(p^t ‖ p^s)`.
struct OnlineTeacher {
    ce_weight: f64,
    tau: f64,
}

impl Distiller for OnlineTeacher {
    fn losses(&mut self, step: &Step<'_>) -> anyhow::Result<Vec<(&'static str, Tensor)>> {
        let s = step.partners.first().ok_or_else(|| anyhow::anyhow!("bdkd_online's teacher needs the student's outputs"))?;
        let zt = &step.student.logits;
        Ok(vec![("teacher_ce", super::hard_ce(zt, step.labels) * self.ce_weight), ("teacher_kl", teacher_term(&s.logits, zt, self.tau))])
    }
}
