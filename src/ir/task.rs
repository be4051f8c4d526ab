//! Tasks and their heads: what a task predicts, how its label is encoded, which link
//! turns the network's output into a prediction, which loss trains it and which
//! metrics score it. Every stage asks the [`Head`] (and [`Task::link`]) instead of
//! matching on task kinds itself.
//!
//! | head         | output width | link                                  | loss                    | metrics |
//! |--------------|--------------|---------------------------------------|-------------------------|---------|
//! | `binary`     | 1            | sigmoid (a product task: the product of its factors' probabilities) | cross-entropy | auc, logloss, accuracy |
//! | `regression` | 1            | identity, then the inverse label transform | squared error (transformed space) | mse, mae (original space; transformed too) |
//! | `multiclass` | K classes    | softmax                               | softmax cross-entropy   | accuracy, logloss, macro one-vs-rest auc |
//!
//! A task's label may be missing on some rows ([`Label::only_where`]): those rows add
//! no loss and are left out of the task's metrics.

use super::{Activation, TaskId};

/// What a task predicts.
#[derive(Debug, Clone, PartialEq)]
pub enum Head {
    Binary,
    Regression { transform: LabelTransform },
    Multiclass { classes: Vec<String> },
}

impl Head {
    pub const KINDS: &'static [&'static str] = &["binary", "regression", "multiclass"];

    pub fn kind(&self) -> &'static str {
        match self {
            Head::Binary => "binary",
            Head::Regression { .. } => "regression",
            Head::Multiclass { .. } => "multiclass",
        }
    }

    /// Values the task predicts per row.
    pub fn width(&self) -> usize {
        match self {
            Head::Multiclass { classes } => classes.len(),
            _ => 1,
        }
    }

    /// The metrics `select = "task.metric"` may name, first the default.
    pub fn metric_names(&self) -> &'static [&'static str] {
        match self {
            Head::Binary => &["auc", "logloss", "accuracy"],
            Head::Regression { .. } => &["mse", "mae"],
            Head::Multiclass { .. } => &["accuracy", "logloss", "auc"],
        }
    }

    /// Predictions in the label's own units: the inverse label transform of a
    /// regression, unchanged otherwise.
    pub fn decode(&self, y: f32) -> f32 {
        match self {
            Head::Regression { transform } => transform.invert(y),
            _ => y,
        }
    }
}

/// A transform of a regression label: training happens in the transformed space,
/// predictions and metrics come back in the original one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LabelTransform {
    None,
    /// `ln(1 + y)`; labels must be > -1.
    Log1p,
    /// `(y - mean) / std`, with the training labels' mean and standard deviation.
    Standardize {
        mean: f64,
        std: f64,
    },
}

impl LabelTransform {
    pub const NAMES: &'static [&'static str] = &["none", "log1p", "standardize"];

    pub fn apply(&self, y: f32) -> f32 {
        match *self {
            LabelTransform::None => y,
            LabelTransform::Log1p => y.ln_1p(),
            LabelTransform::Standardize { mean, std } => ((y as f64 - mean) / std) as f32,
        }
    }

    pub fn invert(&self, y: f32) -> f32 {
        match *self {
            LabelTransform::None => y,
            LabelTransform::Log1p => y.exp_m1(),
            LabelTransform::Standardize { mean, std } => (y as f64 * std + mean) as f32,
        }
    }

    /// Whether a raw label is in the transform's domain.
    pub fn accepts(&self, y: f32) -> bool {
        match self {
            LabelTransform::Log1p => y > -1.0,
            _ => true,
        }
    }

    pub fn is_identity(&self) -> bool {
        matches!(self, LabelTransform::None)
    }
}

/// How the task losses are weighted into the training loss. Each task's `loss_weight`
/// multiplies its factor.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum LossBalance {
    /// The fixed loss weights.
    #[default]
    Fixed,
    /// Kendall et al. 2018: a learned log-variance s_t per task; a classification loss
    /// is weighted exp(-s_t), a regression loss exp(-s_t) / 2, plus s_t / 2 each.
    Uncertainty,
    /// Chen et al. 2018: weights moved every step so that each task's gradient norm on
    /// the last shared weight follows its relative training rate to the power alpha.
    GradNorm { alpha: f64 },
    /// Liu et al. 2019: weights from the ratio of the last two epochs' losses,
    /// softmax(ratio / temperature) times the number of tasks.
    Dwa { temperature: f64 },
}

