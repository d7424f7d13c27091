//! Random draws recorded for the step trace of the trajectory-parity test
//! ([`crate::train::trace`]): the data pipeline records its crop offsets and flips, CRD its
//! negatives, and each traced step writes the latest ones. A no-op unless `KD_HARNESS_TRACE` is
//! set. Kept below `data` and `distill` so that code low in the stack can record without
//! reaching up into the training loop.

use std::sync::Mutex;

use tch::{Kind, Tensor};

/// Environment variable naming the trace directory.
pub const TRACE_ENV: &str = "KD_HARNESS_TRACE";

/// Draws recorded since the last step, in the order they were made.
static DRAWS: Mutex<Vec<(String, Tensor)>> = Mutex::new(Vec::new());

fn enabled() -> bool {
    std::env::var_os(TRACE_ENV).is_some_and(|v| !v.is_empty())
}

/// Records a random draw (as Int64/Float on the CPU) for the following trace steps; a
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

pub(crate) fn draws() -> Vec<(String, Tensor)> {
    DRAWS.lock().map(|p| p.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect()).unwrap_or_default()
}

/// Forgets the draws made so far (those of set-up belong to no step).
pub(crate) fn clear() {
    if let Ok(mut p) = DRAWS.lock() {
        p.clear();
    }
}
