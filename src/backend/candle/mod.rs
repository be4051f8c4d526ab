//! The candle backend: validated IR -> [`CandleModel`] (CPU; CUDA behind `cuda`).
//!
//! Every parameter is a candle `Var` made from the IR's parameter table
//! ([`crate::ir::Model::parameters`]): its name, shape and initialiser come from there.
//! The model runs its op programs ([`crate::program`]): on the CPU through the native
//! interpreter (`native.rs`: evaluation, and training steps whose loss is the
//! program's), elsewhere and for losses coupled across the batch through candle's
//! graph of the same program (`program.rs`), which autograd differentiates.

mod dense;
pub mod device_ops;
pub mod loss;
mod native;
mod program;

pub use crate::backend::native::fma_peak;
pub(crate) use crate::backend::native::prefetch;
pub use native::Gradients;

use candle_core::{Tensor, Var, D};

use super::{Backend, Device};
use crate::data::Dataset;
use crate::ir::{Activation, FeatureKind, Init, Link, Model, Role, Validated};
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

/// One minibatch on the device.
pub struct Batch {
    /// Per categorical feature: table rows `[B]` (u32), or `[B, len]` for a bag.
    pub cat: Vec<Tensor>,
    /// Per categorical feature: a bag's slot weights `[B, len]` (see `data::BagRows`).
    pub bags: Vec<Option<Tensor>>,
    /// All dense values `[B, dense_width]`, or None when the model has no dense input.
    pub dense: Option<Tensor>,
    /// Per task: labels `[B]` (missing ones as 0), or None when the data has none for
    /// that task. Index t is always task t.
    pub labels: Vec<Option<Tensor>>,
    /// Per task: 1 where the label is present, `[B]`; None when every row has it.
    pub masks: Vec<Option<Tensor>>,
    pub size: usize,
}

impl Batch {
    /// Gathers rows `idx` of `ds` into device tensors.
    pub fn gather(ds: &Dataset, idx: &[usize], device: &candle_core::Device) -> Result<Batch> {
        let b = idx.len();
        let (cat, bags) = cat_columns(ds, Some(idx), device)?;
        let w = ds.dense_width;
        let dense = if w > 0 {
            Some(Tensor::from_vec(crate::data::select_rows(&ds.dense, w, idx), (b, w), device)?)
        } else {
            None
        };
        let (labels, masks) = label_columns(ds, |l| idx.iter().map(|&i| l[i]).collect(), device)?;
        Ok(Batch { cat, bags, dense, labels, masks, size: b })
    }

    /// Rows `start..start + len` of the batch (views, no copy).
    pub fn narrow(&self, start: usize, len: usize) -> Result<Batch> {
        let cut = |t: &Tensor| t.narrow(0, start, len);
        let opt = |t: &Option<Tensor>| t.as_ref().map(cut).transpose();
        Ok(Batch {
            cat: self.cat.iter().map(cut).collect::<Result<_>>()?,
            bags: self.bags.iter().map(opt).collect::<Result<_>>()?,
            dense: opt(&self.dense)?,
            labels: self.labels.iter().map(opt).collect::<Result<_>>()?,
            masks: self.masks.iter().map(opt).collect::<Result<_>>()?,
            size: len,
        })
    }
}

/// Per categorical of `ds`, its table rows (`[B]`, a bag's `[B, len]`) and a bag's slot
/// weights (`[B, len]`), of rows `idx` (every row when None).
#[allow(clippy::type_complexity)]
fn cat_columns(
    ds: &Dataset,
    idx: Option<&[usize]>,
    device: &candle_core::Device,
) -> Result<(Vec<Tensor>, Vec<Option<Tensor>>)> {
    fn rows<T: Copy + candle_core::WithDType>(
        v: &[T],
        len: usize,
        idx: Option<&[usize]>,
        shape: candle_core::Shape,
        device: &candle_core::Device,
    ) -> Result<Tensor> {
        match idx {
            Some(idx) => Tensor::from_vec(crate::data::select_rows(v, len, idx), shape, device),
            None => Tensor::from_slice(v, shape, device),
        }
    }
    let n = idx.map_or(ds.rows, <[usize]>::len);
    let mut cat = Vec::with_capacity(ds.cat.len());
    let mut bags = Vec::with_capacity(ds.cat.len());
    for (i, c) in ds.cat.iter().enumerate() {
        match ds.bags.get(i).and_then(Option::as_ref) {
            Some(bag) => {
                cat.push(rows(c, bag.len, idx, (n, bag.len).into(), device)?);
                bags.push(Some(rows(&bag.weights, bag.len, idx, (n, bag.len).into(), device)?));
            }
            None => {
                cat.push(rows(c, 1, idx, n.into(), device)?);
                bags.push(None);
            }
        }
    }
    Ok((cat, bags))
}

