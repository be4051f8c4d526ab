//! The library's front door: training a compiled spec end to end, and predicting with
//! a bundle. The CLI, and any server or notebook binding, are thin callers of these.
//!
//! * [`train_spec`]: fit open label statistics -> load data -> build -> train (resuming
//!   from a checkpoint when asked) -> export the bundle; everything it has to say goes
//!   to an [`Observer`] as [`Event`]s.
//! * [`Predictor`]: loads a bundle once and scores raw rows (hashing, vocabularies and
//!   transforms included) with no autograd graph.
//!
//! ```no_run
//! use multigate::{pipeline, run};
//! let (src, compiled) = pipeline::compile_file("models/synthetic_mmoe.toml".as_ref()).unwrap();
//! let opts = run::TrainOptions { out: Some("runs/demo".into()), ..Default::default() };
//! let done = run::train_spec(&src, compiled.unwrap(), &opts, &mut run::Silent).unwrap();
//! let predictor = run::Predictor::load(&done.out, multigate::backend::Device::Cpu).unwrap();
//! ```

use std::path::{Path, PathBuf};

use crate::backend::candle::{candle_device, CandleBackend, CandleModel};
use crate::backend::{Backend, Device};
use crate::data::{self, fit::DenseStats, fit::Fits, fit::FittedFeature, fit::FittedLabel, Frame, Need, NeedOwner};
use crate::export::provenance::{DataFile, Provenance, SplitRows};
use crate::export::{self, BundleContents, ExportError, RunLock};
use crate::lower::{self, Compiled};
use crate::source::SourceFile;
use crate::train::{self, EpochEnd, Predictions, TrainError, TrainObserver, TrainReport};

/// How to run a spec: overrides of its settings and where things go.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Train on this CSV instead of the spec's data.
    pub data: Option<PathBuf>,
    /// Bundle folder (default: `runs/<model name>`).
    pub out: Option<PathBuf>,
    pub epochs: Option<usize>,
    /// Rows of the synthetic generator.
    pub rows: Option<usize>,
    /// The last training day of the spec's date window.
    pub cur_date: Option<String>,
    /// Days of training partitions of the spec's date window.
    pub days: Option<u32>,
    pub device: Device,
    /// Continue from the checkpoint of an interrupted run.
    pub resume: bool,
    /// Discard the checkpoint of an interrupted run.
    pub fresh: bool,
    /// Replace a bundle already at `out` (else that is an error, before training).
    pub force: bool,
    /// The command line that asked for the run, recorded in the bundle's provenance.
    pub command: Vec<String>,
}

pub use crate::report::events::{Both, Event, Observer, Silent};

/// What determines a run, kept in its checkpoint (`run.json`) so that `--resume` can
/// refuse to continue a run under other settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunSettings {
    /// The normalised spec (fitted label statistics pinned), as the bundle stores it.
    pub spec: String,
    /// Epochs to train, after `--epochs`.
    pub epochs: usize,
    /// Rows the synthetic generator makes, after `--rows` (None for files).
    pub synthetic_rows: Option<usize>,
    /// Training file given with `--data`.
    pub data: Option<PathBuf>,
    /// Every data file read (training, validation, test): size and SHA-256.
    #[serde(default)]
    pub data_files: Vec<DataFile>,
}

