//! The hand-written step's arithmetic: activations and their derivatives, and the
//! reductions the backward needs (its GEMMs are `strided.rs`'s).

use super::super::infer::{bias_activate, grow};
use crate::ir::Activation;

/// candle's GELU (the tanh approximation) and its derivative, as its backward has it.
pub(super) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + (0.797_884_6f32 * x * (1.0 + 0.044715 * x * x)).tanh())
}

pub(super) fn gelu_grad(x: f32) -> f32 {
    let cube = x * x * x;
    let t = (0.035_677_4 * cube + 0.797_885 * x).tanh();
    0.5 * t + (0.053_516_1 * cube + 0.398_942 * x) * (1.0 - t * t) + 0.5
}

/// `act'(z)`.
pub(super) fn derivative(z: f32, act: Activation) -> f32 {
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
pub(super) fn activation_grad(d: &mut [f32], a: &[f32], pre: &[f32], act: Activation, mask: Option<&[f32]>) {
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
pub(super) fn bias_activate_keep(y: &mut [f32], b: &[f32], act: Activation, pre: &mut Vec<f32>, keep_pre: bool) {
    if !keep_pre && act != Activation::Gelu {
        return bias_activate(y, b, act);
    }
    bias_activate(y, b, Activation::Linear);
    grow(pre, y.len()).copy_from_slice(y);
    y.iter_mut().for_each(|v| *v = apply(*v, act));
}

/// `act(x)`, as `infer::bias_activate` computes it.
pub(super) fn apply(x: f32, act: Activation) -> f32 {
    match act {
        Activation::Relu => x.max(0.0),
        Activation::Tanh => x.tanh(),
        Activation::Sigmoid => 1.0 / ((-x).exp() + 1.0),
        Activation::Gelu => gelu(x),
        Activation::Linear => x,
    }
}

/// `a . b` over eight running sums (a float sum in one accumulator does not vectorise).
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
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
pub(super) fn column_sums(db: &mut [f32], dz: &[f32]) {
    for row in dz.chunks_exact(db.len().max(1)) {
        db.iter_mut().zip(row).for_each(|(s, &g)| *s += g);
    }
}
