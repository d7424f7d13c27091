//! `ce`: plain cross-entropy training (with the recipe's label smoothing and mixup, if set).
//! Used for teachers and for baseline students.

use super::{Distiller, MethodInfo, Params, Step, Teachers};

pub static INFO: MethodInfo =
    MethodInfo { name: "ce", paper: "cross-entropy baseline (no distillation)", teachers: Teachers::None, inputs: "logits", params: &[], build };

fn build(_: &Params) -> anyhow::Result<Box<dyn Distiller>> {
    Ok(Box::new(Ce))
}

struct Ce;

impl Distiller for Ce {
    fn losses(&mut self, step: &Step<'_>) -> anyhow::Result<Vec<(&'static str, tch::Tensor)>> {
        Ok(vec![("ce", step.ce())])
    }
}
