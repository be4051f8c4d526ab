//! Label statistics a spec leaves open, fitted on the training rows before the model
//! is built: the classes of a multiclass task (sorted distinct labels) and the mean
//! and standard deviation of a standardized regression label. The caller pins them
//! into the spec, so a bundle's spec carries them and predicts without data.
//!
//! They are fitted on the training file(s) (or the generated rows) before any held-out
//! fraction is split off.

use super::{csv_source, needs, synthetic, Column, DataError, Frame, Need};
use crate::ir::{DataConfig, DataSource, Head, LabelTransform, Model};

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
pub fn fit_labels(
    model: &Model,
    data: &DataConfig,
    train_override: Option<&std::path::Path>,
    spec_at: &dyn Fn(&Need) -> String,
) -> Result<Vec<FittedLabel>, DataError> {
    let open = open_labels(model);
    if open.is_empty() {
        return Ok(Vec::new());
    }
    let columns: Vec<String> =
        open.iter().filter_map(|&t| model.tasks[t].label.as_ref()).map(|l| l.column.clone()).collect();
    let wanted: Vec<Need> = needs(model).into_iter().filter(|n| n.is_label && columns.contains(&n.column)).collect();
    let frames = training_frames(model, data, train_override, &wanted, spec_at)?;
    fit_on_frames(model, &frames)
}

/// The training rows of `data` (before any held-out split), the columns `wanted` only:
/// the generator's rows, the spec's training files, or `train_override`.
pub fn training_frames(
    model: &Model,
    data: &DataConfig,
    train_override: Option<&std::path::Path>,
    wanted: &[Need],
    spec_at: &dyn Fn(&Need) -> String,
) -> Result<Vec<Frame>, DataError> {
    match (&data.source, train_override) {
        (DataSource::Synthetic(s), None) => Ok(vec![synthetic::generate(model, s, s.rows)]),
        (DataSource::Csv(c), over) => {
            let files: Vec<std::path::PathBuf> = match over {
                Some(p) => vec![p.to_path_buf()],
                None => c.train.clone(),
            };
            files.iter().map(|f| csv_source::read_csv(f, &c.format, wanted, true, spec_at)).collect()
        }
        (DataSource::Synthetic(_), Some(p)) => {
            let format = crate::ir::CsvFormat { delimiter: b',', header: true, columns: Vec::new(), missing: None };
            Ok(vec![csv_source::read_csv(p, &format, wanted, true, spec_at)?])
        }
    }
}

/// Fits every open statistic of `model` on rows already read (`frames`).
pub fn fit_on_frames(model: &Model, frames: &[Frame]) -> Result<Vec<FittedLabel>, DataError> {
    open_labels(model).into_iter().map(|t| fit_task(model, t, frames)).collect()
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
            let (mut n, mut sum, mut sq) = (0usize, 0f64, 0f64);
            for f in frames {
                let Some(Column::Num(v)) = f.column_as(&label.column, true) else {
                    return Err(what("not numeric in the training data".into()));
                };
                for &y in v.iter().filter(|y| y.is_finite()) {
                    n += 1;
                    sum += y as f64;
                    sq += (y as f64) * (y as f64);
                }
            }
            let mean = sum / n.max(1) as f64;
            let std = (sq / n.max(1) as f64 - mean * mean).max(0.0).sqrt();
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
