//! Evaluation on the CPU without autograd: the model's forward pass written straight
//! over the parameters' f32 buffers, into scratch buffers reused from call to call.
//!
//! candle's graph of the same pass (kept for training, for other devices and as this
//! module's reference) allocates a tensor per op, copies the depth-0 expert weights
//! into the GEMM's layout on every call, gathers each embedding into its own tensor and
//! concatenates them, and keeps a gradient node per op. Here the embeddings are
//! gathered straight into the layer's input rows, each expert depth is one GEMM per
//! expert over strided rows of one buffer (a batched GEMM: the weights are read where
//! they are) with the bias and activation one pass after it, and the gates' softmax and the
//! mixture are one pass over each row. The parameters are read under their storage
//! locks at call time, so the pass always sees the current weights.
//!
//! It computes the same function as [`CandleModel::forward_graph`] (evaluation: no
//! dropout, no gate noise); `tests/suite/infer.rs` holds every model in `models/` and
//! the layer kinds, poolings, activations and heads to that, to 1e-5.

use std::sync::Mutex;

use candle_core::{Storage, Tensor};

use super::strided::{matmul, Rows, View};
use super::{CandleModel, Output, Result};
use crate::ir::{Activation, FeatureKind, Pooling, Stream, TaskId, TaskOutput};

/// Per-thread scratch buffers, grown to the largest batch seen and then reused.
#[derive(Default)]
pub(crate) struct Scratch {
    /// The concatenated input `[B, input_width]`.
    x: Vec<f32>,
    /// Each layer's output stream `[B, slots * width]`.
    outputs: Vec<Vec<f32>>,
    /// A layer's working buffers.
    work: Work,
    /// Tower depths, ping-pong.
    tower: [Vec<f32>; 2],
}

/// A layer's working buffers.
#[derive(Default)]
struct Work {
    /// A run's input rows when its slots must be gathered, `[B * k, d]`.
    rows: Vec<f32>,
    /// Expert depths, ping-pong: `[B * k, E * d_i]`.
    hidden: [Vec<f32>; 2],
    /// All instances of a gated layer with several runs, `[B, N, u]`.
    experts: Vec<f32>,
    /// Gate logits `[B * S, sum E_g]`.
    logits: Vec<f32>,
    /// Each mix's weights `[B, E_m]`, mix after mix.
    probs: Vec<f32>,
    /// A depth-0 expert weight side by side, `[d, E * d_1]` (see [`concat_experts`]).
    wcat: Vec<f32>,
}

/// The scratch pool: one [`Scratch`] per thread running a pass at once.
#[derive(Default)]
pub(crate) struct Engine {
    pool: Mutex<Vec<Scratch>>,
}

/// `v` grown to at least `n` values; its first `n` (stale: the caller writes them).
pub(super) fn grow(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// Runs `f` on the values of a contiguous CPU tensor of element type `E`, under its
/// storage's read lock.
fn with_values<E: candle_core::WithDType, T>(t: &Tensor, what: &str, f: impl FnOnce(&[E]) -> Result<T>) -> Result<T> {
    let (storage, layout) = t.storage_and_layout();
    f(values_in(&storage, layout, what)?)
}

/// The values of a contiguous CPU tensor of element type `E`, from its storage (held
/// under its read lock by the caller) and layout.
pub(super) fn values_in<'s, E: candle_core::WithDType>(
    storage: &'s Storage,
    layout: &candle_core::Layout,
    what: &str,
) -> Result<&'s [E]> {
    let Storage::Cpu(cpu) = storage else { candle_core::bail!("{what} is not on the CPU") };
    let v = E::cpu_storage_as_slice(cpu)?;
    let Some((a, b)) = layout.contiguous_offsets() else { candle_core::bail!("{what} is not contiguous") };
    Ok(&v[a..b])
}

/// [`with_values`] for f32 values.
pub(super) fn with_f32<T>(t: &Tensor, what: &str, f: impl FnOnce(&[f32]) -> Result<T>) -> Result<T> {
    with_values(t, what, f)
}

