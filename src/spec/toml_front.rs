//! TOML front end: text -> [`Spec`], with serde's `deny_unknown_fields` and
//! `toml::Spanned` keeping every value's position.

use super::{Spec, SpecError};
use crate::source::SourceFile;

/// Parses a TOML spec. TOML reports its first error only.
pub fn parse_toml(src: &SourceFile) -> Result<Spec, Vec<SpecError>> {
    super::check_size(src)?;
    toml::from_str::<Spec>(&src.text).map_err(|e| {
        // toml's message repeats the snippet; keep only its first line, the snippet is ours.
        let message = e.message().lines().next().unwrap_or("invalid TOML").to_string();
        let help = unknown_field_help(&message).unwrap_or_else(|| "see the spec reference in README.md".to_string());
        vec![SpecError::Syntax { message, span: e.span().map(Into::into), help }]
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
