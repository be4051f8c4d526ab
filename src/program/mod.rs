//! The op program: the second IR level, between the model IR and every backend.
//!
//! In: nothing (it is built only by `lower::program`, from a validated model). Out: a
//! [`Program`], a flat list of primitive ops ([`Op`]) over buffers whose shapes are all
//! known (the batch axis `B` stays symbolic), every parameter named as the model's
//! parameter table names it. Backends interpret it; none of them sees a model kind.
//!
//! # The level
//!
//! The model IR says *what* the model is (layers, expert groups, gates, towers, heads);
//! the program says *how to compute it*. MMoE, CGC/PLE, ESMM, shared-bottom and stacked
//! layers exist only above this module: the lowering turns each into the same handful
//! of primitives (`expert_linear`, `softmax`, `mix`, `log_sigmoid`, ...), so a new model
//! is a new lowering and a new backend is one implementation of each primitive.
//!
//! ```text
//! program synthetic_mmoe eval  batch B
//!   in    dense f32[B,100]  <- dense values
//!   param layers.layer0.experts.0.weight f32[8,100,16]
//!   ...
//!   %0 = expert_linear dense, layers.layer0.experts.0.weight, layers.layer0.experts.0.bias : f32[B,8,16]
//!   %1 = relu %0 : f32[B,8,16]
//!   %2 = linear dense, layers.layer0.gates.weight, layers.layer0.gates.bias : f32[B,16]
//!   %3 = softmax %2 segments=2x8 : f32[B,16]
//!   %4 = mix %3, %1 sets=0..8,0..8 : f32[B,2,16]
//!   %5 = take %4 at=[0] : f32[B,1,16]
//!   ...
//!   out y1 = %10  link identity
//!   gates 0 = %3  widths 2x8
//! ```
//!
//! # Backward
//!
//! Every op declares which operands its vector-Jacobian product reaches
//! ([`Op::grad_inputs`]); each backend implements each op's VJP once. [`grad::derive`] walks the forward
//! program in reverse and produces the backward program: one step per op that a
//! trainable parameter reaches, with gradient accumulation planned where a buffer feeds
//! several ops. Nothing is differentiated per model.

mod display;
pub mod fuse;
pub mod grad;
mod op;

pub use display::render_dot;
pub use grad::{derive as derive_backward, Backward, GradStep, ParamGrad};
pub use op::{mix_scatter, LossKind, Op, PoolMode, Reduction, Unary};

/// A buffer's element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    /// Table row indices.
    U32,
}

/// A buffer's shape: an optional leading batch axis `B` (known only at run time), then
/// fixed axes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub batch: bool,
    pub dims: Vec<usize>,
}

impl Shape {
    /// `[B, dims..]`.
    pub fn batched(dims: &[usize]) -> Shape {
        Shape { batch: true, dims: dims.to_vec() }
    }

    /// `[dims..]`, no batch axis (parameters, scalars).
    pub fn fixed(dims: &[usize]) -> Shape {
        Shape { batch: false, dims: dims.to_vec() }
    }

    /// Elements per batch row (per whole buffer without a batch axis).
    pub fn row_elems(&self) -> usize {
        self.dims.iter().product()
    }

    /// Elements for batch size `b`.
    pub fn elems(&self, b: usize) -> usize {
        self.row_elems() * if self.batch { b } else { 1 }
    }

    /// The last axis (1 for a scalar or `[B]`).
    pub fn last(&self) -> usize {
        self.dims.last().copied().unwrap_or(1)
    }
}

/// What a buffer holds and where its value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum BufKind {
    /// Fed by the runner from a batch.
    Input(Input),
    /// A trainable parameter, by its parameter-table name (the buffer's name).
    Param,
    /// Computed by one op.
    Value,
}

/// What an input buffer is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Table row ids of categorical input `i` (the batch's i-th categorical column):
    /// `u32[B]`, or `u32[B, len]` for a bag.
    Ids(usize),
    /// A bag's slot weights `f32[B, len]` for categorical input `i`.
    BagWeights(usize),
    /// Every dense value side by side, `f32[B, dense_width]`.
    Dense,
    /// Task `t`'s labels `f32[B]` (missing ones as 0).
    Label(usize),
    /// Task `t`'s label mask `f32[B]`: 1 where the label is present.
    Mask(usize),
}

/// One buffer of the program.
#[derive(Debug, Clone, PartialEq)]
pub struct Buf {
    /// Inputs and parameters: their name; values: empty (printed as `%i`).
    pub name: String,
    pub shape: Shape,
    pub dtype: DType,
    pub kind: BufKind,
}

/// A buffer's index in [`Program::bufs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufId(pub usize);

/// One op application: `out = op(args)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub op: Op,
    pub args: Vec<BufId>,
    pub out: BufId,
}

/// How a task's raw output becomes its prediction (the model IR's link, by name).
pub use crate::ir::Link;

/// A task's output: its raw value and its link.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub task: String,
    /// `f32[B]`, or `f32[B, K]` for softmax.
    pub raw: BufId,
    pub link: Link,
}

/// A gated layer's gate weights, for diagnostics: `probs` `[B, sum E_m]` holds each
/// mix's weights side by side, `widths[m]` columns each.
#[derive(Debug, Clone, PartialEq)]
pub struct GateWeights {
    pub probs: BufId,
    pub widths: Vec<usize>,
}

/// One task's training loss: a scalar `f32[]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskLoss {
    pub task: usize,
    pub loss: BufId,
}