/// [`with_values`] for u32 ids.
pub(super) fn with_u32<T>(t: &Tensor, what: &str, f: impl FnOnce(&[u32]) -> Result<T>) -> Result<T> {
    with_values(t, what, f)
}

/// `y = act(y + b)` on each row of `y` (rows of `b.len()` values), in one pass.
pub(super) fn bias_activate(y: &mut [f32], b: &[f32], a: Activation) {
    fn each(y: &mut [f32], b: &[f32], f: impl Fn(f32) -> f32) {
        for row in y.chunks_exact_mut(b.len().max(1)) {
            for (v, &bias) in row.iter_mut().zip(b) {
                *v = f(*v + bias);
            }
        }
    }
    match a {
        Activation::Relu => each(y, b, |x| x.max(0.0)),
        Activation::Tanh => each(y, b, f32::tanh),
        Activation::Sigmoid => each(y, b, |x| 1.0 / ((-x).exp() + 1.0)),
        // candle's tanh approximation; 0.797... = sqrt(2 / pi).
        Activation::Gelu => each(y, b, |x| 0.5 * x * (1.0 + (0.797_884_6f32 * x * (1.0 + 0.044715 * x * x)).tanh())),
        Activation::Linear => each(y, b, |x| x),
    }
}

/// `act(x W + b)` into packed rows `y: [n, m]`; `w` and `b` are read under their locks.
fn dense_into(y: &mut [f32], x: &[f32], xr: Rows, w: &Tensor, b: &Tensor, act: Activation) -> Result<()> {
    with_f32(b, "a bias", |b| {
        let y = &mut y[..xr.n * b.len()];
        with_f32(w, "a weight", |w| {
            let k = w.len() / b.len().max(1);
            matmul(y, View::packed(xr.n, b.len()), x, View::of(xr), w, View::packed(k, b.len()), false)
        })?;
        bias_activate(y, b, act);
        Ok(())
    })
}

/// Asks for the cache line of `v[at]` ahead of its use (a table row looked up a few rows
/// later); nothing when `at` is outside `v` or on other targets.
#[inline(always)]
pub(crate) fn prefetch(v: &[f32], at: usize) {
    #[cfg(target_arch = "x86_64")]
    if at < v.len() {
        // SAFETY: a prefetch reads nothing and cannot fault; the address is within `v`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(v.as_ptr().add(at).cast());
        }
    }
}

/// `log sigmoid(z) = -(max(-z, 0) + ln(1 + e^-|z|))`, as the graph computes it.
pub(super) fn log_sigmoid(z: f32) -> f32 {
    -((-z).max(0.0) + ((-z.abs()).exp() + 1.0).ln())
}

impl Engine {
    /// The model's outputs for `batch` in evaluation; with `gates`, each gated layer's
    /// mix weights as well (see [`Output::gates`]).
    pub(crate) fn forward(&self, model: &CandleModel, batch: &super::Batch, gates: bool) -> Result<Output> {
        let mut scratch = self.pool.lock().map(|mut p| p.pop()).unwrap_or(None).unwrap_or_default();
        let out = run(model, batch, gates, &mut scratch);
        if let Ok(mut pool) = self.pool.lock() {
            pool.push(scratch);
        }
        out
    }
}

