//! Streamed training rows: data larger than memory trains in bounded memory.
//!
//! Each epoch a background thread reads the training files (their order shuffled per
//! epoch) in chunks of [`StreamConfig::chunk_rows`] rows, and parses, hashes and
//! encodes each chunk while the trainer runs on earlier ones. The trainer's side keeps
//! a shuffle buffer: once it holds `shuffle_buffer` rows they are permuted and the
//! first half is handed out as batches while the rest waits for more rows; at the end
//! of the files whatever is left is permuted and handed out. The rows held at once are
//! about 1.5 x `shuffle_buffer` plus two chunks.
//!
//! When the buffer holds every row (a file smaller than it), an epoch's batches are
//! exactly those of the in-memory loop: the same permutation (`shuffle-{epoch}`) of
//! the same rows in file order.
//!
//! Validation and test files stream through [`Stream::for_each_chunk`] instead: in
//! file order, no buffer, one chunk at a time on the evaluating thread.

use std::sync::{mpsc, Arc, Mutex};

use super::ranges::{DenseRange, RangeTally};
use super::source::{read_part_chunks, Part};
use super::{check_bad_rows, encode_by_policy, DataError, Dataset, Need, Skipped};
use crate::ir::{BadRows, CsvFormat, Model, StreamConfig};
use crate::rng::Rng;

/// The training files of a run, to be read once per epoch.
#[derive(Clone)]
pub struct Stream {
    model: Model,
    parts: Vec<Part>,
    format: CsvFormat,
    needs: Vec<Need>,
    /// What `spec_at` says of each need (the reader thread cannot borrow the caller's).
    spec_at: Vec<String>,
    pub config: StreamConfig,
    bad_rows: BadRows,
    /// The dense columns' ranges over the training rows (taken once, over the first
    /// epoch read whole), for the out-of-range warnings of `predict`. Shared by the
    /// clones the reader threads get.
    ranges: Arc<Mutex<RangeTally>>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let files: Vec<_> = self.parts.iter().map(|p| p.path.display().to_string()).collect();
        f.debug_struct("Stream").field("files", &files).field("config", &self.config).finish()
    }
}

/// A chunk's encoded rows, or the end of the files with the rows skipped and read.
enum Message {
    Chunk(Dataset),
    Done { skipped: Skipped, read: u64 },
}

impl Stream {
    pub fn new(
        model: &Model,
        parts: Vec<Part>,
        format: CsvFormat,
        config: StreamConfig,
        bad_rows: BadRows,
        spec_at: &dyn Fn(&Need) -> String,
    ) -> Stream {
        let needs = super::needs(model);
        let spec_at = needs.iter().map(spec_at).collect();
        Stream { model: model.clone(), parts, format, needs, spec_at, config, bad_rows, ranges: Default::default() }
    }

    /// The dense columns' ranges over the training rows read so far (after a whole
    /// epoch: all of them); none before any.
    pub fn dense_ranges(&self) -> Vec<DenseRange> {
        self.ranges_lock().ranges(&self.model)
    }

