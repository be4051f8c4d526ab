//! CSV source: reads only the needed columns of one or more files (optionally
//! gzip-compressed) into a [`Frame`]. Whitespace around fields is trimmed, and spaces
//! after a delimiter are dropped before parsing, so the census files' "comma + space"
//! format reads as plain CSV, quoted fields (`, "Private, Inc"`) included.
//!
//! Numbers are strict: a field is a finite `f32`, empty, or the spec's `missing`
//! token; a literal `NaN` or `inf`, or a value beyond `f32`, is an error naming the
//! file, line and column.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::frame::{Column, Frame, Interner, Origin, Skipped};
use super::{ColumnKind, DataError, Need};
use crate::ir::CsvFormat;

/// Counts the bytes read through it (the compressed offset of a gzip file).
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Drops the spaces that follow a delimiter or a line break outside quoted fields, so
/// that a quoted field after "comma + space" starts with its quote, as CSV wants.
/// Leading spaces are trimmed from every field anyway, so nothing else changes.
struct Unpad<R> {
    inner: R,
    delimiter: u8,
    buf: Vec<u8>,
    /// Inside a quoted field.
    quoted: bool,
    /// At the start of a field (dropping spaces).
    at_start: bool,
}

impl<R: Read> Read for Unpad<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            self.buf.resize(out.len(), 0);
            let n = self.inner.read(&mut self.buf)?;
            if n == 0 {
                return Ok(0);
            }
            if !self.quoted && memchr::memchr(b'"', &self.buf[..n]).is_none() {
                // No quote in the chunk: the spaces after a delimiter matter only before
                // a quote, and fields are trimmed when read, so the chunk passes as it
                // is, but for spaces that open a field at either end (the next chunk
                // may start with a quote).
                let chunk = &self.buf[..n];
                let begin = if self.at_start { chunk.iter().take_while(|&&b| b == b' ').count() } else { 0 };
                let end = n - chunk.iter().rev().take_while(|&&b| b == b' ').count();
                let opens =
                    if end == 0 { self.at_start } else { chunk[end - 1] == self.delimiter || chunk[end - 1] == b'\n' };
                let keep = if opens { end } else { n };
                let len = keep.saturating_sub(begin);
                out[..len].copy_from_slice(&chunk[begin..begin + len]);
                self.at_start = opens;
                if len > 0 {
                    return Ok(len);
                }
                continue;
            }
            let mut k = 0;
            for &b in &self.buf[..n] {
                if self.quoted {
                    // A doubled quote closes and reopens: the escape reads correctly.
                    self.quoted = b != b'"';
                } else {
                    if self.at_start && b == b' ' {
                        continue;
                    }
                    self.quoted = self.at_start && b == b'"';
                    self.at_start = b == self.delimiter || b == b'\n';
                }
                out[k] = b;
                k += 1;
            }
            if k > 0 {
                return Ok(k);
            }
        }
    }
}

/// A reader fed by a thread that reads `inner` a chunk at a time (decompression beside
/// parsing). An error ends the stream and is handed over in order.
struct Pipe {
    rx: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    at: usize,
    done: bool,
}

impl Pipe {
    const CHUNK: usize = 1 << 20;

