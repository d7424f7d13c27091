//! `switokd`: Switchable Online KD, Qian et al. ECCV 2022 (methods-feature-online.md §4.3), as the
//! official code does it (τ = 1, and the extra `d_t < d_s` condition). The run's network is the
//! student; `peers = [teacher model]` is the teacher trained alongside. Per batch, from detached
//! outputs: `d_s = mean‖p_s − y‖₁`, `d_t = mean‖p_t − y‖₁`, gap `G = mean‖p_t − p_s‖₁`,
//! `ε = exp(−d_t/(d_t + d_s))`, threshold `δ = d_s − ε·d_t`. Expert mode iff `G > δ` and
//! `d_t < d_s`: the teacher is paused (its forward still ran in train mode); otherwise learning
//! mode: both learn. The teacher is a peer network of the cohort with its own loss
//! ([`SwitTeacher`]); both sides take the decision from the same detached outputs. Student: `CE + KL(p_t ‖ p_s)`; teacher: `CE + KL(p_s ‖ p_t)`.
//! The fraction of expert batches and the mean distances are logged per epoch.

use tch::{Kind, Tensor};

use super::{Distiller, MethodInfo, Params, Step, Teachers, float, fparam, hard_ce, kl_batchmean};

pub static INFO: MethodInfo = MethodInfo {
    name: "switokd",
    paper: "Qian et al. ECCV 2022, Switchable Online Knowledge Distillation",
    teachers: Teachers::Peers,
    inputs: "student logits and the online teacher's (peers = [teacher model])",
    params: &[fparam("peer_lr", 1.0, 1e-6, 1e6, "teacher's learning rate relative to train.lr (CIFAR-100 code: 0.1 vs 0.01 = 10)")],
    build,
};

fn build(p: &Params) -> anyhow::Result<Box<dyn Distiller>> {
    Ok(Box::new(SwitOkd { peer_lr: float(p, "peer_lr")?, sums: [0.0; 5], batches: 0 }))
}

struct SwitOkd {
    peer_lr: f64,
    /// Running sums over the epoch: expert batches, d_s, d_t, G, δ.
    sums: [f64; 5],
    batches: usize,
}

/// The per-batch decision quantities.
#[derive(Clone, Copy, Debug)]
pub struct Decision {
    pub d_s: f64,
    pub d_t: f64,
    pub gap: f64,
    pub epsilon: f64,
    pub delta: f64,
    pub expert: bool,
}

pub fn decide(z_t: &Tensor, z_s: &Tensor, y: &Tensor) -> Decision {
    let k = Kind::Double;
    let oh = y.one_hot(z_s.size()[1]).to_kind(k);
    let ps = z_s.detach().to_kind(k).softmax(1, k);
    let pt = z_t.detach().to_kind(k).softmax(1, k);
    let l1 = |a: &Tensor, b: &Tensor| (a - b).abs().sum_dim_intlist(1, false, k).mean(k).double_value(&[]);
    let (d_s, d_t, gap) = (l1(&ps, &oh), l1(&pt, &oh), l1(&pt, &ps));
    let epsilon = (-d_t / (d_t + d_s)).exp();
    let delta = d_s - epsilon * d_t;
    Decision { d_s, d_t, gap, epsilon, delta, expert: gap > delta && d_t < d_s }
}

impl Distiller for SwitOkd {
    fn losses(&mut self, step: &Step<'_>) -> anyhow::Result<Vec<(&'static str, Tensor)>> {
        let t = step.partners.first().ok_or_else(|| anyhow::anyhow!("switokd needs its teacher as a peer (peers = [model])"))?;
        let (zs, zt) = (&step.student.logits, &t.logits);
        let dec = decide(zt, zs, step.labels);
        for (s, v) in self.sums.iter_mut().zip([dec.expert as u8 as f64, dec.d_s, dec.d_t, dec.gap, dec.delta]) {
            *s += v;
        }
        self.batches += 1;
        let lt = zt.detach().log_softmax(1, zt.kind());
        Ok(vec![("ce", hard_ce(zs, step.labels)), ("kl", kl_batchmean(&lt, &zs.log_softmax(1, zs.kind())))])
    }

    fn peer_lr(&self) -> Option<f64> {
        Some(self.peer_lr)
    }

    fn peer(&self, _k: usize) -> Option<Box<dyn Distiller>> {
        Some(Box::new(SwitTeacher))
    }

    fn epoch_stats(&mut self) -> Vec<(&'static str, f64)> {
        let n = self.batches.max(1) as f64;
        let s = self.sums.map(|x| x / n);
        self.sums = [0.0; 5];
        self.batches = 0;
        vec![("expert_frac", s[0]), ("d_s", s[1]), ("d_t", s[2]), ("gap", s[3]), ("delta", s[4])]
    }
}

/// The online teacher's side: the same decision from the same detached outputs; in learning mode
/// `CE + KL(p_s ‖ p_t)`, in expert mode no terms (paused: no update from this batch).
struct SwitTeacher;

impl Distiller for SwitTeacher {
    fn losses(&mut self, step: &Step<'_>) -> anyhow::Result<Vec<(&'static str, Tensor)>> {
        let s = step.partners.first().ok_or_else(|| anyhow::anyhow!("switokd's teacher needs the student's outputs"))?;
        let (zs, zt) = (&s.logits, &step.student.logits);
        if decide(zt, zs, step.labels).expert {
            return Ok(vec![]);
        }
        let ls = zs.detach().log_softmax(1, zs.kind());
        Ok(vec![("teacher_ce", hard_ce(zt, step.labels)), ("teacher_kl", kl_batchmean(&ls, &zt.log_softmax(1, zt.kind())))])
    }
}
