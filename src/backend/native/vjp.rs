//! Each primitive's vector-Jacobian product, once: given the gradient of an op's
//! result, the gradient contribution of each operand that wants one (the runner adds
//! them into the planned gradient buffers).

use super::forward::{row_loss, sigmoid};
use super::gemm::{matmul, Mat};
use super::{Arg, NativeError, Result};
use crate::program::{Op, PoolMode, Shape, Unary};

/// What a VJP reads: the forward operands and result, and which operands want a gradient.
pub(super) struct Ctx<'a> {
    pub args: &'a [Arg<'a>],
    pub shapes: &'a [&'a Shape],
    /// The op's forward result.
    pub out: &'a [f32],
    pub b: usize,
    pub want: &'a [bool],
}

impl Ctx<'_> {
    fn f(&self, i: usize, op: &Op) -> Result<&[f32]> {
        self.args[i].f32(op.name())
    }
    fn n(&self, i: usize) -> usize {
        self.shapes[i].elems(self.b)
    }
}

type Grads = Vec<Option<Vec<f32>>>;

/// The gradient contributions of `op`'s operands, given `dy` (its result's gradient).
pub(super) fn run(op: &Op, c: &Ctx, dy: &[f32]) -> Result<Grads> {
    let one = |g: Vec<f32>| vec![Some(g)];
    Ok(match op {
        Op::Reshape { .. } | Op::AddScalar { .. } | Op::TopKMask { .. } => one(dy.to_vec()),
        Op::Scale { factor } => one(dy.iter().map(|g| g * factor).collect()),
        Op::Expand { count } => {
            // The sum of each row's copies.
            let d = c.shapes[0].last();
            let mut dx = vec![0f32; c.n(0)];
            for (row, copies) in dx.chunks_exact_mut(d.max(1)).zip(dy.chunks_exact((count * d).max(1))) {
                copies.chunks_exact(d.max(1)).for_each(|g| row.iter_mut().zip(g).for_each(|(a, v)| *a += v));
            }
            one(dx)
        }
        Op::Add => vec![Some(dy.to_vec()), Some(dy.to_vec())],
        Op::Mul => {
            let (a, b) = (c.f(0, op)?, c.f(1, op)?);
            vec![
                c.want[0].then(|| dy.iter().zip(b).map(|(g, y)| g * y).collect()),
                c.want[1].then(|| dy.iter().zip(a).map(|(g, x)| g * x).collect()),
            ]
        }
        Op::Unary(u) => one(unary(*u, c.f(0, op)?, c.out, dy)),
        Op::Slice { at, len } => one(slice(c, *at, *len, dy)),
        Op::Concat => concat(c, dy),
        Op::Take { indices } => one(take(c, indices, dy)),
        Op::Pool { mode } => one(pool(c, *mode, dy, op)?),
        Op::Linear => linear(c, dy, op)?,
        Op::ExpertLinear | Op::GroupedLinear => experts(c, dy, op)?,
        Op::Softmax { segments } => one(softmax(c.out, segments, dy)),
        Op::Mix { sets } => mix(c, sets, dy, op)?,
        Op::Loss { kind } => vec![Some(loss(c, *kind, dy, op)?), None, None],
        Op::Balance { segments, weight } => {
            let seed = dy.first().copied().unwrap_or(0.0);
            one(super::balance::importance(c.f(0, op)?, segments, *weight, Some(seed)).1)
        }
        Op::LoadBalance { segments, k, weight } => {
            let seed = dy.first().copied().unwrap_or(0.0);
            let l = super::balance::load([c.f(0, op)?, c.f(1, op)?, c.f(2, op)?], segments, *k, *weight, Some(seed));
            vec![Some(l.dclean), None, Some(l.dscale)]
        }
        Op::Gather | Op::DropoutMask { .. } | Op::Normal { .. } => {
            return Err(NativeError::Kernel(format!("{} has no vector-Jacobian step", op.name())))
        }
    })
}

/// `slice`: the result's gradient put back in its columns, zeros elsewhere.
fn slice(c: &Ctx, at: usize, len: usize, dy: &[f32]) -> Vec<f32> {
    let n = c.shapes[0].last();
    let mut dx = vec![0f32; c.n(0)];
    for (row, g) in dx.chunks_exact_mut(n.max(1)).zip(dy.chunks_exact(len.max(1))) {
        row[at..at + len].copy_from_slice(g);
    }
    dx
}

/// `concat`: each operand's cut of the result's gradient.
fn concat(c: &Ctx, dy: &[f32]) -> Grads {
    let widths: Vec<usize> = c.shapes.iter().map(|s| s.row_elems()).collect();
    let total: usize = widths.iter().sum();
    let mut at = 0;
    let mut out = Vec::with_capacity(widths.len());
    for (i, &w) in widths.iter().enumerate() {
        out.push(c.want[i].then(|| dy.chunks_exact(total.max(1)).flat_map(|r| &r[at..at + w]).copied().collect()));
        at += w;
    }
    out
}

