//! The model spec: what a user writes, parsed but not yet checked.
//!
//! In: the text of a `.toml` spec. Out: a [`Spec`] whose fields keep their byte
//! spans ([`Sp`]) so that lowering can point at the line of a mistake. Names are
//! not resolved here and shapes are not inferred; that is `lower`'s job. Every
//! field has a default, documented on the field and in the README's spec
//! reference. The DSL front end (`.mg`, issue 3) will build this same struct.

mod dsl;
mod error;
mod fmt;
mod toml_front;

pub use dsl::parse_dsl;
pub use error::SpecError;
pub use fmt::{comments, format, to_dsl, Comment};
pub use toml_front::parse_toml;

use serde::{Deserialize, Serialize};

use crate::source::SourceFile;

/// Which front end reads a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    Toml,
    Dsl,
}

impl Syntax {
    /// `.mg` files are DSL, everything else TOML.
    pub fn of(name: &str) -> Syntax {
        if name.ends_with(".mg") {
            Syntax::Dsl
        } else {
            Syntax::Toml
        }
    }
}

/// Parses a spec with the front end its file name calls for.
pub fn parse(src: &SourceFile) -> Result<Spec, Vec<SpecError>> {
    match Syntax::of(&src.name) {
        Syntax::Toml => parse_toml(src),
        Syntax::Dsl => parse_dsl(src),
    }
}

/// Walks a spec's text, calling `code` on every character outside strings and comments
/// (`#` in both syntaxes, `//` in the DSL) until it returns false. Returns whether a
/// comment was seen.
pub(crate) fn scan_code(text: &str, syntax: Syntax, code: impl FnMut(usize, char) -> bool) -> bool {
    let mut saw = false;
    walk(text, syntax, code, |_| saw = true);
    saw
}

/// The byte ranges of a spec's comments, marker included, end of line excluded.
pub(crate) fn comment_ranges(text: &str, syntax: Syntax) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    walk(text, syntax, |_, _| true, |r| out.push(r));
    out
}

/// One pass over a spec's text: `code` sees every character outside strings and
/// comments (and may stop the walk), `comment` every comment's range.
fn walk(
    text: &str,
    syntax: Syntax,
    mut code: impl FnMut(usize, char) -> bool,
    mut comment: impl FnMut(std::ops::Range<usize>),
) {
    let (mut in_string, mut escaped, mut comment_from) = (false, false, None);
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if let Some(from) = comment_from {
            if c == '\n' {
                comment(from..i);
                comment_from = None;
            }
        } else if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"' | '\n') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if c == '#' || (syntax == Syntax::Dsl && c == '/' && chars.peek().is_some_and(|&(_, n)| n == '/')) {
            comment_from = Some(i);
        } else if !code(i, c) {
            return;
        }
    }
    if let Some(from) = comment_from {
        comment(from..text.len());
    }
}

/// Whether a spec's text holds comments (outside strings).
pub fn has_comments(text: &str, syntax: Syntax) -> bool {
    scan_code(text, syntax, |_, _| true)
}

/// Largest spec accepted, in bytes. Real specs are a few kilobytes.
pub const MAX_SPEC_BYTES: usize = 1 << 20;

fn check_size(src: &SourceFile) -> Result<(), Vec<SpecError>> {
    if src.text.len() > MAX_SPEC_BYTES {
        return Err(vec![SpecError::TooLarge { bytes: src.text.len(), limit: MAX_SPEC_BYTES }]);
    }
    if src.text.trim().is_empty() {
        return Err(vec![SpecError::Empty]);
    }
    Ok(())
}

/// A value with the byte span it came from.
pub type Sp<T> = toml::Spanned<T>;

/// A whole model spec.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub model: ModelSection,
    #[serde(default)]
    pub data: DataSection,
    #[serde(default)]
    pub features: Vec<FeatureSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crosses: Vec<CrossSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LayerSpec>,
    #[serde(default)]
    pub tasks: Vec<TaskSpec>,
    #[serde(default)]
    pub train: TrainSection,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// The model's name; used in the IR header and the bundle.
    pub name: Sp<String>,
}

