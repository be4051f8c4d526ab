//! Crash-safe writes: files and folders published so that, whenever the process dies,
//! the target holds the complete old content or the complete new one (`commit.rs`),
//! and the run lock that keeps two runs off one folder (`lock.rs`).
//!
//! In: paths and bytes (or a closure filling a folder). Out: published files. This is
//! a foundation module: bundles, checkpoints, predictions, data written by `encode`
//! and formatted specs all go through it, and it imports nothing of the pipeline.

mod commit;
mod lock;

pub use commit::{crash_point, recover, remove_folder, write_file, write_folder};
pub use lock::RunLock;

use std::path::Path;

/// What a crash-safe write can fail on.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} is in use by a running multigate ({holder}); wait for it to finish, or choose another --out")]
    Locked { path: String, holder: String },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> FsError + '_ {
    move |source| FsError::Io { path: path.display().to_string(), source }
}
