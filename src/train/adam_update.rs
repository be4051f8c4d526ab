//! Adam's arithmetic, one source for both halves of the optimizer: its configuration
//! and the per-step coefficients of the update, applied here on the host (`adam.rs`)
//! and passed to the CUDA kernels (`adam_cuda.rs`).

use crate::ir::TrainConfig;

#[derive(Debug, Clone, Copy)]
pub struct AdamConfig {
    /// Update embedding rows only in the steps that look them up (TF's LazyAdam,
    /// PyTorch's SparseAdam); dense parameters are unaffected.
    pub lazy: bool,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl From<&TrainConfig> for AdamConfig {
    fn from(t: &TrainConfig) -> Self {
        AdamConfig { lazy: t.lazy_embeddings, beta1: t.beta1, beta2: t.beta2, eps: t.eps, weight_decay: t.weight_decay }
    }
}

/// Values per piece of an update split across threads.
pub(super) const CHUNK: usize = 1 << 15;

/// The per-step constants of the update.
#[derive(Clone, Copy)]
pub(super) struct Coefficients {
    pub(super) b1: f32,
    pub(super) b2: f32,
    pub(super) eps: f32,
    pub(super) step_size: f32,
    pub(super) inv_bc2_sqrt: f32,
    pub(super) keep: f32,
}

impl Coefficients {
    pub(super) fn new(c: &AdamConfig, lr: f64, step: u64) -> Self {
        let bc1 = 1.0 - c.beta1.powi(step as i32);
        let bc2 = 1.0 - c.beta2.powi(step as i32);
        Coefficients {
            b1: c.beta1 as f32,
            b2: c.beta2 as f32,
            eps: c.eps as f32,
            step_size: (lr / bc1) as f32,
            inv_bc2_sqrt: (1.0 / bc2.sqrt()) as f32,
            keep: (1.0 - lr * c.weight_decay) as f32,
        }
    }

    /// The update over one slice: with AVX2 where the CPU has it (8 lanes, where the
    /// portable build has 4; the same IEEE operations, so the same bits), else portable.
    pub(super) fn apply(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { self.apply_avx2(p, g, m, v) };
        }
        self.apply_lanes(p, g, m, v)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn apply_avx2(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        self.apply_lanes(p, g, m, v)
    }

    /// The update, written so that it vectorises at whatever width it is compiled for.
    #[inline(always)]
    fn apply_lanes(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let Coefficients { b1, b2, eps, step_size, inv_bc2_sqrt, keep } = *self;
        let n = p.len().min(g.len()).min(m.len()).min(v.len());
        let (p, g, m, v) = (&mut p[..n], &g[..n], &mut m[..n], &mut v[..n]);
        for i in 0..n {
            let gi = g[i];
            let mi = b1 * m[i] + (1.0 - b1) * gi;
            let vi = b2 * v[i] + (1.0 - b2) * gi * gi;
            m[i] = mi;
            v[i] = vi;
            p[i] = p[i] * keep - step_size * mi / (vi.sqrt() * inv_bc2_sqrt + eps);
        }
    }

    /// The update over whole tensors, split across the current rayon pool's threads
    /// when big.
    pub(super) fn apply_all(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        if p.len() >= 2 * CHUNK && rayon::current_num_threads() > 1 {
            use rayon::prelude::*;
            p.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .for_each(|(((p, g), m), v)| self.apply(p, g, m, v));
        } else {
            self.apply(p, g, m, v);
        }
    }
}
