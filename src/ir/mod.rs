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
//! # The stream rule for stacked layers
//!
//! A layer reads and writes a [`Stream`]: either one `Shared` tensor `[batch, width]`
//! or one tensor per task, `PerTask`, held as `[batch, tasks, width]`.
//!
//! | layer          | on `Shared[d]`                 | on `PerTask[d]`                                   |
//! |----------------|--------------------------------|---------------------------------------------------|
//! | `shared_bottom`| `Shared[u_last]`               | `PerTask[u_last]`: the same MLP on each task slot |
//! | `moe`          | `Shared[u_last]`: one gate     | `PerTask[u_last]`: experts on each slot, one gate |
//! | `mmoe`         | `PerTask[u_last]`: gate per task| `PerTask[u_last]`: experts and gate t on slot t  |
//!
//! So layer k+1's input width is layer k's last expert width, and a per-task stream
//! stays per-task. Towers read slot t of a per-task stream, or the shared stream.
//! Task-specific expert groups (CGC/PLE) are an [`ExpertOwner::Task`] group beside the
//! shared one, with gates that select groups; ESMM adds a task whose output is the
//! product of two others ([`TaskOutput`]). Both slot into these types.

pub mod config;
mod display;
mod graph;

pub use config::*;
pub use graph::{render as render_graph, GraphFormat};

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
}

#[derive(Debug, Clone, PartialEq)]
pub struct Feature {
    pub name: String,
    /// The column read (for a dense feature of width > 1, the prefix of `column_i`).
    pub column: String,
    pub kind: FeatureKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FeatureKind {
    Categorical { encoding: Encoding, dim: usize },
    Dense { width: usize, transform: Transform, fill: f32 },
}

/// How a categorical value becomes a row of its embedding table.
#[derive(Debug, Clone, PartialEq)]
pub enum Encoding {
    /// `xxh3_64_with_seed("name=value", HASH_SEED) % buckets` (see `data::hash`).
    Hash { buckets: usize },
    /// Row i+1 for `values[i]`; row 0 for anything else (out of vocabulary).
    Vocab { values: Vec<String> },
}

impl Encoding {
    /// Rows of the embedding table.
    pub fn rows(&self) -> usize {
        match self {
            Encoding::Hash { buckets } => *buckets,
            Encoding::Vocab { values } => values.len() + 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transform {
    None,
    Log1p,
    ZScore { mean: f32, std: f32 },
}

impl Transform {
    /// Applies the transform to one raw value.
    pub fn apply(&self, x: f32) -> f32 {
        match *self {
            Transform::None => x,
            // log1p of a negative count is meaningless; clamp so it never yields NaN.
            Transform::Log1p => x.max(0.0).ln_1p(),
            Transform::ZScore { mean, std } => (x - mean) / std,
        }
    }
}

impl Feature {
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

/// A stream between layers (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// `[batch, width]`.
    Shared { width: usize },
    /// `[batch, tasks, width]`.
    PerTask { width: usize },
}

impl Stream {
    pub fn width(&self) -> usize {
        match *self {
            Stream::Shared { width } | Stream::PerTask { width } => width,
        }
    }
    /// How many independent slots the stream carries for `n_tasks` tasks.
    pub fn slots(&self, n_tasks: usize) -> usize {
        match self {
            Stream::Shared { .. } => 1,
            Stream::PerTask { .. } => n_tasks,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    SharedBottom,
    Moe,
    Mmoe,
}

impl LayerKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            LayerKind::SharedBottom => "shared_bottom",
            LayerKind::Moe => "moe",
            LayerKind::Mmoe => "mmoe",
        }
    }
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

/// Who an expert group belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpertOwner {
    /// Read by every gate of the layer (MMoE, MoE, shared-bottom).
    Shared,
    /// Task-specific experts (CGC/PLE); no front end produces these yet.
    Task(TaskId),
}

/// `count` experts with the same MLP shape, stored and run as one fused tensor per
/// MLP layer: weight `[count, dims[i], dims[i+1]]`, bias `[count, dims[i+1]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpertGroup {
    pub name: String,
    pub owner: ExpertOwner,
    pub count: usize,
    /// `[d_in, u_1, .., u_k]`.
    pub dims: Vec<usize>,
    pub activation: Activation,
    /// Dropout rate after each MLP layer while training (0: none).
    pub dropout: f32,
}

impl ExpertGroup {
    pub fn d_in(&self) -> usize {
        self.dims[0]
    }
    pub fn d_out(&self) -> usize {
        *self.dims.last().unwrap_or(&0)
    }
    pub fn params(&self) -> usize {
        self.count * self.dims.windows(2).map(|w| w[0] * w[1] + w[1]).sum::<usize>()
    }
    pub fn flops_per_slot(&self) -> usize {
        self.count * self.dims.windows(2).map(|w| 2 * w[0] * w[1]).sum::<usize>()
    }
}

/// Who reads a gate's mixture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateOwner {
    /// One gate for all tasks (MoE / OMoE).
    AllTasks,
    Task(TaskId),
}

/// A softmax gate `[d_in -> experts]` over the layer's experts.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    pub name: String,
    pub owner: GateOwner,
    pub d_in: usize,
    pub experts: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    pub name: String,
    pub kind: LayerKind,
    pub input: Stream,
    pub output: Stream,
    pub experts: ExpertGroup,
    /// Empty for shared-bottom; one for MoE; one per task for MMoE.
    pub gates: Vec<Gate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    Binary,
    Regression,
}

