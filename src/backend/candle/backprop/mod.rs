//! Training on the CPU without autograd: the forward pass of `infer.rs` with its
//! activations kept, the loss, and a backward pass written by hand, straight over the
//! parameters' f32 buffers into scratch buffers reused from step to step.
//!
//! candle's autograd of the same step records a node per op and gives every node's
//! gradient a zero-filled buffer that it then adds into; on the bench shape that
//! bookkeeping (memset, elementwise adds, copies) was about a fifth of a training step.
//! Here the first expert depth is one GEMM over the experts' weights side by side
//! forward and two backward (`dW = x^T dz`, `dx = dz W^T`), deeper depths one per
//! expert over strided rows; the gates' softmax and the mixture are one pass over each
//! row; the embedding gradients come out as the looked-up rows' gradients (`[B, dim]`, a
//! bag's `[B * len, dim]`) that the optimizer applies sparsely, as with the graph.
//! Dropout draws the graph's masks, from the same stream in the same order. A ReLU
//! passes the gradient where its input is above 0, as the fused dense op does (candle's
//! own ReLU also at exactly 0: both are subgradients, and they differ only there).
//!
//! It computes the gradients of the loss `train::batch_loss_weighted` builds, for the
//! models whose loss is a weighted sum of per-task means and whose gates have no noise
//! (see [`CandleModel::hand_backward`]); the others train through the graph.
//! `tests/suite/backprop.rs` holds every model in `models/` and the layer kinds,
//! poolings, activations, heads and dropout to autograd's gradients.
//!
//! The stages, in step order: `inputs` (infer.rs), [`layer`], [`heads`] (towers,
//! products, loss), then back through [`heads`], [`layer`] and [`inputs`].

mod heads;
mod inputs;
mod kernels;
mod layer;

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::backprop::GradStore;
use candle_core::{DType, Storage, Tensor, TensorId, Var};

use super::infer::{grow, inputs, values_in};
use super::strided::Rows;
use super::{Batch, CandleModel, Lookup, Result};
use crate::ir::{LossBalance, Model, Stream, TaskId, TaskOutput};
use crate::rng::Rng;
use heads::TowerTape;
use layer::{layer_backward, layer_forward, LayerTape};

/// One shard's step: what the optimizer applies.
pub struct Gradients {
    /// Each task's mean loss over the rows (0 for a task without labels).
    pub per_task: Vec<f32>,
    /// The dense parameters' gradients, and each lookup's rows' (keyed by its leaf).
    pub grads: GradStore,
    pub lookups: Vec<Lookup>,
}

/// The parameters' values, read in place under their storage locks for the step, and
/// their gradients, zeroed per step.
struct Params<'a> {
    index: HashMap<TensorId, usize>,
    values: Vec<&'a [f32]>,
    grads: Vec<Option<Vec<f32>>>,
}

impl<'a> Params<'a> {
    /// Every parameter of `model`, read in place under `guards`, its storages' read
    /// locks (shards share them).
    fn read<G: std::ops::Deref<Target = Storage>>(
        model: &CandleModel,
        guards: &'a [(G, &'a candle_core::Layout)],
    ) -> Result<Params<'a>> {
        let mut values = Vec::with_capacity(guards.len());
        for (storage, layout) in guards {
            values.push(values_in(storage, layout, "a parameter")?);
        }
        let index = model.vars.iter().enumerate().map(|(i, (_, v))| (v.as_tensor().id(), i)).collect();
        Ok(Params { index, grads: vec![None; values.len()], values })
    }

    fn value(&self, v: &Var) -> Result<&'a [f32]> {
        match self.index.get(&v.as_tensor().id()) {
            Some(&i) => Ok(self.values[i]),
            None => candle_core::bail!("training: a weight that is not a parameter"),
        }
    }

    /// The value of `v` and its gradient buffer (zeroed at its first use in the step).
    fn with_grad(&mut self, v: &Var) -> Result<(&'a [f32], &mut [f32])> {
        let Some(&i) = self.index.get(&v.as_tensor().id()) else {
            candle_core::bail!("training: a weight that is not a parameter")
        };
        let value = self.values[i];
        let g = self.grads[i].get_or_insert_with(|| vec![0.0; value.len()]);
        Ok((value, g))
    }
}

