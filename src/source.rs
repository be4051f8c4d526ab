//! Source files and byte spans.
//!
//! In: the text of a spec file and where it came from. Out: a [`SourceFile`] that
//! later stages keep beside the spec so every error can point at a line.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A byte range into a [`SourceFile`]'s text.
pub type Span = Range<usize>;

/// One spec file: its name (for messages), its path (to resolve relative data
/// paths) and its text.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub name: String,
    pub path: Option<PathBuf>,
    pub text: Arc<str>,
}

impl SourceFile {
    /// A source that came from memory (tests, `-` on the command line).
    pub fn from_text(name: impl Into<String>, text: impl Into<Arc<str>>) -> Self {
        SourceFile { name: name.into(), path: None, text: text.into() }
    }

    /// Reads a file. Invalid UTF-8 is an error, not a panic; a UTF-8 byte-order mark
    /// (as some Windows editors write) is dropped.
    pub fn read(path: &Path) -> std::io::Result<Self> {
        let mut bytes = std::fs::read(path)?;
        if bytes.starts_with(b"\xEF\xBB\xBF") {
            bytes.drain(..3);
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not UTF-8 text (first bad byte at offset {})", e.utf8_error().valid_up_to()),
            )
        })?;
        Ok(SourceFile { name: path.display().to_string(), path: Some(path.to_path_buf()), text: text.into() })
    }

    /// The folder relative data paths in the spec are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        self.path.as_ref().and_then(|p| p.parent()).map(|p| p.to_path_buf()).unwrap_or_else(|| PathBuf::from("."))
    }

    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..floor_char_boundary(&self.text, offset)];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    /// `file:line:col` for a span, as printed in one-line messages.
    pub fn locate(&self, span: &Span) -> String {
        let (line, col) = self.line_col(span.start);
        format!("{}:{}:{}", self.name, line, col)
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let src = SourceFile::from_text("a.toml", "ab\ncd\n");
        assert_eq!(src.line_col(0), (1, 1));
        assert_eq!(src.line_col(4), (2, 2));
        assert_eq!(src.locate(&(3..4)), "a.toml:2:1");
    }
}
