//! The candle backend: validated IR -> [`CandleModel`] (CPU; CUDA behind `cuda`).
//!
//! Every parameter is a candle `Var` made from the IR's parameter table
//! ([`crate::ir::Model::parameters`]): its name, shape and initialiser come from there.
//! The model runs its op programs ([`crate::program`]): on the CPU through the native
//! interpreter (`native.rs`: evaluation, and training steps whose loss is the
//! program's), elsewhere and for losses coupled across the batch through candle's
//! graph of the same program (`program.rs`), which autograd differentiates.

mod batch;
mod dense;
pub mod device_ops;
pub mod loss;
mod native;
mod ops;
mod program;

pub use batch::{Batch, Feed, Order, Resident};
pub use ops::apply_link;
pub(crate) use ops::{activate, add_bias, add_opt, batched_matmul, cpu_f32, dropout, log_sigmoid, softplus};

pub use crate::backend::native::fma_peak;
pub(crate) use crate::backend::native::prefetch;
pub use native::Gradients;

use candle_core::{Tensor, Var};

use super::{Backend, Device};
use crate::ir::{FeatureKind, Init, Model, Role, Validated};
use crate::program::Mode;
use crate::rng::Rng;

pub type Result<T> = candle_core::Result<T>;

/// Maps our device enum to candle's.
pub fn candle_device(d: Device) -> Result<candle_core::Device> {
    match d {
        Device::Cpu => Ok(candle_core::Device::Cpu),
        // One stream of our own, whichever thread queues work on it. candle's default
        // is the per-thread default stream: an optimizer step run on a worker thread then
        // raced the backward pass still running on the main thread's stream (wrong
        // gradients, and buffers freed under a kernel: an illegal address at batch
        // 61,440 on an H200).
        #[cfg(feature = "cuda")]
        Device::Cuda(n) => {
            // candle's error carries a backtrace; the first line says what failed.
            let dev = candle_core::cuda_backend::CudaDevice::new_with_stream(n).map_err(|e| {
                let what = e.to_string();
                candle_core::Error::Msg(format!(
                    "cannot open CUDA device {n}: {} (is there a GPU, and the NVIDIA driver's libcuda.so.1?)",
                    what.lines().next().unwrap_or("unknown error")
                ))
            })?;
            // SAFETY: every kernel, copy, cuBLAS call and free of this device goes to its
            // one stream (candle's ops, and ours through `device_ops::cuda::kernel`), so
            // no tensor is used on another stream: cudarc's per-buffer events, which
            // order uses across streams, would be host time spent for nothing.
            unsafe { dev.disable_event_tracking() };
            Ok(candle_core::Device::Cuda(dev))
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(candle_core::Error::Msg(
            "this multigate was built without the `cuda` feature; rebuild with --features cuda".into(),
        )),
    }
}

/// A bag's embeddings `[B * len, dim]` pooled by its slot weights `w` `[B, len]` into
/// `[B, dim]`: one batched matmul for sum and mean (the weights carry the mean's
/// division); for max, padding slots are pushed far below any embedding and an empty
/// row gives zeros.
fn pool(e: &Tensor, w: &Tensor, pooling: crate::ir::Pooling) -> Result<Tensor> {
    let (b, len) = w.dims2()?;
    let dim = e.dim(1)?;
    let e = e.reshape((b, len, dim))?;
    match pooling {
        crate::ir::Pooling::Sum | crate::ir::Pooling::Mean => batched_matmul(&w.unsqueeze(1)?, &e)?.squeeze(1),
        crate::ir::Pooling::Max => {
            const FAR: f64 = 1e9;
            let pushed = e.broadcast_add(&((w - 1.0)? * FAR)?.unsqueeze(2)?)?;
            let present = w.max_keepdim(1)?; // [B, 1]: 1 unless the row is empty
            pushed.max(1)?.broadcast_mul(&present)
        }
    }
}

/// The candle backend for one device.
pub struct CandleBackend {
    pub device: candle_core::Device,
}

impl Backend for CandleBackend {
    type Model = CandleModel;
    type Error = candle_core::Error;
    fn build(&self, model: &Validated, seed: u64) -> Result<CandleModel> {
        CandleModel::new(model, seed, &self.device)
    }
}

/// The forward pass's results.
pub struct Output {
    /// Per task, its raw output as its [`Link`](crate::ir::Link) says: a logit `[B]`, a log-probability
    /// `[B]`, class logits `[B, K]` or a (transformed) value `[B]`.
    pub heads: Vec<Tensor>,
    /// Per gated layer, per gate application of its plan (`LayerPlan::mixes`): the
    /// gate's weights `[B, E_m]` over the experts it mixes.
    pub gates: Vec<Vec<Tensor>>,
    /// Training only: the embedding lookups, whose gradients the optimizer applies
    /// sparsely (empty in evaluation).
    pub lookups: Vec<Lookup>,
    /// The weighted load-balancing loss of the gated layers that have one, `[]`.
    pub balance: Option<Tensor>,
    /// Training only: per task with labels in the batch, its loss `[]` (the masked
    /// mean of its link's per-row loss); None for the others (and in evaluation).
    pub losses: Vec<Option<Tensor>>,
}

/// A gated layer's gate weights `[B, sum E_m]` cut into each mix's `[B, E_m]`.
fn mixes_of(probs: &Tensor, widths: &[usize]) -> Result<Vec<Tensor>> {
    let mut at = 0;
    let mut mixes = Vec::with_capacity(widths.len());
    for &w in widths {
        mixes.push(probs.narrow(1, at, w)?.contiguous()?);
        at += w;
    }
    Ok(mixes)
}

/// One embedding lookup of a training step. The looked-up rows are a leaf `Var`, so
/// backward yields a `[B, dim]` gradient instead of a dense `[rows, dim]` one (candle
/// zero-fills and copies a table-sized gradient per lookup otherwise).
pub struct Lookup {
    /// Index of the table in [`CandleModel::vars`].
    pub var: usize,
    /// Table rows looked up, `[B]` (u32).
    pub ids: Tensor,
    /// The looked-up embeddings, `[B, dim]`.
    pub leaf: Var,
    /// A bag's slot weights `[B * len]`: a padding slot (weight 0) is no lookup, so
    /// that `lazy_adam` leaves its row alone (on the CPU; a CUDA step still counts it).
    pub slots: Option<Tensor>,
}

/// A model built from IR, ready to train.
pub struct CandleModel {
    ir: Model,
    device: candle_core::Device,
    /// Every parameter with its checkpoint name, in a stable order.
    vars: Vec<(String, Var)>,
    /// Per feature: its embedding table (None for dense features).
    embeddings: Vec<Option<Var>>,
    /// Uncertainty weighting: each task's learned log-variance, `[T]`.
    log_variance: Option<Var>,
    /// Train through candle's graph even where the native interpreter applies.
    graph_training: bool,
    /// Training without dropout or gate noise (see [`CandleModel::without_randomness`]).
    deterministic: bool,
    /// The op programs the graph runs.
    programs: Programs,
    /// The evaluation program on the native interpreter (CPU only; other devices run
    /// candle's graph).
    cpu_eval: Option<native::Compiled>,
    /// The training program and its derived backward on the native interpreter (CPU only).
    cpu_train: Option<native::Compiled>,
}

/// A model's evaluation and training programs, lowered once, and where each parameter
/// name sits in `CandleModel::vars` (the programs name their parameters).
struct Programs {
    eval: crate::program::Program,
    train: crate::program::Program,
    var_index: std::collections::HashMap<String, usize>,
}

/// A parameter's initial value, drawn from our seeded RNG as its [`Init`] says.
fn init_value(rng: &mut Rng, shape: &[usize], init: &Init) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let uniform = |rng: &mut Rng, limit: f64| ((rng.uniform() * 2.0 - 1.0) * limit) as f32;
    match init {
        Init::Zeros => vec![0.0; n],
        Init::Uniform { limit } => (0..n).map(|_| uniform(rng, *limit)).collect(),
        Init::Glorot { fan_in, blocks } => {
            // The limit of each column of the last axis, by the block it is in.
            let limits: Vec<f64> =
                blocks.iter().flat_map(|&w| std::iter::repeat_n((6.0 / (fan_in + w) as f64).sqrt(), w)).collect();
            let last = limits.len().max(1);
            (0..n).map(|i| uniform(rng, limits.get(i % last).copied().unwrap_or(0.0))).collect()
        }
    }
}