    fn spawn<R: Read + Send + 'static>(mut inner: R) -> Pipe {
        let (tx, rx) = std::sync::mpsc::sync_channel(4);
        std::thread::spawn(move || loop {
            let mut buf = vec![0u8; Self::CHUNK];
            let mut filled = 0;
            // Fill a whole chunk (or reach the end), so that the parser sees few of them.
            let result = loop {
                match inner.read(&mut buf[filled..]) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        filled += n;
                        if filled == buf.len() {
                            break Ok(());
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            buf.truncate(filled);
            let last = filled == 0 || result.is_err();
            if filled > 0 && tx.send(Ok(buf)).is_err() {
                return; // The reader was dropped.
            }
            if let Err(e) = result {
                let _ = tx.send(Err(e));
                return;
            }
            if last {
                return;
            }
        });
        Pipe { rx, chunk: Vec::new(), at: 0, done: false }
    }
}

impl Read for Pipe {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.at = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
        let n = out.len().min(self.chunk.len() - self.at);
        out[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// An open data file and the count of its bytes consumed (compressed ones for gzip).
struct Opened {
    reader: Box<dyn Read>,
    gzip: bool,
    read: Arc<AtomicU64>,
}

fn open(path: &Path, delimiter: u8) -> Result<Opened, DataError> {
    let open_err = |source| DataError::Open { path: path.display().to_string(), source };
    if std::fs::metadata(path).map_err(open_err)?.is_dir() {
        return Err(DataError::Open {
            path: path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a folder, not a data file"),
        });
    }
    let file = File::open(path).map_err(open_err)?;
    // Bytes of the file consumed so far (compressed ones, for gzip): progress, and the
    // offset a gzip error is reported at.
    let read = Arc::new(AtomicU64::new(0));
    let counted = Counting { inner: BufReader::with_capacity(1 << 16, file), read: read.clone() };
    let gzip = path.extension().is_some_and(|e| e == "gz");
    let reader: Box<dyn Read> = if gzip {
        // Decompressed on a thread of its own, a chunk ahead of the parser.
        Box::new(Pipe::spawn(flate2::read::MultiGzDecoder::new(counted)))
    } else {
        Box::new(BufReader::with_capacity(1 << 20, counted))
    };
    let reader: Box<dyn Read> = if delimiter == b' ' {
        reader
    } else {
        Box::new(Unpad { inner: reader, delimiter, buf: Vec::new(), quoted: false, at_start: true })
    };
    Ok(Opened { reader, gzip, read })
}

/// Describes a read error: a gzip problem with the file and compressed byte offset
/// (trailing garbage and truncation named as such), else the I/O error.
fn read_problem(e: &std::io::Error, gzip_offset: Option<u64>) -> String {
    match gzip_offset {
        None => e.to_string(),
        Some(at) => {
            let what = match e.kind() {
                std::io::ErrorKind::UnexpectedEof => "the gzip stream ends early (the file is truncated)".to_string(),
                std::io::ErrorKind::InvalidInput if e.to_string().contains("header") && at > 0 => {
                    "bytes after the end of the gzip stream that are not another gzip member (trailing garbage)"
                        .to_string()
                }
                _ => format!("corrupt gzip data ({e})"),
            };
            format!("{what}, within the first {at} compressed bytes")
        }
    }
}

/// A CSV file's column names without reading its rows: the header line, or the
/// spec's `columns` (checked against the first row's field count).
pub fn read_header(path: &Path, format: &CsvFormat) -> Result<Vec<String>, DataError> {
    let shown = path.display().to_string();
    let opened = open(path, format.delimiter)?;
    let gzip_offset = opened.gzip.then(|| opened.read.clone());
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(format.delimiter)
        .has_headers(false)
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(opened.reader);
    let mut first = csv::StringRecord::new();
    let got = rdr.read_record(&mut first).map_err(|e| DataError::BadRow {
        at: format!("{shown}:1"),
        problem: match e.kind() {
            csv::ErrorKind::Io(io) => read_problem(io, gzip_offset.as_ref().map(|c| c.load(Ordering::Relaxed))),
            _ => e.to_string(),
        },
    })?;
    if !got {
        return Err(DataError::NoRows { path: shown });
    }
    if format.header {
        return Ok(first.iter().map(str::to_string).collect());
    }
    if first.len() != format.columns.len() {
        return Err(DataError::BadRow {
            at: format!("{shown}:1"),
            problem: format!(
                "the first row has {} fields, and [data] columns names {}",
                first.len(),
                format.columns.len()
            ),
        });
    }
    Ok(format.columns.clone())
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
    read_csv_with(path, format, needs, require_labels, spec_at, &|_, _| {})
}

/// [`read_csv`], telling `progress` (bytes of the file read, its size) every few
/// thousand rows and at the end.
pub fn read_csv_with(
    path: &Path,
    format: &CsvFormat,
    needs: &[Need],
    require_labels: bool,
    spec_at: &dyn Fn(&Need) -> String,
    progress: &dyn Fn(u64, u64),
) -> Result<Frame, DataError> {
    let shown = path.display().to_string();
    let total = std::fs::metadata(path).map_or(0, |m| m.len());
    let opened = open(path, format.delimiter)?;
    let gzip_offset = opened.gzip.then(|| opened.read.clone());
    let consumed = opened.read.clone();
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(format.delimiter)
        .has_headers(format.header)
        .trim(csv::Trim::Headers)
        .flexible(false)
        .from_reader(opened.reader);
    // Where an error is: `file:line`, or the file alone when the reader has no line.
    let bad_row = |e: &csv::Error| {
        let at = match e.position() {
            Some(p) if p.line() > 0 => format!("{shown}:{}", p.line()),
            _ => shown.clone(),
        };
        let problem = match e.kind() {
            csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
                format!("expected {expected_len} fields, found {len}")
            }
            csv::ErrorKind::Utf8 { .. } => "the row is not valid UTF-8".to_string(),
            csv::ErrorKind::Io(io) => read_problem(io, gzip_offset.as_ref().map(|c| c.load(Ordering::Relaxed))),
            _ => e.to_string(),
        };
        DataError::BadRow { at, problem }
    };
    let header: Vec<String> = if format.header {
        rdr.headers().map_err(|e| bad_row(&e))?.iter().map(str::to_string).collect()
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
        let at: Vec<usize> = header.iter().enumerate().filter(|(_, h)| **h == need.column).map(|(i, _)| i).collect();
        if at.len() > 1 {
            let fields: Vec<String> = at.iter().map(|i| (i + 1).to_string()).collect();
            return Err(DataError::BadRow {
                at: format!("{shown}:1"),
                problem: format!(
                    "column `{}` (wanted by {}) appears {} times in the header, as fields {}: which one is meant?",
                    need.column,
                    spec_at(need),
                    at.len(),
                    fields.join(" and ")
                ),
            });
        }
        match at.first().copied() {
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
            None => return Err(super::missing_column(&shown, need, &header, spec_at)),
        }
    }

    let mut lines = Vec::new();
    let mut record = csv::StringRecord::new();
    let mut skipped = Skipped::default();
    // The numbers of the row being read: a row is taken whole or not at all.
    let mut numbers: Vec<f32> = vec![0.0; builders.len()];
    loop {
        match rdr.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) if format.skip_bad_rows => {
                let io = matches!(e.kind(), csv::ErrorKind::Io(_));
                let reason = match e.kind() {
                    csv::ErrorKind::UnequalLengths { .. } => "ragged row",
                    csv::ErrorKind::Utf8 { .. } => "invalid UTF-8",
                    _ => "unreadable data",
                };
                let DataError::BadRow { at, problem } = bad_row(&e) else { unreachable!("bad_row makes BadRow") };
                skipped.add(reason, &at, &problem);
                if io {
                    // A read error (a truncated gzip stream) ends the file.
                    break;
                }
                continue;
            }
            Err(e) => return Err(bad_row(&e)),
        }
        let line = record.position().map_or(0, |p| p.line());
        if !format.header && record.len() != header.len() {
            let at = format!("{shown}:{line}");
            let problem = format!("expected {} fields (the spec's `columns`), found {}", header.len(), record.len());
            if format.skip_bad_rows {
                skipped.add("ragged row", &at, &problem);
                continue;
            }
            return Err(DataError::BadRow { at, problem });
        }
        let mut bad = None;
        for (k, (b, &slot)) in builders.iter().zip(&slots).enumerate() {
            if let Builder::Num(_) = b {
                // Only the fields read are trimmed (the reader's own trimming would touch all).
                let field = record.get(slot).unwrap_or("").trim();
                let is_missing = field.is_empty() || format.missing.as_deref() == Some(field);
                match if is_missing { Ok(f32::NAN) } else { parse_number(field) } {
                    Ok(x) => numbers[k] = x,
                    Err(problem) => {
                        bad = Some((k, problem));
                        break;
                    }
                }
            }
        }
        if let Some((k, problem)) = bad {
            let at = format!("{shown}:{line}");
            if format.skip_bad_rows {
                skipped.add("unparsable number", &at, &format!("column `{}`: {problem}", names[k]));
                continue;
            }
            return Err(DataError::BadValue { at, column: names[k].clone(), problem });
        }
        lines.push(line);
        if lines.len() % 8192 == 0 {
            progress(consumed.load(Ordering::Relaxed), total);
        }
        for (k, (b, &slot)) in builders.iter_mut().zip(&slots).enumerate() {
            match b {
                Builder::Cat(i) => i.push(record.get(slot).unwrap_or("").trim()),
                Builder::Num(v) => v.push(numbers[k]),
            }
        }
    }
    progress(total, total);
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
    Ok(Frame { names, columns, rows: lines.len(), origin: Origin { name: shown, lines, later: Vec::new() }, skipped })
}

/// A numeric field: a finite `f32`. A literal NaN or infinity, and a value beyond the
/// `f32` range, are errors (declare a missing token to read such a literal as missing).
pub fn parse_number(field: &str) -> Result<f32, String> {
    match field.parse::<f32>() {
        Ok(x) if x.is_finite() => Ok(x),
        Ok(_)
            if field.trim_start_matches(['+', '-']).chars().next().is_some_and(|c| c.is_ascii_digit() || c == '.') =>
        {
            Err(format!("`{field}` is beyond the range of a 32-bit float"))
        }
        Ok(_) => Err(format!(
            "`{field}` is not a finite number; if it marks a missing value, say so with [data] missing = {field:?}"
        )),
        Err(_) => Err(format!("`{field}` is not a number")),
    }
}
