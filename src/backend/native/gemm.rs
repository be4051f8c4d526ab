//! `C (+)= A B` over f32 matrices with any strides (gemm-rs on the calling thread): every
//! matmul-like op of the native backend, forward and backward, and the GEMMs of the
//! FMA peak that `multigate bench` measures the forward pass against.

use super::NativeError;

/// A matrix inside a buffer: element `(i, j)` at `at + i * rs + j * cs`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mat {
    pub at: usize,
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl Mat {
    /// `rows x cols`, row-major, rows `stride` apart, from `at`.
    pub fn rows(at: usize, rows: usize, cols: usize, stride: usize) -> Mat {
        Mat { at, rows, cols, rs: stride, cs: 1 }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Mat {
        Mat { at: self.at, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }

    fn fits(&self, len: usize) -> bool {
        self.rows == 0 || self.cols == 0 || self.at + (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < len
    }
}

/// `dst = a b`, or with `add` `dst += a b`.
pub(crate) fn matmul(
    dst: &mut [f32],
    d: Mat,
    a: &[f32],
    am: Mat,
    b: &[f32],
    bm: Mat,
    add: bool,
) -> Result<(), NativeError> {
    let (m, k, n) = (am.rows, am.cols, bm.cols);
    if bm.rows != k || d.rows != m || d.cols != n || !am.fits(a.len()) || !bm.fits(b.len()) || !d.fits(dst.len()) {
        return Err(NativeError::Kernel(format!(
            "a GEMM of [{m}, {k}] x [{}, {n}] into [{}, {}] does not fit",
            bm.rows, d.rows, d.cols
        )));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !add {
            (0..m).for_each(|i| (0..n).for_each(|j| dst[d.at + i * d.rs + j * d.cs] = 0.0));
        }
        return Ok(());
    }
    // SAFETY: `fits` checked that every element of each view lies inside its slice, and
    // dst (a &mut) aliases neither a nor b. With `add` the GEMM reads dst, else only writes it.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().add(d.at),
            d.cs as isize,
            d.rs as isize,
            add,
            a.as_ptr().add(am.at),
            am.cs as isize,
            am.rs as isize,
            b.as_ptr().add(bm.at),
            bm.cs as isize,
            bm.rs as isize,
            if add { 1.0f32 } else { 0.0 },
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    Ok(())
}

/// This thread's f32 multiply-add rate in FLOP/s, measured: twelve independent chains of
/// 8-lane FMAs, best of three short runs (about 50 ms in all). The ceiling for [`matmul`],
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
