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
    super::frame::one_chunk(path, |n, sink| {
        read_csv_chunks(path, format, needs, require_labels, spec_at, progress, n, sink)
    })
}

/// [`read_csv_with`] in chunks: `sink` gets a frame of about `chunk_rows` rows at a
/// time (the last one fewer), so that a file larger than memory can be read. Each
/// frame's origin names the file and the lines of its rows.
#[allow(clippy::too_many_arguments)]
pub fn read_csv_chunks(
    path: &Path,
    format: &CsvFormat,
    needs: &[Need],
    require_labels: bool,
    spec_at: &dyn Fn(&Need) -> String,
    progress: &dyn Fn(u64, u64),
    chunk_rows: usize,
    sink: &mut dyn FnMut(Frame) -> Result<(), DataError>,
) -> Result<(), DataError> {
    let shown = path.display().to_string();
    let total = std::fs::metadata(path).map_or(0, |m| m.len());
    let opened = open(path, format.delimiter)?;
    let gzip_offset = opened.gzip.then(|| opened.read.clone());
    let consumed = opened.read.clone();
    let gzip_at = || gzip_offset.as_ref().map(|c| c.load(Ordering::Relaxed));
    let mut raw = opened.reader;
    let mut blocks = Blocks { carry: Vec::new(), done: false };
    let (mut first, mut failed) = blocks.next(&mut raw);
    // The header: the first line (or the spec's `columns`).
    let mut next_line: u64 = 1;
    let header: Vec<String> = if format.header {
        let end = memchr::memchr(b'\n', &first).map_or(first.len(), |i| i + 1);
        let line: Vec<u8> = first.drain(..end).collect();
        next_line = 2;
        let mut rdr = csv::ReaderBuilder::new()
            .delimiter(format.delimiter)
            .has_headers(false)
            .flexible(true)
            .from_reader(&line[..]);
        let mut record = csv::StringRecord::new();
        match rdr.read_record(&mut record) {
            Ok(_) => record.iter().map(|h| h.trim().to_string()).collect(),
            Err(e) => return Err(csv_error(&e, &shown, 0, None)),
        }
    } else {
        format.columns.clone()
    };

    let mut names: Vec<String> = Vec::new();
    let mut kinds: Vec<ColumnKind> = Vec::new();
    let mut slots = Vec::new();
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
            }
            None if need.is_label && !require_labels => {}
            None => return Err(super::missing_column(&shown, need, &header, spec_at)),
        }
    }

    let ctx =
        RowContext { shown: &shown, format, header_len: header.len(), slots: &slots, kinds: &kinds, names: &names };
    let mut rows = Rows::new(&ctx);
    // Rows handed to `sink` so far.
    let mut emitted = 0usize;
    let mut flush = |rows: &mut Rows, at_least: usize| -> Result<(), DataError> {
        if rows.lines.len() >= at_least.max(1) {
            let frame = rows.take_frame();
            emitted += frame.rows;
            sink(frame)?;
        }
        Ok(())
    };
    // Quote-free stretches of the file are parsed on worker threads, in order; from the
    // first quote on (a quoted field may hold a line break) the rest is read in one go.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4);
    std::thread::scope(|scope| -> Result<(), DataError> {
        let mut running: std::collections::VecDeque<std::thread::ScopedJoinHandle<'_, Result<Rows<'_>, DataError>>> =
            std::collections::VecDeque::new();
        let mut block = first;
        let mut line = next_line;
        loop {
            if block.is_empty() && failed.is_none() && blocks.done {
                break;
            }
            if failed.is_none() && memchr::memchr(b'"', &block).is_some() {
                // Everything from here in one reader: the block, then the rest of the file.
                while let Some(h) = running.pop_front() {
                    rows.append(h.join().map_err(|_| DataError::Other("a CSV parser thread panicked".into()))??);
                    flush(&mut rows, chunk_rows)?;
                }
                // The block, the partial line read after it, then the rest of the file.
                let carried = std::mem::take(&mut blocks.carry);
                let rest = std::io::Read::chain(
                    std::io::Cursor::new(std::mem::take(&mut block)),
                    std::io::Cursor::new(carried),
                );
                rows.parse(std::io::Read::chain(rest, &mut raw), line, gzip_at, &mut |r| flush(r, chunk_rows))?;
                return Ok(());
            }
            let lines_in = memchr::memchr_iter(b'\n', &block).count() as u64;
            let ctx = &ctx;
            let this = std::mem::take(&mut block);
            let start = line;
            running.push_back(scope.spawn(move || {
                let mut r = Rows::new(ctx);
                if !r.parse_plain(&this, start)? {
                    r.parse(&this[..], start, || None, &mut |_| Ok(()))?;
                }
                Ok(r)
            }));
            line += lines_in;
            if running.len() >= workers {
                if let Some(h) = running.pop_front() {
                    rows.append(h.join().map_err(|_| DataError::Other("a CSV parser thread panicked".into()))??);
                    flush(&mut rows, chunk_rows)?;
                }
            }
            progress(consumed.load(Ordering::Relaxed), total);
            if let Some(e) = failed.take() {
                // A read error (a truncated gzip stream) ends the file, after the rows
                // before it (whose own errors come first).
                while let Some(h) = running.pop_front() {
                    rows.append(h.join().map_err(|_| DataError::Other("a CSV parser thread panicked".into()))??);
                    flush(&mut rows, chunk_rows)?;
                }
                let problem = read_problem(&e, gzip_at());
                let at = format!("{shown}:{line}");
                if !format.skip_bad_rows {
                    return Err(DataError::BadRow { at, problem });
                }
                rows.skipped.add("unreadable data", &at, &problem);
                return Ok(());
            }
            (block, failed) = blocks.next(&mut raw);
        }
        while let Some(h) = running.pop_front() {
            rows.append(h.join().map_err(|_| DataError::Other("a CSV parser thread panicked".into()))??);
            flush(&mut rows, chunk_rows)?;
        }
        Ok(())
    })?;
    progress(total, total);
    // The last rows (and the count of rows skipped after the last chunk).
    if !rows.lines.is_empty() || (emitted > 0 && rows.skipped.total > 0) {
        let frame = rows.take_frame();
        emitted += frame.rows;
        sink(frame)?;
    }
    if emitted == 0 {
        return Err(DataError::NoRows { path: shown });
    }
    Ok(())
}

