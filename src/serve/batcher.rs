//! Micro-batching: requests from many clients are scored together.
//!
//! Handlers send a [`Job`] (raw rows as a [`Frame`]) to one worker thread, off the async
//! threads. The worker takes the first waiting job and every job already queued behind
//! it; with `max_wait` above zero it also waits that long for more (or until `max_rows`
//! rows are waiting). Under load, requests queue while a batch runs, so batches form
//! without any wait; a lone request is not held back. Each job is encoded on its own (a
//! bad value is that job's error alone), all rows are scored in one forward pass, and
//! each job gets its own rows back.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Metrics, Shared};
use crate::data::{Dataset, Frame};

/// One request's rows, waiting to be scored.
pub struct Job {
    pub frame: Frame,
    pub gates: bool,
    pub reply: tokio::sync::oneshot::Sender<Result<Scored, String>>,
}

/// One request's answer: per task `[rows, width]` values, and per gate column its
/// weights (when asked for).
pub struct Scored {
    pub values: Vec<Vec<f32>>,
    pub gate_columns: Vec<(String, Vec<f32>)>,
    /// Sentences about values far outside what training saw.
    pub warnings: Vec<String>,
}

/// The worker loop: runs until every sender is gone.
pub fn run(rx: Receiver<Job>, shared: Arc<Shared>, metrics: Arc<Metrics>, max_wait: Duration, max_rows: usize) {
    while let Ok(first) = rx.recv() {
        let deadline = Instant::now() + max_wait;
        let mut jobs = vec![first];
        let mut rows = jobs[0].frame.rows;
        while rows < max_rows {
            let next = match rx.try_recv() {
                Ok(job) => Some(job),
                Err(_) if max_wait.is_zero() => None,
                Err(_) => match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(job) => Some(job),
                    Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => None,
                },
            };
            let Some(job) = next else { break };
            rows += job.frame.rows;
            jobs.push(job);
        }
        score(jobs, &shared, &metrics);
    }
}

fn score(jobs: Vec<Job>, shared: &Shared, metrics: &Metrics) {
    let predictor = shared.current();
    // Encode each job; a bad value fails that job only.
    let mut batch = Dataset::default();
    let mut parts = Vec::with_capacity(jobs.len());
    for job in jobs {
        match predictor.encode(&job.frame) {
            Ok(ds) => {
                let warnings = predictor.far_outside(&ds);
                let start = batch.rows;
                batch.extend(ds);
                parts.push((job, start, warnings));
            }
            Err(e) => {
                let _ = job.reply.send(Err(e.to_string()));
            }
        }
    }
    if parts.is_empty() {
        return;
    }
    let gates = parts.iter().any(|(j, ..)| j.gates);
    metrics.batch(batch.rows);
    let predicted = predictor.predict_dataset(&batch, gates);
    let p = match predicted {
        Ok(p) => p,
        Err(e) => {
            for (job, ..) in parts {
                let _ = job.reply.send(Err(format!("the model failed: {e}")));
            }
            return;
        }
    };
    let widths: Vec<usize> = predictor.compiled().model.tasks.iter().map(|t| t.head.width()).collect();
    for (job, start, warnings) in parts {
        let n = job.frame.rows;
        let values =
            p.values.iter().zip(&widths).map(|(v, &k)| v[start * k..(start + n) * k].to_vec()).collect::<Vec<_>>();
        let gate_columns = if job.gates {
            p.gate_columns.iter().map(|(name, v)| (name.clone(), v[start..start + n].to_vec())).collect()
        } else {
            Vec::new()
        };
        let _ = job.reply.send(Ok(Scored { values, gate_columns, warnings }));
    }
}
