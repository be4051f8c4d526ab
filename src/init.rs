//! `multigate init DATA --label COL ...`: a starting spec written from a data file's
//! header and rows, so a CSV becomes a training run in two commands.
//!
//! Every column is read as text and looked at once:
//! - a label column becomes a task: two values make a binary task (its `positive` the
//!   rarer value, or `1` for 0/1 labels; `--label COL=VALUE` names it), numbers with
//!   more values a regression (`log1p` when the values are counts with a heavy tail),
//!   a few strings a multiclass task;
//! - a numeric column with many distinct values becomes a dense feature, `log1p` for
//!   heavy-tailed counts, else `zscore` with its statistics left to the fit pass;
//! - everything else becomes a hashed categorical feature, with the smallest power-of-two
//!   bucket count at least twice the distinct values in which none of the values seen
//!   collide, and an embedding width growing with the distinct values.
//!
//! One MMoE layer and a tower per task follow (the MMoE paper's census setup).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::data::{csv_source, hash::hash_bucket, ColumnKind, DataError, Need, NeedOwner};
use crate::ir::CsvFormat;

/// What `init` is told.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    pub data: PathBuf,
    /// Label columns, each with an optional positive value (`COL=VALUE`).
    pub labels: Vec<(String, Option<String>)>,
    /// Columns that are not inputs (ids, weights, leaks).
    pub ignore: Vec<String>,
    /// Column names for a file without a header.
    pub columns: Vec<String>,
    pub delimiter: u8,
    pub validation: Option<PathBuf>,
    pub test: Option<PathBuf>,
    /// The folder the spec will be written to: data paths are written relative to it.
    pub spec_dir: PathBuf,
    pub name: String,
}

/// A column's inferred role, for the summary `init` prints.
#[derive(Debug, Clone, PartialEq)]
pub struct Inferred {
    pub column: String,
    pub role: String,
}

/// A numeric column with at most this many distinct values is treated as a code
/// (categorical); above it, as a quantity.
pub const MAX_CODES: usize = 64;

/// Statistics of one column read as text.
struct Profile {
    /// Distinct non-empty values and their counts.
    counts: HashMap<String, usize>,
    rows: usize,
    /// Every non-empty value parses as a number.
    numeric: bool,
    /// Every number is a whole number.
    integer: bool,
    min: f64,
    skew: f64,
}

fn profile(dict: &[String], codes: &[u32], missing: Option<&str>) -> Profile {
    let mut per_code = vec![0usize; dict.len()];
    for &c in codes {
        per_code[c as usize] += 1;
    }
    let mut counts = HashMap::new();
    let (mut numeric, mut integer) = (true, true);
    let mut values: Vec<(f64, usize)> = Vec::new();
    for (v, &n) in dict.iter().zip(&per_code) {
        if n == 0 || v.is_empty() || Some(v.as_str()) == missing {
            continue;
        }
        counts.insert(v.clone(), n);
        match csv_source::parse_number(v) {
            Ok(x) => {
                integer &= x.fract() == 0.0;
                values.push((x as f64, n));
            }
            Err(_) => numeric = false,
        }
    }
    let total: usize = values.iter().map(|(_, n)| n).sum();
    let mean = values.iter().map(|(x, n)| x * *n as f64).sum::<f64>() / total.max(1) as f64;
    let m2 = values.iter().map(|(x, n)| (x - mean).powi(2) * *n as f64).sum::<f64>() / total.max(1) as f64;
    let m3 = values.iter().map(|(x, n)| (x - mean).powi(3) * *n as f64).sum::<f64>() / total.max(1) as f64;
    let skew = if m2 > 0.0 { m3 / m2.powf(1.5) } else { 0.0 };
    let min = values.iter().map(|(x, _)| *x).fold(f64::INFINITY, f64::min);
    Profile { counts, rows: codes.len(), numeric: numeric && !values.is_empty(), integer, min, skew }
}

/// Heavy-tailed non-negative values (counts of money, durations): `log1p`.
fn heavy_tailed(p: &Profile) -> bool {
    p.min >= 0.0 && p.skew > 2.0
}

