//! Lowering of the run settings: `[data]` -> [`DataConfig`] (paths resolved against the
//! spec's folder, the synthetic generator checked against the model) and `[train]` ->
//! [`TrainConfig`] (ranges, the optimizer, the selection criterion).

use std::path::Path;

use super::*;

const SOURCES: &[&str] = &["synthetic", "csv"];
const GENERATORS: &[&str] = &["mmoe", "categorical", "funnel"];
const BAD_ROW_POLICIES: &[&str] = &["fail", "skip", "warn"];
const OPTIMIZERS: &[&str] = &["adam", "lazy_adam"];
/// Rows a streamed dataset holds for shuffling unless `shuffle_buffer` says.
pub const DEFAULT_SHUFFLE_BUFFER: usize = 100_000;

impl Lower {
    fn fraction(&mut self, what: &'static str, v: &Sp<f64>) -> f64 {
        let x = *v.get_ref();
        self.range(what, (0.0..1.0).contains(&x), x, "in [0, 1)", v.span());
        x
    }

    pub(super) fn lower_data(&mut self, spec: &Spec, base: &Path, model: &Model) -> DataConfig {
        let d = &spec.data;
        let validation_fraction = self.fraction("validation_fraction", &d.validation_fraction);
        let test_fraction = self.fraction("test_fraction", &d.test_fraction);
        if validation_fraction + test_fraction >= 1.0 {
            self.range(
                "validation_fraction + test_fraction",
                false,
                validation_fraction + test_fraction,
                "below 1",
                d.test_fraction.span(),
            );
        }
        let mut bad_rows = crate::ir::BadRows::default();
        if let Some(p) = &d.bad_rows {
            bad_rows.policy = match self.word("bad_rows policy", p, BAD_ROW_POLICIES) {
                Some("skip") => crate::ir::BadRowPolicy::Skip,
                Some("warn") => crate::ir::BadRowPolicy::Warn,
                _ => crate::ir::BadRowPolicy::Fail,
            };
        }
        if let Some(n) = &d.max_bad_rows {
            bad_rows.max_rows = Some(*n.get_ref());
        }
        if let Some(f) = &d.max_bad_fraction {
            let x = *f.get_ref();
            self.range("max_bad_fraction", (0.0..=1.0).contains(&x), x, "between 0 and 1", f.span());
            bad_rows.max_fraction = x;
        }
        let source = match self.word("data source", &d.source, SOURCES) {
            Some("csv") => {
                let delim = d.delimiter.get_ref();
                let delimiter = match delim.as_bytes() {
                    [b] => *b,
                    _ => {
                        self.range(
                            "the delimiter",
                            false,
                            format!("{delim:?}"),
                            "one ASCII character",
                            d.delimiter.span(),
                        );
                        b','
                    }
                };
                if !*d.header.get_ref() && d.columns.is_empty() {
                    self.errors.push(LowerError::Missing {
                        what: "`columns` (the file has no header)",
                        span: d.source.span(),
                        help: Some("list the column names in file order, or set header = true".into()),
                    });
                }
                let mut seen = HashMap::new();
                for c in &d.columns {
                    self.name_check("column", c, &mut seen);
                }
                let path = |p: &Sp<String>| base.join(p.get_ref());
                let window = match (&d.partition_date, &d.cur_date) {
                    (Some(key), Some(cur)) => {
                        let ok = crate::data::source::parse_date(cur.get_ref()).is_some();
                        self.range("cur_date", ok, cur.get_ref(), "a date such as \"2026-11-28\"", cur.span());
                        let days = d.days.as_ref().map_or(7, |n| self.count("days", n, 3660));
                        Some(crate::ir::DateWindow {
                            key: key.get_ref().clone(),
                            cur: cur.get_ref().clone(),
                            days: days as u32,
                        })
                    }
                    (None, None) => {
                        if let Some(n) = &d.days {
                            self.errors.push(LowerError::Missing {
                                what: "`partition_date` and `cur_date`",
                                span: n.span(),
                                help: Some("`days` counts date partitions back from `cur_date`".into()),
                            });
                        }
                        None
                    }
                    (Some(s), None) | (None, Some(s)) => {
                        self.errors.push(LowerError::Missing {
                            what: "both `partition_date` and `cur_date`",
                            span: s.span(),
                            help: Some("a date window needs the partition key and the last training day".into()),
                        });
                        None
                    }
                };
                DataSource::Csv(CsvConfig {
                    train: d.train.iter().map(path).collect(),
                    validation: d.validation.as_ref().map(path),
                    test: d.test.as_ref().map(path),
                    window,
                    format: CsvFormat {
                        delimiter,
                        header: *d.header.get_ref(),
                        columns: d.columns.iter().map(|c| c.get_ref().clone()).collect(),
                        missing: d.missing.as_ref().map(|m| m.get_ref().clone()),
                        skip_bad_rows: bad_rows.skips(),
                    },
                })
            }
            _ => DataSource::Synthetic(self.lower_synthetic(&d.synthetic, model)),
        };
        let stream = self.lower_stream(d, &source, test_fraction);
        DataConfig { source, validation_fraction, test_fraction, bad_rows, stream }
    }

