//! CSV source: reads only the needed columns of one or more files (optionally
//! gzip-compressed) into a [`Frame`]. Whitespace around fields is trimmed, so the
//! census files' "comma + space" format reads as plain CSV.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use super::frame::{Column, Frame, Interner, Origin};
use super::{ColumnKind, DataError, Need};
use crate::ir::CsvFormat;

fn open(path: &Path) -> Result<Box<dyn Read>, DataError> {
    let file = File::open(path).map_err(|source| DataError::Open { path: path.display().to_string(), source })?;
    let reader = BufReader::with_capacity(1 << 20, file);
    if path.extension().is_some_and(|e| e == "gz") {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(reader)))
    } else {
        Ok(Box::new(reader))
    }
}

enum Builder {
    Num(Vec<f32>),
    Cat(Interner),
}

/// Reads `needs` from a CSV file. Label columns the file lacks are an error when
/// `require_labels`, else skipped. `spec_at` names where the spec asks for a column.
pub fn read_csv(
    path: &Path,
    format: &CsvFormat,
    needs: &[Need],
    require_labels: bool,
    spec_at: &dyn Fn(&Need) -> String,
) -> Result<Frame, DataError> {
    let shown = path.display().to_string();
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(format.delimiter)
        .has_headers(format.header)
        .trim(csv::Trim::All)
        .flexible(false)
        .from_reader(open(path)?);
    let header: Vec<String> = if format.header {
        rdr.headers()
            .map_err(|e| DataError::BadRow { at: format!("{shown}:1"), problem: e.to_string() })?
            .iter()
            .map(str::to_string)
            .collect()
    } else {
        format.columns.clone()
    };

    let mut names: Vec<String> = Vec::new();
    let mut kinds: Vec<ColumnKind> = Vec::new();
    let mut slots = Vec::new();
    let mut builders = Vec::new();
    for need in needs {
        if names.iter().zip(&kinds).any(|(n, k)| *n == need.column && *k == need.kind) {
            continue;
        }
        match header.iter().position(|h| *h == need.column) {
            Some(i) => {
                names.push(need.column.clone());
                kinds.push(need.kind);
                slots.push(i);
                builders.push(match need.kind {
                    ColumnKind::Num => Builder::Num(Vec::new()),
                    ColumnKind::Cat => Builder::Cat(Interner::default()),
                });
            }
            None if need.is_label && !require_labels => {}
            None => {
                let mut available = header.join(", ");
                if available.len() > 400 {
                    available.truncate(400);
                    available.push_str(", ...");
                }
                return Err(DataError::MissingColumn {
                    path: shown,
                    column: need.column.clone(),
                    spec_at: spec_at(need),
                    available,
                });
            }
        }
    }

    let mut lines = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        match rdr.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                let problem = match e.kind() {
                    csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
                        format!("expected {expected_len} fields, found {len}")
                    }
                    csv::ErrorKind::Utf8 { .. } => "the row is not valid UTF-8".to_string(),
                    _ => e.to_string(),
                };
                return Err(DataError::BadRow { at: format!("{shown}:{line}"), problem });
            }
        }
        let line = record.position().map_or(0, |p| p.line());
        if !format.header && record.len() != header.len() {
            return Err(DataError::BadRow {
                at: format!("{shown}:{line}"),
                problem: format!("expected {} fields (the spec's `columns`), found {}", header.len(), record.len()),
            });
        }
        lines.push(line);
        for ((b, &slot), name) in builders.iter_mut().zip(&slots).zip(&names) {
            let field = record.get(slot).unwrap_or("");
            match b {
                Builder::Cat(i) => i.push(field),
                Builder::Num(v) => {
                    let is_missing = field.is_empty() || format.missing.as_deref() == Some(field);
                    let x = if is_missing {
                        f32::NAN
                    } else {
                        field.parse::<f32>().map_err(|_| DataError::BadValue {
                            at: format!("{shown}:{line}"),
                            column: name.clone(),
                            problem: format!("`{field}` is not a number"),
                        })?
                    };
                    v.push(x);
                }
            }
        }
    }
    if lines.is_empty() {
        return Err(DataError::NoRows { path: shown });
    }
    let columns = builders
        .into_iter()
        .map(|b| match b {
            Builder::Num(v) => Column::Num(v),
            Builder::Cat(i) => i.finish(),
        })
        .collect();
    Ok(Frame { names, columns, rows: lines.len(), origin: Origin { name: shown, lines } })
}
