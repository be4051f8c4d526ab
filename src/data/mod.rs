//! Data: sources (synthetic generators, CSV) -> [`Frame`] -> encoded [`Dataset`]
//! -> minibatches.
//!
//! A source reads only the columns the model needs ([`Needs`]). Encoding hashes or
//! looks up categoricals, transforms dense values and derives labels; every bad value
//! is an error naming where it came from. New sources (Parquet, streaming) produce a
//! `Frame` or feed [`encode`] chunk by chunk.

pub mod analyze;
pub mod check;
pub mod csv_source;
pub mod fit;
pub mod frame;
pub mod hash;
pub mod parquet_source;
pub mod ranges;
pub mod source;
pub mod stream;
pub mod synthetic;

pub use frame::{Column, Frame, Origin, Skipped};

use crate::ir::{FeatureKind, Head, Model, Task};
use crate::rng::Rng;
use hash::hash_bucket;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot open {path}: {source}")]
    Open { path: String, source: std::io::Error },
    #[error("{path}: column `{column}` is not in the file (wanted by {spec_at}); {hint}the file has: {available}")]
    MissingColumn { path: String, column: String, spec_at: String, hint: String, available: String },
    #[error("{at}: {problem}")]
    BadRow { at: String, problem: String },
    #[error("{at}: column `{column}`: {problem}")]
    BadValue { at: String, column: String, problem: String },
    #[error("{path}: no rows")]
    NoRows { path: String },
    #[error("{0}")]
    Other(String),
    /// A chunked read stopped by its consumer (it has what it wants, or hung up).
    #[error("the reader was stopped")]
    Stopped,
}

/// How a source must deliver a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    Num,
    Cat,
}

/// A column the model reads, and who reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Need {
    pub column: String,
    pub kind: ColumnKind,
    /// `feature x` or `label of task y`, for messages.
    pub reader: String,
    /// The feature or task that reads the column.
    pub owner: NeedOwner,
    pub is_label: bool,
    /// A bag's column (or its weights): the separator its values are joined with when
    /// a source holds them as a list (Parquet).
    pub separator: Option<String>,
}

/// Who reads a column, so that an error can point at that part of the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NeedOwner {
    Feature(String),
    Task(String),
    /// Asked for outside the spec (e.g. `predict --keep`).
    Caller,
}

/// The error for a column a file lacks: who wants it, a did-you-mean against the
/// file's header, and (the start of) that header.
pub(crate) fn missing_column(
    path: &str,
    need: &Need,
    header: &[String],
    spec_at: &dyn Fn(&Need) -> String,
) -> DataError {
    let hint = crate::diag::did_you_mean(&need.column, header.iter().map(String::as_str))
        .map_or_else(String::new, |h| format!("{h} "));
    let mut available = header.join(", ");
    if available.len() > 400 {
        let cut = (0..=400).rev().find(|&i| available.is_char_boundary(i)).unwrap_or(0);
        available.truncate(cut);
        available.push_str(", ...");
    }
    DataError::MissingColumn {
        path: path.to_string(),
        column: need.column.clone(),
        spec_at: spec_at(need),
        hint,
        available,
    }
}

/// Every column the model reads, in a stable order.
pub fn needs(model: &Model) -> Vec<Need> {
    let mut out = Vec::new();
    for f in &model.features {
        match &f.kind {
            FeatureKind::Categorical { encoding, bag, .. } => {
                out.push(Need {
                    column: f.column.clone(),
                    kind: if encoding.numeric() { ColumnKind::Num } else { ColumnKind::Cat },
                    reader: format!("feature `{}`", f.name),
                    owner: NeedOwner::Feature(f.name.clone()),
                    is_label: false,
                    separator: bag.as_ref().map(|b| b.separator.clone()),
                });
                if let Some((w, b)) = bag.as_ref().and_then(|b| Some((b.weights.as_ref()?, b))) {
                    out.push(Need {
                        column: w.clone(),
                        kind: ColumnKind::Cat,
                        reader: format!("the weights of feature `{}`", f.name),
                        owner: NeedOwner::Feature(f.name.clone()),
                        is_label: false,
                        separator: Some(b.separator.clone()),
                    });
                }
            }
            FeatureKind::Dense { width, .. } => {
                for c in dense_columns(&f.column, *width) {
                    out.push(Need {
                        column: c,
                        kind: ColumnKind::Num,
                        reader: format!("feature `{}`", f.name),
                        owner: NeedOwner::Feature(f.name.clone()),
                        is_label: false,
                        separator: None,
                    });
                }
            }
        }
    }
    for t in &model.tasks {
        let Some(label) = &t.label else { continue };
        let categorical = label.positive.is_some() || matches!(t.head, Head::Multiclass { .. });
        out.push(Need {
            column: label.column.clone(),
            kind: if categorical { ColumnKind::Cat } else { ColumnKind::Num },
            reader: format!("the label of task `{}`", t.name),
            owner: NeedOwner::Task(t.name.clone()),
            is_label: true,
            separator: None,
        });
        if let Some(w) = &label.only_where {
            out.push(Need {
                column: w.clone(),
                kind: ColumnKind::Num,
                reader: format!("`only_where` of task `{}`", t.name),
                owner: NeedOwner::Task(t.name.clone()),
                is_label: true,
                separator: None,
            });
        }
    }
    out
}

