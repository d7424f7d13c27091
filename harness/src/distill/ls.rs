//! `ls`: label smoothing, Müller, Kornblith, Hinton 2019 (methods-logit.md §6):
//! CE against `(1−ε)·onehot(y) + ε/K`, uniform over all K classes. The same smoothing is
//! available to every method's CE term through the recipe key `train.label_smoothing`
//! (e.g. `teacher.train.label_smoothing = 0.1` for the "label-smoothed teacher" study).

use super::{Distiller, MethodInfo, Params, Step, Teachers, float, fparam};

pub static INFO: MethodInfo = MethodInfo {
    name: "ls",
    paper: "Müller, Kornblith, Hinton 2019, When does label smoothing help?",
    teachers: Teachers::None,
    inputs: "logits",
    params: &[fparam("eps", 0.1, 0.0, 1.0, "smoothing ε (ε/K on every class)")],
    build,
};

fn build(p: &Params) -> anyhow::Result<Box<dyn Distiller>> {
    Ok(Box::new(Ls { eps: float(p, "eps")? }))
}

struct Ls {
    eps: f64,
}

impl Distiller for Ls {
    fn losses(&mut self, step: &Step<'_>) -> anyhow::Result<Vec<(&'static str, tch::Tensor)>> {
        Ok(vec![("ls_ce", step.ce_smoothed(self.eps))])
    }
}
