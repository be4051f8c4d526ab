//! Training checkpoints: the state after an epoch, written atomically so that an
//! interrupted run can continue (`compile-and-train --resume`).
//!
//! | file                    | what                                            |
//! |-------------------------|-------------------------------------------------|
//! | `weights.safetensors`   | current parameters, by name                     |
//! | `best.safetensors`      | parameters of the best epoch so far, by name    |
//! | `optimizer.safetensors` | Adam moments (`{parameter}.m`, `{parameter}.v`)  |
//! | `state.json`            | epochs done, Adam step, best epoch and score, epoch reports |
//! | `run.json`              | what determines the run (spec after overrides, data fingerprints), compared on resume |
//! | `manifest.json`         | format version, parameter table (to refuse a checkpoint of another model), size and SHA-256 of every file |

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{files::save_tensors, open_manifest, seal, write_files, write_folder, ExportError, FolderKind};
use crate::backend::candle::CandleModel;
use crate::train::{Checkpoint, EpochReport};

#[derive(Serialize, Deserialize)]
struct State {
    epochs_done: usize,
    adam_step: u64,
    best_epoch: Option<usize>,
    best_score: Option<f64>,
    reports: Vec<EpochReport>,
    /// The loss balancer's state (GradNorm's factors and initial losses).
    #[serde(default)]
    balance: Vec<f64>,
}

fn named(model: &CandleModel, values: &[Tensor]) -> HashMap<String, Tensor> {
    model.vars().iter().zip(values).map(|((n, _), t)| (n.clone(), t.clone())).collect()
}

/// Writes a checkpoint to `dir` (replacing any older one atomically).
pub fn write_checkpoint(dir: &Path, model: &CandleModel, c: &Checkpoint) -> Result<(), ExportError> {
    write_folder(dir, |tmp| {
        save_tensors(&tmp.join("weights.safetensors"), &named(model, &c.weights))?;
        if let Some((_, _, best)) = &c.best {
            save_tensors(&tmp.join("best.safetensors"), &named(model, best))?;
        }
        let adam: HashMap<String, Tensor> = c.adam_state.iter().cloned().collect();
        save_tensors(&tmp.join("optimizer.safetensors"), &adam)?;
        let state = State {
            epochs_done: c.epochs_done,
            adam_step: c.adam_step,
            best_epoch: c.best.as_ref().map(|b| b.1),
            best_score: c.best.as_ref().map(|b| b.0),
            reports: c.reports.clone(),
            balance: c.balance.clone(),
        };
        let json = serde_json::to_string_pretty(&state).map_err(|e| ExportError::Corrupt {
            path: dir.display().to_string(),
            problem: format!("cannot encode state: {e}"),
        })?;
        write_files(tmp, &[("state.json", json), ("run.json", c.run.clone())])?;
        seal(tmp, &model.ir(), FolderKind::Checkpoint)
    })
}

/// Reads a checkpoint written for `model` (same IR), verifying every file first.
pub fn read_checkpoint(dir: &Path, model: &CandleModel) -> Result<Checkpoint, ExportError> {
    let corrupt = |problem: String| ExportError::Corrupt { path: dir.display().to_string(), problem };
    super::recover(dir)?;
    let manifest = open_manifest(dir, FolderKind::Checkpoint, "weights.safetensors")?;
    manifest.check_parameters(dir, &model.ir())?;
    let state: State =
        serde_json::from_slice(&manifest.read(dir, "state.json")?).map_err(|e| corrupt(format!("state.json: {e}")))?;
    let load = |file: &str| manifest.tensors(dir, file, &model.device());
    let values = |map: &HashMap<String, Tensor>, file: &str| -> Result<Vec<Tensor>, ExportError> {
        model
            .vars()
            .iter()
            .map(|(name, v)| match map.get(name) {
                Some(t) if t.shape() == v.as_tensor().shape() => Ok(t.clone()),
                Some(t) => Err(corrupt(format!(
                    "{file}: `{name}` is {:?}, the model needs {:?}",
                    t.shape(),
                    v.as_tensor().shape()
                ))),
                None => Err(corrupt(format!("{file} lacks `{name}`"))),
            })
            .collect()
    };
    let weights = values(&load("weights.safetensors")?, "weights.safetensors")?;
    let best = match (state.best_epoch, state.best_score) {
        (Some(epoch), Some(score)) => Some((score, epoch, values(&load("best.safetensors")?, "best.safetensors")?)),
        _ => None,
    };
    let mut adam_state: Vec<(String, Tensor)> = load("optimizer.safetensors")?.into_iter().collect();
    adam_state.sort_by(|a, b| a.0.cmp(&b.0));
    if state.reports.len() != state.epochs_done {
        return Err(corrupt(format!(
            "state.json: {} epoch reports for {} epochs",
            state.reports.len(),
            state.epochs_done
        )));
    }
    Ok(Checkpoint {
        epochs_done: state.epochs_done,
        adam_step: state.adam_step,
        adam_state,
        weights,
        best,
        reports: state.reports,
        balance: state.balance,
        run: String::from_utf8(manifest.read(dir, "run.json")?).map_err(|_| corrupt("run.json is not UTF-8".into()))?,
    })
}
