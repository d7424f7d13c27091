//! `crd`: Contrastive Representation Distillation, Tian, Krishnan & Isola ICLR 2020
//! (methods-feature-online.md §2), exactly the official algorithm: linear heads to d = 128 with
//! exact L2 normalisation; two memory banks over the training set (student and teacher
//! embeddings, uniform init); per sample the own index plus K negatives drawn without
//! replacement from other classes; scores exp(⟨bank row, anchor⟩/τ)/Z with the banks crossed
//! (student anchor vs teacher bank and vice versa); Z fixed on the first batch; NCE loss with
//! uniform noise; after the scores, a momentum update of both banks at the batch's indices.
//! `L = γ·CE + α·KD + β·(h(s) + h(t))`, β = 0.8.

use tch::{Kind, Tensor, nn, nn::Module};

use super::{Distiller, FEAT_CE, FEAT_KD, FEAT_TAU, MethodInfo, ParamDef, ParamKind, Params, Step, Teachers, feature_logit_terms, float, fparam};
use crate::models::Output;
use super::ParamValue;

pub static INFO: MethodInfo = MethodInfo {
    name: "crd",
    paper: "Tian, Krishnan, Isola ICLR 2020, Contrastive Representation Distillation",
    teachers: Teachers::One,
    inputs: "pooled penultimate vectors, training-set indices, training labels (negatives)",
    params: &[
        fparam("beta", 0.8, 0.0, 1e9, "weight β of the contrastive loss"),
        ParamDef { name: "feat_dim", kind: ParamKind::Int { min: 1, max: 4096 }, default: ParamValue::Int(128), doc: "embedding dimension d" },
        ParamDef { name: "nce_k", kind: ParamKind::Int { min: 1, max: 1 << 20 }, default: ParamValue::Int(16384), doc: "negatives per sample K" },
        fparam("nce_t", 0.07, 1e-4, 10.0, "temperature τ"),
        fparam("nce_m", 0.5, 0.0, 1.0, "memory momentum μ"),
        FEAT_CE,
        FEAT_KD,
        FEAT_TAU,
    ],
    build,
};

fn int(p: &Params, k: &str) -> anyhow::Result<i64> {
    match p.get(k) {
        Some(ParamValue::Int(i)) => Ok(*i),
        _ => anyhow::bail!("parameter {k} missing"),
    }
}

fn build(p: &Params) -> anyhow::Result<Box<dyn Distiller>> {
    Ok(Box::new(Crd {
        beta: float(p, "beta")?,
        d: int(p, "feat_dim")?,
        k: int(p, "nce_k")?,
        tau: float(p, "nce_t")?,
        mu: float(p, "nce_m")?,
        p: p.clone(),
        labels: None,
        min_pool: 0,
        state: None,
    }))
}

/// Trainable heads and the (non-trainable, checkpointed) banks and normalisers.
struct State {
    head_s: nn::Linear,
    head_t: nn::Linear,
    mem_s: Tensor,
    mem_t: Tensor,
    /// [Z_s, Z_t]; 0 until the first batch sets them.
    z: Tensor,
}

struct Crd {
    beta: f64,
    d: i64,
    k: i64,
    tau: f64,
    mu: f64,
    p: Params,
    labels: Option<Tensor>,
    /// Size of the smallest other-class pool (decides sampling with or without replacement).
    min_pool: i64,
    state: Option<State>,
}

/// Linear projection then exact L2 normalisation (no eps).
fn embed(head: &nn::Linear, x: &Tensor) -> Tensor {
    let y = head.forward(&x.flatten(1, -1));
    &y / y.norm_scalaropt_dim(2, [1i64].as_slice(), true)
}

/// NCE loss `−(1/B)Σ_i [log(P_i0/(P_i0 + K/N + ε)) + Σ_k log((K/N)/(P_ik + K/N + ε))]`.
pub fn nce_loss(p: &Tensor, n_data: i64) -> Tensor {
    let k = p.kind();
    let b = p.size()[0] as f64;
    let c = (p.size()[1] - 1) as f64 / n_data as f64;
    let eps = 1e-7;
    let p0 = p.select(1, 0);
    let pos = (&p0 / (&p0 + c + eps)).log().sum(k);
    let neg = ((p.narrow(1, 1, p.size()[1] - 1) + c + eps).reciprocal() * c).log().sum(k);
    -(pos + neg) / b
}