/// Per task of `ds`, the labels `pick` takes from its column, a missing one (NaN) as 0,
/// and the mask of the present ones (None when all are, or the task has no labels).
#[allow(clippy::type_complexity)]
fn label_columns(
    ds: &Dataset,
    pick: impl Fn(&[f32]) -> Vec<f32>,
    device: &candle_core::Device,
) -> Result<(Vec<Option<Tensor>>, Vec<Option<Tensor>>)> {
    let mut labels = Vec::with_capacity(ds.labels.len());
    let mut masks = Vec::with_capacity(ds.labels.len());
    for l in &ds.labels {
        if l.is_empty() {
            labels.push(None);
            masks.push(None);
            continue;
        }
        let mut y = pick(l);
        let n = y.len();
        masks.push(if y.iter().any(|v| v.is_nan()) {
            Some(Tensor::from_vec(y.iter().map(|v| f32::from(!v.is_nan())).collect::<Vec<f32>>(), n, device)?)
        } else {
            None
        });
        y.iter_mut().filter(|v| v.is_nan()).for_each(|v| *v = 0.0);
        labels.push(Some(Tensor::from_vec(y, n, device)?));
    }
    Ok((labels, masks))
}

/// A dataset's columns on the device, uploaded once, from which batches are gathered on
/// the device (`index_select` by the epoch's row order): no host gather and no upload
/// per batch. Labels come with their masks made (NaN: missing).
pub struct Resident {
    cat: Vec<Tensor>,
    bags: Vec<Option<Tensor>>,
    dense: Option<Tensor>,
    labels: Vec<Option<Tensor>>,
    masks: Vec<Option<Tensor>>,
    pub rows: usize,
    device: candle_core::Device,
}

/// Datasets larger than this stay on the host and are uploaded a batch at a time.
pub const RESIDENT_MAX_BYTES: usize = 16 << 30;

impl Resident {
    /// The dataset's bytes once resident (ids, dense values, labels and masks).
    pub fn bytes(ds: &Dataset) -> usize {
        // A bag's ids and slot weights.
        let cat: usize = (0..ds.cat.len())
            .map(|i| ds.cat_len(i) * if ds.bags.get(i).is_some_and(Option::is_some) { 2 } else { 1 })
            .sum();
        4 * ds.rows * (cat + ds.dense_width + 2 * ds.labels.iter().filter(|l| !l.is_empty()).count())
    }

    pub fn upload(ds: &Dataset, device: &candle_core::Device) -> Result<Resident> {
        let n = ds.rows;
        let (cat, bags) = cat_columns(ds, None, device)?;
        let dense =
            if ds.dense_width > 0 { Some(Tensor::from_slice(&ds.dense, (n, ds.dense_width), device)?) } else { None };
        let (labels, masks) = label_columns(ds, |l| l.to_vec(), device)?;
        Ok(Resident { cat, bags, dense, labels, masks, rows: n, device: device.clone() })
    }

    /// The rows `idx` (`[B]` u32 on the same device) as a batch.
    pub fn batch(&self, idx: &Tensor) -> Result<Batch> {
        let pick = |t: &Tensor| t.index_select(idx, 0);
        let opt = |t: &Option<Tensor>| t.as_ref().map(pick).transpose();
        Ok(Batch {
            cat: self.cat.iter().map(pick).collect::<Result<_>>()?,
            bags: self.bags.iter().map(opt).collect::<Result<_>>()?,
            dense: opt(&self.dense)?,
            labels: self.labels.iter().map(opt).collect::<Result<_>>()?,
            masks: self.masks.iter().map(opt).collect::<Result<_>>()?,
            size: idx.dim(0)?,
        })
    }
}

/// Where a training loop's batches come from: gathered on the host and uploaded one at
/// a time (the CPU, or data too large for the device), or gathered on the device from
/// a [`Resident`] copy.
pub enum Feed<'a> {
    Host(&'a Dataset, candle_core::Device),
    Resident(Resident),
}

/// An epoch's row order, and on the device a copy of it (uploaded once per epoch).
pub struct Order {
    pub rows: Vec<usize>,
    device: Option<Tensor>,
}

