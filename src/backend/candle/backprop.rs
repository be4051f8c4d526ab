//! Training on the CPU without autograd: the forward pass of `infer.rs` with its
//! activations kept, the loss, and a backward pass written by hand, straight over the
//! parameters' f32 buffers into scratch buffers reused from step to step.
//!
//! candle's autograd of the same step records a node per op and gives every node's
//! gradient a zero-filled buffer that it then adds into; on the bench shape that
//! bookkeeping (memset, elementwise adds, copies) was about a fifth of a training step.
//! Here each expert depth's backward is three GEMMs per expert over strided rows of one
//! buffer (`dW = x^T dz`, `dx = dz W^T`, `db` one pass), the gates' softmax and the
//! mixture are one pass over each row, and the embedding gradients come out as the
//! looked-up rows' gradients (`[B, dim]`, a bag's `[B * len, dim]`) that the optimizer
//! applies sparsely, as with the graph.
//!
//! It computes the gradients of the loss [`crate::train::batch_loss_weighted`] builds,
//! for the models whose loss is a weighted sum of per-task means (see
//! [`CandleModel::hand_backward`]); the others, and models with dropout or gate noise,
//! train through the graph. `tests/suite/backprop.rs` holds every model in `models/`
//! and the layer kinds, poolings, activations and heads to autograd's gradients.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::backprop::GradStore;
use candle_core::{DType, Storage, Tensor, TensorId, Var};

use super::infer::{bias_activate, concat_experts, gate_row, grow, inputs, log_sigmoid, with_f32, with_u32, Rows};
use super::{Batch, CandleModel, ExpertStack, LayerParams, Lookup, Result};
use crate::ir::{Activation, FeatureKind, Link, LossBalance, Pooling, Stream, TaskId, TaskOutput};
use crate::rng::Rng;

/// One shard's step: what the optimizer applies.
pub struct Gradients {
    /// Each task's mean loss over the rows (0 for a task without labels).
    pub per_task: Vec<f32>,
    /// The dense parameters' gradients, and each lookup's rows' (keyed by its leaf).
    pub grads: GradStore,
    pub lookups: Vec<Lookup>,
}

/// A strided matrix: element `(i, j)` at `at + i * rs + j * cs`.
#[derive(Clone, Copy)]
struct View {
    at: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl View {
    fn of(r: Rows) -> View {
        View { at: r.at, rows: r.n, cols: r.width, rs: r.stride, cs: 1 }
    }

    fn packed(rows: usize, cols: usize) -> View {
        View { at: 0, rows, cols, rs: cols, cs: 1 }
    }

    fn t(self) -> View {
        View { at: self.at, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }

    fn fits(&self, len: usize) -> bool {
        self.rows == 0 || self.cols == 0 || self.at + (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < len
    }
}

/// `dst = a b`, or with `add` `dst += a b` (`a: [m, k]`, `b: [k, n]`, `dst: [m, n]`,
/// any strides).
fn matmul(dst: &mut [f32], dv: View, a: &[f32], av: View, b: &[f32], bv: View, add: bool) -> Result<()> {
    let (m, k, n) = (av.rows, av.cols, bv.cols);
    if bv.rows != k || dv.rows != m || dv.cols != n || !av.fits(a.len()) || !bv.fits(b.len()) || !dv.fits(dst.len()) {
        candle_core::bail!(
            "training: a GEMM of [{m}, {k}] x [{}, {n}] into [{}, {}] does not fit",
            bv.rows,
            dv.rows,
            dv.cols
        );
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !add {
            (0..m).for_each(|i| (0..n).for_each(|j| dst[dv.at + i * dv.rs + j * dv.cs] = 0.0));
        }
        return Ok(());
    }
    // SAFETY: `fits` checked that every element of each view lies within its slice;
    // dst does not alias a or b (a &mut). With `read_dst` the GEMM adds into dst,
    // without it dst is only written.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().add(dv.at),
            dv.cs as isize,
            dv.rs as isize,
            add,
            a.as_ptr().add(av.at),
            av.cs as isize,
            av.rs as isize,
            b.as_ptr().add(bv.at),
            bv.cs as isize,
            bv.rs as isize,
            if add { 1.0f32 } else { 0.0 },
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    Ok(())
}

/// candle's GELU (the tanh approximation) and its derivative, as its backward has it.
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + (0.797_884_6f32 * x * (1.0 + 0.044715 * x * x)).tanh())
}

fn gelu_grad(x: f32) -> f32 {
    let cube = x * x * x;
    let t = (0.035_677_4 * cube + 0.797_885 * x).tanh();
    0.5 * t + (0.053_516_1 * cube + 0.398_942 * x) * (1.0 - t * t) + 0.5
}

/// `act'(z)`.
fn derivative(z: f32, act: Activation) -> f32 {
    match act {
        Activation::Relu => f32::from(z > 0.0),
        Activation::Tanh => 1.0 - z.tanh() * z.tanh(),
        Activation::Sigmoid => {
            let s = 1.0 / ((-z).exp() + 1.0);
            s * (1.0 - s)
        }
        Activation::Gelu => gelu_grad(z),
        Activation::Linear => 1.0,
    }
}

/// `dz = da * act'(z)` in place, from the activation's output `a` (or, for GELU, its
/// input `pre`); after dropout, `dz = da * mask * act'(z)` from its input `pre`.
fn activation_grad(d: &mut [f32], a: &[f32], pre: &[f32], act: Activation, mask: Option<&[f32]>) {
    if let Some(mask) = mask {
        for ((g, &k), &z) in d.iter_mut().zip(mask).zip(pre) {
            *g *= if k == 0.0 { 0.0 } else { k * derivative(z, act) };
        }
        return;
    }
    match act {
        Activation::Relu => d.iter_mut().zip(a).for_each(|(g, &y)| *g = if y > 0.0 { *g } else { 0.0 }),
        Activation::Tanh => d.iter_mut().zip(a).for_each(|(g, &y)| *g *= 1.0 - y * y),
        Activation::Sigmoid => d.iter_mut().zip(a).for_each(|(g, &y)| *g *= y * (1.0 - y)),
        Activation::Gelu => d.iter_mut().zip(pre).for_each(|(g, &x)| *g *= gelu_grad(x)),
        Activation::Linear => {}
    }
}

/// `act(y + b)` on each row of `y`; with `keep_pre` (dropout after it) or GELU the
/// value before the activation is kept in `pre` (the other activations' derivatives
/// come from their output).
fn bias_activate_keep(y: &mut [f32], b: &[f32], act: Activation, pre: &mut Vec<f32>, keep_pre: bool) {
    if !keep_pre && act != Activation::Gelu {
        return bias_activate(y, b, act);
    }
    bias_activate(y, b, Activation::Linear);
    grow(pre, y.len()).copy_from_slice(y);
    y.iter_mut().for_each(|v| *v = apply(*v, act));
}

/// `act(x)`, as `infer::bias_activate` computes it.
fn apply(x: f32, act: Activation) -> f32 {
    match act {
        Activation::Relu => x.max(0.0),
        Activation::Tanh => x.tanh(),
        Activation::Sigmoid => 1.0 / ((-x).exp() + 1.0),
        Activation::Gelu => gelu(x),
        Activation::Linear => x,
    }
}

/// `a . b` over eight running sums (a float sum in one accumulator does not vectorise).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(&x, &y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `db += ` the sum of `dz`'s rows (rows of `db.len()` values).
fn column_sums(db: &mut [f32], dz: &[f32]) {
    for row in dz.chunks_exact(db.len().max(1)) {
        db.iter_mut().zip(row).for_each(|(s, &g)| *s += g);
    }
}

/// The parameters' values, read in place under their storage locks for the step, and
/// their gradients, zeroed per step.
struct Params<'a> {
    index: HashMap<TensorId, usize>,
    values: Vec<&'a [f32]>,
    grads: Vec<Option<Vec<f32>>>,
}

