//! Lowering: [`Spec`] -> [`ir::Validated`], with every name resolved, every width
//! inferred and every value range-checked, before any tensor exists.
//!
//! All problems found are reported together ([`LowerError`]), each with its span;
//! suspicious but legal specs produce [`LowerWarning`]s.

mod error;
mod layers;
pub mod program;
mod settings;
mod tasks;

pub use crate::diag::did_you_mean;
pub use crate::ir::DEFAULT_SEPARATOR;
pub use error::{LowerError, LowerWarning};
pub use program::lower_program;

use std::collections::HashMap;

use crate::ir::*;
use crate::source::{SourceFile, Span};
use crate::spec::{self, Sp, Spec};

/// The output of lowering: the validated graph plus resolved settings.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub model: Validated,
    pub data: DataConfig,
    pub train: TrainConfig,
    pub warnings: Vec<LowerWarning>,
}

/// Lowers a spec. `src` is the file it came from (for relative data paths).
pub fn lower(spec: &Spec, src: &SourceFile) -> Result<Compiled, Vec<LowerError>> {
    let mut cx = Lower { errors: Vec::new(), warnings: Vec::new() };
    let model = cx.lower_model(spec);
    let data = cx.lower_data(spec, &src.base_dir(), &model);
    let train = cx.lower_train(&spec.train, &model);
    // Report in file order, whatever order the checks ran in; once each (the members
    // of a feature group share their settings, and so their mistakes).
    cx.errors.sort_by_key(|e| e.span().start);
    let mut unique: Vec<LowerError> = Vec::with_capacity(cx.errors.len());
    for e in std::mem::take(&mut cx.errors) {
        if !unique.contains(&e) {
            unique.push(e);
        }
    }
    cx.errors = unique;
    if cx.errors.is_empty() {
        Ok(Compiled { model: Validated::new_unchecked(model), data, train, warnings: cx.warnings })
    } else {
        Err(cx.errors)
    }
}

struct Lower {
    errors: Vec<LowerError>,
    warnings: Vec<LowerWarning>,
}

const FEATURE_TYPES: &[&str] = &["categorical", "dense"];
const TRANSFORMS: &[&str] = &["none", "log1p", "zscore", "minmax"];
const CROSS_OPS: &[&str] = &["product"];

/// Default expert count of a gated layer.
pub const DEFAULT_EXPERTS: usize = 8;
/// Default task-specific experts per task of a `cgc` layer.
pub const DEFAULT_TASK_EXPERTS: usize = 2;
/// Default embedding width.
pub const DEFAULT_EMBEDDING_DIM: usize = 8;

