//! Parquet files (as Spark and Hive write them) through arrow-rs: only the columns the
//! model reads are decoded, a batch at a time. Types map as a CSV field would read:
//! integers, floats and booleans are numbers (and their decimal text for a categorical);
//! strings, dictionary and view strings are text (parsed strictly when a dense feature
//! reads them); a null is a missing value.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Float64Type;
use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;

use super::csv_source::parse_number;
use super::frame::{Column, Frame, Interner, Origin};
use super::{ColumnKind, DataError, Need};

/// Rows decoded at a time.
const BATCH: usize = 64 * 1024;

fn corrupt(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::BadRow { at: path.display().to_string(), problem: format!("not a readable Parquet file: {e}") }
}

/// The open file and its footer (schema, row groups), read once.
fn open(path: &Path) -> Result<(File, ArrowReaderMetadata), DataError> {
    let file = File::open(path).map_err(|source| DataError::Open { path: path.display().to_string(), source })?;
    let meta = ArrowReaderMetadata::load(&file, ArrowReaderOptions::new()).map_err(|e| corrupt(path, e))?;
    Ok((file, meta))
}

/// The column names of a Parquet file (its top-level fields), without reading rows.
pub fn read_header(path: &Path) -> Result<Vec<String>, DataError> {
    Ok(open(path)?.1.schema().fields().iter().map(|f| f.name().clone()).collect())
}

enum Sink {
    Num(Vec<f32>),
    Cat(Interner),
}

/// Reads `needs` from a Parquet file. Label columns the file lacks are an error when
/// `require_labels`, else skipped; `spec_at` names where the spec asks for a column;
/// `progress` hears (bytes, file size), estimated from the rows decoded.
pub fn read_parquet(
    path: &Path,
    needs: &[Need],
    require_labels: bool,
    skip_bad_rows: bool,
    spec_at: &dyn Fn(&Need) -> String,
    progress: &dyn Fn(u64, u64),
) -> Result<Frame, DataError> {
    super::frame::one_chunk(path, |n, sink| {
        read_parquet_chunks(path, needs, require_labels, skip_bad_rows, spec_at, progress, n, sink)
    })
}