impl<'a> Params<'a> {
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
    x: Vec<f32>,
    dx: Vec<f32>,
    layers: Vec<LayerTape>,
    /// Per task, per tower depth: its output `[B, m]` (after dropout), and with dropout
    /// its mask.
    towers: Vec<Vec<Vec<f32>>>,
    tower_masks: Vec<Vec<Vec<f32>>>,
    tower_pre: Vec<f32>,
    dtower: [Vec<f32>; 2],
    /// Per task: its raw output `[B]` or `[B, K]`, and the loss's gradient of it.
    heads: Vec<Vec<f32>>,
    dheads: Vec<Vec<f32>>,
}

#[derive(Default)]
struct LayerTape {
    /// The output stream `[B, S' * u]` and its gradient.
    out: Vec<f32>,
    dout: Vec<f32>,
    runs: Vec<RunTape>,
    /// All instances `[B, N, u]` (unless one run holds them in that order) and their
    /// gradient.
    experts: Vec<f32>,
    dexperts: Vec<f32>,
    /// Gate logits `[B * S, sum E_g]` and their gradient.
    logits: Vec<f32>,
    dlogits: Vec<f32>,
    /// Each mix's weights `[B, E_m]`, mix after mix.
    probs: Vec<f32>,
}

#[derive(Default)]
struct RunTape {
    /// The run's input rows when its slots are gathered `[B * k, d]`, and their gradient.
    rows: Vec<f32>,
    drows: Vec<f32>,
    /// Per depth: its output `[B * k, E * d_i]`, and for GELU its input.
    acts: Vec<Vec<f32>>,
    pre: Vec<Vec<f32>>,
    /// Per depth, with dropout: its mask, in the layout of `acts`.
    masks: Vec<Vec<f32>>,
    /// Gradients of the depths, ping-pong.
    d: [Vec<f32>; 2],
    /// Depth 0's weight side by side `[d, E * d_1]`, and its gradient.
    wcat: Vec<f32>,
    gcat: Vec<f32>,
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
    /// `backprop.rs`: on the CPU, when its loss is a weighted sum of per-task means (no
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
    let b = batch.size;
    let n_tasks = ir.tasks.len();
    let Tape { x, dx, layers, towers, tower_masks, tower_pre, dtower, heads, dheads } = tape;
    let width = ir.input_width;
    // The input rows first: they read the tables under their own locks, which must not
    // be taken twice by one thread.
    inputs(model, batch, grow(x, b * width))?;
    // Every parameter read in place for the whole step (shards share the read locks).
    let guards: Vec<_> = model.vars.iter().map(|(_, v)| v.as_tensor().storage_and_layout()).collect();
    let mut values = Vec::with_capacity(guards.len());
    for (storage, layout) in &guards {
        let Storage::Cpu(cpu) = &**storage else { candle_core::bail!("training: a parameter is not on the CPU") };
        let v = cpu.as_slice::<f32>()?;
        let Some((a, z)) = layout.contiguous_offsets() else {
            candle_core::bail!("training: a parameter is not contiguous")
        };
        values.push(&v[a..z]);
    }
    let index = model.vars.iter().enumerate().map(|(i, (_, v))| (v.as_tensor().id(), i)).collect();
    let mut params = Params { index, grads: vec![None; values.len()], values };

