//! `rkd`: Relational KD, Park et al. CVPR 2019 (methods-feature-online.md §3.3), on the pooled
//! penultimate vectors: `25·L_d + 50·L_a`, L_d the smooth-L1 between mean-normalised pairwise
//! distance matrices (zero diagonal), L_a the smooth-L1 between angle tensors ⟨e_ij, e_ik⟩.

use tch::{Reduction, Tensor};

use super::{Distiller, FEAT_CE, FEAT_KD, FEAT_TAU, MethodInfo, Params, Step, Teachers, feature_logit_terms, float, fparam};

pub static INFO: MethodInfo = MethodInfo {
    name: "rkd",
    paper: "Park et al. CVPR 2019, Relational Knowledge Distillation",
    teachers: Teachers::One,
    inputs: "pooled penultimate vectors of student and teacher",
    params: &[
        fparam("beta", 1.0, 0.0, 1e9, "weight β of the RKD loss"),
        fparam("w_dist", 25.0, 0.0, 1e9, "weight of the distance term"),
        fparam("w_angle", 50.0, 0.0, 1e9, "weight of the angle term"),
        FEAT_CE,
        FEAT_KD,
        FEAT_TAU,
    ],
    build,
};

fn build(p: &Params) -> anyhow::Result<Box<dyn Distiller>> {
    Ok(Box::new(Rkd { beta: float(p, "beta")?, wd: float(p, "w_dist")?, wa: float(p, "w_angle")?, p: p.clone() }))
}

struct Rkd {
    beta: f64,
    wd: f64,
    wa: f64,
    p: Params,
}

fn pdist(e: &Tensor) -> Tensor {
    let k = e.kind();
    let sq = e.square().sum_dim_intlist(1, false, k);
    let d2 = (sq.unsqueeze(1) + sq.unsqueeze(0) - e.matmul(&e.tr()) * 2.0).clamp_min(1e-12);
    let n = e.size()[0];
    d2.sqrt() * (1.0 - Tensor::eye(n, (k, e.device())))
}

fn normalised_dist(e: &Tensor) -> Tensor {
    let d = pdist(e);
    let pos = d.gt(0.0);
    let mu = d.masked_select(&pos).mean(d.kind());
    d / mu
}

fn angles(e: &Tensor) -> Tensor {
    let diff = e.unsqueeze(0) - e.unsqueeze(1); // [i, j] = e_j − e_i
    let unit = &diff / diff.norm_scalaropt_dim(2, [2i64].as_slice(), true).clamp_min(1e-12);
    unit.bmm(&unit.transpose(1, 2)).reshape([-1])
}

/// (L_d, L_a).
pub fn rkd_parts(s: &Tensor, t: &Tensor) -> (Tensor, Tensor) {
    let b = s.size()[0];
    let s = s.reshape([b, -1]);
    let t = t.detach().reshape([b, -1]);
    let ld = normalised_dist(&s).smooth_l1_loss(&normalised_dist(&t), Reduction::Mean, 1.0);
    let la = angles(&s).smooth_l1_loss(&angles(&t), Reduction::Mean, 1.0);
    (ld, la)
}

impl Distiller for Rkd {
    fn losses(&mut self, step: &Step<'_>) -> anyhow::Result<Vec<(&'static str, Tensor)>> {
        let t = step.teacher()?;
        let (ld, la) = rkd_parts(&step.student.pooled, &t.pooled);
        let mut terms = feature_logit_terms(step, &self.p)?;
        terms.push(("rkd_dist", ld * (self.beta * self.wd)));
        terms.push(("rkd_angle", la * (self.beta * self.wa)));
        Ok(terms)
    }
}
