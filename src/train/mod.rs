//! Training: shuffled minibatches, weighted per-task losses, Adam, exponential LR
//! decay, per-epoch validation, best-epoch selection, test evaluation and gate
//! diagnostics.
//!
//! In: a [`CandleModel`], a [`TrainConfig`] and encoded splits. Out: a
//! [`TrainReport`]; the model is left holding the best-validation weights. Progress
//! goes to a callback; this module prints nothing.

pub mod adam;
#[cfg(feature = "cuda")]
mod adam_cuda;
mod adam_update;
pub mod balance;
pub mod gate_report;
/// The per-task losses (their candle implementation is the backend's `loss` op).
pub use crate::backend::candle::loss;
pub mod metrics;
pub mod shard;

use std::time::Instant;

use candle_core::{Tensor, D};
use serde::Serialize;

use crate::backend::candle::{add_opt, Batch, CandleModel, Feed};
use crate::data::Dataset;
use crate::ir::{Selection, TrainConfig};
use crate::rng::Rng;
use adam::{Adam, AdamConfig};
use metrics::TaskMetrics;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("the loss of task `{task}` became {value} at epoch {epoch}, step {step}; lower the learning rate or check the inputs for extreme values")]
    NonFinite { task: String, value: f32, epoch: usize, step: u64 },
    #[error("the training split has no rows")]
    NoRows,
    #[error("the data has no labels for task `{0}`")]
    NoLabels(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
}

pub use crate::data::Splits;

/// Steps between reads of the training losses on a GPU (each read waits for the device).
/// A non-finite loss is reported at the read that finds it: at most this many steps late.
pub const LOSS_READ_EVERY: usize = 50;

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct EpochReport {
    pub epoch: usize,
    pub lr: f64,
    /// Mean training loss per task.
    pub train_loss: Vec<f64>,
    /// Weighted validation loss (the selection criterion).
    pub validation_loss: f64,
    pub validation: Vec<TaskMetrics>,
    /// Each task's effective loss weight at the end of the epoch.
    #[serde(default)]
    pub loss_weights: Vec<f64>,
    pub seconds: f64,
    pub train_samples_per_sec: f64,
}

/// Mean gate weight per expert over a split: how each gate uses its experts.
#[derive(Debug, Clone, Serialize)]
pub struct GateUsage {
    pub layer: String,
    /// Per gate (task or shared): gate name and mean weight per expert.
    pub gates: Vec<(String, Vec<f64>)>,
    /// Per gate: exp of the mean per-row entropy of its weights, the number of experts
    /// a row effectively mixes (1: hard routing; the expert count: uniform averaging).
    pub effective_experts: Vec<f64>,
    /// Per gate: the share of rows on which it puts more than 0.99 on one expert.
    pub peaked: Vec<f64>,
    /// Per gate: which of the layer's experts each of its weights belongs to (an index
    /// into `experts`; the same expert run on several task slots maps to one index).
    pub mixes: Vec<Vec<usize>>,
    /// The layer's experts, `group.e{j}`.
    pub experts: Vec<String>,
    /// Per gate: whether it serves a task (the shared gate of a PLE level does not).
    pub task_gate: Vec<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub epochs: Vec<EpochReport>,
    pub best_epoch: usize,
    /// Set when `patience` ended training before the last epoch.
    pub stopped_early: bool,
    pub validation: Vec<TaskMetrics>,
    pub test: Option<Vec<TaskMetrics>>,
    pub gate_usage: Vec<GateUsage>,
}

/// Predictions, loss and gate usage of a model over a dataset.
pub struct Evaluation {
    pub predictions: Vec<Vec<f32>>,
    pub metrics: Vec<TaskMetrics>,
    pub loss: f64,
    pub gate_usage: Vec<GateUsage>,
}