impl TaskKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            TaskKind::Binary => "binary",
            TaskKind::Regression => "regression",
        }
    }
}

/// Where a task's label comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    pub column: String,
    /// For binary tasks: 1 where the column equals this, else 0.
    pub positive: Option<String>,
}

/// How a task's output is computed.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskOutput {
    /// A tower MLP `[d_in, hidden.., 1]` on the task's stream slot.
    /// `dropout` applies after each hidden layer while training.
    Tower { dims: Vec<usize>, activation: Activation, dropout: f32 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub name: String,
    pub kind: TaskKind,
    pub label: Label,
    /// The layer whose output the tower reads, when it is not the last layer.
    pub input: Option<usize>,
    pub output: TaskOutput,
    pub loss_weight: f32,
}

impl Task {
    pub fn tower_params(&self) -> usize {
        match &self.output {
            TaskOutput::Tower { dims, .. } => dims.windows(2).map(|w| w[0] * w[1] + w[1]).sum(),
        }
    }
    pub fn tower_flops(&self) -> usize {
        match &self.output {
            TaskOutput::Tower { dims, .. } => dims.windows(2).map(|w| 2 * w[0] * w[1]).sum(),
        }
    }
}

impl Gate {
    pub fn params(&self) -> usize {
        self.d_in * self.experts + self.experts
    }
}

impl Layer {
    /// Forward FLOPs per sample: experts on every slot, gate matmuls, mixtures.
    pub fn flops(&self, n_tasks: usize) -> usize {
        let slots = self.input.slots(n_tasks);
        let experts = slots * self.experts.flops_per_slot();
        let gates: usize =
            self.gates.iter().map(|g| 2 * g.d_in * g.experts + 2 * g.experts * self.experts.d_out()).sum();
        experts + gates
    }
    pub fn params(&self) -> usize {
        self.experts.params() + self.gates.iter().map(Gate::params).sum::<usize>()
    }
}

impl Model {
    pub fn feature(&self, id: FeatureId) -> &Feature {
        &self.features[id.0]
    }

    /// Trainable parameters.
    pub fn param_count(&self) -> usize {
        let emb: usize = self
            .features
            .iter()
            .map(|f| match &f.kind {
                FeatureKind::Categorical { encoding, dim } => encoding.rows() * dim,
                FeatureKind::Dense { .. } => 0,
            })
            .sum();
        emb + self.layers.iter().map(Layer::params).sum::<usize>()
            + self.tasks.iter().map(Task::tower_params).sum::<usize>()
    }

    /// Forward multiply-adds x2 per sample (embedding lookups count zero).
    pub fn flops_per_sample(&self) -> usize {
        let n = self.tasks.len();
        let crosses: usize = self.crosses.iter().map(|c| c.dim).sum();
        crosses
            + self.layers.iter().map(|l| l.flops(n)).sum::<usize>()
            + self.tasks.iter().map(Task::tower_flops).sum::<usize>()
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
