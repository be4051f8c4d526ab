//! Training checkpoints: the state after an epoch, written atomically so that an
//! interrupted run can continue (`compile-and-train --resume`).
//!
//! | file                    | what                                            |
//! |-------------------------|-------------------------------------------------|
//! | `weights.safetensors`   | current parameters, by name                     |
//! | `best.safetensors`      | parameters of the best epoch so far, by name    |
//! | `optimizer.safetensors` | Adam moments (`{parameter}.m`, `{parameter}.v`)  |
//! | `state.json`            | epochs done, Adam step, best epoch and score, epoch reports |
//! | `manifest.json`         | format version and parameter table, to refuse a checkpoint of another model |
//! | `run.json`              | what the run was asked to do (spec after overrides, ...), compared on resume |

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{check_manifest, manifest_json, write_files, write_folder, ExportError};
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
    model.vars.iter().zip(values).map(|((n, _), t)| (n.clone(), t.clone())).collect()
}

/// Writes a checkpoint to `dir` (replacing any older one atomically).
pub fn write_checkpoint(dir: &Path, model: &CandleModel, c: &Checkpoint) -> Result<(), ExportError> {
    write_folder(dir, |tmp| {
        candle_core::safetensors::save(&named(model, &c.weights), tmp.join("weights.safetensors"))?;
        if let Some((_, _, best)) = &c.best {
            candle_core::safetensors::save(&named(model, best), tmp.join("best.safetensors"))?;
        }
        let adam: HashMap<String, Tensor> = c.adam_state.iter().cloned().collect();
        candle_core::safetensors::save(&adam, tmp.join("optimizer.safetensors"))?;
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
        write_files(
            tmp,
            &[("state.json", json), ("manifest.json", manifest_json(&model.ir)), ("run.json", c.run.clone())],
        )
    })
}

/// Reads a checkpoint written for `model` (same IR), checking every tensor.
pub fn read_checkpoint(dir: &Path, model: &CandleModel) -> Result<Checkpoint, ExportError> {
    let corrupt = |problem: String| ExportError::Corrupt { path: dir.display().to_string(), problem };
    super::recover(dir)?;
    check_manifest(dir, &model.ir, "weights.safetensors")?;
    let state: State = serde_json::from_str(
        &std::fs::read_to_string(dir.join("state.json")).map_err(|e| corrupt(format!("state.json: {e}")))?,
    )
    .map_err(|e| corrupt(format!("state.json: {e}")))?;
    let load = |file: &str| -> Result<HashMap<String, Tensor>, ExportError> {
        let bytes = std::fs::read(dir.join(file)).map_err(|e| corrupt(format!("{file}: {e}")))?;
        candle_core::safetensors::load_buffer(&bytes, &model.device).map_err(|e| corrupt(format!("{file}: {e}")))
    };
    let values = |map: &HashMap<String, Tensor>, file: &str| -> Result<Vec<Tensor>, ExportError> {
        model
            .vars
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
        run: std::fs::read_to_string(dir.join("run.json")).map_err(|e| corrupt(format!("run.json: {e}")))?,
    })
}
