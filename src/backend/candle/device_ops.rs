//! Ops that run multigate's own CUDA kernels (`kernels/multigate.cu`, compiled to PTX
//! by `build.rs` under the `cuda` feature): dropout masks and gate noise here, fused dense and
//! sparse Adam in `train::adam`. Each kernel has a CPU twin, so that its arithmetic is
//! tested on any machine; the GPU parity tests (`tests/suite/cuda.rs`) compare the two.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};

type Result<T> = candle_core::Result<T>;

/// splitmix64: the counter-based hash behind the dropout mask (`splitmix64` in the
/// kernel file). Element `i` of a mask with seed `s` hashes `s + i`, so a mask is the
/// same on every device and needs no generator state.
pub fn splitmix64(x: u64) -> u64 {
    let mut x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Values that depend on their element index alone (a counter-based random stream):
/// made on the CPU by [`Fill::value`], on a GPU by the kernel `KERNEL`, which takes the
/// output, its length, then [`Fill::args`]. `fill.like(x)` is a tensor of `x`'s shape.
pub trait Fill {
    const NAME: &'static str;
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    const KERNEL: &'static str;
    /// The value at element `i`.
    fn value(&self, i: u64) -> f32;
    /// The kernel's arguments after the output and its length.
    #[cfg(feature = "cuda")]
    fn args<'a>(&'a self, b: &mut candle_core::cuda_backend::cudarc::driver::LaunchArgs<'a>);

    /// A tensor of `like`'s shape, dtype f32, on its device; `like`'s values are not
    /// read. No gradient flows through it.
    fn like(&self, like: &candle_core::Tensor) -> Result<candle_core::Tensor>
    where
        Self: Sized,
    {
        like.apply_op1_no_bwd(&FillOp(self))
    }
}

struct FillOp<'a, F>(&'a F);

impl<F: Fill> CustomOp1 for FillOp<'_, F> {
    fn name(&self) -> &'static str {
        F::NAME
    }

    fn cpu_fwd(&self, _s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = l.shape().elem_count() as u64;
        Ok((CpuStorage::F32((0..n).map(|i| self.0.value(i)).collect()), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
        use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
        let dev = &s.device;
        let n = l.shape().elem_count() as u64;
        // SAFETY: every element is written by the kernel below.
        let mut out = unsafe { dev.alloc::<f32>(n as usize)? };
        let (stream, f) = cuda::kernel(dev, F::KERNEL)?;
        let mut b = stream.launch_builder(&f);
        b.arg(&mut out).arg(&n);
        self.0.args(&mut b);
        // SAFETY: the argument list matches the kernel's signature (`Fill::args`).
        unsafe { b.launch(cuda::grid(n)) }.w()?;
        drop(b);
        Ok((candle_core::CudaStorage { slice: CudaStorageSlice::F32(out), device: dev.clone() }, l.shape().clone()))
    }
}

/// An inverted-dropout mask: `1 / keep` where kept (probability `keep`), 0 elsewhere.
/// Dropout is `x * mask`.
pub struct DropoutMask {
    seed: u64,
    /// Hashes below this are kept.
    threshold: u32,
    scale: f32,
}

impl DropoutMask {
    /// `keep`: the probability of keeping a value, in (0, 1].
    pub fn new(seed: u64, keep: f32) -> DropoutMask {
        DropoutMask { seed, threshold: (keep as f64 * u32::MAX as f64) as u32, scale: 1.0 / keep }
    }
}

impl Fill for DropoutMask {
    const NAME: &'static str = "multigate-dropout-mask";
    const KERNEL: &'static str = "mg_dropout_mask";

    fn value(&self, i: u64) -> f32 {
        let kept = ((splitmix64(self.seed.wrapping_add(i)) >> 32) as u32) < self.threshold;
        if kept {
            self.scale
        } else {
            0.0
        }
    }

    #[cfg(feature = "cuda")]
    fn args<'a>(&'a self, b: &mut candle_core::cuda_backend::cudarc::driver::LaunchArgs<'a>) {
        use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
        b.arg(&self.seed).arg(&self.threshold).arg(&self.scale);
    }
}

/// Standard normal values (Box-Muller over the same hash as [`DropoutMask`]).
pub struct StandardNormal {
    pub seed: u64,
}

impl Fill for StandardNormal {
    const NAME: &'static str = "multigate-standard-normal";
    const KERNEL: &'static str = "mg_normal";

    fn value(&self, i: u64) -> f32 {
        let h = splitmix64(self.seed.wrapping_add(i));
        // u1 in (0, 1] from the top 24 bits, u2 in [0, 1) from the next 24.
        let u1 = ((h >> 40) + 1) as f32 * (1.0 / 16_777_216.0);
        let u2 = ((h >> 16) & 0xFF_FFFF) as f32 * (1.0 / 16_777_216.0);
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }

