//! What `compile-and-train` shows while it works: text with a progress bar per epoch
//! (on a terminal), nothing (`--quiet`), or one JSON object per event
//! (`--log-format json`). All of it from the run's observer events; the training loop
//! prints nothing itself.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use multigate::ir::DataSource;
use multigate::run::{Event, Observer};

use super::auto_threads;

/// Prints a run's events as text, with a progress bar per epoch on a terminal.
pub struct Printer {
    pub names: Vec<String>,
    /// Whether loss weights change during training (then every epoch prints them).
    balanced: bool,
    /// Task relatedness p of the MMoE generator, when it makes the data.
    relatedness: Option<f64>,
    /// Print nothing while training.
    quiet: bool,
    /// The epoch's bar, drawn on stderr when it is a terminal.
    bar: Option<ProgressBar>,
    batch_size: usize,
    steps_per_epoch: u64,
    epochs: usize,
    /// Running mean of each task's loss over the epoch's steps so far.
    running: Vec<f64>,
    steps_seen: u64,
}

impl Printer {
    pub fn new(quiet: bool) -> Printer {
        Printer {
            names: Vec::new(),
            balanced: false,
            relatedness: None,
            quiet,
            bar: None,
            batch_size: 1,
            steps_per_epoch: 0,
            epochs: 0,
            running: Vec::new(),
            steps_seen: 0,
        }
    }

    fn line(&self, text: String) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(bar) => bar.suspend(|| println!("{text}")),
            None => println!("{text}"),
        }
    }

    fn new_bar(&mut self, epoch: usize) {
        if self.quiet || !std::io::stderr().is_terminal() || self.steps_per_epoch == 0 {
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(self.steps_per_epoch), ProgressDrawTarget::stderr());
        if let Ok(style) =
            ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} steps  {per_sec}  eta {eta}  {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(format!("{epoch}/{}", self.epochs));
        self.bar = Some(bar);
        self.running.clear();
        self.steps_seen = 0;
    }

    /// Rows skipped as broken, of those read, by reason; with `warn`, the first few.
    fn skipped(&mut self, prefix: &str, skipped: &multigate::data::Skipped, read: u64, warn: bool) {
        self.line(format!("{prefix}skipped {} bad row(s) of {read} read: {}", skipped.total, skipped.summary()));
        if warn {
            for f in &skipped.first {
                self.line(format!("  skipped {f}"));
            }
        }
    }
}

macro_rules! say {
    ($self:ident, $($arg:tt)*) => { $self.line(format!($($arg)*)) };
}

