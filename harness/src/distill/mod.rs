//! Distillation methods: one file per method family behind [`Distiller`], and a registry.
//!
//! Adding a method: write `foo.rs` with a `pub static INFO: MethodInfo` and its distiller,
//! then add one line to [`REGISTRY`].

pub mod ce;
pub mod kd;
pub mod metrics;

use std::collections::BTreeMap;

use tch::Tensor;

use crate::models::Output;
use crate::suite::ParamValue;

/// One training step's outputs, handed to a method.
pub struct Step<'a> {
    pub student: &'a Output,
    /// Teacher outputs (computed in eval mode under no-grad), when the method needs a teacher.
    pub teacher: Option<&'a Output>,
    pub labels: &'a Tensor,
    /// 1-based epoch (warm-ups depend on it).
    pub epoch: u32,
}

/// A distillation method: named loss terms whose sum is optimised; each term is logged.
pub trait Distiller: Send {
    fn losses(&mut self, step: &Step<'_>) -> anyhow::Result<Vec<(&'static str, Tensor)>>;
}

/// The kind and bounds of a method parameter (checked at suite validation).
#[derive(Clone, Copy, Debug)]
pub enum ParamKind {
    /// A finite float in `[min, max]`.
    Float { min: f64, max: f64 },
}

/// A declared method parameter with its default (from the spec's CIFAR-100 settings).
pub struct ParamDef {
    pub name: &'static str,
    pub kind: ParamKind,
    pub default: ParamValue,
    pub doc: &'static str,
}

/// Resolved parameters handed to a method's constructor.
pub type Params = BTreeMap<String, ParamValue>;

/// Registry entry for a method.
pub struct MethodInfo {
    pub name: &'static str,
    /// Paper (and spec section) the method follows.
    pub paper: &'static str,
    pub needs_teacher: bool,
    pub params: &'static [ParamDef],
    pub build: fn(&Params) -> anyhow::Result<Box<dyn Distiller>>,
}

/// Every method, in the order `harness methods` lists them.
pub static REGISTRY: &[&MethodInfo] = &[&ce::INFO, &kd::INFO];

/// Looks a method up by suite name.
pub fn find(name: &str) -> Option<&'static MethodInfo> {
    REGISTRY.iter().copied().find(|m| m.name == name)
}

/// All method names (for error messages).
pub fn names() -> Vec<&'static str> {
    REGISTRY.iter().map(|m| m.name).collect()
}

impl MethodInfo {
    /// Validates a parameter value from a suite; returns it typed.
    pub fn check_param(&self, name: &str, v: &toml::Value) -> Result<ParamValue, String> {
        let Some(def) = self.params.iter().find(|p| p.name == name) else {
            let allowed: Vec<&str> = self.params.iter().map(|p| p.name).collect();
            if allowed.is_empty() {
                return Err(format!("method `{}` takes no parameters (got `{name}`)", self.name));
            }
            return Err(crate::suite::source::unknown(&format!("parameter of method `{}`", self.name), name, &allowed));
        };
        match def.kind {
            ParamKind::Float { min, max } => {
                let x = match v {
                    toml::Value::Float(f) => *f,
                    toml::Value::Integer(i) => *i as f64,
                    other => return Err(format!("expected a number in [{min}, {max}], found {}", crate::suite::source::type_name(other))),
                };
                if !x.is_finite() || x < min || x > max {
                    return Err(format!("expected a number in [{min}, {max}], found {x}"));
                }
                Ok(ParamValue::Float(x))
            }
        }
    }

    /// Builds the distiller after checking the resolved parameters are complete.
    pub fn instantiate(&self, params: &Params) -> anyhow::Result<Box<dyn Distiller>> {
        for p in self.params {
            if !params.contains_key(p.name) {
                anyhow::bail!("method {}: parameter {} missing from the resolved config", self.name, p.name);
            }
        }
        (self.build)(params)
    }
}

/// Reads a float parameter (present after `instantiate`'s check).
pub fn float(params: &Params, name: &str) -> anyhow::Result<f64> {
    params.get(name).and_then(ParamValue::as_f64).ok_or_else(|| anyhow::anyhow!("parameter {name} missing or not a number"))
}
