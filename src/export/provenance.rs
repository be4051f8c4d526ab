//! `provenance.json`: what a bundle was trained from, for the person who finds it later.
//!
//! The spec beside it already has every CLI override applied; provenance adds what the
//! spec cannot say: the command line, multigate's version, the rows each split had, a
//! fingerprint (size and SHA-256) of every data file read, and when the run started and
//! ended. Data fingerprints are also part of a run's settings, so that `--resume` on
//! changed data is refused.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A data file as it was when read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFile {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
}

impl DataFile {
    /// Fingerprints `path` (reads it once, streaming).
    pub fn of(path: &Path) -> std::io::Result<DataFile> {
        let (bytes, sha256) = super::files::sha256_file(path)?;
        Ok(DataFile { path: path.to_path_buf(), bytes, sha256 })
    }
}

/// Rows per split.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitRows {
    pub train: usize,
    pub validation: usize,
    pub test: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Provenance {
    /// The multigate version that trained the model.
    pub multigate: String,
    /// The command line, when the run came from the CLI.
    pub command: Vec<String>,
    pub started: String,
    pub finished: String,
    /// Where the rows came from (files, or the synthetic generator and its seed).
    pub data_source: String,
    pub data_files: Vec<DataFile>,
    pub rows: SplitRows,
    pub train_seed: u64,
    /// Epochs asked for, trained (this run and any it resumed), and the best one.
    pub epochs: usize,
    pub epochs_trained: usize,
    pub best_epoch: Option<usize>,
    /// Epochs a resumed checkpoint had already done.
    pub resumed_after: Option<usize>,
    pub device: String,
    /// Each dense column's range in the training rows (after its transform), against
    /// which prediction flags values far outside.
    #[serde(default)]
    pub dense_ranges: Vec<crate::data::ranges::DenseRange>,
}

/// The current time as UTC RFC 3339 (`2026-11-30T08:33:04Z`).
pub fn utc_now() -> String {
    utc(SystemTime::now())
}

pub fn utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest / 60 % 60, rest % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(utc(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(utc(UNIX_EPOCH + Duration::from_secs(1_795_941_184)), "2026-11-29T08:33:04Z");
    }
}