    if layers.len() < ir.layers.len() {
        layers.resize_with(ir.layers.len(), LayerTape::default);
    }
    // Forward, every activation kept.
    for (li, p) in model.layers.iter().enumerate() {
        let (done, rest) = layers.split_at_mut(li);
        let (h, d): (&[f32], usize) = match done.last() {
            Some(prev) => (&prev.out, ir.layers[li - 1].output.width()),
            None => (&x[..], width),
        };
        layer_forward(p, h, b, d, &mut rest[0], &params, rng)?;
    }
    let last_stream = ir.layers.last().map_or(Stream::Shared { width }, |l| l.output);
    let source = |t: usize| -> (Option<usize>, Stream) {
        match ir.tasks[t].input {
            Some(i) => (Some(i), ir.layers[i].output),
            None => (ir.layers.len().checked_sub(1), last_stream),
        }
    };
    if towers.len() < n_tasks {
        towers.resize_with(n_tasks, Vec::new);
        heads.resize_with(n_tasks, Vec::new);
        dheads.resize_with(n_tasks, Vec::new);
    }
    let mut widths = vec![1; n_tasks];
    for (t, (tower, task)) in model.towers.iter().zip(&ir.tasks).enumerate() {
        if !matches!(task.output, TaskOutput::Tower { .. }) {
            continue;
        }
        let (src_layer, s) = source(t);
        let src: &[f32] = src_layer.map_or(&x[..], |i| &layers[i].out);
        let d = s.width();
        let xr = Rows { at: s.task_slot(TaskId(t)) * d, n: b, width: d, stride: s.slots(n_tasks).len() * d };
        if tower_masks.len() < n_tasks {
            tower_masks.resize_with(n_tasks, Vec::new);
        }
        let (acts, masks) = (&mut towers[t], &mut tower_masks[t]);
        if acts.len() < tower.layers.len() {
            acts.resize_with(tower.layers.len(), Vec::new);
        }
        if masks.len() < tower.layers.len() {
            masks.resize_with(tower.layers.len(), Vec::new);
        }
        if tower.layers.is_empty() {
            candle_core::bail!("task `{}`: its tower has no layers", task.name);
        }
        let last = tower.layers.len() - 1;
        for (i, (w, bias)) in tower.layers.iter().enumerate() {
            let act = if i < last { tower.activation } else { Activation::Linear };
            let (w, bias) = (params.value(w)?, params.value(bias)?);
            let m = bias.len();
            let (done, rest) = acts.split_at_mut(i);
            let (input, ir_) = match done.last() {
                Some(prev) => (&prev[..], Rows::packed(b, w.len() / m.max(1))),
                None => (src, xr),
            };
            if ir_.width * m != w.len() {
                candle_core::bail!("task `{}`: a tower weight does not fit its input", task.name);
            }
            let y = grow(&mut rest[0], b * m);
            matmul(y, View::packed(b, m), input, View::of(ir_), w, View::packed(ir_.width, m), false)?;
            bias_activate(y, bias, act);
            if i < last && tower.dropout > 0.0 {
                // As the graph: after every depth but the last, `[B, m]`.
                let mask = grow(&mut masks[i], b * m);
                mask.copy_from_slice(&super::dropout_mask(rng, b * m, tower.dropout));
                y.iter_mut().zip(mask.iter()).for_each(|(v, &k)| *v *= k);
            }
            widths[t] = m;
        }
        let out = &acts[last][..b * widths[t]];
        let head = &mut heads[t];
        head.clear();
        head.extend_from_slice(out);
    }
    for (t, task) in ir.tasks.iter().enumerate() {
        if let TaskOutput::Product { factors: [fa, fb] } = task.output {
            if fa.0 == t || fb.0 == t || heads[fa.0].len() != b || heads[fb.0].len() != b {
                candle_core::bail!("product task `{}` lacks a factor", task.name);
            }
            let v: Vec<f32> =
                heads[fa.0].iter().zip(&heads[fb.0]).map(|(&a, &z)| log_sigmoid(a) + log_sigmoid(z)).collect();
            heads[t] = v;
        }
    }

    // The loss and its gradient of each head.
    let mut per_task = vec![0f32; n_tasks];
    for (t, task) in ir.tasks.iter().enumerate() {
        let k = widths[t];
        let dh = grow(&mut dheads[t], b * k);
        dh.fill(0.0);
        let Some(labels) = batch.labels[t].as_ref().filter(|_| task.label.is_some()) else { continue };
        let weight = task.loss_weight as f64 * factors.map_or(1.0, |f| f[t]);
        let mask: Option<Vec<f32>> =
            batch.masks[t].as_ref().map(|m| with_f32(m, "a label mask", |m| Ok(m.to_vec()))).transpose()?;
        let present = mask.as_ref().map_or(b as f64, |m| m.iter().map(|&v| v as f64).sum::<f64>().max(1.0));
        let scale = (weight / present) as f32;
        let mut sum = 0f64;
        with_f32(labels, "labels", |y| {
            if y.len() != b {
                candle_core::bail!("task `{}`: {} labels for {b} rows", task.name, y.len());
            }
            for r in 0..b {
                let keep = mask.as_ref().map_or(1.0, |m| m[r]);
                let z = &heads[t][r * k..(r + 1) * k];
                let g = &mut dh[r * k..(r + 1) * k];
                let (loss, grad_scale) = (row_loss(task.link(), z, y[r], g), keep * scale);
                sum += (loss * keep) as f64;
                g.iter_mut().for_each(|v| *v *= grad_scale);
            }
            Ok(())
        })?;
        per_task[t] = (sum / present) as f32;
    }
    // Products pass their gradient to their factors: d log sigmoid(z) / dz = sigmoid(-z).
    for (t, task) in ir.tasks.iter().enumerate().rev() {
        if let TaskOutput::Product { factors: [fa, fb] } = task.output {
            let g = std::mem::take(&mut dheads[t]);
            for f in [fa.0, fb.0] {
                for ((d, &z), &gr) in dheads[f].iter_mut().zip(&heads[f]).zip(&g[..b]) {
                    *d += gr / (z.exp() + 1.0);
                }
            }
            dheads[t] = g;
        }
    }