/// The columns a dense feature of `width` reads.
pub fn dense_columns(column: &str, width: usize) -> Vec<String> {
    if width == 1 {
        vec![column.to_string()]
    } else {
        (0..width).map(|i| format!("{column}_{i}")).collect()
    }
}

/// Encoded rows, ready to batch.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    pub rows: usize,
    /// One entry per categorical feature (in feature order): the table row of each data
    /// row, or for a bag feature `len` table rows per data row (`[rows, len]`).
    pub cat: Vec<Vec<u32>>,
    /// One entry per categorical feature: None for one value per row, else the bag's
    /// slots (the pooling weight of each id in `cat`).
    pub bags: Vec<Option<BagRows>>,
    /// All dense values, `[rows, dense_width]` row-major, features in order.
    pub dense: Vec<f32>,
    pub dense_width: usize,
    /// One entry per task: encoded labels (0/1, a class index, a transformed value; NaN
    /// where the label is missing), or empty when the data has none for the task.
    pub labels: Vec<Vec<f32>>,
}

/// A bag feature's encoded rows beside its ids: `len` slots per row, each with the
/// weight pooling gives its embedding (sum: the value's weight, or 1; mean: that over
/// the row's total; max: 1). Padding slots have id 0 and weight 0.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BagRows {
    pub len: usize,
    /// `[rows, len]`, row-major.
    pub weights: Vec<f32>,
}

/// Rows `idx` of a `[rows, w]` row-major buffer.
pub fn select_rows<T: Copy>(v: &[T], w: usize, idx: &[usize]) -> Vec<T> {
    let mut out = Vec::with_capacity(idx.len() * w);
    for &i in idx {
        out.extend_from_slice(&v[i * w..(i + 1) * w]);
    }
    out
}

impl Dataset {
    /// Table rows per data row of categorical `i` (1, or a bag's `len`).
    pub fn cat_len(&self, i: usize) -> usize {
        self.bags.get(i).and_then(Option::as_ref).map_or(1, |b| b.len)
    }

    /// The rows at `idx`, in that order.
    pub fn select(&self, idx: &[usize]) -> Dataset {
        let w = self.dense_width;
        Dataset {
            rows: idx.len(),
            cat: self.cat.iter().enumerate().map(|(i, c)| select_rows(c, self.cat_len(i), idx)).collect(),
            bags: self
                .bags
                .iter()
                .map(|b| b.as_ref().map(|b| BagRows { len: b.len, weights: select_rows(&b.weights, b.len, idx) }))
                .collect(),
            dense: select_rows(&self.dense, w, idx),
            dense_width: w,
            labels: self
                .labels
                .iter()
                .map(|l| if l.is_empty() { Vec::new() } else { idx.iter().map(|&i| l[i]).collect() })
                .collect(),
        }
    }

    /// Whether some task has labels, and every task that has any has one per row.
    pub fn has_labels(&self) -> bool {
        self.labels.iter().any(|l| !l.is_empty()) && self.labels.iter().all(|l| l.is_empty() || l.len() == self.rows)
    }

    /// Appends another dataset's rows.
    pub fn extend(&mut self, other: Dataset) {
        if self.rows == 0 && self.cat.is_empty() && self.labels.is_empty() {
            *self = other;
            return;
        }
        self.rows += other.rows;
        for (a, b) in self.cat.iter_mut().zip(other.cat) {
            a.extend(b);
        }
        for (a, b) in self.bags.iter_mut().zip(other.bags) {
            if let (Some(a), Some(b)) = (a, b) {
                a.weights.extend(b.weights);
            }
        }
        self.dense.extend(other.dense);
        for (a, b) in self.labels.iter_mut().zip(other.labels) {
            a.extend(b);
        }
    }
}

/// Encodes a frame for `model`. With `require_labels = false` (prediction), absent
/// label columns give empty label vectors.
pub fn encode(model: &Model, frame: &Frame, require_labels: bool) -> Result<Dataset, DataError> {
    Ok(encode_with(model, frame, require_labels, false, false)?.0)
}

/// [`encode`] for training rows: labels are required, and a binary task whose
/// `positive` value never occurs is an error (a typo that would train on all-zero labels).
pub fn encode_training(model: &Model, frame: &Frame) -> Result<Dataset, DataError> {
    Ok(encode_with(model, frame, true, true, false)?.0)
}

/// [`encode`] (`training`: [`encode_training`]) that drops rows with a bad value (a
/// label that is not 0/1 or not a class, a missing label, a value outside a
/// transform's domain) instead of failing, and reports them.
pub fn encode_skipping(model: &Model, frame: &Frame, training: bool) -> Result<(Dataset, Skipped), DataError> {
    encode_with(model, frame, true, training, true)
}