/// Where the rows come from.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// `"synthetic"` (built-in generators) or `"csv"`. Default `"synthetic"`.
    #[serde(default = "d_source")]
    pub source: Sp<String>,
    /// Settings of the synthetic generators.
    #[serde(default)]
    pub synthetic: SyntheticSpec,
    /// Training file(s), relative to the spec's folder. `.gz` files are decompressed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub train: Vec<Sp<String>>,
    /// Validation file; when absent, `validation_fraction` of the training rows is held out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<Sp<String>>,
    /// Test file, evaluated once at the end with the best-validation weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<Sp<String>>,
    /// Fraction of the training rows held out for validation when no file is given. Default 0.1.
    #[serde(default = "d_val_frac")]
    pub validation_fraction: Sp<f64>,
    /// Fraction of the training rows held out as a test set when no test file is given. Default 0.
    #[serde(default = "d_zero")]
    pub test_fraction: Sp<f64>,
    /// Field delimiter, one character. Default `","`. Whitespace around fields is trimmed.
    #[serde(default = "d_delim")]
    pub delimiter: Sp<String>,
    /// Whether the first line names the columns. Default true.
    #[serde(default = "d_true")]
    pub header: Sp<bool>,
    /// Column names, required when `header = false`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<Sp<String>>,
    /// A token that means "missing": dense inputs read it as their `fill`, categoricals
    /// as their own bucket; a missing label is an error. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<Sp<String>>,
    /// The Hive partition key holding a date (`dt` in `dt=2026-11-28/`): with
    /// `cur_date`, the training paths' partitions of the `days` days up to `cur_date`
    /// train and the day after validates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_date: Option<Sp<String>>,
    /// The last training day, `YYYY-MM-DD` (or `YYYYMMDD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cur_date: Option<Sp<String>>,
    /// Days of training partitions up to `cur_date`. Default 7.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days: Option<Sp<u64>>,
    /// A broken row: "fail" (default), "skip" (counted) or "warn" (counted and shown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bad_rows: Option<Sp<String>>,
    /// Skipping fails anyway past this many rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bad_rows: Option<Sp<u64>>,
    /// Skipping fails anyway past this share of the rows read. Default 0.01.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bad_fraction: Option<Sp<f64>>,
    /// Stream the training files instead of loading them: read in chunks on a
    /// background thread while training runs, shuffled through a buffer of
    /// `shuffle_buffer` rows. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<Sp<bool>>,
    /// Streaming: rows held for shuffling (with two chunks in flight, the memory the
    /// training rows take). Default 100000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shuffle_buffer: Option<Sp<u64>>,
}

/// Built-in generators.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticSpec {
    /// `"mmoe"`: the MMoE paper's regression generator (needs a dense feature of width
    /// `dim` and two regression tasks). `"categorical"`: random ids per categorical
    /// feature, labels from a fixed random teacher. Default: `"mmoe"` for specs it fits
    /// (dense inputs only, two regression tasks), else `"categorical"`.
    #[serde(default = "d_syn_kind")]
    pub kind: Sp<String>,
    /// Rows generated. Default 100000.
    #[serde(default = "d_rows")]
    pub rows: Sp<u64>,
    /// Generator seed. Default 1.
    #[serde(default = "d_one_u64")]
    pub seed: Sp<u64>,
    /// Input dimension d. Default 100.
    #[serde(default = "d_dim")]
    pub dim: Sp<u64>,
    /// Task relatedness p (the cosine of the two weight vectors), in [-1, 1]. Default 0.5.
    #[serde(default = "d_half")]
    pub correlation: Sp<f64>,
    /// Scale c of the weight vectors. Default 1.
    #[serde(default = "d_one_f64")]
    pub scale: Sp<f64>,
    /// Number m of sine terms. Default 10.
    #[serde(default = "d_sin")]
    pub sin_terms: Sp<u64>,
    /// Standard deviation of alpha_i and beta_i, drawn from N(0, sd^2). Default 1.
    #[serde(default = "d_one_f64")]
    pub sin_sd: Sp<f64>,
    /// Standard deviation of the label noise epsilon. Default 0.1.
    #[serde(default = "d_noise")]
    pub noise_sd: Sp<f64>,
    /// Categorical generator: distinct values per feature (capped by its buckets). Default 1000.
    #[serde(default = "d_card")]
    pub cardinality: Sp<u64>,
}