impl CandleModel {
    /// Builds every parameter of the IR's parameter table, initialised from `seed`.
    pub fn new(model: &Validated, seed: u64, device: &candle_core::Device) -> Result<CandleModel> {
        let ir = model.model().clone();
        let mut rng = Rng::derive(seed, "init");
        let mut vars = Vec::new();
        let mut embeddings: Vec<Option<Var>> = vec![None; ir.features.len()];
        let mut log_variance = None;
        for p in ir.parameters() {
            let value = init_value(&mut rng, &p.shape, &p.init);
            let var = Var::from_tensor(&Tensor::from_vec(value, p.shape.as_slice(), device)?)?;
            vars.push((p.name.clone(), var.clone()));
            match p.role {
                Role::Embedding { feature } => embeddings[feature] = Some(var),
                Role::LossLogVariance => log_variance = Some(var),
                _ => {}
            }
        }
        // Features reading another's table look up that table.
        for (fi, f) in ir.features.iter().enumerate() {
            if let Some(owner) = f.shares {
                embeddings[fi] = embeddings[owner.0].clone();
            }
        }
        let lowered = |mode| {
            crate::lower::lower_program(model, mode)
                .map_err(|e| candle_core::Error::Msg(format!("the model's op program: {e}")))
        };
        let var_index =
            vars.iter().enumerate().map(|(i, (name, _)): (usize, &(String, Var))| (name.clone(), i)).collect();
        let programs = Programs { eval: lowered(Mode::Eval)?, train: lowered(Mode::Train)?, var_index };
        let (cpu_eval, cpu_train) = if device.is_cpu() {
            use crate::backend::native::Native;
            let backward = crate::program::grad::derive(&programs.train)
                .map_err(|e| candle_core::Error::Msg(format!("the model's backward program: {e}")))?;
            let eval = native::Compiled::new(Native::new(programs.eval.clone(), None), &programs.var_index)?;
            let train =
                native::Compiled::new(Native::new(programs.train.clone(), Some(backward)), &programs.var_index)?;
            (Some(eval), Some(train))
        } else {
            (None, None)
        };
        Ok(CandleModel {
            ir,
            device: device.clone(),
            vars,
            embeddings,
            log_variance,
            graph_training: false,
            deterministic: false,
            programs,
            cpu_eval,
            cpu_train,
        })
    }

