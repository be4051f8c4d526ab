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
}

impl Origin {
    pub fn describe(&self, row: usize) -> String {
        match self.lines.get(row) {
            Some(line) => format!("{}:{line}", self.name),
            None => format!("{} row {}", self.name, row + 1),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Frame {
    pub names: Vec<String>,
    pub columns: Vec<Column>,
    pub rows: usize,
    pub origin: Origin,
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

/// Builds an interned column value by value.
#[derive(Debug, Default)]
pub struct Interner {
    index: std::collections::HashMap<String, u32>,
    pub dict: Vec<String>,
    pub codes: Vec<u32>,
}

impl Interner {
    pub fn push(&mut self, value: &str) {
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
