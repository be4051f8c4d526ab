//! A [`Frame`]: the raw columns a source produced, before encoding. Categorical
//! columns are interned (a dictionary plus codes), so each distinct value is hashed
//! once; numeric columns are parsed as they are read.

/// One raw column.
#[derive(Debug, Clone)]
pub enum Column {
    /// Parsed numbers; NaN marks a missing value.
    Num(Vec<f32>),
    /// Interned strings.
    Cat { dict: Vec<String>, codes: Vec<u32> },
}

impl Column {
    pub fn len(&self) -> usize {
        match self {
            Column::Num(v) => v.len(),
            Column::Cat { codes, .. } => codes.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The value of row `i` as text (for writing CSV).
    pub fn text(&self, i: usize) -> String {
        match self {
            Column::Num(v) => format!("{}", v[i]),
            Column::Cat { dict, codes } => dict[codes[i] as usize].clone(),
        }
    }
}

/// Where rows came from, so errors can name a file and line.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub name: String,
    /// 1-based line of each row in the file; empty for generated data.
    pub lines: Vec<u64>,
    /// Further parts appended ([`Frame::append`]): rows from the index on are theirs.
    pub later: Vec<(usize, Origin)>,
    /// Without `lines`: the rows of the file before these (a chunk of a file).
    pub first_row: usize,
}

impl Origin {
    pub fn describe(&self, row: usize) -> String {
        if let Some((start, part)) = self.later.iter().rev().find(|(start, _)| *start <= row) {
            return part.describe(row - start);
        }
        match self.lines.get(row) {
            Some(line) => format!("{}:{line}", self.name),
            None => format!("{} row {}", self.name, self.first_row + row + 1),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Frame {
    pub names: Vec<String>,
    pub columns: Vec<Column>,
    pub rows: usize,
    pub origin: Origin,
    /// Rows the source skipped as broken (a skipping bad-row policy).
    pub skipped: Skipped,
}

/// Rows skipped under a skipping bad-row policy: how many, by reason, and the first
/// few with where they are.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Skipped {
    pub total: u64,
    pub by_reason: std::collections::BTreeMap<String, u64>,
    /// `place: problem` of the first [`Skipped::SHOWN`] rows.
    pub first: Vec<String>,
}

impl Skipped {
    pub const SHOWN: usize = 5;

    pub fn add(&mut self, reason: &str, at: &str, problem: &str) {
        self.total += 1;
        *self.by_reason.entry(reason.to_string()).or_default() += 1;
        if self.first.len() < Self::SHOWN {
            self.first.push(format!("{at}: {problem}"));
        }
    }

    pub fn merge(&mut self, other: &Skipped) {
        self.total += other.total;
        for (r, n) in &other.by_reason {
            *self.by_reason.entry(r.clone()).or_default() += n;
        }
        for f in &other.first {
            if self.first.len() < Self::SHOWN {
                self.first.push(f.clone());
            }
        }
    }

    /// `3 ragged row, 1 unparsable number`.
    pub fn summary(&self) -> String {
        self.by_reason.iter().map(|(r, n)| format!("{n} {r}")).collect::<Vec<_>>().join(", ")
    }
}

impl Frame {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.names.iter().position(|n| n == name).map(|i| &self.columns[i])
    }

    /// The column `name` as numbers (`numeric`) or as text, when the source delivered
    /// it so; else whichever form it has. A column read both as a categorical and as a
    /// dense feature is held in both forms.
    pub fn column_as(&self, name: &str, numeric: bool) -> Option<&Column> {
        let mut any = None;
        for (n, c) in self.names.iter().zip(&self.columns) {
            if n == name {
                if matches!(c, Column::Num(_)) == numeric {
                    return Some(c);
                }
                any = any.or(Some(c));
            }
        }
        any
    }

    /// Appends `other`'s rows (the parts of one dataset): every column of `self` is
    /// matched by name and form in `other`. Row origins stay per part.
    pub fn append(&mut self, other: Frame) -> Result<(), String> {
        if self.rows == 0 && self.columns.is_empty() {
            *self = other;
            return Ok(());
        }
        let mut columns = Vec::with_capacity(self.columns.len());
        for (name, col) in self.names.iter().zip(std::mem::take(&mut self.columns)) {
            let numeric = matches!(col, Column::Num(_));
            let theirs = other
                .names
                .iter()
                .zip(&other.columns)
                .find(|(n, c)| *n == name && matches!(c, Column::Num(_)) == numeric)
                .map(|(_, c)| c)
                .ok_or_else(|| format!("{}: column `{name}` is missing", other.origin.name))?;
            columns.push(match (col, theirs) {
                (Column::Num(mut a), Column::Num(b)) => {
                    a.extend_from_slice(b);
                    Column::Num(a)
                }
                (Column::Cat { dict, codes }, Column::Cat { dict: d2, codes: c2 }) => {
                    let mut i = Interner::from_parts(dict, codes);
                    for &c in c2 {
                        i.push(&d2[c as usize]);
                    }
                    i.finish()
                }
                _ => unreachable!("matched by form above"),
            });
        }
        self.columns = columns;
        self.skipped.merge(&other.skipped);
        // Rows of a later part are described by that part's origin.
        self.origin.later.push((self.rows, other.origin));
        self.rows += other.rows;
        Ok(())
    }

    /// Writes the frame as CSV with a header.
    pub fn write_csv<W: std::io::Write>(&self, w: W) -> csv::Result<()> {
        let mut out = csv::Writer::from_writer(w);
        out.write_record(&self.names)?;
        let mut rec = Vec::with_capacity(self.names.len());
        for i in 0..self.rows {
            rec.clear();
            rec.extend(self.columns.iter().map(|c| c.text(i)));
            out.write_record(&rec)?;
        }
        out.flush()?;
        Ok(())
    }
}

/// A chunked reader's rows as one frame: `read` runs with an unbounded chunk size
/// ([`usize::MAX`]), so its sink gets the whole file at once (no rows: `NoRows`).
pub(crate) fn one_chunk(
    path: &std::path::Path,
    read: impl FnOnce(usize, &mut dyn FnMut(Frame) -> Result<(), super::DataError>) -> Result<(), super::DataError>,
) -> Result<Frame, super::DataError> {
    let mut whole = None;
    read(usize::MAX, &mut |f| {
        whole = Some(f);
        Ok(())
    })?;
    whole.ok_or_else(|| super::DataError::NoRows { path: path.display().to_string() })
}

/// Builds an interned column value by value.
#[derive(Debug, Default)]
pub struct Interner {
    // foldhash: interning is most of the cost of reading text columns, and SipHash's
    // DoS resistance buys nothing for values the user's own files hold.
    index: foldhash::HashMap<String, u32>,
    pub dict: Vec<String>,
    pub codes: Vec<u32>,
}

impl Interner {
    /// An interner holding an existing dictionary and codes, to extend.
    pub fn from_parts(dict: Vec<String>, codes: Vec<u32>) -> Interner {
        let mut index = foldhash::HashMap::default();
        index.extend(dict.iter().enumerate().map(|(i, d)| (d.clone(), i as u32)));
        Interner { index, dict, codes }
    }

    /// The code of `value`, added to the dictionary if new (no row pushed).
    pub fn intern(&mut self, value: &str) -> u32 {
        match self.index.get(value) {
            Some(c) => *c,
            None => {
                let c = self.dict.len() as u32;
                self.dict.push(value.to_string());
                self.index.insert(value.to_string(), c);
                c
            }
        }
    }

    /// Pushes a row whose value has code `code` (from [`Interner::intern`]).
    pub fn push_code(&mut self, code: u32) {
        self.codes.push(code);
    }

    pub fn push(&mut self, value: &str) {
        // A column often repeats the row above's value: one comparison, no hashing.
        if let Some(&last) = self.codes.last() {
            if self.dict[last as usize] == value {
                self.codes.push(last);
                return;
            }
        }
        let code = match self.index.get(value) {
            Some(c) => *c,
            None => {
                let c = self.dict.len() as u32;
                self.dict.push(value.to_string());
                self.index.insert(value.to_string(), c);
                c
            }
        };
        self.codes.push(code);
    }
    pub fn finish(self) -> Column {
        Column::Cat { dict: self.dict, codes: self.codes }
    }
}
