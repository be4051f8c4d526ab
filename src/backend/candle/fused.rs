//! Fused experts and gates: the core of every gated layer, executing the layer's plan
//! ([`crate::ir::LayerPlan`]) with one op per stage, never a loop over experts.

use candle_core::{Tensor, Var, D};

use super::dense::dense;
use super::{activate, add_bias, add_opt, dropout, softplus, Result};
use crate::ir::{Activation, Gating, Layer, LayerPlan, Stream};
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
        let mut h = dense(x, &w, &b, self.activation)?; // [N, E*d1]
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

/// A layer's parameters and the constant index tensors that run its plan fused.
pub struct LayerParams {
    pub plan: LayerPlan,
    /// One stack per expert group, in the layer's group order.
    pub groups: Vec<ExpertStack>,
    /// Every gate side by side: weight `[d_in, sum E_g]`, bias `[sum E_g]`.
    pub gates: Option<(Var, Var)>,
    /// Noisy top-k gating: weights of the noise scale, `[d_in, sum E_g]`.
    pub noise: Option<Var>,
    pub gating: Gating,
    /// Where the mixes' weights come from and go (host copy, for other backends).
    pub layout: MixLayout,
    /// `layout.columns` on the device.
    logit_columns: Option<Tensor>,
    /// `layout.scatter` on the device.
    scatter: Option<Tensor>,
}

/// How a layer's gates feed its mixes, derived from the plan once: which logit columns
/// each mix reads, and where each mix's weights land among the expert instances.
#[derive(Debug, Clone)]
pub struct MixLayout {
    /// Columns of the all-slot logits `[B, S * sum E_g]` that the mixes read, in mix
    /// order; None when that is every column in order.
    pub columns: Option<Vec<u32>>,
    /// Experts each mix weighs, when every mix weighs the same number (one softmax).
    pub equal_width: Option<usize>,
    /// Places each mix's weights among all instances: `(rows, cols, values)` of a
    /// `[sum E_m, M * N]` 0/1 matrix; None when every mix weighs all instances in order.
    pub scatter: Option<(usize, usize, Vec<f32>)>,
}

impl MixLayout {
    pub fn new(l: &Layer, plan: &LayerPlan) -> MixLayout {
        // Gate g's logit columns start at the sum of the earlier gates' widths.
        let offsets: Vec<usize> =
            l.gates.iter().scan(0, |acc, g| Some(std::mem::replace(acc, *acc + g.experts))).collect();
        let total: usize = l.gates.iter().map(|g| g.experts).sum();
        let offsets = &offsets;
        let columns: Vec<u32> = plan
            .mixes
            .iter()
            .flat_map(|m| (0..m.instances.len()).map(move |j| (m.input * total + offsets[m.gate] + j) as u32))
            .collect();
        let identity =
            columns.iter().enumerate().all(|(i, &c)| i as u32 == c) && columns.len() == plan.inputs.len() * total;
        let columns = if identity || columns.is_empty() { None } else { Some(columns) };
        let widths: Vec<usize> = plan.mixes.iter().map(|m| m.instances.len()).collect();
        let equal_width = widths.first().copied().filter(|w| widths.iter().all(|x| x == w));
        let n = plan.instances;
        let all_in_order = plan.mixes.iter().all(|m| m.instances.iter().copied().eq(0..n));
        let scatter = if all_in_order || plan.mixes.is_empty() {
            None
        } else {
            let rows: usize = widths.iter().sum();
            let cols = plan.mixes.len() * n;
            let mut q = vec![0f32; rows * cols];
            let mut row = 0;
            for (mi, m) in plan.mixes.iter().enumerate() {
                for &inst in &m.instances {
                    q[row * cols + mi * n + inst] = 1.0;
                    row += 1;
                }
            }
            Some((rows, cols, q))
        };
        MixLayout { columns, equal_width, scatter }
    }
}

impl LayerParams {
    /// The width of each expert's output: the last depth's units (0 with no experts).
    pub(crate) fn expert_width(&self) -> Result<usize> {
        let last = self.groups.first().and_then(|g| g.layers.last());
        Ok(last.map(|(w, _)| w.as_tensor().dim(2)).transpose()?.unwrap_or(0))
    }

    /// The layer's structure and constants; the parameters are filled in by the caller
    /// from the parameter table.
    pub fn new(l: &Layer, n_tasks: usize, device: &candle_core::Device) -> Result<LayerParams> {
        let plan = l.plan(n_tasks);
        let groups = l
            .groups
            .iter()
            .map(|g| ExpertStack { layers: Vec::new(), count: g.count, activation: g.activation, dropout: g.dropout })
            .collect();
        let layout = MixLayout::new(l, &plan);
        let logit_columns = match &layout.columns {
            Some(c) => Some(Tensor::from_vec(c.clone(), c.len(), device)?),
            None => None,
        };
        let scatter = match &layout.scatter {
            Some((rows, cols, q)) => Some(Tensor::from_vec(q.clone(), (*rows, *cols), device)?),
            None => None,
        };
        Ok(LayerParams { plan, groups, gates: None, noise: None, gating: l.gating, layout, logit_columns, scatter })
    }