/// One input feature.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    pub name: Sp<String>,
    /// More features with exactly these settings, each reading the column of its own
    /// name (a group: `feature a, b, c: categorical` in the DSL). Lowering sees them
    /// one by one ([`Spec::feature_list`]); `fmt` keeps the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub also: Option<Sp<Vec<Sp<String>>>>,
    /// `"categorical"` or `"dense"`.
    #[serde(rename = "type")]
    pub kind: Sp<String>,
    /// Column read; defaults to the feature's name. A dense feature of width w > 1 reads
    /// `column_0 .. column_{w-1}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<Sp<String>>,
    /// Categorical: number of hash buckets (xxh3 of `name=value`, fixed seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_buckets: Option<Sp<u64>>,
    /// Categorical: an inline vocabulary; index 0 is the out-of-vocabulary bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocabulary: Option<Sp<Vec<String>>>,
    /// Categorical: embedding width. Default 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_dim: Option<Sp<u64>>,
    /// Dense: number of values (columns). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<Sp<u64>>,
    /// Dense: `"none"` (default), `"log1p"`, `"zscore"` (`mean` and `std`) or `"minmax"`
    /// (`min` and `max`); statistics left out are fitted on the training rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<Sp<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<Sp<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<Sp<f64>>,
    /// Dense, `transform = "minmax"`: the raw values mapped to 0 and 1 (both given, or
    /// both left out to fit them on the training rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<Sp<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Sp<f64>>,
    /// Dense: value used for a missing field. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fill: Option<Sp<f64>>,
    /// Categorical without `hash_buckets` or `vocabulary`: the vocabulary is fitted on
    /// the training rows, keeping values seen at least this often. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_count: Option<Sp<u64>>,
    /// ... and at most this many values, the most frequent. Default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<Sp<u64>>,
    /// Categorical: read through the embedding table, and the encoding, of that other
    /// categorical feature (a clicked item and the candidate item, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<Sp<String>>,
    /// Categorical over a numeric column: this many quantile buckets, their boundaries
    /// fitted on the training rows (pinned as `boundaries`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucketize: Option<Sp<u64>>,
    /// Categorical over a numeric column: sorted bucket boundaries; row 0 is a missing
    /// value, row 1 + k a value with k boundaries at or below it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boundaries: Option<Sp<Vec<f64>>>,
    /// Categorical: several values per row (a multi-hot or sequence field), at most
    /// this many kept (the first ones); their embeddings are pooled into one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_len: Option<Sp<u64>>,
    /// With `max_len`: what separates the values in a text cell. Default `"|"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub separator: Option<Sp<String>>,
    /// With `max_len`: `"sum"`, `"mean"` (default) or `"max"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling: Option<Sp<String>>,
    /// With `max_len`: a column holding one weight per value (same separator), for
    /// sum and mean pooling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<Sp<String>>,
}

/// A feature built from two categorical embeddings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CrossSpec {
    pub name: Sp<String>,
    /// `"product"`: the elementwise product of the two embeddings. Default `"product"`.
    #[serde(default = "d_product")]
    pub op: Sp<String>,
    /// Exactly two categorical features with equal embedding widths.
    pub features: Sp<Vec<Sp<String>>>,
}

