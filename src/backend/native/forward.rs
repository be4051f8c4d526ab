//! Each primitive's forward, once: `run(op, operands) -> result` over row-major f32
//! buffers (`B` rows of each shape's row elements).

use super::gemm::{matmul, Mat};
use super::{Arg, NativeError, Result};
use crate::program::{LossKind, Op, PoolMode, Reduction, Shape, Unary};
use crate::rng::Rng;

/// The tanh-approximation GELU (candle's).
pub(super) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + (0.797_884_6f32 * x * (1.0 + 0.044715 * x * x)).tanh())
}

pub(super) fn sigmoid(x: f32) -> f32 {
    1.0 / ((-x).exp() + 1.0)
}

/// `ln(1 + e^x) = max(x, 0) + ln(1 + e^-|x|)`, finite for any finite x.
pub(super) fn softplus(x: f32) -> f32 {
    x.max(0.0) + ((-x.abs()).exp() + 1.0).ln()
}

/// `dst` holding `n` values: left as it is when it does (its values are stale: the
/// caller overwrites them all), else cleared and zero-filled to `n`.
fn sized(dst: &mut Vec<f32>, n: usize) {
    if dst.len() != n {
        dst.clear();
        dst.resize(n, 0.0);
    }
}

/// An activation fused into a linear op's kernel (see `program::fuse`).
pub(super) type Act = Option<Unary>;

/// `y = act(y + bias)` on each row of `width` values, in one pass.
fn bias_activate(y: &mut [f32], bias: Option<&[f32]>, width: usize, act: Act) {
    fn each(y: &mut [f32], bias: Option<&[f32]>, width: usize, f: impl Fn(f32) -> f32) {
        match bias {
            Some(b) => {
                y.chunks_exact_mut(width.max(1)).for_each(|r| r.iter_mut().zip(b).for_each(|(v, b)| *v = f(*v + b)))
            }
            None => y.iter_mut().for_each(|v| *v = f(*v)),
        }
    }
    match act {
        None if bias.is_none() => {}
        None => each(y, bias, width, |v| v),
        Some(Unary::Relu) => each(y, bias, width, |v| v.max(0.0)),
        Some(Unary::Tanh) => each(y, bias, width, f32::tanh),
        Some(Unary::Sigmoid) => each(y, bias, width, sigmoid),
        Some(Unary::Gelu) => each(y, bias, width, gelu),
        Some(Unary::Softplus) => each(y, bias, width, softplus),
        Some(Unary::LogSigmoid) => each(y, bias, width, |v| -softplus(-v)),
        Some(Unary::Exp) => each(y, bias, width, f32::exp),
    }
}

/// `dst` replaced by `values`, its allocation kept.
fn fill(dst: &mut Vec<f32>, values: impl Iterator<Item = f32>) {
    dst.clear();
    dst.extend(values);
}

/// Where an op's forward writes: its result (whose earlier contents are dropped and
/// whose allocation is reused from run to run), its node's working values, and the
/// activation fused into it.
pub(super) struct Out<'a> {
    pub shape: &'a Shape,
    pub values: &'a mut Vec<f32>,
    pub scratch: &'a mut Vec<f32>,
    pub act: Act,
}

