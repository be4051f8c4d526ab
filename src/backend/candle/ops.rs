//! Tensor helpers the candle interpreter and its losses share: dropout, batched matmuls
//! split for CUDA, the bias as a rank-1 matmul, softplus and log-sigmoid, links and
//! activations.

use candle_core::{Tensor, D};

use super::{device_ops, Result};
use crate::ir::{Activation, Link};
use crate::rng::Rng;

/// Inverted dropout with a mask from our seeded RNG: kept values scale by 1/(1-rate).
/// Without an RNG (evaluation) or at rate 0 it is the identity.
///
/// On the CPU the mask is drawn from `rng` directly. On a GPU it is made on the device
/// by a counter-based hash seeded from `rng` ([`device_ops::DropoutMask`]): no upload
/// per layer per step. Both are reproducible per seed; the two streams differ.
pub(crate) fn dropout(x: &Tensor, rate: f32, rng: Option<&mut Rng>) -> Result<Tensor> {
    let Some(rng) = rng else { return Ok(x.clone()) };
    if rate <= 0.0 {
        return Ok(x.clone());
    }
    let n = x.elem_count();
    let keep = 1.0 - rate;
    if !x.device().is_cpu() {
        use device_ops::Fill;
        return x * device_ops::DropoutMask::new(rng.next_u64(), keep).like(x)?;
    }
    x * Tensor::from_vec(dropout_mask(rng, n, rate), x.shape(), x.device())?
}

pub(crate) use crate::rng::dropout_mask;

/// The most matrices one cuBLAS batched GEMM is given. Some of its kernels put the batch
/// on a grid axis limited to 65,535 blocks (PyTorch splits at 63 × 1024 on the GPUs where
/// that fails); a split costs a launch per 32K rows, so it is done on every CUDA device.
/// (The illegal address first seen at batch 65,536 on an H200 was a stream race, fixed
/// in `candle_device`; the runs since have this split, so batch 65,536 unsplit is
/// unmeasured.)
const CUDA_GEMM_BATCH: usize = 32 * 1024;

/// `a.matmul(b)` for `a: [B, m, k]`, `b: [B, k, n]`, split into batches of at most
/// [`CUDA_GEMM_BATCH`] on a CUDA device (the backward of each part is as small). One
/// matmul on the CPU.
pub(crate) fn batched_matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    chunked_matmul(a, b, if a.device().is_cuda() { CUDA_GEMM_BATCH } else { usize::MAX })
}

fn chunked_matmul(a: &Tensor, b: &Tensor, chunk: usize) -> Result<Tensor> {
    let n = a.dim(0)?;
    if n <= chunk {
        return a.matmul(b);
    }
    let parts = (0..n)
        .step_by(chunk)
        .map(|at| {
            let len = chunk.min(n - at);
            a.narrow(0, at, len)?.matmul(&b.narrow(0, at, len)?)
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 0)
}

/// `y + b` with the bias broadcast over rows, written as a rank-1 matmul
/// `ones[.., N, 1] x b[.., 1, n]`: its backward is a GEMM, where candle's
/// `broadcast_add` backward sums over a leading axis with a per-element divmod loop
/// (about 10% of a training step on the bench shape).
///
/// # Shapes
/// `y: [N, n]`, `b: [n]` or `y: [G, N, n]`, `b: [G, 1, n]` -> shape of `y`.
pub(crate) fn add_bias(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    match *y.dims() {
        [n, k] => {
            let ones = Tensor::ones((n, 1), y.dtype(), y.device())?;
            y + ones.matmul(&b.reshape((1, k))?)?
        }
        [g, n, _] => {
            let ones = Tensor::ones((g, n, 1), y.dtype(), y.device())?;
            y + ones.matmul(b)?
        }
        _ => y.broadcast_add(b),
    }
}

/// The values of a contiguous f32 CPU operand of a custom op; `what` names it in the
/// error (op and operand, e.g. `dense: bias`).
pub(crate) fn cpu_f32<'a>(s: &'a candle_core::CpuStorage, l: &candle_core::Layout, what: &str) -> Result<&'a [f32]> {
    let candle_core::CpuStorage::F32(v) = s else { candle_core::bail!("{what} must be f32") };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

