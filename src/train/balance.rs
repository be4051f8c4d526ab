//! Loss balancing: the per-task factors that multiply each task's fixed loss weight
//! (DWA per epoch, GradNorm per step), and the effective weights every epoch reports.
//! Uncertainty weighting has no factors: its weights are model parameters
//! (`loss.log_variance`) applied in `batch_loss`.

use super::{EpochReport, StepLoss};
use crate::backend::candle::CandleModel;
use crate::ir::{Link, LossBalance};

/// The factors of one run.
pub struct Balancer {
    kind: LossBalance,
    /// Per task; 1 for fixed and uncertainty weighting.
    pub factors: Vec<f64>,
    /// GradNorm: each task's loss on the first step, L_t(0).
    initial: Option<Vec<f64>>,
}

impl Balancer {
    pub fn new(model: &CandleModel) -> Balancer {
        Balancer { kind: model.ir().balance, factors: vec![1.0; model.ir().tasks.len()], initial: None }
    }

    /// What a checkpoint keeps: the factors, then GradNorm's initial losses.
    pub fn state(&self) -> Vec<f64> {
        let mut s = self.factors.clone();
        s.extend(self.initial.iter().flatten());
        s
    }

    /// Restores [`state`](Self::state).
    pub fn load(&mut self, state: &[f64]) {
        let n = self.factors.len();
        if state.len() >= n {
            self.factors.copy_from_slice(&state[..n]);
        }
        if state.len() == 2 * n {
            self.initial = Some(state[n..].to_vec());
        }
    }

    /// Tasks that add to the loss.
    fn training(model: &CandleModel) -> Vec<usize> {
        (0..model.ir().tasks.len()).filter(|&t| model.ir().tasks[t].trains()).collect()
    }

    /// DWA: before an epoch, factors from the ratio of the last two epochs' mean
    /// training losses, `n softmax(ratio / temperature)`; 1 for the first two epochs.
    pub fn start_epoch(&mut self, model: &CandleModel, reports: &[EpochReport]) {
        let LossBalance::Dwa { temperature } = self.kind else { return };
        let [.., before, last] = reports else { return };
        let tasks = Self::training(model);
        let ratios: Vec<f64> =
            tasks.iter().map(|&t| last.train_loss[t] / before.train_loss[t].max(1e-12) / temperature).collect();
        let top = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = ratios.iter().map(|r| (r - top).exp()).sum();
        for (&t, r) in tasks.iter().zip(&ratios) {
            self.factors[t] = tasks.len() as f64 * (r - top).exp() / sum;
        }
    }

    /// GradNorm: after a step, moves the factors so that each task's gradient norm on
    /// the last shared weight, `factor_t |grad L_t|`, approaches the mean norm times the
    /// task's relative inverse training rate `(L_t / L_t(0)) / mean` to the power alpha;
    /// the factors are renormalised to sum to the number of tasks.
    pub fn after_step(&mut self, model: &CandleModel, step: &StepLoss, lr: f64) -> candle_core::Result<()> {
        let LossBalance::GradNorm { alpha } = self.kind else { return Ok(()) };
        let Some(w) = model.last_shared_weight() else { return Ok(()) };
        let tasks = Self::training(model);
        let mut losses = Vec::with_capacity(tasks.len());
        let mut norms = Vec::with_capacity(tasks.len());
        for &t in &tasks {
            let l = &step.per_task[t];
            let weighted = (l * model.ir().tasks[t].loss_weight as f64)?;
            let g = weighted.backward()?;
            let norm = match g.get(w.as_tensor()) {
                Some(g) => g.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt() as f64,
                None => 0.0,
            };
            losses.push(l.to_scalar::<f32>()? as f64);
            norms.push(norm);
        }
        let initial = self.initial.get_or_insert_with(|| {
            let mut i = vec![1.0; model.ir().tasks.len()];
            for (&t, &l) in tasks.iter().zip(&losses) {
                i[t] = l.max(1e-12);
            }
            i
        });
        let rates: Vec<f64> = tasks.iter().zip(&losses).map(|(&t, &l)| l / initial[t]).collect();
        let mean_rate = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
        let scaled: Vec<f64> = tasks.iter().zip(&norms).map(|(&t, &g)| self.factors[t] * g).collect();
        let mean_norm = scaled.iter().sum::<f64>() / scaled.len().max(1) as f64;
        for (i, &t) in tasks.iter().enumerate() {
            let target = mean_norm * (rates[i] / mean_rate.max(1e-12)).powf(alpha);
            // d|G_t - target| / d factor_t, the target held constant as in the paper.
            let grad = (scaled[i] - target).signum() * norms[i];
            self.factors[t] = (self.factors[t] - lr * grad).max(1e-3);
        }
        let sum: f64 = tasks.iter().map(|&t| self.factors[t]).sum();
        for &t in &tasks {
            self.factors[t] *= tasks.len() as f64 / sum.max(1e-12);
        }
        Ok(())
    }

    /// Each task's effective loss weight now: its fixed weight times its factor, and for
    /// uncertainty weighting `c exp(-s_t)` (c = 1/2 for a regression).
    pub fn effective(&self, model: &CandleModel) -> candle_core::Result<Vec<f64>> {
        let s: Option<Vec<f32>> = model.log_variance().as_ref().map(|v| v.as_tensor().to_vec1()).transpose()?;
        Ok(model
            .ir()
            .tasks
            .iter()
            .enumerate()
            .map(|(t, task)| {
                if !task.trains() {
                    return 0.0;
                }
                let base = task.loss_weight as f64 * self.factors[t];
                match &s {
                    Some(s) => {
                        let c = if task.link() == Link::Identity { 0.5 } else { 1.0 };
                        base * c * (-(s[t] as f64)).exp()
                    }
                    None => base,
                }
            })
            .collect())
    }
}

/// The factors for `batch_loss_weighted`, or None when they are all 1.
pub fn factors_of(b: &Balancer) -> Option<&[f64]> {
    b.factors.iter().any(|&f| f != 1.0).then_some(b.factors.as_slice())
}