impl RunSettings {
    /// How `self` (the checkpoint's) differs from `now`, one sentence per difference.
    pub fn differences(&self, now: &RunSettings) -> Vec<String> {
        let mut out = Vec::new();
        if self.epochs != now.epochs {
            out.push(format!("epochs: {} in the checkpoint, {} now", self.epochs, now.epochs));
        }
        if self.synthetic_rows != now.synthetic_rows {
            out.push(format!(
                "synthetic rows: {:?} in the checkpoint, {:?} now",
                self.synthetic_rows, now.synthetic_rows
            ));
        }
        if self.data != now.data {
            out.push(format!("--data: {:?} in the checkpoint, {:?} now", self.data, now.data));
        }
        for then in &self.data_files {
            match now.data_files.iter().find(|f| f.path == then.path) {
                Some(f) if f == then => {}
                Some(f) => out.push(format!(
                    "data file {}: {} bytes (SHA-256 {}) in the checkpoint, {} bytes (SHA-256 {}) now",
                    then.path.display(),
                    then.bytes,
                    &then.sha256[..12.min(then.sha256.len())],
                    f.bytes,
                    &f.sha256[..12.min(f.sha256.len())]
                )),
                None => out.push(format!("data file {}: read in the checkpoint, not now", then.path.display())),
            }
        }
        for f in now.data_files.iter().filter(|f| !self.data_files.iter().any(|t| t.path == f.path)) {
            out.push(format!("data file {}: read now, not in the checkpoint", f.path.display()));
        }
        // The spec, line by line within its tables: `[train] lr = 0.001` vs `lr = 0.01`.
        let lines = |text: &str| -> Vec<String> {
            let mut table = String::new();
            let mut out = Vec::new();
            for l in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                if l.starts_with('[') {
                    table = l.to_string();
                } else {
                    out.push(format!("{table} {l}"));
                }
            }
            out
        };
        let (before, after) = (lines(&self.spec), lines(&now.spec));
        for l in before.iter().filter(|l| !after.contains(l)) {
            out.push(format!("spec: `{l}` in the checkpoint"));
        }
        for l in after.iter().filter(|l| !before.contains(l)) {
            out.push(format!("spec: `{l}` now"));
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{} was written under other settings; resume it with the same ones, or pass --fresh:\n  {}", .checkpoint.display(), .differences.join("\n  "))]
    ResumeMismatch { checkpoint: PathBuf, differences: Vec<String> },
    #[error("{} holds the checkpoint of an interrupted run: pass --resume to continue it, or --fresh to discard it", .0.display())]
    Interrupted(PathBuf),
    #[error("{} already holds a bundle (trained {when}); pass --force to replace it, or choose another --out", .out.display())]
    Exists { out: PathBuf, when: String },
    #[error("the spec with fitted label statistics does not compile: {0}")]
    Refit(String),
    #[error("device: {0}")]
    Device(String),
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error("{0}")]
    Other(String),
}

impl From<crate::fs::FsError> for RunError {
    fn from(e: crate::fs::FsError) -> RunError {
        RunError::Export(e.into())
    }
}

/// What a finished run leaves.
pub struct RunResult {
    /// The compiled spec, with any fitted label statistics pinned.
    pub compiled: Compiled,
    pub report: TrainReport,
    pub out: PathBuf,
}

/// The checkpoint folder of a bundle folder: `<out>.checkpoint` beside it.
pub fn checkpoint_dir(out: &Path) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "bundle".into());
    out.with_file_name(format!("{name}.checkpoint"))
}