/// A frame read for training (`training`) or evaluation, encoded under the bad-row
/// `policy`: a skipping one drops broken rows and tallies them, with the rows read, in
/// `tally`; otherwise the first broken row is an error.
pub fn encode_by_policy(
    model: &Model,
    frame: &Frame,
    policy: &crate::ir::BadRows,
    training: bool,
    tally: &mut (Skipped, u64),
) -> Result<Dataset, DataError> {
    if policy.skips() {
        let (ds, bad) = encode_skipping(model, frame, training)?;
        tally.0.merge(&frame.skipped);
        tally.0.merge(&bad);
        tally.1 += frame.rows as u64 + frame.skipped.total;
        Ok(ds)
    } else if training {
        encode_training(model, frame)
    } else {
        encode(model, frame, true)
    }
}

/// Row-level problems met while encoding: the first is an error, or (lenient) each
/// marks its row to be dropped.
struct RowCheck<'a> {
    lenient: bool,
    origin: &'a Origin,
    drop: Vec<bool>,
    skipped: Skipped,
}

impl RowCheck<'_> {
    fn flag(&mut self, row: usize, reason: &str, column: &str, problem: String) -> Result<(), DataError> {
        if !self.lenient {
            return Err(DataError::BadValue { at: self.origin.describe(row), column: column.to_string(), problem });
        }
        if !self.drop[row] {
            self.drop[row] = true;
            self.skipped.add(reason, &self.origin.describe(row), &format!("column `{column}`: {problem}"));
        }
        Ok(())
    }
}

fn encode_with(
    model: &Model,
    frame: &Frame,
    require_labels: bool,
    check_positive: bool,
    lenient: bool,
) -> Result<(Dataset, Skipped), DataError> {
    let mut check =
        RowCheck { lenient, origin: &frame.origin, drop: vec![false; frame.rows], skipped: Skipped::default() };
    if fit::is_open(model) {
        return Err(DataError::Other(
            "the model has statistics still to fit on the training rows (a zscore feature, a vocabulary, bucket boundaries or a label without its numbers); fit them first (`data::fit::fit`, which training runs)".into(),
        ));
    }
    let missing = |c: &str| DataError::Other(format!("{}: column `{c}` missing", frame.origin.name));
    let mut ds = Dataset { rows: frame.rows, ..Default::default() };
    ds.dense_width =
        model.features.iter().map(|f| if let FeatureKind::Dense { width, .. } = f.kind { width } else { 0 }).sum();
    ds.dense = vec![0.0; frame.rows * ds.dense_width];
    let mut offset = 0;
    for f in &model.features {
        // A categorical is hashed under the name of the feature that owns its table, so
        // that one value takes one row whichever feature reads it.
        let key = f.shares.map_or(&f.name, |o| &model.features[o.0].name);
        match &f.kind {
            FeatureKind::Categorical { encoding: crate::ir::Encoding::Bucketize { boundaries }, .. } => {
                let bucket = |x: f64| crate::ir::Encoding::bucket(boundaries, x);
                let rows = match frame.column_as(&f.column, true).ok_or_else(|| missing(&f.column))? {
                    Column::Num(v) => v.iter().map(|&x| bucket(x as f64)).collect(),
                    // Text (a caller's raw values): parsed here; empty is missing.
                    Column::Cat { dict, codes } => {
                        let parsed: Vec<Option<f64>> = dict
                            .iter()
                            .map(|v| if v.trim().is_empty() { Some(f64::NAN) } else { v.trim().parse::<f64>().ok() })
                            .collect();
                        let mut rows = Vec::with_capacity(codes.len());
                        for (i, &c) in codes.iter().enumerate() {
                            match parsed[c as usize] {
                                Some(x) => rows.push(bucket(x)),
                                None => {
                                    let problem = format!(
                                        "value {:?} of feature `{}` is not a number (it is bucketized)",
                                        dict[c as usize], f.name
                                    );
                                    check.flag(i, "unparsable number", &f.column, problem)?;
                                    rows.push(0);
                                }
                            }
                        }
                        rows
                    }
                };
                ds.cat.push(rows);
                ds.bags.push(None);
            }
            FeatureKind::Categorical { encoding, bag: Some(bag), .. } => {
                let (ids, rows) = encode_bag(f, key, encoding, bag, frame, &mut check)?;
                ds.cat.push(ids);
                ds.bags.push(Some(rows));
            }
            FeatureKind::Categorical { encoding, .. } => {
                let rows = match frame.column_as(&f.column, false).ok_or_else(|| missing(&f.column))? {
                    Column::Cat { dict, codes } => {
                        let table: Vec<u32> = dict.iter().map(|v| encode_value(key, encoding, v)).collect();
                        codes.iter().map(|&c| table[c as usize]).collect()
                    }
                    Column::Num(v) => v.iter().map(|x| encode_value(key, encoding, &format!("{x}"))).collect(),
                };
                ds.cat.push(rows);
                ds.bags.push(None);
            }
            FeatureKind::Dense { width, transform, fill } => {
                for (j, c) in dense_columns(&f.column, *width).iter().enumerate() {
                    let Column::Num(v) = frame.column_as(c, true).ok_or_else(|| missing(c))? else {
                        return Err(DataError::Other(format!("column `{c}` must be numeric")));
                    };
                    for (i, &x) in v.iter().enumerate() {
                        let x = if x.is_nan() { *fill } else { x };
                        if let Some(problem) = transform.domain_error(x) {
                            check.flag(i, "value outside its transform's domain", c, problem)?;
                            continue;
                        }
                        let y = transform.apply(x);
                        if !y.is_finite() {
                            check.flag(
                                i,
                                "value not finite after its transform",
                                c,
                                format!("value {x} is not finite after the transform"),
                            )?;
                            continue;
                        }
                        ds.dense[i * ds.dense_width + offset + j] = y;
                    }
                }
                offset += width;
            }
        }
    }
    for t in &model.tasks {
        ds.labels.push(encode_labels(t, frame, require_labels, check_positive, &mut check)?);
    }
    if check.skipped.total > 0 {
        let keep: Vec<usize> = (0..frame.rows).filter(|&i| !check.drop[i]).collect();
        ds = ds.select(&keep);
    }
    Ok((ds, check.skipped))
}