fn run(model: &CandleModel, batch: &super::Batch, want_gates: bool, s: &mut Scratch) -> Result<Output> {
    let ir = &model.ir;
    let b = batch.size;
    let width = ir.input_width;
    let Scratch { x, outputs, work, tower: [ping, pong] } = s;
    inputs(model, batch, grow(x, b * width))?;
    if outputs.len() < ir.layers.len() {
        outputs.resize_with(ir.layers.len(), Vec::new);
    }
    let mut gates = Vec::new();
    let mut stream = Stream::Shared { width };
    for (li, (l, p)) in ir.layers.iter().zip(&model.layers).enumerate() {
        let (done, rest) = outputs.split_at_mut(li);
        let input: &[f32] = match done.last() {
            Some(prev) => prev,
            None => x,
        };
        let n_out = l.output.slots(ir.tasks.len()).len();
        let out = grow(&mut rest[0], b * n_out * l.output.width());
        let layer_gates = layer(p, input, b, stream.width(), out, work, want_gates)?;
        if let Some(g) = layer_gates {
            gates.push(g);
        }
        stream = l.output;
    }
    // Towers, each on its source stream's slot for the task.
    let mut heads: Vec<Option<Vec<f32>>> = vec![None; ir.tasks.len()];
    let mut widths = vec![1; ir.tasks.len()];
    for (t, (tower, task)) in model.towers.iter().zip(&ir.tasks).enumerate() {
        if !matches!(task.output, TaskOutput::Tower { .. }) {
            continue;
        }
        let (src, s_src): (&[f32], Stream) = match task.input {
            Some(i) => (&outputs[i], ir.layers[i].output),
            None => match ir.layers.len() {
                0 => (x, stream),
                n => (&outputs[n - 1], stream),
            },
        };
        let d = s_src.width();
        let n_slots = s_src.slots(ir.tasks.len()).len();
        let mut xr = Rows { at: s_src.task_slot(TaskId(t)) * d, n: b, width: d, stride: n_slots * d };
        let last = tower.layers.len().saturating_sub(1);
        let mut from_src = true;
        for (i, (w, bias)) in tower.layers.iter().enumerate() {
            let act = if i < last { tower.activation } else { Activation::Linear };
            let m = w.as_tensor().dim(1)?;
            let y = grow(pong, b * m);
            dense_into(y, if from_src { src } else { &ping[..] }, xr, w.as_tensor(), bias.as_tensor(), act)?;
            std::mem::swap(ping, pong);
            from_src = false;
            xr = Rows::packed(b, m);
        }
        if from_src {
            candle_core::bail!("task `{}`: its tower has no layers", task.name);
        }
        widths[t] = xr.width;
        heads[t] = Some(ping[..b * xr.width].to_vec());
    }
    // Products (ESMM): log p = log sigmoid(a) + log sigmoid(b).
    for (t, task) in ir.tasks.iter().enumerate() {
        if let TaskOutput::Product { factors: [fa, fb] } = task.output {
            let (Some(za), Some(zb)) = (&heads[fa.0], &heads[fb.0]) else {
                candle_core::bail!("product task `{}` lacks a factor", task.name)
            };
            heads[t] = Some(za.iter().zip(zb).map(|(&a, &b)| log_sigmoid(a) + log_sigmoid(b)).collect());
        }
    }
    let heads = heads
        .into_iter()
        .zip(widths)
        .map(|(h, k)| {
            let h = h.ok_or_else(|| candle_core::Error::Msg("a task has no output".into()))?;
            if k == 1 {
                Tensor::from_vec(h, b, &model.device)
            } else {
                Tensor::from_vec(h, (b, k), &model.device)
            }
        })
        .collect::<Result<_>>()?;
    Ok(Output { heads, gates, lookups: Vec::new(), balance: None, losses: Vec::new() })
}

