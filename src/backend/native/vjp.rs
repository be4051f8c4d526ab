//! Each primitive's vector-Jacobian product, once: given the gradient of an op's
//! result, each operand that wants a gradient gets its contribution added into its
//! gradient buffer, in place (no buffer is allocated per step).

use super::forward::{row_loss, sigmoid};
use super::gemm::{matmul, Mat};
use super::{Arg, NativeError, Result};
use crate::program::{Op, PoolMode, Reduction, Shape, Unary};

/// What a VJP reads: the forward operands and result, and per operand whether its
/// contribution adds to its gradient buffer or is the buffer's first (see
/// [`overwrites`]).
pub(super) struct Ctx<'a> {
    pub args: &'a [Arg<'a>],
    pub shapes: &'a [&'a Shape],
    /// The op's forward result.
    pub out: &'a [f32],
    pub b: usize,
    pub add: &'a [bool],
}

/// Whether `op`'s VJP writes every element of operand `i`'s gradient when its
/// contribution is the first (`Ctx::add` false), so that the buffer need not be
/// cleared before; the runner clears it for the others, which add into it.
pub(super) fn overwrites(op: &Op, i: usize) -> bool {
    match op {
        Op::Reshape { .. } | Op::AddScalar { .. } | Op::TopKMask { .. } | Op::Scale { .. } => true,
        Op::Add | Op::Mul | Op::Unary(_) | Op::Softmax { .. } | Op::Concat | Op::Reduce { .. } => true,
        Op::Loss { .. } => i == 0,
        Op::Linear | Op::ExpertLinear => i < 2,
        _ => false,
    }
}

/// `d = v` (a first contribution) or `d += v`, elementwise.
fn put(d: &mut [f32], add: bool, v: impl Iterator<Item = f32>) {
    if add {
        d.iter_mut().zip(v).for_each(|(a, v)| *a += v);
    } else {
        d.iter_mut().zip(v).for_each(|(a, v)| *a = v);
    }
}

impl Ctx<'_> {
    fn f(&self, i: usize, op: &Op) -> Result<&[f32]> {
        self.args[i].f32(op.name())
    }
}

/// Per operand: its gradient buffer, to add into; None where no gradient flows.
pub(super) type Dargs<'a> = [Option<&'a mut [f32]>];

/// `a . b`, over eight running sums (so that it vectorises; a single sum in order
/// is one dependent add per element).
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `d += v`, elementwise.
fn add_into(d: &mut [f32], v: impl Iterator<Item = f32>) {
    put(d, true, v);
}

