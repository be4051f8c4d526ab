//! Diagnostics shared by every stage: rendering (a labelled snippet with
//! file:line:col, without colour when asked, so snapshots are stable) and
//! did-you-mean suggestions.

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

/// Edit distance with adjacent transpositions (optimal string alignment), for did-you-mean.
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// "did you mean `x`?" when a candidate is close enough.
pub fn did_you_mean<'a>(found: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let best = candidates.into_iter().map(|c| (distance(found, c), c)).min_by_key(|(d, _)| *d)?;
    let limit = (found.chars().count() / 3).max(2);
    (best.0 <= limit).then(|| format!("did you mean `{}`?", best.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(did_you_mean("mmeo", ["moe", "mmoe"]).as_deref(), Some("did you mean `mmoe`?"));
        assert_eq!(did_you_mean("zzzzzz", ["moe", "mmoe"]), None);
    }
}
