//! The heads of the hand-written step: each task's tower depth by depth, ESMM products,
//! and the loss with its gradient of every head; then the towers' backward.

use super::super::infer::{bias_activate, grow, log_sigmoid, with_f32};
use super::super::strided::{matmul, Rows, View};
use super::kernels::{activation_grad, column_sums};
use super::{Params, Result};
use crate::backend::candle::{Batch, CandleModel, Tower};
use crate::ir::{Activation, Link, Model, TaskOutput};
use crate::rng::Rng;

/// One tower's kept values.
#[derive(Default)]
pub(super) struct TowerTape {
    /// Per depth: its output `[B, m]` (after dropout), and with dropout its mask.
    acts: Vec<Vec<f32>>,
    masks: Vec<Vec<f32>>,
    /// A depth's input to its activation, recomputed in the backward.
    pre: Vec<f32>,
    /// Gradients of the depths, ping-pong.
    d: [Vec<f32>; 2],
}

impl TowerTape {
    /// The tower's output `[B, m]` after [`forward`].
    pub(super) fn output(&self) -> &[f32] {
        self.acts.last().map_or(&[], |a| &a[..])
    }
}

/// `tower` on rows `xr` of `src`: returns its output width. Dropout masks from `rng`,
/// after every depth but the last, as the graph draws them.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    tower: &Tower,
    name: &str,
    src: &[f32],
    xr: Rows,
    tt: &mut TowerTape,
    b: usize,
    params: &Params,
    rng: &mut Rng,
) -> Result<usize> {
    let TowerTape { acts, masks, .. } = tt;
    let depths = tower.layers.len();
    if depths == 0 {
        candle_core::bail!("task `{name}`: its tower has no layers");
    }
    if acts.len() < depths {
        acts.resize_with(depths, Vec::new);
    }
    if masks.len() < depths {
        masks.resize_with(depths, Vec::new);
    }
    let mut width = 0;
    for (i, (w, bias)) in tower.layers.iter().enumerate() {
        let act = if i + 1 < depths { tower.activation } else { Activation::Linear };
        let (w, bias) = (params.value(w)?, params.value(bias)?);
        let m = bias.len();
        let (done, rest) = acts.split_at_mut(i);
        let (input, rows) = match done.last() {
            Some(prev) => (&prev[..], Rows::packed(b, w.len() / m.max(1))),
            None => (src, xr),
        };
        if rows.width * m != w.len() {
            candle_core::bail!("task `{name}`: a tower weight does not fit its input");
        }
        let y = grow(&mut rest[0], b * m);
        matmul(y, View::packed(b, m), input, View::of(rows), w, View::packed(rows.width, m), false)?;
        bias_activate(y, bias, act);
        if i + 1 < depths && tower.dropout > 0.0 {
            // As the graph: after every depth but the last, `[B, m]`.
            let mask = grow(&mut masks[i], b * m);
            mask.copy_from_slice(&super::super::dropout_mask(rng, b * m, tower.dropout));
            y.iter_mut().zip(mask.iter()).for_each(|(v, &k)| *v *= k);
        }
        width = m;
    }
    acts[depths - 1].truncate(b * width);
    Ok(width)
}