/// One task's labels as the head wants them (see [`Dataset::labels`]); empty when the
/// task has no label column, or the frame lacks it and labels are not required.
fn encode_labels(
    t: &Task,
    frame: &Frame,
    require: bool,
    check_positive: bool,
    check: &mut RowCheck,
) -> Result<Vec<f32>, DataError> {
    let Some(label) = &t.label else { return Ok(Vec::new()) };
    let missing = |c: &str| DataError::Other(format!("{}: column `{c}` missing", frame.origin.name));
    let categorical = label.positive.is_some() || matches!(t.head, Head::Multiclass { .. });
    let Some(col) = frame.column_as(&label.column, !categorical) else {
        return if require { Err(missing(&label.column)) } else { Ok(Vec::new()) };
    };
    let mut labels: Vec<f32> = match (&t.head, col, &label.positive) {
        (Head::Multiclass { classes }, Column::Cat { dict, codes }, _) => {
            let index: Vec<Option<usize>> = dict.iter().map(|v| classes.iter().position(|c| c == v)).collect();
            let mut out = Vec::with_capacity(codes.len());
            for (i, &c) in codes.iter().enumerate() {
                match index[c as usize] {
                    Some(k) => out.push(k as f32),
                    None if dict[c as usize].is_empty() => out.push(f32::NAN),
                    None => {
                        check.flag(
                            i,
                            "label not one of the classes",
                            &label.column,
                            format!(
                                "label {:?} of task `{}` is not one of its classes ({}){}",
                                dict[c as usize],
                                t.name,
                                classes.join(", "),
                                crate::diag::did_you_mean(&dict[c as usize], classes.iter().map(String::as_str))
                                    .map_or_else(String::new, |h| format!("; {h}"))
                            ),
                        )?;
                        out.push(f32::NAN);
                    }
                }
            }
            out
        }
        (Head::Multiclass { .. }, Column::Num(_), _) => {
            return Err(DataError::Other(format!("label column `{}` must be read as text", label.column)))
        }
        (_, Column::Cat { dict, codes }, Some(ps)) => {
            // A `positive` value no row has is almost always a typo, and would silently
            // train on fewer (or all-zero) labels.
            if let Some(p) = ps.iter().find(|p| check_positive && !dict.contains(p) && !codes.is_empty()) {
                let mut seen: Vec<&str> = dict.iter().map(String::as_str).take(8).collect();
                seen.sort_unstable();
                let hint = crate::diag::did_you_mean(p, dict.iter().map(String::as_str))
                    .map_or_else(String::new, |h| format!("; {h}"));
                return Err(DataError::BadValue {
                    at: frame.origin.name.clone(),
                    column: label.column.clone(),
                    problem: format!(
                        "no row equals the `positive` value {p:?} of task `{}`, so no label would be 1 through it (values seen: {}{}){hint}",
                        t.name,
                        seen.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>().join(", "),
                        if dict.len() > 8 { ", ..." } else { "" }
                    ),
                });
            }
            // An empty label is missing, not "not positive".
            let pos: Vec<f32> =
                dict.iter().map(|v| if v.is_empty() { f32::NAN } else { f32::from(ps.contains(v)) }).collect();
            codes.iter().map(|&c| pos[c as usize]).collect()
        }
        (_, Column::Num(v), Some(ps)) => {
            v.iter().map(|x| if x.is_nan() { f32::NAN } else { f32::from(ps.contains(&format!("{x}"))) }).collect()
        }
        (_, Column::Num(v), None) => v.clone(),
        (_, Column::Cat { .. }, None) => {
            return Err(DataError::Other(format!("label column `{}` must be numeric", label.column)))
        }
    };
    // Rows whose label is not observed (`only_where` reads 0) are masked; every other
    // row must have a label.
    let observed: Option<&[f32]> = match &label.only_where {
        Some(w) => match frame.column_as(w, true) {
            Some(Column::Num(present)) => Some(present),
            _ if require => return Err(missing(w)),
            _ => None,
        },
        None => None,
    };
    for (i, y) in labels.iter_mut().enumerate() {
        if let Some(present) = observed {
            match present[i] {
                1.0 => {}
                0.0 => {
                    *y = f32::NAN;
                    continue;
                }
                other => {
                    let column = label.only_where.clone().unwrap_or_default();
                    let problem = format!("`only_where` of task `{}` reads {other}, expected 0 or 1", t.name);
                    check.flag(i, "only_where not 0 or 1", &column, problem)?;
                    continue;
                }
            }
        }
        if y.is_nan() {
            let mask = match &label.only_where {
                Some(w) => format!("`only_where` column `{w}` says it is observed"),
                None => "every row needs one (mask unobserved rows with `only_where`)".to_string(),
            };
            if !check.drop[i] {
                check.flag(
                    i,
                    "missing label",
                    &label.column,
                    format!("the label of task `{}` is missing; {mask}", t.name),
                )?;
            }
            continue;
        }
        match &t.head {
            Head::Binary if *y != 0.0 && *y != 1.0 => {
                let problem = format!("label of task `{}` is {y}, expected 0 or 1 (or set `positive`)", t.name);
                check.flag(i, "binary label not 0 or 1", &label.column, problem)?;
            }
            Head::Regression { transform } => {
                if !y.is_finite() || !transform.accepts(*y) {
                    let expected =
                        if y.is_finite() { "a number above -1 (transform = log1p)" } else { "a finite number" };
                    let problem = format!("label of task `{}` is {y}, expected {expected}", t.name);
                    check.flag(i, "regression label out of range", &label.column, problem)?;
                    continue;
                }
                *y = transform.apply(*y);
            }
            _ => {}
        }
    }
    Ok(labels)
}

