//! Bundles: a trained model on disk.
//!
//! A bundle is a folder:
//!
//! | file                    | what                                                  |
//! |-------------------------|-------------------------------------------------------|
//! | `model.safetensors`     | every parameter, named as in the candle backend       |
//! | `spec.toml`             | the normalised spec, with every CLI override applied  |
//! | `provenance.json`       | what was trained: command, version, seeds, rows per split, data fingerprints, times |
//! | `metrics.json`          | per-epoch and final metrics, gate usage               |
//! | `model.ir`              | the IR text, for people                               |
//! | `curves.png`, `gates.png` | learning curves and the gate heatmap                |
//! | `manifest.json`         | format version, kind, parameter table, size and SHA-256 of every other file |
//!
//! Loading checks, before any tensor is built: the format version ([`FORMAT_VERSION`]);
//! that every file the manifest lists is a regular file of the recorded size and
//! SHA-256 (so flipped bits, swapped weight files and edited specs are refused, naming
//! the file); that a safetensors file's size is the one its header declares; and that
//! the parameter table the spec compiles to is the one the manifest records, name for
//! name and shape for shape. The IR's text may change between versions without
//! orphaning bundles. Every file of a bundle gets the same permissions.
//!
//! Writes follow the commit protocol of [`crate::fs`]: at any instant the target holds
//! the complete old bundle or the complete new one, and the next read or write finishes
//! or rolls back an interrupted commit. Its run lock keeps two runs off one folder.

mod checkpoint;
pub mod files;
pub mod onnx;
pub mod provenance;

use crate::fs::write_folder;
pub use crate::fs::{crash_point, recover, remove_folder, write_file, FsError, RunLock};

pub use checkpoint::{read_checkpoint, write_checkpoint};

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::Tensor;

use crate::backend::candle::CandleModel;
use crate::lower::Compiled;
use crate::pipeline::{compile_source, CompileError};
use crate::source::SourceFile;
use files::FileEntry;

/// The bundle and checkpoint format this multigate writes and reads. Format 1 (no
/// `manifest.json`) predates expert groups: its gate and expert tensors are laid out
/// differently. Format 2 has no file table to verify. Both are refused with
/// [`ExportError::Version`].
pub const FORMAT_VERSION: u32 = 3;

/// What a sealed folder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FolderKind {
    Bundle,
    Checkpoint,
}

impl FolderKind {
    fn noun(self) -> &'static str {
        match self {
            FolderKind::Bundle => "a bundle",
            FolderKind::Checkpoint => "a training checkpoint",
        }
    }
}

/// `manifest.json`: what a reader checks before it trusts anything else in the folder.
#[derive(serde::Serialize, serde::Deserialize)]
struct Manifest {
    format: u32,
    /// The multigate version that wrote it (informative).
    multigate: String,
    #[serde(default)]
    kind: Option<FolderKind>,
    /// The parameter table, `name [d0, d1, ..]` per parameter, in table order.
    parameters: Vec<String>,
    /// Every other file of the folder: size and SHA-256.
    #[serde(default)]
    files: BTreeMap<String, FileEntry>,
}

/// Writes `manifest.json` into a filled temporary folder: the file table of everything
/// else in it, then gives every file the same permissions.
fn seal(tmp: &Path, model: &crate::ir::Model, kind: FolderKind) -> Result<(), ExportError> {
    let m = Manifest {
        format: FORMAT_VERSION,
        multigate: env!("CARGO_PKG_VERSION").to_string(),
        kind: Some(kind),
        parameters: model.parameters().iter().map(|p| p.to_string()).collect(),
        files: files::table(tmp)?,
    };
    // A struct of strings and numbers always serialises.
    let text = serde_json::to_string_pretty(&m).unwrap_or_default();
    let path = tmp.join("manifest.json");
    std::fs::write(&path, text).map_err(io(&path))?;
    files::same_permissions(tmp, &path)
}

/// Reads and checks `dir/manifest.json`: a regular file of sane size, the format version
/// and the kind. A folder with `weights` but no manifest is format 1; a folder with
/// neither is not a multigate folder at all.
fn open_manifest(dir: &Path, kind: FolderKind, weights: &str) -> Result<Manifest, ExportError> {
    let path = dir.display().to_string();
    let corrupt = |problem: String| ExportError::Corrupt { path: path.clone(), problem };
    let manifest = dir.join("manifest.json");
    match std::fs::symlink_metadata(&manifest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(if dir.join(weights).exists() {
                ExportError::Version { path, found: "1 (no manifest.json)".into() }
            } else {
                ExportError::NotOurs { path, kind: kind.noun() }
            });
        }
        Err(e) => return Err(ExportError::Io { path: manifest.display().to_string(), source: e }),
        Ok(_) => {}
    }
    let size = files::regular_file_size(&manifest).map_err(|e| corrupt(format!("manifest.json {e}")))?;
    if size > files::MAX_MANIFEST_BYTES {
        return Err(corrupt(format!("manifest.json is {size} bytes, more than any manifest")));
    }
    let text = std::fs::read_to_string(&manifest).map_err(io(&manifest))?;
    let m: Manifest = serde_json::from_str(&text).map_err(|e| corrupt(format!("manifest.json: {e}")))?;
    if m.format != FORMAT_VERSION {
        return Err(ExportError::Version {
            path,
            found: format!("{} (written by multigate {})", m.format, m.multigate),
        });
    }
    match m.kind {
        Some(k) if k == kind => {}
        Some(k) => return Err(corrupt(format!("this is {}, not {}", k.noun(), kind.noun()))),
        None => return Err(corrupt("manifest.json does not say what the folder is".into())),
    }
    Ok(m)
}

