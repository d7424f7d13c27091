//! SGD with momentum, dampening 0, optional Nesterov and weight decay, with PyTorch's update rule
//! (`torch.optim.SGD`): `g ← ∇ + wd·p; buf ← μ·buf + g (buf₀ = g); d ← g + μ·buf if nesterov else buf;
//! p ← p − lr·d`. Owned here rather than libtorch's optimiser because per-epoch resume needs the
//! momentum buffers, which tch's optimiser cannot export.

use std::collections::BTreeMap;

use tch::{Tensor, nn};

pub struct Sgd {
    /// Trainable variables by PyTorch name (sorted: a fixed update order).
    params: Vec<(String, Tensor)>,
    bufs: Vec<Option<Tensor>>,
    pub lr: f64,
    momentum: f64,
    wd: f64,
    nesterov: bool,
}

impl Sgd {
    pub fn new(vs: &nn::VarStore, lr: f64, momentum: f64, wd: f64, nesterov: bool) -> Sgd {
        Sgd::over(&[("", vs)], lr, momentum, wd, nesterov)
    }

    /// One optimiser over several stores (the model and a method's own modules), their variable
    /// names prefixed to stay unique.
    pub fn over(stores: &[(&str, &nn::VarStore)], lr: f64, momentum: f64, wd: f64, nesterov: bool) -> Sgd {
        let vars: BTreeMap<String, Tensor> = stores
            .iter()
            .flat_map(|(prefix, vs)| vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).map(move |(n, t)| (format!("{prefix}{n}"), t)))
            .collect();
        let params: Vec<(String, Tensor)> = vars.into_iter().collect();
        let bufs = params.iter().map(|_| None).collect();
        Sgd { params, bufs, lr, momentum, wd, nesterov }
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// Backpropagates `loss` and applies one update.
    pub fn backward_step(&mut self, loss: &Tensor) {
        self.zero_grad();
        loss.backward();
        self.step();
    }

    pub fn step(&mut self) {
        tch::no_grad(|| {
            for (i, (_, p)) in self.params.iter_mut().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let mut d = if self.wd != 0.0 { &g + &*p * self.wd } else { g };
                if self.momentum != 0.0 {
                    let buf = match self.bufs[i].take() {
                        None => d.copy(),
                        Some(mut b) => {
                            let _ = b.f_mul_scalar_(self.momentum);
                            let _ = b.f_add_(&d);
                            b
                        }
                    };
                    d = if self.nesterov { d + &buf * self.momentum } else { buf.shallow_clone() };
                    self.bufs[i] = Some(buf);
                }
                let _ = p.f_sub_(&(d * self.lr));
            }
        })
    }

    /// Momentum buffers, named `momentum.<param>` (absent before the first step).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params.iter().zip(&self.bufs).filter_map(|((n, _), b)| b.as_ref().map(|b| (format!("momentum.{n}"), b.shallow_clone()))).collect()
    }

    /// Restores buffers saved by [`Sgd::state`]; unknown or mis-shaped entries are an error.
    pub fn load_state(&mut self, saved: &BTreeMap<String, Tensor>) -> anyhow::Result<()> {
        for (i, (n, p)) in self.params.iter().enumerate() {
            if let Some(b) = saved.get(&format!("momentum.{n}")) {
                if b.size() != p.size() {
                    anyhow::bail!("momentum buffer for {n} has shape {:?}, parameter {:?}", b.size(), p.size());
                }
                self.bufs[i] = Some(b.to_device(p.device()).to_kind(p.kind()));
            }
        }
        Ok(())
    }
}
