//! Each primitive's forward, once: `run(op, operands) -> result` over row-major f32
//! buffers (`B` rows of each shape's row elements).

use super::gemm::{matmul, Mat};
use super::{Arg, NativeError, Result};
use crate::program::{LossKind, Op, PoolMode, Shape, Unary};
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

pub(super) fn unary(u: Unary, x: f32) -> f32 {
    match u {
        Unary::Relu => x.max(0.0),
        Unary::Tanh => x.tanh(),
        Unary::Sigmoid => sigmoid(x),
        Unary::Gelu => gelu(x),
        Unary::Softplus => softplus(x),
        Unary::LogSigmoid => -softplus(-x),
        Unary::Exp => x.exp(),
    }
}

/// `rows` rows of `out`, each the bias (or zeros).
fn bias_rows(bias: Option<&[f32]>, rows: usize, width: usize) -> Vec<f32> {
    match bias {
        Some(b) => b.iter().copied().cycle().take(rows * width).collect(),
        None => vec![0.0; rows * width],
    }
}

/// The result of `op` on `args` at batch size `b`.
pub(super) fn run(
    op: &Op,
    args: &[Arg],
    shapes: &[&Shape],
    out: &Shape,
    b: usize,
    rng: Option<&mut Rng>,
) -> Result<Vec<f32>> {
    let f = |i: usize| args[i].f32(op.name());
    let n_out = out.elems(b);
    Ok(match op {
        Op::Gather => gather(f(0)?, args[1], shapes[0].last())?,
        Op::Pool { mode } => pool(f(0)?, f(1)?, *mode, shapes[1].last(), out.last()),
        Op::Slice { at, len } => {
            let n = shapes[0].last();
            f(0)?.chunks_exact(n.max(1)).flat_map(|r| &r[*at..at + len]).copied().collect()
        }
        Op::Concat => concat(&(0..args.len()).map(f).collect::<Result<Vec<_>>>()?, shapes, b),
        Op::Take { indices } => take(f(0)?, indices, shapes[0], b),
        Op::Reshape { .. } => f(0)?.to_vec(),
        Op::Expand { count } => {
            let d = shapes[0].last();
            f(0)?.chunks_exact(d.max(1)).flat_map(|r| std::iter::repeat_n(r, *count).flatten()).copied().collect()
        }
        Op::Add => f(0)?.iter().zip(f(1)?).map(|(x, y)| x + y).collect(),
        Op::Mul => f(0)?.iter().zip(f(1)?).map(|(x, y)| x * y).collect(),
        Op::Scale { factor } => f(0)?.iter().map(|x| x * factor).collect(),
        Op::AddScalar { value } => f(0)?.iter().map(|x| x + value).collect(),
        Op::Unary(u) => f(0)?.iter().map(|&x| unary(*u, x)).collect(),
        Op::Linear => {
            let (x, w) = (f(0)?, f(1)?);
            let (i, o) = (shapes[1].dims[0], shapes[1].dims[1]);
            let rows = n_out / o.max(1);
            let bias = if args.len() == 3 { Some(f(2)?) } else { None };
            let mut y = bias_rows(bias, rows, o);
            matmul(&mut y, Mat::rows(0, rows, o, o), x, Mat::rows(0, rows, i, i), w, Mat::rows(0, i, o, o), true)?;
            y
        }
        Op::ExpertLinear | Op::GroupedLinear => experts(op, f(0)?, f(1)?, f(2)?, shapes[1], n_out)?,
        Op::DropoutMask { rate, draw, .. } => {
            let rng = rng.ok_or_else(|| NativeError::Kernel("dropout needs the step's random stream".into()))?;
            let drawn = crate::rng::dropout_mask(rng, n_out, *rate);
            let full: Vec<usize> = std::iter::once(b).chain(out.dims.iter().copied()).collect();
            if draw.is_empty() {
                drawn
            } else {
                place(&drawn, &full, draw)
            }
        }
        Op::Normal { .. } => {
            let rng = rng.ok_or_else(|| NativeError::Kernel("gate noise needs the step's random stream".into()))?;
            (0..n_out).map(|_| rng.normal() as f32).collect()
        }
        Op::TopKMask { segments, k } => {
            let mut y = f(0)?.to_vec();
            for_segments(&mut y, segments, |s| top_k(s, *k));
            y
        }
        Op::Softmax { segments } => {
            let mut y = f(0)?.to_vec();
            for_segments(&mut y, segments, softmax);
            y
        }
        Op::Mix { sets } => mix(f(0)?, f(1)?, sets, shapes[1], b),
        Op::Loss { kind } => vec![loss(*kind, f(0)?, f(1)?, f(2)?, shapes[0].last(), b)],
        Op::Balance { segments, weight } => vec![super::balance::importance(f(0)?, segments, *weight, None).0],
        Op::LoadBalance { segments, k, weight } => {
            vec![super::balance::load([f(0)?, f(1)?, f(2)?], segments, *k, *weight, None).value]
        }
    })
}