/// The backward of [`forward`] from the output's gradient `dhead`: the parameters'
/// gradients added to, the input's added into `dsrc` at `xr`.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    tower: &Tower,
    src: &[f32],
    xr: Rows,
    dsrc: &mut [f32],
    tt: &mut TowerTape,
    dhead: &[f32],
    b: usize,
    params: &mut Params,
) -> Result<()> {
    let TowerTape { acts, masks, pre, d: [ping, pong] } = tt;
    let depths = tower.layers.len();
    grow(ping, dhead.len()).copy_from_slice(dhead);
    for i in (0..depths).rev() {
        let (w, bias) = &tower.layers[i];
        let act = if i + 1 < depths { tower.activation } else { Activation::Linear };
        let m = params.value(bias)?.len();
        let (input, rows): (&[f32], Rows) =
            if i == 0 { (src, xr) } else { (&acts[i - 1][..], Rows::packed(b, w.as_tensor().dim(0)?)) };
        let k = rows.width;
        let dz = &mut ping[..b * m];
        let mask = (i + 1 < depths && tower.dropout > 0.0).then(|| &masks[i][..b * m]);
        if act == Activation::Gelu || mask.is_some() {
            // The depth's input to its activation (GELU's output, or one after dropout,
            // does not give it back): recomputed.
            let z = grow(pre, b * m);
            matmul(z, View::packed(b, m), input, View::of(rows), params.value(w)?, View::packed(k, m), false)?;
            bias_activate(z, params.value(bias)?, Activation::Linear);
            activation_grad(dz, &[], z, act, mask);
        } else {
            activation_grad(dz, &acts[i][..b * m], &[], act, None);
        }
        column_sums(params.with_grad(bias)?.1, dz);
        let (wv, gw) = params.with_grad(w)?;
        matmul(gw, View::packed(k, m), input, View::of(rows).t(), dz, View::packed(b, m), true)?;
        if i == 0 {
            matmul(dsrc, View::of(xr), dz, View::packed(b, m), wv, View::packed(k, m).t(), true)?;
        } else {
            let dprev = grow(pong, b * k);
            matmul(dprev, View::packed(b, k), dz, View::packed(b, m), wv, View::packed(k, m).t(), false)?;
            std::mem::swap(ping, pong);
        }
    }
    Ok(())
}

/// ESMM products: `log p = log sigmoid(a) + log sigmoid(b)` of their factors' heads.
pub(super) fn products(ir: &Model, heads: &mut [Vec<f32>], b: usize) -> Result<()> {
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
    Ok(())
}

/// Products pass their gradient to their factors: `d log sigmoid(z) / dz = sigmoid(-z)`.
pub(super) fn products_backward(ir: &Model, heads: &[Vec<f32>], dheads: &mut [Vec<f32>], b: usize) {
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
}

/// Each task's mean loss over its labelled rows (0 without labels), and into `dheads`
/// the gradient of the weighted total (`loss_weight` times `factors`) of each head
/// (`widths` values a row).
pub(super) fn loss(
    model: &CandleModel,
    batch: &Batch,
    factors: Option<&[f64]>,
    heads: &[Vec<f32>],
    dheads: &mut [Vec<f32>],
    widths: &[usize],
) -> Result<Vec<f32>> {
    let b = batch.size;
    let mut per_task = vec![0f32; model.ir.tasks.len()];
    for (t, task) in model.ir.tasks.iter().enumerate() {
        let k = widths[t];
        let dh = grow(&mut dheads[t], b * k);
        dh.fill(0.0);
        let Some(labels) = batch.labels[t].as_ref().filter(|_| task.label.is_some()) else { continue };
        let weight = task.loss_weight as f64 * factors.map_or(1.0, |f| f[t]);
        let mask: Option<Vec<f32>> =
            batch.masks[t].as_ref().map(|m| with_f32(m, "a label mask", |m| Ok(m.to_vec()))).transpose()?;
        // A mean over the labelled rows, at least one (no rows: a loss of 0, not 0/0).
        let present = mask.as_ref().map_or(b as f64, |m| m.iter().map(|&v| v as f64).sum::<f64>()).max(1.0);
        let scale = (weight / present) as f32;
        let mut sum = 0f64;
        with_f32(labels, "labels", |y| {
            if y.len() != b || heads[t].len() != b * k {
                candle_core::bail!("task `{}`: {} labels for {b} rows", task.name, y.len());
            }
            for r in 0..b {
                let keep = mask.as_ref().map_or(1.0, |m| m[r]);
                let g = &mut dh[r * k..(r + 1) * k];
                let loss = row_loss(task.link(), &heads[t][r * k..(r + 1) * k], y[r], g);
                sum += (loss * keep) as f64;
                g.iter_mut().for_each(|v| *v *= keep * scale);
            }
            Ok(())
        })?;
        per_task[t] = (sum / present) as f32;
    }
    Ok(per_task)
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
            // A label that is no class index has no one-hot entry: no loss and no
            // gradient, as the graph's one-hot product gives.
            if !(0..z.len()).any(|j| j as f32 == y) {
                g.fill(0.0);
                return 0.0;
            }
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
