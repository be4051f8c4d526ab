//! The commit protocol that publishes a folder (a bundle, a checkpoint) so that, at any
//! instant a process can die, the target holds either the complete old folder or the
//! complete new one, and the next reader or writer finishes or rolls back what was
//! interrupted.
//!
//! Siblings of the target `d`, each tagged with the writer's PID:
//!
//! | step | state on disk                                   | recovery after a crash here |
//! |------|--------------------------------------------------|-----------------------------|
//! | 1    | `.d.tmp-PID` being filled and synced             | delete it (incomplete)      |
//! | 2    | renamed to `.d.ready-PID`: complete              | roll forward: publish it    |
//! | 3    | old `d` renamed to `.d.old-PID`                  | roll forward (ready is complete) |
//! | 4    | `.d.ready-PID` renamed to `d`                    | delete `.d.old-PID`         |
//! | 5    | `.d.old-PID` deleted                             | nothing left                |
//!
//! Deleting a folder ([`remove_folder`]) renames it to a `tmp` sibling first, so a crash
//! mid-deletion leaves nothing half-deleted at the target.
//!
//! Recovery ([`recover`]) only touches siblings whose writer is no longer running (on
//! Linux, `/proc/PID` is absent), so it never disturbs a live commit.
//!
//! Fault injection: every step above is a [`crash_point`]. With the environment
//! variable `MULTIGATE_CRASH_AT=STEP[:N]` the process aborts (no destructors, no
//! cleanup: what a kill -9 leaves) the N-th time (default: first) it reaches STEP,
//! one of `filled`, `ready`, `aside`, `placed` (commits), `doomed` (folder removal) or
//! `committed` (a run between its bundle commit and its checkpoint's removal). The
//! crash tests and `scripts/kill_loop.sh` drive it.

use std::path::{Path, PathBuf};

use super::{io, FsError};

/// Aborts the process here if `MULTIGATE_CRASH_AT` names this step and its count (see
/// the module docs). Without the variable it costs one environment lookup.
pub fn crash_point(step: &str) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static REACHED: AtomicUsize = AtomicUsize::new(0);
    let Ok(at) = std::env::var("MULTIGATE_CRASH_AT") else { return };
    let (name, nth) = match at.split_once(':') {
        Some((n, k)) => (n.to_string(), k.parse::<usize>().unwrap_or(1)),
        None => (at.clone(), 1),
    };
    if name != step {
        return;
    }
    if REACHED.fetch_add(1, Ordering::SeqCst) + 1 == nth {
        eprintln!("multigate: MULTIGATE_CRASH_AT={at}: aborting at `{step}`");
        std::process::abort();
    }
}

/// What a sibling of the target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Tmp,
    Ready,
    Old,
}

impl Stage {
    fn tag(self) -> &'static str {
        match self {
            Stage::Tmp => "tmp",
            Stage::Ready => "ready",
            Stage::Old => "old",
        }
    }
}

pub(super) fn parent_of(dir: &Path) -> &Path {
    dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

pub(super) fn name_of(dir: &Path) -> String {
    dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "bundle".into())
}

fn sibling(dir: &Path, stage: Stage, pid: u32) -> PathBuf {
    parent_of(dir).join(format!(".{}.{}-{pid}", name_of(dir), stage.tag()))
}

/// Whether process `pid` is running. Elsewhere than Linux every other process counts as
/// running, so recovery there only cleans up after this process.
fn alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return false;
    }
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

