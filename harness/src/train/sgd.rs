//! SGD with momentum, dampening 0, optional Nesterov and weight decay, with PyTorch's update rule
//! (`torch.optim.SGD`): `g ← ∇ + wd·p; buf ← μ·buf + g (buf₀ = g); d ← g + μ·buf if nesterov else buf;
//! p ← p − lr·d`. Owned here rather than libtorch's optimiser because per-epoch resume needs the
//! momentum buffers, which tch's optimiser cannot export. Parameters come in groups (the model,
//! a method's modules), each with its own lr scale.

use std::collections::BTreeMap;

use anyhow::Context;
use tch::{Tensor, nn};

pub struct Sgd {
    /// (PyTorch name with its store's prefix, variable, group), sorted by name: a fixed order.
    params: Vec<(String, Tensor, usize)>,
    bufs: Vec<Option<Tensor>>,
    /// Base learning rate (the schedule's value for the epoch).
    pub lr: f64,
    scales: Vec<f64>,
    momentum: f64,
    wd: f64,
    nesterov: bool,
}

impl Sgd {
    pub fn new(vs: &nn::VarStore, lr: f64, momentum: f64, wd: f64, nesterov: bool) -> Sgd {
        Sgd::over(&[("", vs, 1.0)], lr, momentum, wd, nesterov)
    }

    /// One optimiser over several stores, one group each: (name prefix, store, lr scale).
    pub fn over(stores: &[(&str, &nn::VarStore, f64)], lr: f64, momentum: f64, wd: f64, nesterov: bool) -> Sgd {
        let mut params: Vec<(String, Tensor, usize)> = stores
            .iter()
            .enumerate()
            .flat_map(|(g, (prefix, vs, _))| vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).map(move |(n, t)| (format!("{prefix}{n}"), t, g)))
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let bufs = params.iter().map(|_| None).collect();
        Sgd { params, bufs, lr, scales: stores.iter().map(|s| s.2).collect(), momentum, wd, nesterov }
    }

    pub fn zero_grad(&mut self) {
        for (_, p, _) in &mut self.params {
            p.zero_grad();
        }
    }

    /// The defined gradients (what [`Sgd::step`] would apply); shallow
    /// clones, so in-place changes (loss-scale unscaling) reach the parameters' gradients.
    pub fn grads(&self) -> Vec<Tensor> {
        self.params.iter().map(|(_, p, _)| p.grad()).filter(|g| g.defined()).collect()
    }

    /// Backpropagates `loss` and applies one update.
    pub fn backward_step(&mut self, loss: &Tensor) -> anyhow::Result<()> {
        self.zero_grad();
        loss.f_backward()?;
        self.step()
    }

    /// One update; a failed in-place operation is an error, never a silently skipped update.
    pub fn step(&mut self) -> anyhow::Result<()> {
        tch::no_grad(|| {
            for (i, (name, p, g)) in self.params.iter_mut().enumerate() {
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                let update = |d: Tensor, buf: Option<Tensor>| -> Result<(Tensor, Option<Tensor>), tch::TchError> {
                    if self.momentum == 0.0 {
                        return Ok((d, None));
                    }
                    let buf = match buf {
                        None => d.f_detach_copy()?,
                        Some(mut b) => {
                            let _ = b.f_mul_scalar_(self.momentum)?;
                            let _ = b.f_add_(&d)?;
                            b
                        }
                    };
                    let d = if self.nesterov { d.f_add(&buf.f_mul_scalar(self.momentum)?)? } else { buf.shallow_clone() };
                    Ok((d, Some(buf)))
                };
                let d = if self.wd != 0.0 { grad.f_add(&p.f_mul_scalar(self.wd)?)? } else { grad };
                let (d, buf) = update(d, self.bufs[i].take()).map_err(|e| anyhow::anyhow!("SGD momentum update of {name}: {e}"))?;
                self.bufs[i] = buf;
                let _ = p.f_sub_(&d.f_mul_scalar(self.lr * self.scales[*g])?).map_err(|e| anyhow::anyhow!("SGD update of {name}: {e}"))?;
            }
            Ok(())
        })
    }

    /// Keeps pruned weights dead (spec §10): zeroes the masked entries of each named parameter
    /// (store prefix included) and of its momentum buffer, so neither weight decay nor momentum
    /// accumulated before the mask can resurrect them at the next step.
    pub fn apply_masks(&mut self, masks: &std::collections::BTreeMap<String, Tensor>) -> anyhow::Result<()> {
        tch::no_grad(|| {
            for (i, (n, p, _)) in self.params.iter_mut().enumerate() {
                if let Some(m) = masks.get(n) {
                    let _ = p.f_mul_(m).with_context(|| format!("applying the pruning mask of {n}"))?;
                    if let Some(b) = self.bufs[i].as_mut() {
                        let _ = b.f_mul_(m).with_context(|| format!("masking the momentum of {n}"))?;
                    }
                }
            }
            Ok(())
        })
    }

    /// Momentum buffers, named `momentum.<param>` (absent before the first step).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params.iter().zip(&self.bufs).filter_map(|((n, _, _), b)| b.as_ref().map(|b| (format!("momentum.{n}"), b.shallow_clone()))).collect()
    }

    /// Checks buffers saved by [`Sgd::state`] without loading them: shapes and dtypes match the
    /// parameters, values are finite.
    pub fn check_state(&self, saved: &BTreeMap<String, Tensor>) -> anyhow::Result<()> {
        for (n, p, _) in &self.params {
            if let Some(b) = saved.get(&format!("momentum.{n}")) {
                if b.size() != p.size() || b.kind() != p.kind() {
                    anyhow::bail!("momentum buffer for {n} is {:?} {:?}, parameter {:?} {:?}", b.kind(), b.size(), p.kind(), p.size());
                }
                if b.f_isfinite()?.f_all()?.f_int64_value(&[])? == 0 {
                    anyhow::bail!("momentum buffer for {n} holds NaN or infinite values");
                }
            }
        }
        Ok(())
    }

    /// Restores buffers saved by [`Sgd::state`] (checked first with [`Sgd::check_state`]).
    pub fn load_state(&mut self, saved: &BTreeMap<String, Tensor>) -> anyhow::Result<()> {
        self.check_state(saved)?;
        for (i, (n, p, _)) in self.params.iter().enumerate() {
            if let Some(b) = saved.get(&format!("momentum.{n}")) {
                self.bufs[i] = Some(b.f_to_device(p.device())?);
            }
        }
        Ok(())
    }
}