/// Trains a compiled spec (from `src`) and writes its bundle.
pub fn train_spec(
    src: &SourceFile,
    compiled: Compiled,
    opts: &TrainOptions,
    observer: &mut dyn Observer,
) -> Result<RunResult, RunError> {
    let started = export::provenance::utc_now();
    let out = opts.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(&compiled.model.name));
    let ckpt_dir = checkpoint_dir(&out);
    // One run per folder: a second one fails here, naming the first, and a live run's
    // checkpoint is never mistaken for an interrupted one. Taking the lock is also the
    // first write beside `out`: an unwritable place fails now, not after training.
    let _lock = RunLock::acquire(&out)?;
    // Finish or roll back commits a crashed run left, before looking at either folder.
    export::recover(&out)?;
    export::recover(&ckpt_dir)?;
    if ckpt_dir.exists() && !opts.resume && !opts.fresh {
        return Err(RunError::Interrupted(ckpt_dir));
    }
    // A bundle folder that cannot be one fails now, not after training.
    if out.exists() && !out.is_dir() {
        return Err(RunError::Other(format!("--out {} exists and is not a folder", out.display())));
    }
    // A run never silently replaces another's bundle; continuing an interrupted run
    // (whose start already passed this check) may.
    let continuing = opts.resume && ckpt_dir.exists();
    if !opts.force && !continuing && std::fs::read_dir(&out).is_ok_and(|mut d| d.next().is_some()) {
        let when = std::fs::read_to_string(out.join("provenance.json"))
            .ok()
            .and_then(|p| serde_json::from_str::<Provenance>(&p).ok())
            .map_or_else(|| "earlier".to_string(), |p| format!("{} to {}", p.started, p.finished));
        return Err(RunError::Exists { out, when });
    }
    let locate = spec_locator(src);
    let mut compiled = compiled;
    if opts.cur_date.is_some() || opts.days.is_some() {
        let window = match &mut compiled.data.source {
            crate::ir::DataSource::Csv(c) => c.window.as_mut(),
            crate::ir::DataSource::Synthetic(_) => None,
        };
        let Some(w) = window else {
            return Err(RunError::Other(
                "--cur-date and --days move the spec's date window: declare [data] partition_date and cur_date".into(),
            ));
        };
        if let Some(d) = &opts.cur_date {
            if data::source::parse_date(d).is_none() {
                return Err(RunError::Other(format!("--cur-date {d}: expected a date such as 2026-11-28")));
            }
            w.cur = d.clone();
        }
        if let Some(n) = opts.days {
            w.days = n.max(1);
        }
    }
    let (mut spec, mut c) = fit_open(src, compiled, opts, &locate, observer)?;
    // The window goes into the spec too, so that the bundle says what was trained on.
    if let crate::ir::DataSource::Csv(crate::ir::CsvConfig { window: Some(w), .. }) = &c.data.source {
        spec.data.cur_date = Some(toml::Spanned::new(0..0, w.cur.clone()));
        spec.data.days = Some(toml::Spanned::new(0..0, w.days as u64));
    }
    // The overrides go into the spec too, so that the bundle says what was trained.
    if let Some(e) = opts.epochs {
        c.train.epochs = e.max(1);
        spec.train.epochs = toml::Spanned::new(0..0, c.train.epochs as u64);
    }
    if let (Some(r), crate::ir::DataSource::Synthetic(s)) = (opts.rows, &mut c.data.source) {
        s.rows = r.max(1);
        spec.data.synthetic.rows = toml::Spanned::new(0..0, s.rows as u64);
    }
    let dev = candle_device(opts.device).map_err(|e| RunError::Device(e.to_string()))?;
    observer.on(&Event::Built { compiled: &c });
    let (splits, info) = {
        let observer = std::cell::RefCell::new(&mut *observer);
        let progress = |path: &Path, read: u64, total: u64| {
            if let Ok(mut o) = observer.try_borrow_mut() {
                o.on(&Event::Loading { path, read, total });
            }
        };
        data::load_splits_with(&c.model, &c.data, opts.data.as_deref(), &locate, &progress)?
    };
    observer.on(&Event::DataLoaded {
        info: &info,
        train: splits.train.rows,
        validation: splits.validation_data().rows(),
        test: splits.test_data().map_or(0, |t| t.rows()),
    });
    // A binary task whose training labels are all one class learns nothing useful and
    // has no AUC: almost always a wrong `positive` or label column.
    for l in &info.labels {
        if let Some(p) = l.train.as_ref().and_then(|s| s.positive_rate).filter(|&p| p == 0.0 || p == 1.0) {
            observer.on(&Event::Warning(format!(
                "every training label of task `{}` is {}: check its label column and `positive`",
                l.task, p as u8
            )));
        }
    }
    let data_files = data_paths(&c.data, opts.data.as_deref())?
        .iter()
        .map(|p| DataFile::of(p).map_err(|e| data::DataError::Open { path: p.display().to_string(), source: e }))
        .collect::<Result<Vec<_>, _>>()?;
    let settings = RunSettings {
        spec: spec.to_toml(),
        epochs: c.train.epochs,
        synthetic_rows: match &c.data.source {
            crate::ir::DataSource::Synthetic(s) if opts.data.is_none() => Some(s.rows),
            _ => None,
        },
        data: opts.data.clone(),
        data_files,
    };
    let model = CandleBackend { device: dev }.build(&c.model, c.train.seed).map_err(TrainError::from)?;
    let checkpoint = match (opts.resume, ckpt_dir.exists()) {
        (true, true) => {
            let ck = export::read_checkpoint(&ckpt_dir, &model)?;
            let then: RunSettings = serde_json::from_str(&ck.run).map_err(|e| ExportError::Corrupt {
                path: ckpt_dir.display().to_string(),
                problem: format!("run.json: {e}"),
            })?;
            let differences = then.differences(&settings);
            if !differences.is_empty() {
                return Err(RunError::ResumeMismatch { checkpoint: ckpt_dir, differences });
            }
            let stopped = ck.best.as_ref().is_some_and(|(_, b, _)| c.train.patience_exhausted(ck.epochs_done, *b));
            let complete = ck.epochs_done >= c.train.epochs || stopped;
            observer.on(&Event::Resumed { checkpoint: &ckpt_dir, epochs_done: ck.epochs_done, complete });
            Some(ck)
        }
        (true, false) => {
            observer.on(&Event::NoCheckpoint { checkpoint: &ckpt_dir });
            None
        }
        _ => None,
    };
    let resumed_after = checkpoint.as_ref().map(|c| c.epochs_done);
    let run_json = serde_json::to_string_pretty(&settings).map_err(|e| RunError::Other(e.to_string()))?;
    let report = {
        let mut watch = Watch { observer, model: &model, checkpoint: &ckpt_dir, run: &run_json };
        train::fit_from(&model, &c.train, &splits, checkpoint, &mut watch)?
    };
    // Per task, by name: final validation and test metrics and the last training loss.
    let by_task: serde_json::Map<String, serde_json::Value> = c
        .model
        .tasks
        .iter()
        .enumerate()
        .map(|(t, task)| {
            let v = serde_json::json!({
                "validation": report.validation.get(t),
                "test": report.test.as_ref().and_then(|x| x.get(t)),
                "train_loss": report.epochs.last().and_then(|e| e.train_loss.get(t)),
            });
            (task.name.clone(), v)
        })
        .collect();
    let metrics = serde_json::json!({
        "model": c.model.name,
        "task_order": c.model.tasks.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
        "tasks": by_task,
        "params": c.model.param_count(),
        "flops_per_sample": c.model.flops_per_sample(),
        "data": info.source,
        "bad_rows": info.skipped,
        "labels": info.labels,
        "label_correlation": info.label_correlation,
        "gate_alarms": report.gate_usage.iter().flat_map(|g| g.alarms()).collect::<Vec<_>>(),
        "gate_similarity": report.gate_usage.iter().flat_map(|g| g.similarity()).collect::<Vec<_>>(),
        "report": report,
    });
    // Pictures of the run go into the bundle: learning curves and the gate heatmap.
    let mut pictures = Vec::new();
    match crate::report::plots::RunCurves::from_metrics(&c.model.name, &metrics).and_then(|r| {
        let curves = crate::report::plots::curves_png(std::slice::from_ref(&r))?;
        Ok((curves, crate::report::plots::gates_png(&r)?))
    }) {
        Ok((curves, gates)) => {
            pictures.push(("curves.png".to_string(), curves));
            if let Some(g) = gates {
                pictures.push(("gates.png".to_string(), g));
            }
        }
        Err(e) => observer.on(&Event::Warning(format!("plots not drawn: {e}"))),
    }
    let metrics = serde_json::to_string_pretty(&metrics).map_err(|e| RunError::Other(e.to_string()))?;
    let provenance = Provenance {
        multigate: env!("CARGO_PKG_VERSION").to_string(),
        command: opts.command.clone(),
        started,
        finished: export::provenance::utc_now(),
        data_source: info.source.clone(),
        data_files: settings.data_files.clone(),
        rows: SplitRows {
            train: splits.train.rows,
            validation: splits.validation_data().rows(),
            test: splits.test_data().map_or(0, |t| t.rows()),
        },
        train_seed: c.train.seed,
        epochs: c.train.epochs,
        epochs_trained: report.epochs.len(),
        best_epoch: Some(report.best_epoch),
        resumed_after,
        device: format!("{:?}", opts.device),
        dense_ranges: match &splits.stream {
            Some(s) => s.dense_ranges(),
            None => data::ranges::dense_ranges(&c.model, &splits.train),
        },
    };
    let provenance = serde_json::to_string_pretty(&provenance).map_err(|e| RunError::Other(e.to_string()))?;
    let contents = BundleContents {
        spec_toml: &spec.to_toml(),
        metrics_json: &metrics,
        provenance_json: &provenance,
        extra: &pictures,
    };
    export::write_bundle(&out, &model, contents)?;
    export::crash_point("committed");
    // The run finished and its bundle is in place: the checkpoint has served.
    export::remove_folder(&ckpt_dir)?;
    observer.on(&Event::Finished { report: &report, out: &out });
    Ok(RunResult { compiled: c, report, out })
}