/// A file read in blocks of about [`Blocks::SIZE`] bytes that end at a line break (the
/// partial line after it is carried to the next block).
struct Blocks {
    carry: Vec<u8>,
    done: bool,
}

impl Blocks {
    const SIZE: usize = 4 << 20;

    /// The next block (empty at the end), and the read error that ended the file, if
    /// one did: the block then holds the whole lines read before it.
    fn next(&mut self, r: &mut dyn Read) -> (Vec<u8>, Option<std::io::Error>) {
        let mut buf = std::mem::take(&mut self.carry);
        while !self.done && buf.len() < Self::SIZE {
            let at = buf.len();
            buf.resize(at + (1 << 20), 0);
            match r.read(&mut buf[at..]) {
                Ok(0) => {
                    buf.truncate(at);
                    self.done = true;
                }
                Ok(n) => buf.truncate(at + n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => buf.truncate(at),
                Err(e) => {
                    buf.truncate(at);
                    self.done = true;
                    // The line the error cut short is lost with it.
                    buf.truncate(memchr::memrchr(b'\n', &buf).map_or(0, |i| i + 1));
                    return (buf, Some(e));
                }
            }
        }
        if !self.done {
            if let Some(i) = memchr::memrchr(b'\n', &buf) {
                self.carry = buf.split_off(i + 1);
            }
        }
        (buf, None)
    }
}

/// What every stretch of one file's rows shares.
struct RowContext<'a> {
    shown: &'a str,
    format: &'a CsvFormat,
    header_len: usize,
    slots: &'a [usize],
    kinds: &'a [ColumnKind],
    names: &'a [String],
}

/// Rows of a stretch of a file, parsed into column builders.
struct Rows<'a> {
    ctx: &'a RowContext<'a>,
    builders: Vec<Builder>,
    lines: Vec<u64>,
    skipped: Skipped,
    /// The numbers of the row being read: a row is taken whole or not at all.
    numbers: Vec<f32>,
}

