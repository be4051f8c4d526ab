//! A spec against its data files, in a second: every column the model reads is looked
//! up in each file's header (no rows are read), so a misspelled column is found before
//! anything loads. `multigate check` runs it whenever the spec's files exist;
//! `check --data` then loads everything as training would.

use std::path::{Path, PathBuf};

use super::{needs, DataError, Need};
use crate::ir::{CsvFormat, DataConfig, DataSource, Model};

/// A column the model reads that one or more files lack.
#[derive(Debug, Clone)]
pub struct Absent {
    pub need: Need,
    pub files: Vec<PathBuf>,
    /// "did you mean `x`?" against the first such file's header.
    pub suggestion: Option<String>,
}

/// The data files a run reads, with their format: the training files (or
/// `train_override`), then validation and test. A synthetic spec reads none.
pub fn files(data: &DataConfig, train_override: Option<&Path>) -> Vec<(PathBuf, CsvFormat)> {
    match (&data.source, train_override) {
        (DataSource::Csv(c), over) => {
            let train: Vec<PathBuf> = over.map_or_else(|| c.train.clone(), |p| vec![p.to_path_buf()]);
            train.into_iter().chain(c.validation.clone()).chain(c.test.clone()).map(|p| (p, c.format.clone())).collect()
        }
        (DataSource::Synthetic(_), Some(p)) => vec![(p.to_path_buf(), CsvFormat::default_csv())],
        (DataSource::Synthetic(_), None) => Vec::new(),
    }
}

/// Every column of `model` missing from a data file's header, once per column.
pub fn absent_columns(
    model: &Model,
    data: &DataConfig,
    train_override: Option<&Path>,
) -> Result<Vec<Absent>, DataError> {
    let wanted = needs(model);
    let mut out = Vec::new();
    let mut parts = Vec::new();
    for (path, format) in files(data, train_override) {
        parts.extend(super::source::expand(&path)?.into_iter().map(|p| (p, format.clone())));
    }
    for (part, format) in parts {
        let header = super::source::header(&part, &format)?;
        let file = part.path.clone();
        for need in &wanted {
            if header.contains(&need.column) {
                continue;
            }
            match out.iter_mut().find(|a: &&mut Absent| a.need.column == need.column) {
                Some(a) if a.files.contains(&file) => {}
                Some(a) => a.files.push(file.clone()),
                None => out.push(Absent {
                    need: need.clone(),
                    files: vec![file.clone()],
                    suggestion: crate::diag::did_you_mean(&need.column, header.iter().map(String::as_str)),
                }),
            }
        }
    }
    Ok(out)
}
