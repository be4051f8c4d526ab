//! Fused experts and gates: the core of every gated layer.

use candle_core::{Tensor, Var, D};

use super::{activate, add_bias, dropout, Result};
use crate::ir::{Activation, Stream};
use crate::rng::Rng;

/// `count` experts, one fused weight per MLP depth: `[E, d_i, d_{i+1}]`, bias `[E, d_{i+1}]`.
pub struct ExpertStack {
    pub layers: Vec<(Var, Var)>,
    pub count: usize,
    pub activation: Activation,
    /// Dropout rate after each depth, applied only when `forward` gets an RNG.
    pub dropout: f32,
}

impl ExpertStack {
    /// Runs every expert on every row; with `rng`, applies dropout (training).
    ///
    /// # Shapes
    /// `x: [N, d_in]` -> `[N, E, d_out]`.
    pub fn forward(&self, x: &Tensor, mut rng: Option<&mut Rng>) -> Result<Tensor> {
        let n = x.dim(0)?;
        let e = self.count;
        let (w0, b0) = &self.layers[0];
        let (_, d_in, d1) = w0.as_tensor().dims3()?;
        // Depth 0 is one GEMM over the experts' concatenated weights.
        let w = w0.as_tensor().permute((1, 0, 2))?.reshape((d_in, e * d1))?; // [d_in, E*d1]
        let b = b0.as_tensor().reshape(e * d1)?; // [E*d1]
        let mut h = activate(&add_bias(&x.matmul(&w)?, &b)?, self.activation)?; // [N, E*d1]
        h = dropout(&h, self.dropout, rng.as_deref_mut())?;
        if self.layers.len() == 1 {
            return h.reshape((n, e, d1)); // [N, E, d1]
        }
        // Deeper: one batched matmul over the expert axis.
        let mut h3 = h.reshape((n, e, d1))?.transpose(0, 1)?.contiguous()?; // [E, N, d1]
        for (w, b) in &self.layers[1..] {
            let (_, _, d) = w.as_tensor().dims3()?;
            let bias = b.as_tensor().reshape((e, 1, d))?; // [E, 1, d]
            h = add_bias(&h3.matmul(w.as_tensor())?, &bias)?; // [E, N, d]
            h3 = dropout(&activate(&h, self.activation)?, self.dropout, rng.as_deref_mut())?;
        }
        h3.transpose(0, 1)?.contiguous() // [N, E, d_out]
    }
}

/// All gates of a layer: weight `[G, d_in, E]`, bias `[G, E]`.
pub struct GateBank {
    pub weight: Var,
    pub bias: Var,
    pub gates: usize,
    pub experts: usize,
}

impl GateBank {
    /// Every gate on the same input, as one matmul.
    ///
    /// # Shapes
    /// `x: [N, d_in]` -> softmax weights `[N, G, E]`.
    pub fn forward_shared(&self, x: &Tensor) -> Result<Tensor> {
        let (g, e) = (self.gates, self.experts);
        let n = x.dim(0)?;
        let d_in = x.dim(1)?;
        let w = if g == 1 {
            self.weight.as_tensor().reshape((d_in, e))?
        } else {
            self.weight.as_tensor().permute((1, 0, 2))?.reshape((d_in, g * e))? // [d_in, G*E]
        };
        let b = self.bias.as_tensor().reshape(g * e)?;
        let logits = add_bias(&x.matmul(&w)?, &b)?.reshape((n, g, e))?; // [N, G, E]
        candle_nn::ops::softmax(&logits, D::Minus1)
    }

    /// Gate t on slot t of a per-task stream, as one batched matmul.
    ///
    /// # Shapes
    /// `x: [T, B, d_in]` (T == G) -> `[T, B, E]`.
    pub fn forward_per_slot(&self, x: &Tensor) -> Result<Tensor> {
        let e = self.experts;
        let bias = self.bias.as_tensor().reshape((self.gates, 1, e))?; // [G, 1, E]
        let logits = add_bias(&x.matmul(self.weight.as_tensor())?, &bias)?; // [T, B, E]
        candle_nn::ops::softmax(&logits, D::Minus1)
    }
}

/// One layer on a stream.
///
/// # Shapes
/// input `[B, d]` (shared) or `[B, T, d]` (per task) -> output `[B, u]` or `[B, T, u]`,
/// plus the gate weights `[B, G, E]` of a gated layer.
pub fn forward_layer(
    h: &Tensor,
    input: Stream,
    output: Stream,
    experts: &ExpertStack,
    gates: Option<&GateBank>,
    n_tasks: usize,
    rng: Option<&mut Rng>,
) -> Result<(Tensor, Option<Tensor>)> {
    let b = h.dim(0)?;
    match input {
        Stream::Shared { .. } => {
            let x = experts.forward(h, rng)?; // [B, E, u]
            let u = x.dim(2)?;
            let Some(gates) = gates else {
                return Ok((x.reshape((b, u))?, None)); // shared-bottom: E == 1
            };
            let g = gates.forward_shared(h)?; // [B, G, E]
            let mixed = g.matmul(&x)?; // [B, G, u]
            let out = match output {
                Stream::Shared { .. } => mixed.reshape((b, u))?, // G == 1
                Stream::PerTask { .. } => mixed,                 // G == T
            };
            Ok((out, Some(g)))
        }
        Stream::PerTask { width } => {
            let t = n_tasks;
            let flat = h.reshape((b * t, width))?; // [B*T, d]
            let x = experts.forward(&flat, rng)?; // [B*T, E, u]
            let (e, u) = (x.dim(1)?, x.dim(2)?);
            let Some(gates) = gates else {
                return Ok((x.reshape((b, t, u))?, None));
            };
            let g = if gates.gates == 1 {
                gates.forward_shared(&flat)?.reshape((b * t, 1, e))? // one gate on every slot
            } else {
                let per_slot = h.transpose(0, 1)?.contiguous()?; // [T, B, d]
                let g = gates.forward_per_slot(&per_slot)?; // [T, B, E]
                g.transpose(0, 1)?.contiguous()?.reshape((b * t, 1, e))? // [B*T, 1, E]
            };
            let mixed = g.matmul(&x)?.reshape((b, t, u))?; // [B, T, u]
            Ok((mixed, Some(g.reshape((b, t, e))?)))
        }
    }
}