    // Backward. Every stream's gradient starts at zero.
    grow(dx, b * width).fill(0.0);
    for (l, lt) in ir.layers.iter().zip(layers.iter_mut()) {
        grow(&mut lt.dout, b * l.output.slots(n_tasks).len() * l.output.width()).fill(0.0);
    }
    for (t, (tower, task)) in model.towers.iter().zip(&ir.tasks).enumerate() {
        if !matches!(task.output, TaskOutput::Tower { .. }) {
            continue;
        }
        let (src_layer, s) = source(t);
        let d = s.width();
        let xr = Rows { at: s.task_slot(TaskId(t)) * d, n: b, width: d, stride: s.slots(n_tasks).len() * d };
        let (src, dsrc): (&[f32], &mut [f32]) = match src_layer {
            Some(i) => {
                let lt = &mut layers[i];
                (&lt.out, &mut lt.dout)
            }
            None => (&x[..], &mut dx[..]),
        };
        let acts = &towers[t];
        let last = tower.layers.len() - 1;
        let [ping, pong] = dtower;
        grow(ping, b * widths[t]).copy_from_slice(&dheads[t][..b * widths[t]]);
        for i in (0..tower.layers.len()).rev() {
            let (w, bias) = &tower.layers[i];
            let act = if i < last { tower.activation } else { Activation::Linear };
            let m = params.value(bias)?.len();
            let dz = &mut ping[..b * m];
            let mask = (i < last && tower.dropout > 0.0).then(|| &tower_masks[t][i][..b * m]);
            if act == Activation::Gelu || mask.is_some() {
                // The depth's input to its activation (GELU's output, or one after
                // dropout, does not give it back): recomputed.
                let input: (&[f32], Rows) =
                    if i == 0 { (src, xr) } else { (&acts[i - 1][..], Rows::packed(b, w.as_tensor().dim(0)?)) };
                let pre = grow(tower_pre, b * m);
                let wv = params.value(w)?;
                matmul(pre, View::packed(b, m), input.0, View::of(input.1), wv, View::packed(input.1.width, m), false)?;
                bias_activate(pre, params.value(bias)?, Activation::Linear);
                activation_grad(dz, &[], pre, act, mask);
            } else {
                activation_grad(dz, &acts[i][..b * m], &[], act, None);
            }
            let (input, irows): (&[f32], Rows) =
                if i == 0 { (src, xr) } else { (&acts[i - 1][..], Rows::packed(b, w.as_tensor().dim(0)?)) };
            let k = irows.width;
            {
                let (_, gb) = params.with_grad(bias)?;
                column_sums(gb, dz);
            }
            let (wv, gw) = params.with_grad(w)?;
            matmul(gw, View::packed(k, m), input, View::of(irows).t(), dz, View::packed(b, m), true)?;
            if i == 0 {
                matmul(dsrc, View::of(xr), dz, View::packed(b, m), wv, View::packed(k, m).t(), true)?;
            } else {
                let dprev = grow(pong, b * k);
                matmul(dprev, View::packed(b, k), dz, View::packed(b, m), wv, View::packed(k, m).t(), false)?;
                std::mem::swap(ping, pong);
            }
        }
    }
    for li in (0..ir.layers.len()).rev() {
        let (done, rest) = layers.split_at_mut(li);
        let (h, dh, d): (&[f32], &mut [f32], usize) = match done.last_mut() {
            Some(prev) => (&prev.out, &mut prev.dout, ir.layers[li - 1].output.width()),
            None => (&x[..], &mut dx[..], width),
        };
        layer_backward(&model.layers[li], h, dh, b, d, &mut rest[0], &mut params)?;
    }

    // The inputs: crosses pass their gradient to their factors, then each feature's
    // columns are its lookups' gradient.
    let lookups = input_grads(model, batch, x, dx, &params, b)?;
    // candle makes a gradient store only from a backward pass: that of a constant, its
    // one entry removed.
    let root = Tensor::zeros((), DType::F32, &model.device)?;
    let mut grads = root.backward()?;
    grads.remove(&root);
    let mut out_lookups = Vec::with_capacity(lookups.len());
    for (lookup, rows) in lookups {
        let n = rows.len() / lookup.1.max(1);
        grads.insert(lookup.0.leaf.as_tensor(), Tensor::from_vec(rows, (n, lookup.1), &model.device)?);
        out_lookups.push(lookup.0);
    }
    let Params { grads: dense, .. } = params;
    drop(guards);
    for ((_, var), g) in model.vars.iter().zip(dense) {
        if let Some(g) = g {
            grads.insert(var.as_tensor(), Tensor::from_vec(g, var.as_tensor().shape(), &model.device)?);
        }
    }
    Ok(Gradients { per_task, grads, lookups: out_lookups })
}

/// One row's loss for `link` on its raw output `z` (`[K]`; one value but for softmax)
/// and label `y`; its gradient of `z` into `g`.
fn row_loss(link: Link, z: &[f32], y: f32, g: &mut [f32]) -> f32 {
    match link {
        Link::Sigmoid => {
            // max(z, 0) - z y + ln(1 + e^-|z|); gradient sigmoid(z) - y.
            let z = z[0];
            g[0] = 1.0 / ((-z).exp() + 1.0) - y;
            z.max(0.0) - z * y + ((-z.abs()).exp() + 1.0).ln()
        }
        Link::Identity => {
            let e = z[0] - y;
            g[0] = 2.0 * e;
            e * e
        }
        Link::LogProb => {
            // -(y log p + (1 - y) log(clamp(1 - p, 1e-7, 1))), z = log p.
            let q = 1.0 - z[0].exp();
            let clamped = q.clamp(1e-7, 1.0);
            let dq = if q > 1e-7 && q < 1.0 { (1.0 - y) * z[0].exp() / clamped } else { 0.0 };
            g[0] = -y + dq;
            -(y * z[0] + (1.0 - y) * clamped.ln())
        }
        Link::Softmax => {
            let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = z.iter().map(|&v| (v - max).exp()).sum();
            let lse = max + sum.ln();
            let mut loss = 0.0;
            for (j, (gj, &zj)) in g.iter_mut().zip(z).enumerate() {
                let hit = if j as f32 == y { 1.0 } else { 0.0 };
                *gj = (zj - lse).exp() - hit;
                loss -= hit * (zj - lse);
            }
            loss
        }
    }
}