/// Each row of every operand, side by side: `[B, sum a_i, ..]`.
fn concat(xs: &[&[f32]], shapes: &[&Shape], b: usize) -> Vec<f32> {
    let widths: Vec<usize> = shapes.iter().map(|s| s.row_elems()).collect();
    let mut y = Vec::with_capacity(b * widths.iter().sum::<usize>());
    for r in 0..b {
        for (x, &w) in xs.iter().zip(&widths) {
            y.extend_from_slice(&x[r * w..(r + 1) * w]);
        }
    }
    y
}

/// Entries `indices` of the first axis after the batch.
fn take(x: &[f32], indices: &[usize], shape: &Shape, b: usize) -> Vec<f32> {
    let inner = shape.dims[1..].iter().product::<usize>();
    let row = shape.row_elems();
    let mut y = Vec::with_capacity(b * indices.len() * inner);
    for r in 0..b {
        for &i in indices {
            y.extend_from_slice(&x[r * row + i * inner..r * row + (i + 1) * inner]);
        }
    }
    y
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

fn gather(table: &[f32], ids: Arg, d: usize) -> Result<Vec<f32>> {
    let Arg::U32(ids) = ids else { return Err(NativeError::Kernel("gather: ids must be u32".into())) };
    let rows = table.len() / d.max(1);
    let mut y = Vec::with_capacity(ids.len() * d);
    for &i in ids {
        let i = i as usize;
        if i >= rows {
            return Err(NativeError::Kernel(format!("gather: row {i} of a table of {rows}")));
        }
        y.extend_from_slice(&table[i * d..(i + 1) * d]);
    }
    Ok(y)
}

fn pool(rows: &[f32], w: &[f32], mode: PoolMode, len: usize, d: usize) -> Vec<f32> {
    let mut y = Vec::with_capacity(w.len() / len.max(1) * d);
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
    y
}

/// `expert_linear` (`x: [R, i]` through every expert) or `grouped_linear` (`x: [R, E,
/// i]`, expert e on its own rows) into `[R, E, o]`: one GEMM per expert over strided rows.
fn experts(op: &Op, x: &[f32], w: &[f32], bias: &[f32], ws: &Shape, n_out: usize) -> Result<Vec<f32>> {
    let (e, i, o) = (ws.dims[0], ws.dims[1], ws.dims[2]);
    let rows = n_out / (e * o).max(1);
    let mut y = bias_rows(Some(bias), rows, e * o);
    for k in 0..e {
        let xm = match op {
            Op::ExpertLinear => Mat::rows(0, rows, i, i),
            _ => Mat::rows(k * i, rows, i, e * i),
        };
        matmul(&mut y, Mat::rows(k * o, rows, o, e * o), x, xm, w, Mat::rows(k * i * o, i, o, o), true)?;
    }
    Ok(y)
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
fn mix(w: &[f32], x: &[f32], sets: &[Vec<usize>], xs: &Shape, b: usize) -> Vec<f32> {
    let (n, u) = (xs.dims[0], xs.dims[1]);
    let c: usize = sets.iter().map(Vec::len).sum();
    let mut y = vec![0f32; b * sets.len() * u];
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
    y
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
