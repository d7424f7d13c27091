//! Per-epoch resume state of one run: the network (with BN statistics), the method's modules,
//! online peers, train-mode teachers and the momentum buffers in `resume-e<N>.safetensors`, the
//! loop's record in `resume.json`; both written atomically, the previous pair removed only after
//! the new one is complete. Loading is all-or-nothing: everything is checked before anything is
//! copied, so a damaged state never leaves a half-loaded model, module, peer or teacher behind.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tch::{Tensor, nn};

use super::record::History;
use super::sgd::Sgd;
use crate::store::RunDir;
use crate::suite::RunSpec;

/// `resume.json`: the run it belongs to, the last completed epoch, the tensor file, and the loop's
/// record so far (flattened, so the file's keys are the record's).
#[derive(Serialize, Deserialize)]
pub struct ResumeState {
    pub id: String,
    pub epoch: u32,
    pub file: String,
    #[serde(flatten)]
    pub history: History,
    /// fp16's loss scale and counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaler: Option<super::precision::LossScaler>,
    /// fp16: each online peer's loss scaler, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peer_scalers: Vec<super::precision::LossScaler>,
}

/// Path of the resume state in a run directory.
pub fn resume_json(run: &RunDir) -> PathBuf {
    run.path.join("resume.json")
}

/// Removes resume files (after the run's summary is written).
pub fn clear_resume(run: &RunDir) {
    remove_tensor_files(run, None);
    let _ = std::fs::remove_file(resume_json(run));
}

fn remove_tensor_files(run: &RunDir, keep: Option<&str>) {
    if let Ok(rd) = std::fs::read_dir(&run.path) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("resume-e") && n.ends_with(".safetensors") && Some(n.as_str()) != keep {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// The variable stores a run's state holds, each with its name prefix.
pub type Stores<'a> = Vec<(String, &'a nn::VarStore)>;

/// What [`load`] found.
pub enum Loaded {
    None,
    Resumed(ResumeState),
    /// Present but unusable; nothing was changed.
    Unusable(anyhow::Error),
}

/// Loads the state if there is one into `stores` and the optimisers' momentum, after checking it against the run's
/// spec ([`crate::store::verify::resume_state`]: id, epoch inside the run, one row per epoch) and
/// every tensor. `Err` only when copying failed after every check passed (the stores are then
/// half-loaded and must not be trained).
pub fn load(run: &RunDir, spec: &RunSpec, stores: &Stores<'_>, opts: &mut [&mut Sgd]) -> anyhow::Result<Loaded> {
    if !resume_json(run).is_file() {
        return Ok(Loaded::None);
    }
    let (st, tensors) = match check(run, spec, stores, opts) {
        Ok(v) => v,
        Err(e) => return Ok(Loaded::Unusable(e)),
    };
    // Everything matches: copy. A failure from here on is not the file's fault (e.g. out of
    // memory) and fails the run rather than continuing half-loaded.
    let file = run.path.join(&st.file);
    tch::no_grad(|| -> anyhow::Result<()> {
        for (prefix, store) in stores {
            for (name, mut v) in store.variables() {
                v.f_copy_(&tensors[&format!("{prefix}{name}")].f_to_device(v.device())?)?;
            }
        }
        opts.iter_mut().try_for_each(|o| o.load_state(&tensors))
    })
    .map_err(|e| anyhow::anyhow!("loading {} failed half-way: {e:#}", file.display()))?;
    Ok(Loaded::Resumed(st))
}

/// Reads and checks everything a resume needs, changing nothing.
fn check(run: &RunDir, spec: &RunSpec, stores: &Stores<'_>, opts: &[&mut Sgd]) -> anyhow::Result<(ResumeState, BTreeMap<String, Tensor>)> {
    let p = resume_json(run);
    // id, epoch (1..epochs-1) and rows agree with the config.
    crate::store::verify::resume_state(&p, spec).map_err(|d| anyhow::anyhow!("{d}"))?;
    let st: ResumeState = crate::store::read_json(&p)?;
    let file = run.path.join(&st.file);
    let tensors: BTreeMap<String, Tensor> =
        Tensor::read_safetensors(&file).with_context(|| format!("reading {}", file.display()))?.into_iter().collect();
    for (prefix, store) in stores {
        for (name, v) in store.variables() {
            let key = format!("{prefix}{name}");
            let t = tensors.get(&key).with_context(|| format!("{}: no {key}", file.display()))?;
            if t.size() != v.size() || t.kind() != v.kind() {
                anyhow::bail!("{}: {key} is {:?} {:?}, expected {:?} {:?}", file.display(), t.kind(), t.size(), v.kind(), v.size());
            }
        }
    }
    for o in opts {
        o.check_state(&tensors).with_context(|| format!("{}: momentum buffers", file.display()))?;
    }
    Ok((st, tensors))
}

/// Writes the state after a completed epoch.
pub fn save(run: &RunDir, stores: &Stores<'_>, opts: &[&Sgd], st: &ResumeState) -> anyhow::Result<()> {
    let mut named: Vec<(String, Tensor)> =
        stores.iter().flat_map(|(p, vs)| vs.variables().into_iter().map(move |(n, t)| (format!("{p}{n}"), t.contiguous()))).collect();
    named.extend(opts.iter().flat_map(|o| o.state()).map(|(n, t)| (n, t.contiguous())));
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let tmp = run.path.join(format!(".{}.tmp.safetensors", st.file));
    Tensor::write_safetensors(&named, &tmp).map_err(|e| anyhow::anyhow!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, run.path.join(&st.file)).with_context(|| format!("renaming {}", tmp.display()))?;
    crate::store::write_json(&resume_json(run), st)?;
    // Only now is the previous epoch's state obsolete.
    remove_tensor_files(run, Some(&st.file));
    Ok(())
}