impl Manifest {
    /// Reads one of the folder's files, verified against the table.
    fn read(&self, dir: &Path, name: &str) -> Result<Vec<u8>, ExportError> {
        let corrupt = |problem: String| ExportError::Corrupt { path: dir.display().to_string(), problem };
        let entry = self.files.get(name).ok_or_else(|| corrupt(format!("manifest.json does not list {name}")))?;
        files::read_verified(dir, name, entry).map_err(corrupt)
    }

    /// Checks the recorded parameter table against `model`'s.
    fn check_parameters(&self, dir: &Path, model: &crate::ir::Model) -> Result<(), ExportError> {
        let corrupt = |problem: String| ExportError::Corrupt { path: dir.display().to_string(), problem };
        let ours: Vec<String> = model.parameters().iter().map(|p| p.to_string()).collect();
        if let Some((a, b)) = self.parameters.iter().zip(&ours).find(|(a, b)| a != b) {
            return Err(corrupt(format!(
                "manifest.json records parameter `{a}`, the spec compiles to `{b}` (another model)"
            )));
        }
        if self.parameters.len() != ours.len() {
            return Err(corrupt(format!(
                "manifest.json records {} parameters, the spec compiles to {}",
                self.parameters.len(),
                ours.len()
            )));
        }
        Ok(())
    }

    /// Reads a verified safetensors file onto `device`.
    fn tensors(
        &self,
        dir: &Path,
        name: &str,
        device: &candle_core::Device,
    ) -> Result<HashMap<String, Tensor>, ExportError> {
        let bytes = self.read(dir, name)?;
        candle_core::safetensors::load_buffer(&bytes, device)
            .map_err(|e| ExportError::Corrupt { path: dir.display().to_string(), problem: format!("{name}: {e}") })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{path}: format {found}; this multigate ({}) reads format {FORMAT_VERSION}: retrain the model, or load it with the multigate that wrote it", env!("CARGO_PKG_VERSION"))]
    Version { path: String, found: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not {kind} written by multigate (no manifest.json)")]
    NotOurs { path: String, kind: &'static str },
    #[error("{path}: damaged or altered: {problem}")]
    Corrupt { path: String, problem: String },
    #[error("{path} is in use by a running multigate ({holder}); wait for it to finish, or choose another --out")]
    Locked { path: String, holder: String },
    #[error("{path}: the bundle's spec does not compile: {problem}")]
    BadSpec { path: String, problem: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl From<FsError> for ExportError {
    fn from(e: FsError) -> ExportError {
        match e {
            FsError::Io { path, source } => ExportError::Io { path, source },
            FsError::Locked { path, holder } => ExportError::Locked { path, holder },
        }
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io { path: path.display().to_string(), source }
}

/// What a bundle holds besides the weights.
pub struct BundleContents<'a> {
    pub spec_toml: &'a str,
    pub metrics_json: &'a str,
    /// `provenance.json` (see [`provenance::Provenance`]).
    pub provenance_json: &'a str,
    /// Further files (pictures), by name.
    pub extra: &'a [(String, Vec<u8>)],
}

/// Writes a bundle to `dir` atomically.
pub fn write_bundle(dir: &Path, model: &CandleModel, contents: BundleContents<'_>) -> Result<(), ExportError> {
    write_folder(dir, |tmp| {
        let weights: HashMap<String, Tensor> =
            model.vars().iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
        files::save_tensors(&tmp.join("model.safetensors"), &weights)?;
        write_files(
            tmp,
            &[
                ("spec.toml", contents.spec_toml.to_string()),
                ("provenance.json", contents.provenance_json.to_string()),
                ("model.ir", model.ir().to_string()),
                ("metrics.json", contents.metrics_json.to_string()),
            ],
        )?;
        for (name, bytes) in contents.extra {
            let p = tmp.join(name);
            std::fs::write(&p, bytes).map_err(io(&p))?;
        }
        seal(tmp, &model.ir(), FolderKind::Bundle)
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
    /// `provenance.json`, as written (empty for a bundle written without one).
    pub provenance: String,
}

/// Reads a bundle, verifying every file against its manifest before building anything.
pub fn read_bundle(dir: &Path, device: &candle_core::Device) -> Result<Bundle, ExportError> {
    let corrupt = |problem: String| ExportError::Corrupt { path: dir.display().to_string(), problem };
    recover(dir)?;
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(ExportError::NotOurs { path: dir.display().to_string(), kind: "a bundle (it is a file)" }),
        Err(e) => return Err(io(dir)(e)),
    }
    let manifest = open_manifest(dir, FolderKind::Bundle, "model.safetensors")?;
    let spec =
        String::from_utf8(manifest.read(dir, "spec.toml")?).map_err(|_| corrupt("spec.toml is not UTF-8".into()))?;
    // Data paths in a bundle's spec are not used.
    let source = SourceFile::from_text(&dir.join("spec.toml").display().to_string(), spec);
    let compiled = compile_source(&source).map_err(|e| ExportError::BadSpec {
        path: dir.display().to_string(),
        problem: match &e {
            CompileError::Lower(es) => es.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("; "),
            other => other.to_string(),
        },
    })?;
    manifest.check_parameters(dir, &compiled.model)?;
    let provenance = match manifest.files.contains_key("provenance.json") {
        true => String::from_utf8_lossy(&manifest.read(dir, "provenance.json")?).to_string(),
        false => String::new(),
    };
    let tensors = manifest.tensors(dir, "model.safetensors", device)?;
    let model = CandleModel::new(&compiled.model, 0, device)?;
    if tensors.len() != model.vars().len() {
        return Err(corrupt(format!(
            "model.safetensors holds {} tensors, the model has {}",
            tensors.len(),
            model.vars().len()
        )));
    }
    for (name, var) in model.vars() {
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
    Ok(Bundle { compiled, model, source, provenance })
}
