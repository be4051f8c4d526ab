//! The typed, shape-checked model graph.
//!
//! In: nothing (it is built only by `lower`). Out: a [`Model`] whose every width is
//! known, plus the resolved data and training settings ([`config`]). Backends take a
//! [`Validated`] model, which only `lower` can make, so they never see a spec that
//! failed its checks.
//!
//! # The graph
//!
//! ```text
//! features ─┬─ categorical: lookup in an embedding table [rows, dim]
//!           └─ dense: width values, optional transform
//! crosses  ─── product of two categorical embeddings of equal width
//! concat   ─── every feature in declaration order, then every cross: [batch, input_width]
//! layers   ─── a stack; each maps a stream to a stream (see [`Stream`])
//! towers   ─── one per task, reading the last stream (its own slot if per-task)
//! ```
//!
//! # Stacked layers
//!
//! A layer reads and writes a [`Stream`] of slots (shared, per task, or both); the
//! rule that maps one to the other, for every layer kind, is [`plan_layer`] in
//! `layer.rs`, and its table is in that module's docs. Every layer's expert groups
//! have the same output width, so layer k+1's input width is layer k's output width.
//!
//! # Parameters
//!
//! [`Model::parameters`] lists every trainable tensor with its stable name, shape and
//! initialiser; backends, bundles, checkpoints and optimizer state all read it.

pub mod config;
mod display;
mod graph;
mod layer;
mod params;
mod task;

pub use config::*;
pub use graph::{render as render_graph, GraphFormat};
pub use layer::*;
pub use params::*;
pub use task::*;

/// Index of a feature in [`Model::features`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FeatureId(pub usize);

/// Index of a task in [`Model::tasks`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskId(pub usize);

/// The whole model graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub name: String,
    pub features: Vec<Feature>,
    pub crosses: Vec<Cross>,
    /// Width of the concatenated input.
    pub input_width: usize,
    pub layers: Vec<Layer>,
    pub tasks: Vec<Task>,
    /// How task losses combine (it adds parameters for `Uncertainty`).
    pub balance: LossBalance,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Feature {
    pub name: String,
    /// The column read (for a dense feature of width > 1, the prefix of `column_i`).
    pub column: String,
    pub kind: FeatureKind,
    /// A categorical reading through another feature's embedding table: its encoding
    /// (hashing included) and width are that feature's, and it has no table of its own.
    pub shares: Option<FeatureId>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FeatureKind {
    /// `bag`: several values per row, pooled into one embedding of width `dim`.
    Categorical {
        encoding: Encoding,
        dim: usize,
        bag: Option<Bag>,
    },
    Dense {
        width: usize,
        transform: Transform,
        fill: f32,
    },
}

/// A multi-valued categorical (a multi-hot or sequence field: tags, a user's clicked
/// items): a row holds up to `max_len` values, each looked up in the feature's table,
/// pooled into one embedding. An empty row pools to zeros.
#[derive(Debug, Clone, PartialEq)]
pub struct Bag {
    /// Values kept per row: the first `max_len`; shorter rows are padded (the padding
    /// adds nothing and trains nothing).
    pub max_len: usize,
    /// What separates the values in a text cell (a Parquet list column needs none).
    pub separator: String,
    pub pooling: Pooling,
    /// A column of one weight per value, with the same separator (sum and mean
    /// pooling): the pooled embedding is `sum w_i e_i` (mean: divided by `sum w_i`).
    pub weights: Option<String>,
}

/// What separates a bag's values in a text cell unless `separator` says.
pub const DEFAULT_SEPARATOR: &str = "|";

/// How a [`Bag`]'s embeddings become one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Sum,
    Mean,
    /// Elementwise maximum over the row's distinct table rows.
    Max,
}

impl Pooling {
    pub const NAMES: &'static [&'static str] = &["sum", "mean", "max"];
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "sum" => Pooling::Sum,
            "mean" => Pooling::Mean,
            "max" => Pooling::Max,
            _ => return None,
        })
    }
    pub fn as_str(&self) -> &'static str {
        Pooling::NAMES[*self as usize]
    }
}

/// How a categorical value becomes a row of its embedding table.
#[derive(Debug, Clone, PartialEq)]
pub enum Encoding {
    /// `xxh3_64_with_seed("name=value", HASH_SEED) % buckets` (see `data::hash`).
    Hash { buckets: usize },
    /// Row i+1 for `values[i]`; row 0 for anything else (out of vocabulary).
    Vocab { values: Vec<String> },
    /// A vocabulary still to fit on the training rows (`data::fit`): the values seen at
    /// least `min_count` times, the `max_size` most frequent. Becomes [`Encoding::Vocab`].
    FitVocab { min_count: u64, max_size: Option<usize> },
    /// A number cut by sorted `boundaries`: row 0 for a missing value, row `1 + k` for a
    /// value with `k` boundaries at or below it (TensorFlow's `bucketized_column`).
    Bucketize { boundaries: Vec<f64> },
    /// Boundaries still to fit (`data::fit`): the quantiles cutting the training rows
    /// into `buckets` buckets of about equal size. Becomes [`Encoding::Bucketize`].
    FitBuckets { buckets: usize },
}

impl Encoding {
    /// Rows of the embedding table.
    pub fn rows(&self) -> usize {
        match self {
            Encoding::Hash { buckets } => *buckets,
            Encoding::Vocab { values } => values.len() + 1,
            Encoding::Bucketize { boundaries } => boundaries.len() + 2,
            // Not known until fitted (an open model is never built): counted as none.
            Encoding::FitVocab { .. } | Encoding::FitBuckets { .. } => 0,
        }
    }