/// How a run reads the layer's input rows.
enum RunInput {
    /// Every slot in order: the input `[B * S, d]` as it stands.
    All,
    /// One slot, strided.
    Slot(usize),
    /// Several slots, gathered into the run's rows.
    Gathered,
}

fn run_input(slots: &[usize], n_slots: usize) -> RunInput {
    if slots.len() == n_slots && slots.iter().copied().eq(0..n_slots) {
        RunInput::All
    } else if slots.len() == 1 {
        RunInput::Slot(slots[0])
    } else {
        RunInput::Gathered
    }
}

/// One layer's forward, its activations kept in `lt`.
fn layer_forward(
    p: &LayerParams,
    h: &[f32],
    b: usize,
    d: usize,
    lt: &mut LayerTape,
    params: &Params,
    rng: &mut Rng,
) -> Result<()> {
    let plan = &p.plan;
    let n_slots = plan.inputs.len();
    let n = plan.instances;
    let u = p.groups.first().and_then(|g| g.layers.last()).map(|(w, _)| w.as_tensor().dim(2)).transpose()?.unwrap_or(0);
    if h.len() < b * n_slots * d {
        candle_core::bail!("training: a layer's input does not fit its plan")
    }
    let LayerTape { out, runs, experts, logits, probs, .. } = lt;
    if runs.len() < plan.runs.len() {
        runs.resize_with(plan.runs.len(), RunTape::default);
    }
    let whole = plan.runs.len() == 1 && matches!(run_input(&plan.runs[0].slots, n_slots), RunInput::All);
    for (run, rt) in plan.runs.iter().zip(runs.iter_mut()) {
        let k = run.slots.len();
        let stack = &p.groups[run.group];
        let RunTape { rows, acts, pre, masks, wcat, .. } = rt;
        let (x, xr): (&[f32], Rows) = match run_input(&run.slots, n_slots) {
            RunInput::All => (h, Rows::packed(b * k, d)),
            RunInput::Slot(s) => (h, Rows { at: s * d, n: b, width: d, stride: n_slots * d }),
            RunInput::Gathered => {
                let rows = grow(rows, b * k * d);
                for r in 0..b {
                    for (j, &slot) in run.slots.iter().enumerate() {
                        let from = r * n_slots * d + slot * d;
                        rows[(r * k + j) * d..(r * k + j + 1) * d].copy_from_slice(&h[from..from + d]);
                    }
                }
                (&rows[..], Rows::packed(b * k, d))
            }
        };
        experts_forward(stack, x, xr, (acts, pre, masks), wcat, params, rng)?;
        if whole {
            continue;
        }
        let e = stack.count;
        let y = &acts[stack.layers.len() - 1];
        let all = grow(experts, b * n * u);
        for r in 0..b {
            for j in 0..k {
                let from = (r * k + j) * e * u;
                let to = (r * n + run.first + j * e) * u;
                all[to..to + e * u].copy_from_slice(&y[from..from + e * u]);
            }
        }
    }
    let all: &[f32] = if whole { &runs[0].acts[p.groups[plan.runs[0].group].layers.len() - 1] } else { experts };
    let all = &all[..b * n * u];
    let Some((w, bias)) = &p.gates else {
        grow(out, b * n * u).copy_from_slice(all);
        return Ok(());
    };
    let (w, bias) = (params.value(w)?, params.value(bias)?);
    let total = bias.len();
    let logits = grow(logits, b * n_slots * total);
    matmul(
        logits,
        View::packed(b * n_slots, total),
        h,
        View::packed(b * n_slots, d),
        w,
        View::packed(d, total),
        false,
    )?;
    bias_activate(logits, bias, Activation::Linear);
    let m_count = plan.mixes.len();
    let probs = grow(probs, b * plan.mixes.iter().map(|m| m.instances.len()).sum::<usize>());
    let out = grow(out, b * m_count * u);
    let column = |i: usize| p.layout.columns.as_ref().map_or(i, |c| c[i] as usize);
    let mut at = 0;
    for (mi, mix) in plan.mixes.iter().enumerate() {
        let e = mix.instances.len();
        let mine = &mut probs[at * b..(at + e) * b];
        for r in 0..b {
            let p_row = &mut mine[r * e..(r + 1) * e];
            for (j, v) in p_row.iter_mut().enumerate() {
                *v = logits[r * n_slots * total + column(at + j)];
            }
            gate_row(p_row, p.gating.temperature, p.gating.top_k);
            let o = &mut out[(r * m_count + mi) * u..(r * m_count + mi + 1) * u];
            o.fill(0.0);
            for (&wj, &inst) in p_row.iter().zip(&mix.instances) {
                let x = &all[(r * n + inst) * u..(r * n + inst + 1) * u];
                o.iter_mut().zip(x).for_each(|(o, &v)| *o += wj * v);
            }
        }
        at += e;
    }
    Ok(())
}