/// The smallest power-of-two bucket count, at least twice the distinct values, in which
/// the values seen do not collide (up to 64 times the distinct values).
pub fn collision_free_buckets(feature: &str, values: &[&str]) -> usize {
    let n = values.len().max(1);
    let mut buckets = (2 * n).next_power_of_two();
    while buckets < 64 * n {
        let mut seen = std::collections::HashSet::with_capacity(n);
        if values.iter().all(|v| seen.insert(hash_bucket(feature, v, buckets))) {
            break;
        }
        buckets *= 2;
    }
    buckets
}

/// Embedding width for `n` distinct values: 4 up to a hundred, then growing with the
/// fourth root (the usual rule of thumb), at most 32.
/// A text column that holds several `|`-separated values per row: its distinct values
/// (sorted) and the bag length that keeps 95% of the rows whole.
pub struct BagProfile {
    pub values: Vec<String>,
    pub max_len: usize,
}

/// Whether a column reads as a bag: at least a tenth of its non-empty cells hold more
/// than one `|`-separated value. Counts come from the interned cells (each split once).
pub fn bag_profile(dict: &[String], codes: &[u32]) -> Option<BagProfile> {
    let sep = crate::lower::DEFAULT_SEPARATOR;
    let lens: Vec<usize> = dict.iter().map(|cell| crate::data::bag_values(cell, sep).count()).collect();
    let non_empty: Vec<usize> = codes.iter().map(|&c| lens[c as usize]).filter(|&n| n > 0).collect();
    let several = non_empty.iter().filter(|&&n| n > 1).count();
    if non_empty.is_empty() || several * 10 < non_empty.len() {
        return None;
    }
    let mut sorted = non_empty;
    sorted.sort_unstable();
    let p95 = sorted[(sorted.len() * 95).div_ceil(100).clamp(1, sorted.len()) - 1];
    let values: Vec<String> = dict
        .iter()
        .flat_map(|cell| crate::data::bag_values(cell, sep))
        .map(str::to_string)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    Some(BagProfile { values, max_len: p95.clamp(2, crate::lower::MAX_BAG as usize) })
}

pub fn embedding_dim(n: usize) -> usize {
    if n <= 100 {
        4
    } else {
        ((6.0 * (n as f64).powf(0.25)).round() as usize).clamp(4, 32)
    }
}

/// A name the spec accepts in both syntaxes: letters, digits and `_`.
pub fn spec_name(column: &str) -> String {
    let mut s: String = column.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    if !s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') {
        s.insert(0, '_');
    }
    s
}

