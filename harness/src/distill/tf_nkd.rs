//! `tf_nkd`: teacher-free NKD (arXiv 2208.10139; methods-logit.md §4b).
//! `L = CE + L_tf`, `L_tf = −mean w_i·log s_i` with `s_i = softmax(z_i)_{y_i}` and the detached
//! weight `w_i = s_i + 1 − mean_batch(s)`. Under mixup the two largest entries of each mixed
//! target contribute, each with `w = s_c + v − mean_batch(s_c)` (0 where v = 0).

use tch::Tensor;

use super::{Distiller, MethodInfo, Params, Step, Teachers, float, fparam};

pub static INFO: MethodInfo = MethodInfo {
    name: "tf_nkd",
    paper: "Yang et al. 2022, Rethinking Knowledge Distillation via Cross-Entropy (teacher-free NKD)",
    teachers: Teachers::None,
    inputs: "logits (mixed targets under mixup)",
    params: &[fparam("ce_weight", 1.0, 0.0, 1e6, "weight of CE")],
    build,
};

fn build(p: &Params) -> anyhow::Result<Box<dyn Distiller>> {
    Ok(Box::new(TfNkd { ce_weight: float(p, "ce_weight")? }))
}

struct TfNkd {
    ce_weight: f64,
}

/// `−mean w·log s_c` for class indices `c` and label values `v` (1 for hard labels).
fn term(logp: &Tensor, c: &Tensor, v: &Tensor) -> Tensor {
    let k = logp.kind();
    let log_s = logp.gather(1, &c.unsqueeze(1), false).squeeze_dim(1);
    let s = log_s.exp().detach();
    let w = (&s + v - s.mean(k)).where_self(&v.gt(0.0), &s.zeros_like()).detach();
    -(w * log_s).mean(k)
}

/// The teacher-free term for hard labels or mixed targets.
pub fn tf_term(z: &Tensor, y: &Tensor, soft: Option<&Tensor>) -> Tensor {
    let logp = z.log_softmax(1, z.kind());
    match soft {
        None => term(&logp, y, &Tensor::ones([y.size()[0]], (z.kind(), z.device()))),
        Some(t) => {
            let (v, c) = t.topk(2, 1, true, true);
            term(&logp, &c.select(1, 0), &v.select(1, 0).to_kind(z.kind())) + term(&logp, &c.select(1, 1), &v.select(1, 1).to_kind(z.kind()))
        }
    }
}

impl Distiller for TfNkd {
    fn losses(&mut self, step: &Step<'_>) -> anyhow::Result<Vec<(&'static str, Tensor)>> {
        Ok(vec![("ce", step.ce() * self.ce_weight), ("tf_nkd", tf_term(&step.student.logits, step.labels, step.soft_targets))])
    }
}