/// Adds `op`'s operands' gradient contributions, given `dy` (its result's gradient).
/// `scratch` is what the node's forward kept (see `forward::Out`).
pub(super) fn run(op: &Op, c: &Ctx, dy: &[f32], d: &mut Dargs, scratch: &mut Vec<f32>) -> Result<()> {
    match op {
        Op::Reshape { .. } | Op::AddScalar { .. } | Op::TopKMask { .. } => {
            if let Some(dx) = d[0].as_deref_mut() {
                put(dx, c.add[0], dy.iter().copied());
            }
        }
        Op::Scale { factor } => {
            if let Some(dx) = d[0].as_deref_mut() {
                put(dx, c.add[0], dy.iter().map(|g| g * factor));
            }
        }
        Op::Expand { count } => expand(c, *count, dy, d),
        Op::Add => {
            for (dx, &add) in d.iter_mut().zip(c.add) {
                if let Some(dx) = dx.as_deref_mut() {
                    put(dx, add, dy.iter().copied());
                }
            }
        }
        Op::Mul => {
            let (a, b) = (c.f(0, op)?, c.f(1, op)?);
            if let Some(da) = d[0].as_deref_mut() {
                put(da, c.add[0], dy.iter().zip(b).map(|(g, y)| g * y));
            }
            if let Some(db) = d.get_mut(1).and_then(|x| x.as_deref_mut()) {
                put(db, c.add[1], dy.iter().zip(a).map(|(g, x)| g * x));
            }
        }
        Op::Unary(u) => {
            if let Some(dx) = d[0].as_deref_mut() {
                unary(dx, c.add[0], *u, c.f(0, op)?, c.out, dy);
            }
        }
        Op::Slice { at, len } => {
            if let Some(dx) = d[0].as_deref_mut() {
                slice(dx, c, *at, *len, dy);
            }
        }
        Op::Concat => concat(c, dy, d),
        Op::Reduce { over } => reduce(c, *over, dy, d),
        Op::Take { indices } => {
            if let Some(dx) = d[0].as_deref_mut() {
                take(dx, c, indices, dy);
            }
        }
        Op::Pool { mode } => {
            if let Some(dx) = d[0].as_deref_mut() {
                pool(dx, c, *mode, dy, op)?;
            }
        }
        Op::Linear => linear(c, dy, op, d)?,
        Op::ExpertLinear => expert_linear(c, dy, op, d, scratch)?,
        Op::GroupedLinear => grouped_linear(c, dy, op, d)?,
        Op::Softmax { segments } => {
            if let Some(dx) = d[0].as_deref_mut() {
                softmax(dx, c.add[0], c.out, segments, dy);
            }
        }
        Op::Mix { sets } => mix(c, sets, dy, op, d)?,
        Op::Loss { kind } => {
            if let Some(dz) = d[0].as_deref_mut() {
                loss(dz, c, *kind, dy, op)?;
            }
        }
        Op::Balance { .. } | Op::LoadBalance { .. } => balance_terms(op, c, dy, d)?,
        Op::Gather | Op::DropoutMask { .. } | Op::Normal { .. } => {
            return Err(NativeError::Kernel(format!("{} has no vector-Jacobian step", op.name())))
        }
    }
    Ok(())
}

/// `expand`: the sum of each row's copies.
fn expand(c: &Ctx, count: usize, dy: &[f32], d: &mut Dargs) {
    let dim = c.shapes[0].last();
    if let Some(dx) = d[0].as_deref_mut() {
        for (row, copies) in dx.chunks_exact_mut(dim.max(1)).zip(dy.chunks_exact((count * dim).max(1))) {
            copies.chunks_exact(dim.max(1)).for_each(|g| add_into(row, g.iter().copied()));
        }
    }
}

/// `reduce`: each row's gradient to every entry it summed, or the batch mean's to
/// every row.
fn reduce(c: &Ctx, over: Reduction, dy: &[f32], d: &mut Dargs) {
    let Some(dx) = d[0].as_deref_mut() else { return };
    match over {
        Reduction::SumLast => {
            let n = c.shapes[0].last();
            put(dx, c.add[0], dy.iter().flat_map(|&g| std::iter::repeat_n(g, n)));
        }
        Reduction::MeanBatch => {
            let g = dy.first().copied().unwrap_or(0.0) / c.b.max(1) as f32;
            put(dx, c.add[0], std::iter::repeat_n(g, c.b));
        }
    }
}

/// The balance losses: the gate weights' gradient, and with noise the noise scale's.
fn balance_terms(op: &Op, c: &Ctx, dy: &[f32], d: &mut Dargs) -> Result<()> {
    let seed = dy.first().copied().unwrap_or(0.0);
    match op {
        Op::Balance { segments, weight } => {
            let g = super::balance::importance(c.f(0, op)?, segments, *weight, Some(seed)).1;
            if let Some(dx) = d[0].as_deref_mut() {
                add_into(dx, g.into_iter());
            }
        }
        Op::LoadBalance { segments, k, weight } => {
            let l = super::balance::load([c.f(0, op)?, c.f(1, op)?, c.f(2, op)?], segments, *k, *weight, Some(seed));
            if let Some(dx) = d[0].as_deref_mut() {
                add_into(dx, l.dclean.into_iter());
            }
            if let Some(ds) = d.get_mut(2).and_then(|x| x.as_deref_mut()) {
                add_into(ds, l.dscale.into_iter());
            }
        }
        _ => {}
    }
    Ok(())
}