/// The values of a bag's text cell: split on the separator, trimmed, empty pieces
/// dropped (an empty cell is an empty bag).
pub fn bag_values<'a>(cell: &'a str, separator: &'a str) -> impl Iterator<Item = &'a str> {
    cell.split(separator).map(str::trim).filter(|v| !v.is_empty())
}

/// A bag feature's ids `[rows, max_len]` and slot weights (see [`BagRows`]). Each
/// distinct cell is split and encoded once; the first `max_len` values are kept.
fn encode_bag(
    f: &crate::ir::Feature,
    key: &str,
    encoding: &crate::ir::Encoding,
    bag: &crate::ir::Bag,
    frame: &Frame,
    check: &mut RowCheck,
) -> Result<(Vec<u32>, BagRows), DataError> {
    use crate::ir::Pooling;
    let missing = |c: &str| DataError::Other(format!("{}: column `{c}` missing", frame.origin.name));
    let len = bag.max_len;
    let (dict, codes): (std::borrow::Cow<[String]>, std::borrow::Cow<[u32]>) =
        match frame.column_as(&f.column, false).ok_or_else(|| missing(&f.column))? {
            Column::Cat { dict, codes } => (dict.into(), codes.into()),
            // A numeric column: one value per row.
            Column::Num(v) => {
                let mut i = frame::Interner::default();
                v.iter().for_each(|x| i.push(&if x.is_nan() { String::new() } else { format!("{x}") }));
                (i.dict.into(), i.codes.into())
            }
        };
    // Each distinct cell's table rows, all of them (weights must match their count).
    let cells: Vec<Vec<u32>> = dict
        .iter()
        .map(|cell| {
            let mut ids: Vec<u32> = bag_values(cell, &bag.separator).map(|v| encode_value(key, encoding, v)).collect();
            if bag.pooling == Pooling::Max {
                // A row counted twice would take the gradient twice.
                let mut seen = std::collections::HashSet::new();
                ids.retain(|id| seen.insert(*id));
            }
            ids
        })
        .collect();
    let weight_cells = match &bag.weights {
        Some(w) => match frame.column_as(w, false).ok_or_else(|| missing(w))? {
            Column::Cat { dict, codes } => Some((dict, codes)),
            Column::Num(_) => return Err(DataError::Other(format!("weights column `{w}` must be read as text"))),
        },
        None => None,
    };
    let mut ids = vec![0u32; codes.len() * len];
    let mut weights = vec![0f32; codes.len() * len];
    let mut w_row: Vec<f32> = Vec::with_capacity(len);
    for (r, &c) in codes.iter().enumerate() {
        let cell = &cells[c as usize];
        let n = cell.len().min(len);
        w_row.clear();
        match &weight_cells {
            Some((wd, wc)) => {
                let text = &wd[wc[r] as usize];
                let column = bag.weights.as_deref().unwrap_or_default();
                let mut parsed = 0;
                for v in bag_values(text, &bag.separator) {
                    match v.parse::<f32>() {
                        Ok(x) if x.is_finite() => {
                            if parsed < n {
                                w_row.push(x);
                            }
                        }
                        _ => {
                            let problem = format!("weight {v:?} of feature `{}` is not a finite number", f.name);
                            check.flag(r, "unparsable number", column, problem)?;
                        }
                    }
                    parsed += 1;
                }
                if parsed != cell.len() {
                    let problem = format!(
                        "{parsed} weights for the {} values of feature `{}` in column `{}`",
                        cell.len(),
                        f.name,
                        f.column
                    );
                    check.flag(r, "bag weights not matching its values", column, problem)?;
                    continue;
                }
            }
            None => w_row.resize(n, 1.0),
        }
        if w_row.len() < n {
            continue; // a bad weight, flagged above
        }
        let scale = match bag.pooling {
            Pooling::Mean => {
                let total: f32 = w_row.iter().sum();
                if total != 0.0 {
                    1.0 / total
                } else {
                    0.0
                }
            }
            Pooling::Sum | Pooling::Max => 1.0,
        };
        ids[r * len..r * len + n].copy_from_slice(&cell[..n]);
        for (slot, w) in weights[r * len..r * len + n].iter_mut().zip(&w_row) {
            *slot = w * scale;
        }
    }
    Ok((ids, BagRows { len, weights }))
}