/// The leftovers of interrupted commits to `dir` whose writers are gone.
fn leftovers(dir: &Path) -> Vec<(Stage, PathBuf)> {
    let prefix = format!(".{}.", name_of(dir));
    let Ok(entries) = std::fs::read_dir(parent_of(dir)) else { return Vec::new() };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(&prefix) else { continue };
        let Some((tag, pid)) = rest.split_once('-') else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        let stage = match tag {
            "tmp" => Stage::Tmp,
            "ready" => Stage::Ready,
            "old" => Stage::Old,
            _ => continue,
        };
        if !alive(pid) {
            out.push((stage, e.path()));
        }
    }
    // Ready ones first (roll forward), then old ones, then incomplete ones.
    let rank = |s: &Stage| match s {
        Stage::Ready => 0,
        Stage::Old => 1,
        Stage::Tmp => 2,
    };
    out.sort_by(|a, b| (rank(&a.0), &a.1).cmp(&(rank(&b.0), &b.1)));
    out
}

/// Finishes or rolls back every interrupted commit to `dir` (see the module docs) and
/// removes the leftovers. Returns what it did, one sentence per step.
pub fn recover(dir: &Path) -> Result<Vec<String>, FsError> {
    let mut done = Vec::new();
    for (stage, path) in leftovers(dir) {
        match stage {
            Stage::Ready => {
                publish(&path, dir)?;
                done.push(format!("finished an interrupted commit of {}", dir.display()));
            }
            Stage::Old if !dir.exists() => {
                std::fs::rename(&path, dir).map_err(io(dir))?;
                done.push(format!("restored {} from an interrupted commit", dir.display()));
            }
            Stage::Old | Stage::Tmp => {
                std::fs::remove_dir_all(&path).map_err(io(&path))?;
                done.push(format!("removed {}", path.display()));
            }
        }
    }
    Ok(done)
}

/// Removes `dir` in one step: it is renamed to a temporary sibling first, which a crash
/// during the deletion leaves for [`recover`] to delete, instead of a half-deleted `dir`.
pub fn remove_folder(dir: &Path) -> Result<(), FsError> {
    if !dir.exists() {
        return Ok(());
    }
    let doomed = sibling(dir, Stage::Tmp, std::process::id());
    if doomed.exists() {
        std::fs::remove_dir_all(&doomed).map_err(io(&doomed))?;
    }
    std::fs::rename(dir, &doomed).map_err(io(dir))?;
    crash_point("doomed");
    std::fs::remove_dir_all(&doomed).map_err(io(&doomed))
}

/// Writes a single file (predictions, an ONNX model, a formatted spec) the same way:
/// into a temporary sibling, synced, then renamed over `path`, so a reader sees the old
/// file or the new one. Temporaries a dead writer left beside `path` are removed first.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    for (_, stale) in leftovers(path) {
        if stale.is_file() {
            std::fs::remove_file(&stale).map_err(io(&stale))?;
        }
    }
    let tmp = sibling(path, Stage::Tmp, std::process::id());
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(&tmp)(e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(path)(e)
    })
}

/// Makes a complete folder `ready` the new `dir` (steps 3-5).
fn publish(ready: &Path, dir: &Path) -> Result<(), FsError> {
    if !dir.exists() {
        return std::fs::rename(ready, dir).map_err(io(dir));
    }
    if !dir.is_dir() {
        return Err(FsError::Io {
            path: dir.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "exists and is not a folder"),
        });
    }
    let old = sibling(dir, Stage::Old, std::process::id());
    std::fs::rename(dir, &old).map_err(io(dir))?;
    crash_point("aside");
    if let Err(e) = std::fs::rename(ready, dir) {
        // Put the old folder back.
        let _ = std::fs::rename(&old, dir);
        return Err(io(dir)(e));
    }
    crash_point("placed");
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

fn sync_files(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if let Ok(f) = std::fs::File::open(e.path()) {
                let _ = f.sync_all();
            }
        }
    }
    // The folder's own entry list, and its parent's (for the renames).
    for d in [dir, parent_of(dir)] {
        if let Ok(f) = std::fs::File::open(d) {
            let _ = f.sync_all();
        }
    }
}