/// A CSV reader's error as a bad row at its line (`first_line` is the line its input
/// starts at).
fn csv_error(e: &csv::Error, shown: &str, first_line: u64, gzip_offset: Option<u64>) -> DataError {
    let at = match e.position() {
        Some(p) if p.line() > 0 => format!("{shown}:{}", first_line.max(1) + p.line() - 1),
        _ => shown.to_string(),
    };
    let problem = match e.kind() {
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            format!("expected {expected_len} fields, found {len}")
        }
        csv::ErrorKind::Utf8 { .. } => "the row is not valid UTF-8".to_string(),
        csv::ErrorKind::Io(io) => read_problem(io, gzip_offset),
        _ => e.to_string(),
    };
    DataError::BadRow { at, problem }
}

/// The fields of one record, by index.
trait Fields {
    fn len(&self) -> usize;
    fn get(&self, i: usize) -> Option<&str>;
}

impl Fields for csv::StringRecord {
    fn len(&self) -> usize {
        csv::StringRecord::len(self)
    }
    fn get(&self, i: usize) -> Option<&str> {
        csv::StringRecord::get(self, i)
    }
}

/// A quote-free line and the end of each of its fields (the delimiters' offsets, then
/// the line's length).
struct PlainRecord<'a> {
    line: &'a str,
    ends: Vec<usize>,
}

impl Fields for PlainRecord<'_> {
    fn len(&self) -> usize {
        self.ends.len()
    }
    fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] + 1 };
        // The delimiter is one ASCII byte: both ends are character boundaries.
        self.line.get(start..end)
    }
}

