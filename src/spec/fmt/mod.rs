//! `multigate fmt`: a spec's canonical text in either syntax, with the source's
//! comments kept.
//!
//! The writers ([`dsl`], [`toml`]) put out lines in a fixed order, each line marked
//! with the source positions of what it shows (a declaration's name, a key's value).
//! [`weave`] then puts every comment of the source back: a comment on a line of its
//! own goes before the line showing the first thing that followed it in the source
//! (so it stays with the declaration or key it precedes, wherever the canonical order
//! moves that); a comment after code stays at the end of the line showing that code.
//! No comment is dropped: one with nothing after it ends the file.

mod dsl;
mod toml;

use std::ops::Range;

use super::{comment_ranges, Sp, Spec, Syntax};
pub use dsl::to_dsl;

/// A spec's canonical text in `target` syntax. `source` is the text (and syntax) the
/// spec was parsed from: its comments are kept. Without it the text has no comments.
pub fn format(spec: &Spec, source: Option<(&str, Syntax)>, target: Syntax) -> String {
    let lines = match target {
        Syntax::Dsl => dsl::lines(spec),
        Syntax::Toml => toml::lines(spec),
    };
    let comments = source.map(|(text, syntax)| comments(text, syntax)).unwrap_or_default();
    weave(&lines, &comments, target)
}

/// A string literal: `"`, `\\`, newline and tab escaped in both syntaxes; TOML also
/// escapes a carriage return and other control characters (the DSL reads them as they are).
fn quoted(s: &str, syntax: Syntax) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' if syntax == Syntax::Toml => out.push_str("\\r"),
            c if c.is_control() && syntax == Syntax::Toml => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Whether a writer puts out a value: when the source wrote it (it has a span) or
/// it is not the default.
fn keep<T: PartialEq>(v: &Sp<T>, default: &Sp<T>) -> bool {
    !v.span().is_empty() || v.get_ref() != default.get_ref()
}

/// Breaks a long `[a, b, ..]` over lines of about 90 characters, items indented by
/// `items`, the closing bracket by `close`.
fn wrap_list(v: &str, items: &str, close: &str) -> String {
    if v.len() <= 80 || !v.starts_with('[') {
        return v.to_string();
    }
    // Split on the separators between items (outside strings).
    let inner = &v[1..v.len() - 1];
    let mut parts = Vec::new();
    let (mut start, mut in_string, mut escaped) = (0, false, false);
    for (i, c) in inner.char_indices() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if c == ',' {
            parts.push(inner[start..i].trim());
            start = i + 1;
        }
    }
    parts.push(inner[start..].trim());
    let mut out = String::from("[\n");
    let mut line = String::new();
    for it in parts {
        if !line.is_empty() && line.len() + it.len() + 2 > 88 {
            out.push_str(&format!("{items}{}\n", line.trim_end()));
            line.clear();
        }
        line.push_str(it);
        line.push_str(", ");
    }
    if !line.is_empty() {
        out.push_str(&format!("{items}{}\n", line.trim_end()));
    }
    out.push_str(close);
    out.push(']');
    out
}

/// One output line and the source positions of what it shows.
#[derive(Debug, Clone)]
struct Line {
    shows: Vec<usize>,
    text: String,
}

/// Collects written text as [`Line`]s; [`Out::mark`] records that the current line
/// shows something from the source.
#[derive(Default)]
struct Out {
    lines: Vec<Line>,
    cur: String,
    shows: Vec<usize>,
}

impl Out {
    /// Ties the line being written to where `v` came from (nothing for a value the
    /// source did not write, such as a default).
    fn mark<T>(&mut self, v: &Sp<T>) {
        self.mark_span(v.span());
    }

    fn mark_span(&mut self, span: Range<usize>) {
        if !span.is_empty() {
            self.shows.push(span.start);
        }
    }

    fn finish(mut self) -> Vec<Line> {
        if !self.cur.is_empty() {
            self.lines.push(Line { shows: std::mem::take(&mut self.shows), text: std::mem::take(&mut self.cur) });
        }
        self.lines
    }
}

impl std::fmt::Write for Out {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let mut parts = s.split('\n');
        if let Some(first) = parts.next() {
            self.cur.push_str(first);
        }
        for part in parts {
            let text = std::mem::replace(&mut self.cur, part.to_string());
            self.lines.push(Line { shows: std::mem::take(&mut self.shows), text });
        }
        Ok(())
    }
}

/// A comment of the source.
#[derive(Debug, Clone, PartialEq)]
pub struct Comment {
    /// Byte offset of its marker.
    pub at: usize,
    /// Byte offset of the start of its line.
    pub line_start: usize,
    /// The text after the marker (`#` or `//`), trailing blanks removed.
    pub text: String,
    /// Code comes before it on its line.
    pub trailing: bool,
    /// The source line after it is blank.
    pub blank_after: bool,
}

/// The comments of a spec's text, in order.
pub fn comments(text: &str, syntax: Syntax) -> Vec<Comment> {
    comment_ranges(text, syntax)
        .into_iter()
        .map(|r| {
            let line_start = text[..r.start].rfind('\n').map_or(0, |i| i + 1);
            let body = &text[r.clone()];
            let body = body.strip_prefix("//").or_else(|| body.strip_prefix('#')).unwrap_or(body);
            let next_line = text[r.end..].strip_prefix('\n').unwrap_or("");
            let next_line = next_line.split('\n').next().unwrap_or("");
            Comment {
                at: r.start,
                line_start,
                text: body.trim_end().to_string(),
                trailing: !text[line_start..r.start].trim().is_empty(),
                blank_after: r.end < text.len() && next_line.trim().is_empty(),
            }
        })
        .collect()
}

