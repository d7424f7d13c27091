//! `pkt`: Probabilistic Knowledge Transfer, Passalis & Tefas ECCV 2018 (methods-feature-online.md
//! §3.4), on pooled penultimate vectors: cosine kernels mapped to [0, 1] and row-normalised into
//! conditional distributions P; `L = mean_{ij} P^t_ij·log((P^t_ij + ε)/(P^s_ij + ε))` (a mean over
//! B², hence β = 30000).

use tch::Tensor;

use super::{Distiller, FEAT_CE, FEAT_KD, FEAT_TAU, MethodInfo, Params, Step, Teachers, feature_logit_terms, float, fparam};

pub static INFO: MethodInfo = MethodInfo {
    name: "pkt",
    paper: "Passalis & Tefas ECCV 2018, Learning Deep Representations with Probabilistic Knowledge Transfer",
    teachers: Teachers::One,
    inputs: "pooled penultimate vectors of student and teacher",
    params: &[fparam("beta", 30000.0, 0.0, 1e9, "weight β"), FEAT_CE, FEAT_KD, FEAT_TAU],
    build,
};

fn build(p: &Params) -> anyhow::Result<Box<dyn Distiller>> {
    Ok(Box::new(Pkt { beta: float(p, "beta")?, p: p.clone() }))
}

struct Pkt {
    beta: f64,
    p: Params,
}

const EPS: f64 = 1e-7;

fn conditional(x: &Tensor) -> Tensor {
    let k = x.kind();
    let b = x.size()[0];
    let x = x.reshape([b, -1]);
    // clamp before sqrt: an all-zero row (dead ReLU features) must not give a NaN gradient.
    let u = &x / (x.square().sum_dim_intlist(1, true, k).clamp_min(1e-30).sqrt() + EPS);
    let u = u.nan_to_num(0.0, None, None);
    let m = (u.matmul(&u.tr()) + 1.0) / 2.0;
    &m / m.sum_dim_intlist(1, true, k)
}

pub fn pkt_loss(s: &Tensor, t: &Tensor) -> Tensor {
    let ps = conditional(s);
    let pt = conditional(&t.detach());
    (&pt * ((&pt + EPS) / (ps + EPS)).log()).mean(s.kind())
}

impl Distiller for Pkt {
    fn losses(&mut self, step: &Step<'_>) -> anyhow::Result<Vec<(&'static str, Tensor)>> {
        let t = step.teacher()?;
        let mut terms = feature_logit_terms(step, &self.p)?;
        terms.push(("pkt", pkt_loss(&step.student.pooled, &t.pooled) * self.beta));
        Ok(terms)
    }
}