/// [`read_parquet`] in chunks: `sink` gets a frame of about `chunk_rows` rows at a time
/// (whole record batches), so that a file larger than memory can be read.
#[allow(clippy::too_many_arguments)]
pub fn read_parquet_chunks(
    path: &Path,
    needs: &[Need],
    require_labels: bool,
    skip_bad_rows: bool,
    spec_at: &dyn Fn(&Need) -> String,
    progress: &dyn Fn(u64, u64),
    chunk_rows: usize,
    sink: &mut dyn FnMut(Frame) -> Result<(), DataError>,
) -> Result<(), DataError> {
    let shown = path.display().to_string();
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    let (file, meta) = open(path)?;
    let schema = meta.schema().clone();
    let header: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let total_rows = meta.metadata().file_metadata().num_rows().max(0) as u64;

    let mut names: Vec<String> = Vec::new();
    let mut kinds: Vec<ColumnKind> = Vec::new();
    let mut sinks: Vec<Sink> = Vec::new();
    let mut roots: Vec<usize> = Vec::new();
    // Per column: what joins a list cell's values into a bag's text.
    let mut joins: Vec<String> = Vec::new();
    for need in needs {
        if names.iter().zip(&kinds).any(|(n, k)| *n == need.column && *k == need.kind) {
            continue;
        }
        match header.iter().position(|h| *h == need.column) {
            Some(i) => {
                names.push(need.column.clone());
                kinds.push(need.kind);
                joins.push(need.separator.clone().unwrap_or_else(|| crate::ir::DEFAULT_SEPARATOR.to_string()));
                sinks.push(match need.kind {
                    ColumnKind::Num => Sink::Num(Vec::new()),
                    ColumnKind::Cat => Sink::Cat(Interner::default()),
                });
                if !roots.contains(&i) {
                    roots.push(i);
                }
            }
            None if need.is_label && !require_labels => {}
            None => return Err(super::missing_column(&shown, need, &header, spec_at)),
        }
    }
    roots.sort_unstable();
    // Text columns read as categories come as dictionaries (as Spark writes them): each
    // distinct value is interned once per batch, not once per row.
    let as_dictionary: Vec<&str> =
        names.iter().zip(&kinds).filter(|(_, k)| **k == ColumnKind::Cat).map(|(n, _)| n.as_str()).collect();
    let hinted: Vec<arrow_schema::FieldRef> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 if as_dictionary.contains(&f.name().as_str()) => Arc::new(
                f.as_ref()
                    .clone()
                    .with_data_type(DataType::Dictionary(Box::new(DataType::Int32), Box::new(f.data_type().clone()))),
            ),
            _ => f.clone(),
        })
        .collect();
    // The footer already read, with the hinted schema (no second read of the file).
    let options = ArrowReaderOptions::new()
        .with_schema(Arc::new(arrow_schema::Schema::new_with_metadata(hinted, schema.metadata().clone())));
    let meta = ArrowReaderMetadata::try_new(meta.metadata().clone(), options).map_err(|e| corrupt(path, e))?;
    let b = ParquetRecordBatchReaderBuilder::new_with_metadata(file, meta);
    let mask = ProjectionMask::roots(b.parquet_schema(), roots);
    let reader = b.with_projection(mask).with_batch_size(BATCH).build().map_err(|e| corrupt(path, e))?;

    let mut rows = 0usize;
    // The rows of the file before the chunk being read, and the chunk's rows.
    let (mut base, mut emitted) = (0usize, 0usize);
    // Rows of the chunk with a value that is not a number (skipped when `skip_bad_rows`).
    let mut bad: Vec<(usize, String)> = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| DataError::BadRow {
            at: format!("{shown} after row {rows}"),
            problem: format!("cannot decode the next rows: {e}"),
        })?;
        for ((sink, name), join) in sinks.iter_mut().zip(&names).zip(&joins) {
            let array = batch
                .column_by_name(name)
                .ok_or_else(|| DataError::Other(format!("{shown}: column `{name}` vanished from a batch")))?;
            let at = |i: usize| format!("{shown} row {}", rows + i + 1);
            match sink {
                Sink::Num(v) => {
                    let before = v.len();
                    let mut here = Vec::new();
                    push_numbers(v, array, name, &at, skip_bad_rows.then_some(&mut here))?;
                    bad.extend(here.into_iter().map(|(i, p)| (i + rows - base, p)));
                    debug_assert_eq!(v.len() - before, batch.num_rows());
                }
                Sink::Cat(interner) => push_text(interner, array, name, &shown, join)?,
            }
        }
        rows += batch.num_rows();
        if total_rows > 0 {
            progress((rows as u64).saturating_mul(size) / total_rows, size);
        }
        if rows - base >= chunk_rows {
            let frame = chunk_frame(&names, &mut sinks, rows - base, std::mem::take(&mut bad), &shown, base);
            emitted += frame.rows;
            sink(frame)?;
            base = rows;
        }
    }
    progress(size, size);
    if rows > base {
        let frame = chunk_frame(&names, &mut sinks, rows - base, bad, &shown, base);
        emitted += frame.rows;
        sink(frame)?;
    }
    if rows == 0 || (emitted == 0 && !skip_bad_rows) {
        return Err(DataError::NoRows { path: shown });
    }
    Ok(())
}