/// One CRD step on normalised embeddings: scores against the crossed banks (rows `contrast`,
/// B×(K+1)), Z set on first use (`z` = [Z_s, Z_t], 0 = unset), the loss, then the momentum
/// update of both banks at `idx`. Returns the loss.
#[allow(clippy::too_many_arguments)]
pub fn crd_step(
    v_s: &Tensor,
    v_t: &Tensor,
    mem_s: &mut Tensor,
    mem_t: &mut Tensor,
    z: &mut Tensor,
    idx: &Tensor,
    contrast: &Tensor,
    tau: f64,
    mu: f64,
) -> Tensor {
    let (b, d) = (v_s.size()[0], v_s.size()[1]);
    let n_data = mem_s.size()[0];
    let flat = contrast.reshape([-1]);
    let w_t = mem_t.index_select(0, &flat).reshape([b, -1, d]).detach();
    let e_s = (w_t.bmm(&v_s.unsqueeze(2)).squeeze_dim(2) / tau).exp();
    let w_s = mem_s.index_select(0, &flat).reshape([b, -1, d]).detach();
    let e_t = (w_s.bmm(&v_t.unsqueeze(2)).squeeze_dim(2) / tau).exp();
    tch::no_grad(|| {
        if z.double_value(&[0]) == 0.0 {
            let zs = e_s.detach().mean(Kind::Double) * n_data as f64;
            let zt = e_t.detach().mean(Kind::Double) * n_data as f64;
            let _ = z.copy_(&Tensor::stack(&[zs, zt], 0).to_kind(z.kind()));
        }
    });
    let zs = z.get(0).to_kind(e_s.kind());
    let zt = z.get(1).to_kind(e_t.kind());
    let loss = nce_loss(&(e_s / zs), n_data) + nce_loss(&(e_t / zt), n_data);
    tch::no_grad(|| {
        for (mem, v) in [(&mut *mem_s, v_s), (&mut *mem_t, v_t)] {
            let rows = mem.index_select(0, idx) * mu + v.detach().to_kind(mem.kind()) * (1.0 - mu);
            let rows = &rows / rows.norm_scalaropt_dim(2, [1i64].as_slice(), true);
            let _ = mem.index_copy_(0, idx, &rows);
        }
    });
    loss
}

impl Crd {
    /// Column 0: the sample's own index; columns 1..K: indices of other-class samples, drawn
    /// without replacement (with replacement only when K exceeds that pool).
    fn contrast(&self, idx: &Tensor, y: &Tensor) -> anyhow::Result<Tensor> {
        let labels = self.labels.as_ref().ok_or_else(|| anyhow::anyhow!("crd: training labels not set"))?;
        let labels = labels.to_device(y.device());
        let weights = labels.unsqueeze(0).ne_tensor(&y.unsqueeze(1)).to_kind(Kind::Float);
        let neg = weights.multinomial(self.k, self.k > self.min_pool);
        crate::draws::record("crd_negatives", &neg);
        Ok(Tensor::cat(&[idx.unsqueeze(1), neg], 1))
    }
}

impl Distiller for Crd {
    fn losses(&mut self, step: &Step<'_>) -> anyhow::Result<Vec<(&'static str, Tensor)>> {
        let t = step.teacher()?;
        let idx = step.indices.ok_or_else(|| anyhow::anyhow!("crd needs the training-set indices of the batch"))?;
        let contrast = self.contrast(idx, step.labels)?;
        let st = self.state.as_mut().ok_or_else(|| anyhow::anyhow!("crd: modules not initialised"))?;
        let v_s = embed(&st.head_s, &step.student.pooled);
        let v_t = embed(&st.head_t, &t.pooled.detach());
        let loss = crd_step(&v_s, &v_t, &mut st.mem_s, &mut st.mem_t, &mut st.z, idx, &contrast, self.tau, self.mu);
        let mut terms = feature_logit_terms(step, &self.p)?;
        terms.push(("crd", loss * self.beta));
        Ok(terms)
    }

    fn set_train_labels(&mut self, labels: &Tensor) {
        // Once, not per batch: the largest class leaves the smallest pool of negatives.
        let n = labels.size()[0];
        let largest = labels.bincount(None::<Tensor>, 0).max().int64_value(&[]);
        self.min_pool = n - largest;
        self.labels = Some(labels.shallow_clone());
    }

    fn init_modules(&mut self, vs: &nn::Path, student: &Output, teachers: &[Output]) -> anyhow::Result<()> {
        let t = teachers.first().ok_or_else(|| anyhow::anyhow!("crd needs a teacher"))?;
        let n = self.labels.as_ref().map(|l| l.size()[0]).ok_or_else(|| anyhow::anyhow!("crd: training labels not set"))?;
        let (ds, dt) = (student.pooled.flatten(1, -1).size()[1], t.pooled.flatten(1, -1).size()[1]);
        let a = 1.0 / (self.d as f64 / 3.0).sqrt();
        let mem_s = vs.zeros_no_train("memory_s", &[n, self.d]);
        let mem_t = vs.zeros_no_train("memory_t", &[n, self.d]);
        tch::no_grad(|| {
            let _ = mem_s.shallow_clone().uniform_(-a, a);
            let _ = mem_t.shallow_clone().uniform_(-a, a);
        });
        self.state = Some(State {
            // RepDistiller's `Embed` (crd/criterion.py): nn.Linear with PyTorch's default init.
            head_s: crate::models::init::linear(vs / "embed_s", ds, self.d, crate::models::init::PYTORCH_DEFAULT),
            head_t: crate::models::init::linear(vs / "embed_t", dt, self.d, crate::models::init::PYTORCH_DEFAULT),
            mem_s,
            mem_t,
            z: vs.zeros_no_train("z", &[2]),
        });
        Ok(())
    }
}
