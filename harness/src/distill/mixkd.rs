//! `mixkd`: MIX-KD / MIXSTD, Choi et al. WACV 2023 (methods-logit.md §8). Teacher and student see
//! the same mixed batch (partial mixup by default); logits are divided by their own per-sample
//! standard deviation (unbiased, over classes; the student's is not detached):
//! `L = γ·CE(z^s/σ^s, Y) + α·mean KL(softmax(z^t/σ^t) ‖ softmax(z^s/σ^s))`, no T².
//! Accuracy and ECE are reported on plain softmax(z), like every other method.

use tch::Tensor;

use super::{Distiller, MethodInfo, ParamDef, ParamKind, Params, Step, Teachers, float, fparam, kl_batchmean, soft_ce, string};
use crate::data::Mixup;
use super::ParamValue;

pub static INFO: MethodInfo = MethodInfo {
    name: "mixkd",
    paper: "Choi et al. WACV 2023, Understanding the Role of Mixup in Knowledge Distillation (MIXSTD)",
    teachers: Teachers::One,
    inputs: "student and teacher logits on the same mixed batch; mixed targets",
    params: &[
        fparam("gamma", 0.1, 0.0, 1e6, "weight of the std-scaled CE with the mixed targets"),
        fparam("alpha", 0.9, 0.0, 1e6, "weight of the std-scaled KL"),
        fparam("mix_alpha", 1.0, 1e-3, 1e3, "Beta(a, a) parameter of the mixing weights"),
        ParamDef {
            name: "mode",
            kind: ParamKind::Choice(&["partial", "full"]),
            default: ParamValue::Str(std::borrow::Cow::Borrowed("partial")),
            doc: "PMU (partial) or FMU (full) mixup",
        },
        fparam("partial", 0.9, 0.0, 1.0, "PMU: ⌊partial·N⌋ indices drawn with replacement are left unmixed"),
    ],
    build,
};

fn build(p: &Params) -> anyhow::Result<Box<dyn Distiller>> {
    let partial = (string(p, "mode")? == "partial").then_some(float(p, "partial")?);
    Ok(Box::new(MixKd { gamma: float(p, "gamma")?, alpha: float(p, "alpha")?, mix: Mixup { alpha: float(p, "mix_alpha")?, partial } }))
}

struct MixKd {
    gamma: f64,
    alpha: f64,
    mix: Mixup,
}

/// (γ-less CE, α-less KL) of MIXSTD for mixed targets `y` (N×C).
pub fn mixstd_parts(zs: &Tensor, zt: &Tensor, y: &Tensor) -> (Tensor, Tensor) {
    let k = zs.kind();
    let std = |z: &Tensor| z.std_dim([1i64].as_slice(), true, true).clamp_min(1e-12);
    let ss = zs / std(zs);
    let zt = zt.detach();
    let st = &zt / std(&zt);
    (soft_ce(&ss, y), kl_batchmean(&st.log_softmax(1, k), &ss.log_softmax(1, k)))
}

impl Distiller for MixKd {
    fn losses(&mut self, step: &Step<'_>) -> anyhow::Result<Vec<(&'static str, Tensor)>> {
        let t = step.teacher()?;
        let zs = &step.student.logits;
        let y = match step.soft_targets {
            Some(y) => y.shallow_clone(),
            None => step.labels.one_hot(zs.size()[1]).to_kind(zs.kind()),
        };
        let (cls, kd) = mixstd_parts(zs, &t.logits, &y);
        Ok(vec![("cls", cls * self.gamma), ("kd", kd * self.alpha)])
    }

    fn mixup(&self) -> Option<Mixup> {
        Some(self.mix.clone())
    }
}
