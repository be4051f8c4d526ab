//! One layer of the hand-written step: its expert runs depth by depth, its gates'
//! softmax and the mixture, forward with every activation kept, then backward.

use super::super::infer::{bias_activate, expert_gemms, grow, mix_rows, run_rows};
use super::super::strided::{matmul, Rows, View};
use super::kernels::{activation_grad, bias_activate_keep, column_sums, dot};
use super::{Params, Result};
use crate::backend::candle::{ExpertStack, LayerParams};
use crate::ir::Activation;
use crate::rng::Rng;

#[derive(Default)]
pub(super) struct LayerTape {
    /// The output stream `[B, S' * u]` and its gradient.
    pub(super) out: Vec<f32>,
    pub(super) dout: Vec<f32>,
    pub(super) runs: Vec<RunTape>,
    /// All instances `[B, N, u]` (unless one run holds them in that order) and their
    /// gradient.
    pub(super) experts: Vec<f32>,
    pub(super) dexperts: Vec<f32>,
    /// Gate logits `[B * S, sum E_g]` and their gradient.
    pub(super) logits: Vec<f32>,
    pub(super) dlogits: Vec<f32>,
    /// Each mix's weights `[B, E_m]`, mix after mix.
    pub(super) probs: Vec<f32>,
}

#[derive(Default)]
pub(super) struct RunTape {
    /// The run's input rows when its slots are gathered `[B * k, d]`, and their gradient.
    pub(super) rows: Vec<f32>,
    pub(super) drows: Vec<f32>,
    pub(super) depths: Depths,
    /// Gradients of the depths, ping-pong.
    pub(super) d: [Vec<f32>; 2],
    /// Depth 0's weight side by side `[d, E * d_1]`, and its gradient.
    pub(super) wcat: Vec<f32>,
    pub(super) gcat: Vec<f32>,
}

/// What a run keeps of each expert depth.
#[derive(Default)]
pub(super) struct Depths {
    /// Its output `[B * k, E * d_i]` (after dropout).
    acts: Vec<Vec<f32>>,
    /// With GELU or dropout: its input to the activation.
    pre: Vec<Vec<f32>>,
    /// With dropout: its mask, in the layout of `acts`.
    masks: Vec<Vec<f32>>,
}

