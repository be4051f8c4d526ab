//! Rendering diagnostics: a labelled snippet with file:line:col, without colour
//! when asked (tests, pipes), so snapshots are stable.

use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme, NamedSource};

use crate::source::SourceFile;

/// Renders one diagnostic against its source file.
pub fn render(src: &SourceFile, diag: &dyn Diagnostic, colour: bool) -> String {
    let theme = if colour { GraphicalTheme::unicode() } else { GraphicalTheme::unicode_nocolor() };
    let handler = GraphicalReportHandler::new_themed(theme).with_width(100).with_links(false);
    let named = NamedSource::new(src.name.clone(), src.text.to_string());
    let report = Wrapped { inner: diag, src: named };
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = handler.render_report(&mut out, &report);
    out
}

/// Attaches a source to a diagnostic that carries only spans.
struct Wrapped<'a> {
    inner: &'a dyn Diagnostic,
    src: NamedSource<String>,
}

impl std::fmt::Debug for Wrapped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.inner, f)
    }
}
impl std::fmt::Display for Wrapped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self.inner, f)
    }
}
impl std::error::Error for Wrapped<'_> {}
impl Diagnostic for Wrapped<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn std::fmt::Display + 'b>> {
        self.inner.code()
    }
    fn severity(&self) -> Option<miette::Severity> {
        self.inner.severity()
    }
    fn help<'b>(&'b self) -> Option<Box<dyn std::fmt::Display + 'b>> {
        self.inner.help()
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        self.inner.labels()
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&self.src)
    }
}
