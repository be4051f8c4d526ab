//! The run lock: one run at a time per bundle folder.
//!
//! A run holds an exclusive advisory lock (`flock`) on `.<name>.lock` beside its bundle
//! folder for as long as it lives; the file holds the holder's PID, for the message a
//! second run gets. The operating system releases the lock when the process dies, so a
//! crashed run never leaves a stale lock: the file may stay, the lock does not. Creating
//! the lock file is also the first write into the folder's parent, so an `--out` that
//! cannot be written fails here, before any training.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use super::commit::{name_of, parent_of};
use super::FsError;

/// An exclusive lock on a bundle folder, released when dropped (or when the process
/// dies).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    pub path: PathBuf,
}

impl RunLock {
    /// The lock file of bundle folder `dir`.
    pub fn path_of(dir: &Path) -> PathBuf {
        parent_of(dir).join(format!(".{}.lock", name_of(dir)))
    }

    /// Takes the lock of `dir` (creating its parent folder), or fails at once naming the
    /// process that holds it.
    pub fn acquire(dir: &Path) -> Result<RunLock, FsError> {
        let parent = parent_of(dir);
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| FsError::Io { path, source }
        };
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        let path = Self::path_of(dir);
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(FsError::Locked {
                    path: dir.display().to_string(),
                    holder: if holder.is_empty() { "another process".into() } else { format!("process {holder}") },
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(&path)(e)),
        }
        file.set_len(0).map_err(io(&path))?;
        file.rewind().map_err(io(&path))?;
        write!(file, "{}", std::process::id()).map_err(io(&path))?;
        Ok(RunLock { _file: file, path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_folder_fails_naming_the_holder_and_dropping_releases_it() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("runs").join("b");
        let first = RunLock::acquire(&d).unwrap();
        let err = RunLock::acquire(&d).unwrap_err().to_string();
        assert!(err.contains(&format!("process {}", std::process::id())), "{err}");
        drop(first);
        RunLock::acquire(&d).expect("free again");
    }
}