/// `slice`: the result's gradient added back in its columns.
fn slice(dx: &mut [f32], c: &Ctx, at: usize, len: usize, dy: &[f32]) {
    let n = c.shapes[0].last();
    for (row, g) in dx.chunks_exact_mut(n.max(1)).zip(dy.chunks_exact(len.max(1))) {
        add_into(&mut row[at..at + len], g.iter().copied());
    }
}

/// `concat`: each operand's cut of the result's gradient.
fn concat(c: &Ctx, dy: &[f32], d: &mut Dargs) {
    let widths: Vec<usize> = c.shapes.iter().map(|s| s.row_elems()).collect();
    let total: usize = widths.iter().sum();
    let mut at = 0;
    for ((dx, &w), &add) in d.iter_mut().zip(&widths).zip(c.add) {
        if let Some(dx) = dx.as_deref_mut() {
            for (row, g) in dx.chunks_exact_mut(w.max(1)).zip(dy.chunks_exact(total.max(1))) {
                put(row, add, g[at..at + w].iter().copied());
            }
        }
        at += w;
    }
}

/// `take`: the result's gradient added back at the entries taken (an entry taken
/// twice gets both).
fn take(dx: &mut [f32], c: &Ctx, indices: &[usize], dy: &[f32]) {
    let inner = c.shapes[0].dims[1..].iter().product::<usize>();
    let row = c.shapes[0].row_elems();
    for r in 0..c.b {
        for (j, &i) in indices.iter().enumerate() {
            let g = &dy[(r * indices.len() + j) * inner..][..inner];
            add_into(&mut dx[r * row + i * inner..][..inner], g.iter().copied());
        }
    }
}

/// `softmax` from its result `y`: `dx = y * (dy - sum(dy * y))` per segment.
fn softmax(dx: &mut [f32], add: bool, y: &[f32], segments: &[usize], dy: &[f32]) {
    let width: usize = segments.iter().sum();
    let rows = dx.chunks_exact_mut(width.max(1)).zip(y.chunks_exact(width.max(1))).zip(dy.chunks_exact(width.max(1)));
    for ((dr, yr), gr) in rows {
        let mut at = 0;
        for &s in segments {
            let (g, p) = (&gr[at..at + s], &yr[at..at + s]);
            let gp = dot(g, p);
            put(&mut dr[at..at + s], add, g.iter().zip(p).map(|(a, &b)| b * (a - gp)));
            at += s;
        }
    }
}

/// `loss`: each row's derivative, times the seed, over the rows present (the mask).
fn loss(dz: &mut [f32], c: &Ctx, kind: crate::program::LossKind, dy: &[f32], op: &Op) -> Result<()> {
    let (z, y, m) = (c.f(0, op)?, c.f(1, op)?, c.f(2, op)?);
    let k = c.shapes[0].last();
    let present: f32 = m.iter().sum::<f32>().max(1.0);
    let seed = dy.first().copied().unwrap_or(0.0);
    let mut row = vec![0f32; k];
    for r in 0..c.b {
        row_loss(kind, &z[r * k..(r + 1) * k], y[r], Some(&mut row));
        let scale = seed * m[r] / present;
        put(&mut dz[r * k..(r + 1) * k], c.add[0], row.iter().map(|v| v * scale));
    }
    Ok(())
}

/// `dx += dy * f'(x)`, from the input `x` or the output `y` as is cheaper; one loop
/// per function, so that each compiles to its own vectorisable pass.
fn unary(dx: &mut [f32], add: bool, u: Unary, x: &[f32], y: &[f32], dy: &[f32]) {
    let by_x = |f: fn(f32) -> f32| dy.iter().zip(x).map(move |(g, &v)| g * f(v));
    let by_y = |f: fn(f32) -> f32| dy.iter().zip(y).map(move |(g, &v)| g * f(v));
    match u {
        // From the output: a ReLU fused into its linear op keeps no input (`program::fuse`).
        Unary::Relu => put(dx, add, dy.iter().zip(y).map(|(&g, &v)| if v > 0.0 { g } else { 0.0 })),
        Unary::Tanh => put(dx, add, by_y(|v| 1.0 - v * v)),
        Unary::Sigmoid => put(dx, add, by_y(|v| v * (1.0 - v))),
        Unary::Gelu => put(dx, add, by_x(gelu_grad)),
        Unary::Softplus => put(dx, add, by_x(sigmoid)),
        Unary::LogSigmoid => put(dx, add, by_x(|v| sigmoid(-v))),
        Unary::Exp => put(dx, add, by_y(|v| v)),
    }
}