impl<'a> Feed<'a> {
    /// Resident on a GPU when the data fits under [`RESIDENT_MAX_BYTES`]; on the host
    /// otherwise.
    pub fn new(ds: &'a Dataset, device: &candle_core::Device) -> Result<Feed<'a>> {
        if device.is_cpu() || Resident::bytes(ds) > RESIDENT_MAX_BYTES {
            Ok(Feed::Host(ds, device.clone()))
        } else {
            Ok(Feed::Resident(Resident::upload(ds, device)?))
        }
    }

    /// The device batches go to.
    pub fn device(&self) -> &candle_core::Device {
        match self {
            Feed::Host(_, d) => d,
            Feed::Resident(r) => &r.device,
        }
    }

    pub fn order(&self, rows: Vec<usize>) -> Result<Order> {
        let device = match self {
            Feed::Host(..) => None,
            Feed::Resident(r) => {
                let ids: Vec<u32> = rows.iter().map(|&i| i as u32).collect();
                Some(Tensor::from_vec(ids, rows.len(), &r.device)?)
            }
        };
        Ok(Order { rows, device })
    }

    /// Rows `start..start + len` of `order`.
    pub fn batch(&self, order: &Order, start: usize, len: usize) -> Result<Batch> {
        match (self, &order.device) {
            (Feed::Resident(r), Some(ids)) => r.batch(&ids.narrow(0, start, len)?),
            (Feed::Host(ds, dev), _) => Batch::gather(ds, &order.rows[start..start + len], dev),
            (Feed::Resident(_), None) => Err(candle_core::Error::Msg("an order made by another feed".into())),
        }
    }
}

/// The forward pass's results.
pub struct Output {
    /// Per task, its raw output as its [`Link`] says: a logit `[B]`, a log-probability
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

/// Inverted dropout with a mask from our seeded RNG: kept values scale by 1/(1-rate).
/// Without an RNG (evaluation) or at rate 0 it is the identity.
///
/// On the CPU the mask is drawn from `rng` directly. On a GPU it is made on the device
/// by a counter-based hash seeded from `rng` ([`device_ops::DropoutMask`]): no upload
/// per layer per step. Both are reproducible per seed; the two streams differ.
pub(crate) fn dropout(x: &Tensor, rate: f32, rng: Option<&mut Rng>) -> Result<Tensor> {
    let Some(rng) = rng else { return Ok(x.clone()) };
    if rate <= 0.0 {
        return Ok(x.clone());
    }
    let n = x.elem_count();
    let keep = 1.0 - rate;
    if !x.device().is_cpu() {
        use device_ops::Fill;
        return x * device_ops::DropoutMask::new(rng.next_u64(), keep).like(x)?;
    }
    x * Tensor::from_vec(dropout_mask(rng, n, rate), x.shape(), x.device())?
}

pub(crate) use crate::rng::dropout_mask;

/// The most matrices one cuBLAS batched GEMM is given. Some of its kernels put the batch
/// on a grid axis limited to 65,535 blocks (PyTorch splits at 63 × 1024 on the GPUs where
/// that fails); a split costs a launch per 32K rows, so it is done on every CUDA device.
/// (The illegal address first seen at batch 65,536 on an H200 was a stream race, fixed
/// in `candle_device`; the runs since have this split, so batch 65,536 unsplit is
/// unmeasured.)
const CUDA_GEMM_BATCH: usize = 32 * 1024;

/// `a.matmul(b)` for `a: [B, m, k]`, `b: [B, k, n]`, split into batches of at most
/// [`CUDA_GEMM_BATCH`] on a CUDA device (the backward of each part is as small). One
/// matmul on the CPU.
pub(crate) fn batched_matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    chunked_matmul(a, b, if a.device().is_cuda() { CUDA_GEMM_BATCH } else { usize::MAX })
}

fn chunked_matmul(a: &Tensor, b: &Tensor, chunk: usize) -> Result<Tensor> {
    let n = a.dim(0)?;
    if n <= chunk {
        return a.matmul(b);
    }
    let parts = (0..n)
        .step_by(chunk)
        .map(|at| {
            let len = chunk.min(n - at);
            a.narrow(0, at, len)?.matmul(&b.narrow(0, at, len)?)
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 0)
}

/// `y + b` with the bias broadcast over rows, written as a rank-1 matmul
/// `ones[.., N, 1] x b[.., 1, n]`: its backward is a GEMM, where candle's
/// `broadcast_add` backward sums over a leading axis with a per-element divmod loop
/// (about 10% of a training step on the bench shape).
///
/// # Shapes
/// `y: [N, n]`, `b: [n]` or `y: [G, N, n]`, `b: [G, 1, n]` -> shape of `y`.
pub(crate) fn add_bias(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    match *y.dims() {
        [n, k] => {
            let ones = Tensor::ones((n, 1), y.dtype(), y.device())?;
            y + ones.matmul(&b.reshape((1, k))?)?
        }
        [g, n, _] => {
            let ones = Tensor::ones((g, n, 1), y.dtype(), y.device())?;
            y + ones.matmul(b)?
        }
        _ => y.broadcast_add(b),
    }
}

/// The values of a contiguous f32 CPU operand of a custom op; `what` names it in the
/// error (op and operand, e.g. `dense: bias`).
pub(crate) fn cpu_f32<'a>(s: &'a candle_core::CpuStorage, l: &candle_core::Layout, what: &str) -> Result<&'a [f32]> {
    let candle_core::CpuStorage::F32(v) = s else { candle_core::bail!("{what} must be f32") };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

/// `ln(1 + e^x) = max(x, 0) + ln(1 + e^-|x|)`, finite for any finite `x`.
pub(crate) fn softplus(x: &Tensor) -> Result<Tensor> {
    x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
}

/// `log(sigmoid(x)) = -softplus(-x)`, finite for any finite `x`.
pub(crate) fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    softplus(&x.neg()?)?.neg()
}