    /// The concatenated input `[B, input_width]`.
    /// The concatenated input. With `lookups` (training), each looked-up embedding is a
    /// leaf `Var` recorded there, so that the table's gradient stays sparse.
    fn inputs(&self, batch: &Batch, mut lookups: Option<&mut Vec<Lookup>>) -> Result<Tensor> {
        let mut pieces = Vec::with_capacity(self.ir.features.len() + self.ir.crosses.len());
        let mut looked_up: Vec<Option<Tensor>> = Vec::with_capacity(self.ir.features.len());
        let (mut cat_i, mut dense_off) = (0, 0);
        for (f, emb) in self.ir.features.iter().zip(&self.embeddings) {
            match (&f.kind, emb) {
                (FeatureKind::Categorical { bag, .. }, Some(table)) => {
                    // A bag's ids `[B, len]` are looked up as `[B * len]` and pooled.
                    let ids = &batch.cat[cat_i].flatten_all()?;
                    let weights = batch.bags.get(cat_i).and_then(Option::as_ref);
                    cat_i += 1;
                    let e = match lookups.as_deref_mut() {
                        Some(lookups) => {
                            // A leaf copy of the rows, cut from the table in the graph.
                            let leaf = Var::from_tensor(&table.as_tensor().detach().index_select(ids, 0)?)?;
                            let var = self.vars.iter().position(|(_, v)| v.as_tensor().id() == table.as_tensor().id());
                            let var = var
                                .ok_or_else(|| candle_core::Error::Msg("embedding table is not a parameter".into()))?;
                            let e = leaf.as_tensor().clone();
                            let slots = weights.map(Tensor::flatten_all).transpose()?;
                            lookups.push(Lookup { var, ids: ids.clone(), leaf, slots });
                            e
                        }
                        None => table.as_tensor().index_select(ids, 0)?, // [B, dim]
                    };
                    let e = match (bag, weights) {
                        (Some(bag), Some(w)) => pool(&e, w, bag.pooling)?,
                        (None, None) => e,
                        _ => {
                            return Err(candle_core::Error::Msg(format!(
                                "feature `{}`: batch and bag disagree",
                                f.name
                            )))
                        }
                    };
                    pieces.push(e.clone());
                    looked_up.push(Some(e));
                }
                (FeatureKind::Dense { width, .. }, _) => {
                    let dense = batch
                        .dense
                        .as_ref()
                        .ok_or_else(|| candle_core::Error::Msg("batch has no dense values".into()))?;
                    pieces.push(dense.narrow(1, dense_off, *width)?); // [B, width]
                    dense_off += width;
                    looked_up.push(None);
                }
                _ => return Err(candle_core::Error::Msg("embedding table missing".into())),
            }
        }
        for c in &self.ir.crosses {
            match (&looked_up[c.a.0], &looked_up[c.b.0]) {
                (Some(a), Some(b)) => pieces.push((a * b)?), // [B, dim]
                _ => return Err(candle_core::Error::Msg("cross of a dense feature".into())),
            }
        }
        if pieces.len() == 1 {
            return pieces[0].contiguous();
        }
        Tensor::cat(&pieces, 1) // [B, input_width]
    }