impl Lower {
    fn word<'a>(
        &mut self,
        what: &'static str,
        v: &'a Sp<String>,
        expected: &'static [&'static str],
    ) -> Option<&'a str> {
        if expected.contains(&v.get_ref().as_str()) {
            Some(v.get_ref().as_str())
        } else {
            self.errors.push(LowerError::UnknownWord {
                what,
                found: v.get_ref().clone(),
                span: v.span(),
                expected,
                help: did_you_mean(v.get_ref(), expected.iter().copied()),
            });
            None
        }
    }

    fn range(
        &mut self,
        what: &'static str,
        ok: bool,
        found: impl ToString,
        expected: impl Into<std::borrow::Cow<'static, str>>,
        span: Span,
    ) {
        if !ok {
            self.errors.push(LowerError::OutOfRange {
                what,
                found: found.to_string(),
                expected: expected.into(),
                span,
            });
        }
    }

    /// A count that must be >= 1 and fit comfortably in memory.
    fn count(&mut self, what: &'static str, v: &Sp<u64>, max: u64) -> usize {
        let x = *v.get_ref();
        if !(1..=max).contains(&x) {
            self.range(what, false, x, format!("between 1 and {max}"), v.span());
        }
        x.clamp(1, max) as usize
    }

    /// Reports each key that is set (its span is Some) as not allowed in `context`.
    fn not_allowed(&mut self, context: &'static str, help: Option<&str>, keys: &[(&'static str, Option<Span>)]) {
        for (key, span) in keys {
            if let Some(span) = span {
                let help = help.map(str::to_string);
                self.errors.push(LowerError::NotAllowed { key, context, span: span.clone(), help });
            }
        }
    }

    fn activation(&mut self, v: &Option<Sp<String>>) -> Activation {
        match v {
            None => Activation::Relu,
            Some(v) => {
                self.word("activation", v, Activation::NAMES).and_then(Activation::parse).unwrap_or(Activation::Relu)
            }
        }
    }

    fn dropout(&mut self, v: &Option<Sp<f64>>) -> f32 {
        let Some(v) = v else { return 0.0 };
        let x = *v.get_ref();
        self.range("dropout", (0.0..1.0).contains(&x), x, "in [0, 1)", v.span());
        x.clamp(0.0, 0.99) as f32
    }

    fn units(&mut self, what: &'static str, units: &[Sp<u64>]) -> Vec<usize> {
        units.iter().map(|u| self.count(what, u, MAX_UNITS)).collect()
    }

    fn name_check(&mut self, what: &'static str, v: &Sp<String>, seen: &mut HashMap<String, Span>) {
        let name = v.get_ref();
        if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '-') {
            self.errors.push(LowerError::OutOfRange {
                what: "a name",
                found: format!("{name:?}"),
                expected: "non-empty letters, digits, `_` or `-`".into(),
                span: v.span(),
            });
        }
        if let Some(first) = seen.get(name) {
            self.errors.push(LowerError::Duplicate {
                what,
                name: name.clone(),
                first: first.clone(),
                second: v.span(),
            });
        } else {
            seen.insert(name.clone(), v.span());
        }
    }

    fn lower_model(&mut self, spec: &Spec) -> Model {
        let name = spec.model.name.get_ref().clone();
        let mut seen = HashMap::new();
        let mut features = Vec::new();
        for f in &spec.features {
            if let (Some(_), Some(c)) = (&f.also, &f.column) {
                self.errors.push(LowerError::NotAllowed {
                    key: "column",
                    context: "a group of features (`also`)",
                    span: c.span(),
                    help: Some(
                        "each feature of a group reads the column of its own name; declare this one apart".into(),
                    ),
                });
            }
        }
        let listed = spec.feature_list();
        for f in &listed {
            self.name_check("feature", &f.name, &mut seen);
            features.push(self.lower_feature(f));
        }
        self.resolve_tables(&listed, &mut features);
        self.check_separators(spec, &listed);
        let mut crosses = Vec::new();
        for c in &spec.crosses {
            self.name_check("feature", &c.name, &mut seen);
            if let Some(c) = self.lower_cross(c, &features) {
                crosses.push(c);
            }
        }
        if spec.features.is_empty() {
            self.errors.push(LowerError::Missing {
                what: "at least one [[features]] entry",
                span: spec.model.name.span(),
                help: Some("declare inputs with [[features]] name = .., type = \"dense\" | \"categorical\"".into()),
            });
        }
        let input_width =
            features.iter().map(Feature::width).sum::<usize>() + crosses.iter().map(|c| c.dim).sum::<usize>();

        // Tasks first, so that gates can name them.
        let mut task_seen = HashMap::new();
        let mut tasks = Vec::new();
        for t in &spec.tasks {
            self.name_check("task", &t.name, &mut task_seen);
            tasks.push(t);
        }
        if spec.tasks.is_empty() {
            self.errors.push(LowerError::Missing {
                what: "at least one [[tasks]] entry",
                span: spec.model.name.span(),
                help: Some("declare a task with [[tasks]] name = .., kind = \"binary\", label = \"column\"".into()),
            });
        }
        let mut layer_seen = HashMap::new();
        let mut layers = Vec::new();
        let mut stream = Stream::Shared { width: input_width };
        for (i, l) in spec.layers.iter().enumerate() {
            let lname = match &l.name {
                Some(n) => {
                    self.name_check("layer", n, &mut layer_seen);
                    n.get_ref().clone()
                }
                None => format!("layer{i}"),
            };
            let next_is_cgc = spec.layers.get(i + 1).is_some_and(|n| n.kind.get_ref() == LayerKind::Cgc.as_str());
            let layer = self.lower_layer(l, lname, stream, &spec.tasks, next_is_cgc);
            stream = layer.output;
            layers.push(layer);
        }

        let last = layers.len().checked_sub(1);
        let tasks = tasks
            .iter()
            .map(|t| {
                let input = t.input.as_ref().and_then(|n| {
                    let found = layers.iter().position(|l| l.name == *n.get_ref());
                    if found.is_none() {
                        self.errors.push(LowerError::UnknownName {
                            what: "layer",
                            name: n.get_ref().clone(),
                            span: n.span(),
                            help: did_you_mean(n.get_ref(), layers.iter().map(|l| l.name.as_str())),
                        });
                    }
                    found
                });
                let width = input.map_or(stream.width(), |i: usize| layers[i].output.width());
                let mut task = self.lower_task(t, &spec.tasks, width);
                task.input = input.filter(|&i| Some(i) != last);
                task
            })
            .collect::<Vec<_>>();
        // Layers above every tower's input feed nothing.
        if let Some(last) = last {
            let towers: Vec<&Task> = tasks.iter().filter(|t| matches!(t.output, TaskOutput::Tower { .. })).collect();
            if !towers.is_empty() && towers.iter().all(|t| t.input.is_some()) {
                let top = towers.iter().filter_map(|t| t.input).max().unwrap_or(last);
                for (l, ls) in layers.iter().zip(&spec.layers).skip(top + 1) {
                    self.warnings.push(LowerWarning::UnusedLayer { layer: l.name.clone(), span: ls.kind.span() });
                }
            }
        }
        self.check_leaks(spec, &listed, &features);
        let balance = self.lower_balance(&spec.train, &layers);
        let model = Model { name, features, crosses, input_width, layers, tasks, balance };
        let params = model.param_count();
        if params > MAX_PARAMS {
            self.errors.push(LowerError::OutOfRange {
                what: "the parameter count",
                found: format!("{params} ({:.1} GiB of f32)", params as f64 * 4.0 / (1u64 << 30) as f64),
                expected: format!("at most {MAX_PARAMS}").into(),
                span: spec.model.name.span(),
            });
        }
        model
    }

    fn lower_feature(&mut self, f: &spec::FeatureSpec) -> Feature {
        let name = f.name.get_ref().clone();
        let column = f.column.as_ref().map_or_else(|| name.clone(), |c| c.get_ref().clone());
        // An unknown type is reported once; the feature is then read as whichever kind
        // its other keys suggest, so that no second error follows from the first.
        let looks_categorical = f.hash_buckets.is_some()
            || f.table.is_some()
            || f.vocabulary.is_some()
            || f.embedding_dim.is_some()
            || f.bucketize.is_some()
            || f.boundaries.is_some();
        let kind = self.word("feature type", &f.kind, FEATURE_TYPES).unwrap_or(if looks_categorical {
            "categorical"
        } else {
            "dense"
        });
        let ctx_cat = "a categorical feature";
        let ctx_dense = "a dense feature";
        let kind = if kind == "categorical" {
            let keys = [
                ("width", f.width.as_ref().map(|v| v.span())),
                ("transform", f.transform.as_ref().map(|v| v.span())),
                ("mean", f.mean.as_ref().map(|v| v.span())),
                ("std", f.std.as_ref().map(|v| v.span())),
                ("min", f.min.as_ref().map(|v| v.span())),
                ("max", f.max.as_ref().map(|v| v.span())),
                ("fill", f.fill.as_ref().map(|v| v.span())),
            ];
            self.not_allowed(ctx_cat, None, &keys);
            if f.hash_buckets.is_some() {
                let keys = [
                    ("min_count", f.min_count.as_ref().map(|v| v.span())),
                    ("max_size", f.max_size.as_ref().map(|v| v.span())),
                ];
                self.not_allowed("a hashed feature (they shape a fitted vocabulary)", None, &keys);
            }
            // The keys that choose a table's encoding, and its width.
            let encoding_keys = [
                ("hash_buckets", f.hash_buckets.as_ref().map(|v| v.span())),
                ("vocabulary", f.vocabulary.as_ref().map(|v| v.span())),
                ("min_count", f.min_count.as_ref().map(|v| v.span())),
                ("max_size", f.max_size.as_ref().map(|v| v.span())),
                ("bucketize", f.bucketize.as_ref().map(|v| v.span())),
                ("boundaries", f.boundaries.as_ref().map(|v| v.span())),
                ("embedding_dim", f.embedding_dim.as_ref().map(|v| v.span())),
            ];
            if f.table.is_some() {
                let context = "a feature reading another's table (they come from that feature)";
                self.not_allowed(context, None, &encoding_keys);
                // Encoding and width come from the table's feature (`resolve_tables`).
                let bag = self.bag(f, false);
                return Feature {
                    name,
                    column,
                    kind: FeatureKind::Categorical { encoding: Encoding::Hash { buckets: 1 }, dim: 1, bag },
                    shares: None,
                };
            }
            let bucketized = f.bucketize.is_some() || f.boundaries.is_some();
            if bucketized {
                // Hashing and vocabularies are the other encodings.
                self.not_allowed("a bucketized feature (bucketize or boundaries)", None, &encoding_keys[..4]);
            }
            let encoding = match (&f.hash_buckets, &f.vocabulary) {
                _ if bucketized => self.bucketize(f),
                (Some(b), None) => Encoding::Hash { buckets: self.count("hash_buckets", b, MAX_ROWS) },
                (None, Some(v)) => {
                    let values = v.get_ref().clone();
                    self.range(
                        "the vocabulary size",
                        !values.is_empty() && values.len() as u64 <= MAX_ROWS,
                        values.len(),
                        "at least 1 value",
                        v.span(),
                    );
                    let mut uniq = std::collections::HashSet::new();
                    if let Some(dup) = values.iter().find(|x| !uniq.insert(*x)) {
                        self.errors.push(LowerError::OutOfRange {
                            what: "the vocabulary",
                            found: format!("repeating {dup:?}"),
                            expected: "distinct values".into(),
                            span: v.span(),
                        });
                    }
                    Encoding::Vocab { values }
                }
                (Some(_), Some(v)) => {
                    self.errors.push(LowerError::NotAllowed {
                        key: "vocabulary",
                        context: "a feature that already has hash_buckets",
                        span: v.span(),
                        help: Some("choose one of hash_buckets and vocabulary".into()),
                    });
                    Encoding::Hash { buckets: 1 }
                }
                // Neither: the vocabulary is fitted on the training rows.
                (None, None) => Encoding::FitVocab {
                    min_count: f.min_count.as_ref().map_or(1, |m| self.count("min_count", m, u64::MAX) as u64),
                    max_size: f.max_size.as_ref().map(|m| self.count("max_size", m, MAX_ROWS)),
                },
            };
            let dim = match &f.embedding_dim {
                Some(d) => self.count("embedding_dim", d, MAX_UNITS),
                None => DEFAULT_EMBEDDING_DIM,
            };
            if encoding.rows() > 0 && dim > encoding.rows() {
                let span = f.embedding_dim.as_ref().map_or_else(|| f.name.span(), |d| d.span());
                self.warnings.push(LowerWarning::WideEmbedding {
                    feature: name.clone(),
                    rows: encoding.rows(),
                    dim,
                    span,
                });
            }
            let bag = self.bag(f, bucketized);
            FeatureKind::Categorical { encoding, dim, bag }
        } else {
            let keys = [
                ("hash_buckets", f.hash_buckets.as_ref().map(|v| v.span())),
                ("vocabulary", f.vocabulary.as_ref().map(|v| v.span())),
                ("embedding_dim", f.embedding_dim.as_ref().map(|v| v.span())),
                ("min_count", f.min_count.as_ref().map(|v| v.span())),
                ("max_size", f.max_size.as_ref().map(|v| v.span())),
                ("bucketize", f.bucketize.as_ref().map(|v| v.span())),
                ("boundaries", f.boundaries.as_ref().map(|v| v.span())),
                ("table", f.table.as_ref().map(|v| v.span())),
                ("max_len", f.max_len.as_ref().map(|v| v.span())),
                ("separator", f.separator.as_ref().map(|v| v.span())),
                ("pooling", f.pooling.as_ref().map(|v| v.span())),
                ("weights", f.weights.as_ref().map(|v| v.span())),
            ];
            self.not_allowed(ctx_dense, None, &keys);
            let width = f.width.as_ref().map_or(1, |w| self.count("width", w, MAX_UNITS));
            let transform = match f.transform.as_ref().map(|t| (t, self.word("transform", t, TRANSFORMS))) {
                None | Some((_, None)) | Some((_, Some("none"))) => Transform::None,
                Some((_, Some("log1p"))) => Transform::Log1p,
                // A pair given together, or left out to fit on the training rows (NaN);
                // half a pair is an error and the transform stays, so that its keys are not
                // also reported as out of place.
                Some((t, Some("minmax"))) => match self.stat_pair(t, ("min", &f.min), ("max", &f.max)) {
                    Some((min, max)) => {
                        self.range("min", min.get_ref().is_finite(), min.get_ref(), "a finite number", min.span());
                        let (lo, hi) = (*min.get_ref(), *max.get_ref());
                        let ok = hi.is_finite() && hi > lo;
                        self.range("max", ok, hi, format!("a finite number above min ({lo})"), max.span());
                        Transform::MinMax { min: lo as f32, max: hi as f32 }
                    }
                    None => Transform::MinMax { min: f32::NAN, max: f32::NAN },
                },
                Some((t, Some(_))) => match self.stat_pair(t, ("mean", &f.mean), ("std", &f.std)) {
                    Some((m, s)) => {
                        let (mean, std) = (*m.get_ref(), *s.get_ref());
                        self.range("mean", mean.is_finite(), mean, "a finite number", m.span());
                        self.range("std", std.is_finite() && std > 0.0, std, "a positive number", s.span());
                        Transform::ZScore { mean: mean as f32, std: std as f32 }
                    }
                    None => Transform::ZScore { mean: f32::NAN, std: f32::NAN },
                },
            };
            if !matches!(transform, Transform::MinMax { .. }) {
                let keys = [("min", f.min.as_ref().map(|v| v.span())), ("max", f.max.as_ref().map(|v| v.span()))];
                self.not_allowed("a feature without transform = \"minmax\"", None, &keys);
            }
            if !matches!(transform, Transform::ZScore { .. }) {
                let keys = [("mean", f.mean.as_ref().map(|v| v.span())), ("std", f.std.as_ref().map(|v| v.span()))];
                self.not_allowed("a feature without transform = \"zscore\"", None, &keys);
            }
            let fill = f.fill.as_ref().map_or(0.0, |v| {
                self.range("fill", v.get_ref().is_finite(), v.get_ref(), "a finite number", v.span());
                *v.get_ref()
            }) as f32;
            FeatureKind::Dense { width, transform, fill }
        };
        Feature { name, column, kind, shares: None }
    }

    /// A transform's two statistics (`mean` and `std`, `min` and `max`): both given, or
    /// neither (None: fitted on the training rows); half a pair is an error (None too).
    fn stat_pair(
        &mut self,
        transform: &Sp<String>,
        (ka, a): (&'static str, &Option<Sp<f64>>),
        (kb, b): (&'static str, &Option<Sp<f64>>),
    ) -> Option<(Sp<f64>, Sp<f64>)> {
        let (what, span) = match (a, b) {
            (Some(a), Some(b)) => return Some((a.clone(), b.clone())),
            (None, None) => return None,
            (Some(a), None) => (kb, a.span()),
            (None, Some(b)) => (ka, b.span()),
        };
        let name = transform.get_ref();
        self.errors.push(LowerError::Missing {
            what: match what {
                "mean" => "`mean`",
                "std" => "`std`",
                "min" => "`min`",
                _ => "`max`",
            },
            span,
            help: Some(format!(
                "{name} takes both `{ka}` and `{kb}`, or neither (then both are fitted on the training rows)"
            )),
        });
        None
    }

    /// Points each feature with `table = "x"` at feature x's table: its encoding and
    /// width become x's. x must be another categorical feature that owns its table.
    fn resolve_tables(&mut self, listed: &[spec::FeatureSpec], features: &mut [Feature]) {
        for (i, f) in listed.iter().enumerate() {
            let Some(t) = &f.table else { continue };
            let owner = features.iter().position(|g| g.name == *t.get_ref());
            let problem = match owner {
                None => {
                    self.errors.push(LowerError::UnknownName {
                        what: "feature",
                        name: t.get_ref().clone(),
                        span: t.span(),
                        help: did_you_mean(t.get_ref(), features.iter().map(|g| g.name.as_str())),
                    });
                    continue;
                }
                Some(o) if o == i => Some("another feature"),
                Some(o) if !matches!(features[o].kind, FeatureKind::Categorical { .. }) => {
                    Some("a categorical feature (this one is dense)")
                }
                Some(o) if listed[o].table.is_some() => Some("a feature with a table of its own (this one shares one)"),
                Some(_) => None,
            };
            let Some(o) = owner else { continue };
            if let Some(expected) = problem {
                self.range("table", false, format!("{:?}", t.get_ref()), expected, t.span());
                continue;
            }
            // The table's encoding and width; whether a row holds one value or a bag
            // stays this feature's own.
            if let (
                FeatureKind::Categorical { encoding, dim, .. },
                FeatureKind::Categorical { encoding: e, dim: d, .. },
            ) = (features[o].kind.clone(), &mut features[i].kind)
            {
                (*e, *d) = (encoding, dim);
            }
            features[i].shares = Some(FeatureId(o));
        }
    }

    /// A bag's separator must differ from the CSV delimiter, or the bag's values would
    /// read as columns.
    fn check_separators(&mut self, spec: &Spec, listed: &[spec::FeatureSpec]) {
        let delimiter = spec.data.delimiter.get_ref();
        for f in listed {
            // Only a categorical with a valid max_len is a bag (others have their error).
            let Some(n) = f.max_len.as_ref().filter(|n| *n.get_ref() > 0 && f.kind.get_ref() == "categorical") else {
                continue;
            };
            let (sep, span) = match &f.separator {
                Some(s) => (s.get_ref().as_str(), s.span()),
                None => (DEFAULT_SEPARATOR, n.span()),
            };
            if spec.data.source.get_ref() == "csv" && sep == delimiter {
                self.errors.push(LowerError::OutOfRange {
                    what: "separator",
                    found: format!("{sep:?}, the CSV delimiter"),
                    expected: "a separator other than the delimiter (set `separator`)".into(),
                    span,
                });
            }
        }
    }

    /// The bag of a categorical with `max_len` (several values per row); its other keys
    /// (`separator`, `pooling`, `weights`) need it.
    fn bag(&mut self, f: &spec::FeatureSpec, bucketized: bool) -> Option<Bag> {
        let keys = [
            ("separator", f.separator.as_ref().map(|v| v.span())),
            ("pooling", f.pooling.as_ref().map(|v| v.span())),
            ("weights", f.weights.as_ref().map(|v| v.span())),
        ];
        let Some(n) = &f.max_len else {
            let help = Some("set `max_len` to read several values per row");
            self.not_allowed("a feature with one value per row", help, &keys);
            return None;
        };
        let max_len = self.count("max_len", n, MAX_BAG);
        if bucketized {
            self.errors.push(LowerError::NotAllowed {
                key: "max_len",
                context: "a bucketized feature (it reads one number per row)",
                span: n.span(),
                help: None,
            });
        }
        let separator = match &f.separator {
            Some(s) => {
                let text = s.get_ref();
                let ok = !text.is_empty() && !text.contains(['\n', '\r', '"']);
                self.range(
                    "separator",
                    ok,
                    format!("{text:?}"),
                    "a non-empty string without quotes or line breaks",
                    s.span(),
                );
                text.clone()
            }
            None => DEFAULT_SEPARATOR.to_string(),
        };
        let pooling = match &f.pooling {
            Some(p) => self.word("pooling", p, Pooling::NAMES).and_then(Pooling::parse).unwrap_or(Pooling::Mean),
            None => Pooling::Mean,
        };
        if let (Pooling::Max, Some(w)) = (pooling, &f.weights) {
            self.errors.push(LowerError::NotAllowed {
                key: "weights",
                context: "max pooling",
                span: w.span(),
                help: Some("weights scale sum and mean pooling".into()),
            });
        }
        Some(Bag { max_len, separator, pooling, weights: f.weights.as_ref().map(|w| w.get_ref().clone()) })
    }

    /// The encoding of a feature with `bucketize` (boundaries to fit) or `boundaries`
    /// (pinned: finite and strictly increasing); not both.
    fn bucketize(&mut self, f: &spec::FeatureSpec) -> Encoding {
        match (&f.bucketize, &f.boundaries) {
            (Some(n), None) => {
                let buckets = self.count("bucketize", n, MAX_ROWS);
                self.range("bucketize", buckets >= 2, buckets, "at least 2 buckets", n.span());
                Encoding::FitBuckets { buckets: buckets.max(2) }
            }
            (_, Some(b)) => {
                if let Some(n) = &f.bucketize {
                    self.errors.push(LowerError::NotAllowed {
                        key: "bucketize",
                        context: "a feature that already has boundaries",
                        span: n.span(),
                        help: Some("give the bucket count to fit, or the boundaries, not both".into()),
                    });
                }
                let values = b.get_ref().clone();
                let ok = !values.is_empty()
                    && values.len() as u64 <= MAX_ROWS
                    && values.iter().all(|x| x.is_finite())
                    && values.windows(2).all(|w| w[0] < w[1]);
                self.range(
                    "boundaries",
                    ok,
                    format!("{values:?}"),
                    "at least one finite number, strictly increasing",
                    b.span(),
                );
                Encoding::Bucketize { boundaries: values }
            }
            (None, None) => Encoding::FitBuckets { buckets: 2 },
        }
    }

    fn lower_cross(&mut self, c: &spec::CrossSpec, features: &[Feature]) -> Option<Cross> {
        self.word("cross op", &c.op, CROSS_OPS);
        let names = c.features.get_ref();
        if names.len() != 2 {
            self.range("the number of crossed features", false, names.len(), "exactly 2", c.features.span());
            return None;
        }
        let mut ids = Vec::new();
        for n in names {
            match features.iter().position(|f| f.name == *n.get_ref()) {
                Some(i) => ids.push(FeatureId(i)),
                None => self.errors.push(LowerError::UnknownName {
                    what: "feature",
                    name: n.get_ref().clone(),
                    span: n.span(),
                    help: did_you_mean(n.get_ref(), features.iter().map(|f| f.name.as_str())),
                }),
            }
        }
        let [a, b] = ids[..] else { return None };
        let mut dims = Vec::new();
        for (id, n) in [(a, &names[0]), (b, &names[1])] {
            match &features[id.0].kind {
                FeatureKind::Categorical { dim, .. } => dims.push(*dim),
                FeatureKind::Dense { .. } => self.errors.push(LowerError::CrossDense {
                    name: c.name.get_ref().clone(),
                    feature: n.get_ref().clone(),
                    span: n.span(),
                }),
            }
        }
        let [da, db] = dims[..] else { return None };
        if da != db {
            self.errors.push(LowerError::CrossWidth {
                name: c.name.get_ref().clone(),
                a: names[0].get_ref().clone(),
                a_dim: da,
                b: names[1].get_ref().clone(),
                b_dim: db,
                span: c.features.span(),
            });
            return None;
        }
        Some(Cross { name: c.name.get_ref().clone(), a, b, dim: da })
    }

    /// `listed`: the spec's features one by one ([`Spec::feature_list`]), as `features`.
    fn check_leaks(&mut self, spec: &Spec, listed: &[spec::FeatureSpec], features: &[Feature]) {
        for t in &spec.tasks {
            let Some(label) = &t.label else { continue };
            for (f, fs) in features.iter().zip(listed) {
                let reads = match &f.kind {
                    FeatureKind::Dense { width, .. } if *width > 1 => {
                        (0..*width).any(|i| format!("{}_{i}", f.column) == *label.get_ref())
                    }
                    _ => f.column == *label.get_ref(),
                };
                if reads {
                    let input = fs.column.as_ref().map_or_else(|| fs.name.span(), |c| c.span());
                    self.errors.push(LowerError::LabelLeak {
                        task: t.name.get_ref().clone(),
                        feature: f.name.clone(),
                        column: label.get_ref().clone(),
                        label: label.span(),
                        input,
                    });
                }
            }
        }
    }
}

/// Largest embedding table (rows) or vocabulary accepted.
pub const MAX_ROWS: u64 = 1 << 26;
/// Most values a bag (`max_len`) keeps per row.
pub const MAX_BAG: u64 = 4096;
/// Largest width of any layer.
pub const MAX_UNITS: u64 = 1 << 16;
/// Most experts in a layer.
pub const MAX_EXPERTS: u64 = 1024;
/// Most DCN-v2 cross layers below an expert.
pub const MAX_CROSS_LAYERS: u64 = 16;
/// Most parameters a model may have (8 GiB of f32).
pub const MAX_PARAMS: usize = 1 << 31;
/// Most bytes of generated data held in memory.
pub const MAX_SYNTHETIC_BYTES: u64 = 8 << 30;
/// Most rows the synthetic generators make.
pub const MAX_SYNTHETIC_ROWS: u64 = 100_000_000;
