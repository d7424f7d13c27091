//! Mixed precision (`train.precision`): autocast regions around forward passes and dynamic loss
//! scaling for fp16, with the losses and the optimiser in fp32.
//!
//! - **Autocast** goes through a small C++ shim (`harness/csrc/autocast.cpp`) over libtorch's
//!   per-device autocast API, because tch 0.24 only wraps CUDA autocast at its default dtype.
//!   [`Autocast::enter`] returns a guard that restores the previous state when dropped (also while
//!   unwinding), with torch.autocast's nesting and weight-cast-cache rules.
//! - **Outputs in fp32**: [`Amp::forward`] casts every tensor a model returns (logits, feature
//!   taps, pooled vector) back to fp32 after the region closes, so every loss, every method's own
//!   modules (FitNet's regressor, CRD's heads) and the optimiser see fp32, as with
//!   `torch.autocast` followed by `.float()`.
//! - **Teachers** run under the same autocast as the students rather than with weights converted
//!   to the low dtype once: their weights and BN statistics stay fp32 (one copy, the checkpoint as
//!   trained, test logits comparable), conv/matmul run in the low dtype, and the per-forward cast
//!   of the weights is small next to the convolutions (and shared by a cohort).
//! - **fp16** needs loss scaling ([`LossScaler`], `torch.amp.GradScaler`'s rule); bf16 has fp32's
//!   exponent range and does not.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::models::{Model, Output};
use crate::train::sgd::Sgd;

pub use crate::suite::spec::{PRECISIONS, Precision};

/// The shim's dtype codes (csrc/autocast.cpp).
impl Precision {
    /// Shim code of the dtype (csrc/autocast.cpp).
    fn code(self) -> i32 {
        self as i32
    }

    fn from_code(c: i32) -> Option<Precision> {
        [Precision::Fp32, Precision::Bf16, Precision::Fp16].get(usize::try_from(c).ok()?).copied()
    }
}

unsafe extern "C" {
    fn kdh_autocast_get(device: i32, enabled: *mut i32, dtype: *mut i32, err: *mut std::ffi::c_char, len: usize) -> i32;
    fn kdh_autocast_set(device: i32, enabled: i32, dtype: i32, err: *mut std::ffi::c_char, len: usize) -> i32;
    fn kdh_autocast_enter_region() -> i32;
    fn kdh_autocast_exit_region() -> i32;
}

/// libtorch's autocast state for one device type on this thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct State {
    pub enabled: bool,
    /// `None` for a dtype other than fp32/bf16/fp16.
    pub dtype: Option<Precision>,
}

/// Device-type code of the shim; autocast exists for the CPU and CUDA only.
fn device_code(d: Device) -> anyhow::Result<i32> {
    match d {
        Device::Cpu => Ok(0),
        Device::Cuda(_) => Ok(1),
        other => crate::input_bail!("mixed precision runs on the CPU or CUDA, not on {other:?}; use train.precision = \"fp32\""),
    }
}

fn call(f: impl FnOnce(*mut std::ffi::c_char, usize) -> i32) -> anyhow::Result<()> {
    let mut buf = [0 as std::ffi::c_char; 512];
    if f(buf.as_mut_ptr(), buf.len()) == 0 {
        return Ok(());
    }
    // SAFETY: the shim always NUL-terminates within `len`.
    let msg = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    anyhow::bail!("libtorch autocast: {}", msg.to_string_lossy())
}

/// The current autocast state of `device`'s type on this thread.
pub fn state(device: Device) -> anyhow::Result<State> {
    let d = device_code(device)?;
    let (mut en, mut dt) = (0i32, 0i32);
    // SAFETY: valid out-pointers and buffer; the shim catches C++ exceptions.
    call(|e, l| unsafe { kdh_autocast_get(d, &mut en, &mut dt, e, l) })?;
    Ok(State { enabled: en != 0, dtype: Precision::from_code(dt) })
}

fn set(device: Device, enabled: bool, dtype: Option<Precision>) -> anyhow::Result<()> {
    let d = device_code(device)?;
    let code = dtype.map(Precision::code).unwrap_or(-1);
    // SAFETY: as in `state`.
    call(|e, l| unsafe { kdh_autocast_set(d, enabled as i32, code, e, l) })
}

/// Entry point of autocast regions.
pub struct Autocast;