fn encode_value(feature: &str, encoding: &crate::ir::Encoding, value: &str) -> u32 {
    match encoding {
        crate::ir::Encoding::Hash { buckets } => hash_bucket(feature, value, *buckets),
        crate::ir::Encoding::Vocab { values } => values.iter().position(|v| v == value).map_or(0, |i| i as u32 + 1),
        // Never reached: an open vocabulary or bucketing never encodes (`fit::is_open`),
        // and a bucketized feature takes numbers in `encode_with`'s own branch.
        crate::ir::Encoding::FitVocab { .. }
        | crate::ir::Encoding::FitBuckets { .. }
        | crate::ir::Encoding::Bucketize { .. } => 0,
    }
}

/// Splits off `fraction` of the rows (seeded shuffle); returns (rest, held out).
pub fn split(ds: Dataset, fraction: f64, seed: u64, label: &str) -> (Dataset, Dataset) {
    if fraction <= 0.0 {
        return (ds, Dataset::default());
    }
    let mut idx: Vec<usize> = (0..ds.rows).collect();
    Rng::derive(seed, label).shuffle(&mut idx);
    let n_out = ((ds.rows as f64) * fraction).round() as usize;
    let (out, keep) = idx.split_at(n_out.min(ds.rows));
    let mut keep = keep.to_vec();
    let mut out = out.to_vec();
    keep.sort_unstable();
    out.sort_unstable();
    (ds.select(&keep), ds.select(&out))
}

/// The encoded splits.
#[derive(Debug, Clone, Default)]
pub struct Splits {
    /// The training rows; empty when they stream.
    pub train: Dataset,
    /// The validation rows; empty when they stream.
    pub validation: Dataset,
    pub test: Option<Dataset>,
    /// Streamed training rows (`stream = true`), read anew each epoch.
    pub stream: Option<stream::Stream>,
    /// With `stream = true`, the validation and test files stream too: read anew at each
    /// evaluation, a chunk at a time.
    pub validation_stream: Option<StreamedSplit>,
    pub test_stream: Option<StreamedSplit>,
}

impl Splits {
    /// The validation rows, held or streamed.
    pub fn validation_data(&self) -> SplitData<'_> {
        match &self.validation_stream {
            Some(s) => SplitData::Streamed(s),
            None => SplitData::Held(&self.validation),
        }
    }

    /// The test rows, held or streamed, if there is a test split.
    pub fn test_data(&self) -> Option<SplitData<'_>> {
        match (&self.test_stream, &self.test) {
            (Some(s), _) => Some(SplitData::Streamed(s)),
            (None, Some(t)) => Some(SplitData::Held(t)),
            (None, None) => None,
        }
    }
}

/// A validation or test split that streams: its files, and what the pass at load
/// found in them (their rows were checked against the bad-row policy then).
#[derive(Debug, Clone)]
pub struct StreamedSplit {
    pub stream: stream::Stream,
    /// Rows kept (not skipped as broken).
    pub rows: usize,
    /// Per task: how its labels are spread ([`LabelStats::of`]).
    pub labels: Vec<Option<LabelStats>>,
}

impl StreamedSplit {
    /// Reads `stream` once: counts its rows and labels, and tallies its bad rows.
    pub fn survey(
        model: &Model,
        stream: stream::Stream,
        tally: &mut (Skipped, u64),
    ) -> Result<StreamedSplit, DataError> {
        let mut rows = 0;
        let mut labels: Vec<Option<LabelTally>> = vec![None; model.tasks.len()];
        stream.for_each_chunk(tally, &mut |ds| {
            rows += ds.rows;
            for (t, y) in ds.labels.iter().enumerate().filter(|(_, y)| !y.is_empty()) {
                if let Some(tally) = labels.get_mut(t) {
                    tally.get_or_insert_with(|| LabelTally::for_task(model, t)).add(y);
                }
            }
            Ok(())
        })?;
        let labels = labels.iter().enumerate().map(|(t, l)| l.as_ref().and_then(|l| l.stats(model, t))).collect();
        Ok(StreamedSplit { stream, rows, labels })
    }
}

/// The rows of a validation or test split: in memory, or read from their files.
#[derive(Clone, Copy)]
pub enum SplitData<'a> {
    Held(&'a Dataset),
    Streamed(&'a StreamedSplit),
}

impl SplitData<'_> {
    pub fn rows(&self) -> usize {
        match self {
            SplitData::Held(d) => d.rows,
            SplitData::Streamed(s) => s.rows,
        }
    }

    /// How task `t`'s labels are spread.
    pub fn label_stats(&self, model: &Model, t: usize) -> Option<LabelStats> {
        match self {
            SplitData::Held(d) => LabelStats::of(model, t, d),
            SplitData::Streamed(s) => s.labels.get(t).cloned().flatten(),
        }
    }
}

