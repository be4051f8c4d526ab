//! Where rows come from: a data path is a file, a folder, or a glob, and each file is
//! CSV (optionally gzip) or Parquet by its extension. A folder means every data file
//! under it, in path order; folders named `key=value` (Hive partitions, as Spark writes
//! `dt=2026-11-28/part-00000.parquet`) give their files a column `key` holding `value`.
//! A date window (`--cur-date 2026-11-28 --days 7`) keeps the partitions of the last
//! days for training and the next day for validation.

use std::path::{Path, PathBuf};

use super::frame::{Column, Frame, Interner};
use super::{csv_source, parquet_source, DataError, Need};
use crate::ir::{CsvConfig, CsvFormat, DataConfig, DataSource, DateWindow};

/// One file of a dataset and the partition keys its path carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub path: PathBuf,
    pub keys: Vec<(String, String)>,
}

/// How a file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Csv,
    Parquet,
}

/// `.parquet` / `.pq` (or `.parq`) files are Parquet; everything else CSV.
pub fn format_of(path: &Path) -> FileFormat {
    match path.extension().and_then(|e| e.to_str()) {
        Some("parquet" | "pq" | "parq") => FileFormat::Parquet,
        _ => FileFormat::Csv,
    }
}

/// Files a folder walk skips: hidden ones, Spark's `_SUCCESS` and other `_` markers,
/// checksums.
fn is_data_file(name: &str) -> bool {
    !(name.starts_with('.') || name.starts_with('_') || name.ends_with(".crc"))
}

/// `key=value` of a Hive partition folder.
fn partition_key(component: &str) -> Option<(String, String)> {
    let (k, v) = component.split_once('=')?;
    (!k.is_empty()).then(|| (k.to_string(), v.to_string()))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let open = |source| DataError::Open { path: dir.display().to_string(), source };
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).map_err(open)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        if !is_data_file(&name) {
            continue;
        }
        if p.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// Whether `name` matches a glob pattern of `*` and `?`.
fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

fn has_wildcard(s: &str) -> bool {
    s.contains('*') || s.contains('?')
}

/// The partition keys a path carries: every `key=value` component.
fn keys_of(path: &Path) -> Vec<(String, String)> {
    path.components().filter_map(|c| partition_key(&c.as_os_str().to_string_lossy())).collect()
}

/// The files of a data path: the file itself, every data file under a folder, or the
/// matches of a glob (`*` and `?`, in any component; a matched folder means the files
/// under it). Each file's `key=value` path components are its partition keys. An empty
/// result is an error.
pub fn expand(path: &Path) -> Result<Vec<Part>, DataError> {
    let text = path.to_string_lossy().to_string();
    let none_found = |why: &str| DataError::Open {
        path: text.clone(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, why.to_string()),
    };
    let mut files = Vec::new();
    if has_wildcard(&text) {
        let mut bases = vec![PathBuf::new()];
        for comp in path.components() {
            let c = comp.as_os_str().to_string_lossy().to_string();
            if !has_wildcard(&c) {
                bases.iter_mut().for_each(|b| b.push(&c));
                continue;
            }
            let mut next = Vec::new();
            for base in &bases {
                let dir = if base.as_os_str().is_empty() { PathBuf::from(".") } else { base.clone() };
                let Ok(entries) = std::fs::read_dir(&dir) else { continue };
                let mut names: Vec<String> =
                    entries.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string())).collect();
                names.sort();
                next.extend(names.into_iter().filter(|n| is_data_file(n) && glob_match(&c, n)).map(|n| base.join(n)));
            }
            bases = next;
        }
        for p in bases {
            if p.is_dir() {
                walk(&p, &mut files)?;
            } else if p.exists() {
                files.push(p);
            }
        }
        if files.is_empty() {
            return Err(none_found("no file matches the pattern"));
        }
    } else if path.is_dir() {
        walk(path, &mut files)?;
        if files.is_empty() {
            return Err(none_found("the folder holds no data file"));
        }
    } else if path.exists() {
        files.push(path.to_path_buf());
    } else {
        return Err(none_found("No such file or directory"));
    }
    Ok(files.into_iter().map(|p| Part { keys: keys_of(&p), path: p }).collect())
}