/// `take`: the result's gradient added back at the entries taken (an entry taken
/// twice gets both).
fn take(c: &Ctx, indices: &[usize], dy: &[f32]) -> Vec<f32> {
    let inner = c.shapes[0].dims[1..].iter().product::<usize>();
    let row = c.shapes[0].row_elems();
    let mut dx = vec![0f32; c.n(0)];
    for r in 0..c.b {
        for (j, &i) in indices.iter().enumerate() {
            let g = &dy[(r * indices.len() + j) * inner..][..inner];
            dx[r * row + i * inner..][..inner].iter_mut().zip(g).for_each(|(d, v)| *d += v);
        }
    }
    dx
}

/// `softmax` from its result `y`: `dx = y * (dy - sum(dy * y))` per segment.
fn softmax(y: &[f32], segments: &[usize], dy: &[f32]) -> Vec<f32> {
    let mut dx = dy.to_vec();
    let width: usize = segments.iter().sum();
    for (gr, yr) in dx.chunks_exact_mut(width.max(1)).zip(y.chunks_exact(width.max(1))) {
        let mut at = 0;
        for &s in segments {
            let (g, p) = (&mut gr[at..at + s], &yr[at..at + s]);
            let dot: f32 = g.iter().zip(p).map(|(a, b)| a * b).sum();
            g.iter_mut().zip(p).for_each(|(a, &b)| *a = b * (*a - dot));
            at += s;
        }
    }
    dx
}

/// `loss`: each row's derivative, times the seed, over the rows present (the mask).
fn loss(c: &Ctx, kind: crate::program::LossKind, dy: &[f32], op: &Op) -> Result<Vec<f32>> {
    let (z, y, m) = (c.f(0, op)?, c.f(1, op)?, c.f(2, op)?);
    let k = c.shapes[0].last();
    let present: f32 = m.iter().sum::<f32>().max(1.0);
    let seed = dy.first().copied().unwrap_or(0.0);
    let mut dz = vec![0f32; z.len()];
    for r in 0..c.b {
        let d = &mut dz[r * k..(r + 1) * k];
        row_loss(kind, &z[r * k..(r + 1) * k], y[r], Some(d));
        let scale = seed * m[r] / present;
        d.iter_mut().for_each(|v| *v *= scale);
    }
    Ok(dz)
}

/// `dx = dy * f'(x)`, from the input `x` or the output `y` as is cheaper.
fn unary(u: Unary, x: &[f32], y: &[f32], dy: &[f32]) -> Vec<f32> {
    let d = |i: usize| -> f32 {
        match u {
            Unary::Relu => f32::from(x[i] > 0.0),
            Unary::Tanh => 1.0 - y[i] * y[i],
            Unary::Sigmoid => y[i] * (1.0 - y[i]),
            Unary::Gelu => gelu_grad(x[i]),
            Unary::Softplus => sigmoid(x[i]),
            Unary::LogSigmoid => sigmoid(-x[i]),
            Unary::Exp => y[i],
        }
    };
    dy.iter().enumerate().map(|(i, g)| g * d(i)).collect()
}

/// The derivative of the tanh-approximation GELU (as candle's backward has it).
fn gelu_grad(x: f32) -> f32 {
    let cube = x * x * x;
    let t = (0.035_677_4 * cube + 0.797_885 * x).tanh();
    0.5 * t + (0.053_516_1 * cube + 0.398_942 * x) * (1.0 - t * t) + 0.5
}

fn pool(c: &Ctx, mode: PoolMode, dy: &[f32], op: &Op) -> Result<Vec<f32>> {
    let (rows, w) = (c.f(0, op)?, c.f(1, op)?);
    let (len, d) = (c.shapes[1].last(), c.shapes[0].last());
    let mut dx = vec![0f32; rows.len()];
    for r in 0..c.b {
        let g = &dy[r * d..(r + 1) * d];
        let (e, wr) = (&rows[r * len * d..(r + 1) * len * d], &w[r * len..(r + 1) * len]);
        let dr = &mut dx[r * len * d..(r + 1) * len * d];
        match mode {
            PoolMode::WeightedSum => {
                for (l, &wl) in wr.iter().enumerate() {
                    dr[l * d..(l + 1) * d].iter_mut().zip(g).for_each(|(a, v)| *a = wl * v);
                }
            }
            PoolMode::Max => {
                // Each column's gradient to the first present slot holding its maximum.
                for j in 0..d {
                    let best = (0..len)
                        .filter(|&l| wr[l] > 0.0)
                        .max_by(|&a, &b| e[a * d + j].total_cmp(&e[b * d + j]).then(b.cmp(&a)));
                    if let Some(l) = best {
                        dr[l * d + j] = g[j];
                    }
                }
            }
        }
    }
    Ok(dx)
}