fn quote(s: &str) -> String {
    // A JSON string is a TOML basic string for everything serde_json escapes.
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

/// `path` as written in a spec in `dir`: relative to it when both are under one root.
fn relative_to(path: &Path, dir: &Path) -> String {
    let (Ok(p), Ok(d)) = (std::fs::canonicalize(path), std::fs::canonicalize(dir)) else {
        return path.display().to_string();
    };
    let common = p.components().zip(d.components()).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in d.components().skip(common) {
        out.push("..");
    }
    for c in p.components().skip(common) {
        out.push(c);
    }
    out.display().to_string()
}

/// Reads `opts.data` and writes a starting spec (TOML) for it, with what was inferred
/// for each column.
pub fn init(opts: &InitOptions) -> Result<(String, Vec<Inferred>), DataError> {
    let header_given = opts.columns.is_empty();
    let format = CsvFormat {
        delimiter: opts.delimiter,
        header: header_given,
        columns: opts.columns.clone(),
        missing: None,
        skip_bad_rows: false,
    };
    let first = crate::data::source::expand(&opts.data)?.into_iter().next();
    let header = match &first {
        Some(part) => crate::data::source::header(part, &format)?,
        None => Vec::new(),
    };
    for (l, _) in &opts.labels {
        if !header.contains(l) {
            let hint = crate::diag::did_you_mean(l, header.iter().map(String::as_str)).unwrap_or_default();
            return Err(DataError::Other(format!("--label {l}: no such column in {} {hint}", opts.data.display())));
        }
    }
    if opts.labels.is_empty() {
        return Err(DataError::Other("name at least one label column: --label COLUMN (or COLUMN=POSITIVE)".into()));
    }
    let needs: Vec<Need> = header
        .iter()
        .filter(|c| !opts.ignore.contains(c))
        .map(|c| Need {
            column: c.clone(),
            kind: ColumnKind::Cat,
            reader: format!("column `{c}`"),
            owner: NeedOwner::Caller,
            is_label: false,
            separator: None,
        })
        .collect();
    let frame = crate::data::source::read_path(&opts.data, &format, &needs, true, &|n| n.reader.clone())?;

    let mut inferred = Vec::new();
    let mut features = String::new();
    // (label column, its table): written in the order of --label.
    let mut tasks: Vec<(String, String)> = Vec::new();
    for need in &needs {
        let column = &need.column;
        let Some(crate::data::Column::Cat { dict, codes }) = frame.column_as(column, false) else { continue };
        let p = profile(dict, codes, None);
        let name = spec_name(column);
        let column_key = if name == *column { String::new() } else { format!("column = {}\n", quote(column)) };
        if let Some((_, positive)) = opts.labels.iter().find(|(l, _)| l == column) {
            let mut by_count: Vec<(&String, &usize)> = p.counts.iter().collect();
            by_count.sort_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(b.0)));
            let (kind, extra, role) = match positive {
                Some(v) => {
                    if !p.counts.contains_key(v) {
                        return Err(DataError::Other(format!(
                            "--label {column}={v}: the value `{v}` does not occur in the column"
                        )));
                    }
                    ("binary", format!("positive = {}\n", quote(v)), format!("binary task, positive `{v}`"))
                }
                None if p.counts.len() == 2 && p.numeric && p.counts.keys().all(|k| k == "0" || k == "1") => {
                    ("binary", String::new(), "binary task (0/1)".to_string())
                }
                None if p.counts.len() == 2 => {
                    let rare = by_count[0].0;
                    ("binary", format!("positive = {}\n", quote(rare)), format!("binary task, positive `{rare}` (the rarer value)"))
                }
                None if p.numeric && p.counts.len() > 2 => {
                    if heavy_tailed(&p) {
                        ("regression", "transform = \"log1p\"\n".to_string(), "regression task (log1p: heavy-tailed)".into())
                    } else {
                        ("regression", String::new(), "regression task".to_string())
                    }
                }
                None if p.counts.len() > 2 && p.counts.len() <= 32 => {
                    ("multiclass", String::new(), format!("multiclass task ({} classes)", p.counts.len()))
                }
                None => {
                    return Err(DataError::Other(format!(
                        "--label {column}: {} distinct values, neither two classes, numbers, nor a few classes; name the positive value with --label {column}=VALUE",
                        p.counts.len()
                    )))
                }
            };
            tasks.push((
                column.clone(),
                format!(
                    "\n[[tasks]]\nname = {}\nkind = \"{kind}\"\nlabel = {}\n{extra}tower = [8]\n",
                    quote(&name),
                    quote(column)
                ),
            ));
            inferred.push(Inferred { column: column.clone(), role });
            continue;
        }
        if p.counts.is_empty() {
            inferred.push(Inferred { column: column.clone(), role: "skipped: always empty".into() });
            continue;
        }
        if p.counts.len() == 1 {
            inferred.push(Inferred { column: column.clone(), role: "skipped: one value only".into() });
            continue;
        }
        if let Some(bag) = (format.delimiter != b'|').then(|| bag_profile(dict, codes)).flatten() {
            if bag.values.iter().all(|v| v.parse::<f64>().is_ok()) {
                let role = "skipped: several numbers per row (a bag's weights? name it in that bag's `weights`)";
                inferred.push(Inferred { column: column.clone(), role: role.into() });
                continue;
            }
            let values: Vec<&str> = bag.values.iter().map(String::as_str).collect();
            let buckets = collision_free_buckets(&name, &values);
            let dim = embedding_dim(values.len());
            features += &format!(
                "\n[[features]]\nname = {}\n{column_key}type = \"categorical\"\nhash_buckets = {buckets}\nembedding_dim = {dim}\nmax_len = {}\npooling = \"mean\"\n",
                quote(&name),
                bag.max_len
            );
            inferred.push(Inferred {
                column: column.clone(),
                role: format!(
                    "multi-valued categorical (`|`-separated), {} distinct values, up to {} per row (95th percentile) -> {buckets} buckets, embedding {dim}, mean pooling",
                    values.len(),
                    bag.max_len
                ),
            });
            continue;
        }
        if p.numeric && !(p.integer && p.counts.len() <= MAX_CODES) {
            let (transform, role) = if heavy_tailed(&p) {
                ("log1p", format!("dense, log1p (skew {:.1}, min {})", p.skew, p.min))
            } else {
                ("zscore", "dense, zscore (mean and std fitted on the training rows)".to_string())
            };
            features += &format!(
                "\n[[features]]\nname = {}\n{column_key}type = \"dense\"\ntransform = \"{transform}\"\n",
                quote(&name)
            );
            inferred.push(Inferred { column: column.clone(), role });
        } else {
            let mut values: Vec<&str> = p.counts.keys().map(String::as_str).collect();
            values.sort_unstable();
            let buckets = collision_free_buckets(&name, &values);
            let dim = embedding_dim(values.len());
            features += &format!(
                "\n[[features]]\nname = {}\n{column_key}type = \"categorical\"\nhash_buckets = {buckets}\nembedding_dim = {dim}\n",
                quote(&name)
            );
            let missing = p.rows - p.counts.values().sum::<usize>();
            inferred.push(Inferred {
                column: column.clone(),
                role: format!(
                    "categorical, {} distinct{} -> {buckets} buckets, embedding {dim}",
                    values.len(),
                    if missing > 0 { format!(" (+{missing} empty)") } else { String::new() }
                ),
            });
        }
    }
    for c in &opts.ignore {
        inferred.push(Inferred { column: c.clone(), role: "ignored (--ignore)".into() });
    }

    let tasks: String =
        opts.labels.iter().filter_map(|(l, _)| tasks.iter().find(|(c, _)| c == l).map(|(_, t)| t.as_str())).collect();
    let mut data =
        format!("\n[data]\nsource = \"csv\"\ntrain = [{}]\n", quote(&relative_to(&opts.data, &opts.spec_dir)));
    if let Some(v) = &opts.validation {
        data += &format!("validation = {}\n", quote(&relative_to(v, &opts.spec_dir)));
    }
    if let Some(t) = &opts.test {
        data += &format!("test = {}\n", quote(&relative_to(t, &opts.spec_dir)));
    }
    if opts.delimiter != b',' {
        data += &format!("delimiter = {}\n", quote(&(opts.delimiter as char).to_string()));
    }
    if !header_given {
        let cols: Vec<String> = opts.columns.iter().map(|c| quote(c)).collect();
        data += &format!("header = false\ncolumns = [{}]\n", cols.join(", "));
    }
    let text = format!(
        "# Written by `multigate init` from {} ({} rows): check the roles below, then\n\
         # `multigate compile-and-train` this file.\n\n[model]\nname = {}\n{data}{features}\n\
         [[layers]]\nkind = \"mmoe\"\nexperts = 8\nunits = [16]\nactivation = \"relu\"\n{tasks}\n\
         [train]\noptimizer = \"adam\"\nlr = 0.001\nbatch_size = 512\nepochs = 10\nseed = 42\n",
        opts.data.display(),
        frame.rows,
        quote(&opts.name),
    );
    Ok((text, inferred))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_counts_leave_the_seen_values_apart() {
        let values: Vec<String> = (0..50).map(|i| format!("v{i}")).collect();
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        let b = collision_free_buckets("f", &refs);
        assert!(b >= 100 && b.is_power_of_two());
        let rows: std::collections::HashSet<u32> = refs.iter().map(|v| hash_bucket("f", v, b)).collect();
        assert_eq!(rows.len(), 50);
    }

    #[test]
    fn names_become_spec_names() {
        assert_eq!(spec_name("age"), "age");
        assert_eq!(spec_name("site id"), "site_id");
        assert_eq!(spec_name("3rd"), "_3rd");
    }
}