    /// `stream = true`: training files read in chunks while training runs. Validation
    /// comes from its own file or the date window (a held-out share of a stream would
    /// have to be kept in memory), and there is no held-out test share.
    fn lower_stream(&mut self, d: &spec::DataSection, source: &DataSource, test_fraction: f64) -> Option<StreamConfig> {
        let on = d.stream.as_ref().filter(|s| *s.get_ref());
        let Some(on) = on else {
            if let Some(b) = &d.shuffle_buffer {
                self.errors.push(LowerError::NotAllowed {
                    key: "shuffle_buffer",
                    context: "data that is not streamed",
                    span: b.span(),
                    help: Some("set `stream = true` to stream the training files".into()),
                });
            }
            return None;
        };
        match source {
            DataSource::Csv(c) => {
                if c.validation.is_none() && c.window.is_none() {
                    self.errors.push(LowerError::Missing {
                        what: "a `validation` file (or a date window) for streamed training data",
                        span: on.span(),
                        help: Some(
                            "a held-out share of a stream would have to be held in memory; name a validation file"
                                .into(),
                        ),
                    });
                }
                if test_fraction > 0.0 {
                    self.range(
                        "test_fraction",
                        false,
                        test_fraction,
                        "0 with streamed training data (name a `test` file)",
                        d.test_fraction.span(),
                    );
                }
            }
            DataSource::Synthetic(_) => {
                self.errors.push(LowerError::NotAllowed {
                    key: "stream",
                    context: "generated data",
                    span: on.span(),
                    help: Some("streaming reads training files (source = \"csv\")".into()),
                });
            }
        }
        let shuffle_buffer = d.shuffle_buffer.as_ref().map_or(DEFAULT_SHUFFLE_BUFFER, |b| {
            self.count("shuffle_buffer", b, MAX_SYNTHETIC_ROWS) // any count that fits in memory
        });
        Some(StreamConfig { shuffle_buffer, chunk_rows: STREAM_CHUNK_ROWS.min(shuffle_buffer.max(1)) })
    }

