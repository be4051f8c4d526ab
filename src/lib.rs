//! multigate: a compiler for multi-task recommendation models.
//!
//! A spec (TOML, or the `.mg` DSL of `grammar/multigate.pest`) declares features,
//! crosses, a stack of shared-bottom / MoE / MMoE / CGC layers (consecutive CGC layers
//! are PLE) and one head per task (binary, regression, multiclass, or an ESMM product). The
//! pipeline ([`pipeline`]) runs one way:
//!
//! 1. [`spec`]: text -> [`spec::Spec`] (raw, spanned, names unresolved; both syntaxes);
//! 2. [`lower`]: `Spec` -> [`ir::Validated`] (names resolved, shapes inferred, ranges
//!    checked; every mistake reported with its span);
//! 3. [`backend`]: validated IR -> a trainable model (candle, CPU; CUDA behind a feature);
//! 4. [`data`]: rows (synthetic generators, CSV) -> encoded batches;
//! 5. [`train`]: Adam, losses, metrics, the loop;
//! 6. [`export`]: bundle and checkpoint write/read (safetensors + spec + provenance +
//!    manifest with the parameter table and file hashes), crash-safe; ONNX export.
//!
//! [`run`] strings stages 3-6 together as library calls (`train_spec` with an
//! observer, `Predictor`); [`serve`] answers HTTP predict requests with a `Predictor`;
//! the CLI only parses arguments and prints.
//!
//! ```no_run
//! use multigate::{pipeline::compile_source, source::SourceFile};
//! let src = SourceFile::from_text("m.mg", "model m { feature x: dense task y: regression(label = y) }");
//! let compiled = compile_source(&src).expect("a valid spec");
//! println!("{}", *compiled.model); // the IR, one line per node
//! ```

pub mod backend;
pub mod data;
pub mod diag;
pub mod export;
pub mod fs;
pub mod init;
pub mod ir;
pub mod lower;
pub mod pipeline;
pub mod program;
pub mod report;
pub mod rng;
pub mod run;
pub mod serve;
pub mod source;
pub mod spec;
pub mod sweep;
pub mod train;
