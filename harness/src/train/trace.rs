//! Step traces for the trajectory-parity test (`tests/parity.rs`, `scripts/reference/trajectory.py`):
//! with `KD_HARNESS_TRACE=<dir>` set, a run writes under `<dir>/<run-id>/`
//! - `init.safetensors`: every variable of its stores (`model.`, `aux.`, ...) before the first step;
//! - `step-<k>.safetensors` (k = 1, 2, ...): the batch as the network saw it (`x` normalised float
//!   NCHW, `y`, `idx` dataset indices), `epoch`, `lr`, each loss term (`loss.<name>`), the latest
//!   random draws recorded by [`record`] (`draw.<name>`: the batch's crop offsets and flips, CRD's
//!   negatives), so a reference implementation can replay them, and the state after
//!   the update: every variable of the stores and the momentum buffers (`momentum.<param>`). The
//!   last step's file is the run's final state.
//!
//! Unset (normal use) every call is a no-op. The loop calls [`Trace::start`] once and
//! [`Trace::step`] after each update; code below the loop (data, methods) calls [`record`].

use std::path::PathBuf;

use anyhow::Context;
use tch::{Kind, Tensor, nn};

pub use crate::draws::{TRACE_ENV, record};
use crate::draws::{clear, draws};

/// One run's trace directory and step counter.
pub struct Trace {
    dir: PathBuf,
    step: usize,
}

fn write(path: PathBuf, mut named: Vec<(String, Tensor)>) -> anyhow::Result<()> {
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let named: Vec<(String, Tensor)> = named.into_iter().map(|(n, t)| (n, t.detach().to_device(tch::Device::Cpu).contiguous())).collect();
    Tensor::write_safetensors(&named, &path).map_err(|e| anyhow::anyhow!("trace: writing {}: {e}", path.display()))
}

fn variables(stores: &[(String, &nn::VarStore)]) -> Vec<(String, Tensor)> {
    stores.iter().flat_map(|(p, vs)| vs.variables().into_iter().map(move |(n, t)| (format!("{p}{n}"), t))).collect()
}

fn scalar(x: f64, kind: Kind) -> Tensor {
    Tensor::from_slice(&[x]).to_kind(kind)
}

impl Trace {
    /// Starts tracing run `id` when `KD_HARNESS_TRACE` is set: writes the initial variables. A
    /// trace covers a whole run, so a resumed run (`first_epoch > 1`) cannot be traced.
    pub fn start(id: &str, first_epoch: u32, stores: &[(String, &nn::VarStore)]) -> anyhow::Result<Option<Trace>> {
        let Some(root) = std::env::var_os(TRACE_ENV).filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        if first_epoch != 1 {
            anyhow::bail!("{TRACE_ENV}: run {id} resumes after epoch {}; a trace needs a run from its first step", first_epoch - 1);
        }
        let dir = PathBuf::from(root).join(id);
        std::fs::create_dir_all(&dir).with_context(|| format!("trace: creating {}", dir.display()))?;
        // Draws made while setting up (PrUE's passes) belong to no step.
        clear();
        write(dir.join("init.safetensors"), variables(stores))?;
        Ok(Some(Trace { dir, step: 0 }))
    }

    /// Writes one step: the batch, the loss terms, the latest recorded draws, and the state after
    /// the update.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        epoch: u32,
        lr: f64,
        x: &Tensor,
        y: &Tensor,
        idx: &Tensor,
        terms: &[(&str, Tensor)],
        stores: &[(String, &nn::VarStore)],
        opts: &[&super::sgd::Sgd],
    ) -> anyhow::Result<()> {
        self.step += 1;
        let mut named = vec![
            ("x".to_string(), x.to_kind(Kind::Float)),
            ("y".to_string(), y.shallow_clone()),
            ("idx".to_string(), idx.shallow_clone()),
            ("epoch".to_string(), scalar(epoch as f64, Kind::Int64)),
            ("lr".to_string(), scalar(lr, Kind::Double)),
        ];
        named.extend(terms.iter().map(|(n, t)| (format!("loss.{n}"), t.detach().to_kind(Kind::Float).reshape([1]))));
        named.extend(draws().into_iter().map(|(n, t)| (format!("draw.{n}"), t)));
        named.extend(variables(stores));
        named.extend(opts.iter().flat_map(|o| o.state()));
        write(self.dir.join(format!("step-{:06}.safetensors", self.step)), named)
    }
}