/// The chunk of `n` rows held in `sinks` as a frame (the sinks start over), rows with
/// a `bad` value (index within the chunk) dropped and counted; the chunk starts after
/// `base` rows of the file.
fn chunk_frame(
    names: &[String],
    sinks: &mut [Sink],
    n: usize,
    bad: Vec<(usize, String)>,
    shown: &str,
    base: usize,
) -> Frame {
    let mut columns: Vec<Column> = sinks
        .iter_mut()
        .map(|s| match s {
            Sink::Num(v) => Column::Num(std::mem::take(v)),
            Sink::Cat(i) => std::mem::take(i).finish(),
        })
        .collect();
    let mut skipped = super::Skipped::default();
    let mut rows = n;
    if !bad.is_empty() {
        let mut drop = vec![false; n];
        for (row, problem) in &bad {
            if !drop[*row] {
                drop[*row] = true;
                skipped.add("unparsable number", &format!("{shown} row {}", base + row + 1), problem);
            }
        }
        for c in &mut columns {
            match c {
                Column::Num(v) => *v = v.iter().zip(&drop).filter(|(_, d)| !**d).map(|(x, _)| *x).collect(),
                Column::Cat { codes, .. } => {
                    *codes = codes.iter().zip(&drop).filter(|(_, d)| !**d).map(|(x, _)| *x).collect()
                }
            }
        }
        rows -= drop.iter().filter(|d| **d).count();
    }
    // Without line numbers, errors name the row of the file (`base` rows before this
    // chunk); skipped rows shift them.
    let origin = Origin { name: shown.to_string(), lines: Vec::new(), later: Vec::new(), first_row: base };
    Frame { names: names.to_vec(), columns, rows, origin, skipped }
}

fn is_text(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, v) => is_text(v),
        _ => false,
    }
}

fn is_number(t: &DataType) -> bool {
    t.is_numeric() || matches!(t, DataType::Boolean) || matches!(t, DataType::Dictionary(_, v) if is_number(v))
}

fn cast(array: &ArrayRef, to: &DataType, name: &str, shown: &str) -> Result<ArrayRef, DataError> {
    arrow_cast::cast(array, to).map_err(|e| {
        DataError::Other(format!("{shown}: column `{name}` of type {} cannot be read: {e}", array.data_type()))
    })
}

fn push_numbers(
    out: &mut Vec<f32>,
    array: &ArrayRef,
    name: &str,
    at: &dyn Fn(usize) -> String,
    mut skip: Option<&mut Vec<(usize, String)>>,
) -> Result<(), DataError> {
    let first_row = out.len();
    let t = array.data_type();
    if is_number(t) {
        let a = cast(array, &DataType::Float64, name, &at(0))?;
        let a = a.as_primitive::<Float64Type>();
        for i in 0..a.len() {
            if a.is_null(i) {
                out.push(f32::NAN);
                continue;
            }
            let x = a.value(i) as f32;
            if !x.is_finite() {
                let problem = format!("{} is not a finite f32", a.value(i));
                match skip.as_deref_mut() {
                    Some(bad) => {
                        bad.push((first_row + i, format!("column `{name}`: {problem}")));
                        out.push(f32::NAN);
                        continue;
                    }
                    None => return Err(DataError::BadValue { at: at(i), column: name.to_string(), problem }),
                }
            }
            out.push(x);
        }
        Ok(())
    } else if is_text(t) {
        let a = cast(array, &DataType::Utf8, name, &at(0))?;
        let a = a.as_string::<i32>();
        for i in 0..a.len() {
            if a.is_null(i) || a.value(i).trim().is_empty() {
                out.push(f32::NAN);
                continue;
            }
            match (parse_number(a.value(i).trim()), skip.as_deref_mut()) {
                (Ok(x), _) => out.push(x),
                (Err(problem), Some(bad)) => {
                    bad.push((first_row + i, format!("column `{name}`: {problem}")));
                    out.push(f32::NAN);
                }
                (Err(problem), None) => {
                    return Err(DataError::BadValue { at: at(i), column: name.to_string(), problem })
                }
            }
        }
        Ok(())
    } else {
        Err(DataError::Other(format!("{}: column `{name}` is {t}, which a dense feature cannot read", at(0))))
    }
}