/// One layer of the stack between the inputs and the towers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LayerSpec {
    /// Optional name, used in diagnostics and parameter names. Default `layer{i}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Sp<String>>,
    /// `"shared_bottom"`, `"moe"`, `"mmoe"` or `"cgc"` (a PLE extraction level: stack
    /// several for PLE).
    pub kind: Sp<String>,
    /// Experts in a gated layer (for `cgc`: the shared experts). Default 8; not
    /// allowed on `shared_bottom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experts: Option<Sp<u64>>,
    /// `cgc` only: task-specific experts, one count for every task (`2`) or a count per
    /// task (`{ ctr = 3, cvr = 1 }`, unlisted tasks get none). Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_experts: Option<Sp<TaskExperts>>,
    /// Hidden units of each expert (or of the shared-bottom MLP), one entry per layer.
    pub units: Sp<Vec<Sp<u64>>>,
    /// `"relu"` (default), `"tanh"`, `"sigmoid"`, `"gelu"` or `"linear"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<Sp<String>>,
    /// DCN-v2 cross layers at the bottom of every expert (or of the shared-bottom MLP):
    /// `x_{i+1} = x_0 * (W_i x_i + b_i) + x_i` on the layer's input, before its `units`.
    /// Default 0 (plain MLP experts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_layers: Option<Sp<u64>>,
    /// Dropout rate after each expert (or MLP) layer while training, in [0, 1). Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropout: Option<Sp<f64>>,
    /// Gated layers: softmax temperature of every gate (> 0; below 1 sharpens). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<Sp<f64>>,
    /// Gated layers: each gate keeps only its k largest logits (noisy top-k gating,
    /// Shazeer et al. 2017). Default: all experts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<Sp<u64>>,
    /// With `top_k`: add trained, input-dependent Gaussian noise to the logits while
    /// training. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<Sp<bool>>,
    /// Weight of the load-balancing loss (the squared coefficient of variation of each
    /// gate's per-expert importance, plus of its load with noisy top-k). Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<Sp<f64>>,
}

/// The value(s) of a label column that make a binary label 1.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Positive {
    One(String),
    Any(Vec<String>),
}

impl Positive {
    pub fn values(&self) -> Vec<String> {
        match self {
            Positive::One(v) => vec![v.clone()],
            Positive::Any(vs) => vs.clone(),
        }
    }
}

/// A `cgc` layer's task-specific expert counts.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum TaskExperts {
    /// The same count for every task.
    Each(u64),
    /// A count per task, by task name.
    Per(std::collections::BTreeMap<String, u64>),
}

/// One prediction task and its tower.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub name: Sp<String>,
    /// `"binary"`, `"regression"` or `"multiclass"`.
    pub kind: Sp<String>,
    /// The label column. Optional only for a factor of a `product` task (ESMM's CVR),
    /// which is then trained only through the product.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<Sp<String>>,
    /// Binary: the label is 1 where the column equals this string (or any of these
    /// strings: `positive = ["Bachelors", "Masters"]`), else 0. Without it a binary
    /// label column must hold 0 or 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positive: Option<Sp<Positive>>,
    /// The label exists only where this column is 1 (e.g. `"click"` for a CVR task):
    /// other rows add no loss and are left out of the metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only_where: Option<Sp<String>>,
    /// Multiclass: the classes, in output order. Default: the distinct values of the
    /// training labels, sorted (written into the bundle's spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Sp<Vec<String>>>,
    /// Regression: `"none"` (default), `"log1p"` or `"standardize"`. Training happens in
    /// the transformed space; predictions and metrics come back in the original one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<Sp<String>>,
    /// `standardize`: the mean and standard deviation; default: the training labels'
    /// (written into the bundle's spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<Sp<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<Sp<f64>>,
    /// ESMM: this binary task's probability is the product of two other binary tasks'
    /// (`product = ["ctr", "cvr"]`); it has no tower.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<Sp<Vec<Sp<String>>>>,
    /// AITM (Xi et al., KDD 2021): the earlier task of the funnel whose tower's last
    /// hidden layer this task's tower attends to (`transfer_from = "ctr"` on the
    /// conversion task); both are binary towers with at least one hidden layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_from: Option<Sp<String>>,
    /// AITM's calibration (behavioural expectation) loss: this weight times the mean of
    /// `max(p_task - p_from, 0)` over every row, so that a later step of the funnel is
    /// never likelier than the one before. Only with `transfer_from`. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Sp<f64>>,
    /// The layer whose output this task's tower reads. Default: the last layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Sp<String>>,
    /// Tower hidden units (before the one-unit output). Default `[]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tower: Option<Sp<Vec<Sp<u64>>>>,
    /// Tower activation. Default `"relu"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<Sp<String>>,
    /// Dropout rate after each hidden tower layer while training, in [0, 1). Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropout: Option<Sp<f64>>,
    /// Weight of this task's loss in the sum. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<Sp<f64>>,
}