impl LossBalance {
    pub const NAMES: &'static [&'static str] = &["fixed", "uncertainty", "gradnorm", "dwa"];
}

/// How a task's raw network output becomes its prediction, and which loss trains it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// A logit `[B]`; sigmoid cross-entropy.
    Sigmoid,
    /// The log of a probability `[B]` (a product of probabilities); cross-entropy.
    LogProb,
    /// Logits `[B, K]`; softmax cross-entropy.
    Softmax,
    /// A value `[B]`; squared error.
    Identity,
}

/// Where a task's label comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    pub column: String,
    /// For binary tasks: 1 where the column equals one of these, else 0.
    pub positive: Option<Vec<String>>,
    /// The label exists only on rows where this column is 1 (e.g. conversions on
    /// clicked rows); other rows add no loss and no metric.
    pub only_where: Option<String>,
}

/// How a task's output is computed.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskOutput {
    /// A tower MLP `[d_in, hidden.., width]` on the task's stream slot.
    /// `dropout` applies after each hidden layer while training.
    Tower { dims: Vec<usize>, activation: Activation, dropout: f32 },
    /// ESMM: the product of two binary tasks' probabilities (`ctcvr = ctr x cvr`).
    Product { factors: [TaskId; 2] },
}

/// AITM (Xi et al., KDD 2021): a task's tower attends to an earlier funnel task's.
/// The earlier tower's last hidden vector, through an info layer (`relu(x W + b)`),
/// and this tower's own are the two items of a self-attention (query, key and value
/// projections, scaled dot products, softmax); its output replaces this tower's last
/// hidden vector before the output layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transfer {
    pub from: TaskId,
    /// The calibration (behavioural expectation) loss's weight: it adds
    /// `calibration * mean(max(p_task - p_from, 0))` over every row of a batch.
    pub calibration: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub name: String,
    pub head: Head,
    /// None for a task trained only through a product (ESMM's CVR without a label).
    pub label: Option<Label>,
    /// The layer whose output the tower reads, when it is not the last layer.
    pub input: Option<usize>,
    pub output: TaskOutput,
    pub loss_weight: f32,
    /// AITM: the earlier task this tower attends to.
    pub transfer: Option<Transfer>,
}

impl Task {
    pub fn link(&self) -> Link {
        match (&self.head, &self.output) {
            (_, TaskOutput::Product { .. }) => Link::LogProb,
            (Head::Binary, _) => Link::Sigmoid,
            (Head::Regression { .. }, _) => Link::Identity,
            (Head::Multiclass { .. }, _) => Link::Softmax,
        }
    }

    /// Whether the task adds to the training loss.
    pub fn trains(&self) -> bool {
        self.label.is_some() && self.loss_weight > 0.0
    }

    /// Prediction column names: the task's name, or `task.class` per class.
    pub fn output_columns(&self) -> Vec<String> {
        match &self.head {
            Head::Multiclass { classes } => classes.iter().map(|c| format!("{}.{c}", self.name)).collect(),
            _ => vec![self.name.clone()],
        }
    }

    /// The width of the tower's last hidden layer (None: a product, or no hidden layer).
    pub fn last_hidden(&self) -> Option<usize> {
        match &self.output {
            TaskOutput::Tower { dims, .. } if dims.len() >= 3 => Some(dims[dims.len() - 2]),
            _ => None,
        }
    }

    pub fn tower_params(&self) -> usize {
        match &self.output {
            TaskOutput::Tower { dims, .. } => dims.windows(2).map(|w| w[0] * w[1] + w[1]).sum(),
            TaskOutput::Product { .. } => 0,
        }
    }

    pub fn tower_flops(&self) -> usize {
        match &self.output {
            TaskOutput::Tower { dims, .. } => dims.windows(2).map(|w| 2 * w[0] * w[1]).sum(),
            TaskOutput::Product { .. } => 2,
        }
    }
}
