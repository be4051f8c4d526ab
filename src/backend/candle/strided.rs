//! Matrices as strided views of f32 buffers, and the GEMM over them (gemm-rs, on the
//! calling thread) that the CPU passes without autograd use: evaluation (`infer.rs`)
//! and training (`backprop/`).

use super::Result;

/// Rows of a row-major matrix: `n` rows of `width` values, `stride` apart, from `at`.
#[derive(Clone, Copy)]
pub(crate) struct Rows {
    pub(crate) at: usize,
    pub(crate) n: usize,
    pub(crate) width: usize,
    pub(crate) stride: usize,
}

impl Rows {
    pub(crate) fn packed(n: usize, width: usize) -> Rows {
        Rows { at: 0, n, width, stride: width }
    }
}

/// A strided matrix: element `(i, j)` at `at + i * rs + j * cs`.
#[derive(Clone, Copy)]
pub(crate) struct View {
    pub(crate) at: usize,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

impl View {
    pub(crate) fn of(r: Rows) -> View {
        View { at: r.at, rows: r.n, cols: r.width, rs: r.stride, cs: 1 }
    }

    pub(crate) fn packed(rows: usize, cols: usize) -> View {
        View { at: 0, rows, cols, rs: cols, cs: 1 }
    }

    pub(crate) fn t(self) -> View {
        View { at: self.at, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }
}

/// `dst = a b`, or with `add` `dst += a b` (`a: [m, k]`, `b: [k, n]`, `dst: [m, n]`,
/// any strides): the native backend's GEMM.
pub(crate) fn matmul(dst: &mut [f32], dv: View, a: &[f32], av: View, b: &[f32], bv: View, add: bool) -> Result<()> {
    use crate::backend::native::gemm::{self, Mat};
    let mat = |v: View| Mat { at: v.at, rows: v.rows, cols: v.cols, rs: v.rs, cs: v.cs };
    gemm::matmul(dst, mat(dv), a, mat(av), b, mat(bv), add).map_err(|e| candle_core::Error::Msg(e.to_string()))
}

/// This thread's f32 multiply-add rate in FLOP/s, measured: twelve independent chains of
/// 8-lane FMAs, best of three short runs (about 50 ms in all). The ceiling for `matmul`,
/// so for a pass whose FLOPs are its GEMMs: `multigate bench` puts the forward pass
/// beside it. None on a CPU without AVX2 and FMA.
pub fn fma_peak() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        const ITERS: usize = 4_000_000;
        let best = (0..3)
            .map(|_| {
                let t = std::time::Instant::now();
                // SAFETY: the CPU has AVX2 and FMA, checked just above.
                std::hint::black_box(unsafe { fma_chains(std::hint::black_box(ITERS)) });
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);
        return Some((ITERS * 12 * 8 * 2) as f64 / best.max(1e-9));
    }
    None
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_chains(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_ps(); 12];
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    for _ in 0..iters {
        for r in acc.iter_mut() {
            *r = _mm256_fmadd_ps(*r, a, b);
        }
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), acc.iter().fold(_mm256_setzero_ps(), |s, &r| _mm256_add_ps(s, r)));
    lanes.iter().sum()
}