/// Every expert of `stack` on rows `x`, depth by depth (one GEMM per expert over
/// strided rows, then bias and activation), each depth's output kept in `acts`.
fn experts_forward(
    stack: &ExpertStack,
    x: &[f32],
    xr: Rows,
    (acts, pre, masks): (&mut Vec<Vec<f32>>, &mut Vec<Vec<f32>>, &mut Vec<Vec<f32>>),
    wcat: &mut Vec<f32>,
    params: &Params,
    rng: &mut Rng,
) -> Result<()> {
    let (e, r) = (stack.count, xr.n);
    let rate = stack.dropout;
    if acts.len() < stack.layers.len() {
        acts.resize_with(stack.layers.len(), Vec::new);
        pre.resize_with(stack.layers.len(), Vec::new);
        masks.resize_with(stack.layers.len(), Vec::new);
    }
    for (i, (w, bias)) in stack.layers.iter().enumerate() {
        let (_, k, m) = w.as_tensor().dims3()?;
        let (w, bias) = (params.value(w)?, params.value(bias)?);
        if w.len() != e * k * m || bias.len() != e * m {
            candle_core::bail!("training: an expert weight does not fit [{e}, {k}, {m}]")
        }
        let (done, rest) = acts.split_at_mut(i);
        let dst = grow(&mut rest[0], r * e * m);
        if i == 0 && e > 1 {
            // Every expert reads the same rows: one GEMM over the weights side by side.
            let wc = concat_experts(wcat, w, e, k, m)?;
            matmul(dst, View::packed(r, e * m), x, View::of(xr), wc, View::packed(k, e * m), false)?;
        } else {
            for ex in 0..e {
                // Depth 0 reads the input rows whole; deeper, expert ex's columns.
                let src = if i == 0 { View::of(xr) } else { View { at: ex * k, rows: r, cols: k, rs: e * k, cs: 1 } };
                let input: &[f32] = if i == 0 { x } else { &done[i - 1] };
                let dv = View { at: ex * m, rows: r, cols: m, rs: e * m, cs: 1 };
                matmul(dst, dv, input, src, &w[ex * k * m..(ex + 1) * k * m], View::packed(k, m), false)?;
            }
        }
        bias_activate_keep(dst, bias, stack.activation, &mut pre[i], rate > 0.0);
        if rate > 0.0 {
            // The graph drops depth 0 as `[R, E * m]` (this layout) and deeper depths
            // as `[E, R, m]`: the same draws, put where those units are here.
            let drawn = super::dropout_mask(rng, r * e * m, rate);
            let mask = grow(&mut masks[i], r * e * m);
            if i == 0 {
                mask.copy_from_slice(&drawn);
            } else {
                for ex in 0..e {
                    for row in 0..r {
                        let to = row * e * m + ex * m;
                        mask[to..to + m].copy_from_slice(&drawn[(ex * r + row) * m..(ex * r + row + 1) * m]);
                    }
                }
            }
            dst.iter_mut().zip(mask.iter()).for_each(|(v, &k)| *v *= k);
        }
    }
    Ok(())
}

/// One layer's backward: from the gradient of its output (`lt.dout`) to its
/// parameters' and, added into `dh`, its input's.
fn layer_backward(
    p: &LayerParams,
    h: &[f32],
    dh: &mut [f32],
    b: usize,
    d: usize,
    lt: &mut LayerTape,
    params: &mut Params,
) -> Result<()> {
    let plan = &p.plan;
    let n_slots = plan.inputs.len();
    let n = plan.instances;
    let u = p.groups.first().and_then(|g| g.layers.last()).map(|(w, _)| w.as_tensor().dim(2)).transpose()?.unwrap_or(0);
    let whole = plan.runs.len() == 1 && matches!(run_input(&plan.runs[0].slots, n_slots), RunInput::All);
    let LayerTape { dout, runs, experts, dexperts, dlogits, probs, .. } = lt;
    let dall = grow(dexperts, b * n * u);
    match &p.gates {
        None => dall.copy_from_slice(&dout[..b * n * u]),
        Some((w, bias)) => {
            dall.fill(0.0);
            let all: &[f32] =
                if whole { &runs[0].acts[p.groups[plan.runs[0].group].layers.len() - 1] } else { experts };
            let total = params.value(bias)?.len();
            let dl = grow(dlogits, b * n_slots * total);
            dl.fill(0.0);
            let column = |i: usize| p.layout.columns.as_ref().map_or(i, |c| c[i] as usize);
            let m_count = plan.mixes.len();
            let inv_t = 1.0 / p.gating.temperature;
            let mut dp = [0f32; 64];
            let mut at = 0;
            for (mi, mix) in plan.mixes.iter().enumerate() {
                let e = mix.instances.len();
                let mut dp_heap = Vec::new();
                let dp: &mut [f32] = if e <= dp.len() { &mut dp[..e] } else { grow(&mut dp_heap, e) };
                for r in 0..b {
                    let p_row = &probs[at * b + r * e..at * b + (r + 1) * e];
                    let g = &dout[(r * m_count + mi) * u..(r * m_count + mi + 1) * u];
                    let mut s = 0.0;
                    for ((dpj, &pj), &inst) in dp.iter_mut().zip(p_row).zip(&mix.instances) {
                        let row = (r * n + inst) * u;
                        let x = &all[row..row + u];
                        *dpj = dot(x, g);
                        s += pj * *dpj;
                        dall[row..row + u].iter_mut().zip(g).for_each(|(o, &c)| *o += pj * c);
                    }
                    for (j, (&dpj, &pj)) in dp.iter().zip(p_row).enumerate() {
                        dl[r * n_slots * total + column(at + j)] += pj * (dpj - s) * inv_t;
                    }
                }
                at += e;
            }
            {
                let (_, gb) = params.with_grad(bias)?;
                column_sums(gb, dl);
            }
            let (wv, gw) = params.with_grad(w)?;
            let hv = View::packed(b * n_slots, d);
            matmul(gw, View::packed(d, total), h, hv.t(), dl, View::packed(b * n_slots, total), true)?;
            matmul(dh, hv, dl, View::packed(b * n_slots, total), wv, View::packed(d, total).t(), true)?;
        }
    }
    for (run, rt) in plan.runs.iter().zip(runs.iter_mut()) {
        let k = run.slots.len();
        let stack = &p.groups[run.group];
        let e = stack.count;
        let RunTape { rows, drows, acts, pre, masks, d: [ping, pong], wcat, gcat } = rt;
        // The last depth's gradient, in the run's row layout.
        if whole {
            // The instance axis is the run's rows as they stand.
            std::mem::swap(dexperts, ping);
        } else {
            let dlast = grow(ping, b * k * e * u);
            for r in 0..b {
                for j in 0..k {
                    let to = (r * k + j) * e * u;
                    let from = (r * n + run.first + j * e) * u;
                    dlast[to..to + e * u].copy_from_slice(&dexperts[from..from + e * u]);
                }
            }
        }
        let input = run_input(&run.slots, n_slots);
        let (x, xr): (&[f32], Rows) = match input {
            RunInput::All => (h, Rows::packed(b * k, d)),
            RunInput::Slot(s) => (h, Rows { at: s * d, n: b, width: d, stride: n_slots * d }),
            RunInput::Gathered => (&rows[..], Rows::packed(b * k, d)),
        };
        let (dx, dxr): (&mut [f32], Rows) = match input {
            RunInput::All => (&mut *dh, Rows::packed(b * k, d)),
            RunInput::Slot(s) => (&mut *dh, Rows { at: s * d, n: b, width: d, stride: n_slots * d }),
            RunInput::Gathered => {
                let g = grow(drows, b * k * d);
                g.fill(0.0);
                (g, Rows::packed(b * k, d))
            }
        };
        experts_backward(stack, x, xr, (acts, pre, masks), ping, pong, (wcat, gcat), dx, dxr, params)?;
        if matches!(input, RunInput::Gathered) {
            for r in 0..b {
                for (j, &slot) in run.slots.iter().enumerate() {
                    let to = r * n_slots * d + slot * d;
                    let from = &drows[(r * k + j) * d..(r * k + j + 1) * d];
                    dh[to..to + d].iter_mut().zip(from).for_each(|(o, &g)| *o += g);
                }
            }
        }
    }
    Ok(())
}