/// The sum of two optional tensors (None counts as absent, not as zero).
pub(crate) fn add_opt(a: Option<Tensor>, b: Option<Tensor>) -> Result<Option<Tensor>> {
    Ok(match (a, b) {
        (Some(x), Some(y)) => Some((x + y)?),
        (x, y) => x.or(y),
    })
}

/// A task's raw output as a prediction in the model's units: a probability for
/// [`Link::Sigmoid`] and [`Link::LogProb`], class probabilities `[B, K]` for
/// [`Link::Softmax`], the (transformed) value for [`Link::Identity`].
pub fn apply_link(raw: &Tensor, link: Link) -> Result<Tensor> {
    match link {
        Link::Sigmoid => activate(raw, Activation::Sigmoid),
        Link::LogProb => raw.exp(),
        Link::Softmax => candle_nn::ops::softmax(raw, D::Minus1),
        Link::Identity => Ok(raw.clone()),
    }
}

pub(crate) fn activate(x: &Tensor, a: Activation) -> Result<Tensor> {
    match a {
        Activation::Relu => x.relu(),
        Activation::Tanh => x.tanh(),
        Activation::Sigmoid => (x.neg()?.exp()? + 1.0)?.recip(),
        Activation::Gelu => x.gelu(),
        Activation::Linear => Ok(x.clone()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    #[test]
    fn dropout_zeroes_the_rate_and_keeps_the_mean() {
        let x = Tensor::ones(100_000, DType::F32, &candle_core::Device::Cpu).unwrap();
        let y = dropout(&x, 0.3, Some(&mut Rng::new(4))).unwrap().to_vec1::<f32>().unwrap();
        let zeros = y.iter().filter(|&&v| v == 0.0).count() as f64 / y.len() as f64;
        let mean = y.iter().map(|&v| v as f64).sum::<f64>() / y.len() as f64;
        assert!((zeros - 0.3).abs() < 0.01, "{zeros}");
        assert!((mean - 1.0).abs() < 0.02, "{mean}");
        let same = dropout(&x, 0.3, None).unwrap();
        assert_eq!(same.to_vec1::<f32>().unwrap(), x.to_vec1::<f32>().unwrap());
    }

    /// The CUDA split of a batched matmul gives the one matmul's values and gradients.
    #[test]
    fn a_split_batched_matmul_equals_one_matmul() {
        let dev = candle_core::Device::Cpu;
        let a = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (7, 2, 3), &dev).unwrap()).unwrap();
        let b = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (7, 3, 4), &dev).unwrap()).unwrap();
        let whole = a.as_tensor().matmul(b.as_tensor()).unwrap();
        let split = chunked_matmul(a.as_tensor(), b.as_tensor(), 3).unwrap();
        let diff = |x: &Tensor, y: &Tensor| -> f32 {
            (x - y).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
        };
        assert_eq!(split.dims(), whole.dims());
        assert!(diff(&split, &whole) < 1e-6);
        let weights = Tensor::randn(0f32, 1.0, (7, 2, 4), &dev).unwrap();
        let g1 = (&whole * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&split * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&a, &b] {
            let (x, y) = (g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap());
            assert!(diff(x, y) < 1e-6);
            assert!(x.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
        }
    }
}