/// The data files a run reads (folders and globs expanded, a date window's parts):
/// `--data`, or the spec's training, validation and test files; none for the
/// synthetic generator.
fn data_paths(data: &crate::ir::DataConfig, train_override: Option<&Path>) -> Result<Vec<PathBuf>, data::DataError> {
    let Some((train, window, _)) = data::source::training_files(data, train_override)? else { return Ok(Vec::new()) };
    let mut out: Vec<PathBuf> = train.into_iter().chain(window).map(|p| p.path).collect();
    if let (crate::ir::DataSource::Csv(c), None) = (&data.source, train_override) {
        for p in c.validation.iter().chain(c.test.iter()) {
            out.extend(data::source::expand(p)?.into_iter().map(|part| part.path));
        }
    }
    Ok(out)
}

/// Fits the statistics the spec leaves open and pins them into the spec, which
/// is lowered again; returns the spec (for the bundle) and the compiled result.
fn fit_open(
    src: &SourceFile,
    compiled: Compiled,
    opts: &TrainOptions,
    locate: &dyn Fn(&Need) -> String,
    observer: &mut dyn Observer,
) -> Result<(crate::spec::Spec, Compiled), RunError> {
    let fitted = data::fit::fit(&compiled.model, &compiled.data, opts.data.as_deref(), locate)?;
    if let (Some(s), false) = (compiled.data.stream, fitted.is_empty()) {
        observer
            .on(&Event::Warning(data::fit::STREAM_FIT_NOTE.replace("`shuffle_buffer`", &s.shuffle_buffer.to_string())));
    }
    pin_fitted(src, compiled, fitted, observer)
}