/// What a load produced besides the splits, for the user to see.
#[derive(Debug, Clone, Default)]
pub struct LoadInfo {
    /// Pearson correlation of the two labels (MMoE generator only).
    pub label_correlation: Option<f64>,
    pub source: String,
    /// Rows skipped as broken (a skipping bad-row policy), and the rows read.
    pub skipped: Skipped,
    pub rows_read: u64,
    /// Show the skipped rows as warnings (policy `warn`).
    pub warn_skipped: bool,
    /// Per binary or multiclass task with labels: how they are spread in each split.
    pub labels: Vec<TaskLabels>,
    /// The training rows stream (not loaded): the shuffle buffer's rows.
    pub streamed: Option<usize>,
}

/// How one task's labels are spread in the splits.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TaskLabels {
    pub task: String,
    pub train: Option<LabelStats>,
    pub validation: Option<LabelStats>,
    pub test: Option<LabelStats>,
}

/// One task's labels in one split.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LabelStats {
    /// Rows with a label (a masked task has fewer than the split).
    pub labelled: usize,
    /// Binary: the share of labelled rows that are 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub positive_rate: Option<f64>,
    /// Multiclass: each class's share of the labelled rows, in class order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class_shares: Option<Vec<f64>>,
}

impl LabelStats {
    /// The labels of task `t` in `ds`; None for a regression or a split without them.
    pub fn of(model: &Model, t: usize, ds: &Dataset) -> Option<LabelStats> {
        let y = ds.labels.get(t).filter(|y| !y.is_empty())?;
        let mut tally = LabelTally::for_task(model, t);
        tally.add(y);
        tally.stats(model, t)
    }
}

/// Labels counted a chunk at a time: rows with a label, and rows per class (binary: 0
/// and 1; none for a regression).
#[derive(Debug, Clone)]
struct LabelTally {
    labelled: usize,
    per_class: Vec<usize>,
}

impl LabelTally {
    fn for_task(model: &Model, t: usize) -> LabelTally {
        let classes = match &model.tasks[t].head {
            Head::Binary => 2,
            Head::Multiclass { classes } => classes.len(),
            Head::Regression { .. } => 0,
        };
        LabelTally { labelled: 0, per_class: vec![0; classes] }
    }

    fn add(&mut self, y: &[f32]) {
        for &v in y.iter().filter(|v| !v.is_nan()) {
            self.labelled += 1;
            // Encoded labels are class indices.
            if v >= 0.0 && v.fract() == 0.0 {
                if let Some(c) = self.per_class.get_mut(v as usize) {
                    *c += 1;
                }
            }
        }
    }

    fn stats(&self, model: &Model, t: usize) -> Option<LabelStats> {
        let n = self.labelled;
        let share = |k: usize| self.per_class.get(k).copied().unwrap_or(0) as f64 / n.max(1) as f64;
        match &model.tasks[t].head {
            Head::Binary => Some(LabelStats { labelled: n, positive_rate: Some(share(1)), class_shares: None }),
            Head::Multiclass { classes } => Some(LabelStats {
                labelled: n,
                positive_rate: None,
                class_shares: Some((0..classes.len()).map(share).collect()),
            }),
            Head::Regression { .. } => None,
        }
    }
}

/// [`TaskLabels`] of every binary and multiclass task with labels in `splits`.
pub fn label_spread(model: &Model, splits: &Splits) -> Vec<TaskLabels> {
    (0..model.tasks.len())
        .filter_map(|t| {
            let train = LabelStats::of(model, t, &splits.train)?;
            Some(TaskLabels {
                task: model.tasks[t].name.clone(),
                train: Some(train),
                validation: splits.validation_data().label_stats(model, t),
                test: splits.test_data().and_then(|d| d.label_stats(model, t)),
            })
        })
        .collect()
}

/// An error when the rows skipped (`bad`, of `read`) are past the policy's cap.
pub fn check_bad_rows(policy: &crate::ir::BadRows, bad: &Skipped, read: u64) -> Result<(), DataError> {
    if bad.total == 0 {
        return Ok(());
    }
    let share = bad.total as f64 / read.max(1) as f64;
    let over_count = policy.max_rows.is_some_and(|m| bad.total > m);
    if over_count || share > policy.max_fraction {
        let cap = match policy.max_rows {
            Some(m) if over_count => format!("max_bad_rows = {m}"),
            _ => format!("max_bad_fraction = {}", policy.max_fraction),
        };
        return Err(DataError::Other(format!(
            "{} bad rows of {read} read ({:.2}%: {}) is past {cap}; the first: {}",
            bad.total,
            100.0 * share,
            bad.summary(),
            bad.first.join("; ")
        )));
    }
    Ok(())
}

/// Makes or reads the rows `data` describes and splits them.
/// `train_override` replaces the spec's training files (`--data`).
pub fn load_splits(
    model: &Model,
    data: &crate::ir::DataConfig,
    train_override: Option<&std::path::Path>,
    spec_at: &dyn Fn(&Need) -> String,
) -> Result<(Splits, LoadInfo), DataError> {
    load_splits_with(model, data, train_override, spec_at, &|_, _, _| {})
}