/// The backward of [`experts_forward`]: `ping` holds the last depth's output gradient
/// `[R, E * u]`; the parameters' gradients are added to, and the input rows' gradient
/// added into `dx` at `dxr`.
#[allow(clippy::too_many_arguments)]
fn experts_backward(
    stack: &ExpertStack,
    x: &[f32],
    xr: Rows,
    (acts, pre, masks): (&[Vec<f32>], &[Vec<f32>], &[Vec<f32>]),
    ping: &mut Vec<f32>,
    pong: &mut Vec<f32>,
    (wcat, gcat): (&[f32], &mut Vec<f32>),
    dx: &mut [f32],
    dxr: Rows,
    params: &mut Params,
) -> Result<()> {
    let (e, r) = (stack.count, xr.n);
    for i in (0..stack.layers.len()).rev() {
        let (w, bias) = &stack.layers[i];
        let (_, k, m) = w.as_tensor().dims3()?;
        let dz = &mut ping[..r * e * m];
        let mask = (stack.dropout > 0.0).then(|| &masks[i][..r * e * m]);
        let pre = pre[i].get(..r * e * m).unwrap_or(&[]);
        activation_grad(dz, &acts[i][..r * e * m], pre, stack.activation, mask);
        {
            let (_, gb) = params.with_grad(bias)?;
            column_sums(gb, dz);
        }
        let (wv, gw) = params.with_grad(w)?;
        if i == 0 && e > 1 {
            // As the forward: one GEMM each over the weights side by side (`wcat`, kept
            // by the forward), the weight's gradient then put back in its `[E, k, m]`.
            let dzv = View::packed(r, e * m);
            let g = grow(gcat, k * e * m);
            matmul(g, View::packed(k, e * m), x, View::of(xr).t(), dz, dzv, false)?;
            for kk in 0..k {
                for ex in 0..e {
                    let from = &g[kk * e * m + ex * m..kk * e * m + (ex + 1) * m];
                    let to = &mut gw[ex * k * m + kk * m..ex * k * m + (kk + 1) * m];
                    to.iter_mut().zip(from).for_each(|(t, &f)| *t += f);
                }
            }
            matmul(dx, View::of(dxr), dz, dzv, &wcat[..k * e * m], View::packed(k, e * m).t(), true)?;
            continue;
        }
        if i > 0 {
            // Each expert writes its own columns of the depth below.
            grow(pong, r * e * k);
        }
        for ex in 0..e {
            let dzv = View { at: ex * m, rows: r, cols: m, rs: e * m, cs: 1 };
            let wt = View::packed(k, m).t();
            let (we, gwe) = (&wv[ex * k * m..(ex + 1) * k * m], &mut gw[ex * k * m..(ex + 1) * k * m]);
            if i == 0 {
                matmul(gwe, View::packed(k, m), x, View::of(xr).t(), dz, dzv, true)?;
                matmul(dx, View::of(dxr), dz, dzv, we, wt, true)?;
            } else {
                let src = View { at: ex * k, rows: r, cols: k, rs: e * k, cs: 1 };
                matmul(gwe, View::packed(k, m), &acts[i - 1], src.t(), dz, dzv, true)?;
                matmul(pong, src, dz, dzv, we, wt, false)?;
            }
        }
        if i > 0 {
            std::mem::swap(ping, pong);
        }
    }
    Ok(())
}