impl Depths {
    /// The last depth's output.
    fn last(&self) -> &[f32] {
        self.acts.last().map_or(&[], |a| &a[..])
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
pub(super) fn layer_forward(
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
    let u = p.expert_width()?;
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
        let RunTape { rows, depths, wcat, .. } = rt;
        let (x, xr) = run_rows(h, &run.slots, n_slots, b, d, rows);
        experts_forward(stack, x, xr, depths, wcat, params, rng)?;
        if whole {
            continue;
        }
        let e = stack.count;
        let y = &depths.acts[stack.layers.len() - 1];
        let all = grow(experts, b * n * u);
        for r in 0..b {
            for j in 0..k {
                let from = (r * k + j) * e * u;
                let to = (r * n + run.first + j * e) * u;
                all[to..to + e * u].copy_from_slice(&y[from..from + e * u]);
            }
        }
    }
    let all: &[f32] = if whole { runs[0].depths.last() } else { experts };
    let all = &all[..b * n * u];
    if p.gates.is_none() {
        grow(out, b * n * u).copy_from_slice(all);
        return Ok(());
    }
    mix_forward(p, h, b, d, u, all, (logits, probs, out), params)
}

/// A gated layer's gates on every slot (one GEMM), each mix's softmax and its mixture
/// of the instances `all: [B, N, u]` into `out`, logits and weights kept.
#[allow(clippy::too_many_arguments)]
fn mix_forward(
    p: &LayerParams,
    h: &[f32],
    b: usize,
    d: usize,
    u: usize,
    all: &[f32],
    (logits, probs, out): (&mut Vec<f32>, &mut Vec<f32>, &mut Vec<f32>),
    params: &Params,
) -> Result<()> {
    let Some((w, bias)) = &p.gates else { return Ok(()) };
    let plan = &p.plan;
    let n_slots = plan.inputs.len();
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
    let probs = grow(probs, b * plan.mixes.iter().map(|m| m.instances.len()).sum::<usize>());
    let out = grow(out, b * plan.mixes.len() * u);
    mix_rows(p, (logits, total), all, b, u, probs, out);
    Ok(())
}

/// Every expert of `stack` on rows `x`, depth by depth (one GEMM per expert over
/// strided rows, then bias and activation), each depth's output kept in `acts`.
fn experts_forward(
    stack: &ExpertStack,
    x: &[f32],
    xr: Rows,
    depths: &mut Depths,
    wcat: &mut Vec<f32>,
    params: &Params,
    rng: &mut Rng,
) -> Result<()> {
    let (e, r) = (stack.count, xr.n);
    let rate = stack.dropout;
    let Depths { acts, pre, masks } = depths;
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
        let (src, rows): (&[f32], _) = if i == 0 { (x, Some(xr)) } else { (&done[i - 1], None) };
        expert_gemms(dst, src, rows, w, (e, k, m), wcat)?;
        bias_activate_keep(dst, bias, stack.activation, &mut pre[i], rate > 0.0);
        if rate > 0.0 {
            // The graph drops depth 0 as `[R, E * m]` (this layout) and deeper depths
            // as `[E, R, m]`: the same draws, put where those units are here.
            let drawn = crate::backend::candle::dropout_mask(rng, r * e * m, rate);
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
pub(super) fn layer_backward(
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
    let u = p.expert_width()?;
    let whole = plan.runs.len() == 1 && matches!(run_input(&plan.runs[0].slots, n_slots), RunInput::All);
    let LayerTape { dout, runs, experts, dexperts, dlogits, probs, .. } = lt;
    let dall = grow(dexperts, b * n * u);
    if p.gates.is_none() {
        dall.copy_from_slice(&dout[..b * n * u]);
    } else {
        dall.fill(0.0);
        let all: &[f32] = if whole { runs[0].depths.last() } else { experts };
        mix_backward(p, (h, dh), b, d, u, (all, dall), (dout, probs, dlogits), params)?;
    }
    for (run, rt) in plan.runs.iter().zip(runs.iter_mut()) {
        let k = run.slots.len();
        let stack = &p.groups[run.group];
        let e = stack.count;
        let RunTape { rows, drows, depths, d: [ping, pong], wcat, gcat } = rt;
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
        experts_backward(stack, x, xr, depths, ping, pong, (wcat, gcat), dx, dxr, params)?;
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

/// The backward of [`mix_forward`]: the mixture's gradient to the instances (added into
/// `dall`) and to the gates' weights, then through the softmax and the gates' GEMM to
/// their parameters and, added into `dh`, the input.
#[allow(clippy::too_many_arguments)]
fn mix_backward(
    p: &LayerParams,
    (h, dh): (&[f32], &mut [f32]),
    b: usize,
    d: usize,
    u: usize,
    (all, dall): (&[f32], &mut [f32]),
    (dout, probs, dlogits): (&[f32], &[f32], &mut Vec<f32>),
    params: &mut Params,
) -> Result<()> {
    let Some((w, bias)) = &p.gates else { return Ok(()) };
    let plan = &p.plan;
    let (n_slots, n) = (plan.inputs.len(), plan.instances);
    {
        {
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
    depths: &Depths,
    ping: &mut Vec<f32>,
    pong: &mut Vec<f32>,
    (wcat, gcat): (&[f32], &mut Vec<f32>),
    dx: &mut [f32],
    dxr: Rows,
    params: &mut Params,
) -> Result<()> {
    let (e, r) = (stack.count, xr.n);
    let Depths { acts, pre, masks } = depths;
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
