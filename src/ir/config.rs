//! Resolved data and training settings: the spec's `[data]` and `[train]` after
//! defaults, range checks and path resolution.

use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq)]
pub struct DataConfig {
    pub source: DataSource,
    pub validation_fraction: f64,
    pub test_fraction: f64,
    pub bad_rows: BadRows,
    /// Training files streamed instead of loaded (None: loaded whole).
    pub stream: Option<StreamConfig>,
}

/// How training files stream: read in chunks of `chunk_rows` on a background thread,
/// shuffled through a buffer of `shuffle_buffer` rows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamConfig {
    pub shuffle_buffer: usize,
    pub chunk_rows: usize,
}

/// Rows a streaming reader hands on at a time.
pub const STREAM_CHUNK_ROWS: usize = 16_384;

/// What a broken row does: stops the run (`fail`, the default), or is skipped and
/// counted (`skip`), and shown with where it is (`warn`), up to a cap past which the
/// run fails anyway.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRows {
    pub policy: BadRowPolicy,
    /// At most this many skipped rows.
    pub max_rows: Option<u64>,
    /// At most this share of the rows read skipped (default 0.01 when skipping).
    pub max_fraction: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRowPolicy {
    Fail,
    Skip,
    Warn,
}

impl Default for BadRows {
    fn default() -> Self {
        BadRows { policy: BadRowPolicy::Fail, max_rows: None, max_fraction: 0.01 }
    }
}

impl BadRows {
    pub fn skips(&self) -> bool {
        self.policy != BadRowPolicy::Fail
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum DataSource {
    Synthetic(SyntheticConfig),
    Csv(CsvConfig),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticConfig {
    pub kind: SyntheticKind,
    pub rows: usize,
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SyntheticKind {
    /// The MMoE paper's generator (Ma et al. 2018, section 3.2).
    Mmoe { dim: usize, correlation: f64, scale: f64, sin_terms: usize, sin_sd: f64, noise_sd: f64 },
    /// Random ids per categorical feature, labels from a fixed random teacher.
    Categorical { cardinality: usize },
    /// The categorical generator's inputs with an impression -> click -> conversion
    /// funnel (ESMM's sample-selection bias); see `data::synthetic::funnel_frame`.
    Funnel { cardinality: usize },
}

#[derive(Debug, Clone, PartialEq)]
pub struct CsvFormat {
    pub delimiter: u8,
    pub header: bool,
    /// Declared column names (when there is no header).
    pub columns: Vec<String>,
    pub missing: Option<String>,
    /// A broken row (ragged, invalid UTF-8, an unparsable number) is skipped and
    /// recorded in the frame instead of failing the read.
    pub skip_bad_rows: bool,
}

impl CsvFormat {
    /// A plain CSV file with a header: what `--data` reads for a synthetic spec.
    pub fn default_csv() -> CsvFormat {
        CsvFormat { delimiter: b',', header: true, columns: Vec::new(), missing: None, skip_bad_rows: false }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CsvConfig {
    /// Data paths: files (CSV, gzip CSV, Parquet), folders or globs.
    pub train: Vec<PathBuf>,
    pub validation: Option<PathBuf>,
    pub test: Option<PathBuf>,
    pub format: CsvFormat,
    /// Train on the date partitions of a window, validate on the day after.
    pub window: Option<DateWindow>,
}

/// A date window over Hive partitions keyed by `key`: the `days` days up to and
/// including `cur` (a validated `YYYY-MM-DD`) train, the day after validates.
#[derive(Debug, Clone, PartialEq)]
pub struct DateWindow {
    pub key: String,
    pub cur: String,
    pub days: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// `lazy_adam`: embedding rows are updated only in steps that look them up.
    pub lazy_embeddings: bool,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub lr_decay_rate: f64,
    pub lr_decay_epochs: usize,
    pub batch_size: usize,
    pub epochs: usize,
    pub seed: u64,
    /// How the best epoch is chosen.
    pub select: Selection,
    /// Stop after this many epochs without a new best.
    pub patience: Option<usize>,
}

/// The validation criterion that picks the best epoch.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    /// The weighted validation loss (lower is better).
    Loss,
    /// One task's metric.
    Metric { task: usize, metric: Metric },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Auc,
    Logloss,
    Accuracy,
    Mse,
    Mae,
}

impl Metric {
    pub fn parse(s: &str) -> Option<Metric> {
        Some(match s {
            "auc" => Metric::Auc,
            "logloss" => Metric::Logloss,
            "accuracy" => Metric::Accuracy,
            "mse" => Metric::Mse,
            "mae" => Metric::Mae,
            _ => return None,
        })
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            Metric::Auc => "auc",
            Metric::Logloss => "logloss",
            Metric::Accuracy => "accuracy",
            Metric::Mse => "mse",
            Metric::Mae => "mae",
        }
    }
    pub fn higher_is_better(&self) -> bool {
        matches!(self, Metric::Auc | Metric::Accuracy)
    }
}

impl TrainConfig {
    /// Learning rate for a 0-based epoch: `lr * rate ^ (epoch / decay_epochs)`.
    pub fn lr_at(&self, epoch: usize) -> f64 {
        self.lr * self.lr_decay_rate.powf(epoch as f64 / self.lr_decay_epochs as f64)
    }

    /// Whether `patience` ends a run after `epochs_done` epochs whose best was
    /// `best_epoch` (both 1-based).
    pub fn patience_exhausted(&self, epochs_done: usize, best_epoch: usize) -> bool {
        self.patience.is_some_and(|p| epochs_done.saturating_sub(best_epoch) >= p)
    }
}