/// The input's gradient `dx` through the crosses to the features, as each categorical
/// feature's lookup (ids, a placeholder leaf) and its rows' gradient (`[B, dim]`, a
/// bag's `[B * len, dim]`), with the width of a row.
#[allow(clippy::type_complexity)]
fn input_grads(
    model: &CandleModel,
    batch: &Batch,
    x: &[f32],
    dx: &mut [f32],
    params: &Params,
    b: usize,
) -> Result<Vec<((Lookup, usize), Vec<f32>)>> {
    let ir = &model.ir;
    let width = ir.input_width;
    let mut offsets = Vec::with_capacity(ir.features.len());
    let mut at = 0;
    for f in &ir.features {
        offsets.push(at);
        at += match f.kind {
            FeatureKind::Categorical { dim, .. } => dim,
            FeatureKind::Dense { width, .. } => width,
        };
    }
    // Crosses, last first: each adds to its factors' columns.
    let mut cross_at: Vec<usize> = Vec::with_capacity(ir.crosses.len());
    for c in &ir.crosses {
        cross_at.push(at);
        at += c.dim;
    }
    for (c, &ca) in ir.crosses.iter().zip(&cross_at).rev() {
        let (oa, ob) = (offsets[c.a.0], offsets[c.b.0]);
        for r in 0..b {
            let (xr, row) = (&x[r * width..(r + 1) * width], r * width);
            for j in 0..c.dim {
                let g = dx[row + ca + j];
                dx[row + oa + j] += g * xr[ob + j];
                dx[row + ob + j] += g * xr[oa + j];
            }
        }
    }
    let mut out = Vec::new();
    let mut cat_i = 0;
    for ((f, table), &off) in ir.features.iter().zip(&model.embeddings).zip(&offsets) {
        let (FeatureKind::Categorical { dim, bag, .. }, Some(table)) = (&f.kind, table) else { continue };
        let dim = *dim;
        let ids = batch.cat[cat_i].flatten_all()?;
        let weights = batch.bags.get(cat_i).and_then(Option::as_ref);
        cat_i += 1;
        let var = params
            .index
            .get(&table.as_tensor().id())
            .copied()
            .ok_or_else(|| candle_core::Error::Msg("embedding table is not a parameter".into()))?;
        let rows = match (bag, weights) {
            (None, None) => {
                let mut g = Vec::with_capacity(b * dim);
                for r in 0..b {
                    g.extend_from_slice(&dx[r * width + off..r * width + off + dim]);
                }
                g
            }
            (Some(bag), Some(w)) => {
                let table_v = params.values[var];
                with_f32(w, "bag weights", |w| {
                    with_u32(&ids, "ids", |ids| {
                        let len = ids.len().checked_div(b).unwrap_or(0);
                        if w.len() != b * len {
                            candle_core::bail!("feature `{}`: batch and bag disagree", f.name)
                        }
                        let mut g = vec![0f32; b * len * dim];
                        let mut max = Vec::new();
                        for r in 0..b {
                            let dout = &dx[r * width + off..r * width + off + dim];
                            let (ids, w) = (&ids[r * len..(r + 1) * len], &w[r * len..(r + 1) * len]);
                            let g = &mut g[r * len * dim..(r + 1) * len * dim];
                            bag_grad(g, dout, ids, w, bag.pooling, table_v, dim, &mut max)?;
                        }
                        Ok(g)
                    })
                })?
            }
            _ => candle_core::bail!("feature `{}`: batch and bag disagree", f.name),
        };
        let leaf = Var::zeros(0, DType::F32, &model.device)?;
        let slots = weights.map(Tensor::flatten_all).transpose()?;
        out.push(((Lookup { var, ids, leaf, slots }, dim), rows));
    }
    Ok(out)
}

/// One bag row's slot gradients `g: [len, dim]` from its pooled gradient `dout`: a
/// slot's weight times it for sum and mean; for max, the pooled gradient to each slot
/// whose value is the maximum (ties all get it, as candle's max does), none for an
/// empty row.
#[allow(clippy::too_many_arguments)]
fn bag_grad(
    g: &mut [f32],
    dout: &[f32],
    ids: &[u32],
    w: &[f32],
    pooling: Pooling,
    table: &[f32],
    dim: usize,
    max: &mut Vec<f32>,
) -> Result<()> {
    let rows = table.len() / dim.max(1);
    match pooling {
        Pooling::Sum | Pooling::Mean => {
            for (s, &ws) in w.iter().enumerate() {
                g[s * dim..(s + 1) * dim].iter_mut().zip(dout).for_each(|(o, &d)| *o = ws * d);
            }
        }
        Pooling::Max => {
            const FAR: f32 = 1e9;
            let present = if w.is_empty() { 0.0 } else { w.iter().copied().fold(f32::NEG_INFINITY, f32::max) };
            if present == 0.0 {
                return Ok(());
            }
            let slot = |id: u32| -> Result<&[f32]> {
                let id = id as usize;
                if id >= rows {
                    candle_core::bail!("id {id} outside its table of {rows} rows")
                }
                Ok(&table[id * dim..(id + 1) * dim])
            };
            // Each component's maximum over the slots, padding pushed far down.
            let max = grow(max, dim);
            max.fill(f32::NEG_INFINITY);
            for (&id, &ws) in ids.iter().zip(w) {
                max.iter_mut().zip(slot(id)?).for_each(|(m, &e)| *m = m.max(e + (ws - 1.0) * FAR));
            }
            for (s, (&id, &ws)) in ids.iter().zip(w).enumerate() {
                for (j, &e) in slot(id)?.iter().enumerate() {
                    if e + (ws - 1.0) * FAR == max[j] {
                        g[s * dim + j] = dout[j] * present;
                    }
                }
            }
        }
    }
    Ok(())
}
