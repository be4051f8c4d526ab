//! Backends: validated IR -> a trainable model.
//!
//! A backend sees only [`Validated`] models, so it can rely on every width being
//! consistent. The candle backend is the only one today; the device is an enum so
//! CUDA plugs in behind the `cuda` feature without touching the IR.

pub mod candle;
pub mod native;

use crate::ir::Validated;

/// Where tensors live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// A CUDA device by ordinal (needs the `cuda` feature).
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(n)) => Ok(Device::Cuda(n)),
                _ => Err(format!("unknown device `{s}`: expected cpu, cuda or cuda:N")),
            },
        }
    }
}

/// Builds a runnable model from validated IR.
pub trait Backend {
    type Model;
    type Error: std::error::Error;
    /// Initialises every parameter from `seed` (deterministic across platforms).
    fn build(&self, model: &Validated, seed: u64) -> Result<Self::Model, Self::Error>;
}