/// The column names of one part: its file's, then its partition keys.
pub fn header(part: &Part, csv: &CsvFormat) -> Result<Vec<String>, DataError> {
    let mut h = match format_of(&part.path) {
        FileFormat::Csv => csv_source::read_header(&part.path, csv)?,
        FileFormat::Parquet => parquet_source::read_header(&part.path)?,
    };
    for (k, _) in &part.keys {
        if !h.contains(k) {
            h.push(k.clone());
        }
    }
    Ok(h)
}

/// Reads `needs` from one part: the file by its format, then the partition keys it
/// carries as columns (a key the file also has is the file's).
pub fn read_part(
    part: &Part,
    csv: &CsvFormat,
    needs: &[Need],
    require_labels: bool,
    spec_at: &dyn Fn(&Need) -> String,
    progress: &dyn Fn(u64, u64),
) -> Result<Frame, DataError> {
    super::frame::one_chunk(&part.path, |n, sink| {
        read_part_chunks(part, csv, needs, require_labels, spec_at, progress, n, sink)
    })
}

/// [`read_part`] in chunks of about `chunk_rows` rows, each handed to `sink` (the
/// partition keys added to each).
#[allow(clippy::too_many_arguments)]
pub fn read_part_chunks(
    part: &Part,
    csv: &CsvFormat,
    needs: &[Need],
    require_labels: bool,
    spec_at: &dyn Fn(&Need) -> String,
    progress: &dyn Fn(u64, u64),
    chunk_rows: usize,
    sink: &mut dyn FnMut(Frame) -> Result<(), DataError>,
) -> Result<(), DataError> {
    let from_keys = |n: &Need| part.keys.iter().any(|(k, _)| *k == n.column);
    let file_header = match part.keys.is_empty() {
        true => None,
        false => Some(header(&Part { path: part.path.clone(), keys: Vec::new() }, csv)?),
    };
    // Columns only the path holds are not asked of the file.
    let of_file: Vec<Need> = needs
        .iter()
        .filter(|n| !(from_keys(n) && file_header.as_ref().is_some_and(|h| !h.contains(&n.column))))
        .cloned()
        .collect();
    let mut with_keys = |mut frame: Frame| -> Result<(), DataError> {
        add_keys(part, needs, &of_file, &mut frame)?;
        sink(frame)
    };
    match format_of(&part.path) {
        FileFormat::Csv => csv_source::read_csv_chunks(
            &part.path,
            csv,
            &of_file,
            require_labels,
            spec_at,
            progress,
            chunk_rows,
            &mut with_keys,
        ),
        FileFormat::Parquet => parquet_source::read_parquet_chunks(
            &part.path,
            &of_file,
            require_labels,
            csv.skip_bad_rows,
            spec_at,
            progress,
            chunk_rows,
            &mut with_keys,
        ),
    }
}

/// The columns of `needs` the file did not give (`of_file` are those it did), from the
/// partition keys of its path.
fn add_keys(part: &Part, needs: &[Need], of_file: &[Need], frame: &mut Frame) -> Result<(), DataError> {
    for need in needs.iter().filter(|n| !of_file.contains(n)) {
        let Some((_, value)) = part.keys.iter().find(|(k, _)| *k == need.column) else { continue };
        let column = match need.kind {
            super::ColumnKind::Cat => {
                let mut i = Interner::default();
                for _ in 0..frame.rows {
                    i.push(value);
                }
                i.finish()
            }
            super::ColumnKind::Num => {
                let x = csv_source::parse_number(value).map_err(|problem| DataError::BadValue {
                    at: part.path.display().to_string(),
                    column: need.column.clone(),
                    problem: format!("partition value {problem}"),
                })?;
                Column::Num(vec![x; frame.rows])
            }
        };
        frame.names.push(need.column.clone());
        frame.columns.push(column);
    }
    Ok(())
}