/// Pins fitted statistics into the spec of `src` and lowers it again; returns the
/// spec (for a bundle) and the compiled result, whose data and training settings stay
/// the caller's.
pub fn pin_fitted(
    src: &SourceFile,
    compiled: Compiled,
    fitted: Fits,
    observer: &mut dyn Observer,
) -> Result<(crate::spec::Spec, Compiled), RunError> {
    let mut spec = crate::spec::parse(src).map_err(|e| RunError::Refit(format!("{} error(s) in the spec", e.len())))?;
    if fitted.is_empty() {
        return Ok((spec, compiled));
    }
    for FittedLabel { task, classes, mean_std } in fitted.labels {
        let of = format!("the labels of task {}", compiled.model.tasks[task].name);
        if let Some(classes) = classes {
            observer.on(&Event::Fitted { of: &of, what: format!("classes {}", classes.join(", ")) });
            spec.pin_classes(task, classes);
        }
        if let Some((mean, std)) = mean_std {
            observer.on(&Event::Fitted { of: &of, what: format!("mean {mean:.6} std {std:.6}") });
            spec.pin_label_stats(task, mean, std);
        }
    }
    for v in fitted.vocabularies {
        let name = &compiled.model.features[v.feature].name;
        observer.on(&Event::Fitted {
            of: &format!("feature {name}"),
            what: format!(
                "vocabulary of {} value(s) (of {} seen; {} row(s) out of vocabulary)",
                v.values.len(),
                v.seen,
                v.oov_rows
            ),
        });
        spec.pin_vocabulary(name, v.values);
    }
    for b in fitted.buckets {
        let name = &compiled.model.features[b.feature].name;
        let shown: Vec<String> = b.boundaries.iter().take(6).map(|x| format!("{x}")).collect();
        observer.on(&Event::Fitted {
            of: &format!("feature {name}"),
            what: format!(
                "{} bucket(s) from {} value(s), {} row(s) missing; boundaries {}{}",
                b.boundaries.len() + 1,
                b.values,
                b.missing,
                shown.join(", "),
                if b.boundaries.len() > 6 { ", ..." } else { "" }
            ),
        });
        spec.pin_boundaries(name, b.boundaries);
    }
    for FittedFeature { feature, stats } in fitted.features {
        let name = &compiled.model.features[feature].name;
        let of = format!("feature {name}");
        match stats {
            DenseStats::MeanStd { mean, std } => {
                observer.on(&Event::Fitted { of: &of, what: format!("mean {mean:.6} std {std:.6}") });
                spec.pin_feature_stats(name, mean, std);
            }
            DenseStats::Range { min, max } => {
                observer.on(&Event::Fitted { of: &of, what: format!("min {min} max {max}") });
                spec.pin_feature_range(name, min, max);
            }
        }
    }
    let refit = lower::lower(&spec, src)
        .map_err(|es| RunError::Refit(es.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")))?;
    // Only the model changes; the caller's data and training settings (which it may have
    // overridden) stay.
    Ok((spec, Compiled { model: refit.model, ..compiled }))
}

/// Forwards the training loop's reports and saves a checkpoint after every epoch.
struct Watch<'a> {
    observer: &'a mut dyn Observer,
    model: &'a CandleModel,
    checkpoint: &'a Path,
    /// `RunSettings` as JSON, stored with every checkpoint.
    run: &'a str,
}

impl TrainObserver for Watch<'_> {
    fn step(&mut self, epoch: usize, step: u64, losses: &[f32]) {
        self.observer.on(&Event::Step { epoch, step, losses });
    }
    fn streamed(&mut self, skipped: &data::Skipped, read: u64, warn: bool) {
        self.observer.on(&Event::StreamSkipped { skipped, read, warn });
    }
    fn epoch(&mut self, end: &EpochEnd) -> Result<(), String> {
        self.observer.on(&Event::Epoch(end.report));
        let mut ck = end.checkpoint().map_err(|e| e.to_string())?;
        ck.run = self.run.to_string();
        export::write_checkpoint(self.checkpoint, self.model, &ck).map_err(|e| e.to_string())
    }
}

