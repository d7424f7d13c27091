//! `sp`: Similarity-Preserving KD, Tung & Mori ICCV 2019 (methods-feature-online.md §1).
//! Batch similarity matrices of the last-stage maps, `G = row_normalise(Q·Qᵀ)` with Q the flattened
//! features; `L_SP = ‖G_t − G_s‖²_F / B²` (the squared norm), weight β = 3000 at batch 64.

use tch::Tensor;

use super::{Distiller, FEAT_CE, FEAT_KD, FEAT_TAU, MethodInfo, Params, Step, Teachers, feature_logit_terms, float, fparam};
use crate::models::Output;

pub static INFO: MethodInfo = MethodInfo {
    name: "sp",
    paper: "Tung & Mori ICCV 2019, Similarity-Preserving Knowledge Distillation",
    teachers: Teachers::One,
    inputs: "last-stage feature maps (before pooling) of student and teacher",
    params: &[fparam("beta", 3000.0, 0.0, 1e9, "weight β of L_SP"), FEAT_CE, FEAT_KD, FEAT_TAU],
    build,
};

fn build(p: &Params) -> anyhow::Result<Box<dyn Distiller>> {
    Ok(Box::new(Sp { beta: float(p, "beta")?, p: p.clone() }))
}

struct Sp {
    beta: f64,
    p: Params,
}

/// Row-wise L2 normalisation with eps 1e-12 (`F.normalize`).
pub fn l2_rows(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2, [1i64].as_slice(), true).clamp_min(1e-12)
}

pub fn sp_loss(fs: &Tensor, ft: &Tensor) -> Tensor {
    let b = fs.size()[0];
    let qs = fs.reshape([b, -1]);
    let qt = ft.detach().reshape([b, -1]);
    let gs = l2_rows(&qs.matmul(&qs.tr()));
    let gt = l2_rows(&qt.matmul(&qt.tr()));
    (gt - gs).square().sum(fs.kind()) / (b * b) as f64
}

/// The last feature map of a forward (RepDistiller's `feats[-2]`).
pub fn last_map(o: &Output) -> anyhow::Result<&Tensor> {
    o.feats.last().ok_or_else(|| anyhow::anyhow!("this method needs the model's feature maps"))
}

impl Distiller for Sp {
    fn losses(&mut self, step: &Step<'_>) -> anyhow::Result<Vec<(&'static str, Tensor)>> {
        let t = step.teacher()?;
        let mut terms = feature_logit_terms(step, &self.p)?;
        terms.push(("sp", sp_loss(last_map(step.student)?, last_map(t)?) * self.beta));
        Ok(terms)
    }
}
