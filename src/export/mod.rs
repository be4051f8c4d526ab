//! Bundles: a trained model on disk.
//!
//! A bundle is a folder:
//!
//! | file                    | what                                                 |
//! |-------------------------|------------------------------------------------------|
//! | `model.safetensors`     | every parameter, named as in the candle backend      |
//! | `spec.toml`             | the normalised spec (every default written out)       |
//! | `manifest.json`         | format version, multigate version, parameter table    |
//! | `model.ir`              | the IR text, for people (not checked on load)         |
//! | `metrics.json`          | per-epoch and final metrics, gate usage               |
//!
//! Loading checks the format version ([`FORMAT_VERSION`]) and that the parameter table
//! the spec compiles to is the one the manifest records, name for name and shape for
//! shape; the IR's text may change between versions without orphaning bundles.
//!
//! Writes follow the commit protocol of `commit.rs`: at any instant the target holds the
//! complete old bundle or the complete new one, and the next read or write finishes or
//! rolls back an interrupted commit.

mod checkpoint;
mod commit;

use commit::write_folder;
pub use commit::{recover, remove_folder};

pub use checkpoint::{read_checkpoint, write_checkpoint};

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;

use crate::backend::candle::CandleModel;
use crate::lower::Compiled;
use crate::pipeline::{compile_source, CompileError};
use crate::source::SourceFile;

/// The bundle and checkpoint format this multigate writes and reads. Format 1 (no
/// `manifest.json`) predates expert groups: its gate and expert tensors are laid out
/// differently, so it is refused with [`ExportError::Version`].
pub const FORMAT_VERSION: u32 = 2;

/// `manifest.json`: what a reader checks before it trusts the weights.
#[derive(serde::Serialize, serde::Deserialize)]
struct Manifest {
    format: u32,
    /// The multigate version that wrote it (informative).
    multigate: String,
    /// The parameter table, `name [d0, d1, ..]` per parameter, in table order.
    parameters: Vec<String>,
}

fn manifest_json(model: &crate::ir::Model) -> String {
    let m = Manifest {
        format: FORMAT_VERSION,
        multigate: env!("CARGO_PKG_VERSION").to_string(),
        parameters: model.parameters().iter().map(|p| p.to_string()).collect(),
    };
    // A struct of strings and numbers always serialises.
    serde_json::to_string_pretty(&m).unwrap_or_default()
}

