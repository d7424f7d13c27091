//! One network trained on the cohort's shared batch: its model, the method's loss for it, its
//! optimiser and its loss scaler. A run trains one trainee (its network) and, for an online
//! method (DML, SwitOKD, BD-KD online), one per peer, each with the loss the method declares for
//! it ([`crate::distill::Distiller::peer`]). The trainees of a run exchange their outputs,
//! detached ([`crate::distill::Step::partners`]); nothing here knows which network is which.

use anyhow::Context;
use tch::{Tensor, nn};

use super::Net;
use super::precision::{Amp, LossScaler};
use super::prune::Masks;
use super::sgd::Sgd;
use crate::distill::{Distiller, Step};
use crate::models::Output;

pub struct Trainee {
    pub net: Net,
    pub distiller: Box<dyn Distiller>,
    pub opt: Sgd,
    /// fp16's dynamic loss scaling (`None` in fp32/bf16).
    pub scaler: Option<LossScaler>,
}

/// The loss terms of one update and their sum.
pub type Learned = (Vec<(&'static str, Tensor)>, Tensor);

impl Trainee {
    /// A trainee whose optimiser covers its network (and `extra` stores, e.g. the method's
    /// modules), named with `prefix` as in the run's resume file, at `lr_scale` times the lr.
    pub fn new(net: Net, distiller: Box<dyn Distiller>, prefix: &str, extra: &[(&str, &nn::VarStore)], lr_scale: f64, amp: &Amp, r: &crate::suite::Recipe) -> Trainee {
        let mut stores: Vec<(&str, &nn::VarStore, f64)> = vec![(prefix, &net.vs, lr_scale)];
        stores.extend(extra.iter().map(|(p, vs)| (*p, *vs, lr_scale)));
        let opt = Sgd::over(&stores, r.lr, r.momentum, r.weight_decay, r.nesterov);
        Trainee { net, distiller, opt, scaler: amp.scaler() }
    }

    /// The training-mode forward pass on the shared batch.
    pub fn forward(&self, amp: &Amp, x: &Tensor) -> anyhow::Result<Output> {
        amp.forward(self.net.model.as_ref(), x, true)
    }

    /// The method's loss over `step`, its backward pass and one update (pruned weights kept dead).
    /// `None`: the method returned no terms for this batch, and nothing changed.
    pub fn learn(&mut self, step: &Step<'_>, masks: Option<&Masks>) -> anyhow::Result<Option<Learned>> {
        let terms = self.distiller.losses(step)?;
        let Some(total) = terms.iter().map(|(_, t)| t.shallow_clone()).reduce(|a, t| a + t) else {
            return Ok(None);
        };
        match self.scaler.as_mut() {
            Some(sc) => {
                sc.backward_step(&mut self.opt, &total)?;
            }
            None => self.opt.backward_step(&total)?,
        }
        if let Some(m) = masks {
            self.opt.apply_masks(m).context("keeping pruned weights at zero")?;
        }
        Ok(Some((terms, total)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distill::{self, dml, partners};
    use crate::models::{self, ModelCfg};
    use crate::train::precision::Precision;
    use tch::{Device, Kind};

    /// The tests of this module draw from libtorch's global generator: one at a time.
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn net(seed: i64) -> Net {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = (models::find("mlp").unwrap().build)(&vs.root(), ModelCfg { in_channels: 1, num_classes: 10 });
        Net { vs, model }
    }

    fn weights(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
        let mut v: Vec<_> = vs.variables().into_iter().map(|(n, t)| (n, t.detach().copy())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn dml_method() -> Box<dyn Distiller> {
        let info = distill::find("dml").unwrap();
        info.instantiate(&info.defaults()).unwrap()
    }

    /// DML's networks trained as separate trainees exchanging detached outputs take exactly the
    /// spec's simultaneous update: the sum of every network's loss, one backward, one SGD step
    /// over all of them.
    #[test]
    fn exchanging_trainees_equal_the_simultaneous_update() {
        let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
        let amp = Amp::new(Device::Cpu, Precision::Fp32).unwrap();
        let r = crate::suite::Recipe { lr: 0.1, momentum: 0.9, weight_decay: 5e-4, ..Default::default() };
        let own = dml_method();
        let peer = own.peer(0).unwrap();
        let mut ts = [Trainee::new(net(1), own, "", &[], 1.0, &amp, &r), Trainee::new(net(2), peer, "peer0.", &[], 1.0, &amp, &r)];
        let (a, b) = (net(1), net(2));
        let mut joint = Sgd::over(&[("", &a.vs, 1.0), ("peer0.", &b.vs, 1.0)], 0.1, 0.9, 5e-4, false);
        for step in 0..3 {
            tch::manual_seed(100 + step);
            let x = Tensor::randn([16, 1, 8, 8], (Kind::Float, Device::Cpu));
            let y = Tensor::randint(10, [16], (Kind::Int64, Device::Cpu));
            let outs: Vec<Output> = ts.iter().map(|t| t.forward(&amp, &x).unwrap()).collect();
            for (k, t) in ts.iter_mut().enumerate() {
                let p = partners(&outs, k);
                let mut s = Step::new(&outs[k], &[], &y, 1);
                s.partners = &p;
                assert!(t.learn(&s, None).unwrap().is_some());
            }
            let za = a.model.forward(&x, true).logits;
            let zb = b.model.forward(&x, true).logits;
            let total = dml::dml_losses(&[za, zb], &y).into_iter().reduce(|p, q| p + q).unwrap();
            joint.backward_step(&total).unwrap();
        }
        for (t, n) in ts.iter().zip([&a, &b]) {
            for ((name, w), (_, v)) in weights(&t.net.vs).iter().zip(weights(&n.vs)) {
                let d = (w - &v).abs().max().double_value(&[]);
                assert!(d == 0.0, "{name} differs after 3 steps by {d:e}");
            }
        }
    }

    /// A method that returns no terms for a network (SwitOKD's paused teacher) leaves it as it
    /// was: no update, no weight decay, no momentum.
    #[test]
    fn a_trainee_without_loss_terms_is_not_updated() {
        struct Paused;
        impl Distiller for Paused {
            fn losses(&mut self, _: &Step<'_>) -> anyhow::Result<Vec<(&'static str, Tensor)>> {
                Ok(vec![])
            }
        }
        let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
        let amp = Amp::new(Device::Cpu, Precision::Fp32).unwrap();
        let r = crate::suite::Recipe { lr: 0.1, momentum: 0.9, weight_decay: 5e-4, ..Default::default() };
        let mut ts = [Trainee::new(net(1), dml_method(), "", &[], 1.0, &amp, &r), Trainee::new(net(2), Box::new(Paused), "peer0.", &[], 1.0, &amp, &r)];
        let before = (weights(&ts[0].net.vs), weights(&ts[1].net.vs));
        let x = Tensor::randn([8, 1, 8, 8], (Kind::Float, Device::Cpu));
        let y = Tensor::randint(10, [8], (Kind::Int64, Device::Cpu));
        let outs: Vec<Output> = ts.iter().map(|t| t.forward(&amp, &x).unwrap()).collect();
        let learned: Vec<bool> = (0..2)
            .map(|k| {
                let p = partners(&outs, k);
                let mut s = Step::new(&outs[k], &[], &y, 1);
                s.partners = &p;
                ts[k].learn(&s, None).unwrap().is_some()
            })
            .collect();
        assert_eq!(learned, [true, false]);
        let same = |a: &[(String, Tensor)], b: &[(String, Tensor)]| a.iter().zip(b).all(|(p, q)| p.1.equal(&q.1));
        assert!(!same(&before.0, &weights(&ts[0].net.vs)), "the learning network must move");
        assert!(same(&before.1, &weights(&ts[1].net.vs)), "the paused network must not move");
        assert!(ts[1].opt.state().is_empty(), "no momentum for a network that never stepped");
    }
}