/// `ln(1 + e^x) = max(x, 0) + ln(1 + e^-|x|)`, finite for any finite `x`.
pub(crate) fn softplus(x: &Tensor) -> Result<Tensor> {
    x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
}

/// `log(sigmoid(x)) = -softplus(-x)`, finite for any finite `x`.
pub(crate) fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    softplus(&x.neg()?)?.neg()
}

/// The sum of two optional tensors (None counts as absent, not as zero).
pub(crate) fn add_opt(a: Option<Tensor>, b: Option<Tensor>) -> Result<Option<Tensor>> {
    Ok(match (a, b) {
        (Some(x), Some(y)) => Some((x + y)?),
        (x, y) => x.or(y),
    })
}

/// A task's raw output as a prediction in the model's units: a probability for
/// [`Link::Sigmoid`] and [`Link::LogProb`], class probabilities `[B, K]` for
/// [`Link::Softmax`], the (transformed) value for [`Link::Identity`].
pub fn apply_link(raw: &Tensor, link: Link) -> Result<Tensor> {
    match link {
        Link::Sigmoid => activate(raw, Activation::Sigmoid),
        Link::LogProb => raw.exp(),
        Link::Softmax => candle_nn::ops::softmax(raw, D::Minus1),
        Link::Identity => Ok(raw.clone()),
    }
}

pub(crate) fn activate(x: &Tensor, a: Activation) -> Result<Tensor> {
    match a {
        Activation::Relu => x.relu(),
        Activation::Tanh => x.tanh(),
        Activation::Sigmoid => (x.neg()?.exp()? + 1.0)?.recip(),
        Activation::Gelu => x.gelu(),
        Activation::Linear => Ok(x.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    #[test]
    fn dropout_zeroes_the_rate_and_keeps_the_mean() {
        let x = Tensor::ones(100_000, DType::F32, &candle_core::Device::Cpu).unwrap();
        let y = dropout(&x, 0.3, Some(&mut Rng::new(4))).unwrap().to_vec1::<f32>().unwrap();
        let zeros = y.iter().filter(|&&v| v == 0.0).count() as f64 / y.len() as f64;
        let mean = y.iter().map(|&v| v as f64).sum::<f64>() / y.len() as f64;
        assert!((zeros - 0.3).abs() < 0.01, "{zeros}");
        assert!((mean - 1.0).abs() < 0.02, "{mean}");
        let same = dropout(&x, 0.3, None).unwrap();
        assert_eq!(same.to_vec1::<f32>().unwrap(), x.to_vec1::<f32>().unwrap());
    }

    /// The CUDA split of a batched matmul gives the one matmul's values and gradients.
    #[test]
    fn a_split_batched_matmul_equals_one_matmul() {
        let dev = candle_core::Device::Cpu;
        let a = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (7, 2, 3), &dev).unwrap()).unwrap();
        let b = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (7, 3, 4), &dev).unwrap()).unwrap();
        let whole = a.as_tensor().matmul(b.as_tensor()).unwrap();
        let split = chunked_matmul(a.as_tensor(), b.as_tensor(), 3).unwrap();
        let diff = |x: &Tensor, y: &Tensor| -> f32 {
            (x - y).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
        };
        assert_eq!(split.dims(), whole.dims());
        assert!(diff(&split, &whole) < 1e-6);
        let weights = Tensor::randn(0f32, 1.0, (7, 2, 4), &dev).unwrap();
        let g1 = (&whole * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&split * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&a, &b] {
            let (x, y) = (g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap());
            assert!(diff(x, y) < 1e-6);
            assert!(x.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
        }
    }
}