/// The result of `op` on `args` at batch size `b`, written into `o`.
pub(super) fn run(op: &Op, args: &[Arg], shapes: &[&Shape], o: Out, b: usize, rng: Option<&mut Rng>) -> Result<()> {
    let Out { shape: out, values: dst, scratch, act } = o;
    let f = |i: usize| args[i].f32(op.name());
    let n_out = out.elems(b);
    match op {
        Op::Gather => gather(dst, f(0)?, args[1], shapes[0].last())?,
        Op::Pool { mode } => pool(dst, f(0)?, f(1)?, *mode, shapes[1].last(), out.last()),
        Op::Slice { at, len } => {
            let n = shapes[0].last();
            fill(dst, f(0)?.chunks_exact(n.max(1)).flat_map(|r| &r[*at..at + len]).copied())
        }
        Op::Concat => concat(dst, args, shapes, b)?,
        Op::Take { indices } => take(dst, f(0)?, indices, shapes[0], b),
        Op::Reshape { .. } => fill(dst, f(0)?.iter().copied()),
        Op::Expand { count } => {
            let d = shapes[0].last();
            fill(dst, f(0)?.chunks_exact(d.max(1)).flat_map(|r| std::iter::repeat_n(r, *count).flatten()).copied())
        }
        Op::Add => fill(dst, f(0)?.iter().zip(f(1)?).map(|(x, y)| x + y)),
        Op::Mul => fill(dst, f(0)?.iter().zip(f(1)?).map(|(x, y)| x * y)),
        Op::Scale { factor } => fill(dst, f(0)?.iter().map(|x| x * factor)),
        Op::AddScalar { value } => fill(dst, f(0)?.iter().map(|x| x + value)),
        Op::Unary(u) => unary_into(dst, *u, f(0)?),
        Op::Reduce { over: Reduction::SumLast } => {
            let n = shapes[0].last();
            fill(dst, f(0)?.chunks_exact(n.max(1)).map(|r| r.iter().sum::<f32>()))
        }
        Op::Reduce { over: Reduction::MeanBatch } => {
            let x = f(0)?;
            fill(dst, std::iter::once(x.iter().sum::<f32>() / x.len().max(1) as f32))
        }
        Op::Linear => {
            let (x, w) = (f(0)?, f(1)?);
            let (i, o) = (shapes[1].dims[0], shapes[1].dims[1]);
            let rows = n_out / o.max(1);
            let bias = if args.len() == 3 { Some(f(2)?) } else { None };
            sized(dst, rows * o);
            matmul(dst, Mat::rows(0, rows, o, o), x, Mat::rows(0, rows, i, i), w, Mat::rows(0, i, o, o), false)?;
            bias_activate(dst, bias, o, act);
        }
        Op::ExpertLinear => expert_linear(dst, scratch, f(0)?, f(1)?, f(2)?, shapes[1], act)?,
        Op::GroupedLinear => {
            grouped_linear(dst, f(0)?, f(1)?, shapes[1], n_out)?;
            bias_activate(dst, Some(f(2)?), shapes[1].dims[0] * shapes[1].dims[2], act);
        }
        Op::DropoutMask { .. } | Op::Normal { .. } if rng.is_none() => {
            // No random stream: every unit kept, no noise.
            let keep = if matches!(op, Op::DropoutMask { .. }) { 1.0 } else { 0.0 };
            fill(dst, std::iter::repeat_n(keep, n_out));
        }
        Op::DropoutMask { rate, draw, .. } => {
            let rng = rng.ok_or_else(|| NativeError::Kernel("dropout needs the step's random stream".into()))?;
            let drawn = crate::rng::dropout_mask(rng, n_out, *rate);
            let full: Vec<usize> = std::iter::once(b).chain(out.dims.iter().copied()).collect();
            *dst = if draw.is_empty() { drawn } else { place(&drawn, &full, draw) };
        }
        Op::Normal { .. } => {
            let rng = rng.ok_or_else(|| NativeError::Kernel("gate noise needs the step's random stream".into()))?;
            fill(dst, (0..n_out).map(|_| rng.normal() as f32));
        }
        Op::TopKMask { segments, k } => {
            fill(dst, f(0)?.iter().copied());
            for_segments(dst, segments, |s| top_k(s, *k));
        }
        Op::Softmax { segments } => {
            fill(dst, f(0)?.iter().copied());
            for_segments(dst, segments, softmax);
        }
        Op::Mix { sets } => mix(dst, f(0)?, f(1)?, sets, shapes[1], b),
        Op::Loss { kind } => fill(dst, std::iter::once(loss(*kind, f(0)?, f(1)?, f(2)?, shapes[0].last(), b))),
        Op::Balance { segments, weight } => {
            fill(dst, std::iter::once(super::balance::importance(f(0)?, segments, *weight, None).0))
        }
        Op::LoadBalance { segments, k, weight } => {
            let l = super::balance::load([f(0)?, f(1)?, f(2)?], segments, *k, *weight, None);
            fill(dst, std::iter::once(l.value))
        }
    }
    Ok(())
}