impl Observer for Printer {
    fn on(&mut self, event: &Event<'_>) {
        match event {
            Event::Fitted { of, what } => say!(self, "fitted on the training rows, {of}: {what}"),
            Event::Built { compiled } => {
                let threads = auto_threads();
                say!(
                    self,
                    "model {}: {} parameters, {} forward FLOPs/sample; {threads} CPU thread(s)",
                    compiled.model.name,
                    compiled.model.param_count(),
                    compiled.model.flops_per_sample()
                );
                self.names = compiled.model.tasks.iter().map(|t| t.name.clone()).collect();
                self.batch_size = compiled.train.batch_size;
                self.epochs = compiled.train.epochs;
                self.balanced = compiled.model.balance != multigate::ir::LossBalance::Fixed;
                self.relatedness = match &compiled.data.source {
                    DataSource::Synthetic(s) => match s.kind {
                        multigate::ir::SyntheticKind::Mmoe { correlation, .. } => Some(correlation),
                        _ => None,
                    },
                    _ => None,
                };
            }
            Event::DataLoaded { info, train, validation, test } => {
                self.steps_per_epoch = train.div_ceil(self.batch_size.max(1)) as u64;
                match info.streamed {
                    Some(buffer) => say!(
                        self,
                        "data: {} (streamed: train through a shuffle buffer of {buffer} rows; validation {validation}, test {test}, read a chunk at a time)",
                        info.source
                    ),
                    None => say!(self, "data: {} (train {train}, validation {validation}, test {test})", info.source),
                }
                if let (Some(r), Some(p)) = (info.label_correlation, self.relatedness) {
                    say!(self, "synthetic labels: Pearson correlation {r:.4} (task relatedness p = {p})");
                }
                for l in &info.labels {
                    let show = |s: &Option<multigate::data::LabelStats>| -> Option<String> {
                        let s = s.as_ref()?;
                        match (&s.positive_rate, &s.class_shares) {
                            (Some(p), _) => Some(format!("{:.2}%", 100.0 * p)),
                            (_, Some(shares)) => {
                                Some(shares.iter().map(|x| format!("{:.1}%", 100.0 * x)).collect::<Vec<_>>().join("/"))
                            }
                            _ => None,
                        }
                    };
                    let what = if l.train.as_ref().is_some_and(|s| s.positive_rate.is_some()) {
                        "positive"
                    } else {
                        "classes"
                    };
                    let parts: Vec<String> = [("train", &l.train), ("validation", &l.validation), ("test", &l.test)]
                        .iter()
                        .filter_map(|(name, s)| show(s).map(|v| format!("{v} {name}")))
                        .collect();
                    say!(self, "labels {}: {what} {}", l.task, parts.join(", "));
                }
                if info.skipped.total > 0 {
                    self.skipped("", &info.skipped, info.rows_read, info.warn_skipped);
                }
            }
            Event::StreamSkipped { skipped, read, warn } => {
                self.skipped("streamed training rows: ", skipped, *read, *warn)
            }
            Event::Resumed { checkpoint, epochs_done, complete: false } => {
                say!(self, "resuming from {} after epoch {epochs_done}", checkpoint.display())
            }
            Event::Resumed { checkpoint, epochs_done, complete: true } => say!(
                self,
                "{} holds a run that had finished ({epochs_done} epochs): nothing to train, writing its bundle",
                checkpoint.display()
            ),
            Event::NoCheckpoint { checkpoint } => {
                say!(self, "no checkpoint at {}: starting from epoch 1", checkpoint.display())
            }
            Event::Step { epoch, losses, .. } => {
                if self.bar.is_none() && self.steps_seen == 0 {
                    self.new_bar(*epoch);
                }
                self.steps_seen += 1;
                if self.running.len() != losses.len() {
                    self.running = vec![0.0; losses.len()];
                }
                let n = self.steps_seen as f64;
                for (r, &l) in self.running.iter_mut().zip(losses.iter()) {
                    *r += (l as f64 - *r) / n;
                }
                if let Some(bar) = &self.bar {
                    bar.inc(1);
                    let msg: Vec<String> =
                        self.names.iter().zip(&self.running).map(|(n, l)| format!("{n} {l:.4}")).collect();
                    let rate = bar.per_sec() * self.batch_size as f64;
                    bar.set_message(format!("{rate:.0} samples/s  loss [{}]", msg.join(", ")));
                }
            }
            Event::Epoch(e) => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
                self.steps_seen = 0;
                let losses: Vec<String> =
                    self.names.iter().zip(&e.train_loss).map(|(n, l)| format!("{n} {l:.4}")).collect();
                say!(
                    self,
                    "epoch {:>3}  lr {:.2e}  train loss [{}]  {:.0} samples/s",
                    e.epoch,
                    e.lr,
                    losses.join(", "),
                    e.train_samples_per_sec
                );
                for (n, m) in self.names.iter().zip(&e.validation) {
                    say!(self, "           val {n}: {m}");
                }
                if self.balanced {
                    let w: Vec<String> =
                        self.names.iter().zip(&e.loss_weights).map(|(n, w)| format!("{n} {w:.3}")).collect();
                    say!(self, "           loss weights [{}]", w.join(", "));
                }
            }
            Event::Warning(w) => say!(self, "warning: {w}"),
            Event::Loading { path, read, total } => {
                if self.quiet || !std::io::stderr().is_terminal() {
                    return;
                }
                if read >= total {
                    if let Some(bar) = self.bar.take() {
                        bar.finish_and_clear();
                    }
                    return;
                }
                let bar = self.bar.get_or_insert_with(|| {
                    let bar = ProgressBar::with_draw_target(Some(*total), ProgressDrawTarget::stderr());
                    if let Ok(style) = ProgressStyle::with_template(
                        "reading {msg} [{bar:30}] {bytes}/{total_bytes}  {bytes_per_sec}  eta {eta}",
                    ) {
                        bar.set_style(style.progress_chars("=> "));
                    }
                    bar.set_message(path.display().to_string());
                    bar
                });
                bar.set_position(*read);
            }
            Event::Finished { .. } => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
            }
        }
    }
}