/// Who asks for a column and where, as "feature `x` at file:line:col": the feature's
/// `column` (or its name, when it reads the column named after it) or the task's `label`.
pub fn spec_locator(src: &SourceFile) -> impl Fn(&Need) -> String + '_ {
    let spec = crate::spec::parse(src).ok();
    move |need: &Need| {
        let span = spec.as_ref().and_then(|s| need_span(s, need));
        match (span, &need.owner) {
            (Some(span), _) => format!("{} at {}", need.reader, src.locate(&span)),
            (None, NeedOwner::Caller) => need.reader.clone(),
            (None, _) => format!("{} in {}", need.reader, src.name),
        }
    }
}

/// Where a spec asks for a column: the feature's `column` (or its name), the task's
/// `label`.
pub fn need_span(spec: &crate::spec::Spec, need: &Need) -> Option<std::ops::Range<usize>> {
    match &need.owner {
        NeedOwner::Feature(name) => spec
            .feature_list()
            .into_iter()
            .find(|f| f.name.get_ref() == name)
            .map(|f| f.column.as_ref().map_or_else(|| f.name.span(), |c| c.span())),
        NeedOwner::Task(name) => {
            spec.tasks.iter().find(|t| t.name.get_ref() == name).and_then(|t| t.label.as_ref()).map(|l| l.span())
        }
        NeedOwner::Caller => None,
    }
}

/// A bundle loaded once for scoring.
pub struct Predictor {
    bundle: export::Bundle,
    /// The training rows' dense ranges, from the bundle's provenance.
    ranges: Vec<data::ranges::DenseRange>,
    /// Every column the model reads, worked out once (a server asks per request).
    needs: Vec<Need>,
    /// The feature columns among them, each once, in order.
    inputs: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error(transparent)]
    Model(#[from] candle_core::Error),
    #[error("{0}")]
    Input(String),
}

impl Predictor {
    /// Loads and verifies a bundle.
    pub fn load(dir: &Path, device: Device) -> Result<Predictor, ExportError> {
        let dev = candle_device(device)?;
        let bundle = export::read_bundle(dir, &dev)?;
        let ranges = serde_json::from_str::<Provenance>(&bundle.provenance).map(|p| p.dense_ranges).unwrap_or_default();
        let needs = data::needs(&bundle.compiled.model);
        let mut inputs: Vec<String> = Vec::new();
        for n in needs.iter().filter(|n| !n.is_label) {
            if !inputs.contains(&n.column) {
                inputs.push(n.column.clone());
            }
        }
        Ok(Predictor { bundle, ranges, needs, inputs })
    }

