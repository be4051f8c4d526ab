//! The file table of a bundle or checkpoint: what `manifest.json` records of every
//! other file (size and SHA-256), written when a folder is sealed and checked before
//! anything in it is trusted.
//!
//! Reading a file back ([`read_verified`]) refuses, before reading a byte of content,
//! anything but a regular file (a symlink, to `/dev/zero` or out of the bundle, a
//! device, a folder) and a file whose size is not the recorded one; then the content's
//! SHA-256 must be the recorded one. A safetensors file's size is also checked against
//! what its own header declares ([`check_safetensors_size`]), so a file that claims
//! 60 KB but holds 2 GiB is refused after reading its header only.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

use candle_core::Tensor;
use sha2::{Digest, Sha256};

use super::ExportError;

/// What the manifest records of one file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileEntry {
    pub bytes: u64,
    pub sha256: String,
}

/// The largest `manifest.json` read (a parameter table of a huge model is a few MB).
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;

/// The largest safetensors header read (safetensors itself refuses above 100 MB).
const MAX_HEADER_BYTES: u64 = 100 << 20;

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file's content, streamed (for data files of any size).
pub fn sha256_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((total, hex(&hasher.finalize())))
}

fn io(path: &Path, source: std::io::Error) -> ExportError {
    ExportError::Io { path: path.display().to_string(), source }
}

/// Writes tensors as a safetensors file; an error names the file.
pub fn save_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<(), ExportError> {
    let mut sorted: Vec<(&String, &Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let bytes = safetensors::tensor::serialize(sorted, None).map_err(|e| ExportError::Corrupt {
        path: path.display().to_string(),
        problem: format!("cannot encode tensors: {e}"),
    })?;
    std::fs::write(path, bytes).map_err(|e| io(path, e))
}

/// The table of every regular file in `dir` except `manifest.json`, by name.
pub fn table(dir: &Path) -> Result<BTreeMap<String, FileEntry>, ExportError> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let e = e.map_err(|e| io(dir, e))?;
        let name = e.file_name().to_string_lossy().to_string();
        if name == "manifest.json" || !e.file_type().map_err(|err| io(&e.path(), err))?.is_file() {
            continue;
        }
        let (bytes, sha256) = sha256_file(&e.path()).map_err(|err| io(&e.path(), err))?;
        out.insert(name, FileEntry { bytes, sha256 });
    }
    Ok(out)
}

/// Gives every file in `dir` the permissions of `like` (a file written with the
/// process's default mode), so that no file of a bundle is more private than another.
pub fn same_permissions(dir: &Path, like: &Path) -> Result<(), ExportError> {
    let perms = std::fs::metadata(like).map_err(|e| io(like, e))?.permissions();
    for e in std::fs::read_dir(dir).map_err(|e| io(dir, e))?.flatten() {
        if e.file_type().is_ok_and(|t| t.is_file()) {
            std::fs::set_permissions(e.path(), perms.clone()).map_err(|err| io(&e.path(), err))?;
        }
    }
    Ok(())
}

/// Checks that `path` is a regular file (not a symlink, device or folder) and returns
/// its size, without reading it.
pub fn regular_file_size(path: &Path) -> Result<u64, String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    let t = meta.file_type();
    if t.is_symlink() {
        return Err("is a symbolic link; a bundle holds only regular files".into());
    }
    if !t.is_file() {
        return Err("is not a regular file".into());
    }
    Ok(meta.len())
}

/// Reads `dir/name` after checking that it is a regular file of the recorded size, and
/// checks its SHA-256. Errors are `name: problem`.
pub fn read_verified(dir: &Path, name: &str, entry: &FileEntry) -> Result<Vec<u8>, String> {
    let path = dir.join(name);
    let size = regular_file_size(&path).map_err(|e| format!("{name}: {e}"))?;
    if size != entry.bytes {
        return Err(format!(
            "{name}: {size} bytes, manifest.json records {}: the file was changed or truncated",
            entry.bytes
        ));
    }
    if name.ends_with(".safetensors") {
        check_safetensors_size(&path, size).map_err(|e| format!("{name}: {e}"))?;
    }
    let bytes = std::fs::read(&path).map_err(|e| format!("{name}: {e}"))?;
    if bytes.len() as u64 != entry.bytes {
        return Err(format!("{name}: changed while being read"));
    }
    let sha = sha256_hex(&bytes);
    if sha != entry.sha256 {
        return Err(format!(
            "{name}: SHA-256 {sha}, manifest.json records {}: the file was changed after it was written",
            entry.sha256
        ));
    }
    Ok(bytes)
}

/// Checks a safetensors file's size against what its header declares, reading only the
/// header.
pub fn check_safetensors_size(path: &Path, size: u64) -> Result<(), String> {
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(|_| format!("{size} bytes, too short for a safetensors header"))?;
    let header_len = u64::from_le_bytes(n);
    if header_len > MAX_HEADER_BYTES || 8 + header_len > size {
        return Err(format!("its header declares {header_len} header bytes, the file has {size} bytes in all"));
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header).map_err(|e| e.to_string())?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| format!("unreadable header: {e}"))?;
    let data_end = header
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(_, v)| v.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    let declared = 8 + header_len + data_end;
    if declared != size {
        return Err(format!("its header declares {declared} bytes, the file has {size}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_a_known_string() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