/// The derivative of the tanh-approximation GELU (as candle's backward has it).
fn gelu_grad(x: f32) -> f32 {
    let cube = x * x * x;
    let t = (0.035_677_4 * cube + 0.797_885 * x).tanh();
    0.5 * t + (0.053_516_1 * cube + 0.398_942 * x) * (1.0 - t * t) + 0.5
}

fn pool(dx: &mut [f32], c: &Ctx, mode: PoolMode, dy: &[f32], op: &Op) -> Result<()> {
    let (rows, w) = (c.f(0, op)?, c.f(1, op)?);
    let (len, d) = (c.shapes[1].last(), c.shapes[0].last());
    for r in 0..c.b {
        let g = &dy[r * d..(r + 1) * d];
        let (e, wr) = (&rows[r * len * d..(r + 1) * len * d], &w[r * len..(r + 1) * len]);
        let dr = &mut dx[r * len * d..(r + 1) * len * d];
        match mode {
            PoolMode::WeightedSum => {
                for (l, &wl) in wr.iter().enumerate() {
                    add_into(&mut dr[l * d..(l + 1) * d], g.iter().map(|v| wl * v));
                }
            }
            PoolMode::Max => {
                // Each column's gradient to the first present slot holding its maximum.
                for j in 0..d {
                    let best = (0..len)
                        .filter(|&l| wr[l] > 0.0)
                        .max_by(|&a, &b| e[a * d + j].total_cmp(&e[b * d + j]).then(b.cmp(&a)));
                    if let Some(l) = best {
                        dr[l * d + j] += g[j];
                    }
                }
            }
        }
    }
    Ok(())
}

/// `y = x W (+ b)`: `dx += dy W^T`, `dW += x^T dy`, `db +=` column sums of dy.
fn linear(c: &Ctx, dy: &[f32], op: &Op, d: &mut Dargs) -> Result<()> {
    let (x, w) = (c.f(0, op)?, c.f(1, op)?);
    let (i, o) = (c.shapes[1].dims[0], c.shapes[1].dims[1]);
    let rows = dy.len() / o.max(1);
    let dys = Mat::rows(0, rows, o, o);
    if let Some(dx) = d[0].as_deref_mut() {
        matmul(dx, Mat::rows(0, rows, i, i), dy, dys, w, Mat::rows(0, i, o, o).t(), c.add[0])?;
    }
    if let Some(dw) = d[1].as_deref_mut() {
        matmul(dw, Mat::rows(0, i, o, o), x, Mat::rows(0, rows, i, i).t(), dy, dys, c.add[1])?;
    }
    if let Some(db) = d.get_mut(2).and_then(|x| x.as_deref_mut()) {
        dy.chunks_exact(o.max(1)).for_each(|r| add_into(db, r.iter().copied()));
    }
    Ok(())
}