/// Optimiser and schedule.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// `"adam"`. Default `"adam"`.
    #[serde(default = "d_adam")]
    pub optimizer: Sp<String>,
    /// Initial learning rate. Default 1e-3.
    #[serde(default = "d_lr")]
    pub lr: Sp<f64>,
    #[serde(default = "d_beta1")]
    pub beta1: Sp<f64>,
    #[serde(default = "d_beta2")]
    pub beta2: Sp<f64>,
    #[serde(default = "d_eps")]
    pub eps: Sp<f64>,
    /// Decoupled (AdamW-style) weight decay. Default 0.
    #[serde(default = "d_zero")]
    pub weight_decay: Sp<f64>,
    /// Exponential decay: lr(epoch) = lr * lr_decay_rate ^ (epoch / lr_decay_epochs).
    /// Default rate 1 (no decay), epochs 1.
    #[serde(default = "d_one_f64")]
    pub lr_decay_rate: Sp<f64>,
    #[serde(default = "d_one_u64_sp")]
    pub lr_decay_epochs: Sp<u64>,
    /// Default 512.
    #[serde(default = "d_batch")]
    pub batch_size: Sp<u64>,
    /// Default 10.
    #[serde(default = "d_epochs")]
    pub epochs: Sp<u64>,
    /// Seeds weight initialisation and shuffling. Default 42.
    #[serde(default = "d_seed")]
    pub seed: Sp<u64>,
    /// How the best epoch is chosen on the validation split: `"loss"` (the weighted
    /// loss, default) or `"TASK.METRIC"` with METRIC one of auc, logloss, accuracy
    /// (binary) or mse, mae (regression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select: Option<Sp<String>>,
    /// Stop when the selection criterion has not improved for this many epochs.
    /// Default: never stop early.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patience: Option<Sp<u64>>,
    /// How task losses are weighted: `"fixed"` (each task's `weight`, default),
    /// `"uncertainty"` (learned per-task variances, Kendall et al. 2018), `"gradnorm"`
    /// (Chen et al. 2018) or `"dwa"` (Dynamic Weight Average, Liu et al. 2019).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_balance: Option<Sp<String>>,
    /// GradNorm's asymmetry alpha. Default 1.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gradnorm_alpha: Option<Sp<f64>>,
    /// DWA's temperature. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dwa_temperature: Option<Sp<f64>>,
}