    fn lower_synthetic(&mut self, s: &spec::SyntheticSpec, model: &Model) -> SyntheticConfig {
        let rows = self.count("rows", &s.rows, MAX_SYNTHETIC_ROWS);
        // Without an explicit generator, the MMoE one serves specs it fits (dense inputs
        // only, two regression tasks) and the categorical one serves the rest.
        let written = s.kind.span() != (0..0);
        let fits_mmoe = model.features.iter().all(|f| matches!(f.kind, FeatureKind::Dense { .. }))
            && model.tasks.len() == 2
            && model.tasks.iter().all(|t| matches!(t.head, Head::Regression { .. }));
        let chosen = if written {
            self.word("synthetic generator", &s.kind, GENERATORS)
        } else if fits_mmoe {
            Some("mmoe")
        } else {
            Some("categorical")
        };
        let kind = match chosen {
            Some("funnel") => {
                for t in &model.tasks {
                    let Some(l) = &t.label else { continue };
                    for c in std::iter::once(&l.column).chain(&l.only_where) {
                        if !crate::data::synthetic::FUNNEL_COLUMNS.contains(&c.as_str()) {
                            self.errors.push(LowerError::Synthetic {
                                generator: "funnel",
                                reason: format!("it makes the label columns click, conversion and would_convert, and task `{}` reads `{c}`", t.name),
                                span: s.kind.span(),
                                help: Some("read click, conversion (clicked and converted) or would_convert (every impression's latent conversion)".into()),
                            });
                        }
                    }
                }
                SyntheticKind::Funnel { cardinality: self.count("cardinality", &s.cardinality, MAX_ROWS) }
            }
            Some("categorical") => {
                if let Some(f) =
                    model.features.iter().find(|f| matches!(f.kind, FeatureKind::Dense { width, .. } if width > 64))
                {
                    self.errors.push(LowerError::Synthetic {
                        generator: "categorical",
                        reason: format!("dense feature `{}` is wider than 64", f.name),
                        span: s.kind.span(),
                        help: None,
                    });
                }
                SyntheticKind::Categorical { cardinality: self.count("cardinality", &s.cardinality, MAX_ROWS) }
            }
            _ => {
                let dim = self.count("dim", &s.dim, MAX_UNITS);
                let correlation = *s.correlation.get_ref();
                self.range(
                    "correlation",
                    (-1.0..=1.0).contains(&correlation),
                    correlation,
                    "in [-1, 1]",
                    s.correlation.span(),
                );
                let scale = *s.scale.get_ref();
                self.range("scale", scale.is_finite() && scale > 0.0, scale, "a positive number", s.scale.span());
                let sin_sd = *s.sin_sd.get_ref();
                self.range("sin_sd", sin_sd.is_finite() && sin_sd >= 0.0, sin_sd, "a number >= 0", s.sin_sd.span());
                let noise_sd = *s.noise_sd.get_ref();
                self.range(
                    "noise_sd",
                    noise_sd.is_finite() && noise_sd >= 0.0,
                    noise_sd,
                    "a number >= 0",
                    s.noise_sd.span(),
                );
                let sin_terms = *s.sin_terms.get_ref();
                self.range("sin_terms", sin_terms <= 1000, sin_terms, "at most 1000", s.sin_terms.span());
                let dense: usize = model
                    .features
                    .iter()
                    .map(|f| if let FeatureKind::Dense { width, .. } = f.kind { width } else { 0 })
                    .sum();
                let categorical = model.features.iter().any(|f| matches!(f.kind, FeatureKind::Categorical { .. }));
                if dense != dim || categorical {
                    self.errors.push(LowerError::Synthetic {
                        generator: "mmoe",
                        reason: format!(
                            "it makes {dim} dense inputs, and the spec declares {dense} dense values{}",
                            if categorical { " and categorical features" } else { "" }
                        ),
                        span: s.kind.span(),
                        help: Some(format!(
                            "declare one dense feature with width = {dim}, or use kind = \"categorical\""
                        )),
                    });
                }
                if model.tasks.len() != 2 || model.tasks.iter().any(|t| !matches!(t.head, Head::Regression { .. })) {
                    self.errors.push(LowerError::Synthetic {
                        generator: "mmoe",
                        reason: "it makes exactly two regression labels".into(),
                        span: s.kind.span(),
                        help: Some("declare two tasks with kind = \"regression\"".into()),
                    });
                }
                SyntheticKind::Mmoe {
                    dim,
                    correlation,
                    scale,
                    sin_terms: sin_terms.min(1000) as usize,
                    sin_sd,
                    noise_sd,
                }
            }
        };
        // The generators hold every row in memory: refuse what cannot fit.
        let width = model
            .features
            .iter()
            .map(|f| if let FeatureKind::Dense { width, .. } = f.kind { width } else { 1 })
            .sum::<usize>()
            + model.tasks.len();
        let bytes = rows as u128 * width as u128 * 4;
        if bytes > MAX_SYNTHETIC_BYTES as u128 {
            self.range(
                "rows",
                false,
                format!("{rows} ({:.1} GiB of data)", bytes as f64 / (1u64 << 30) as f64),
                format!("at most {} GiB of generated data", MAX_SYNTHETIC_BYTES >> 30),
                s.rows.span(),
            );
        }
        SyntheticConfig { kind, rows, seed: *s.seed.get_ref() }
    }