/// `expert_linear` through the weights side by side `Wc: [i, E * o]` its forward kept:
/// `dx += dy Wc^T` and `dWc = x^T dy` are one GEMM each, `dWc` then added back into
/// `dW`'s `[E, i, o]` layout.
fn expert_linear(c: &Ctx, dy: &[f32], op: &Op, d: &mut Dargs, scratch: &mut Vec<f32>) -> Result<()> {
    let x = c.f(0, op)?;
    let ws = c.shapes[1];
    let (e, i, o) = (ws.dims[0], ws.dims[1], ws.dims[2]);
    let n = e * o;
    let rows = dy.len() / n.max(1);
    if scratch.len() < i * n {
        return Err(NativeError::Kernel("expert_linear: its forward did not run".into()));
    }
    scratch.resize(2 * i * n, 0.0);
    let (packed, dpacked) = scratch.split_at_mut(i * n);
    let dys = Mat::rows(0, rows, n, n);
    if let Some(dx) = d[0].as_deref_mut() {
        matmul(dx, Mat::rows(0, rows, i, i), dy, dys, packed, Mat::rows(0, i, n, n).t(), c.add[0])?;
    }
    if let Some(dw) = d[1].as_deref_mut() {
        matmul(dpacked, Mat::rows(0, i, n, n), x, Mat::rows(0, rows, i, i).t(), dy, dys, false)?;
        for (j, row) in dpacked.chunks_exact(n.max(1)).enumerate() {
            for (k, g) in row.chunks_exact(o.max(1)).enumerate() {
                put(&mut dw[(k * i + j) * o..][..o], c.add[1], g.iter().copied());
            }
        }
    }
    if let Some(db) = d[2].as_deref_mut() {
        dy.chunks_exact(n.max(1)).for_each(|r| add_into(db, r.iter().copied()));
    }
    Ok(())
}

/// `grouped_linear`, one expert at a time over strided rows (see `forward::grouped_linear`).
fn grouped_linear(c: &Ctx, dy: &[f32], op: &Op, d: &mut Dargs) -> Result<()> {
    let (x, w) = (c.f(0, op)?, c.f(1, op)?);
    let ws = c.shapes[1];
    let (e, i, o) = (ws.dims[0], ws.dims[1], ws.dims[2]);
    let rows = dy.len() / (e * o).max(1);
    let xm = |k: usize| Mat::rows(k * i, rows, i, e * i);
    for k in 0..e {
        let dyk = Mat::rows(k * o, rows, o, e * o);
        let wk = Mat::rows(k * i * o, i, o, o);
        if let Some(dx) = d[0].as_deref_mut() {
            matmul(dx, xm(k), dy, dyk, w, wk.t(), true)?;
        }
        if let Some(dw) = d[1].as_deref_mut() {
            matmul(dw, wk, x, xm(k).t(), dy, dyk, true)?;
        }
        if let Some(db) = d[2].as_deref_mut() {
            let dbk = &mut db[k * o..(k + 1) * o];
            dy.chunks_exact((e * o).max(1)).for_each(|r| add_into(dbk, r[k * o..(k + 1) * o].iter().copied()));
        }
    }
    Ok(())
}

/// `y[r, m] = sum_j w[r, c_m + j] x[r, sets[m][j]]`: `dw` are dot products, `dx` sums.
fn mix(c: &Ctx, sets: &[Vec<usize>], dy: &[f32], op: &Op, d: &mut Dargs) -> Result<()> {
    let (w, x) = (c.f(0, op)?, c.f(1, op)?);
    let (n, u) = (c.shapes[1].dims[0], c.shapes[1].dims[1]);
    let cols: usize = sets.iter().map(Vec::len).sum();
    let [dw, dx] = d else { return Err(NativeError::Kernel("mix: two operands".into())) };
    let m = sets.len();
    let rows = (0..c.b).map(|r| (&w[r * cols..][..cols], &x[r * n * u..][..n * u], &dy[r * m * u..][..m * u]));
    for (r, (wr, xr, gr)) in rows.enumerate() {
        let mut col = 0;
        for (set, g) in sets.iter().zip(gr.chunks_exact(u.max(1))) {
            for &inst in set {
                let xi = &xr[inst * u..][..u];
                if let Some(dw) = dw.as_deref_mut() {
                    dw[r * cols + col] += dot(g, xi);
                }
                if let Some(dx) = dx.as_deref_mut() {
                    let wv = wr[col];
                    add_into(&mut dx[(r * n + inst) * u..][..u], g.iter().map(|v| wv * v));
                }
                col += 1;
            }
        }
    }
    Ok(())
}