/// Per-thread buffers of a step, grown to the largest shard seen and then reused.
#[derive(Default)]
pub(crate) struct Tape {
    /// The input rows `[B, input_width]` and their gradient.
    x: Vec<f32>,
    dx: Vec<f32>,
    layers: Vec<LayerTape>,
    towers: Vec<TowerTape>,
    /// Per task: its raw output `[B]` or `[B, K]`, and the loss's gradient of it.
    heads: Vec<Vec<f32>>,
    dheads: Vec<Vec<f32>>,
}

/// The scratch pool: one [`Tape`] per thread running a step at once.
#[derive(Default)]
pub(crate) struct Trainer {
    pool: Mutex<Vec<Tape>>,
}

impl Trainer {
    /// One step's per-task losses and gradients on `batch`; `factors` multiply the
    /// tasks' loss weights; dropout masks come from `rng`, drawn as the graph draws them.
    pub(crate) fn step(
        &self,
        model: &CandleModel,
        batch: &Batch,
        factors: Option<&[f64]>,
        rng: &mut Rng,
    ) -> Result<Gradients> {
        let mut tape = self.pool.lock().map(|mut p| p.pop()).unwrap_or(None).unwrap_or_default();
        let out = step(model, batch, factors, rng, &mut tape);
        if let Ok(mut pool) = self.pool.lock() {
            pool.push(tape);
        }
        out
    }
}

impl CandleModel {
    /// Whether training steps of this model run the hand-written backward of
    /// `backprop/`: on the CPU, when its loss is a weighted sum of per-task means (no
    /// load-balancing loss, uncertainty weighting or GradNorm) and its gates have no
    /// noise. Others train through candle's graph.
    pub fn hand_backward(&self) -> bool {
        let ir = &self.ir;
        self.trainer.is_some()
            && !self.graph_training
            && matches!(ir.balance, LossBalance::Fixed | LossBalance::Dwa { .. })
            && self.log_variance.is_none()
            && self.layers.iter().all(|l| l.noise.is_none() && l.gating.balance <= 0.0)
    }

    /// Makes training steps take candle's graph even where [`CandleModel::hand_backward`]
    /// would hold (the reference the hand-written backward is tested against).
    pub fn set_graph_training(&mut self, on: bool) {
        self.graph_training = on;
    }

    /// The hand-written step (see [`CandleModel::hand_backward`]): the gradients of
    /// `train::batch_loss_weighted` with the same `factors` and `rng`.
    pub fn train_step(&self, batch: &Batch, factors: Option<&[f64]>, rng: &mut Rng) -> Result<Gradients> {
        match (&self.trainer, self.hand_backward()) {
            (Some(t), true) => t.step(self, batch, factors, rng),
            _ => candle_core::bail!("this model trains through the graph"),
        }
    }
}

