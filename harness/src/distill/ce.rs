//! `ce`: plain cross-entropy training. Used for teachers and for baseline students.

use super::{Distiller, MethodInfo, Params, Step};

pub static INFO: MethodInfo = MethodInfo { name: "ce", paper: "cross-entropy baseline (no distillation)", needs_teacher: false, params: &[], build };

fn build(_: &Params) -> anyhow::Result<Box<dyn Distiller>> {
    Ok(Box::new(Ce))
}

struct Ce;

impl Distiller for Ce {
    fn losses(&mut self, step: &Step<'_>) -> anyhow::Result<Vec<(&'static str, tch::Tensor)>> {
        Ok(vec![("ce", step.student.logits.cross_entropy_for_logits(step.labels))])
    }
}
