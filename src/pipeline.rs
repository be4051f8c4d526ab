//! The phases, in order: read -> parse (TOML or DSL) -> lower -> (backend build -> train -> export).

use std::path::Path;

use crate::diag;
use crate::lower::{self, Compiled, LowerError};
use crate::source::SourceFile;
use crate::spec::{self, SpecError};

/// Everything that can stop a spec from compiling.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{} error(s) in the spec", .0.len())]
    Spec(Vec<SpecError>),
    #[error("{} error(s) in the spec", .0.len())]
    Lower(Vec<LowerError>),
}

impl CompileError {
    /// Every error, rendered with snippets (no colour unless asked).
    pub fn render(&self, src: Option<&SourceFile>, colour: bool) -> String {
        match (self, src) {
            (CompileError::Spec(es), Some(src)) => {
                es.iter().map(|e| diag::render(src, e, colour)).collect::<Vec<_>>().join("\n")
            }
            (CompileError::Lower(es), Some(src)) => {
                es.iter().map(|e| diag::render(src, e, colour)).collect::<Vec<_>>().join("\n")
            }
            _ => format!("error: {self}\n"),
        }
    }
}

impl CompileError {
    /// How many errors this holds.
    pub fn count(&self) -> usize {
        match self {
            CompileError::Spec(es) => es.len(),
            CompileError::Lower(es) => es.len(),
            CompileError::Read { .. } => 1,
        }
    }
}

/// Parses (TOML, or the DSL for `.mg` files) and lowers a spec already in memory.
pub fn compile_source(src: &SourceFile) -> Result<Compiled, CompileError> {
    let spec = spec::parse(src).map_err(CompileError::Spec)?;
    lower::lower(&spec, src).map_err(CompileError::Lower)
}

/// Reads, parses and lowers a spec file.
pub fn compile_file(path: &Path) -> Result<(SourceFile, Result<Compiled, CompileError>), CompileError> {
    let src =
        SourceFile::read(path).map_err(|source| CompileError::Read { path: path.display().to_string(), source })?;
    let compiled = compile_source(&src);
    Ok((src, compiled))
}