/// The concatenated input rows `x: [B, input_width]`: each feature's embedding (a bag's
/// pooled) or dense values at its offset, then the crosses.
pub(super) fn inputs(model: &CandleModel, batch: &super::Batch, x: &mut [f32]) -> Result<()> {
    let ir = &model.ir;
    let (b, width) = (batch.size, ir.input_width);
    let mut offsets = Vec::with_capacity(ir.features.len());
    let (mut at, mut cat_i, mut dense_off) = (0, 0, 0);
    // Every piece's columns within the row, checked once: the slices below cannot fail.
    let pieces = ir.features.iter().map(|f| match f.kind {
        FeatureKind::Categorical { dim, .. } => dim,
        FeatureKind::Dense { width, .. } => width,
    });
    let total: usize = pieces.chain(ir.crosses.iter().map(|c| c.dim)).sum();
    if total != width || x.len() != b * width {
        candle_core::bail!("evaluation: the input's pieces are {total} wide, the model's input {width}")
    }
    for (f, table) in ir.features.iter().zip(&model.embeddings) {
        offsets.push(at);
        match (&f.kind, table) {
            (FeatureKind::Categorical { dim, bag, .. }, Some(table)) => {
                let dim = *dim;
                let ids =
                    batch.cat.get(cat_i).ok_or_else(|| candle_core::Error::Msg("batch lacks a feature".into()))?;
                let weights = batch.bags.get(cat_i).and_then(Option::as_ref);
                cat_i += 1;
                with_f32(table.as_tensor(), "an embedding table", |e| {
                    let rows = e.len() / dim.max(1);
                    let row = |id: u32| -> Result<&[f32]> {
                        let id = id as usize;
                        if id >= rows {
                            candle_core::bail!("feature `{}`: id {id} outside its table of {rows} rows", f.name)
                        }
                        Ok(&e[id * dim..(id + 1) * dim])
                    };
                    with_u32(ids, "ids", |ids| match (bag, weights) {
                        (None, None) => {
                            if ids.len() != b {
                                candle_core::bail!("feature `{}`: {} ids for {b} rows", f.name, ids.len())
                            }
                            for (r, &id) in ids.iter().enumerate() {
                                // The rows are scattered over the table: ask for the
                                // one 8 rows ahead while this one is copied.
                                if let Some(&ahead) = ids.get(r + 8) {
                                    prefetch(e, ahead as usize * dim);
                                }
                                x[r * width + at..r * width + at + dim].copy_from_slice(row(id)?);
                            }
                            Ok(())
                        }
                        (Some(bag), Some(w)) => with_f32(w, "bag weights", |w| {
                            let len = ids.len().checked_div(b).unwrap_or(0);
                            if ids.len() != b * len || w.len() != ids.len() {
                                candle_core::bail!("feature `{}`: batch and bag disagree", f.name)
                            }
                            for r in 0..b {
                                let out = &mut x[r * width + at..r * width + at + dim];
                                let (ids, w) = (&ids[r * len..(r + 1) * len], &w[r * len..(r + 1) * len]);
                                pool_row(out, ids, w, bag.pooling, &row)?;
                            }
                            Ok(())
                        }),
                        _ => candle_core::bail!("feature `{}`: batch and bag disagree", f.name),
                    })
                })?;
                at += dim;
            }
            (FeatureKind::Dense { width: w, .. }, _) => {
                let dense =
                    batch.dense.as_ref().ok_or_else(|| candle_core::Error::Msg("batch has no dense values".into()))?;
                let dw = dense.dim(1)?;
                with_f32(dense, "dense values", |d| {
                    if d.len() != b * dw || dense_off + w > dw {
                        candle_core::bail!("feature `{}`: the batch's dense values do not fit", f.name)
                    }
                    for r in 0..b {
                        x[r * width + at..r * width + at + w]
                            .copy_from_slice(&d[r * dw + dense_off..r * dw + dense_off + w]);
                    }
                    Ok(())
                })?;
                dense_off += w;
                at += w;
            }
            _ => candle_core::bail!("feature `{}`: embedding table missing", f.name),
        }
    }
    for c in &ir.crosses {
        let (Some(&oa), Some(&ob)) = (offsets.get(c.a.0), offsets.get(c.b.0)) else {
            candle_core::bail!("cross `{}`: a factor is not a feature", c.name)
        };
        if oa + c.dim > width || ob + c.dim > width {
            candle_core::bail!("cross `{}`: its factors are narrower than {}", c.name, c.dim)
        }
        for r in 0..b {
            let row = &mut x[r * width..(r + 1) * width];
            for j in 0..c.dim {
                row[at + j] = row[oa + j] * row[ob + j];
            }
        }
        at += c.dim;
    }
    Ok(())
}

/// One row of a bag: `sum_s w_s e_s` (sum, mean: the weights carry the division), or
/// for max the largest of each component over the present slots (weight 1), zeros when
/// none is; as the graph computes it.
pub(super) fn pool_row<'e>(
    out: &mut [f32],
    ids: &[u32],
    w: &[f32],
    pooling: Pooling,
    row: &impl Fn(u32) -> Result<&'e [f32]>,
) -> Result<()> {
    match pooling {
        Pooling::Sum | Pooling::Mean => {
            out.fill(0.0);
            for (&id, &wi) in ids.iter().zip(w) {
                for (o, &e) in out.iter_mut().zip(row(id)?) {
                    *o += wi * e;
                }
            }
        }
        Pooling::Max => {
            const FAR: f32 = 1e9;
            out.fill(f32::NEG_INFINITY);
            for (&id, &wi) in ids.iter().zip(w) {
                for (o, &e) in out.iter_mut().zip(row(id)?) {
                    *o = o.max(e + (wi - 1.0) * FAR);
                }
            }
            let present = w.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let present = if w.is_empty() { 0.0 } else { present };
            out.iter_mut().for_each(|o| *o = if present == 0.0 { 0.0 } else { *o * present });
        }
    }
    Ok(())
}

