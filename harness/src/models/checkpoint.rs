//! Loading PyTorch state dicts saved as `.safetensors` into a model's VarStore, strictly:
//! every variable must be present with its shape, no unknown keys; BN's `num_batches_tracked`
//! is tolerated. All problems are listed in one error instead of a panic or a partial load.
//! Exporting a finished run's weights for PyTorch.

use std::collections::BTreeMap;
use std::path::Path;

use tch::{Tensor, nn};

use crate::error::InputError;

/// Copies the tensors of `path` into `vs` (names as PyTorch's `state_dict()` keys).
pub fn load_strict(vs: &mut nn::VarStore, path: &Path, model: &str) -> anyhow::Result<()> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext != "safetensors" {
        crate::input_bail!(
            "{}: expected a .safetensors state dict; convert a PyTorch .pth/.pt first \
             (torch.load(f)[\"model\"] → safetensors.torch.save_file)",
            path.display()
        );
    }
    let file: Vec<(String, Tensor)> =
        Tensor::read_safetensors(path).map_err(|e| InputError::new(format!("{}: cannot read as safetensors: {e}", path.display())))?;
    let file: BTreeMap<String, Tensor> = file.into_iter().filter(|(k, _)| !k.ends_with("num_batches_tracked")).collect();
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let missing: Vec<&String> = vars.keys().filter(|k| !file.contains_key(*k)).collect();
    let extra: Vec<&String> = file.keys().filter(|k| !vars.contains_key(*k)).collect();
    let mut shapes = Vec::new();
    for (k, v) in &vars {
        if let Some(t) = file.get(k) {
            if t.size() != v.size() {
                shapes.push(format!("{k}: checkpoint {:?}, model {:?}", t.size(), v.size()));
            }
        }
    }
    if !missing.is_empty() || !extra.is_empty() || !shapes.is_empty() {
        let mut msg = format!("{}: does not match model `{model}`", path.display());
        let list = |v: &[&String]| v.iter().take(20).map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
        if !missing.is_empty() {
            msg.push_str(&format!("\n  missing keys ({}): {}", missing.len(), list(&missing)));
        }
        if !extra.is_empty() {
            msg.push_str(&format!("\n  unexpected keys ({}): {}", extra.len(), list(&extra)));
        }
        if !shapes.is_empty() {
            msg.push_str(&format!("\n  shape mismatches ({}): {}", shapes.len(), shapes.join("; ")));
        }
        crate::input_bail!("{msg}");
    }
    tch::no_grad(|| -> anyhow::Result<()> {
        for (k, mut v) in vars {
            let src = &file[&k];
            v.f_copy_(&src.to_kind(v.kind()).to_device(v.device())).map_err(|e| InputError::new(format!("{}: copying `{k}`: {e}", path.display())))?;
        }
        Ok(())
    })
}

/// Saves a VarStore as safetensors atomically (temp name, then rename).
pub fn save_atomic(vs: &nn::VarStore, path: &Path) -> anyhow::Result<()> {
    let dir = path.parent().ok_or_else(|| anyhow::anyhow!("{}: no parent directory", path.display()))?;
    save_atomic_in(vs, path, dir)
}

fn save_atomic_in(vs: &nn::VarStore, path: &Path, dir: &Path) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".tmp.{}.safetensors", std::process::id()));
    // Contiguous (NCHW) copies: weights may live channels-last in training, and the file must
    // hold PyTorch's default layout.
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().map(|(n, t)| (n, t.contiguous())).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::write_safetensors(&named, &tmp).map_err(|e| anyhow::anyhow!("saving {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| anyhow::anyhow!("renaming to {}: {e}", path.display()))?;
    Ok(())
}

/// What [`export_run`] wrote.
#[derive(Debug)]
pub struct Exported {
    pub model: String,
    pub tensors: usize,
    pub params: i64,
}

/// Writes a finished run's network as a PyTorch state dict: rebuilds the model named in the run's
/// `config.json` for its dataset, loads `model.safetensors` into it strictly (so names and shapes
/// are checked against the definition, not just copied), and saves every variable, BN running
/// statistics included, as float32 safetensors. BN's `num_batches_tracked` is not written:
/// `load_state_dict(strict=True)` fills it in for a state dict without version metadata (and it
/// only matters for BN with `momentum=None`, which none of the zoo's models use).
pub fn export_run(run_dir: &Path, out: &Path) -> anyhow::Result<Exported> {
    let run = crate::store::RunDir { path: run_dir.to_path_buf() };
    if !run.config().is_file() {
        crate::input_bail!("{}: not a run directory (no config.json); expected results/<suite>/runs/<id>", run_dir.display());
    }
    if !run.is_finished() {
        crate::input_bail!("{}: the run has not finished (no summary.json); export needs its final weights", run_dir.display());
    }
    if !run.model().is_file() {
        crate::input_bail!(
            "{}: the run saved no weights (no model.safetensors); students keep theirs with `save_model = true` in the suite",
            run_dir.display()
        );
    }
    let spec = run.read_spec()?;
    let entry = super::find(&spec.model).ok_or_else(|| InputError::new(format!("{}: unknown model `{}` in config.json", run_dir.display(), spec.model)))?;
    let info = crate::data::info(&spec.dataset.name)
        .ok_or_else(|| InputError::new(format!("{}: unknown dataset `{}` in config.json", run_dir.display(), spec.dataset.name)))?;
    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    let _m = (entry.build)(&vs.root(), super::ModelCfg { in_channels: info.shape.0, num_classes: info.classes });
    load_strict(&mut vs, &run.model(), &spec.model)?;
    vs.float();
    if out.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        crate::input_bail!("--out {}: expected a .safetensors file name", out.display());
    }
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        crate::input_bail!("--out {}: folder {} does not exist", out.display(), dir.display());
    }
    save_atomic_in(&vs, out, dir)?;
    Ok(Exported { model: spec.model, tensors: vs.variables().len(), params: super::param_count(&vs) })
}
