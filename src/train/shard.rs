//! Data-parallel training steps: a batch is cut into one shard per worker thread, each
//! shard runs forward, loss and backward on its own thread, and the optimizer sums the
//! shards' gradients.
//!
//! candle threads each kernel (a GEMM, an elementwise map) separately; at the batch
//! sizes recommendation models train with, most kernels are too small for that to pay,
//! and a second core made training slower. A shard is a whole forward and backward
//! pass, so two cores each do half the work with no hand-off inside the step.
//!
//! The sum of the shards' gradients is the batch's gradient: each task's loss is a mean
//! over its labelled rows, so shard `k` weighs its own mean by its share of them. Models
//! whose loss is not such a sum run unsharded (see [`shardable`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::backprop::GradStore;
use candle_core::Tensor;
use rayon::prelude::*;

use super::{batch_loss_weighted, StepLoss};
use crate::backend::candle::{Batch, CandleModel, Gradients, Lookup};
use crate::ir::LossBalance;
use crate::rng::Rng;

type Result<T> = candle_core::Result<T>;

/// Fewest rows worth a shard of their own: below this a thread's start-up and the
/// gradient sum cost more than the rows' forward and backward.
const MIN_SHARD_ROWS: usize = 64;

/// The worker-thread count of the runs in this process; 0 until [`set_threads`].
static THREADS: AtomicUsize = AtomicUsize::new(0);

/// Sets how many worker threads the runs that follow use (the CLI's `--threads`, or
/// its automatic choice). candle's own kernels should then run on one thread
/// (`RAYON_NUM_THREADS=1`): a kernel that fans out inside a worker only contends with
/// the other workers (measured on the bench shape: 19,000 samples/s with both, 48,000
/// with workers alone).
pub fn set_threads(n: usize) {
    THREADS.store(n, Ordering::Relaxed);
}

/// The count [`set_threads`] set, or 0.
pub fn threads() -> usize {
    THREADS.load(Ordering::Relaxed)
}

/// The CPU worker threads of a run.
pub struct Workers {
    /// None: everything on the caller's thread.
    pool: Option<rayon::ThreadPool>,
    threads: usize,
}

impl Workers {
    /// A pool of `threads` workers (1 or 0: the caller's thread only).
    pub fn new(threads: usize) -> Result<Workers> {
        if threads <= 1 {
            return Ok(Workers { pool: None, threads: 1 });
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("multigate-worker-{i}"))
            .build()
            .map_err(|e| candle_core::Error::Msg(format!("cannot start {threads} worker threads: {e}")))?;
        Ok(Workers { pool: Some(pool), threads })
    }