/// Which pass a program computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Evaluation: no dropout, no gate noise, no losses.
    Eval,
    /// Training: dropout and gate noise where the model has them, and each training
    /// task's loss.
    Train,
}

/// A flat list of primitive ops over shaped buffers (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    pub name: String,
    pub mode: Mode,
    pub bufs: Vec<Buf>,
    pub nodes: Vec<Node>,
    /// One per task, in task order.
    pub outputs: Vec<Output>,
    /// One per gated layer, in layer order.
    pub gates: Vec<GateWeights>,
    /// Training only: one per task with a label (its weight is the backward's seed).
    pub losses: Vec<TaskLoss>,
    /// Training only: scalar losses added to the total as they are (gate balance).
    pub aux_losses: Vec<BufId>,
}

/// What makes a program malformed: an op whose operands do not fit its shape rule, a
/// value read before it is computed, a parameter or input the model lacks. A lowering
/// bug, never the user's input (the spec was validated before).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProgramError {
    #[error("op {node} ({op}): {what}")]
    Invalid { node: usize, op: &'static str, what: String },
}

impl Program {
    /// An empty program.
    pub fn new(name: &str, mode: Mode) -> Program {
        Program {
            name: name.to_string(),
            mode,
            bufs: Vec::new(),
            nodes: Vec::new(),
            outputs: Vec::new(),
            gates: Vec::new(),
            losses: Vec::new(),
            aux_losses: Vec::new(),
        }
    }

    pub fn buf(&self, id: BufId) -> &Buf {
        &self.bufs[id.0]
    }

    /// Declares an input buffer.
    pub fn input(&mut self, name: &str, shape: Shape, dtype: DType, input: Input) -> BufId {
        self.push_buf(Buf { name: name.to_string(), shape, dtype, kind: BufKind::Input(input) })
    }

    /// Declares a parameter by its parameter-table name and shape.
    pub fn param(&mut self, name: &str, shape: &[usize]) -> BufId {
        if let Some(i) = self.bufs.iter().position(|b| b.kind == BufKind::Param && b.name == name) {
            return BufId(i);
        }
        self.push_buf(Buf {
            name: name.to_string(),
            shape: Shape::fixed(shape),
            dtype: DType::F32,
            kind: BufKind::Param,
        })
    }

    fn push_buf(&mut self, b: Buf) -> BufId {
        self.bufs.push(b);
        BufId(self.bufs.len() - 1)
    }

    /// Appends `op(args)`; its output's shape comes from the op's shape rule.
    pub fn push(&mut self, op: Op, args: &[BufId]) -> Result<BufId, ProgramError> {
        let node = self.nodes.len();
        let shapes: Vec<&Shape> = args.iter().map(|a| &self.bufs[a.0].shape).collect();
        let shape = op.infer_shape(&shapes).map_err(|what| ProgramError::Invalid { node, op: op.name(), what })?;
        let out = self.push_buf(Buf { name: String::new(), shape, dtype: DType::F32, kind: BufKind::Value });
        self.nodes.push(Node { op, args: args.to_vec(), out });
        Ok(out)
    }

    /// The values the program hands out, which a backend keeps to the end of a run:
    /// heads, gate weights, task losses and auxiliary losses.
    pub fn handed_out(&self) -> impl Iterator<Item = BufId> + '_ {
        let heads = self.outputs.iter().map(|o| o.raw).chain(self.gates.iter().map(|g| g.probs));
        heads.chain(self.losses.iter().map(|l| l.loss)).chain(self.aux_losses.iter().copied())
    }

    /// Parameters, in declaration order.
    pub fn params(&self) -> impl Iterator<Item = (BufId, &Buf)> {
        self.bufs.iter().enumerate().filter(|(_, b)| b.kind == BufKind::Param).map(|(i, b)| (BufId(i), b))
    }

    /// Inputs, in declaration order.
    pub fn inputs(&self) -> impl Iterator<Item = (BufId, Input, &Buf)> {
        self.bufs.iter().enumerate().filter_map(|(i, b)| match b.kind {
            BufKind::Input(input) => Some((BufId(i), input, b)),
            _ => None,
        })
    }

    /// Checks every node's shape rule again (a pass that rewrote the program must keep
    /// them) and that every operand is defined before it is read.
    pub fn validate(&self) -> Result<(), ProgramError> {
        let mut defined: Vec<bool> = self.bufs.iter().map(|b| b.kind != BufKind::Value).collect();
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(a) = n.args.iter().find(|a| !defined[a.0]) {
                let what = format!("reads {} before it is computed", self.label(*a));
                return Err(ProgramError::Invalid { node: i, op: n.op.name(), what });
            }
            let shapes: Vec<&Shape> = n.args.iter().map(|a| &self.bufs[a.0].shape).collect();
            let shape =
                n.op.infer_shape(&shapes).map_err(|what| ProgramError::Invalid { node: i, op: n.op.name(), what })?;
            if shape != self.bufs[n.out.0].shape {
                let what = format!("writes {} but computes {}", self.bufs[n.out.0].shape, shape);
                return Err(ProgramError::Invalid { node: i, op: n.op.name(), what });
            }
            defined[n.out.0] = true;
        }
        Ok(())
    }

    /// How a buffer prints: its name, or `%i` for the i-th value.
    pub fn label(&self, id: BufId) -> String {
        let b = &self.bufs[id.0];
        match b.kind {
            BufKind::Value => {
                let index = self.bufs[..id.0].iter().filter(|b| b.kind == BufKind::Value).count();
                format!("%{index}")
            }
            _ => b.name.clone(),
        }
    }
}