/// One layer on its input stream `h: [B, S * d]` into `out: [B, S' * u]`; returns its
/// mixes' weights `[B, E_m]` when it is gated (empty unless `want_gates`).
fn layer(
    p: &super::LayerParams,
    h: &[f32],
    b: usize,
    d: usize,
    out: &mut [f32],
    work: &mut Work,
    want_gates: bool,
) -> Result<Option<Vec<Tensor>>> {
    let Work { rows, hidden: [ping, pong], experts: all, logits, probs, wcat } = work;
    let plan = &p.plan;
    let n_slots = plan.inputs.len();
    let n = plan.instances;
    let u = p.expert_width()?;
    if h.len() < b * n_slots * d || out.len() < b * plan.outputs.len() * u {
        candle_core::bail!("evaluation: a layer's streams do not fit its plan")
    }
    // With one run over every slot in order, its `[B*S, E*u]` output is the instance
    // axis `[B, N, u]` as it stands; otherwise each run's is copied to its instances
    // (into the output itself when the layer is ungated).
    let whole = plan.runs.len() == 1 && plan.runs[0].slots.iter().copied().eq(0..n_slots);
    let gated = p.gates.is_some();
    let mut held = Held::Direct;
    for run in &plan.runs {
        let k = run.slots.len();
        let stack = &p.groups[run.group];
        let (x, xr) = run_rows(h, &run.slots, n_slots, b, d, rows);
        let direct = whole && !gated;
        held = experts(stack, x, xr, ping, pong, wcat, if direct { Some(&mut *out) } else { None })?;
        if whole {
            continue;
        }
        let e = stack.count;
        let y: &[f32] = if held == Held::Ping { ping } else { pong };
        let to_buf: &mut [f32] = if gated { grow(all, b * n * u) } else { &mut *out };
        for r in 0..b {
            for j in 0..k {
                let from = (r * k + j) * e * u;
                let to = (r * n + run.first + j * e) * u;
                to_buf[to..to + e * u].copy_from_slice(&y[from..from + e * u]);
            }
        }
    }
    let Some((w, bias)) = &p.gates else { return Ok(None) };
    let experts: &[f32] = match (whole, held) {
        (true, Held::Ping) => ping,
        (true, Held::Pong) => pong,
        _ => all,
    };
    let experts = &experts[..b * n * u];
    // All gates on all slots: [B*S, d] x [d, sum E_g] + bias, i.e. [B, S * sum E_g].
    let total = w.as_tensor().dim(1)?;
    let logits = grow(logits, b * n_slots * total);
    dense_into(logits, h, Rows::packed(b * n_slots, d), w.as_tensor(), bias.as_tensor(), Activation::Linear)?;
    let widths: Vec<usize> = plan.mixes.iter().map(|m| m.instances.len()).collect();
    let probs = grow(probs, b * widths.iter().sum::<usize>());
    mix_rows(p, (logits, total), experts, b, u, probs, out);
    let m_count = plan.mixes.len();
    if !want_gates {
        return Ok(Some(Vec::new()));
    }
    let mut gates = Vec::with_capacity(m_count);
    let mut at = 0;
    for e in widths {
        gates.push(Tensor::from_slice(&probs[at * b..(at + e) * b], (b, e), &candle_core::Device::Cpu)?);
        at += e;
    }
    Ok(Some(gates))
}