/// [`load_splits`], telling `progress` how far each file is read (path, bytes read,
/// file size).
pub fn load_splits_with(
    model: &Model,
    data: &crate::ir::DataConfig,
    train_override: Option<&std::path::Path>,
    spec_at: &dyn Fn(&Need) -> String,
    progress: &dyn Fn(&std::path::Path, u64, u64),
) -> Result<(Splits, LoadInfo), DataError> {
    use crate::ir::{DataSource, SyntheticKind};
    let needs = needs(model);
    let mut info = LoadInfo::default();
    let mut streamed: Option<stream::Stream> = None;
    let (mut validation_stream, mut test_stream) = (None, None);
    // Rows skipped under a skipping bad-row policy, and rows read in all.
    let skipped = std::cell::RefCell::new((Skipped::default(), 0u64));
    // Files (parts of folders and globs), each encoded, concatenated.
    let read_parts =
        |parts: &[source::Part], format: &crate::ir::CsvFormat, training: bool| -> Result<Dataset, DataError> {
            let mut all = Dataset::default();
            for part in parts {
                let p = part.path.as_path();
                let frame = source::read_part(part, format, &needs, true, spec_at, &|r, t| progress(p, r, t))?;
                let ds = encode_by_policy(model, &frame, &data.bad_rows, training, &mut skipped.borrow_mut())?;
                all.extend(ds);
            }
            Ok(all)
        };
    let describe = |parts: &[source::Part]| -> String {
        match parts {
            [one] => one.path.display().to_string(),
            [first, .., last] => format!("{} files, {} .. {}", parts.len(), first.path.display(), last.path.display()),
            [] => String::new(),
        }
    };
    let (all, validation, test) = match source::training_files(data, train_override)? {
        None => {
            let DataSource::Synthetic(s) = &data.source else { unreachable!("only generated rows have no files") };
            let frame = synthetic::generate(model, s, s.rows);
            info.source = frame.origin.name.clone();
            let ds = encode_training(model, &frame)?;
            if matches!(s.kind, SyntheticKind::Mmoe { .. }) && ds.labels.len() == 2 {
                info.label_correlation = Some(synthetic::pearson(&ds.labels[0], &ds.labels[1]));
            }
            (ds, None, None)
        }
        Some((train_parts, window_validation, format)) => {
            info.source = describe(&train_parts);
            let all = match data.stream {
                // Read each epoch; only validation and test are loaded here.
                Some(config) => {
                    if train_parts.is_empty() {
                        return Err(DataError::Other("no training files to stream".into()));
                    }
                    let s = stream::Stream::new(
                        model,
                        train_parts.clone(),
                        format.clone(),
                        config,
                        data.bad_rows.clone(),
                        spec_at,
                    );
                    streamed = Some(s);
                    info.streamed = Some(config.shuffle_buffer);
                    Dataset::default()
                }
                None => read_parts(&train_parts, &format, true)?,
            };
            // The spec's validation and test files; not used with --data.
            let (validation_file, test_file) = match (&data.source, train_override) {
                (DataSource::Csv(c), None) => (c.validation.as_deref(), c.test.as_deref()),
                _ => (None, None),
            };
            let validation_parts = match validation_file {
                Some(v) => Some(source::expand(v)?),
                None if !window_validation.is_empty() => Some(window_validation),
                None => None,
            };
            let test_parts = test_file.map(source::expand).transpose()?;
            match data.stream {
                // Streamed training: validation and test stream too, read once here to
                // count their rows and labels and check their bad rows.
                Some(config) => {
                    let survey = |parts: Vec<source::Part>| {
                        let s =
                            stream::Stream::new(model, parts, format.clone(), config, data.bad_rows.clone(), spec_at);
                        StreamedSplit::survey(model, s, &mut skipped.borrow_mut())
                    };
                    validation_stream = validation_parts.map(survey).transpose()?;
                    test_stream = test_parts.map(survey).transpose()?;
                    // The held splits are empty.
                    (all, validation_stream.as_ref().map(|_| Dataset::default()), None)
                }
                None => {
                    let validation = validation_parts.map(|p| read_parts(&p, &format, false)).transpose()?;
                    let test = test_parts.map(|p| read_parts(&p, &format, false)).transpose()?;
                    (all, validation, test)
                }
            }
        }
    };
    let (bad, read) = skipped.into_inner();
    check_bad_rows(&data.bad_rows, &bad, read)?;
    info.skipped = bad;
    info.warn_skipped = data.bad_rows.policy == crate::ir::BadRowPolicy::Warn;
    info.rows_read = read;
    let seed = match &data.source {
        crate::ir::DataSource::Synthetic(s) => s.seed,
        _ => 0,
    };
    let (rest, test) = match test {
        Some(t) => (all, Some(t)),
        None if data.test_fraction > 0.0 => {
            let (rest, t) = split(all, data.test_fraction, seed, "test-split");
            (rest, Some(t))
        }
        None => (all, None),
    };
    let (train, validation) = match validation {
        Some(v) => (rest, v),
        None if streamed.is_some() => {
            return Err(DataError::Other(
                "streamed training data needs a validation file (or a date window): a held-out share of a stream would have to be held in memory".into(),
            ))
        }
        None => {
            let frac = data.validation_fraction / (1.0 - data.test_fraction);
            split(rest, frac, seed, "validation-split")
        }
    };
    let splits = Splits { train, validation, test, stream: streamed, validation_stream, test_stream };
    info.labels = label_spread(model, &splits);
    Ok((splits, info))
}