    /// `"loss"` or `"TASK.METRIC"`, the task resolved by name.
    fn lower_select(&mut self, v: &Option<Sp<String>>, model: &Model) -> Selection {
        let Some(v) = v else { return Selection::Loss };
        let text = v.get_ref();
        if text == "loss" {
            return Selection::Loss;
        }
        let Some((task, metric)) = text.split_once('.') else {
            self.range("select", false, format!("{text:?}"), "\"loss\" or \"TASK.METRIC\", e.g. \"ctr.auc\"", v.span());
            return Selection::Loss;
        };
        let Some(t) = model.tasks.iter().position(|x| x.name == task) else {
            self.errors.push(LowerError::UnknownName {
                what: "task",
                name: task.to_string(),
                span: v.span(),
                help: did_you_mean(task, model.tasks.iter().map(|x| x.name.as_str())),
            });
            return Selection::Loss;
        };
        let allowed = model.tasks[t].head.metric_names();
        match Metric::parse(metric).filter(|m| allowed.contains(&m.as_str())) {
            Some(metric) => Selection::Metric { task: t, metric },
            None => {
                self.errors.push(LowerError::UnknownWord {
                    what: "metric for this task",
                    found: metric.to_string(),
                    span: v.span(),
                    expected: allowed,
                    help: did_you_mean(metric, allowed.iter().copied()),
                });
                Selection::Loss
            }
        }
    }

    pub(super) fn lower_train(&mut self, t: &spec::TrainSection, model: &Model) -> TrainConfig {
        let lazy_embeddings = self.word("optimizer", &t.optimizer, OPTIMIZERS) == Some("lazy_adam");
        let pos = |x: f64| x.is_finite() && x > 0.0;
        self.range("lr", pos(*t.lr.get_ref()), t.lr.get_ref(), "a positive number", t.lr.span());
        for (what, v) in [("beta1", &t.beta1), ("beta2", &t.beta2)] {
            self.range(what, (0.0..1.0).contains(v.get_ref()), v.get_ref(), "in [0, 1)", v.span());
        }
        self.range("eps", pos(*t.eps.get_ref()), t.eps.get_ref(), "a positive number", t.eps.span());
        let wd = *t.weight_decay.get_ref();
        self.range("weight_decay", wd.is_finite() && wd >= 0.0, wd, "a number >= 0", t.weight_decay.span());
        let rate = *t.lr_decay_rate.get_ref();
        self.range("lr_decay_rate", rate > 0.0 && rate <= 1.0, rate, "in (0, 1]", t.lr_decay_rate.span());
        TrainConfig {
            lazy_embeddings,
            lr: *t.lr.get_ref(),
            beta1: *t.beta1.get_ref(),
            beta2: *t.beta2.get_ref(),
            eps: *t.eps.get_ref(),
            weight_decay: wd,
            lr_decay_rate: rate,
            lr_decay_epochs: self.count("lr_decay_epochs", &t.lr_decay_epochs, 1 << 20),
            batch_size: self.count("batch_size", &t.batch_size, 1 << 20),
            epochs: self.count("epochs", &t.epochs, 1 << 20),
            seed: *t.seed.get_ref(),
            select: self.lower_select(&t.select, model),
            patience: t.patience.as_ref().map(|p| self.count("patience", p, 1 << 20)),
        }
    }
}
