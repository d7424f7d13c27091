//! `at`: Attention Transfer, Zagoruyko & Komodakis ICLR 2017, RepDistiller variant
//! (methods-feature-online.md §3.2). Per stage (all but the stem), `a(f) = normalise(flatten(
//! mean_c f^p))`; the larger map is average-pooled to the smaller first; the loss is the mean
//! squared difference, summed over stages, weight β = 1000.

use tch::Tensor;

use super::{Distiller, FEAT_CE, FEAT_KD, FEAT_TAU, MethodInfo, Params, Step, Teachers, feature_logit_terms, float, fparam, sp::l2_rows};

pub static INFO: MethodInfo = MethodInfo {
    name: "at",
    paper: "Zagoruyko & Komodakis ICLR 2017, Paying More Attention to Attention",
    teachers: Teachers::One,
    inputs: "stage feature maps (stem excluded); student and teacher need the same number of stages",
    params: &[fparam("beta", 1000.0, 0.0, 1e9, "weight β"), fparam("p", 2.0, 0.5, 8.0, "power of the activations"), FEAT_CE, FEAT_KD, FEAT_TAU],
    build,
};

fn build(p: &Params) -> anyhow::Result<Box<dyn Distiller>> {
    Ok(Box::new(At { beta: float(p, "beta")?, pw: float(p, "p")?, p: p.clone() }))
}

struct At {
    beta: f64,
    pw: f64,
    p: Params,
}

fn at_map(f: &Tensor, p: f64) -> Tensor {
    let b = f.size()[0];
    l2_rows(&f.pow_tensor_scalar(p).mean_dim(1, false, f.kind()).reshape([b, -1]))
}

/// One stage's loss (maps pooled to the smaller resolution first).
pub fn at_single(fs: &Tensor, ft: &Tensor, p: f64) -> Tensor {
    let (hs, ht) = (fs.size()[2], ft.size()[2]);
    let ft = ft.detach();
    let (fs, ft) = if hs > ht {
        (fs.adaptive_avg_pool2d([ht, ht]), ft)
    } else if hs < ht {
        (fs.shallow_clone(), ft.adaptive_avg_pool2d([hs, hs]))
    } else {
        (fs.shallow_clone(), ft)
    };
    (at_map(&fs, p) - at_map(&ft, p)).square().mean(fs.kind())
}

/// Sum over stage pairs.
pub fn at_loss(fs: &[Tensor], ft: &[Tensor], p: f64) -> anyhow::Result<Tensor> {
    if fs.len() != ft.len() || fs.is_empty() {
        crate::input_bail!(
            "method `at` pairs student and teacher stages one to one, but the student has {} and the teacher {}; pick a teacher/student pair with as many stages",
            fs.len(),
            ft.len()
        );
    }
    let mut total = at_single(&fs[0], &ft[0], p);
    for (a, b) in fs.iter().zip(ft).skip(1) {
        total = total + at_single(a, b, p);
    }
    Ok(total)
}

impl Distiller for At {
    fn losses(&mut self, step: &Step<'_>) -> anyhow::Result<Vec<(&'static str, Tensor)>> {
        let t = step.teacher()?;
        let s = step.student;
        let mut terms = feature_logit_terms(step, &self.p)?;
        let skip = |v: &[Tensor]| v.iter().skip(1).map(Tensor::shallow_clone).collect::<Vec<_>>();
        terms.push(("at", at_loss(&skip(&s.feats), &skip(&t.feats), self.pw)? * self.beta));
        Ok(terms)
    }
}
