//! multigate: a compiler for multi-task recommendation models.
//!
//! A spec (TOML) declares features, crosses, a stack of shared-bottom / MoE / MMoE
//! layers and one tower per task. The pipeline ([`pipeline`]) runs one way:
//!
//! 1. [`spec`]: text -> [`spec::Spec`] (raw, spanned, names unresolved);
//! 2. [`lower`]: `Spec` -> [`ir::Validated`] (names resolved, shapes inferred, ranges
//!    checked; every mistake reported with its span);
//! 3. [`backend`]: validated IR -> a trainable model (candle, CPU; CUDA behind a feature);
//! 4. [`data`]: rows (synthetic generators, CSV) -> encoded batches;
//! 5. [`train`]: Adam, losses, metrics, the loop;
//! 6. [`export`]: bundle write/read (safetensors + spec + IR text + metrics).

pub mod backend;
pub mod data;
pub mod diag;
pub mod export;
pub mod ir;
pub mod lower;
pub mod pipeline;
pub mod rng;
pub mod source;
pub mod spec;
pub mod train;