/// `dst = u(x)`, elementwise.
pub(super) fn unary_into(dst: &mut Vec<f32>, u: Unary, x: &[f32]) {
    // One loop per function, so that each compiles to its own vectorisable pass.
    match u {
        Unary::Relu => fill(dst, x.iter().map(|&v| v.max(0.0))),
        Unary::Tanh => fill(dst, x.iter().map(|&v| v.tanh())),
        Unary::Sigmoid => fill(dst, x.iter().map(|&v| sigmoid(v))),
        Unary::Gelu => fill(dst, x.iter().map(|&v| gelu(v))),
        Unary::Softplus => fill(dst, x.iter().map(|&v| softplus(v))),
        Unary::LogSigmoid => fill(dst, x.iter().map(|&v| -softplus(-v))),
        Unary::Exp => fill(dst, x.iter().map(|&v| v.exp())),
    }
}

/// Each row of every operand, side by side: `[B, sum a_i, ..]`; a deferred gather's
/// table rows copied straight in.
fn concat(y: &mut Vec<f32>, xs: &[Arg], shapes: &[&Shape], b: usize) -> Result<()> {
    let total: usize = shapes.iter().map(|s| s.row_elems()).sum();
    sized(y, b * total);
    let mut at = 0;
    for (x, s) in xs.iter().zip(shapes) {
        let w = s.row_elems();
        let rows = y.chunks_exact_mut(total.max(1));
        match *x {
            Arg::F32(x) => {
                rows.zip(x.chunks_exact(w.max(1))).for_each(|(dst, src)| dst[at..at + w].copy_from_slice(src))
            }
            Arg::Rows { table, ids, dim, name } => {
                for (dst, row) in rows.zip(table_rows(table, ids, dim)) {
                    let row = row.map_err(|e| NativeError::Kernel(format!("`{name}`: {e}")))?;
                    dst[at..at + w].copy_from_slice(row);
                }
            }
            Arg::U32(_) => return Err(NativeError::Kernel("concat: ids among its operands".into())),
        }
        at += w;
    }
    Ok(())
}

/// Entries `indices` of the first axis after the batch.
fn take(y: &mut Vec<f32>, x: &[f32], indices: &[usize], shape: &Shape, b: usize) {
    let inner = shape.dims[1..].iter().product::<usize>();
    let row = shape.row_elems();
    y.clear();
    for r in 0..b {
        for &i in indices {
            y.extend_from_slice(&x[r * row + i * inner..r * row + (i + 1) * inner]);
        }
    }
}

/// Values drawn in axis order `draw` of a tensor of shape `full`, put in its layout.
fn place(drawn: &[f32], full: &[usize], draw: &[usize]) -> Vec<f32> {
    // Row-major strides of the layout, taken in draw order.
    let mut strides = vec![1; full.len()];
    for i in (0..full.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * full[i + 1];
    }
    let (sizes, steps): (Vec<usize>, Vec<usize>) = draw.iter().map(|&a| (full[a], strides[a])).unzip();
    let mut out = vec![0f32; drawn.len()];
    let mut index = vec![0usize; sizes.len()];
    for &v in drawn {
        out[index.iter().zip(&steps).map(|(i, s)| i * s).sum::<usize>()] = v;
        // The next multi-index in draw order (the last axis fastest).
        for a in (0..index.len()).rev() {
            index[a] += 1;
            if index[a] < sizes[a] {
                break;
            }
            index[a] = 0;
        }
    }
    out
}

fn gather(y: &mut Vec<f32>, table: &[f32], ids: Arg, d: usize) -> Result<()> {
    let Arg::U32(ids) = ids else { return Err(NativeError::Kernel("gather: ids must be u32".into())) };
    y.clear();
    for row in table_rows(table, ids, d) {
        y.extend_from_slice(row?);
    }
    Ok(())
}