    /// Runs the layer on a stream; with `rng`, applies dropout and gate noise (training).
    ///
    /// # Shapes
    /// `h: [B, d]` (shared stream) or `[B, S, d]` (S slots) -> the output stream
    /// `[B, u]` or `[B, S', u]`, each mix's gate weights `[B, E_m]`, and the weighted
    /// load-balancing loss `[]` when the layer has one.
    pub fn forward(&self, h: &Tensor, output: Stream, mut rng: Option<&mut Rng>) -> Result<LayerOutput> {
        let b = h.dim(0)?;
        let n_slots = self.plan.inputs.len();
        let d = *h.dims().last().unwrap_or(&0);
        let slots = h.reshape((b, n_slots, d))?; // [B, S, d]
                                                 // Every group on its slots: [B, slots * E, u] each, side by side on the instance axis.
        let mut parts = Vec::with_capacity(self.plan.runs.len());
        for run in &self.plan.runs {
            let k = run.slots.len();
            let x = if n_slots == 1 {
                h.reshape((b, d))?
            } else if run.slots.iter().copied().eq(run.slots[0]..run.slots[0] + k) {
                slots.narrow(1, run.slots[0], k)?.contiguous()?.reshape((b * k, d))?
            // [B*k, d]
            } else {
                let idx: Vec<u32> = run.slots.iter().map(|&s| s as u32).collect();
                let idx = Tensor::from_vec(idx, k, h.device())?;
                slots.index_select(&idx, 1)?.reshape((b * k, d))?
            };
            let y = self.groups[run.group].forward(&x, rng.as_deref_mut())?; // [B*k, E, u]
            let (e, u) = (y.dim(1)?, y.dim(2)?);
            parts.push(y.reshape((b, k * e, u))?); // [B, k*E, u]
        }
        let experts = if parts.len() == 1 { parts.remove(0) } else { Tensor::cat(&parts, 1)? }; // [B, N, u]
        let u = experts.dim(2)?;
        let Some((w, bias)) = &self.gates else {
            // Ungated: each instance is an output slot.
            return Ok(LayerOutput { stream: shape_output(experts, output, b, u)?, gates: Vec::new(), balance: None });
        };
        // All gates on all slots: one matmul. [B*S, d] x [d, sum E_g] -> [B, S * sum E_g],
        // then the columns the mixes read: [B, sum E_m].
        let total = w.as_tensor().dim(1)?;
        let flat = slots.reshape((b * n_slots, d))?;
        let select = |x: Tensor| -> Result<Tensor> {
            let x = x.reshape((b, n_slots * total))?;
            match &self.logit_columns {
                Some(idx) => x.index_select(idx, 1),
                None => Ok(x),
            }
        };
        let mut clean = select(dense(&flat, w.as_tensor(), bias.as_tensor(), Activation::Linear)?)?;
        if self.gating.temperature != 1.0 {
            clean = (clean / self.gating.temperature as f64)?;
        }
        // Noisy top-k (training only): logits + N(0, 1) * softplus(x W_noise).
        let noisy = match (&self.noise, rng.as_deref_mut()) {
            (Some(wn), Some(rng)) => {
                let scale = (softplus(&select(flat.matmul(wn.as_tensor())?)?)? + 1e-2)?;
                let eps = if scale.device().is_cpu() {
                    let eps: Vec<f32> = (0..scale.elem_count()).map(|_| rng.normal() as f32).collect();
                    Tensor::from_vec(eps, scale.shape(), scale.device())?
                } else {
                    // On a GPU, drawn there (no upload per step).
                    use super::device_ops::Fill;
                    super::device_ops::StandardNormal { seed: rng.next_u64() }.like(&scale)?
                };
                Some(((&clean + (eps * &scale)?)?, scale))
            }
            _ => None,
        };
        let m = self.plan.mixes.len();
        let gate = |range: Option<(usize, usize)>, shape: &[usize]| -> Result<(Tensor, Option<Tensor>)> {
            let cut = |x: &Tensor| -> Result<Tensor> {
                match range {
                    Some((at, k)) => x.narrow(1, at, k)?.reshape(shape),
                    None => x.reshape(shape),
                }
            };
            let noise = noisy.as_ref().map(|(x, s)| Ok::<_, candle_core::Error>((cut(x)?, cut(s)?))).transpose()?;
            gate_weights(&cut(&clean)?, noise.as_ref().map(|(x, s)| (x, s)), &self.gating)
        };
        let (weights, per_mix, balance) = match self.layout.equal_width {
            Some(e) => {
                let (p, aux) = gate(None, &[b, m, e])?; // [B, M, E]
                let per_mix = (0..m).map(|i| p.get_on_dim(1, i)).collect::<Result<Vec<_>>>()?;
                (p.reshape((b, m * e))?, per_mix, aux)
            }
            None => {
                let mut per_mix = Vec::with_capacity(m);
                let mut balance: Option<Tensor> = None;
                let mut at = 0;
                for mix in &self.plan.mixes {
                    let k = mix.instances.len();
                    let (p, aux) = gate(Some((at, k)), &[b, k])?; // [B, E_m]
                    per_mix.push(p);
                    balance = add_opt(balance, aux)?;
                    at += k;
                }
                (Tensor::cat(&per_mix, 1)?, per_mix, balance)
            }
        };
        let n = self.plan.instances;
        let dense = match &self.scatter {
            Some(q) => weights.matmul(q)?.reshape((b, m, n))?, // [B, M, N]
            None => weights.reshape((b, m, n))?,
        };
        let mixed = super::batched_matmul(&dense, &experts)?; // [B, M, u]
        let balance = balance.map(|x| x * self.gating.balance as f64).transpose()?;
        Ok(LayerOutput { stream: shape_output(mixed, output, b, u)?, gates: per_mix, balance })
    }
}

