//! Loading PyTorch state dicts saved as `.safetensors` into a model's VarStore, strictly:
//! every variable must be present with its shape and a floating-point dtype, no unknown keys,
//! finite values, BN variances >= 0; BN's `num_batches_tracked` is tolerated. All problems are
//! listed in one error instead of a panic, a silent cast or a partial load.
//! Exporting a finished run's weights for PyTorch.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorInfo};
use tch::{Tensor, nn};

use crate::error::InputError;

/// Copies the tensors of `path` into `vs` (names as PyTorch's `state_dict()` keys), after
/// [`read_checked`] accepted all of them: nothing is copied from a file with any problem.
pub fn load_strict(vs: &mut nn::VarStore, path: &Path, model: &str) -> anyhow::Result<()> {
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let file = read_checked(path, &vars, model)?;
    tch::no_grad(|| -> anyhow::Result<()> {
        for (k, mut v) in vars {
            let src = &file[&k];
            let src = src.f_to_kind(v.kind()).and_then(|t| t.f_to_device(v.device()));
            src.and_then(|s| v.f_copy_(&s)).map_err(|e| InputError::new(format!("{}: copying `{k}`: {e}", path.display())))?;
        }
        Ok(())
    })
}

/// Checks a checkpoint for `model` built for a dataset's `cfg` without loading it anywhere:
/// what `harness plan` and `harness run` do for every teacher checkpoint before anything trains.
pub fn validate(path: &Path, model: &str, cfg: super::ModelCfg) -> anyhow::Result<()> {
    let entry = super::find(model).ok_or_else(|| InputError::new(format!("unknown model `{model}`")))?;
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let _m = (entry.build)(&vs.root(), cfg);
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    read_checked(path, &vars, model).map(|_| ())
}

/// The libtorch kind of a floating-point safetensors dtype; `None` for integers and bools,
/// which are refused rather than cast (a weight stored as int64 has lost its values).
fn float_kind(d: Dtype) -> Option<tch::Kind> {
    match d {
        Dtype::F16 => Some(tch::Kind::Half),
        Dtype::BF16 => Some(tch::Kind::BFloat16),
        Dtype::F32 => Some(tch::Kind::Float),
        Dtype::F64 => Some(tch::Kind::Double),
        _ => None,
    }
}

/// Problems found in a checkpoint, listed together in one error.
#[derive(Default)]
struct Problems(Vec<(String, Vec<String>)>);

impl Problems {
    fn add(&mut self, what: &str, items: Vec<String>) {
        if !items.is_empty() {
            self.0.push((what.to_string(), items));
        }
    }
}