fn sp<T>(v: T) -> Sp<T> {
    toml::Spanned::new(0..0, v)
}
fn d_zero() -> Sp<f64> {
    sp(0.0)
}
fn d_source() -> Sp<String> {
    sp("synthetic".into())
}
fn d_syn_kind() -> Sp<String> {
    sp("mmoe".into())
}
fn d_product() -> Sp<String> {
    sp("product".into())
}
fn d_adam() -> Sp<String> {
    sp("adam".into())
}
fn d_delim() -> Sp<String> {
    sp(",".into())
}
fn d_true() -> Sp<bool> {
    sp(true)
}
fn d_val_frac() -> Sp<f64> {
    sp(0.1)
}
fn d_rows() -> Sp<u64> {
    sp(100_000)
}
fn d_one_u64() -> Sp<u64> {
    sp(1)
}
fn d_one_u64_sp() -> Sp<u64> {
    sp(1)
}
fn d_dim() -> Sp<u64> {
    sp(100)
}
fn d_half() -> Sp<f64> {
    sp(0.5)
}
fn d_one_f64() -> Sp<f64> {
    sp(1.0)
}
fn d_sin() -> Sp<u64> {
    sp(10)
}
fn d_noise() -> Sp<f64> {
    sp(0.1)
}
fn d_card() -> Sp<u64> {
    sp(1000)
}
fn d_lr() -> Sp<f64> {
    sp(1e-3)
}
fn d_beta1() -> Sp<f64> {
    sp(0.9)
}
fn d_beta2() -> Sp<f64> {
    sp(0.999)
}
fn d_eps() -> Sp<f64> {
    sp(1e-8)
}
fn d_batch() -> Sp<u64> {
    sp(512)
}
fn d_epochs() -> Sp<u64> {
    sp(10)
}
fn d_seed() -> Sp<u64> {
    sp(42)
}

impl Default for DataSection {
    fn default() -> Self {
        DataSection {
            source: d_source(),
            synthetic: SyntheticSpec::default(),
            train: Vec::new(),
            validation: None,
            test: None,
            validation_fraction: d_val_frac(),
            test_fraction: sp(0.0),
            delimiter: d_delim(),
            header: d_true(),
            columns: Vec::new(),
            missing: None,
            partition_date: None,
            cur_date: None,
            days: None,
            bad_rows: None,
            stream: None,
            shuffle_buffer: None,
            max_bad_rows: None,
            max_bad_fraction: None,
        }
    }
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        SyntheticSpec {
            kind: d_syn_kind(),
            rows: d_rows(),
            seed: d_one_u64(),
            dim: d_dim(),
            correlation: d_half(),
            scale: d_one_f64(),
            sin_terms: d_sin(),
            sin_sd: d_one_f64(),
            noise_sd: d_noise(),
            cardinality: d_card(),
        }
    }
}

impl Default for TrainSection {
    fn default() -> Self {
        TrainSection {
            optimizer: d_adam(),
            lr: d_lr(),
            beta1: d_beta1(),
            beta2: d_beta2(),
            eps: d_eps(),
            weight_decay: sp(0.0),
            lr_decay_rate: d_one_f64(),
            lr_decay_epochs: d_one_u64_sp(),
            batch_size: d_batch(),
            epochs: d_epochs(),
            seed: d_seed(),
            select: None,
            patience: None,
            loss_balance: None,
            gradnorm_alpha: None,
            dwa_temperature: None,
        }
    }
}

impl Spec {
    /// Every feature on its own, groups (`also`) expanded in order: a member is the
    /// group's settings under its own name (and name span).
    pub fn feature_list(&self) -> Vec<FeatureSpec> {
        let mut out = Vec::with_capacity(self.features.len());
        for f in &self.features {
            let single = FeatureSpec { also: None, ..f.clone() };
            let members: Vec<FeatureSpec> = f
                .also
                .iter()
                .flat_map(|a| a.get_ref().iter())
                .map(|name| FeatureSpec { name: name.clone(), ..single.clone() })
                .collect();
            out.push(single);
            out.extend(members);
        }
        out
    }

    /// The declaration of feature `name` alone, to pin a fitted value into. A group
    /// member is split out in place, the features keeping their order: `a, b, c, d`
    /// pinning `c` becomes `a, b`, then `c` alone, then `d`.
    fn single_mut(&mut self, name: &str) -> Option<&mut FeatureSpec> {
        let i = self.features.iter().position(|f| {
            f.name.get_ref() == name || f.also.as_ref().is_some_and(|a| a.get_ref().iter().any(|n| n.get_ref() == name))
        })?;
        if self.features[i].also.is_none() {
            return self.features.get_mut(i);
        }
        // The group's members in order, head first; split around `name`.
        let group = self.features.remove(i);
        let mut names = vec![group.name.clone()];
        names.extend(group.also.iter().flat_map(|a| a.get_ref().iter().cloned()));
        let at = names.iter().position(|n| n.get_ref() == name)?;
        let (before, rest) = names.split_at(at);
        let (me, after) = rest.split_first()?;
        let declare = |members: &[Sp<String>]| -> Option<FeatureSpec> {
            let (head, also) = members.split_first()?;
            let also = (!also.is_empty()).then(|| sp(also.to_vec()));
            Some(FeatureSpec { name: head.clone(), also, ..group.clone() })
        };
        let pieces: Vec<FeatureSpec> =
            [declare(before), declare(std::slice::from_ref(me)), declare(after)].into_iter().flatten().collect();
        let mine = i + usize::from(!before.is_empty());
        for (k, f) in pieces.into_iter().enumerate() {
            self.features.insert(i + k, f);
        }
        self.features.get_mut(mine)
    }

