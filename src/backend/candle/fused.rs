//! A layer's parameters as the fast CPU passes (`infer.rs`, `backprop/`) read them: each
//! expert group's fused weights per depth, the gates side by side, and the layout of
//! its mixes, all derived from the layer's plan ([`crate::ir::LayerPlan`]). The graph
//! itself runs the op program (`program.rs`).

use candle_core::Var;

use super::Result;
use crate::ir::{Activation, Gating, Layer, LayerPlan};

/// `count` experts, one fused weight per MLP depth: `[E, d_i, d_{i+1}]`, bias `[E, d_{i+1}]`.
pub struct ExpertStack {
    pub layers: Vec<(Var, Var)>,
    pub count: usize,
    pub activation: Activation,
    /// Dropout rate after each depth, applied only when `forward` gets an RNG.
    pub dropout: f32,
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
    /// Where the mixes' weights come from and go.
    pub layout: MixLayout,
}

/// How a layer's gates feed its mixes, derived from the plan once: which logit columns
/// each mix reads.
#[derive(Debug, Clone)]
pub struct MixLayout {
    /// Columns of the all-slot logits `[B, S * sum E_g]` that the mixes read, in mix
    /// order; None when that is every column in order.
    pub columns: Option<Vec<u32>>,
}

impl MixLayout {
    pub fn new(l: &Layer, plan: &LayerPlan) -> MixLayout {
        let total: usize = l.gates.iter().map(|g| g.experts).sum();
        let columns: Vec<u32> = plan.gate_columns(&l.gates).into_iter().map(|c| c as u32).collect();
        let identity =
            columns.iter().enumerate().all(|(i, &c)| i as u32 == c) && columns.len() == plan.inputs.len() * total;
        let columns = if identity || columns.is_empty() { None } else { Some(columns) };
        MixLayout { columns }
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
    pub fn new(l: &Layer, n_tasks: usize) -> LayerParams {
        let plan = l.plan(n_tasks);
        let groups = l
            .groups
            .iter()
            .map(|g| ExpertStack { layers: Vec::new(), count: g.count, activation: g.activation, dropout: g.dropout })
            .collect();
        let layout = MixLayout::new(l, &plan);
        LayerParams { plan, groups, gates: None, noise: None, gating: l.gating, layout }
    }
}
