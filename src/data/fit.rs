//! Statistics a spec leaves open, fitted on the training rows before the model is
//! built: the classes of a multiclass task (sorted distinct labels), the mean and
//! standard deviation of a standardized regression label, those of a dense feature
//! with `transform = "zscore"` and no numbers, the vocabulary of a categorical without
//! one, and the quantile boundaries of a `bucketize`d feature. The caller pins them into the spec, so
//! a bundle's spec carries them and predicts without data; a spec may still pin them
//! by hand.
//!
//! They are fitted on the training file(s) (or the generated rows) before any held-out
//! fraction is split off.

use super::{dense_columns, needs, synthetic, Column, DataError, Frame, Need, NeedOwner};
use crate::ir::{DataConfig, DataSource, FeatureKind, Head, LabelTransform, Model, Transform};

/// Everything fitted for one model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fits {
    pub labels: Vec<FittedLabel>,
    pub features: Vec<FittedFeature>,
    pub vocabularies: Vec<FittedVocab>,
    pub buckets: Vec<FittedBuckets>,
}

impl Fits {
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.features.is_empty() && self.vocabularies.is_empty() && self.buckets.is_empty()
    }
}

/// The fitted boundaries of one bucketized feature: the quantiles `k / buckets` of its
/// finite training values, strictly increasing (ties merge buckets), each above the
/// smallest value (so no bucket below the data is kept empty).
#[derive(Debug, Clone, PartialEq)]
pub struct FittedBuckets {
    pub feature: usize,
    pub boundaries: Vec<f64>,
    /// Finite values the quantiles came from, and rows without one (row 0).
    pub values: usize,
    pub missing: u64,
}

/// Bucketized features whose boundaries the spec leaves to the data.
pub fn open_buckets(model: &Model) -> Vec<usize> {
    open_tables(model, |e| matches!(e, crate::ir::Encoding::FitBuckets { .. }))
}

/// Features owning a table whose encoding `open` says is still to fit. A feature reading
/// another's table fits nothing itself: the owner's fit counts its column too.
fn open_tables(model: &Model, open: impl Fn(&crate::ir::Encoding) -> bool) -> Vec<usize> {
    (0..model.features.len())
        .filter(|&i| {
            let f = &model.features[i];
            f.shares.is_none() && matches!(&f.kind, FeatureKind::Categorical { encoding, .. } if open(encoding))
        })
        .collect()
}

/// The fitted vocabulary of one categorical feature: most frequent first (ties by
/// value), so `max_size` keeps the head.
#[derive(Debug, Clone, PartialEq)]
pub struct FittedVocab {
    pub feature: usize,
    pub values: Vec<String>,
    /// Distinct non-empty values seen, and rows whose value is left out (out of vocabulary).
    pub seen: usize,
    pub oov_rows: u64,
}

/// Categorical features whose vocabulary the spec leaves to the data.
pub fn open_vocabularies(model: &Model) -> Vec<usize> {
    open_tables(model, |e| matches!(e, crate::ir::Encoding::FitVocab { .. }))
}

/// The fitted statistics of one dense feature's raw values (all its columns together,
/// missing values left out).
#[derive(Debug, Clone, PartialEq)]
pub struct FittedFeature {
    pub feature: usize,
    pub stats: DenseStats,
}

/// What a dense feature's transform needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DenseStats {
    /// `transform = "zscore"`.
    MeanStd { mean: f64, std: f64 },
    /// `transform = "minmax"`.
    Range { min: f64, max: f64 },
}

/// Dense features whose zscore or minmax statistics the spec leaves to the data.
pub fn open_features(model: &Model) -> Vec<usize> {
    (0..model.features.len())
        .filter(|&i| matches!(&model.features[i].kind, FeatureKind::Dense { transform, .. } if transform.is_open()))
        .collect()
}

/// Whether anything in `model` is still to be fitted; such a model must not encode data.
pub fn is_open(model: &Model) -> bool {
    !open_labels(model).is_empty()
        || !open_features(model).is_empty()
        || !open_vocabularies(model).is_empty()
        || !open_buckets(model).is_empty()
}

/// What was fitted for one task.
#[derive(Debug, Clone, PartialEq)]
pub struct FittedLabel {
    pub task: usize,
    pub classes: Option<Vec<String>>,
    pub mean_std: Option<(f64, f64)>,
}

