//! `dml`: Deep Mutual Learning, Zhang et al. CVPR 2018 (methods-feature-online.md §4.1). The run's
//! network and its online peers (`peers = [..]`) train together from scratch; each network k
//! minimises `CE + (1/(K−1))·Σ_{l≠k} KL(p_l ‖ p_k)` at T = 1 with the others detached. One shared
//! batch, one forward each, all networks stepped together (the spec's "simultaneous" update).

use tch::Tensor;

use super::{Distiller, MethodInfo, Params, Step, Teachers, fparam, hard_ce, kl_batchmean};

pub static INFO: MethodInfo = MethodInfo {
    name: "dml",
    paper: "Zhang, Xiang, Hospedales, Lu CVPR 2018, Deep Mutual Learning",
    teachers: Teachers::Peers,
    inputs: "logits of the network and of its online peers (peers = [..])",
    params: &[fparam("peer_lr", 1.0, 1e-6, 1e6, "peers' learning rate relative to train.lr")],
    build,
};

fn build(p: &Params) -> anyhow::Result<Box<dyn Distiller>> {
    Ok(Box::new(Dml { peer_lr: super::float(p, "peer_lr")? }))
}

struct Dml {
    peer_lr: f64,
}

/// Each network's loss `CE + mean_{l≠k} KL(p_l ‖ p_k)` (T = 1), peers detached.
pub fn dml_losses(logits: &[Tensor], y: &Tensor) -> Vec<Tensor> {
    let k = logits.len();
    let logp: Vec<Tensor> = logits.iter().map(|z| z.log_softmax(1, z.kind())).collect();
    (0..k)
        .map(|i| {
            let mut kl = logits[i].zeros_like().sum(logits[i].kind());
            for j in (0..k).filter(|&j| j != i) {
                kl = kl + kl_batchmean(&logp[j].detach(), &logp[i]);
            }
            hard_ce(&logits[i], y) + kl / (k.max(2) - 1) as f64
        })
        .collect()
}

impl Distiller for Dml {
    fn losses(&mut self, step: &Step<'_>) -> anyhow::Result<Vec<(&'static str, Tensor)>> {
        if step.peers.is_empty() {
            anyhow::bail!("dml needs at least one peer");
        }
        let mut logits = vec![step.student.logits.shallow_clone()];
        logits.extend(step.peers.iter().map(|p| p.logits.shallow_clone()));
        let mut l = dml_losses(&logits, step.labels).into_iter();
        let own = l.next().ok_or_else(|| anyhow::anyhow!("dml: no loss"))?;
        let peers = l.reduce(|a, b| a + b).ok_or_else(|| anyhow::anyhow!("dml: no peer loss"))?;
        Ok(vec![("dml", own), ("dml_peers", peers)])
    }

    fn peer_lr(&self) -> Option<f64> {
        Some(self.peer_lr)
    }
}