/// Predicts every row in batches of `batch_size`; also returns the mean gate usage.
pub fn predict(
    model: &CandleModel,
    ds: &Dataset,
    batch_size: usize,
) -> candle_core::Result<(Vec<Vec<f32>>, Vec<GateUsage>)> {
    let p = predict_rows(model, ds, batch_size, false)?;
    Ok((p.values, p.usage))
}

/// Predictions of every row, and optionally every row's gate weights.
pub struct Predictions {
    /// Per task: `[rows, width]` row-major in the label's units (probabilities for
    /// binary tasks, one per class for multiclass ones, original units for regressions).
    pub values: Vec<Vec<f32>>,
    /// Per gate and expert (`gate.e{k}`, k the expert's index in the layer: shared experts
    /// first, then each task's): the gate's weight on that expert, per row.
    pub gate_columns: Vec<(String, Vec<f32>)>,
    pub usage: Vec<GateUsage>,
}

/// The name of each gate application of a layer: the gate's own name, or
/// `gate@task` for a gate applied to several task slots.
fn mix_names(model: &CandleModel, l: &crate::ir::Layer, plan: &crate::ir::LayerPlan) -> Vec<String> {
    plan.mixes
        .iter()
        .map(|m| {
            let gate = &l.gates[m.gate];
            let uses = plan.mixes.iter().filter(|x| x.gate == m.gate).count();
            match (uses, m.output) {
                (1, _) | (_, crate::ir::Slot::Shared) => gate.name.clone(),
                (_, crate::ir::Slot::Task(t)) => format!("{}@{}", gate.name, model.ir().tasks[t.0].name),
            }
        })
        .collect()
}

/// Running sums of one gate application over the rows seen.
#[derive(Default)]
struct MixSums {
    /// Sum of the weights per expert `[E_m]`.
    weight: Option<Tensor>,
    /// Sum of the per-row entropies `[]`.
    entropy: Option<Tensor>,
    /// Every row's weights, per expert (only with `gate_rows`).
    rows: Vec<Vec<f32>>,
    /// Rows whose largest weight is above 0.99 `[]`.
    peaked: Option<Tensor>,
}

fn accumulate(acc: &mut Option<Tensor>, x: Tensor) -> candle_core::Result<()> {
    *acc = add_opt(acc.take(), Some(x))?;
    Ok(())
}