    /// The concatenated input `[B, input_width]` the first layer reads, as evaluation
    /// computes it: embeddings (bags pooled), dense values, crosses.
    pub fn input_row(&self, batch: &Batch) -> Result<Tensor> {
        self.inputs(batch, None)
    }

    /// [`CandleModel::input_row`] as training computes it, with the lookups whose
    /// gradients the optimizer applies.
    pub fn input_row_train(&self, batch: &Batch) -> Result<(Tensor, Vec<Lookup>)> {
        let mut lookups = Vec::new();
        let row = self.inputs(batch, Some(&mut lookups))?;
        Ok((row, lookups))
    }

    /// Runs the model for evaluation (no dropout), with each gated layer's mix weights.
    /// Shapes: see [`Output`]. On the CPU the native interpreter runs the evaluation
    /// program (no graph, buffers reused), so no gradient flows from it: a caller that
    /// differentiates uses [`CandleModel::forward_graph`]. Elsewhere it is the graph's.
    pub fn forward(&self, batch: &Batch) -> Result<Output> {
        match &self.cpu_eval {
            Some(c) => c.forward(self, batch, true),
            None => self.run(batch, None),
        }
    }

    /// [`CandleModel::forward`]'s heads alone (no gate weights kept).
    pub fn forward_heads(&self, batch: &Batch) -> Result<Vec<Tensor>> {
        match &self.cpu_eval {
            Some(c) => Ok(c.forward(self, batch, false)?.heads),
            None => Ok(self.run(batch, None)?.heads),
        }
    }

    /// The evaluation pass as candle's graph computes it, on any device: the reference
    /// the CPU pass of [`CandleModel::forward`] is tested against.
    pub fn forward_graph(&self, batch: &Batch) -> Result<Output> {
        self.run(batch, None)
    }

    /// Runs the model for training: dropout masks come from `rng`.
    pub fn forward_train(&self, batch: &Batch, rng: &mut Rng) -> Result<Output> {
        let rng = (!self.deterministic).then_some(rng);
        self.run_program(&self.programs.train, batch, rng)
    }

