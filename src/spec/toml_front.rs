//! TOML front end: text -> [`Spec`], with serde's `deny_unknown_fields` and
//! `toml::Spanned` keeping every value's position.

use miette::Diagnostic;
use thiserror::Error;

use super::Spec;
use crate::source::{SourceFile, Span};

/// The spec could not be read as a spec: bad TOML syntax, an unknown key, a value of
/// the wrong type, a missing required key.
#[derive(Debug, Error, Diagnostic)]
pub enum SpecError {
    #[error("{message}")]
    #[diagnostic(code(multigate::spec::syntax))]
    Toml {
        message: String,
        #[label("here")]
        span: Option<miette::SourceSpan>,
        #[help]
        help: String,
    },
    #[error("the spec is empty")]
    #[diagnostic(
        code(multigate::spec::empty),
        help("a spec needs at least a [model] table with a name, one feature and one task")
    )]
    Empty,
}

impl SpecError {
    pub fn span(&self) -> Option<Span> {
        match self {
            SpecError::Toml { span, .. } => span.map(|s| s.offset()..s.offset() + s.len()),
            SpecError::Empty => None,
        }
    }
}

/// Parses a TOML spec.
pub fn parse_toml(src: &SourceFile) -> Result<Spec, SpecError> {
    if src.text.trim().is_empty() {
        return Err(SpecError::Empty);
    }
    toml::from_str::<Spec>(&src.text).map_err(|e| {
        // toml's message repeats the snippet; keep only its first line, the snippet is ours.
        let message = e.message().lines().next().unwrap_or("invalid TOML").to_string();
        let help = unknown_field_help(&message).unwrap_or_else(|| "see the spec reference in README.md".to_string());
        SpecError::Toml { message, span: e.span().map(Into::into), help }
    })
}

/// "unknown field `x`, expected one of `a`, `b`" -> "did you mean `a`?".
fn unknown_field_help(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (found, rest) = rest.split_once('`')?;
    let expected: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    crate::diag::did_you_mean(found, expected.iter().copied())
        .or_else(|| Some(format!("allowed keys here: {}", expected.join(", "))))
}