    /// The process's pool of as many workers as [`set_threads`] said (one when it was
    /// never called); started once and shared by every caller.
    pub fn configured() -> Result<Arc<Workers>> {
        static SHARED: Mutex<Option<Arc<Workers>>> = Mutex::new(None);
        let n = threads().max(1);
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = shared.as_ref().filter(|w| w.threads == n) {
            return Ok(w.clone());
        }
        let w = Arc::new(Workers::new(n)?);
        *shared = Some(w.clone());
        Ok(w)
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` once on every worker at the same time, its results in worker order.
    pub fn broadcast<R: Send>(&self, f: impl Fn() -> R + Sync) -> Vec<R> {
        match &self.pool {
            Some(p) => p.broadcast(|_| f()),
            None => vec![f()],
        }
    }

    /// Runs `f` with this pool as rayon's current pool (parallel loops inside use it).
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(p) => p.install(f),
            None => f(),
        }
    }

    /// How many shards a training batch of `rows` rows of `model` is cut into.
    pub fn shards(&self, model: &CandleModel, rows: usize) -> usize {
        if shardable(model) {
            self.forward_shards(model, rows)
        } else {
            1
        }
    }

    /// How many shards a forward pass (no loss) over `rows` rows is cut into: one per
    /// worker where the passes run on the host, each at least [`MIN_SHARD_ROWS`] rows.
    fn forward_shards(&self, model: &CandleModel, rows: usize) -> usize {
        if self.threads <= 1 || !model.runs_on_host() {
            return 1;
        }
        self.threads.min(rows / MIN_SHARD_ROWS).max(1)
    }
}

/// `(first row, rows)` of each of `k` near-equal shards of `n` rows.
fn bounds(n: usize, k: usize) -> Vec<(usize, usize)> {
    (0..k).map(|i| (i * n / k, (i + 1) * n / k - i * n / k)).collect()
}

/// Whether a batch's loss gradient is the sum of its shards': not with a load-balancing
/// loss (it depends on the whole batch's gate usage) or an AITM calibration loss (an
/// auxiliary loss, counted once per step, not per shard), uncertainty weighting (its
/// log-variance term is per batch, not per row) or GradNorm (it needs each task's
/// gradient of the whole batch).
pub fn shardable(model: &CandleModel) -> bool {
    let per_row_loss = matches!(model.ir().balance, LossBalance::Fixed | LossBalance::Dwa { .. });
    let calibrated = model.ir().tasks.iter().any(|t| t.transfer.is_some_and(|tr| tr.calibration > 0.0));
    per_row_loss
        && model.log_variance().is_none()
        && model.ir().layers.iter().all(|l| l.gating.balance <= 0.0)
        && !calibrated
}

/// One training step's loss values and gradients.
pub struct Step {
    /// Each task's mean loss over the batch (0 for a task without labels), `[T]` on the
    /// model's device: read back when the caller chooses.
    pub per_task: Tensor,
    /// Each shard's gradients; the optimizer sums them.
    pub grads: Vec<GradStore>,
    /// Every shard's embedding lookups (their gradients are in `grads`).
    pub lookups: Vec<Lookup>,
    /// The unsharded step's loss graph, for what needs it after backward (GradNorm).
    pub loss: Option<StepLoss>,
}

/// Forward, loss and backward of `batch`, in as many shards as `workers` gives it.
/// Dropout masks come from `rng`; `factors` multiply the tasks' loss weights.
pub fn step(
    model: &CandleModel,
    batch: &Batch,
    rng: &mut Rng,
    factors: Option<&[f64]>,
    workers: &Workers,
) -> Result<Step> {
    let k = workers.shards(model, batch.size);
    let native = model.native_training();
    if k <= 1 && !native {
        let mut loss = batch_loss_weighted(model, batch, rng, factors)?;
        let per_task = Tensor::stack(&loss.per_task, 0)?;
        let grads = workers.run(|| loss.total.backward())?;
        let lookups = std::mem::take(&mut loss.lookups);
        return Ok(Step { per_task, grads: vec![grads], lookups, loss: Some(loss) });
    }
    let tasks = model.ir().tasks.len();
    let cuts = bounds(batch.size, k.max(1));
    let shares = shares(batch, &cuts)?;
    // One shard's losses and gradients, its tasks' loss weights scaled by its share:
    // on the native interpreter where it applies, else through candle's graph.
    let run = |&(at, len): &(usize, usize), share: &Vec<f64>, rng: &mut Rng| -> Result<Gradients> {
        let f: Vec<f64> = (0..tasks).map(|t| factors.map_or(1.0, |f| f[t]) * share[t]).collect();
        let shard = batch.narrow(at, len)?;
        if native {
            return model.train_step(&shard, Some(&f), rng);
        }
        let loss = batch_loss_weighted(model, &shard, rng, Some(&f))?;
        let per_task = Tensor::stack(&loss.per_task, 0)?.to_vec1::<f32>()?;
        Ok(Gradients { per_task, grads: loss.total.backward()?, lookups: loss.lookups })
    };
    // Dropout masks from the run's stream unsharded, else each shard's from its own
    // stream seeded from the run's.
    let done: Vec<Result<Gradients>> = if cuts.len() == 1 {
        vec![run(&cuts[0], &shares[0], rng)]
    } else {
        let seeds: Vec<u64> = (0..cuts.len()).map(|_| rng.next_u64()).collect();
        workers.run(|| {
            cuts.par_iter().zip(&shares).zip(&seeds).map(|((c, s), &seed)| run(c, s, &mut Rng::new(seed))).collect()
        })
    };
    let mut per_task = vec![0f32; tasks];
    let mut grads = Vec::with_capacity(cuts.len());
    let mut lookups = Vec::new();
    for (r, share) in done.into_iter().zip(&shares) {
        let g = r?;
        for ((p, v), s) in per_task.iter_mut().zip(&g.per_task).zip(share) {
            *p += v * *s as f32;
        }
        grads.push(g.grads);
        lookups.extend(g.lookups);
    }
    let per_task = Tensor::from_vec(per_task, tasks, &model.device())?;
    Ok(Step { per_task, grads, lookups, loss: None })
}

/// Per shard, each task's share of the batch's mean loss: the shard's rows over the
/// batch's, or with a label mask, the shard's labelled rows over the batch's (a task's
/// loss is the mean over `max(labelled, 1)` rows, see `loss::task_loss`).
fn shares(batch: &Batch, bounds: &[(usize, usize)]) -> Result<Vec<Vec<f64>>> {
    let mut out = vec![Vec::with_capacity(batch.masks.len()); bounds.len()];
    for mask in &batch.masks {
        match mask {
            None => {
                for (o, &(_, len)) in out.iter_mut().zip(bounds) {
                    o.push(len as f64 / batch.size.max(1) as f64);
                }
            }
            Some(m) => {
                let m = m.to_vec1::<f32>()?;
                let total = m.iter().map(|&x| x as f64).sum::<f64>().max(1.0);
                for (o, &(at, len)) in out.iter_mut().zip(bounds) {
                    let mine = m[at..at + len].iter().map(|&x| x as f64).sum::<f64>().max(1.0);
                    o.push(mine / total);
                }
            }
        }
    }
    Ok(out)
}

/// The model's outputs for `batch` (no dropout), its rows cut into one shard per
/// worker: each head `[B]` or `[B, K]`, in row order. Gate weights are not kept.
pub fn forward(model: &CandleModel, batch: &Batch, workers: &Workers) -> Result<Vec<Tensor>> {
    let k = workers.forward_shards(model, batch.size);
    if k <= 1 {
        return model.forward_heads(batch);
    }
    let shards =
        bounds(batch.size, k).into_iter().map(|(at, len)| batch.narrow(at, len)).collect::<Result<Vec<_>>>()?;
    let outs: Vec<Result<Vec<Tensor>>> = workers.run(|| shards.par_iter().map(|s| model.forward_heads(s)).collect());
    let outs = outs.into_iter().collect::<Result<Vec<_>>>()?;
    (0..outs[0].len()).map(|t| Tensor::cat(&outs.iter().map(|o| &o[t]).collect::<Vec<_>>(), 0)).collect()
}
