//! `sokd`: Semi-Online KD, Liu et al. BMVC 2021 (methods-feature-online.md §4.2). A frozen,
//! pre-trained teacher T plus a trainable knowledge-bridge module A: a freshly initialised copy of
//! the teacher's last stage, final pooling and classifier, fed with the teacher's (detached)
//! output of the stage before. With KD(a ← b) = T²·KL(softmax(b/T) ‖ softmax(a/T)) and all targets
//! detached: `L_A = CE(z_A) + KD(z_A ← z_T) + KD(z_A ← z_S)`, `L_S = CE(z_S) + KD(z_S ← z_A)`;
//! one backward. As the official code, the frozen teacher runs in train mode (BN batch statistics)
//! unless `teacher_train = false`. The bridge's training accuracy is logged per epoch.

use tch::{Kind, Tensor, nn};

use super::{Distiller, MethodInfo, ParamDef, ParamKind, Params, Step, Teachers, boolean, float, fparam, hard_ce, kd::kd_term};
use crate::models::{self, Model, ModelCfg, Output};
use super::ParamValue;

pub static INFO: MethodInfo = MethodInfo {
    name: "sokd",
    paper: "Liu et al. BMVC 2021, Semi-Online Knowledge Distillation",
    teachers: Teachers::One,
    inputs: "student and teacher logits, the teacher's stage maps; a trainable bridge (a resnet/wrn teacher)",
    params: &[
        fparam("tau", 4.0, 1e-3, 1e3, "temperature T"),
        ParamDef {
            name: "teacher_train",
            kind: ParamKind::Bool,
            default: ParamValue::Bool(true),
            doc: "run the frozen teacher in train mode (official) or eval mode",
        },
    ],
    build,
};

/// Model families whose last stage can be re-run as a bridge (`Model::forward_tail`).
pub const BRIDGE_FAMILIES: &[&str] = &["resnet_cifar", "wrn", "resnet_v2", "resnet_imagenet", "mobilenetv2_tiny"];

/// Whether a teacher model can host SOKD's knowledge bridge; the suite checks this at plan time.
pub fn has_bridge(model: &str) -> bool {
    models::find(model).is_some_and(|e| BRIDGE_FAMILIES.contains(&e.family))
}

/// Why a teacher cannot host the bridge, phrased as the change to make in the suite.
pub fn no_bridge(model: &str) -> String {
    format!(
        "method `sokd` re-runs the teacher's last stage as its knowledge bridge, and teacher `{model}` has no such stage; \
         use a resnet*, wrn_*, ResNet18/50 or mobilenetv2_tinyimagenet teacher for sokd, or another method"
    )
}

fn build(p: &Params) -> anyhow::Result<Box<dyn Distiller>> {
    Ok(Box::new(Sokd { tau: float(p, "tau")?, teacher_train: boolean(p, "teacher_train")?, teacher: None, bridge: None, correct: 0.0, seen: 0.0 }))
}

struct Sokd {
    tau: f64,
    teacher_train: bool,
    teacher: Option<(String, ModelCfg)>,
    bridge: Option<Box<dyn Model>>,
    correct: f64,
    seen: f64,
}

impl Distiller for Sokd {
    fn losses(&mut self, step: &Step<'_>) -> anyhow::Result<Vec<(&'static str, Tensor)>> {
        let t = step.teacher()?;
        let bridge = self.bridge.as_ref().ok_or_else(|| anyhow::anyhow!("sokd: bridge not initialised"))?;
        let stage = t.feats.len().checked_sub(2).ok_or_else(|| anyhow::anyhow!("sokd: the teacher exposes too few stages"))?;
        let z_a = bridge.forward_tail(&t.feats[stage].detach(), stage, true).ok_or_else(|| anyhow::anyhow!("sokd: no knowledge bridge for this teacher"))?;
        let (z_s, z_t) = (&step.student.logits, &t.logits);
        self.correct += z_a.detach().argmax(1, false).eq_tensor(step.labels).sum(Kind::Float).double_value(&[]);
        self.seen += step.labels.size()[0] as f64;
        Ok(vec![
            ("ce", hard_ce(z_s, step.labels)),
            ("kd_from_bridge", kd_term(z_s, &z_a.detach(), self.tau)),
            ("bridge_ce", hard_ce(&z_a, step.labels)),
            ("bridge_kd_teacher", kd_term(&z_a, z_t, self.tau)),
            ("bridge_kd_student", kd_term(&z_a, &z_s.detach(), self.tau)),
        ])
    }

    fn set_models(&mut self, _student: &str, teachers: &[String], cfg: ModelCfg) {
        self.teacher = teachers.first().map(|t| (t.clone(), cfg));
    }

    fn teacher_train_mode(&self) -> bool {
        self.teacher_train
    }

    fn init_modules(&mut self, vs: &nn::Path, _student: &Output, teachers: &[Output]) -> anyhow::Result<()> {
        // Both are set by the training loop for every run of a suite with a teacher (the suite
        // refuses sokd without one); reaching these errors is a harness bug, said as such.
        let (name, cfg) = self.teacher.clone().ok_or_else(|| anyhow::anyhow!("internal: sokd was not told its teacher's model (set_models)"))?;
        let entry = models::find(&name).ok_or_else(|| anyhow::anyhow!("internal: sokd's teacher model `{name}` is not in the zoo"))?;
        let bridge = (entry.build)(&(vs / "bridge"), cfg);
        let t = teachers.first().ok_or_else(|| anyhow::anyhow!("internal: sokd got no teacher outputs"))?;
        let stage = t.feats.len().saturating_sub(2);
        if stage == 0 || bridge.forward_tail(&t.feats[stage].detach().zeros_like(), stage, false).is_none() {
            crate::input_bail!("{}", no_bridge(&name));
        }
        self.bridge = Some(bridge);
        Ok(())
    }

    fn epoch_stats(&mut self) -> Vec<(&'static str, f64)> {
        let acc = self.correct / self.seen.max(1.0);
        self.correct = 0.0;
        self.seen = 0.0;
        vec![("bridge_train_top1", 100.0 * acc)] // percent, like every accuracy in metrics.csv
    }
}