/// Checks `dir/manifest.json` against the format version and `model`'s parameter table.
/// A folder with `weights` but no manifest is format 1.
fn check_manifest(dir: &Path, model: &crate::ir::Model, weights: &str) -> Result<(), ExportError> {
    let path = dir.display().to_string();
    let text = match std::fs::read_to_string(dir.join("manifest.json")) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir.join(weights).exists() => {
            return Err(ExportError::Version { path, found: "1 (no manifest.json)".into() });
        }
        Err(e) => return Err(ExportError::Corrupt { path, problem: format!("manifest.json: {e}") }),
    };
    let m: Manifest = serde_json::from_str(&text)
        .map_err(|e| ExportError::Corrupt { path: path.clone(), problem: format!("manifest.json: {e}") })?;
    if m.format != FORMAT_VERSION {
        return Err(ExportError::Version {
            path,
            found: format!("{} (written by multigate {})", m.format, m.multigate),
        });
    }
    let ours: Vec<String> = model.parameters().iter().map(|p| p.to_string()).collect();
    if let Some((a, b)) = m.parameters.iter().zip(&ours).find(|(a, b)| a != b) {
        return Err(ExportError::Corrupt {
            path,
            problem: format!("manifest.json records parameter `{a}`, the spec compiles to `{b}` (another model)"),
        });
    }
    if m.parameters.len() != ours.len() {
        return Err(ExportError::Corrupt {
            path,
            problem: format!(
                "manifest.json records {} parameters, the spec compiles to {}",
                m.parameters.len(),
                ours.len()
            ),
        });
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{path}: bundle format {found}; this multigate ({}) reads format {FORMAT_VERSION}: retrain the model, or load it with the multigate that wrote it", env!("CARGO_PKG_VERSION"))]
    Version { path: String, found: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a multigate bundle: {problem}")]
    Corrupt { path: String, problem: String },
    #[error("{path}: the bundle's spec does not compile: {problem}")]
    BadSpec { path: String, problem: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io { path: path.display().to_string(), source }
}

/// What a bundle holds besides the weights.
pub struct BundleContents<'a> {
    pub spec_toml: &'a str,
    pub metrics_json: &'a str,
}

/// Writes a bundle to `dir` atomically.
pub fn write_bundle(dir: &Path, model: &CandleModel, contents: BundleContents<'_>) -> Result<(), ExportError> {
    write_folder(dir, |tmp| {
        let weights: HashMap<String, Tensor> =
            model.vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
        candle_core::safetensors::save(&weights, tmp.join("model.safetensors"))?;
        write_files(
            tmp,
            &[
                ("spec.toml", contents.spec_toml.to_string()),
                ("manifest.json", manifest_json(&model.ir)),
                ("model.ir", model.ir.to_string()),
                ("metrics.json", contents.metrics_json.to_string()),
            ],
        )
    })
}

fn write_files(dir: &Path, files: &[(&str, String)]) -> Result<(), ExportError> {
    for (file, text) in files {
        let p = dir.join(file);
        std::fs::write(&p, text).map_err(io(&p))?;
    }
    Ok(())
}

/// A bundle read back: the compiled spec and the model with its trained weights.
pub struct Bundle {
    pub compiled: Compiled,
    pub model: CandleModel,
    pub source: SourceFile,
}

/// Reads a bundle, checking that its spec, IR text and weights agree.
pub fn read_bundle(dir: &Path, device: &candle_core::Device) -> Result<Bundle, ExportError> {
    let corrupt = |problem: String| ExportError::Corrupt { path: dir.display().to_string(), problem };
    recover(dir)?;
    if !dir.is_dir() {
        return Err(corrupt("no such folder".into()));
    }
    let spec_path = dir.join("spec.toml");
    let mut source = SourceFile::read(&spec_path).map_err(|e| corrupt(format!("spec.toml: {e}")))?;
    source.path = None; // Data paths in a bundle's spec are not used.
    let compiled = compile_source(&source).map_err(|e| ExportError::BadSpec {
        path: dir.display().to_string(),
        problem: match &e {
            CompileError::Lower(es) => es.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("; "),
            other => other.to_string(),
        },
    })?;
    check_manifest(dir, &compiled.model, "model.safetensors")?;
    let weights_path = dir.join("model.safetensors");
    let bytes = std::fs::read(&weights_path).map_err(|e| corrupt(format!("model.safetensors: {e}")))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| corrupt(format!("model.safetensors: {e}")))?;
    let model = CandleModel::new(&compiled.model, 0, device)?;
    if tensors.len() != model.vars.len() {
        return Err(corrupt(format!(
            "model.safetensors holds {} tensors, the model has {}",
            tensors.len(),
            model.vars.len()
        )));
    }
    for (name, var) in &model.vars {
        let t = tensors.get(name).ok_or_else(|| corrupt(format!("model.safetensors lacks `{name}`")))?;
        if t.shape() != var.as_tensor().shape() || t.dtype() != var.as_tensor().dtype() {
            return Err(corrupt(format!(
                "`{name}` is {:?} {:?}, the model needs {:?} {:?}",
                t.dtype(),
                t.shape(),
                var.as_tensor().dtype(),
                var.as_tensor().shape()
            )));
        }
        let finite = t.flatten_all()?.to_vec1::<f32>()?.iter().all(|x| x.is_finite());
        if !finite {
            return Err(corrupt(format!("`{name}` holds NaN or infinite values")));
        }
        var.set(t)?;
    }
    Ok(Bundle { compiled, model, source })
}
