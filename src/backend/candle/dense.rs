//! `act(x W + b)` as one candle op with a hand-written backward (CPU, f32, ReLU or
//! linear): the forward is one GEMM into a buffer pre-filled with the bias, then the
//! activation in place; the backward is the ReLU mask in one pass and three GEMMs
//! (`dx = dz W^T`, `dW = x^T dz`, `db = 1^T dz`).
//!
//! candle's autograd of the same expression records five nodes (matmul, bias matmul,
//! add, relu and the ones), and gives each gradient a zero-filled buffer it then adds
//! into; the fused op has one node. Other devices, dtypes and activations take the
//! unfused path, which computes the same function.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

use super::{activate, add_bias, cpu_f32, Result};
use crate::ir::Activation;

/// `act(x W + b)`: `x: [N, K]`, `w: [K, M]`, `b: [M]` -> `[N, M]`.
pub(crate) fn dense(x: &Tensor, w: &Tensor, b: &Tensor, act: Activation) -> Result<Tensor> {
    let fusable = matches!(act, Activation::Relu | Activation::Linear)
        && x.device().is_cpu()
        && [x, w, b].iter().all(|t| t.dtype() == candle_core::DType::F32)
        && x.rank() == 2
        && w.rank() == 2
        && b.rank() == 1;
    if !fusable {
        return activate(&add_bias(&x.matmul(w)?, b)?, act);
    }
    x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, Dense { relu: act == Activation::Relu })
}

struct Dense {
    relu: bool,
}

impl CustomOp3 for Dense {
    fn name(&self) -> &'static str {
        "multigate-dense"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, k) = l1.shape().dims2()?;
        let (k2, m) = l2.shape().dims2()?;
        if k != k2 || l3.shape().elem_count() != m {
            candle_core::bail!("dense: x {:?}, w {:?}, b {:?} do not fit", l1.shape(), l2.shape(), l3.shape());
        }
        let (x, w, b) =
            (cpu_f32(s1, l1, "dense: x")?, cpu_f32(s2, l2, "dense: weight")?, cpu_f32(s3, l3, "dense: bias")?);
        // Every row starts as the bias; the GEMM adds x W to it.
        let mut y = Vec::with_capacity(n * m);
        for _ in 0..n {
            y.extend_from_slice(b);
        }
        if n > 0 && m > 0 && k > 0 {
            // SAFETY: y is n x m, x is n x k and w is k x m, all row-major and contiguous,
            // as the strides passed say; the slices outlive the call.
            unsafe {
                gemm::gemm(
                    n,
                    m,
                    k,
                    y.as_mut_ptr(),
                    1,
                    m as isize,
                    true,
                    x.as_ptr(),
                    1,
                    k as isize,
                    w.as_ptr(),
                    1,
                    m as isize,
                    1.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        }
        if self.relu {
            y.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        Ok((CpuStorage::F32(y), Shape::from((n, m))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Gradients are computed on detached operands: no graph is recorded for them.
        let dz = if self.relu { dy.contiguous()?.apply_op2_no_bwd(&y.detach(), &ReluGrad)? } else { dy.clone() };
        let dx = dz.matmul(&w.detach().t()?)?;
        let dw = x.detach().t()?.matmul(&dz)?;
        let ones = Tensor::ones((1, dz.dim(0)?), dz.dtype(), dz.device())?;
        let db = ones.matmul(&dz)?.squeeze(0)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// `dy` where `y > 0`, else 0 (the gradient through a ReLU whose output is `y`).
struct ReluGrad;

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "multigate-relu-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (dy, y) = (cpu_f32(s1, l1, "relu grad: gradient")?, cpu_f32(s2, l2, "relu grad: output")?);
        if dy.len() != y.len() {
            candle_core::bail!("relu grad: {} gradients for {} outputs", dy.len(), y.len());
        }
        let dz = dy.iter().zip(y).map(|(&g, &v)| if v > 0.0 { g } else { 0.0 }).collect();
        Ok((CpuStorage::F32(dz), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn value(rng: &mut crate::rng::Rng, shape: &[usize]) -> Var {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    /// The fused op's value and every gradient equal candle's autograd of the same
    /// expression, for ReLU and linear, on a loss that weighs each output differently.
    #[test]
    fn fused_dense_equals_autograd() {
        let mut rng = crate::rng::Rng::new(11);
        for act in [Activation::Relu, Activation::Linear] {
            let (x, w, b) = (value(&mut rng, &[37, 13]), value(&mut rng, &[13, 9]), value(&mut rng, &[9]));
            let r =
                Tensor::from_vec((0..37 * 9).map(|_| rng.normal() as f32).collect::<Vec<_>>(), (37, 9), &Device::Cpu)
                    .unwrap();
            let fused = dense(x.as_tensor(), w.as_tensor(), b.as_tensor(), act).unwrap();
            let plain =
                activate(&x.as_tensor().matmul(w.as_tensor()).unwrap().broadcast_add(b.as_tensor()).unwrap(), act)
                    .unwrap();
            assert!(max_diff(&fused, &plain) < 1e-5);
            let gf = (&fused * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gp = (&plain * &r).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &w, &b] {
                let (a, p) = (gf.get(v.as_tensor()).unwrap(), gp.get(v.as_tensor()).unwrap());
                assert_eq!(a.dims(), p.dims());
                assert!(max_diff(a, p) < 1e-4, "{act:?}: {}", max_diff(a, p));
            }
        }
    }

    /// Central finite differences in f64 of the loss against the op's gradients.
    #[test]
    fn fused_dense_gradients_match_finite_differences() {
        let mut rng = crate::rng::Rng::new(12);
        let (x, w, b) = (value(&mut rng, &[6, 4]), value(&mut rng, &[4, 5]), value(&mut rng, &[5]));
        let loss = |x: &Tensor, w: &Tensor, b: &Tensor| -> f64 {
            let y = dense(x, w, b, Activation::Relu).unwrap();
            (&y * &y).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64
        };
        let y = dense(x.as_tensor(), w.as_tensor(), b.as_tensor(), Activation::Relu).unwrap();
        let grads = (&y * &y).unwrap().sum_all().unwrap().backward().unwrap();
        for (i, v) in [&x, &w, &b].into_iter().enumerate() {
            let g = grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let base = v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for j in 0..base.len() {
                let at = |d: f32| {
                    let mut p = base.clone();
                    p[j] += d;
                    let t = Tensor::from_vec(p, v.as_tensor().shape(), &Device::Cpu).unwrap();
                    let mut args = [x.as_tensor().clone(), w.as_tensor().clone(), b.as_tensor().clone()];
                    args[i] = t;
                    loss(&args[0], &args[1], &args[2])
                };
                let h = 1e-2f32;
                let numeric = (at(h) - at(-h)) / (2.0 * h as f64);
                let tol = 1e-3 + 1e-3 * numeric.abs();
                assert!((numeric - g[j] as f64).abs() < tol, "arg {i} [{j}]: numeric {numeric}, op {}", g[j]);
            }
        }
    }
}
