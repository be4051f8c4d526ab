//! What a run reports while it works: the [`Event`]s that `run::train_spec` sends to an
//! [`Observer`] (the CLI's progress, TensorBoard, a notebook's callback). They live
//! below every reader of them, so `report/` never imports the run that feeds it.

use std::path::Path;

use crate::data::{self, LoadInfo};
use crate::lower::Compiled;
use crate::train::{EpochReport, TrainReport};

/// What a run reports while it works.
pub enum Event<'a> {
    /// A statistic the spec left open was fitted on the training rows: `of` says
    /// whose (`feature age`, `the labels of task income`).
    Fitted {
        of: &'a str,
        what: String,
    },
    /// A data file is being read: bytes read so far (compressed ones for gzip) of its size.
    Loading {
        path: &'a Path,
        read: u64,
        total: u64,
    },
    /// The model is built.
    Built {
        compiled: &'a Compiled,
    },
    DataLoaded {
        info: &'a LoadInfo,
        train: usize,
        validation: usize,
        test: usize,
    },
    /// Streamed training rows skipped as broken in the first epoch (each epoch reads
    /// them again and checks the cap), of the rows read; `warn`: show them.
    StreamSkipped {
        skipped: &'a data::Skipped,
        read: u64,
        warn: bool,
    },
    /// Continuing from a checkpoint; `complete` when that run had already finished its
    /// epochs or stopped early (then nothing is trained, the bundle is written).
    Resumed {
        checkpoint: &'a Path,
        epochs_done: usize,
        complete: bool,
    },
    NoCheckpoint {
        checkpoint: &'a Path,
    },
    /// After every optimizer step: each task's training loss on the batch.
    Step {
        epoch: usize,
        step: u64,
        losses: &'a [f32],
    },
    Epoch(&'a EpochReport),
    /// Something the user should know that does not stop the run.
    Warning(String),
    /// The bundle is in place.
    Finished {
        report: &'a TrainReport,
        out: &'a Path,
    },
}

/// Receives a run's [`Event`]s.
pub trait Observer {
    fn on(&mut self, event: &Event<'_>);
}

/// Hands every event to two observers, in order.
pub struct Both<'a>(pub &'a mut dyn Observer, pub &'a mut dyn Observer);

impl Observer for Both<'_> {
    fn on(&mut self, event: &Event<'_>) {
        self.0.on(event);
        self.1.on(event);
    }
}

/// Ignores everything.
pub struct Silent;

impl Observer for Silent {
    fn on(&mut self, _: &Event<'_>) {}
}