/// A run's input rows over `slots` of the stream `h` (`[B, S * d]`): the stream as it
/// stands when the run covers every slot in order (`[B * S, d]`), one slot's rows at
/// their stride, or else the slots gathered into `rows` (`[B * k, d]`).
pub(super) fn run_rows<'a>(
    h: &'a [f32],
    slots: &[usize],
    n_slots: usize,
    b: usize,
    d: usize,
    rows: &'a mut Vec<f32>,
) -> (&'a [f32], Rows) {
    let k = slots.len();
    if k == n_slots && slots.iter().copied().eq(0..n_slots) {
        return (h, Rows::packed(b * k, d));
    }
    if k == 1 {
        return (h, Rows { at: slots[0] * d, n: b, width: d, stride: n_slots * d });
    }
    let rows = grow(rows, b * k * d);
    for r in 0..b {
        for (j, &slot) in slots.iter().enumerate() {
            let from = r * n_slots * d + slot * d;
            rows[(r * k + j) * d..(r * k + j + 1) * d].copy_from_slice(&h[from..from + d]);
        }
    }
    (&rows[..], Rows::packed(b * k, d))
}

/// Each row's mixes of a gated layer: the logit columns a mix reads (its layout's, or
/// all in order) of `logits` (`[B * S, total]`) through [`gate_row`] into its weights
/// `probs` (`[B, E_m]`, mix after mix), and the sum of the instances it mixes (`all:
/// [B, N, u]`) so weighted into its slot of `out` (`[B, M, u]`).
pub(super) fn mix_rows(
    p: &super::LayerParams,
    (logits, total): (&[f32], usize),
    all: &[f32],
    b: usize,
    u: usize,
    probs: &mut [f32],
    out: &mut [f32],
) {
    let plan = &p.plan;
    let (n_slots, n, m_count) = (plan.inputs.len(), plan.instances, plan.mixes.len());
    let column = |i: usize| p.layout.columns.as_ref().map_or(i, |c| c[i] as usize);
    let mut at = 0;
    for (mi, mix) in plan.mixes.iter().enumerate() {
        let e = mix.instances.len();
        let mine = &mut probs[at * b..(at + e) * b]; // [B, E_m]
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
}

/// One mix's logits into its weights: `/ temperature`, top-k's mask (the k largest
/// kept, ties with the k-th included), softmax; as the graph computes them.
pub(super) fn gate_row(row: &mut [f32], temperature: f32, top_k: Option<usize>) {
    if temperature != 1.0 {
        row.iter_mut().for_each(|x| *x /= temperature);
    }
    if let Some(k) = top_k.filter(|&k| k >= 1 && k <= row.len()) {
        // The k-th largest, by a partial selection over a copy (E is small).
        let mut sorted = [0f32; 64];
        let kth = if row.len() <= sorted.len() {
            let s = &mut sorted[..row.len()];
            s.copy_from_slice(row);
            s.sort_unstable_by(|a, b| b.total_cmp(a));
            s[k - 1]
        } else {
            let mut s = row.to_vec();
            s.sort_unstable_by(|a, b| b.total_cmp(a));
            s[k - 1]
        };
        row.iter_mut().for_each(|x| {
            if *x < kth {
                *x -= 1e9;
            }
        });
    }
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    row.iter_mut().for_each(|x| {
        *x = (*x - max).exp();
        sum += *x;
    });
    row.iter_mut().for_each(|x| *x /= sum);
}

/// The fused weight `[E, k, m]` of `w` as one matrix `[k, E * m]`, the experts side by
/// side (expert `ex`'s columns at `ex * m`), in `buf`.
pub(super) fn concat_experts<'b>(buf: &'b mut Vec<f32>, w: &[f32], e: usize, k: usize, m: usize) -> Result<&'b [f32]> {
    if w.len() != e * k * m {
        candle_core::bail!("an expert weight of {} values for [{e}, {k}, {m}]", w.len())
    }
    let out = grow(buf, e * k * m);
    for i in 0..k {
        for ex in 0..e {
            out[i * e * m + ex * m..i * e * m + (ex + 1) * m]
                .copy_from_slice(&w[ex * k * m + i * m..ex * k * m + (i + 1) * m]);
        }
    }
    Ok(out)
}

