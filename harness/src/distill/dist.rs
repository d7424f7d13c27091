//! `dist`: DIST, Huang et al. NeurIPS 2022 (methods-logit.md §3).
//! `L = w_ce·CE + τ²·(β·inter + γ·intra)`, inter = 1 − mean Pearson over rows (classes of one
//! sample), intra = 1 − mean Pearson over columns (one class across the batch). β = γ = 2 is the
//! paper's CIFAR-100 setting (the official code's 1·1 loss times a weight of 2).

use tch::Tensor;

use super::{Distiller, MethodInfo, Params, Step, Teachers, float, fparam};

pub static INFO: MethodInfo = MethodInfo {
    name: "dist",
    paper: "Huang et al. NeurIPS 2022, Knowledge Distillation from A Stronger Teacher",
    teachers: Teachers::One,
    inputs: "student and teacher logits (batch of N >= 2)",
    params: &[
        fparam("ce_weight", 1.0, 0.0, 1e6, "weight of CE"),
        fparam("beta", 2.0, 0.0, 1e6, "weight of the inter-class relation"),
        fparam("gamma", 2.0, 0.0, 1e6, "weight of the intra-class relation"),
        fparam("tau", 4.0, 1e-3, 1e3, "temperature τ"),
    ],
    build,
};

fn build(p: &Params) -> anyhow::Result<Box<dyn Distiller>> {
    Ok(Box::new(Dist { ce_weight: float(p, "ce_weight")?, beta: float(p, "beta")?, gamma: float(p, "gamma")?, tau: float(p, "tau")? }))
}

struct Dist {
    ce_weight: f64,
    beta: f64,
    gamma: f64,
    tau: f64,
}

/// Pearson correlation of matching rows; the 1e-8 is added to the product of norms.
fn pearson_rows(a: &Tensor, b: &Tensor) -> Tensor {
    let k = a.kind();
    let a = a - a.mean_dim(1, true, k);
    let b = b - b.mean_dim(1, true, k);
    let num = (&a * &b).sum_dim_intlist(1, false, k);
    let den = a.norm_scalaropt_dim(2, [1i64].as_slice(), false) * b.norm_scalaropt_dim(2, [1i64].as_slice(), false) + 1e-8;
    num / den
}

/// (inter, intra) relation losses, without τ² or weights.
pub fn inter_intra(zs: &Tensor, zt: &Tensor, tau: f64) -> (Tensor, Tensor) {
    let k = zs.kind();
    let ps = (zs / tau).softmax(1, k);
    let pt = (zt.detach() / tau).softmax(1, k);
    let inter = 1.0 - pearson_rows(&ps, &pt).mean(k);
    let intra = 1.0 - pearson_rows(&ps.transpose(0, 1), &pt.transpose(0, 1)).mean(k);
    (inter, intra)
}

impl Distiller for Dist {
    fn losses(&mut self, step: &Step<'_>) -> anyhow::Result<Vec<(&'static str, Tensor)>> {
        let t = step.teacher()?;
        let (inter, intra) = inter_intra(&step.student.logits, &t.logits, self.tau);
        let t2 = self.tau * self.tau;
        Ok(vec![("ce", step.ce() * self.ce_weight), ("inter", inter * (t2 * self.beta)), ("intra", intra * (t2 * self.gamma))])
    }
}
