//! The input row's gradient in the hand-written step: through the crosses to their
//! factors, then each categorical feature's columns as its lookups' rows (a bag's
//! slots by their pooling).

use candle_core::{DType, Tensor, Var};

use super::super::infer::{grow, with_f32, with_u32};
use super::{Params, Result};
use crate::backend::candle::{Batch, CandleModel, Lookup};
use crate::ir::{FeatureKind, Pooling};

/// The input's gradient `dx` through the crosses to the features, as each categorical
/// feature's lookup (ids, a placeholder leaf) and its rows' gradient (`[B, dim]`, a
/// bag's `[B * len, dim]`), with the width of a row.
pub(super) fn input_grads(
    model: &CandleModel,
    batch: &Batch,
    x: &[f32],
    dx: &mut [f32],
    params: &Params,
    b: usize,
) -> Result<Vec<(Lookup, usize, Vec<f32>)>> {
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
    crosses_backward(ir, &offsets, at, x, dx, b);
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
        out.push((Lookup { var, ids, leaf, slots }, dim, rows));
    }
    Ok(out)
}

/// The crosses' gradient (their columns of `dx`, from `at`) to their factors' columns
/// (at `offsets`), last cross first: `d a += d c * b`, `d b += d c * a`.
fn crosses_backward(ir: &crate::ir::Model, offsets: &[usize], mut at: usize, x: &[f32], dx: &mut [f32], b: usize) {
    let width = ir.input_width;
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