/// Tasks whose label statistics the spec leaves to the data.
pub fn open_labels(model: &Model) -> Vec<usize> {
    (0..model.tasks.len())
        .filter(|&t| match &model.tasks[t].head {
            Head::Multiclass { classes } => classes.is_empty(),
            Head::Regression { transform: LabelTransform::Standardize { mean, .. } } => mean.is_nan(),
            _ => false,
        })
        .collect()
}

/// Fits every open statistic of `model` on its training rows.
pub fn fit(
    model: &Model,
    data: &DataConfig,
    train_override: Option<&std::path::Path>,
    spec_at: &dyn Fn(&Need) -> String,
) -> Result<Fits, DataError> {
    let open_tasks = open_labels(model);
    let mut open_feats = open_features(model);
    open_feats.extend(open_vocabularies(model));
    open_feats.extend(open_buckets(model));
    if open_tasks.is_empty() && open_feats.is_empty() {
        return Ok(Fits::default());
    }
    let wanted: Vec<Need> = needs(model)
        .into_iter()
        .filter(|n| match &n.owner {
            NeedOwner::Task(t) => n.is_label && open_tasks.iter().any(|&i| &model.tasks[i].name == t),
            // A table's vocabulary counts the columns of every feature reading it.
            NeedOwner::Feature(f) => open_feats.iter().any(|&i| table_readers(model, i).any(|r| &r.name == f)),
            NeedOwner::Caller => false,
        })
        .collect();
    let frames = training_frames(model, data, train_override, &wanted, spec_at)?;
    fit_on_frames(model, &frames)
}

/// The training rows of `data` (before any held-out split), the columns `wanted` only:
/// the generator's rows, the spec's training files, or `train_override`. Streamed
/// files give their first `shuffle_buffer` rows (a sample of data that may not fit in
/// memory: [`STREAM_FIT_NOTE`]).
pub fn training_frames(
    model: &Model,
    data: &DataConfig,
    train_override: Option<&std::path::Path>,
    wanted: &[Need],
    spec_at: &dyn Fn(&Need) -> String,
) -> Result<Vec<Frame>, DataError> {
    let files = super::source::training_files(data, train_override)?;
    if let (Some((parts, _, format)), Some(config)) = (&files, data.stream) {
        let s =
            super::stream::Stream::new(model, parts.clone(), format.clone(), config, data.bad_rows.clone(), spec_at);
        return s.sample(wanted, config.shuffle_buffer);
    }
    match (files, &data.source) {
        (Some((parts, _, format)), _) => parts
            .iter()
            .map(|part| super::source::read_part(part, &format, wanted, true, spec_at, &|_, _| {}))
            .collect(),
        (None, DataSource::Synthetic(s)) => Ok(vec![synthetic::generate(model, s, s.rows)]),
        (None, DataSource::Csv(_)) => unreachable!("a CSV source always has training files"),
    }
}

/// What a streamed run's fitted statistics were fitted on.
pub const STREAM_FIT_NOTE: &str = "statistics fitted on the first `shuffle_buffer` training rows (streamed data): a larger buffer fits them on more rows, or pin them in the spec";

/// Fits every open statistic of `model` on rows already read (`frames`).
pub fn fit_on_frames(model: &Model, frames: &[Frame]) -> Result<Fits, DataError> {
    Ok(Fits {
        labels: open_labels(model).into_iter().map(|t| fit_task(model, t, frames)).collect::<Result<_, _>>()?,
        features: open_features(model).into_iter().map(|i| fit_feature(model, i, frames)).collect::<Result<_, _>>()?,
        vocabularies: open_vocabularies(model)
            .into_iter()
            .map(|i| fit_vocabulary(model, i, frames))
            .collect::<Result<_, _>>()?,
        buckets: open_buckets(model).into_iter().map(|i| fit_buckets(model, i, frames)).collect::<Result<_, _>>()?,
    })
}

/// The boundaries of `buckets` quantile buckets of `values` (finite, any order): the
/// `k * n / buckets`-th smallest value for k = 1 .. buckets - 1, duplicates and values
/// at the minimum left out.
pub fn quantile_boundaries(values: &mut [f64], buckets: usize) -> Vec<f64> {
    values.sort_unstable_by(f64::total_cmp);
    let n = values.len();
    let Some(&min) = values.first() else { return Vec::new() };
    let mut out: Vec<f64> = Vec::with_capacity(buckets.saturating_sub(1));
    for k in 1..buckets {
        let b = values[(k * n / buckets).min(n - 1)];
        if b > min && out.last().is_none_or(|&last| b > last) {
            out.push(b);
        }
    }
    out
}