    /// Whether the raw value is a number (read from a numeric column).
    pub fn numeric(&self) -> bool {
        matches!(self, Encoding::Bucketize { .. } | Encoding::FitBuckets { .. })
    }

    /// The table row of a number under [`Encoding::Bucketize`]: 0 when missing (NaN),
    /// else 1 + the count of boundaries at or below it.
    pub fn bucket(boundaries: &[f64], x: f64) -> u32 {
        if x.is_nan() {
            return 0;
        }
        1 + boundaries.partition_point(|&b| b <= x) as u32
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transform {
    None,
    Log1p,
    /// `(x - mean) / std`; NaN statistics are open, fitted on the training rows
    /// before the model is built (`data::fit`).
    ZScore {
        mean: f32,
        std: f32,
    },
    /// `(x - min) / (max - min)`: the training range onto [0, 1]; NaN bounds are open,
    /// fitted on the training rows (`data::fit`).
    MinMax {
        min: f32,
        max: f32,
    },
}

impl Transform {
    /// Whether statistics are still to fit on the training rows.
    pub fn is_open(&self) -> bool {
        match *self {
            Transform::ZScore { mean, .. } => mean.is_nan(),
            Transform::MinMax { min, .. } => min.is_nan(),
            Transform::None | Transform::Log1p => false,
        }
    }

    /// Applies the transform to one raw value in its domain ([`Transform::domain_error`]).
    pub fn apply(&self, x: f32) -> f32 {
        match *self {
            Transform::None => x,
            Transform::Log1p => x.ln_1p(),
            Transform::ZScore { mean, std } => (x - mean) / std,
            Transform::MinMax { min, max } => (x - min) / (max - min),
        }
    }

    /// Why `x` is outside the transform's domain, if it is: log1p reads counts, and
    /// a negative count is bad data, not something to clamp.
    pub fn domain_error(&self, x: f32) -> Option<String> {
        match *self {
            Transform::Log1p if x < 0.0 => {
                Some(format!("{x} is negative; `transform = \"log1p\"` reads counts (0 or more)"))
            }
            _ => None,
        }
    }
}

impl Feature {
    /// The bag of a multi-valued categorical.
    pub fn bag(&self) -> Option<&Bag> {
        match &self.kind {
            FeatureKind::Categorical { bag, .. } => bag.as_ref(),
            FeatureKind::Dense { .. } => None,
        }
    }

    /// Width this feature contributes to the concatenated input.
    pub fn width(&self) -> usize {
        match &self.kind {
            FeatureKind::Categorical { dim, .. } => *dim,
            FeatureKind::Dense { width, .. } => *width,
        }
    }
}

/// The elementwise product of two categorical embeddings.
#[derive(Debug, Clone, PartialEq)]
pub struct Cross {
    pub name: String,
    pub a: FeatureId,
    pub b: FeatureId,
    pub dim: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Relu,
    Tanh,
    Sigmoid,
    Gelu,
    Linear,
}

impl Activation {
    pub const NAMES: &'static [&'static str] = &["relu", "tanh", "sigmoid", "gelu", "linear"];
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "relu" => Activation::Relu,
            "tanh" => Activation::Tanh,
            "sigmoid" => Activation::Sigmoid,
            "gelu" => Activation::Gelu,
            "linear" => Activation::Linear,
            _ => return None,
        })
    }
    pub fn as_str(&self) -> &'static str {
        Activation::NAMES[*self as usize]
    }
}

impl Model {
    pub fn feature(&self, id: FeatureId) -> &Feature {
        &self.features[id.0]
    }

    /// Trainable parameters: the sum over [`Model::parameters`].
    pub fn param_count(&self) -> usize {
        self.parameters().iter().map(Param::elems).sum()
    }

    /// Forward multiply-adds x2 per sample (embedding lookups count zero).
    pub fn flops_per_sample(&self) -> usize {
        let n = self.tasks.len();
        let crosses: usize = self.crosses.iter().map(|c| c.dim).sum();
        crosses
            + self.layers.iter().map(|l| l.flops(n)).sum::<usize>()
            + self.tasks.iter().map(Task::tower_flops).sum::<usize>()
            + self.transfer_flops()
    }

    /// AITM transfers: the info layer, three projections of two items, the two dot
    /// products and the weighted sum.
    fn transfer_flops(&self) -> usize {
        let each = |t: &Task| -> Option<usize> {
            let (tr, h) = (t.transfer?, t.last_hidden()?);
            let h_from = self.tasks[tr.from.0].last_hidden()?;
            Some(2 * h_from * h + 3 * 2 * 2 * h * h + 2 * 2 * h + 2 * 2 * h)
        };
        self.tasks.iter().filter_map(each).sum()
    }

    /// The stream the towers read.
    pub fn head_stream(&self) -> Stream {
        self.layers.last().map_or(Stream::Shared { width: self.input_width }, |l| l.output)
    }
}

/// A model that passed every check in `lower`. Backends take only this.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    model: Model,
}

impl Validated {
    /// Only `lower` calls this, after its checks.
    pub(crate) fn new_unchecked(model: Model) -> Self {
        Validated { model }
    }
    pub fn model(&self) -> &Model {
        &self.model
    }
}

impl std::ops::Deref for Validated {
    type Target = Model;
    fn deref(&self) -> &Model {
        &self.model
    }
}
