//! `bake`: Batch Knowledge Ensembling, Ge et al. 2021 (methods-logit.md §7). Self-distillation:
//! soft targets propagated over the batch by feature affinity,
//! `Q = (1−ω)(I − ωA)⁻¹ softmax_T(z)` with `A = row_softmax(f̃f̃ᵀ − 1e9·I)` on L2-normalised pooled
//! features; `L = CE + λ·T²·mean KL(Q ‖ softmax_T(z))`, Q detached. Batches are built from anchors
//! plus `intra_imgs` same-class images each (the official sampler), so affinities find kin.

use tch::Tensor;

use super::{Distiller, MethodInfo, ParamDef, ParamKind, Params, Step, Teachers, float, fparam, kl_batchmean};
use super::ParamValue;

pub static INFO: MethodInfo = MethodInfo {
    name: "bake",
    paper: "Ge et al. 2021, Self-distillation with Batch Knowledge Ensembling Improves ImageNet Classification",
    teachers: Teachers::None,
    inputs: "logits and pooled penultimate features; same-class batch sampler",
    params: &[
        fparam("omega", 0.5, 0.0, 0.999, "propagation weight ω (0.9 on Tiny-ImageNet)"),
        fparam("tau", 4.0, 1e-3, 1e3, "temperature T"),
        fparam("lambda", 1.0, 0.0, 1e6, "weight of the KD term"),
        ParamDef {
            name: "intra_imgs",
            kind: ParamKind::Int { min: 0, max: 64 },
            default: ParamValue::Int(3),
            doc: "same-class images per anchor in a batch (M)",
        },
    ],
    build,
};

fn build(p: &Params) -> anyhow::Result<Box<dyn Distiller>> {
    let m = match p.get("intra_imgs") {
        Some(ParamValue::Int(i)) => *i as usize,
        _ => anyhow::bail!("parameter intra_imgs missing"),
    };
    Ok(Box::new(Bake { omega: float(p, "omega")?, tau: float(p, "tau")?, lambda: float(p, "lambda")?, m }))
}

struct Bake {
    omega: f64,
    tau: f64,
    lambda: f64,
    m: usize,
}

/// The propagated soft targets Q (N×C), computed without gradient.
pub fn soft_targets(z: &Tensor, f: &Tensor, tau: f64, omega: f64) -> Tensor {
    tch::no_grad(|| {
        let k = z.kind();
        let z = z.detach();
        let f = f.detach().flatten(1, -1).to_kind(k);
        let n = z.size()[0];
        let norm = f.norm_scalaropt_dim(2, [1i64].as_slice(), true).clamp_min(1e-12);
        let fn_ = &f / norm;
        let eye = Tensor::eye(n, (k, z.device()));
        let a = (fn_.matmul(&fn_.transpose(0, 1)) - &eye * 1e9).softmax(1, k);
        let p = (&z / tau).softmax(1, k);
        Tensor::linalg_solve(&(&eye - a * omega), &p, true) * (1.0 - omega)
    })
}

/// `T²·mean KL(Q ‖ softmax_T(z))`.
pub fn bake_term(z: &Tensor, f: &Tensor, tau: f64, omega: f64) -> Tensor {
    let q = soft_targets(z, f, tau, omega);
    kl_batchmean(&q.log(), &(z / tau).log_softmax(1, z.kind())) * (tau * tau)
}

impl Distiller for Bake {
    fn losses(&mut self, step: &Step<'_>) -> anyhow::Result<Vec<(&'static str, Tensor)>> {
        let s = step.student;
        Ok(vec![("ce", step.ce()), ("bake", bake_term(&s.logits, &s.pooled, self.tau, self.omega) * self.lambda)])
    }

    fn same_class_per_anchor(&self) -> usize {
        self.m
    }
}