    /// The bundle's `provenance.json` (what was trained, from what, when).
    pub fn provenance(&self) -> &str {
        &self.bundle.provenance
    }

    pub fn compiled(&self) -> &Compiled {
        &self.bundle.compiled
    }

    /// The loaded model (for evaluation helpers).
    pub fn model(&self) -> &CandleModel {
        &self.bundle.model
    }

    /// The bundle's spec, for locating columns in messages.
    pub fn source(&self) -> &SourceFile {
        &self.bundle.source
    }

    /// Every column the model reads (features and labels).
    pub fn needs(&self) -> &[Need] {
        &self.needs
    }

    /// The feature columns a request must carry, each once, in order.
    pub fn input_columns(&self) -> &[String] {
        &self.inputs
    }

    /// The separator of a bag's column (its values, or its weights), for callers that
    /// hold a cell as a list.
    pub fn separator(&self, column: &str) -> Option<String> {
        self.needs.iter().find(|n| n.column == column).and_then(|n| n.separator.clone())
    }

    /// Scores the rows of a frame of raw values; with `gates`, keeps every row's gate
    /// weights.
    pub fn predict_frame(&self, frame: &Frame, gates: bool) -> Result<Predictions, PredictError> {
        let ds = self.encode(frame)?;
        self.predict_dataset(&ds, gates)
    }

    /// Hashes, looks up and transforms a frame of raw values as in training.
    pub fn encode(&self, frame: &Frame) -> Result<data::Dataset, PredictError> {
        Ok(data::encode(&self.bundle.compiled.model, frame, false)?)
    }

    /// Scores encoded rows; with `gates`, keeps every row's gate weights.
    pub fn predict_dataset(&self, ds: &data::Dataset, gates: bool) -> Result<Predictions, PredictError> {
        if !gates {
            let values = train::predict_values(&self.bundle.model, ds, 4096)?;
            return Ok(Predictions { values, gate_columns: Vec::new(), usage: Vec::new() });
        }
        Ok(train::predict_rows(&self.bundle.model, ds, 4096, gates)?)
    }

    /// One warning per dense column of `ds` with values far outside what training saw.
    pub fn far_outside(&self, ds: &data::Dataset) -> Vec<String> {
        data::ranges::far_outside(&self.bundle.compiled.model, &self.ranges, ds)
    }

    /// Scores rows given as raw text per column (`name -> one value per row`), as a
    /// server receives them: hashed, looked up and transformed exactly as in training.
    /// An empty string is a missing value.
    pub fn predict_columns(&self, columns: &[(String, Vec<String>)]) -> Result<Predictions, PredictError> {
        let frame = self.frame(columns)?;
        self.predict_frame(&frame, false)
    }

    /// A frame of the model's feature columns from raw text per column (`name -> one
    /// value per row`; an empty string is a missing value). Label columns are not read.
    pub fn frame(&self, columns: &[(String, Vec<String>)]) -> Result<Frame, PredictError> {
        frame_from_text(&self.needs, columns)
    }
}

/// One task's metrics on labelled rows, as `evaluate` reports them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TaskEvaluation {
    pub rows: usize,
    pub metrics: crate::train::metrics::TaskMetrics,
    /// Binary tasks: mean prediction against positive rate, and the calibration error.
    pub calibration: Option<crate::train::metrics::Calibration>,
    /// Binary tasks with a group column: group AUC and the groups that counted.
    pub gauc: Option<f64>,
    pub gauc_groups: Option<usize>,
}

/// Metrics of a bundle on labelled rows, keyed by task name.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Evaluation {
    pub rows: usize,
    pub group: Option<String>,
    pub tasks: std::collections::BTreeMap<String, TaskEvaluation>,
    /// Task order, for printing.
    #[serde(skip)]
    pub order: Vec<String>,
}

impl Predictor {
    /// [`Predictor::encode`] with the label columns too (a missing or bad label is an
    /// error), for evaluation.
    pub fn encode_labelled(&self, frame: &Frame) -> Result<data::Dataset, PredictError> {
        Ok(data::encode(&self.bundle.compiled.model, frame, true)?)
    }

