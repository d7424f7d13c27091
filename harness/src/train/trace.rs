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
use std::sync::Mutex;

use anyhow::Context;
use tch::{Kind, Tensor, nn};

/// Environment variable naming the trace directory.
pub const TRACE_ENV: &str = "KD_HARNESS_TRACE";

/// Draws recorded since the last step, in the order they were made.
static DRAWS: Mutex<Vec<(String, Tensor)>> = Mutex::new(Vec::new());

fn enabled() -> bool {
    std::env::var_os(TRACE_ENV).is_some_and(|v| !v.is_empty())
}

/// Records a random draw (as Int64/Float on the CPU) for the following [`Trace::step`] calls; a
/// no-op unless tracing. A later draw of the same name replaces it, so every step writes the
/// latest draws: those of its batch (which every member of a cohort shares) and its method's.
pub fn record(name: &str, t: &Tensor) {
    if !enabled() {
        return;
    }
    let t = if t.kind() == Kind::Bool { t.to_kind(Kind::Int64) } else { t.shallow_clone() };
    let t = t.detach().to_device(tch::Device::Cpu).contiguous();
    if let Ok(mut p) = DRAWS.lock() {
        p.retain(|(n, _)| n != name);
        p.push((name.to_string(), t));
    }
}

fn draws() -> Vec<(String, Tensor)> {
    DRAWS.lock().map(|p| p.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect()).unwrap_or_default()
}

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
        if let Ok(mut p) = DRAWS.lock() {
            p.clear();
        }
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