    /// The graph of the evaluation program.
    fn run(&self, batch: &Batch, rng: Option<&mut Rng>) -> Result<Output> {
        self.run_program(&self.programs.eval, batch, rng)
    }

    /// Training from here on keeps every unit (no dropout) and draws no gate noise:
    /// their random streams differ between devices by design, so a comparison of
    /// devices' training steps turns them off.
    pub fn without_randomness(&mut self) {
        self.deterministic = true;
    }

    /// Whether this model's passes run on the host's cores (the native interpreter,
    /// chosen once when the model is built for the CPU): a batch is then cut into one
    /// shard per worker, several batches are scored at once, and reading a value back
    /// costs nothing. Otherwise the passes are queued on a device.
    pub fn runs_on_host(&self) -> bool {
        self.cpu_eval.is_some()
    }

    /// Whether training steps of this model run on the native interpreter: on the
    /// CPU, when its loss is the training program's (a weighted sum of the tasks'
    /// losses and the balance terms: no uncertainty weighting or GradNorm, which
    /// need candle's graph of the loss). Others train through candle's graph.
    pub fn native_training(&self) -> bool {
        self.cpu_train.is_some()
            && !self.graph_training
            && matches!(self.ir.balance, crate::ir::LossBalance::Fixed | crate::ir::LossBalance::Dwa { .. })
            && self.log_variance.is_none()
    }

    /// Makes training steps take candle's graph even where [`CandleModel::native_training`]
    /// would hold (the reference the native backward is tested against).
    pub fn set_graph_training(&mut self, on: bool) {
        self.graph_training = on;
    }

    /// One training step on the native interpreter (see [`CandleModel::native_training`]):
    /// the gradients of `train::batch_loss_weighted` with the same `factors` and `rng`.
    pub fn train_step(&self, batch: &Batch, factors: Option<&[f64]>, rng: &mut Rng) -> Result<Gradients> {
        match (&self.cpu_train, self.native_training()) {
            (Some(c), true) => c.train_step(self, batch, factors, (!self.deterministic).then_some(rng)),
            _ => candle_core::bail!("this model trains through the graph"),
        }
    }

    /// The model IR it was built from.
    pub fn ir(&self) -> &Model {
        &self.ir
    }

    pub fn device(&self) -> &candle_core::Device {
        &self.device
    }

    /// Every parameter with its ParamTable name, in the table's order.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// The parameter of ParamTable name `name`.
    pub fn var(&self, name: &str) -> Option<&Var> {
        self.programs.var_index.get(name).map(|&i| &self.vars[i].1)
    }

    /// Feature `feature`'s embedding table (a table it shares: the owner's); None for a
    /// dense feature.
    pub fn table(&self, feature: usize) -> Option<&Var> {
        self.embeddings.get(feature).and_then(Option::as_ref)
    }

    /// Uncertainty weighting: each task's learned log-variance `[T]`.
    pub fn log_variance(&self) -> Option<&Var> {
        self.log_variance.as_ref()
    }

    /// The weight GradNorm measures task gradients on: the last depth of the last
    /// layer's first (shared) expert group.
    pub fn last_shared_weight(&self) -> Option<&Var> {
        let last = self.ir.layers.len().checked_sub(1)?;
        let name = self
            .ir
            .parameters()
            .into_iter()
            .rfind(|p| matches!(p.role, Role::ExpertWeight { layer, group: 0, .. } if layer == last))?
            .name;
        self.programs.var_index.get(&name).map(|&i| &self.vars[i].1)
    }

    /// Copies every parameter's current value (for best-epoch restore).
    pub fn snapshot(&self) -> Result<Vec<Tensor>> {
        self.vars.iter().map(|(_, v)| v.as_tensor().copy()).collect()
    }

    /// Restores values taken by [`snapshot`](Self::snapshot).
    pub fn restore(&self, values: &[Tensor]) -> Result<()> {
        for ((_, v), t) in self.vars.iter().zip(values) {
            v.set(t)?;
        }
        Ok(())
    }
}