    fn ranges_lock(&self) -> std::sync::MutexGuard<'_, RangeTally> {
        self.ranges.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The files streamed, in spec order.
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// Reads the files' first rows, about `rows` of them (whole chunks), with the
    /// columns `wanted` only: what fitting sees of a stream.
    pub fn sample(&self, wanted: &[Need], rows: usize) -> Result<Vec<super::Frame>, DataError> {
        let mut frames = Vec::new();
        let mut got = 0usize;
        let spec_at = |n: &Need| self.describe(n);
        for part in &self.parts {
            let read = read_part_chunks(
                part,
                &self.format,
                wanted,
                true,
                &spec_at,
                &|_, _| {},
                self.config.chunk_rows,
                &mut |f| {
                    got += f.rows;
                    frames.push(f);
                    if got >= rows {
                        Err(DataError::Stopped)
                    } else {
                        Ok(())
                    }
                },
            );
            match read {
                Ok(()) => {}
                Err(DataError::Stopped) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(frames)
    }

    /// Reads every file in spec order and hands `each` its encoded rows a chunk at a
    /// time (no shuffling): an evaluation pass over a streamed validation or test split.
    /// Rows the bad-row policy skips are tallied into `tally` (skipped, read).
    pub fn for_each_chunk(
        &self,
        tally: &mut (Skipped, u64),
        each: &mut dyn FnMut(&Dataset) -> Result<(), DataError>,
    ) -> Result<(), DataError> {
        self.read_encoded(&mut self.parts.iter(), false, tally, &mut |ds| each(&ds))
    }

    /// Reads `parts` in the order given, encoding each frame a reader hands on (as
    /// training rows or not) for `each`.
    fn read_encoded(
        &self,
        parts: &mut dyn Iterator<Item = &Part>,
        training: bool,
        tally: &mut (Skipped, u64),
        each: &mut dyn FnMut(Dataset) -> Result<(), DataError>,
    ) -> Result<(), DataError> {
        let spec_at = |n: &Need| self.describe(n);
        for part in parts {
            read_part_chunks(
                part,
                &self.format,
                &self.needs,
                true,
                &spec_at,
                &|_, _| {},
                self.config.chunk_rows,
                &mut |frame| each(encode_by_policy(&self.model, &frame, &self.bad_rows, training, tally)?),
            )?;
        }
        Ok(())
    }

    fn describe(&self, n: &Need) -> String {
        self.needs.iter().position(|m| m == n).map_or_else(|| n.reader.clone(), |i| self.spec_at[i].clone())
    }

    /// Epoch `epoch`'s training batches of `batch_size` rows (the last one fewer), the
    /// files' order and the rows' shuffled from `seed`.
    pub fn epoch(&self, epoch: usize, batch_size: usize, seed: u64) -> Batches {
        // One chunk queued while the next is read: the reader stays a chunk ahead.
        let (tx, rx) = mpsc::sync_channel::<Result<Message, DataError>>(1);
        let this = self.clone();
        let reader = std::thread::spawn(move || {
            let result = this.read_epoch(epoch, seed, &tx);
            match result {
                Ok(()) | Err(DataError::Stopped) => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
        Batches {
            rx,
            reader: Some(reader),
            buffer: Dataset::default(),
            out: Dataset::default(),
            pos: 0,
            batch: batch_size.max(1),
            // At least two batches, so that every batch but the last is whole.
            cap: self.config.shuffle_buffer.max(2 * batch_size.max(1)),
            rng: Rng::derive(seed, &format!("shuffle-{epoch}")),
            finished: false,
            bad_rows: self.bad_rows.clone(),
            summary: None,
        }
    }

    /// The reader thread's work: every file, in this epoch's order, chunk by chunk.
    fn read_epoch(
        &self,
        epoch: usize,
        seed: u64,
        tx: &mpsc::SyncSender<Result<Message, DataError>>,
    ) -> Result<(), DataError> {
        let mut order: Vec<usize> = (0..self.parts.len()).collect();
        Rng::derive(seed, &format!("files-{epoch}")).shuffle(&mut order);
        let mut tally = (Skipped::default(), 0u64);
        // Every epoch reads the same rows: the ranges are taken over the first epoch this
        // process reads whole (a resumed run starts past epoch 0).
        let take_ranges = !self.ranges_lock().complete();
        self.read_encoded(&mut order.iter().map(|&i| &self.parts[i]), true, &mut tally, &mut |ds| {
            if take_ranges {
                self.ranges_lock().add(&ds);
            }
            // A reader may hand on more than a chunk (a CSV block of 4 MB): pieces of
            // `chunk_rows` keep the buffer's window exact. A send fails when the trainer
            // hung up (it failed, or stopped early): stop reading.
            let n = self.config.chunk_rows.max(1);
            if ds.rows <= n {
                return tx.send(Ok(Message::Chunk(ds))).map_err(|_| DataError::Stopped);
            }
            for start in (0..ds.rows).step_by(n) {
                let idx: Vec<usize> = (start..(start + n).min(ds.rows)).collect();
                tx.send(Ok(Message::Chunk(ds.select(&idx)))).map_err(|_| DataError::Stopped)?;
            }
            Ok(())
        })?;
        if take_ranges {
            self.ranges_lock().set_complete();
        }
        let (skipped, read) = tally;
        tx.send(Ok(Message::Done { skipped, read })).map_err(|_| DataError::Stopped)
    }
}

/// One epoch's batches, read and shuffled as they are asked for.
pub struct Batches {
    rx: mpsc::Receiver<Result<Message, DataError>>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// Rows waiting to be shuffled out.
    buffer: Dataset,
    /// Rows shuffled out, handed on `batch` at a time from `pos`.
    out: Dataset,
    pos: usize,
    batch: usize,
    cap: usize,
    rng: Rng,
    finished: bool,
    bad_rows: BadRows,
    /// Once the files are read: the rows skipped as broken, and the rows read.
    summary: Option<(Skipped, u64)>,
}

impl Batches {
    /// The rows skipped as broken and the rows read, once the epoch's files are read.
    pub fn skipped(&self) -> Option<(&Skipped, u64)> {
        self.summary.as_ref().map(|(s, r)| (s, *r))
    }

    /// Whether the bad-row policy shows the rows it skips (`warn`).
    pub fn warns(&self) -> bool {
        self.bad_rows.policy == crate::ir::BadRowPolicy::Warn
    }

    /// Permutes the buffer and moves its first rows to `out`: all of them at the end of
    /// the files, else whole batches of all but half the buffer's capacity (at least
    /// one batch), so that only an epoch's last batch is short.
    fn release(&mut self, all: bool) {
        let mut order: Vec<usize> = (0..self.buffer.rows).collect();
        self.rng.shuffle(&mut order);
        let len = order.len();
        let free = match all {
            true => len,
            false => (len.saturating_sub(self.cap / 2) / self.batch * self.batch).max(self.batch).min(len),
        };
        let (out, rest) = order.split_at(free);
        self.out = self.buffer.select(out);
        self.buffer = self.buffer.select(rest);
        self.pos = 0;
    }
}

impl Iterator for Batches {
    type Item = Result<Dataset, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.pos < self.out.rows {
                let end = (self.pos + self.batch).min(self.out.rows);
                let idx: Vec<usize> = (self.pos..end).collect();
                self.pos = end;
                return Some(Ok(self.out.select(&idx)));
            }
            if self.finished {
                return None;
            }
            match self.rx.recv() {
                Ok(Ok(Message::Chunk(ds))) => {
                    self.buffer.extend(ds);
                    if self.buffer.rows >= self.cap {
                        self.release(false);
                    }
                }
                Ok(Ok(Message::Done { skipped, read })) => {
                    self.finished = true;
                    if let Err(e) = check_bad_rows(&self.bad_rows, &skipped, read) {
                        return Some(Err(e));
                    }
                    self.summary = Some((skipped, read));
                    self.release(true);
                }
                Ok(Err(e)) => {
                    self.finished = true;
                    return Some(Err(e));
                }
                Err(_) => {
                    self.finished = true;
                    return Some(Err(DataError::Other("the training data reader stopped unexpectedly".into())));
                }
            }
        }
    }
}

impl Drop for Batches {
    /// Hangs up first, so that a reader blocked on a full channel stops.
    fn drop(&mut self) {
        let (_, dead) = mpsc::sync_channel(0);
        drop(std::mem::replace(&mut self.rx, dead));
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}