/// Reads every part of a data path into one frame (rows in part order).
pub fn read_path(
    path: &Path,
    csv: &CsvFormat,
    needs: &[Need],
    require_labels: bool,
    spec_at: &dyn Fn(&Need) -> String,
) -> Result<Frame, DataError> {
    let mut frame = Frame::default();
    for part in expand(path)? {
        let f = read_part(&part, csv, needs, require_labels, spec_at, &|_, _| {})?;
        frame.append(f).map_err(DataError::Other)?;
    }
    Ok(frame)
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` or `YYYYMMDD` date.
pub fn parse_date(s: &str) -> Option<i64> {
    let digits: String = s.chars().filter(|c| *c != '-').collect();
    if digits.len() != 8 || !digits.chars().all(|c| c.is_ascii_digit()) || (s.len() != 8 && s.len() != 10) {
        return None;
    }
    let (y, m, d): (i64, i64, i64) = (digits[..4].parse().ok()?, digits[4..6].parse().ok()?, digits[6..].parse().ok()?);
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Splits `parts` into (training, validation) by the date of their `w.key` partition:
/// the `w.days` days up to `w.cur` train, the day after validates, the rest is left
/// out. A part without the key, or whose value is not a date, is an error: a window
/// over it would silently drop or keep rows.
pub fn split_by_date(w: &DateWindow, parts: Vec<Part>) -> Result<(Vec<Part>, Vec<Part>), DataError> {
    let cur = parse_date(&w.cur)
        .ok_or_else(|| DataError::Other(format!("cur_date {}: expected a date such as 2026-11-28", w.cur)))?;
    let (mut train, mut validation) = (Vec::new(), Vec::new());
    for p in parts {
        let value = p.keys.iter().find(|(k, _)| *k == w.key).map(|(_, v)| v.clone()).ok_or_else(|| {
            DataError::Other(format!(
                "{}: not under a `{}=DATE` partition folder, so the date window cannot place it",
                p.path.display(),
                w.key
            ))
        })?;
        let day = parse_date(&value).ok_or_else(|| {
            DataError::Other(format!("{}: partition {}={value} is not a date", p.path.display(), w.key))
        })?;
        if day > cur - w.days as i64 && day <= cur {
            train.push(p);
        } else if day == cur + 1 {
            validation.push(p);
        }
    }
    if train.is_empty() {
        return Err(DataError::Other(format!("no `{}` partition within the {} day(s) up to {}", w.key, w.days, w.cur)));
    }
    Ok((train, validation))
}

/// The training parts of a run and the CSV format they are read with: the spec's files
/// (the date window applied, its validation day second) or `train_override` (plain CSV
/// with a header, or Parquet, for a synthetic spec); `None` for generated rows.
pub fn training_files(
    data: &DataConfig,
    train_override: Option<&Path>,
) -> Result<Option<(Vec<Part>, Vec<Part>, CsvFormat)>, DataError> {
    match (&data.source, train_override) {
        (DataSource::Csv(c), over) => {
            let (train, window) = training_parts(c, over)?;
            Ok(Some((train, window, c.format.clone())))
        }
        (DataSource::Synthetic(_), Some(p)) => Ok(Some((expand(p)?, Vec::new(), CsvFormat::default_csv()))),
        (DataSource::Synthetic(_), None) => Ok(None),
    }
}

/// The training parts of a CSV/Parquet config (or of `train_override`), and the
/// validation parts its date window picks (empty without a window).
pub fn training_parts(c: &CsvConfig, train_override: Option<&Path>) -> Result<(Vec<Part>, Vec<Part>), DataError> {
    let paths: Vec<PathBuf> = train_override.map_or_else(|| c.train.clone(), |p| vec![p.to_path_buf()]);
    if paths.is_empty() {
        return Err(DataError::Other(
            "the spec names no training file: set [data] train = [\"...\"] or pass --data".into(),
        ));
    }
    let mut parts = Vec::new();
    for p in &paths {
        parts.extend(expand(p)?);
    }
    match (&c.window, train_override) {
        (Some(w), None) => split_by_date(w, parts),
        _ => Ok((parts, Vec::new())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_a_shell() {
        assert!(glob_match("part-*.parquet", "part-0001.parquet"));
        assert!(glob_match("dt=2026-11-2?", "dt=2026-11-28"));
        assert!(!glob_match("*.csv", "a.csv.gz"));
        assert!(glob_match("*", "anything"));
    }

    #[test]
    fn dates_count_days() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2026-03-01").unwrap() - parse_date("2026-02-28").unwrap(), 1);
        assert_eq!(parse_date("2024-03-01").unwrap() - parse_date("2024-02-28").unwrap(), 2);
        assert_eq!(parse_date("20261128"), parse_date("2026-11-28"));
        assert_eq!(parse_date("2026-02-30"), None);
        assert_eq!(parse_date("tomorrow"), None);
    }
}