/// Pushes a column's values as text. A list cell (a bag's values) becomes its values
/// joined with `join`; a null list or value is empty.
fn push_text(out: &mut Interner, array: &ArrayRef, name: &str, shown: &str, join: &str) -> Result<(), DataError> {
    let t = array.data_type();
    if let DataType::List(_) | DataType::LargeList(_) = t {
        let lists = cast(
            array,
            &DataType::List(Arc::new(arrow_schema::Field::new_list_field(DataType::Utf8, true))),
            name,
            shown,
        )?;
        let lists = lists.as_list::<i32>();
        let mut cell = String::new();
        for i in 0..lists.len() {
            cell.clear();
            if !lists.is_null(i) {
                let values = lists.value(i);
                let values = values.as_string::<i32>();
                for j in 0..values.len() {
                    if values.is_null(j) {
                        continue;
                    }
                    if !cell.is_empty() {
                        cell.push_str(join);
                    }
                    cell.push_str(values.value(j).trim());
                }
            }
            out.push(&cell);
        }
        return Ok(());
    }
    if let Some(d) = array.as_any().downcast_ref::<arrow_array::DictionaryArray<arrow_array::types::Int32Type>>() {
        if is_text(d.values().data_type()) {
            let values = cast(d.values(), &DataType::Utf8, name, shown)?;
            let values = values.as_string::<i32>();
            let codes: Vec<u32> = (0..values.len())
                .map(|i| out.intern(if values.is_null(i) { "" } else { values.value(i).trim() }))
                .collect();
            let keys = d.keys();
            for i in 0..keys.len() {
                let code = if keys.is_null(i) { out.intern("") } else { codes[keys.value(i) as usize] };
                out.push_code(code);
            }
            return Ok(());
        }
    }
    if !(is_text(t) || is_number(t)) {
        return Err(DataError::Other(format!("{shown}: column `{name}` is {t}, which cannot be read as a category")));
    }
    let a = cast(array, &DataType::Utf8, name, shown)?;
    let a = a.as_string::<i32>();
    for i in 0..a.len() {
        if a.is_null(i) {
            out.push("");
        } else {
            out.push(a.value(i).trim());
        }
    }
    Ok(())
}

/// Writes `frame` as one Parquet file (numbers as FLOAT, text as UTF8), for tests and
/// for converting CSV data (`multigate convert`).
pub fn write_parquet(frame: &Frame, path: &Path) -> Result<(), DataError> {
    use arrow_array::{Float32Array, RecordBatch, StringArray};
    use arrow_schema::{Field, Schema};
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for (name, col) in frame.names.iter().zip(&frame.columns) {
        // A column held in two forms is written once, as read first.
        if seen.contains(&name.as_str()) {
            continue;
        }
        seen.push(name);
        match col {
            Column::Num(v) => {
                fields.push(Field::new(name, DataType::Float32, true));
                arrays.push(Arc::new(Float32Array::from_iter(v.iter().map(|x| (!x.is_nan()).then_some(*x)))));
            }
            Column::Cat { dict, codes } => {
                fields.push(Field::new(name, DataType::Utf8, true));
                let values = codes.iter().map(|&c| {
                    let s = dict[c as usize].as_str();
                    (!s.is_empty()).then_some(s)
                });
                arrays.push(Arc::new(StringArray::from_iter(values)));
            }
        }
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(|e| DataError::Other(format!("{e}")))?;
    let mut buf = Vec::new();
    {
        let props = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .set_max_row_group_row_count(Some(64 * 1024))
            .build();
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, schema, Some(props))
            .map_err(|e| DataError::Other(format!("{e}")))?;
        w.write(&batch).map_err(|e| DataError::Other(format!("{e}")))?;
        w.close().map_err(|e| DataError::Other(format!("{e}")))?;
    }
    crate::fs::write_file(path, &buf).map_err(|e| DataError::Other(format!("{}: {e}", path.display())))
}