/// What a layer hands on.
pub struct LayerOutput {
    /// The output stream, `[B, u]` or `[B, S', u]`.
    pub stream: Tensor,
    /// Each mix's gate weights, `[B, E_m]`.
    pub gates: Vec<Tensor>,
    /// The weighted load-balancing loss, `[]`, when the layer has one (training).
    pub balance: Option<Tensor>,
}

/// Gate weights from logits over the last axis (`[B, E]` or `[B, M, E]`): top-k keeps
/// each gate's k largest (noisy, in training) logits, then a softmax. Also returns the
/// unweighted balance loss when the layer has one: the squared coefficient of variation
/// of each gate's importance (its weights summed over the batch) and, with noise, of its
/// load (the smooth estimate of how many rows pick each expert, Shazeer et al. 2017,
/// eq. 8-10), summed over the gates.
fn gate_weights(clean: &Tensor, noisy: Option<(&Tensor, &Tensor)>, g: &Gating) -> Result<(Tensor, Option<Tensor>)> {
    let logits = noisy.map_or(clean, |(x, _)| x);
    let masked = match g.top_k {
        Some(k) => {
            // The k-th largest logit of each gate, as a threshold (no gradient through it).
            let (sorted, _) = logits.detach().sort_last_dim(false)?;
            let kth = sorted.narrow(D::Minus1, k - 1, 1)?;
            let keep = logits.broadcast_ge(&kth)?.to_dtype(logits.dtype())?;
            (logits + ((keep - 1.0)? * 1e9)?)?
        }
        None => logits.clone(),
    };
    let p = candle_nn::ops::softmax(&masked, D::Minus1)?;
    if g.balance <= 0.0 {
        return Ok((p, None));
    }
    let cv2 = |x: &Tensor| -> Result<Tensor> {
        // [.., E] summed over the batch axis already; CV^2 over experts, summed over gates.
        let mean = x.mean_keepdim(D::Minus1)?;
        let var = x.broadcast_sub(&mean)?.sqr()?.mean_keepdim(D::Minus1)?;
        (var / (mean.sqr()? + 1e-10)?)?.sum_all()
    };
    let mut aux = cv2(&p.sum(0)?)?;
    if let (Some(k), Some((noisy, scale))) = (g.top_k, noisy) {
        // P(expert i stays in the top k when only its own noise is redrawn): its clean
        // logit against the k-th largest of the others' noisy logits.
        let (sorted, _) = noisy.detach().sort_last_dim(false)?;
        let kth = sorted.narrow(D::Minus1, k - 1, 1)?;
        let next = sorted.narrow(D::Minus1, k, 1)?;
        let in_top = noisy.detach().broadcast_ge(&kth)?.to_dtype(noisy.dtype())?;
        let threshold = (in_top.broadcast_mul(&next)? + (1.0 - &in_top)?.broadcast_mul(&kth)?)?;
        let z = ((clean - threshold)? / scale)?;
        let prob = ((z / std::f64::consts::SQRT_2)?.erf()? + 1.0)? * 0.5;
        aux = (aux + cv2(&prob?.sum(0)?)?)?;
    }
    Ok((p, Some(aux)))
}

/// `[B, S, u]` as the output stream wants it: `[B, u]` for a shared stream.
fn shape_output(x: Tensor, output: Stream, b: usize, u: usize) -> Result<Tensor> {
    match output {
        Stream::Shared { .. } => x.reshape((b, u)),
        Stream::PerTask { .. } | Stream::PerTaskShared { .. } => Ok(x),
    }
}