/// Publishes a folder at `dir`: recovers earlier interrupted commits, fills a fresh
/// temporary sibling with `fill`, syncs it, marks it complete and puts it in place. On
/// an error the temporary folder goes and `dir` stays as it was.
pub fn write_folder<E: From<FsError>>(dir: &Path, fill: impl FnOnce(&Path) -> Result<(), E>) -> Result<(), E> {
    let parent = parent_of(dir);
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    recover(dir)?;
    if dir.exists() && !dir.is_dir() {
        return Err(FsError::Io {
            path: dir.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "exists and is not a folder"),
        }
        .into());
    }
    let pid = std::process::id();
    let tmp = sibling(dir, Stage::Tmp, pid);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    sync_files(&tmp);
    crash_point("filled");
    let ready = sibling(dir, Stage::Ready, pid);
    if let Err(e) = std::fs::rename(&tmp, &ready) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(io(&ready)(e).into());
    }
    crash_point("ready");
    Ok(publish(&ready, dir)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PID no process has (above Linux's largest).
    const DEAD: u32 = 4_194_400;

    fn folder(path: &Path, marker: &str) {
        std::fs::create_dir_all(path).unwrap();
        std::fs::write(path.join("marker"), marker).unwrap();
    }

    fn marker(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("marker")).unwrap()
    }

    fn siblings(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with('.'))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn every_crash_point_recovers_to_the_old_or_the_new_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("b");
        // Killed while filling (step 1): the old folder stays, the partial one goes.
        folder(&d, "old");
        folder(&sibling(&d, Stage::Tmp, DEAD), "partial");
        recover(&d).unwrap();
        assert_eq!((marker(&d), siblings(&d)), ("old".to_string(), vec![]));
        // Killed after marking the new folder complete (step 2): it is published.
        folder(&sibling(&d, Stage::Ready, DEAD), "new");
        recover(&d).unwrap();
        assert_eq!((marker(&d), siblings(&d)), ("new".to_string(), vec![]));
        // Killed between moving the old folder aside and putting the new one in place
        // (step 3): the new one is published, the old one removed.
        std::fs::rename(&d, sibling(&d, Stage::Old, DEAD)).unwrap();
        folder(&sibling(&d, Stage::Ready, DEAD), "newer");
        recover(&d).unwrap();
        assert_eq!((marker(&d), siblings(&d)), ("newer".to_string(), vec![]));
        // Killed before removing the old folder (step 4): it is removed.
        folder(&sibling(&d, Stage::Old, DEAD), "stale");
        recover(&d).unwrap();
        assert_eq!((marker(&d), siblings(&d)), ("newer".to_string(), vec![]));
        // Only an old folder and no target (a commit whose new folder was lost): rolled back.
        std::fs::rename(&d, sibling(&d, Stage::Old, DEAD)).unwrap();
        recover(&d).unwrap();
        assert_eq!((marker(&d), siblings(&d)), ("newer".to_string(), vec![]));
        // A live writer's temporary folder is left alone.
        let live = sibling(&d, Stage::Tmp, 1);
        folder(&live, "live");
        recover(&d).unwrap();
        assert!(live.exists() || !cfg!(target_os = "linux") || !Path::new("/proc/1").exists());
    }

    #[test]
    fn a_file_write_replaces_the_file_and_removes_a_dead_writers_temporary() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("preds.csv");
        std::fs::write(sibling(&f, Stage::Tmp, DEAD), "half").unwrap();
        write_file(&f, b"one").unwrap();
        write_file(&f, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "two");
        assert_eq!(siblings(&f), Vec::<String>::new());
    }

    #[test]
    fn a_failed_fill_leaves_the_old_folder_and_no_temporaries() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("b");
        write_folder(&d, |t| {
            std::fs::write(t.join("marker"), "one").unwrap();
            Ok::<(), FsError>(())
        })
        .unwrap();
        let err =
            write_folder(&d, |_| Err(FsError::Io { path: "x".into(), source: std::io::Error::other("fill failed") }));
        assert!(err.is_err());
        assert_eq!((marker(&d), siblings(&d)), ("one".to_string(), vec![]));
    }
}