    #[cfg(feature = "cuda")]
    fn args<'a>(&'a self, b: &mut candle_core::cuda_backend::cudarc::driver::LaunchArgs<'a>) {
        use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
        b.arg(&self.seed);
    }
}

/// Loading and launching the kernels.
#[cfg(feature = "cuda")]
pub(crate) mod cuda {
    use std::sync::{Arc, Mutex};

    use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaModule, CudaStream, LaunchConfig};
    use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
    use candle_core::cuda_backend::{CudaDevice, DeviceId, WrapErr};

    /// The kernels' PTX, built by `build.rs`.
    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/multigate.ptx"));

    /// Kernel `name` and the device's stream to launch it on (where candle runs its
    /// own kernels). The module is loaded once per device.
    pub(crate) fn kernel(dev: &CudaDevice, name: &str) -> super::Result<(Arc<CudaStream>, CudaFunction)> {
        static MODULES: Mutex<Vec<(DeviceId, Arc<CudaModule>)>> = Mutex::new(Vec::new());
        let stream = dev.cuda_stream();
        let module = {
            let mut modules = MODULES.lock().unwrap_or_else(|e| e.into_inner());
            match modules.iter().find(|(id, _)| *id == dev.id()) {
                Some((_, m)) => m.clone(),
                None => {
                    let m = stream.context().load_module(Ptx::from_src(PTX)).w()?;
                    modules.push((dev.id(), m.clone()));
                    m
                }
            }
        };
        Ok((stream, module.load_function(name).w()?))
    }

    /// A grid-stride launch over `n` elements: 256 threads a block, at most 8192 blocks.
    pub(crate) fn grid(n: u64) -> LaunchConfig {
        let blocks = n.div_ceil(256).clamp(1, 8192) as u32;
        LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
    }

    /// One block per row of `d` values, at most 8192 blocks (they stride over the rows).
    pub(crate) fn rows(b: u64, d: u64) -> LaunchConfig {
        let threads = d.next_power_of_two().clamp(32, 256) as u32;
        LaunchConfig { grid_dim: (b.clamp(1, 8192) as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    #[test]
    fn dropout_mask_keeps_the_rate_and_the_mean_and_depends_on_the_seed_only() {
        let x = Tensor::zeros(200_000, DType::F32, &Device::Cpu).unwrap();
        let op = DropoutMask::new(7, 0.7);
        let m = op.like(&x).unwrap().to_vec1::<f32>().unwrap();
        let zeros = m.iter().filter(|&&v| v == 0.0).count() as f64 / m.len() as f64;
        let mean = m.iter().map(|&v| v as f64).sum::<f64>() / m.len() as f64;
        assert!((zeros - 0.3).abs() < 0.005, "{zeros}");
        assert!((mean - 1.0).abs() < 0.01, "{mean}");
        assert!(m.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-6));
        // The operand's values do not matter; the seed does.
        let again = op.like(&(x + 5.0).unwrap()).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(m, again);
        let other = DropoutMask::new(8, 0.7)
            .like(&Tensor::zeros(200_000, DType::F32, &Device::Cpu).unwrap())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let differ = m.iter().zip(&other).filter(|(a, b)| a != b).count() as f64 / m.len() as f64;
        // Two independent masks differ where exactly one keeps: 2 * 0.7 * 0.3.
        assert!((differ - 0.42).abs() < 0.01, "{differ}");
    }

    #[test]
    fn standard_normal_has_zero_mean_and_unit_variance() {
        let x = Tensor::zeros(200_000, DType::F32, &Device::Cpu).unwrap();
        let z = StandardNormal { seed: 3 }.like(&x).unwrap().to_vec1::<f32>().unwrap();
        let n = z.len() as f64;
        let mean = z.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = z.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        let beyond2 = z.iter().filter(|v| v.abs() > 2.0).count() as f64 / n;
        assert!(z.iter().all(|v| v.is_finite()));
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var - 1.0).abs() < 0.01, "{var}");
        // P(|Z| > 2) = 0.0455 for a standard normal.
        assert!((beyond2 - 0.0455).abs() < 0.003, "{beyond2}");
    }

    #[test]
    fn splitmix64_matches_its_reference_values() {
        // The first outputs of the reference splitmix64 generator seeded with 0, whose
        // state advances by the golden-ratio constant: hash(k * gamma).
        let gamma = 0x9E37_79B9_7F4A_7C15u64;
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(gamma), 0x6E78_9E6A_A1B9_65F4);
    }
}