/// Reads `path` and checks it against `vars` (a model's variables): every name present with its
/// shape, no unknown names (BN's `num_batches_tracked` is tolerated), floating-point dtypes, finite
/// values, BN `running_var` >= 0. All problems are listed in one [`InputError`].
pub fn read_checked(path: &Path, vars: &BTreeMap<String, Tensor>, model: &str) -> anyhow::Result<BTreeMap<String, Tensor>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext != "safetensors" {
        crate::input_bail!(
            "{}: expected a .safetensors state dict; convert a PyTorch .pth/.pt first \
             (torch.load(f)[\"model\"] → safetensors.torch.save_file)",
            path.display()
        );
    }
    let bytes = crate::files::read(path, "checkpoint")?;
    if bytes.is_empty() {
        crate::input_bail!("{}: empty file; expected a .safetensors state dict", path.display());
    }
    // Validates the header: lengths, offsets and sizes against the bytes present (checked arithmetic).
    let (n, meta) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| InputError::new(format!("{}: not a readable safetensors file ({e:?}); truncated or another format?", path.display())))?;
    let mut views: BTreeMap<String, &TensorInfo> = meta.tensors().into_iter().filter(|(k, _)| !k.ends_with("num_batches_tracked")).collect();
    let mut p = Problems::default();
    p.add("missing keys", vars.keys().filter(|k| !views.contains_key(*k)).cloned().collect());
    p.add("unexpected keys", views.keys().filter(|k| !vars.contains_key(*k)).cloned().collect());
    let mut shapes = Vec::new();
    let mut dtypes = Vec::new();
    for (k, v) in vars {
        let Some(t) = views.get(k) else { continue };
        let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
        if shape != v.size() {
            shapes.push(format!("{k}: checkpoint {shape:?}, model {:?}", v.size()));
        }
        if float_kind(t.dtype).is_none() {
            dtypes.push(format!("{k}: {:?}", t.dtype));
        }
    }
    p.add("shape mismatches", shapes);
    p.add("non-float dtypes (weights must be F16, BF16, F32 or F64; integers and bools are not cast)", dtypes);
    views.retain(|k, _| vars.contains_key(k));
    let mut out = BTreeMap::new();
    if p.0.is_empty() {
        let (mut nonfinite, mut negvar) = (Vec::new(), Vec::new());
        for (k, t) in views {
            let kind = float_kind(t.dtype).unwrap_or(tch::Kind::Float);
            let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
            let (s, e) = t.data_offsets;
            let x = Tensor::f_from_data_size(&bytes[8 + n + s..8 + n + e], &shape, kind)
                .map_err(|e| InputError::new(format!("{}: reading `{k}`: {e}", path.display())))?;
            let x64 = x.f_to_kind(tch::Kind::Double).map_err(|e| InputError::new(format!("{}: reading `{k}`: {e}", path.display())))?;
            if x64.numel() > 0 && !bool::try_from(x64.isfinite().all()).unwrap_or(false) {
                nonfinite.push(k.clone());
            } else if k.ends_with("running_var") && x64.numel() > 0 && x64.min().double_value(&[]) < 0.0 {
                negvar.push(k.clone());
            }
            out.insert(k, x);
        }
        p.add("non-finite values (NaN or inf) in", nonfinite);
        p.add("negative BatchNorm running_var in", negvar);
    }
    if p.0.is_empty() {
        return Ok(out);
    }
    let mut msg = format!("{}: does not match model `{model}`", path.display());
    for (what, items) in &p.0 {
        let shown: Vec<&str> = items.iter().take(20).map(String::as_str).collect();
        msg.push_str(&format!("\n  {what} ({}): {}", items.len(), shown.join("; ")));
    }
    crate::input_bail!("{msg}");
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
    let spec = run.read_spec()?;
    // The results are verified as `status` and `report` verify them: a damaged run is not exported.
    let summary = match crate::store::verify::check(&run, &spec) {
        crate::store::verify::Health::Finished(s) => s,
        crate::store::verify::Health::Damaged(d) => {
            crate::input_bail!("{}: the run's results are damaged ({d}); `harness run --retrain-damaged` retrains it", run_dir.display())
        }
        crate::store::verify::Health::Unfinished { .. } => {
            crate::input_bail!("{}: the run has not finished; export needs its final weights", run_dir.display())
        }
    };
    if !run.model().is_file() {
        crate::input_bail!(
            "{}: the run saved no weights (no model.safetensors); students keep theirs with `save_model = true` in the suite",
            run_dir.display()
        );
    }
    let entry = super::find(&spec.model).ok_or_else(|| InputError::new(format!("{}: unknown model `{}` in config.json", run_dir.display(), spec.model)))?;
    let info = crate::data::info(&spec.dataset.name)
        .ok_or_else(|| InputError::new(format!("{}: unknown dataset `{}` in config.json", run_dir.display(), spec.dataset.name)))?;
    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    let cfg = super::ModelCfg { in_channels: info.shape.0, num_classes: info.classes };
    // A student formed from its pruned teacher has the widths its summary records.
    let _m = match &summary.student_widths {
        Some(w) => super::build_with_widths(&spec.model, &vs.root(), cfg, w)
            .ok_or_else(|| InputError::new(format!("{}: model `{}` has no width plan for {} widths", run_dir.display(), spec.model, w.len())))?,
        None => (entry.build)(&vs.root(), cfg),
    };
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