    /// Evaluates the bundle on a frame that has the label columns (and `group`, when
    /// given): per task its metrics, calibration and, by group, GAUC.
    pub fn evaluate(&self, frame: &Frame, group: Option<&str>) -> Result<Evaluation, PredictError> {
        let ds = self.encode_labelled(frame)?;
        let p = self.predict_dataset(&ds, false)?;
        self.evaluation(frame, &ds, &p, group)
    }

    /// The evaluation of predictions `p` already made for `ds` (encoded from `frame`
    /// with its labels), so that scoring and evaluating share one forward pass.
    pub fn evaluation(
        &self,
        frame: &Frame,
        ds: &data::Dataset,
        p: &Predictions,
        group: Option<&str>,
    ) -> Result<Evaluation, PredictError> {
        use crate::train::metrics;
        let model = &self.bundle.compiled.model;
        let groups: Option<Vec<u32>> = match group {
            None => None,
            Some(g) => match frame.column_as(g, false) {
                Some(data::Column::Cat { codes, .. }) => Some(codes.clone()),
                Some(data::Column::Num(v)) => Some(v.iter().map(|x| x.to_bits()).collect()),
                None => return Err(PredictError::Input(format!("the group column `{g}` is not in the data"))),
            },
        };
        let mut tasks = std::collections::BTreeMap::new();
        for (t, task) in model.tasks.iter().enumerate() {
            let labels = &ds.labels[t];
            let k = task.head.width();
            let keep: Vec<usize> = (0..labels.len()).filter(|&i| !labels[i].is_nan()).collect();
            let m = if labels.is_empty() {
                metrics::TaskMetrics::Unlabelled
            } else {
                metrics::score(&task.head, &p.values[t], labels)
            };
            let binary = matches!(task.head, crate::ir::Head::Binary) && !keep.is_empty();
            let (scores, ys): (Vec<f32>, Vec<f32>) = keep.iter().map(|&i| (p.values[t][i * k], labels[i])).unzip();
            let calibration = binary.then(|| metrics::calibration(&scores, &ys, 10));
            let g = match (&groups, binary) {
                (Some(gs), true) => {
                    let gk: Vec<u32> = keep.iter().map(|&i| gs[i]).collect();
                    metrics::gauc(&scores, &ys, &gk)
                }
                _ => None,
            };
            tasks.insert(
                task.name.clone(),
                TaskEvaluation {
                    rows: keep.len(),
                    metrics: m,
                    calibration,
                    gauc: g.map(|x| x.0),
                    gauc_groups: g.map(|x| x.1),
                },
            );
        }
        Ok(Evaluation {
            rows: ds.rows,
            group: group.map(str::to_string),
            tasks,
            order: model.tasks.iter().map(|t| t.name.clone()).collect(),
        })
    }
}

/// A frame of the feature columns `needs` asks for, from raw text.
fn frame_from_text(needs: &[Need], columns: &[(String, Vec<String>)]) -> Result<Frame, PredictError> {
    let rows = columns.first().map_or(0, |c| c.1.len());
    let mut frame = Frame {
        rows,
        origin: data::Origin { name: "request".into(), lines: Vec::new(), later: Vec::new(), first_row: 0 },
        ..Default::default()
    };
    for need in needs.iter().filter(|n| !n.is_label) {
        let Some((_, values)) = columns.iter().find(|(n, _)| *n == need.column) else {
            return Err(PredictError::Input(format!("column `{}` (read by {}) is missing", need.column, need.reader)));
        };
        if values.len() != rows {
            return Err(PredictError::Input(format!(
                "column `{}` has {} values, expected {rows}",
                need.column,
                values.len()
            )));
        }
        let column = match need.kind {
            data::ColumnKind::Num => data::Column::Num(
                values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match v.trim() {
                        "" => Ok(f32::NAN),
                        t => data::csv_source::parse_number(t).map_err(|problem| {
                            PredictError::Input(format!("column `{}` row {}: {problem}", need.column, i + 1))
                        }),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            data::ColumnKind::Cat => {
                let mut column = data::frame::Interner::default();
                values.iter().for_each(|v| column.push(v));
                column.finish()
            }
        };
        frame.names.push(need.column.clone());
        frame.columns.push(column);
    }
    Ok(frame)
}