    /// Pins a multiclass task's classes (fitted on the training labels).
    pub fn pin_classes(&mut self, task: usize, classes: Vec<String>) {
        if let Some(t) = self.tasks.get_mut(task) {
            t.classes = Some(sp(classes));
        }
    }

    /// Pins a standardized label's mean and standard deviation (fitted on the training labels).
    pub fn pin_label_stats(&mut self, task: usize, mean: f64, std: f64) {
        if let Some(t) = self.tasks.get_mut(task) {
            t.mean = Some(sp(mean));
            t.std = Some(sp(std));
        }
    }

    /// Pins a zscore feature's mean and standard deviation (fitted on the training rows).
    pub fn pin_feature_stats(&mut self, feature: &str, mean: f64, std: f64) {
        if let Some(f) = self.single_mut(feature) {
            f.mean = Some(sp(mean));
            f.std = Some(sp(std));
        }
    }

    /// Pins a minmax feature's range (fitted on the training rows).
    pub fn pin_feature_range(&mut self, feature: &str, min: f64, max: f64) {
        if let Some(f) = self.single_mut(feature) {
            f.min = Some(sp(min));
            f.max = Some(sp(max));
        }
    }

    /// Pins a categorical feature's vocabulary (fitted on the training rows).
    pub fn pin_vocabulary(&mut self, feature: &str, values: Vec<String>) {
        if let Some(f) = self.single_mut(feature) {
            f.vocabulary = Some(sp(values));
        }
    }

    /// Pins a bucketized feature's boundaries (quantiles fitted on the training rows);
    /// the bucket count they came from is then implied.
    pub fn pin_boundaries(&mut self, feature: &str, boundaries: Vec<f64>) {
        if let Some(f) = self.single_mut(feature) {
            f.boundaries = Some(sp(boundaries));
            f.bucketize = None;
        }
    }

    /// The spec as canonical TOML, every default written out. This is what a bundle stores.
    pub fn to_toml(&self) -> String {
        // Serialising plain data structs to TOML cannot fail: no maps with non-string keys,
        // and arrays of tables come after plain values in every struct above.
        toml::to_string(self).unwrap_or_else(|e| format!("# could not serialise spec: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_strings_are_not_code() {
        assert!(has_comments("a = 1 # note", Syntax::Toml));
        assert!(!has_comments("a = \"# not a comment\"", Syntax::Toml));
        assert!(has_comments("model m { // note\n}", Syntax::Dsl));
        assert!(!has_comments("model m { column \"a//b\" }", Syntax::Dsl));
        assert!(!has_comments("a = \"x//y\"", Syntax::Toml));
        let mut code = String::new();
        scan_code("x(\"[[\") // ((((\ny]", Syntax::Dsl, |_, c| {
            code.push(c);
            true
        });
        assert_eq!(code, "x() y]"); // the newline ends the comment with it
    }

    #[test]
    fn brackets_in_comments_do_not_count_as_nesting() {
        let deep_comment =
            format!("model m {{ // {}\n feature x: dense task y: regression(label = y) }}", "(".repeat(500));
        assert!(parse_dsl(&SourceFile::from_text("c.mg", deep_comment)).is_ok());
    }
}