/// Rows `ids` of `table` (`d` values a row), in order, each checked to lie in the
/// table. The rows are scattered over it: each step asks for the row 8 ids ahead.
fn table_rows<'t>(table: &'t [f32], ids: &'t [u32], d: usize) -> impl Iterator<Item = Result<&'t [f32]>> + 't {
    let rows = table.len() / d.max(1);
    ids.iter().enumerate().map(move |(r, &i)| {
        let i = i as usize;
        if i >= rows {
            return Err(NativeError::Kernel(format!("id {i} outside its table of {rows} rows")));
        }
        if let Some(&ahead) = ids.get(r + 8) {
            prefetch(table, ahead as usize * d);
        }
        Ok(&table[i * d..(i + 1) * d])
    })
}

/// Asks for the cache line of `v[at]` ahead of its use; nothing when `at` is outside
/// `v` or on other targets.
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

fn pool(y: &mut Vec<f32>, rows: &[f32], w: &[f32], mode: PoolMode, len: usize, d: usize) {
    y.clear();
    for (e, w) in rows.chunks_exact((len * d).max(1)).zip(w.chunks_exact(len.max(1))) {
        let mut acc = vec![0f32; d];
        match mode {
            PoolMode::WeightedSum => {
                for (row, &wl) in e.chunks_exact(d.max(1)).zip(w) {
                    acc.iter_mut().zip(row).for_each(|(a, &v)| *a += wl * v);
                }
            }
            PoolMode::Max => {
                let mut any = false;
                for (row, &wl) in e.chunks_exact(d.max(1)).zip(w) {
                    if wl > 0.0 {
                        acc.iter_mut().zip(row).for_each(|(a, &v)| *a = if any { a.max(v) } else { v });
                        any = true;
                    }
                }
            }
        }
        y.extend_from_slice(&acc);
    }
}

/// The experts' weights `[E, i, o]` side by side as one matrix `[i, E * o]`.
pub(super) fn side_by_side(dst: &mut Vec<f32>, w: &[f32], e: usize, i: usize, o: usize) {
    dst.clear();
    for j in 0..i {
        for k in 0..e {
            dst.extend_from_slice(&w[(k * i + j) * o..][..o]);
        }
    }
}

/// `expert_linear`: `x: [R, i]` through every expert into `[R, E, o]`, as one GEMM
/// over the experts' weights side by side (kept in `packed` for the VJP): a GEMM
/// per expert of `o` columns runs well below one of `E * o`.
fn expert_linear(
    y: &mut Vec<f32>,
    packed: &mut Vec<f32>,
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    ws: &Shape,
    act: Act,
) -> Result<()> {
    let n_out = x.len() / ws.dims[1].max(1) * ws.dims[0] * ws.dims[2];
    let (e, i, o) = (ws.dims[0], ws.dims[1], ws.dims[2]);
    let (rows, n) = (n_out / (e * o).max(1), e * o);
    side_by_side(packed, w, e, i, o);
    sized(y, rows * n);
    matmul(y, Mat::rows(0, rows, n, n), x, Mat::rows(0, rows, i, i), packed, Mat::rows(0, i, n, n), false)?;
    bias_activate(y, Some(bias), n, act);
    Ok(())
}

/// `grouped_linear` (`x: [R, E, i]`, expert e on its own rows) into `[R, E, o]`: one
/// GEMM per expert over strided rows (each has its own input, so no one GEMM holds them).
fn grouped_linear(y: &mut Vec<f32>, x: &[f32], w: &[f32], ws: &Shape, n_out: usize) -> Result<()> {
    let (e, i, o) = (ws.dims[0], ws.dims[1], ws.dims[2]);
    let rows = n_out / (e * o).max(1);
    sized(y, rows * e * o);
    for k in 0..e {
        let xm = Mat::rows(k * i, rows, i, e * i);
        matmul(y, Mat::rows(k * o, rows, o, e * o), x, xm, w, Mat::rows(k * i * o, i, o, o), false)?;
    }
    Ok(())
}