fn fit_buckets(model: &Model, i: usize, frames: &[Frame]) -> Result<FittedBuckets, DataError> {
    let f = &model.features[i];
    let FeatureKind::Categorical { encoding: crate::ir::Encoding::FitBuckets { buckets }, .. } = &f.kind else {
        return Err(DataError::Other(format!("feature `{}` has no buckets to fit", f.name)));
    };
    let mut values: Vec<f64> = Vec::new();
    let mut rows = 0u64;
    // Every column reading this table counts, as for a vocabulary.
    for (frame, f) in table_reads(model, i, frames) {
        rows += frame.rows as u64;
        match frame.column_as(&f.column, true) {
            Some(Column::Num(v)) => values.extend(v.iter().filter(|x| x.is_finite()).map(|&x| x as f64)),
            _ => {
                return Err(DataError::Other(format!(
                    "feature `{}` (bucketize): column `{}` is not numeric in the training data",
                    f.name, f.column
                )))
            }
        }
    }
    let n = values.len();
    let boundaries = quantile_boundaries(&mut values, *buckets);
    if boundaries.is_empty() {
        return Err(DataError::Other(format!(
            "feature `{}` (bucketize = {buckets}): {n} finite value(s) in column `{}` of the training data, {}: nothing to cut into buckets; drop the feature or declare `boundaries`",
            f.name,
            f.column,
            if n == 0 { "none".to_string() } else { format!("all equal to {}", values[0]) }
        )));
    }
    Ok(FittedBuckets { feature: i, boundaries, values: n, missing: rows - n as u64 })
}

/// Feature `i` and every feature reading its table (`table = "..."`).
fn table_readers(model: &Model, i: usize) -> impl Iterator<Item = &crate::ir::Feature> {
    model
        .features
        .iter()
        .enumerate()
        .filter(move |(j, g)| *j == i || g.shares.is_some_and(|o| o.0 == i))
        .map(|(_, g)| g)
}

/// Each frame with each feature reading feature `i`'s table (`i` itself first).
fn table_reads<'a>(
    model: &'a Model,
    i: usize,
    frames: &'a [Frame],
) -> impl Iterator<Item = (&'a Frame, &'a crate::ir::Feature)> {
    frames.iter().flat_map(move |fr| table_readers(model, i).map(move |g| (fr, g)))
}

/// The vocabulary of feature `i`'s table, counted over its column and the columns of the
/// features reading the same table (a clicked-item history and the candidate item).
fn fit_vocabulary(model: &Model, i: usize, frames: &[Frame]) -> Result<FittedVocab, DataError> {
    let f = &model.features[i];
    let FeatureKind::Categorical { encoding: crate::ir::Encoding::FitVocab { min_count, max_size }, .. } = &f.kind
    else {
        return Err(DataError::Other(format!("feature `{}` has no vocabulary to fit", f.name)));
    };
    let mut counts: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut total = 0u64;
    for (frame, f) in table_reads(model, i, frames) {
        // Values read: a row's one value, or each value of a bag.
        let mut count = |v: &str, n: u64| {
            total += n;
            if !v.is_empty() {
                *counts.entry(v.to_string()).or_default() += n;
            }
        };
        match frame.column_as(&f.column, false) {
            Some(Column::Cat { dict, codes }) => {
                let mut per = vec![0u64; dict.len()];
                codes.iter().for_each(|&c| per[c as usize] += 1);
                for (v, n) in dict.iter().zip(per).filter(|(_, n)| *n > 0) {
                    match f.bag() {
                        Some(b) => super::bag_values(v, &b.separator).for_each(|x| count(x, n)),
                        None => count(v, n),
                    }
                }
            }
            Some(Column::Num(v)) => {
                for x in v {
                    count(&if x.is_nan() { String::new() } else { format!("{x}") }, 1);
                }
            }
            None => {
                return Err(DataError::Other(format!(
                    "feature `{}`: column `{}` not in the training data",
                    f.name, f.column
                )))
            }
        }
    }
    let seen = counts.len();
    let mut ranked: Vec<(String, u64)> = counts.into_iter().filter(|(_, n)| n >= min_count).collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if let Some(m) = max_size {
        ranked.truncate(*m);
    }
    if ranked.is_empty() {
        return Err(DataError::Other(format!(
            "feature `{}`: no value of column `{}` occurs {min_count} time(s) or more in the training data, so its fitted vocabulary would be empty; lower min_count",
            f.name, f.column
        )));
    }
    let kept: u64 = ranked.iter().map(|(_, n)| n).sum();
    Ok(FittedVocab {
        feature: i,
        values: ranked.into_iter().map(|(v, _)| v).collect(),
        seen,
        oov_rows: total.saturating_sub(kept),
    })
}

