//! Pruning stages (PrUE, magnitude rounds) as runs of their own: a stage starts from its parent's
//! weights, computes (or, when resuming, reads back) its masks and trains with them fixed.

use std::io::Write;

use anyhow::Context;
use tch::Device;

use super::{Net, load_teacher, prune, resume_json, stream_seed};
use crate::data::Dataset;
use crate::store::RunDir;
use crate::suite::{RunSpec, TeacherRef};

/// Loads a pruning stage's parent into `net`, computes this stage's masks (or reads them back when
/// the run resumes, so a restart never re-draws PrUE's augmentation) and applies them.
pub fn start_pruned(
    stage: &crate::suite::spec::PruneStage,
    spec: &RunSpec,
    run: &RunDir,
    data: &Dataset,
    device: Device,
    net: &mut Net,
    log: &mut std::fs::File,
) -> anyhow::Result<prune::Masks> {
    if stage.parent.model() != spec.model {
        anyhow::bail!("pruning stage of {} starts from a {} model", spec.model, stage.parent.model());
    }
    let parent = load_teacher(&stage.parent, run, data, device)?;
    net.vs.copy(&parent.net.vs).with_context(|| format!("copying the parent weights of pruning stage {}", spec.id))?;
    let path = run.masks();
    let masks = if resume_json(run).is_file() && path.is_file() {
        prune::load(&path, device)?
    } else {
        let masks = match stage.method.as_str() {
            "prue" => {
                let (m, thr) = prune::prue_model(&net.vs, net.model.as_ref(), data, stage.amount, stage.batch as i64, spec.train.augment, stream_seed(spec.seed, "prune", 0))?;
                writeln!(log, "PrUE threshold {thr:?} at sparsity {}", stage.amount)?;
                m
            }
            "magnitude" => {
                // The previous rounds' masks come with the parent; a dense parent has none.
                let pm = parent_masks(&stage.parent, run, device)?;
                prune::magnitude_model(&net.vs, prune::Scope::ConvLinear, &pm, stage.amount)
            }
            other => anyhow::bail!("unknown pruning method {other}"),
        };
        prune::save(&masks, &path)?;
        masks
    };
    prune::apply(&net.vs, &masks);
    Ok(masks)
}

/// The masks a parent run was fine-tuned with (empty for an unpruned parent).
fn parent_masks(parent: &TeacherRef, run: &RunDir, device: Device) -> anyhow::Result<prune::Masks> {
    if let TeacherRef::Run { id, .. } = parent {
        let dir = RunDir { path: run.path.parent().map(|p| p.join(id)).context("run directory has no parent")? };
        if dir.masks().is_file() {
            return prune::load(&dir.masks(), device);
        }
    }
    Ok(prune::Masks::new())
}