/// An open autocast region; dropping it restores the state found at [`Autocast::enter`].
/// Autocast state is thread-local in libtorch, so the guard cannot leave its thread.
#[must_use = "the region closes when the guard is dropped"]
pub struct Guard {
    restore: Option<(Device, State)>,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Autocast {
    /// Opens a region in which `device`'s conv/matmul run in `precision`'s dtype (torch.autocast).
    /// fp32 is a no-op: the state is not touched, so fp32 runs do exactly what they did before.
    pub fn enter(device: Device, precision: Precision) -> anyhow::Result<Guard> {
        if precision.is_fp32() {
            return Ok(Guard { restore: None, _not_send: std::marker::PhantomData });
        }
        let prev = state(device)?;
        set(device, true, Some(precision))?;
        // SAFETY: a thread-local counter in libtorch; cannot fail.
        unsafe { kdh_autocast_enter_region() };
        Ok(Guard { restore: Some((device, prev)), _not_send: std::marker::PhantomData })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some((device, prev)) = self.restore.take() {
            // SAFETY: pairs with the enter above; clears the weight-cast cache at depth 0.
            unsafe { kdh_autocast_exit_region() };
            // Restoring a state read a moment ago on a device type already used cannot fail (and
            // a Drop cannot report an error). A dtype outside fp32/bf16/fp16 is left as set.
            let _ = set(device, prev.enabled, prev.dtype);
        }
    }
}

/// Refuses a precision the device cannot run (exit 2 through [`crate::error::InputError`]).
pub fn check_device(precision: Precision, device: Device) -> anyhow::Result<()> {
    if precision.is_fp32() {
        return Ok(());
    }
    device_code(device)?;
    // One tiny op in the region proves libtorch accepts the dtype for this device type.
    let probe = || -> anyhow::Result<Kind> {
        let _g = Autocast::enter(device, precision)?;
        let a = Tensor::f_ones([2, 2], (Kind::Float, device))?;
        Ok(a.f_matmul(&a)?.kind())
    };
    match probe() {
        Ok(k) if k == precision.kind() => Ok(()),
        Ok(k) => crate::input_bail!("train.precision = \"{precision}\": autocast on {device:?} computed in {k:?}; this libtorch does not support it there"),
        Err(e) => crate::input_bail!("train.precision = \"{precision}\" is not supported on {device:?} by this libtorch: {e:#}"),
    }
}

/// A run's precision on its device: forward passes under autocast, outputs back in fp32.
#[derive(Clone, Copy, Debug)]
pub struct Amp {
    pub device: Device,
    pub precision: Precision,
}

impl Amp {
    pub fn new(device: Device, precision: Precision) -> anyhow::Result<Amp> {
        check_device(precision, device)?;
        Ok(Amp { device, precision })
    }

    /// `model.forward(x, train)` in the run's precision, every output tensor in fp32.
    pub fn forward(&self, model: &dyn Model, x: &Tensor, train: bool) -> anyhow::Result<Output> {
        if self.precision.is_fp32() {
            return Ok(model.forward(x, train));
        }
        let out = {
            let _g = Autocast::enter(self.device, self.precision)?;
            model.forward(x, train)
        };
        Ok(to_fp32(out))
    }

    /// A fresh loss scaler for fp16 runs; `None` otherwise.
    pub fn scaler(&self) -> Option<LossScaler> {
        (self.precision == Precision::Fp16).then(LossScaler::default)
    }
}

/// Every tensor of a forward's output as fp32 (a no-op for tensors already fp32).
pub fn to_fp32(o: Output) -> Output {
    let f = |t: Tensor| if t.kind() == Kind::Float { t } else { t.to_kind(Kind::Float) };
    Output {
        logits: f(o.logits),
        feats: o.feats.into_iter().map(f).collect(),
        preact: o.preact.into_iter().map(f).collect(),
        pooled: f(o.pooled),
    }
}

/// Dynamic loss scaling for fp16 (`torch.amp.GradScaler`'s defaults and rule): the loss is
/// multiplied by `scale` before backward so small fp16 gradients do not flush to zero; gradients
/// are divided by it before the step. A step whose gradients hold an inf/NaN is skipped and the
/// scale multiplied by `backoff`; after `interval` consecutive good steps it is multiplied by
/// `growth`. Serialisable: resume continues with the same scale and count.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    pub scale: f64,
    pub growth: f64,
    pub backoff: f64,
    pub interval: u32,
    /// Good steps since the scale last changed.
    pub good_steps: u32,
    /// Steps skipped because of non-finite gradients, over the whole run.
    pub skipped: u64,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler { scale: 65536.0, growth: 2.0, backoff: 0.5, interval: 2000, good_steps: 0, skipped: 0 }
    }
}

impl LossScaler {
    /// Backpropagates `loss · scale`, unscales the gradients and steps `opt` unless one of them
    /// is non-finite; returns whether the step was taken. One host sync per step (as GradScaler).
    pub fn backward_step(&mut self, opt: &mut Sgd, loss: &Tensor) -> anyhow::Result<bool> {
        opt.zero_grad();
        (loss * self.scale).f_backward()?;
        let finite = self.unscale(&opt.grads());
        if finite {
            opt.step()?;
        }
        self.update(finite);
        Ok(finite)
    }