/// Mean and (population) standard deviation of the finite values, two passes.
fn mean_std(parts: &[&[f32]]) -> (usize, f64, f64) {
    let values = || parts.iter().flat_map(|v| v.iter().copied());
    let (mut n, mut sum) = (0usize, 0f64);
    for x in values().filter(|x| x.is_finite()) {
        n += 1;
        sum += x as f64;
    }
    let mean = sum / n.max(1) as f64;
    let sq: f64 = values().filter(|x| x.is_finite()).map(|x| (x as f64 - mean).powi(2)).sum();
    (n, mean, (sq / n.max(1) as f64).sqrt())
}

fn fit_feature(model: &Model, i: usize, frames: &[Frame]) -> Result<FittedFeature, DataError> {
    let f = &model.features[i];
    let FeatureKind::Dense { width, transform, .. } = f.kind else {
        return Err(DataError::Other(format!("feature `{}` is not dense", f.name)));
    };
    let columns = dense_columns(&f.column, width);
    let mut all: Vec<&[f32]> = Vec::new();
    for frame in frames {
        for c in &columns {
            match frame.column_as(c, true) {
                Some(Column::Num(v)) => all.push(v),
                _ => {
                    return Err(DataError::Other(format!(
                        "feature `{}`: column `{c}` is not numeric in the training data",
                        f.name
                    )))
                }
            }
        }
    }
    if let Transform::MinMax { .. } = transform {
        let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
        for x in all.iter().flat_map(|v| v.iter()).filter(|x| !x.is_nan()) {
            min = min.min(*x as f64);
            max = max.max(*x as f64);
        }
        if !(max > min) {
            return Err(DataError::Other(format!(
                "feature `{}` (transform = \"minmax\"): the training data's values span no range (min {min}, max {max}); drop the feature or declare `min` and `max`",
                f.name
            )));
        }
        return Ok(FittedFeature { feature: i, stats: DenseStats::Range { min, max } });
    }
    let (n, mean, std) = mean_std(&all);
    if n < 2 || !(std > 0.0) {
        return Err(DataError::Other(format!(
            "feature `{}` (transform = \"zscore\"): {n} value(s) in the training data with standard deviation {std}: nothing to standardize by; drop the feature or declare `mean` and `std`",
            f.name
        )));
    }
    Ok(FittedFeature { feature: i, stats: DenseStats::MeanStd { mean, std } })
}

fn fit_task(model: &Model, t: usize, frames: &[Frame]) -> Result<FittedLabel, DataError> {
    let task = &model.tasks[t];
    let Some(label) = &task.label else {
        return Err(DataError::Other(format!("task `{}` has no label to fit its statistics on", task.name)));
    };
    let what =
        |problem: String| DataError::Other(format!("label `{}` of task `{}`: {problem}", label.column, task.name));
    let mut fitted = FittedLabel { task: t, classes: None, mean_std: None };
    match &task.head {
        Head::Multiclass { .. } => {
            let mut seen = std::collections::BTreeSet::new();
            for f in frames {
                match f.column_as(&label.column, false) {
                    Some(Column::Cat { dict, codes }) => {
                        let mut used = vec![false; dict.len()];
                        codes.iter().for_each(|&c| used[c as usize] = true);
                        // An empty label is missing, never a class.
                        seen.extend(dict.iter().zip(used).filter(|(d, u)| *u && !d.is_empty()).map(|(d, _)| d.clone()));
                    }
                    Some(Column::Num(v)) => seen.extend(v.iter().filter(|x| !x.is_nan()).map(|x| format!("{x}"))),
                    None => return Err(what("not in the training data".into())),
                }
            }
            if seen.len() < 2 {
                return Err(what(format!(
                    "{} distinct value(s) in the training data; a multiclass task needs at least 2",
                    seen.len()
                )));
            }
            fitted.classes = Some(seen.into_iter().collect());
        }
        _ => {
            let mut all: Vec<&[f32]> = Vec::new();
            for f in frames {
                let Some(Column::Num(v)) = f.column_as(&label.column, true) else {
                    return Err(what("not numeric in the training data".into()));
                };
                all.push(v);
            }
            let (n, mean, std) = mean_std(&all);
            if n < 2 || !(std > 0.0) {
                return Err(what(format!(
                    "{n} finite value(s) with standard deviation {std}: nothing to standardize by"
                )));
            }
            fitted.mean_std = Some((mean, std));
        }
    }
    Ok(fitted)
}