/// Adds one batch's outputs to the predictions and the gate sums.
fn predict_batch(
    model: &CandleModel,
    out: &crate::backend::candle::Output,
    preds: &mut [Vec<f32>],
    sums: &mut [Vec<MixSums>],
    gate_rows: bool,
    rows: usize,
) -> candle_core::Result<()> {
    for ((h, t), p) in out.heads.iter().zip(&model.ir().tasks).zip(preds.iter_mut()) {
        let v = crate::backend::candle::apply_link(h, t.link())?.flatten_all()?.to_vec1::<f32>()?;
        p.extend(v.into_iter().map(|y| t.head.decode(y)));
    }
    for (layer, mixes) in sums.iter_mut().zip(&out.gates) {
        for (s, g) in layer.iter_mut().zip(mixes) {
            // g: [B, E_m]. -sum_e g log g per row, summed over rows.
            let e = (g * g.clamp(1e-12f32, 1f32)?.log()?)?.sum(D::Minus1)?.neg()?.sum(0)?;
            accumulate(&mut s.entropy, e)?;
            accumulate(&mut s.weight, g.sum(0)?)?;
            let top = g.max(D::Minus1)?.gt(0.99f64)?.to_dtype(candle_core::DType::F32)?.sum_all()?;
            accumulate(&mut s.peaked, top)?;
            if gate_rows {
                let flat = g.to_vec2::<f32>()?;
                if s.rows.is_empty() {
                    s.rows = vec![Vec::with_capacity(rows); g.dim(1)?];
                }
                for row in flat {
                    for (c, x) in s.rows.iter_mut().zip(row) {
                        c.push(x);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Predicts every row; with `gate_rows`, keeps every row's gate weights too.
pub fn predict_rows(
    model: &CandleModel,
    ds: &Dataset,
    batch_size: usize,
    gate_rows: bool,
) -> candle_core::Result<Predictions> {
    predict_all(model, ds, batch_size, gate_rows, true)
}

/// Predictions of every row only: no gate weights, no gate usage (a scoring call).
pub fn predict_values(model: &CandleModel, ds: &Dataset, batch_size: usize) -> candle_core::Result<Vec<Vec<f32>>> {
    Ok(predict_all(model, ds, batch_size, false, false)?.values)
}

/// [`predict_rows`]; without `usage` (and `gate_rows`) the gates are not summarised.
fn predict_all(
    model: &CandleModel,
    ds: &Dataset,
    batch_size: usize,
    gate_rows: bool,
    usage: bool,
) -> candle_core::Result<Predictions> {
    let mut sums = PredictSums::new(model, ds.rows, gate_rows, usage);
    sums.add(model, ds, batch_size)?;
    sums.finish(model)
}

/// Predictions and gate sums over the rows seen so far, added a dataset at a time (a
/// held split is one, a streamed one a chunk each).
struct PredictSums<'m> {
    preds: Vec<Vec<f32>>,
    gated: Vec<&'m crate::ir::Layer>,
    plans: Vec<crate::ir::LayerPlan>,
    sums: Vec<Vec<MixSums>>,
    gate_rows: bool,
    rows: usize,
}

impl<'m> PredictSums<'m> {
    /// `expected`: the rows to come, if known (capacity only).
    fn new(model: &'m CandleModel, expected: usize, gate_rows: bool, usage: bool) -> PredictSums<'m> {
        let n_tasks = model.ir().tasks.len();
        let summarise = usage || gate_rows;
        let gated: Vec<&crate::ir::Layer> =
            model.ir().layers.iter().filter(|l| summarise && !l.gates.is_empty()).collect();
        let plans: Vec<crate::ir::LayerPlan> = gated.iter().map(|l| l.plan(n_tasks)).collect();
        let sums = plans.iter().map(|p| (0..p.mixes.len()).map(|_| MixSums::default()).collect()).collect();
        PredictSums { preds: vec![Vec::with_capacity(expected); n_tasks], gated, plans, sums, gate_rows, rows: 0 }
    }

    /// Predicts every row of `ds` in batches of `batch_size`.
    fn add(&mut self, model: &CandleModel, ds: &Dataset, batch_size: usize) -> candle_core::Result<()> {
        let idx: Vec<usize> = (0..ds.rows).collect();
        let chunks: Vec<&[usize]> = idx.chunks(batch_size.max(1)).collect();
        // One batch per worker at a time, in parallel; their outputs are taken in order.
        let workers = shard::Workers::configured()?;
        let at_once = if model.runs_on_host() { workers.threads() } else { 1 };
        for group in chunks.chunks(at_once) {
            let run = |chunk: &&[usize]| model.forward(&Batch::gather(ds, chunk, &model.device())?);
            let outs: Vec<candle_core::Result<crate::backend::candle::Output>> = match group {
                // One batch (a small request): on this thread, no hand-off to a worker.
                [one] => vec![run(one)],
                _ => workers.run(|| {
                    use rayon::prelude::*;
                    group.par_iter().map(run).collect()
                }),
            };
            for out in outs {
                let out = out?;
                predict_batch(model, &out, &mut self.preds, &mut self.sums, self.gate_rows, ds.rows)?;
            }
        }
        self.rows += ds.rows;
        Ok(())
    }

    fn finish(self, model: &CandleModel) -> candle_core::Result<Predictions> {
        let mut usage = Vec::new();
        let mut gate_columns = Vec::new();
        let n = self.rows.max(1) as f64;
        for ((l, mixes), plan) in self.gated.iter().zip(self.sums).zip(&self.plans) {
            let mut gates = Vec::new();
            let mut effective_experts = Vec::new();
            let mut peaked = Vec::new();
            let (expert_of, experts) = gate_report::expert_ids(l, plan);
            let mut mixed = Vec::new();
            let mut task_gate = Vec::new();
            for ((name, s), mix) in mix_names(model, l, plan).into_iter().zip(mixes).zip(&plan.mixes) {
                let Some(w) = s.weight else { continue };
                let h = s.entropy.map(|h| h.to_scalar::<f32>()).transpose()?.unwrap_or(0.0);
                effective_experts.push((h as f64 / n).exp());
                peaked.push(s.peaked.map(|p| p.to_scalar::<f32>()).transpose()?.unwrap_or(0.0) as f64 / n);
                mixed.push(mix.instances.iter().map(|&i| expert_of[i]).collect());
                task_gate.push(matches!(mix.output, crate::ir::Slot::Task(_)));
                // Column `gate.eK`: K is the expert's index among the layer's experts
                // (shared first, then each task's in task order), as in `GateUsage::experts`.
                for (&inst, values) in mix.instances.iter().zip(s.rows) {
                    gate_columns.push((format!("{name}.e{}", expert_of[inst]), values));
                }
                gates.push((name, w.to_vec1::<f32>()?.iter().map(|&x| x as f64 / n).collect()));
            }
            usage.push(GateUsage {
                layer: l.name.clone(),
                gates,
                effective_experts,
                peaked,
                mixes: mixed,
                experts,
                task_gate,
            });
        }
        Ok(Predictions { values: self.preds, gate_columns, usage })
    }
}

/// Predicts and scores a labelled dataset. Tasks without labels in `ds` score
/// [`TaskMetrics::Unlabelled`]; the loss is the weighted sum of the training losses
/// (logloss, or the squared error in the transformed space) of the tasks that train.
pub fn evaluate(model: &CandleModel, ds: &Dataset, batch_size: usize) -> Result<Evaluation, TrainError> {
    let (predictions, gate_usage) = predict(model, ds, batch_size)?;
    score(model, predictions, &ds.labels, gate_usage)
}

/// [`evaluate`] of a validation or test split, held in memory or read from its files a
/// chunk at a time (only the predictions and labels are held: a few floats a row).
pub fn evaluate_split(
    model: &CandleModel,
    rows: crate::data::SplitData<'_>,
    batch_size: usize,
) -> Result<Evaluation, TrainError> {
    let streamed = match rows {
        crate::data::SplitData::Held(ds) => return evaluate(model, ds, batch_size),
        crate::data::SplitData::Streamed(s) => s,
    };
    let mut sums = PredictSums::new(model, streamed.rows, false, true);
    let mut labels: Vec<Vec<f32>> = vec![Vec::new(); model.ir().tasks.len()];
    let mut failed: Option<candle_core::Error> = None;
    // Rows skipped here were counted (and checked against the cap) when the split was
    // first read.
    let mut tally = Default::default();
    let read = streamed.stream.for_each_chunk(&mut tally, &mut |ds| {
        if let Err(e) = sums.add(model, ds, batch_size) {
            failed = Some(e);
            return Err(crate::data::DataError::Stopped);
        }
        for (all, y) in labels.iter_mut().zip(&ds.labels) {
            all.extend_from_slice(y);
        }
        Ok(())
    });
    if let Some(e) = failed {
        return Err(e.into());
    }
    read?;
    let p = sums.finish(model)?;
    score(model, p.values, &labels, p.usage)
}

/// Scores `predictions` against `labels`, task by task.
fn score(
    model: &CandleModel,
    predictions: Vec<Vec<f32>>,
    labels: &[Vec<f32>],
    gate_usage: Vec<GateUsage>,
) -> Result<Evaluation, TrainError> {
    let mut metrics = Vec::new();
    let mut loss = 0.0;
    for ((t, p), y) in model.ir().tasks.iter().zip(&predictions).zip(labels) {
        if y.is_empty() {
            metrics.push(TaskMetrics::Unlabelled);
            continue;
        }
        if y.len() * t.head.width() != p.len() {
            return Err(TrainError::NoLabels(t.name.clone()));
        }
        let m = metrics::score(&t.head, p, y);
        if t.trains() {
            loss += t.loss_weight as f64 * m.loss().unwrap_or(f64::NAN);
        }
        metrics.push(m);
    }
    Ok(Evaluation { predictions, metrics, loss, gate_usage })
}

/// One training step's loss: the weighted total, each task's loss, and the embedding
/// lookups whose gradients the optimizer applies sparsely.
pub struct StepLoss {
    pub total: Tensor,
    pub per_task: Vec<Tensor>,
    pub lookups: Vec<crate::backend::candle::Lookup>,
}

/// The weighted training loss of a batch (dropout masks from `rng`), with the fixed
/// loss weights (and the learned ones of uncertainty weighting).
pub fn batch_loss(model: &CandleModel, batch: &Batch, rng: &mut Rng) -> candle_core::Result<StepLoss> {
    batch_loss_weighted(model, batch, rng, None)
}

/// [`batch_loss`] with each task's loss weight multiplied by `factors[t]` (DWA, GradNorm).
pub fn batch_loss_weighted(
    model: &CandleModel,
    batch: &Batch,
    rng: &mut Rng,
    factors: Option<&[f64]>,
) -> candle_core::Result<StepLoss> {
    let out = model.forward_train(batch, rng)?;
    let mut per_task = Vec::with_capacity(out.heads.len());
    let mut total: Option<Tensor> = None;
    for ((h, t), l) in out.heads.iter().zip(&model.ir().tasks).zip(&out.losses) {
        // The training program's loss of each task with labels; a task without (trained
        // through a product) adds nothing itself.
        let Some(l) = l.clone() else {
            per_task.push(Tensor::zeros((), candle_core::DType::F32, h.device())?);
            continue;
        };
        let ti = per_task.len();
        let weight = t.loss_weight as f64 * factors.map_or(1.0, |f| f[ti]);
        let w = match &model.log_variance() {
            // Kendall et al.: c exp(-s) L + s / 2, c = 1/2 for a regression.
            Some(s) => {
                let s_t = s.as_tensor().get(ti)?;
                let c = if t.link() == crate::ir::Link::Identity { 0.5 } else { 1.0 };
                let scaled = (s_t.neg()?.exp()? * (&l * (c * weight))?)?;
                (scaled + (s_t * (0.5 * t.loss_weight as f64))?)?
            }
            None => (&l * weight)?,
        };
        accumulate(&mut total, w)?;
        per_task.push(l);
    }
    let mut total = total.ok_or_else(|| candle_core::Error::Msg("model has no tasks".into()))?;
    if let Some(b) = &out.balance {
        total = (total + b)?;
    }
    Ok(StepLoss { total, per_task, lookups: out.lookups })
}

/// The selection criterion of an epoch, oriented so that lower is better. A metric
/// that cannot be computed (AUC with one class) scores +inf and never wins.
pub fn selection_score(select: &Selection, epoch: &EpochReport) -> f64 {
    let value = match select {
        Selection::Loss => Some(epoch.validation_loss),
        Selection::Metric { task, metric } => epoch.validation.get(*task).and_then(|m| m.value(*metric)),
    };
    let higher_is_better = matches!(select, Selection::Metric { metric, .. } if metric.higher_is_better());
    match value.filter(|v| v.is_finite()) {
        Some(v) if higher_is_better => -v,
        Some(v) => v,
        None => f64::INFINITY,
    }
}

/// Training state at the end of an epoch: enough to continue exactly where it stopped.
/// Each epoch's shuffle and dropout masks derive from (seed, epoch), so a resumed run
/// takes the same steps as one that never stopped.
pub struct Checkpoint {
    /// Epochs completed.
    pub epochs_done: usize,
    /// Adam's step count and moments.
    pub adam_step: u64,
    pub adam_state: Vec<(String, Tensor)>,
    /// Current parameter values, in `CandleModel::vars` order.
    pub weights: Vec<Tensor>,
    /// The best epoch so far: its selection score, number and parameter values.
    pub best: Option<(f64, usize, Vec<Tensor>)>,
    pub reports: Vec<EpochReport>,
    /// The loss balancer's state (see `balance::Balancer::state`).
    pub balance: Vec<f64>,
    /// What the run was asked to do (the caller's record, e.g. `run::RunSettings` as
    /// JSON), compared on resume; empty when the caller keeps none.
    pub run: String,
}

/// What the epoch callback sees.
pub struct EpochEnd<'a> {
    pub report: &'a EpochReport,
    model: &'a CandleModel,
    opt: &'a Adam,
    best: &'a Option<(f64, usize, Vec<Tensor>)>,
    reports: &'a [EpochReport],
    balance: Vec<f64>,
}

impl EpochEnd<'_> {
    /// The state to save for a later resume.
    pub fn checkpoint(&self) -> candle_core::Result<Checkpoint> {
        Ok(Checkpoint {
            epochs_done: self.report.epoch,
            adam_step: self.opt.step,
            adam_state: self.opt.state()?,
            weights: self.model.snapshot()?,
            best: self.best.clone(),
            reports: self.reports.to_vec(),
            balance: self.balance.clone(),
            run: String::new(),
        })
    }
}

/// What the training loop tells whoever watches it.
pub trait TrainObserver {
    /// After every step: the epoch (1-based), the optimizer step and each task's loss.
    fn step(&mut self, _epoch: usize, _step: u64, _losses: &[f32]) {}
    /// After the first streamed epoch that skipped broken rows (a skipping policy): the
    /// rows skipped, of those read, and whether the policy shows them (`warn`).
    fn streamed(&mut self, _skipped: &crate::data::Skipped, _read: u64, _warn: bool) {}
    /// After every epoch; may save a checkpoint. An error stops training.
    fn epoch(&mut self, end: &EpochEnd) -> Result<(), String>;
}

/// A [`TrainObserver`] from an epoch closure.
pub struct OnEpoch<F>(pub F);

impl<F: FnMut(&EpochEnd) -> Result<(), String>> TrainObserver for OnEpoch<F> {
    fn epoch(&mut self, end: &EpochEnd) -> Result<(), String> {
        (self.0)(end)
    }
}

/// Adds loss sums read from the device to `sums`; a non-finite one stops training.
fn add_losses(sums: &mut [f64], read: &Tensor, model: &CandleModel, epoch: usize, step: u64) -> Result<(), TrainError> {
    for ((s, v), t) in sums.iter_mut().zip(read.to_vec1::<f32>()?).zip(&model.ir().tasks) {
        if !v.is_finite() {
            return Err(TrainError::NonFinite { task: t.name.clone(), value: v, epoch, step });
        }
        *s += v as f64;
    }
    Ok(())
}

/// An epoch's training batches: from the rows in memory (shuffled), or from the
/// stream.
enum EpochBatches<'a> {
    Memory { feed: &'a Feed<'a>, order: crate::backend::candle::Order, rows: usize, batch: usize, start: usize },
    Stream { batches: Box<crate::data::stream::Batches>, device: candle_core::Device },
}

impl<'a> EpochBatches<'a> {
    fn new(splits: &Splits, feed: &'a Feed<'a>, epoch: usize, cfg: &TrainConfig) -> Result<Self, TrainError> {
        let batch = cfg.batch_size.max(1);
        Ok(match &splits.stream {
            Some(s) => EpochBatches::Stream {
                batches: Box::new(s.epoch(epoch, batch, cfg.seed)),
                device: feed.device().clone(),
            },
            None => {
                let rows = splits.train.rows;
                let mut order: Vec<usize> = (0..rows).collect();
                Rng::derive(cfg.seed, &format!("shuffle-{epoch}")).shuffle(&mut order);
                EpochBatches::Memory { feed, order: feed.order(order)?, rows, batch, start: 0 }
            }
        })
    }

    fn next(&mut self) -> Option<Result<Batch, TrainError>> {
        match self {
            EpochBatches::Memory { feed, order, rows, batch, start } => {
                if *start >= *rows {
                    return None;
                }
                let len = (*batch).min(*rows - *start);
                let b = feed.batch(order, *start, len).map_err(TrainError::from);
                *start += len;
                Some(b)
            }
            EpochBatches::Stream { batches, device } => Some(
                batches
                    .next()?
                    .map_err(TrainError::from)
                    .and_then(|ds| Ok(Batch::gather(&ds, &(0..ds.rows).collect::<Vec<_>>(), device)?)),
            ),
        }
    }
}

/// Trains `model` on `splits.train`, validating after every epoch; leaves the model
/// at the best-validation epoch and reports test metrics there.
pub fn fit(
    model: &CandleModel,
    cfg: &TrainConfig,
    splits: &Splits,
    on_epoch: &mut dyn FnMut(&EpochReport),
) -> Result<TrainReport, TrainError> {
    fit_from(
        model,
        cfg,
        splits,
        None,
        &mut OnEpoch(|e: &EpochEnd| {
            on_epoch(e.report);
            Ok(())
        }),
    )
}

/// [`fit`], continuing from `resume` when given, reporting to `observer`.
pub fn fit_from(
    model: &CandleModel,
    cfg: &TrainConfig,
    splits: &Splits,
    resume: Option<Checkpoint>,
    observer: &mut dyn TrainObserver,
) -> Result<TrainReport, TrainError> {
    let train = &splits.train;
    if train.rows == 0 && splits.stream.is_none() {
        return Err(TrainError::NoRows);
    }
    for (t, l) in model.ir().tasks.iter().zip(&train.labels) {
        if t.label.is_some() && l.len() != train.rows {
            return Err(TrainError::NoLabels(t.name.clone()));
        }
    }
    let vars = model.vars().to_vec();
    let mut opt = Adam::new(vars, AdamConfig::from(cfg))?;
    // On a GPU the training rows are uploaded once and the losses read back every
    // `LOSS_READ_EVERY` steps; on the CPU every step's losses are read (it costs nothing).
    let feed = Feed::new(train, &model.device())?;
    let read_every = if model.runs_on_host() { 1 } else { LOSS_READ_EVERY };
    let workers = shard::Workers::configured()?;
    let workers = &workers;
    let mut epochs = Vec::new();
    let mut best: Option<(f64, usize, Vec<Tensor>)> = None;
    let mut first_epoch = 0;
    let mut stopped_early = false;
    let mut resume_balance = None;
    if let Some(c) = resume {
        resume_balance = Some(c.balance);
        model.restore(&c.weights)?;
        opt.load_state(&c.adam_state, c.adam_step)?;
        best = c.best;
        epochs = c.reports;
        first_epoch = c.epochs_done;
    }
    let n_tasks = model.ir().tasks.len();
    let mut balancer = balance::Balancer::new(model);
    if let Some(state) = &resume_balance {
        balancer.load(state);
    }
    // A resumed run that had already stopped early is complete: no further epochs.
    let already_stopped =
        first_epoch > 0 && best.as_ref().is_some_and(|(_, b, _)| cfg.patience_exhausted(first_epoch, *b));
    if already_stopped {
        stopped_early = true;
    }
    let last_epoch = if already_stopped { first_epoch } else { cfg.epochs };
    for epoch in first_epoch..last_epoch {
        balancer.start_epoch(model, &epochs);
        let start = Instant::now();
        let lr = cfg.lr_at(epoch);
        let mut dropout_rng = Rng::derive(cfg.seed, &format!("dropout-{epoch}"));
        let mut sums = vec![0.0f64; n_tasks];
        let mut seen = 0usize;
        // Loss sums since the last read, on the device: `[T]`, each task's mean loss
        // times the batch's rows.
        let mut unread: Option<Tensor> = None;
        let mut batches = EpochBatches::new(splits, &feed, epoch, cfg)?;
        let mut i = 0usize;
        while let Some(batch) = batches.next().transpose()? {
            let len = batch.size;
            let step = shard::step(model, &batch, &mut dropout_rng, balance::factors_of(&balancer), workers)?;
            unread = add_opt(unread, Some((&step.per_task * len as f64)?))?;
            seen += len;
            // Read before the update: a non-finite loss makes the sum since the last read
            // non-finite, and training stops before this step's update (on the CPU, which
            // reads every step, before any update from it; on a GPU the steps since the
            // last read have already been applied).
            let read = if (i + 1) % read_every == 0 { unread.take() } else { None };
            i += 1;
            if let Some(read) = &read {
                add_losses(&mut sums, read, model, epoch + 1, opt.step + 1)?;
            }
            workers.run(|| opt.step(&step.grads, &step.lookups, lr))?;
            if let Some(loss) = &step.loss {
                balancer.after_step(model, loss, lr)?;
            }
            if read.is_some() {
                observer.step(epoch + 1, opt.step, &step.per_task.to_vec1::<f32>()?);
            }
        }
        if let (EpochBatches::Stream { batches, .. }, true) = (&batches, epoch == first_epoch) {
            if let Some((skipped, read)) = batches.skipped().filter(|(s, _)| s.total > 0) {
                observer.streamed(skipped, read, batches.warns());
            }
        }
        // The steps since the last read (a GPU reads every `LOSS_READ_EVERY`).
        if let Some(read) = unread.take() {
            add_losses(&mut sums, &read, model, epoch + 1, opt.step)?;
        }
        if seen == 0 {
            return Err(TrainError::NoRows);
        }
        let train_secs = start.elapsed().as_secs_f64();
        let val = match splits.validation_data() {
            v if v.rows() > 0 => Some(evaluate_split(model, v, 4096)?),
            _ => None,
        };
        let validation_loss = val.as_ref().map_or(f64::NAN, |v| v.loss);
        let report = EpochReport {
            epoch: epoch + 1,
            lr,
            train_loss: sums.iter().map(|s| s / seen.max(1) as f64).collect(),
            validation_loss,
            validation: val.map(|v| v.metrics).unwrap_or_default(),
            loss_weights: balancer.effective(model)?,
            seconds: start.elapsed().as_secs_f64(),
            train_samples_per_sec: seen as f64 / train_secs.max(1e-9),
        };
        let score = selection_score(&cfg.select, &report);
        let improved = match &best {
            None => true,
            Some((b, _, _)) => score < *b,
        };
        if improved && splits.validation_data().rows() > 0 {
            best = Some((score, epoch + 1, model.snapshot()?));
        }
        epochs.push(report);
        let end = EpochEnd {
            report: &epochs[epochs.len() - 1],
            model,
            opt: &opt,
            best: &best,
            reports: &epochs,
            balance: balancer.state(),
        };
        observer.epoch(&end).map_err(TrainError::Checkpoint)?;
        if let Some((_, best_epoch, _)) = &best {
            if cfg.patience_exhausted(epoch + 1, *best_epoch) && epoch + 1 < cfg.epochs {
                stopped_early = true;
                break;
            }
        }
    }
    let best_epoch = match best {
        Some((_, e, values)) => {
            model.restore(&values)?;
            e
        }
        None => cfg.epochs,
    };
    let (validation, gate_usage) = match splits.validation_data() {
        v if v.rows() > 0 => {
            let v = evaluate_split(model, v, 4096)?;
            (v.metrics, v.gate_usage)
        }
        _ => (Vec::new(), predict(model, train, 4096)?.1),
    };
    let test = match splits.test_data() {
        Some(t) if t.rows() > 0 => Some(evaluate_split(model, t, 4096)?.metrics),
        _ => None,
    };
    Ok(TrainReport { epochs, best_epoch, stopped_early, validation, test, gate_usage })
}