/// `y = x W (+ b)`: `dx = dy W^T`, `dW = x^T dy`, `db` = column sums of dy.
fn linear(c: &Ctx, dy: &[f32], op: &Op) -> Result<Grads> {
    let (x, w) = (c.f(0, op)?, c.f(1, op)?);
    let (i, o) = (c.shapes[1].dims[0], c.shapes[1].dims[1]);
    let rows = dy.len() / o.max(1);
    let dys = Mat::rows(0, rows, o, o);
    let mut out: Grads = vec![None; c.args.len()];
    if c.want[0] {
        let mut dx = vec![0f32; rows * i];
        matmul(&mut dx, Mat::rows(0, rows, i, i), dy, dys, w, Mat::rows(0, i, o, o).t(), false)?;
        out[0] = Some(dx);
    }
    if c.want[1] {
        let mut dw = vec![0f32; i * o];
        matmul(&mut dw, Mat::rows(0, i, o, o), x, Mat::rows(0, rows, i, i).t(), dy, dys, false)?;
        out[1] = Some(dw);
    }
    if c.args.len() == 3 && c.want[2] {
        let mut db = vec![0f32; o];
        dy.chunks_exact(o.max(1)).for_each(|r| db.iter_mut().zip(r).for_each(|(s, g)| *s += g));
        out[2] = Some(db);
    }
    Ok(out)
}

/// The expert ops, one expert at a time over strided rows (see `forward::experts`).
fn experts(c: &Ctx, dy: &[f32], op: &Op) -> Result<Grads> {
    let (x, w) = (c.f(0, op)?, c.f(1, op)?);
    let ws = c.shapes[1];
    let (e, i, o) = (ws.dims[0], ws.dims[1], ws.dims[2]);
    let rows = dy.len() / (e * o).max(1);
    let grouped = !matches!(op, Op::ExpertLinear);
    let xm = |k: usize| if grouped { Mat::rows(k * i, rows, i, e * i) } else { Mat::rows(0, rows, i, i) };
    let mut dx = c.want[0].then(|| vec![0f32; c.n(0)]);
    let mut dw = c.want[1].then(|| vec![0f32; e * i * o]);
    let mut db = c.want[2].then(|| vec![0f32; e * o]);
    for k in 0..e {
        let dyk = Mat::rows(k * o, rows, o, e * o);
        let wk = Mat::rows(k * i * o, i, o, o);
        if let Some(dx) = dx.as_mut() {
            // Every expert adds into one dx (expert_linear) or writes its own rows.
            matmul(dx, xm(k), dy, dyk, w, wk.t(), !grouped && k > 0)?;
        }
        if let Some(dw) = dw.as_mut() {
            matmul(dw, wk, x, xm(k).t(), dy, dyk, false)?;
        }
        if let Some(db) = db.as_mut() {
            let dbk = &mut db[k * o..(k + 1) * o];
            dy.chunks_exact((e * o).max(1))
                .for_each(|r| dbk.iter_mut().zip(&r[k * o..(k + 1) * o]).for_each(|(s, g)| *s += g));
        }
    }
    Ok(vec![dx, dw, db])
}

/// `y[r, m] = sum_j w[r, c_m + j] x[r, sets[m][j]]`: `dw` are dot products, `dx` sums.
fn mix(c: &Ctx, sets: &[Vec<usize>], dy: &[f32], op: &Op) -> Result<Grads> {
    let (w, x) = (c.f(0, op)?, c.f(1, op)?);
    let (n, u) = (c.shapes[1].dims[0], c.shapes[1].dims[1]);
    let cols: usize = sets.iter().map(Vec::len).sum();
    let mut dw = vec![0f32; w.len()];
    let mut dx = vec![0f32; x.len()];
    for r in 0..c.b {
        let mut col = 0;
        for (m, set) in sets.iter().enumerate() {
            let g = &dy[(r * sets.len() + m) * u..][..u];
            for &inst in set {
                let at = (r * n + inst) * u;
                dw[r * cols + col] = g.iter().zip(&x[at..at + u]).map(|(a, b)| a * b).sum();
                let wv = w[r * cols + col];
                dx[at..at + u].iter_mut().zip(g).for_each(|(d, v)| *d += wv * v);
                col += 1;
            }
        }
    }
    Ok(vec![c.want[0].then_some(dw), c.want[1].then_some(dx)])
}