impl<'a> Rows<'a> {
    fn new(ctx: &'a RowContext<'a>) -> Rows<'a> {
        let builders = ctx
            .kinds
            .iter()
            .map(|k| match k {
                ColumnKind::Num => Builder::Num(Vec::new()),
                ColumnKind::Cat => Builder::Cat(Interner::default()),
            })
            .collect();
        Rows { ctx, builders, lines: Vec::new(), skipped: Skipped::default(), numbers: vec![0.0; ctx.kinds.len()] }
    }

    /// The rows read so far as a frame; this starts over empty.
    fn take_frame(&mut self) -> Frame {
        let fresh = Rows::new(self.ctx);
        let Rows { builders, lines, skipped, .. } = std::mem::replace(self, fresh);
        let columns = builders
            .into_iter()
            .map(|b| match b {
                Builder::Num(v) => Column::Num(v),
                Builder::Cat(i) => i.finish(),
            })
            .collect();
        let origin = Origin { name: self.ctx.shown.to_string(), lines, later: Vec::new(), first_row: 0 };
        Frame { names: self.ctx.names.to_vec(), columns, rows: origin.lines.len(), origin, skipped }
    }

    /// Reads every record of `input`, whose first line is line `first_line` of the file,
    /// calling `after` after each row taken (to hand on full chunks).
    fn parse(
        &mut self,
        input: impl Read,
        first_line: u64,
        gzip_offset: impl Fn() -> Option<u64>,
        after: &mut dyn FnMut(&mut Rows<'a>) -> Result<(), DataError>,
    ) -> Result<(), DataError> {
        let ctx = self.ctx;
        let mut rdr = csv::ReaderBuilder::new()
            .delimiter(ctx.format.delimiter)
            .has_headers(false)
            .flexible(true)
            .from_reader(input);
        let mut record = csv::StringRecord::new();
        loop {
            match rdr.read_record(&mut record) {
                Ok(false) => return Ok(()),
                Ok(true) => {}
                Err(e) => {
                    let io = matches!(e.kind(), csv::ErrorKind::Io(_));
                    let err = csv_error(&e, ctx.shown, first_line, gzip_offset());
                    if !ctx.format.skip_bad_rows {
                        return Err(err);
                    }
                    let reason = match e.kind() {
                        csv::ErrorKind::Utf8 { .. } => "invalid UTF-8",
                        _ => "unreadable data",
                    };
                    let DataError::BadRow { at, problem } = err else { unreachable!("csv_error makes BadRow") };
                    self.skipped.add(reason, &at, &problem);
                    if io {
                        // A read error (a truncated gzip stream) ends the file.
                        return Ok(());
                    }
                    continue;
                }
            }
            let line = first_line + record.position().map_or(1, |p| p.line()) - 1;
            self.take(&record, line)?;
            after(self)?;
        }
    }

    /// Reads a block of whole lines without quotes as [`Rows::parse`] would, splitting
    /// lines and fields with memchr instead of the csv crate's state machine (a quarter
    /// of reading census-income). Only for the plain case: lines ending in `\n` alone,
    /// none of them empty, valid UTF-8; otherwise it reads nothing and says false, and
    /// the block goes to [`Rows::parse`] (which skips blank lines, takes `\r` as a line
    /// end, and reports invalid UTF-8 at its row).
    fn parse_plain(&mut self, block: &[u8], first_line: u64) -> Result<bool, DataError> {
        let plain = self.ctx.format.delimiter.is_ascii()
            && memchr::memchr(b'\r', block).is_none()
            && block.first() != Some(&b'\n')
            && memchr::memmem::find(block, b"\n\n").is_none();
        let text = match std::str::from_utf8(block) {
            Ok(text) if plain => text,
            _ => return Ok(false),
        };
        let delimiter = self.ctx.format.delimiter;
        let mut record = PlainRecord { line: "", ends: Vec::with_capacity(self.ctx.header_len + 1) };
        for (k, line) in text.split_terminator('\n').enumerate() {
            record.ends.clear();
            record.ends.extend(memchr::memchr_iter(delimiter, line.as_bytes()));
            record.ends.push(line.len());
            record.line = line;
            self.take(&record, first_line + k as u64)?;
        }
        Ok(true)
    }

    /// Takes one record at `line`: kept, skipped as broken, or (strict) an error.
    fn take(&mut self, record: &impl Fields, line: u64) -> Result<(), DataError> {
        let ctx = self.ctx;
        if record.len() != ctx.header_len {
            let at = format!("{}:{line}", ctx.shown);
            let problem = if ctx.format.header {
                format!("expected {} fields, found {}", ctx.header_len, record.len())
            } else {
                format!("expected {} fields (the spec's `columns`), found {}", ctx.header_len, record.len())
            };
            if ctx.format.skip_bad_rows {
                self.skipped.add("ragged row", &at, &problem);
                return Ok(());
            }
            return Err(DataError::BadRow { at, problem });
        }
        for (k, &slot) in ctx.slots.iter().enumerate() {
            if ctx.kinds[k] == ColumnKind::Num {
                // Only the fields read are trimmed.
                let field = record.get(slot).unwrap_or("").trim();
                let is_missing = field.is_empty() || ctx.format.missing.as_deref() == Some(field);
                match if is_missing { Ok(f32::NAN) } else { parse_number(field) } {
                    Ok(x) => self.numbers[k] = x,
                    Err(problem) => {
                        let at = format!("{}:{line}", ctx.shown);
                        if ctx.format.skip_bad_rows {
                            self.skipped.add(
                                "unparsable number",
                                &at,
                                &format!("column `{}`: {problem}", ctx.names[k]),
                            );
                            return Ok(());
                        }
                        return Err(DataError::BadValue { at, column: ctx.names[k].clone(), problem });
                    }
                }
            }
        }
        self.lines.push(line);
        for (k, (b, &slot)) in self.builders.iter_mut().zip(ctx.slots).enumerate() {
            match b {
                Builder::Cat(i) => i.push(record.get(slot).unwrap_or("").trim()),
                Builder::Num(v) => v.push(self.numbers[k]),
            }
        }
        Ok(())
    }

    /// Appends the rows of the stretch that follows this one.
    fn append(&mut self, other: Rows) {
        self.lines.extend(other.lines);
        self.skipped.merge(&other.skipped);
        for (mine, theirs) in self.builders.iter_mut().zip(other.builders) {
            match (mine, theirs) {
                (Builder::Num(a), Builder::Num(b)) => a.extend(b),
                (Builder::Cat(a), Builder::Cat(b)) => {
                    let map: Vec<u32> = b.dict.iter().map(|v| a.intern(v)).collect();
                    for c in b.codes {
                        a.push_code(map[c as usize]);
                    }
                }
                _ => unreachable!("builders follow the same kinds"),
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out its bytes a few at a time, so that every chunk boundary is tried.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(self.data.len()).min(out.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn unpad_reads_quotes_after_padding_alike_across_any_chunk_boundary() {
        // Spaces between a delimiter and a quote must go (or the quote is not one);
        // other padding may stay, since the fields read are trimmed.
        let text = b"a, b,  \"c, d\", e\nx,   \"y\"\"z\" , w\n  q, r, s\n";
        let expected = [vec!["a", "b", "c, d", "e"], vec!["x", "y\"z", "w"], vec!["q", "r", "s"]];
        for step in 1..text.len() {
            let u = Unpad {
                inner: Trickle { data: text, step },
                delimiter: b',',
                buf: Vec::new(),
                quoted: false,
                at_start: true,
            };
            let mut rdr = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(u);
            let rows: Vec<Vec<String>> =
                rdr.records().map(|r| r.unwrap().iter().map(|f| f.trim().to_string()).collect()).collect();
            assert_eq!(rows, expected, "chunks of {step}");
        }
    }

    /// Both readers of a quote-free block on one block, as the result of each.
    fn both(block: &[u8], skip_bad_rows: bool) -> (Result<String, String>, Result<String, String>, bool) {
        let format = CsvFormat { delimiter: b',', header: false, columns: vec![], missing: None, skip_bad_rows };
        let names: Vec<String> = ["n", "a", "b"].map(String::from).to_vec();
        let kinds = [ColumnKind::Num, ColumnKind::Cat, ColumnKind::Cat];
        let ctx = RowContext {
            shown: "f.csv",
            format: &format,
            header_len: 3,
            slots: &[0, 1, 2],
            kinds: &kinds,
            names: &names,
        };
        let show = |r: Result<Frame, DataError>| r.map(|f| format!("{f:?}")).map_err(|e| e.to_string());
        let mut slow = Rows::new(&ctx);
        let a = show(slow.parse(block, 7, || None, &mut |_| Ok(())).map(|()| slow.take_frame()));
        let mut fast = Rows::new(&ctx);
        let (b, plain) = match fast.parse_plain(block, 7) {
            Ok(plain) => (Ok(fast.take_frame()), plain),
            Err(e) => (Err(e), true),
        };
        (a, show(b), plain)
    }

    proptest::proptest! {
        /// Quote-free text reads the same (values, lines, skipped rows and errors) through
        /// the memchr reader as through the csv crate's; text it does not take (blank
        /// lines, `\r`) is left to the csv crate.
        #[test]
        fn the_plain_reader_reads_quote_free_text_as_the_csv_crate_does(
            lines in proptest::collection::vec(
                proptest::collection::vec("[a-z0-9 .é-]{0,4}|[0-9]{1,3}(\\.[0-9])?|", 1..5),
                0..12,
            ),
            blank in proptest::bool::ANY,
            cr in proptest::bool::ANY,
            last_newline in proptest::bool::ANY,
            skip in proptest::bool::ANY,
        ) {
            let mut text = lines.iter().map(|l| l.join(",")).collect::<Vec<_>>().join(if cr { "\r\n" } else { "\n" });
            if blank && !text.is_empty() {
                text = text.replacen('\n', "\n\n", 1);
            }
            if last_newline && !text.is_empty() {
                text.push('\n');
            }
            let (slow, fast, plain) = both(text.as_bytes(), skip);
            if plain {
                proptest::prop_assert_eq!(slow, fast, "{:?}", text);
            } else {
                proptest::prop_assert!(cr || blank || text.starts_with('\n') || text.lines().any(str::is_empty), "{:?}", text);
            }
        }
    }

    #[test]
    fn the_plain_reader_takes_plain_text_and_leaves_the_rest() {
        assert!(both(b"1,a,b\n2,c,d\n", false).2);
        assert!(both(b"1,a,b\n2,c,d", false).2, "no newline at the end");
        assert!(!both(b"1,a,b\r\n2,c,d\r\n", false).2, "CRLF");
        assert!(!both(b"1,a,b\n\n2,c,d\n", false).2, "a blank line");
        assert!(!both(b"1,a,\xff\n", false).2, "invalid UTF-8");
        // A ragged row and a bad number: the same error at the same line.
        let (slow, fast, _) = both(b"1,a,b\n2,c\n", false);
        assert_eq!(slow, fast);
        assert!(fast.unwrap_err().contains("f.csv:8"));
        let (slow, fast, _) = both(b"1,a,b\nx,c,d\n", true);
        assert_eq!(slow, fast);
    }
}