fn marker(target: Syntax) -> &'static str {
    match target {
        Syntax::Toml => "#",
        Syntax::Dsl => "//",
    }
}

/// Puts `comments` into `lines` (see the module docs) and joins them into text.
fn weave(lines: &[Line], comments: &[Comment], target: Syntax) -> String {
    let mut anchors: Vec<usize> = lines.iter().flat_map(|l| l.shows.iter().copied()).collect();
    anchors.sort_unstable();
    anchors.dedup();
    let mut leading: Vec<Vec<&Comment>> = vec![Vec::new(); lines.len()];
    let mut trailing: Vec<Vec<&Comment>> = vec![Vec::new(); lines.len()];
    let mut at_end: Vec<&Comment> = Vec::new();
    for c in comments {
        // After code: the last line showing something from the same source line.
        if c.trailing {
            let same_line = anchors.iter().rev().find(|&&a| a >= c.line_start && a < c.at);
            if let Some(&a) = same_line {
                if let Some(i) = lines.iter().rposition(|l| l.shows.contains(&a)) {
                    trailing[i].push(c);
                    continue;
                }
            }
        }
        // On its own line (or after code the output does not show): before the line
        // showing what came next in the source.
        let next = anchors.iter().find(|&&a| a > c.at);
        match next.and_then(|&a| lines.iter().position(|l| l.shows.contains(&a))) {
            Some(i) => leading[i].push(c),
            None => at_end.push(c),
        }
    }

    // A line ends in one comment; more that land on it go above it.
    for (lead, trail) in leading.iter_mut().zip(trailing.iter_mut()) {
        if trail.len() > 1 {
            lead.extend(trail.drain(1..));
        }
    }

    let mark = marker(target);
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let indent: String = line.text.chars().take_while(|c| *c == ' ').collect();
        for c in &leading[i] {
            out.push((format!("{indent}{mark}{}", c.text), None));
            if c.blank_after {
                out.push((String::new(), None));
            }
        }
        let tail = trailing[i].first().map(|c| format!("{mark}{}", c.text));
        out.push((line.text.clone(), tail));
    }
    if !at_end.is_empty() {
        out.push((String::new(), None));
        for c in at_end {
            out.push((format!("{mark}{}", c.text), None));
        }
    }

    // Trailing comments of a block of consecutive lines line up two columns past the
    // longest of the lines that carry one.
    let mut text = String::new();
    let mut start = 0;
    while start < out.len() {
        let end = (start..out.len()).find(|&j| out[j].0.is_empty()).map_or(out.len(), |j| j + 1);
        let width = out[start..end].iter().filter(|(_, t)| t.is_some()).map(|(l, _)| l.chars().count()).max();
        for (l, tail) in &out[start..end] {
            match (tail, width) {
                (Some(t), Some(w)) => {
                    text.push_str(&format!("{l:w$}  {t}"));
                }
                _ => text.push_str(l),
            }
            text.push('\n');
        }
        start = end;
    }
    // Blank lines never pile up: one at most between blocks, none at the ends.
    let mut clean = String::with_capacity(text.len());
    for l in text.lines() {
        if l.trim().is_empty() && (clean.is_empty() || clean.ends_with("\n\n")) {
            continue;
        }
        clean.push_str(l.trim_end());
        clean.push('\n');
    }
    while clean.ends_with("\n\n") {
        clean.pop();
    }
    clean
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(at: Option<usize>, text: &str) -> Line {
        Line { shows: at.into_iter().collect(), text: text.into() }
    }

    #[test]
    fn comments_are_found_with_their_kind() {
        let cs = comments("# top\n\na = 1  # after a\nb = \"#x\"\n", Syntax::Toml);
        assert_eq!(cs.len(), 2);
        assert_eq!((cs[0].text.as_str(), cs[0].trailing, cs[0].blank_after), (" top", false, true));
        assert_eq!((cs[1].text.as_str(), cs[1].trailing, cs[1].blank_after), (" after a", true, false));
        let cs = comments("model m { // x\n# y\n}", Syntax::Dsl);
        assert_eq!(cs.iter().map(|c| c.text.as_str()).collect::<Vec<_>>(), [" x", " y"]);
    }

    #[test]
    fn comments_follow_what_they_precede_even_when_it_moves() {
        // Source: "# about b\nb = 2\n# about a\na = 1 # one\n# the end\n"
        let src = "# about b\nb = 2\n# about a\na = 1 # one\n# the end\n";
        let cs = comments(src, Syntax::Toml);
        let a = src.find("1 #").unwrap();
        let b = src.find("2\n").unwrap();
        // The canonical order puts `a` first.
        let lines = [line(Some(a), "a = 1"), line(Some(b), "b = 2")];
        assert_eq!(weave(&lines, &cs, Syntax::Toml), "# about a\na = 1  # one\n# about b\nb = 2\n\n# the end\n");
        // Into the DSL, markers change.
        assert!(weave(&lines, &cs, Syntax::Dsl).starts_with("// about a\na = 1  // one\n"));
    }

    #[test]
    fn trailing_comments_of_a_block_line_up() {
        let src = "x = 1 # a\nlonger = 2 # b\n\nz = 3 # c\n";
        let cs = comments(src, Syntax::Toml);
        let at = |s: &str| src.find(s);
        let lines = [line(at("1"), "x = 1"), line(at("2"), "longer = 2"), line(None, ""), line(at("3"), "z = 3")];
        assert_eq!(weave(&lines, &cs, Syntax::Toml), "x = 1       # a\nlonger = 2  # b\n\nz = 3  # c\n");
    }
}