    /// Divides the gradients by the scale in place; whether all of them are finite.
    fn unscale(&self, grads: &[Tensor]) -> bool {
        let Some(first) = grads.first() else { return true };
        let inv = 1.0 / self.scale;
        tch::no_grad(|| {
            let mut bad = Tensor::zeros([], (Kind::Bool, first.device()));
            for g in grads {
                let mut g = g.shallow_clone();
                let _ = g.f_mul_scalar_(inv);
                bad = bad.logical_or(&g.isfinite().all().logical_not());
            }
            bad.int64_value(&[]) == 0
        })
    }

    fn update(&mut self, finite: bool) {
        if finite {
            self.good_steps += 1;
            if self.good_steps >= self.interval {
                self.scale *= self.growth;
                self.good_steps = 0;
            }
        } else {
            self.scale *= self.backoff;
            self.good_steps = 0;
            self.skipped += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn;

    #[test]
    fn precision_names_round_trip_and_bad_values_list_the_allowed_ones() {
        for p in PRECISIONS {
            assert_eq!(Precision::parse(p).unwrap().as_str(), *p);
        }
        let e = Precision::parse("fp8").unwrap_err();
        assert!(e.contains("fp32, bf16, fp16") && e.contains("fp8"), "{e}");
    }

    /// One parameter p = 1 with loss = c·p, so its gradient is c.
    fn one_param() -> (nn::VarStore, Tensor, Sgd) {
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root().ones("p", &[1]);
        let opt = Sgd::new(&vs, 0.1, 0.0, 0.0, false);
        (vs, p, opt)
    }

    #[test]
    fn a_planted_inf_gradient_skips_the_step_and_halves_the_scale() {
        let (_vs, p, mut opt) = one_param();
        let mut s = LossScaler { interval: 3, ..LossScaler::default() };
        let took = s.backward_step(&mut opt, &(&p * f64::INFINITY).sum(Kind::Float)).unwrap();
        assert!(!took);
        assert_eq!((s.scale, s.skipped, s.good_steps), (32768.0, 1, 0));
        assert_eq!(p.double_value(&[0]), 1.0, "a skipped step must not move the parameter");
        let took = s.backward_step(&mut opt, &(&p * f64::NAN).sum(Kind::Float)).unwrap();
        assert!(!took);
        assert_eq!((s.scale, s.skipped), (16384.0, 2));
    }

    #[test]
    fn good_steps_are_unscaled_and_the_scale_grows_back_after_the_interval() {
        let (_vs, p, mut opt) = one_param();
        let mut s = LossScaler { interval: 3, ..LossScaler::default() };
        assert!(!s.backward_step(&mut opt, &(&p * f64::INFINITY).sum(Kind::Float)).unwrap());
        for k in 1..=3 {
            assert!(s.backward_step(&mut opt, &(&p * 2.0).sum(Kind::Float)).unwrap());
            // The unscaled gradient is 2: p = 1 − 0.1·2·k.
            assert!((p.double_value(&[0]) - (1.0 - 0.2 * k as f64)).abs() < 1e-6, "step {k}: p = {}", p.double_value(&[0]));
            let want = if k < 3 { 32768.0 } else { 65536.0 };
            assert_eq!(s.scale, want, "after {k} good steps");
        }
        assert_eq!((s.skipped, s.good_steps), (1, 0));
    }

    #[test]
    fn the_guard_sets_and_restores_the_cpu_state() {
        let before = state(Device::Cpu).unwrap();
        assert!(!before.enabled);
        {
            let _g = Autocast::enter(Device::Cpu, Precision::Bf16).unwrap();
            assert_eq!(state(Device::Cpu).unwrap(), State { enabled: true, dtype: Some(Precision::Bf16) });
            {
                let _h = Autocast::enter(Device::Cpu, Precision::Fp16).unwrap();
                assert_eq!(state(Device::Cpu).unwrap(), State { enabled: true, dtype: Some(Precision::Fp16) });
            }
            assert_eq!(state(Device::Cpu).unwrap(), State { enabled: true, dtype: Some(Precision::Bf16) });
            let _f = Autocast::enter(Device::Cpu, Precision::Fp32).unwrap();
            assert_eq!(state(Device::Cpu).unwrap().dtype, Some(Precision::Bf16), "fp32 leaves the state alone");
        }
        assert_eq!(state(Device::Cpu).unwrap(), before);
    }
}