/// One expert depth's GEMMs into `dst: [R, E * m]`, the fused weight `w: [E, k, m]` read
/// where it is. `rows`: depth 0's input rows, which every expert reads whole, so one GEMM
/// over the weights side by side (copied into `wcat`) packs them once, not once per
/// expert; None: a deeper depth, expert `ex` reading its own columns of `src: [R, E * k]`.
pub(super) fn expert_gemms(
    dst: &mut [f32],
    src: &[f32],
    rows: Option<Rows>,
    w: &[f32],
    (e, k, m): (usize, usize, usize),
    wcat: &mut Vec<f32>,
) -> Result<()> {
    let r = dst.len() / (e * m).max(1);
    if let (Some(xr), true) = (rows, e > 1) {
        let wc = concat_experts(wcat, w, e, k, m)?;
        return matmul(dst, View::packed(r, e * m), src, View::of(xr), wc, View::packed(k, e * m), false);
    }
    if w.len() != e * k * m {
        candle_core::bail!("an expert weight of {} values for [{e}, {k}, {m}]", w.len())
    }
    for ex in 0..e {
        let xr = rows.unwrap_or(Rows { at: ex * k, n: r, width: k, stride: e * k });
        let yr = Rows { at: ex * m, n: r, width: m, stride: e * m };
        matmul(dst, View::of(yr), src, View::of(xr), &w[ex * k * m..(ex + 1) * k * m], View::packed(k, m), false)?;
    }
    Ok(())
}

/// Where [`experts`] left its last depth.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Held {
    /// In the `direct` buffer it was given.
    Direct,
    Ping,
    Pong,
}

/// Every expert of `stack` on rows `x`: depth by depth, each one GEMM per expert over
/// strided rows (`[R, E * d_i]` -> `[R, E * d_{i+1}]`, a batched GEMM reading the fused
/// weight `[E, d_i, d_{i+1}]` where it is), then the bias and the activation in one
/// pass. The last depth goes to `direct` when given, else to `ping` or `pong`.
fn experts(
    stack: &super::ExpertStack,
    x: &[f32],
    xr: Rows,
    ping: &mut Vec<f32>,
    pong: &mut Vec<f32>,
    wcat: &mut Vec<f32>,
    mut direct: Option<&mut [f32]>,
) -> Result<Held> {
    let e = stack.count;
    let r = xr.n;
    let depths = stack.layers.len();
    let mut held = Held::Direct;
    for (i, (w, bias)) in stack.layers.iter().enumerate() {
        let (_, k, m) = w.as_tensor().dims3()?;
        let to_direct = i + 1 == depths && direct.is_some();
        let (src, src_rows, dst, now): (&[f32], Option<Rows>, &mut [f32], Held) = match (to_direct, held) {
            (true, Held::Direct) => (x, Some(xr), direct.as_deref_mut().unwrap_or_default(), Held::Direct),
            (true, Held::Ping) => (&ping[..], None, direct.as_deref_mut().unwrap_or_default(), Held::Direct),
            (true, Held::Pong) => (&pong[..], None, direct.as_deref_mut().unwrap_or_default(), Held::Direct),
            (false, Held::Direct) => (x, Some(xr), grow(ping, r * e * m), Held::Ping),
            (false, Held::Ping) => (&ping[..], None, grow(pong, r * e * m), Held::Pong),
            (false, Held::Pong) => (&pong[..], None, grow(ping, r * e * m), Held::Ping),
        };
        if dst.len() < r * e * m {
            candle_core::bail!("evaluation: an expert output of {} for [{r}, {e} x {m}]", dst.len())
        }
        let dst = &mut dst[..r * e * m];
        with_f32(w.as_tensor(), "an expert weight", |w| expert_gemms(dst, src, src_rows, w, (e, k, m), wcat))?;
        // The fused bias `[E, d]` is each row's `E * d` values in order.
        with_f32(bias.as_tensor(), "an expert bias", |b| {
            if b.len() != e * m {
                candle_core::bail!("evaluation: an expert bias of {} for {e} x {m}", b.len())
            }
            bias_activate(dst, b, stack.activation);
            Ok(())
        })?;
        held = now;
    }
    Ok(held)
}