/// `f` on each segment of each row of `y` (rows of `sum segments` values).
pub(super) fn for_segments(y: &mut [f32], segments: &[usize], mut f: impl FnMut(&mut [f32])) {
    let width: usize = segments.iter().sum();
    for row in y.chunks_exact_mut(width.max(1)) {
        let mut at = 0;
        for &s in segments {
            f(&mut row[at..at + s]);
            at += s;
        }
    }
}

/// All but the k largest pushed 1e9 down (ties with the k-th all kept).
fn top_k(s: &mut [f32], k: usize) {
    let mut sorted = s.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let kth = sorted[k - 1];
    s.iter_mut().filter(|v| **v < kth).for_each(|v| *v -= 1e9);
}

fn softmax(s: &mut [f32]) {
    let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    s.iter_mut().for_each(|v| *v = (*v - max).exp());
    let sum: f32 = s.iter().sum();
    s.iter_mut().for_each(|v| *v /= sum);
}

/// `[B, M, u]`: mix m of row r is `sum_j w[r, c_m + j] x[r, sets[m][j], :]`.
fn mix(y: &mut Vec<f32>, w: &[f32], x: &[f32], sets: &[Vec<usize>], xs: &Shape, b: usize) {
    let (n, u) = (xs.dims[0], xs.dims[1]);
    let c: usize = sets.iter().map(Vec::len).sum();
    y.clear();
    y.resize(b * sets.len() * u, 0.0);
    for r in 0..b {
        let mut col = 0;
        for (m, set) in sets.iter().enumerate() {
            let dst = &mut y[(r * sets.len() + m) * u..][..u];
            for &inst in set {
                let wv = w[r * c + col];
                let src = &x[(r * n + inst) * u..][..u];
                dst.iter_mut().zip(src).for_each(|(d, &v)| *d += wv * v);
                col += 1;
            }
        }
    }
}

/// A row's loss and its derivative by the raw output (`k` values; one unless softmax).
pub(super) fn row_loss(kind: LossKind, z: &[f32], y: f32, dz: Option<&mut [f32]>) -> f32 {
    match kind {
        LossKind::BceLogits => {
            let z = z[0];
            if let Some(d) = dz {
                d[0] = sigmoid(z) - y;
            }
            z.max(0.0) - z * y + ((-z.abs()).exp() + 1.0).ln()
        }
        LossKind::BceLogProb => {
            let lp = z[0];
            let not_p = 1.0 - lp.exp();
            let clamped = not_p.clamp(1e-7, 1.0);
            if let Some(d) = dz {
                let through = if not_p > 1e-7 && not_p < 1.0 { (1.0 - y) * lp.exp() / not_p } else { 0.0 };
                d[0] = -y + through;
            }
            -(y * lp + (1.0 - y) * clamped.ln())
        }
        LossKind::SoftmaxCe => {
            let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = z.iter().map(|v| (v - max).exp()).sum::<f32>().ln() + max;
            let class = (y >= 0.0 && y.fract() == 0.0 && (y as usize) < z.len()).then_some(y as usize);
            if let Some(d) = dz {
                for (j, g) in d.iter_mut().enumerate() {
                    *g = if class.is_some() { (z[j] - lse).exp() - f32::from(class == Some(j)) } else { 0.0 };
                }
            }
            class.map_or(0.0, |c| lse - z[c])
        }
        LossKind::Squared => {
            if let Some(d) = dz {
                d[0] = 2.0 * (z[0] - y);
            }
            (z[0] - y) * (z[0] - y)
        }
    }
}

/// The mean of the rows' losses over the rows whose mask is 1 (at least one row).
fn loss(kind: LossKind, z: &[f32], y: &[f32], mask: &[f32], k: usize, b: usize) -> f32 {
    let present: f32 = mask.iter().sum::<f32>().max(1.0);
    let mut sum = 0f32;
    for r in 0..b {
        sum += row_loss(kind, &z[r * k..(r + 1) * k], y[r], None) * mask[r];
    }
    sum / present
}
