//! `dml`: Deep Mutual Learning, Zhang et al. CVPR 2018 (methods-feature-online.md §4.1). The run's
//! network and its online peers (`peers = [..]`) train together from scratch; each network k
//! minimises `CE + (1/(K−1))·Σ_{l≠k} KL(p_l ‖ p_k)` at T = 1 with the others detached. Each peer is a
//! network of the cohort with this same loss: one shared batch, one forward each, every network
//! stepped on it (the spec's "simultaneous" update).

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
    Ok(Box::new(Dml { peer_lr: super::float(p, "peer_lr")?, term: "dml" }))
}

/// Every network of the cohort minimises the same loss; `term` names it in the run's record
/// (`dml` for the run's network, `dml_peers` summed over its peers).
struct Dml {
    peer_lr: f64,
    term: &'static str,
}

/// One network's loss `CE + (1/(K−1))·Σ_l KL(p_l ‖ p_k)` (T = 1) over its `partners`' logits,
/// which are detached here whatever the caller passes.
pub fn dml_loss(own: &Tensor, partners: &[Tensor], y: &Tensor) -> Tensor {
    let logp = own.log_softmax(1, own.kind());
    let mut kl = own.zeros_like().sum(own.kind());
    for z in partners {
        kl = kl + kl_batchmean(&z.detach().log_softmax(1, z.kind()), &logp);
    }
    hard_ce(own, y) + kl / partners.len().max(1) as f64
}

/// Each network's loss when all K train together, in order (each one's partners are the others
/// in order, as the loop hands them).
pub fn dml_losses(logits: &[Tensor], y: &Tensor) -> Vec<Tensor> {
    (0..logits.len())
        .map(|i| {
            let partners: Vec<Tensor> = logits.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, z)| z.shallow_clone()).collect();
            dml_loss(&logits[i], &partners, y)
        })
        .collect()
}

impl Distiller for Dml {
    fn losses(&mut self, step: &Step<'_>) -> anyhow::Result<Vec<(&'static str, Tensor)>> {
        if step.partners.is_empty() {
            anyhow::bail!("dml needs at least one peer");
        }
        let partners: Vec<Tensor> = step.partners.iter().map(|p| p.logits.shallow_clone()).collect();
        Ok(vec![(self.term, dml_loss(&step.student.logits, &partners, step.labels))])
    }

    fn peer_lr(&self) -> Option<f64> {
        Some(self.peer_lr)
    }

    fn peer(&self, _k: usize) -> Option<Box<dyn Distiller>> {
        Some(Box::new(Dml { peer_lr: self.peer_lr, term: "dml_peers" }))
    }
}