/// One JSON object per line on stdout per event, for machines: `fitted`, `built`,
/// `data`, `resumed`, `step`, `epoch`, `warning` (gate alarms), `done`.
#[derive(Default)]
pub struct JsonLog {
    names: Vec<String>,
}

fn keyed<T: serde::Serialize>(names: &[String], values: &[T]) -> serde_json::Value {
    serde_json::Value::Object(names.iter().cloned().zip(values.iter().map(|v| json!(v))).collect())
}

impl Observer for JsonLog {
    fn on(&mut self, event: &Event<'_>) {
        let v = match event {
            Event::Fitted { of, what } => json!({"event": "fitted", "of": of, "what": what}),
            Event::Built { compiled } => {
                auto_threads();
                self.names = compiled.model.tasks.iter().map(|t| t.name.clone()).collect();
                json!({"event": "built", "model": compiled.model.name, "params": compiled.model.param_count(),
                       "flops_per_sample": compiled.model.flops_per_sample(), "tasks": self.names})
            }
            Event::DataLoaded { info, train, validation, test } => json!({"event": "data", "source": info.source,
                "train": train, "validation": validation, "test": test, "bad_rows": info.skipped,
                "labels": info.labels, "streamed": info.streamed}),
            Event::StreamSkipped { skipped, read, .. } => {
                json!({"event": "stream_skipped", "bad_rows": skipped, "read": read})
            }
            Event::Resumed { checkpoint, epochs_done, complete } => json!({"event": "resumed",
                "checkpoint": checkpoint, "epochs_done": epochs_done, "complete": complete}),
            Event::NoCheckpoint { checkpoint } => json!({"event": "no_checkpoint", "checkpoint": checkpoint}),
            Event::Warning(w) => json!({"event": "warning", "what": w}),
            Event::Loading { path, read, total } => {
                json!({"event": "loading", "path": path, "read": read, "total": total})
            }
            Event::Step { epoch, step, losses } => json!({"event": "step", "epoch": epoch, "step": step,
                "loss": keyed(&self.names, losses)}),
            Event::Epoch(e) => json!({"event": "epoch", "epoch": e.epoch, "lr": e.lr,
                "train_loss": keyed(&self.names, &e.train_loss), "validation_loss": e.validation_loss,
                "validation": keyed(&self.names, &e.validation), "loss_weights": keyed(&self.names, &e.loss_weights),
                "seconds": e.seconds, "samples_per_sec": e.train_samples_per_sec}),
            Event::Finished { report, out } => {
                for g in &report.gate_usage {
                    for alarm in g.alarms() {
                        println!("{}", json!({"event": "warning", "what": alarm}));
                    }
                }
                json!({"event": "done", "out": out, "best_epoch": report.best_epoch,
                       "stopped_early": report.stopped_early,
                       "validation": keyed(&self.names, &report.validation),
                       "test": report.test.as_ref().map(|t| keyed(&self.names, t))})
            }
        };
        println!("{v}");
    }
}
