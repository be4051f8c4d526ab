//! Errors of the front ends: the text is not a spec (syntax, unknown keys, values of
//! the wrong type). Semantic checks come later, in `lower`.

use miette::{Diagnostic, SourceSpan};
use thiserror::Error;

use crate::source::Span;

#[derive(Debug, Clone, Error, Diagnostic, PartialEq)]
pub enum SpecError {
    #[error("{message}")]
    #[diagnostic(code(multigate::spec::syntax))]
    Syntax {
        message: String,
        #[label("here")]
        span: Option<SourceSpan>,
        #[help]
        help: String,
    },

    #[error("unknown key `{key}` in {context}")]
    #[diagnostic(code(multigate::spec::unknown_key))]
    UnknownKey {
        key: String,
        context: &'static str,
        #[label("not a key of {context}")]
        span: SourceSpan,
        #[help]
        help: String,
    },

    #[error("`{key}` is given twice")]
    #[diagnostic(code(multigate::spec::repeated_key), help("keep one of them"))]
    Repeated {
        key: String,
        #[label("first here")]
        first: SourceSpan,
        #[label("again here")]
        second: SourceSpan,
    },

    #[error("`{key}` must be {expected}")]
    #[diagnostic(code(multigate::spec::bad_value))]
    BadValue {
        key: String,
        expected: &'static str,
        #[label("not {expected}")]
        span: SourceSpan,
    },

    #[error("the spec nests {depth} levels deep")]
    #[diagnostic(
        code(multigate::spec::too_deep),
        help("specs nest a few levels at most; this looks like a broken file")
    )]
    TooDeep {
        depth: usize,
        #[label("too deep from here")]
        span: SourceSpan,
    },

    #[error("the spec is {bytes} bytes; specs are limited to {limit} bytes")]
    #[diagnostic(
        code(multigate::spec::too_large),
        help("a spec describes a model; data belongs in the files it names")
    )]
    TooLarge { bytes: usize, limit: usize },

    #[error("the spec is empty")]
    #[diagnostic(code(multigate::spec::empty), help("a spec needs at least a model name, one feature and one task"))]
    Empty,
}

impl SpecError {
    /// The primary span, for one-line messages and sorting.
    pub fn span(&self) -> Option<Span> {
        let s = match self {
            SpecError::Syntax { span, .. } => (*span)?,
            SpecError::UnknownKey { span, .. } | SpecError::BadValue { span, .. } | SpecError::TooDeep { span, .. } => {
                *span
            }
            SpecError::Repeated { second, .. } => *second,
            SpecError::TooLarge { .. } | SpecError::Empty => return None,
        };
        Some(s.offset()..s.offset() + s.len())
    }
}