fn step(
    model: &CandleModel,
    batch: &Batch,
    factors: Option<&[f64]>,
    rng: &mut Rng,
    tape: &mut Tape,
) -> Result<Gradients> {
    let ir = &model.ir;
    let (b, width, n_tasks) = (batch.size, ir.input_width, ir.tasks.len());
    let Tape { x, dx, layers, towers, heads, dheads } = tape;
    layers.resize_with(layers.len().max(ir.layers.len()), LayerTape::default);
    towers.resize_with(towers.len().max(n_tasks), TowerTape::default);
    heads.resize_with(heads.len().max(n_tasks), Vec::new);
    dheads.resize_with(dheads.len().max(n_tasks), Vec::new);
    // The input rows first: they read the tables under their own locks, which one
    // thread must not take twice.
    inputs(model, batch, grow(x, b * width))?;
    let guards: Vec<_> = model.vars.iter().map(|(_, v)| v.as_tensor().storage_and_layout()).collect();
    let mut params = Params::read(model, &guards)?;

    // Forward, every activation kept.
    for (li, p) in model.layers.iter().enumerate() {
        let (done, rest) = layers.split_at_mut(li);
        let h: &[f32] = done.last().map_or(&x[..], |prev| &prev.out);
        layer_forward(p, h, b, stream_in(ir, li).width(), &mut rest[0], &params, rng)?;
    }
    let mut widths = vec![1; n_tasks];
    for (t, (tower, task)) in model.towers.iter().zip(&ir.tasks).enumerate() {
        if matches!(task.output, TaskOutput::Tower { .. }) {
            let (from, xr) = tower_source(ir, t, b);
            let src: &[f32] = from.map_or(&x[..], |i| &layers[i].out);
            widths[t] = heads::forward(tower, &task.name, src, xr, &mut towers[t], b, &params, rng)?;
            heads[t].clear();
            heads[t].extend_from_slice(towers[t].output());
        }
    }
    heads::products(ir, heads, b)?;
    let per_task = heads::loss(model, batch, factors, heads, dheads, &widths)?;
    heads::products_backward(ir, heads, dheads, b);

    // Backward, every stream's gradient from zero.
    grow(dx, b * width).fill(0.0);
    for (l, lt) in ir.layers.iter().zip(layers.iter_mut()) {
        grow(&mut lt.dout, b * l.output.slots(n_tasks).len() * l.output.width()).fill(0.0);
    }
    for (t, (tower, task)) in model.towers.iter().zip(&ir.tasks).enumerate() {
        if matches!(task.output, TaskOutput::Tower { .. }) {
            let (from, xr) = tower_source(ir, t, b);
            let (src, dsrc): (&[f32], &mut [f32]) = match from {
                Some(i) => {
                    let lt = &mut layers[i];
                    (&lt.out, &mut lt.dout)
                }
                None => (&x[..], &mut dx[..]),
            };
            let dhead = &dheads[t][..b * widths[t]];
            heads::backward(tower, src, xr, dsrc, &mut towers[t], dhead, b, &mut params)?;
        }
    }
    for li in (0..ir.layers.len()).rev() {
        let (done, rest) = layers.split_at_mut(li);
        let (h, dh): (&[f32], &mut [f32]) = match done.last_mut() {
            Some(prev) => (&prev.out, &mut prev.dout),
            None => (&x[..], &mut dx[..]),
        };
        layer_backward(&model.layers[li], h, dh, b, stream_in(ir, li).width(), &mut rest[0], &mut params)?;
    }
    let lookups = inputs::input_grads(model, batch, x, dx, &params, b)?;
    gradients(model, per_task, params, lookups)
}

/// The stream layer `li` reads: the input row or the layer before's output.
fn stream_in(ir: &Model, li: usize) -> Stream {
    match li.checked_sub(1) {
        Some(prev) => ir.layers[prev].output,
        None => Stream::Shared { width: ir.input_width },
    }
}

/// Where task `t`'s tower reads: the layer (None: the input row) and its rows, the
/// task's slot of that stream.
fn tower_source(ir: &Model, t: usize, b: usize) -> (Option<usize>, Rows) {
    let (from, s) = match ir.tasks[t].input {
        Some(i) => (Some(i), ir.layers[i].output),
        None => (ir.layers.len().checked_sub(1), stream_in(ir, ir.layers.len())),
    };
    let d = s.width();
    (from, Rows { at: s.task_slot(TaskId(t)) * d, n: b, width: d, stride: s.slots(ir.tasks.len()).len() * d })
}

/// The step's gradients as the optimizer takes them: a store with the dense
/// parameters' and, keyed by each lookup's leaf, its rows' (`dim` values a row).
fn gradients(
    model: &CandleModel,
    per_task: Vec<f32>,
    params: Params,
    lookups: Vec<(Lookup, usize, Vec<f32>)>,
) -> Result<Gradients> {
    // candle makes a gradient store only from a backward pass: that of a constant, its
    // one entry removed.
    let root = Tensor::zeros((), DType::F32, &model.device)?;
    let mut grads = root.backward()?;
    grads.remove(&root);
    let mut out = Vec::with_capacity(lookups.len());
    for (lookup, dim, rows) in lookups {
        let n = rows.len() / dim.max(1);
        grads.insert(lookup.leaf.as_tensor(), Tensor::from_vec(rows, (n, dim), &model.device)?);
        out.push(lookup);
    }
    for ((_, var), g) in model.vars.iter().zip(params.grads) {
        if let Some(g) = g {
            grads.insert(var.as_tensor(), Tensor::from_vec(g, var.as_tensor().shape(), &model.device)?);
        }
    }
    Ok(Gradients { per_task, grads, lookups: out })
}
