//! Adam with decoupled weight decay, updating parameters in place.
//!
//! candle's `AdamW` hides its state, defaults to weight decay 0.01 and allocates about
//! a dozen temporaries per parameter per step. This one keeps its moments where they
//! can be saved and, on CPU, updates parameter and moments in one fused pass with no
//! allocation (a candle in-place custom op). On other devices it falls back to
//! tensor arithmetic with the same maths.

use std::sync::Mutex;

use candle_core::{CpuStorage, Layout, Tensor, Var};

use crate::ir::TrainConfig;

type Result<T> = candle_core::Result<T>;

#[derive(Debug, Clone, Copy)]
pub struct AdamConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl From<&TrainConfig> for AdamConfig {
    fn from(t: &TrainConfig) -> Self {
        AdamConfig { beta1: t.beta1, beta2: t.beta2, eps: t.eps, weight_decay: t.weight_decay }
    }
}

enum Moments {
    /// First and second moments on the host, updated by the fused CPU op.
    Host(Mutex<(Vec<f32>, Vec<f32>)>),
    Device {
        m: Tensor,
        v: Tensor,
    },
}

pub struct Adam {
    pub config: AdamConfig,
    /// Steps taken (for bias correction).
    pub step: u64,
    vars: Vec<Var>,
    moments: Vec<Moments>,
}

struct FusedStep<'a> {
    moments: &'a Mutex<(Vec<f32>, Vec<f32>)>,
    lr: f32,
    b1: f32,
    b2: f32,
    eps: f32,
    decay: f32,
    bc1: f32,
    bc2: f32,
}

impl candle_core::InplaceOp2 for FusedStep<'_> {
    fn name(&self) -> &'static str {
        "multigate-adam"
    }
    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (s1, s2) else {
            candle_core::bail!("adam: parameters and gradients must be f32");
        };
        let (Some((p0, p1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("adam: non-contiguous parameter or gradient");
        };
        let (p, g) = (&mut p[p0..p1], &g[g0..g1]);
        let mut guard = self.moments.lock().map_err(|_| candle_core::Error::Msg("adam state poisoned".into()))?;
        let (m, v) = &mut *guard;
        if m.len() != p.len() || g.len() != p.len() {
            candle_core::bail!("adam: state has {} values, parameter {}, gradient {}", m.len(), p.len(), g.len());
        }
        let (b1, b2, eps) = (self.b1, self.b2, self.eps);
        let step_size = self.lr / self.bc1;
        let inv_bc2_sqrt = 1.0 / self.bc2.sqrt();
        let keep = 1.0 - self.lr * self.decay;
        let update = |p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
            for i in 0..p.len() {
                let gi = g[i];
                let mi = b1 * m[i] + (1.0 - b1) * gi;
                let vi = b2 * v[i] + (1.0 - b2) * gi * gi;
                m[i] = mi;
                v[i] = vi;
                p[i] = p[i] * keep - step_size * mi / (vi.sqrt() * inv_bc2_sqrt + eps);
            }
        };
        // Large tensors (embedding tables) are split across candle's worker threads.
        const CHUNK: usize = 1 << 15;
        if p.len() >= 2 * CHUNK && candle_core::utils::get_num_threads() > 1 {
            use rayon::prelude::*;
            p.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .for_each(|(((p, g), m), v)| update(p, g, m, v));
        } else {
            update(p, g, m, v);
        }
        Ok(())
    }
}

impl Adam {
    pub fn new(vars: Vec<Var>, config: AdamConfig) -> Result<Adam> {
        let moments = vars
            .iter()
            .map(|v| {
                let t = v.as_tensor();
                Ok(if t.device().is_cpu() {
                    Moments::Host(Mutex::new((vec![0.0; t.elem_count()], vec![0.0; t.elem_count()])))
                } else {
                    Moments::Device { m: t.zeros_like()?, v: t.zeros_like()? }
                })
            })
            .collect::<Result<_>>()?;
        Ok(Adam { config, step: 0, vars, moments })
    }

    /// One update with learning rate `lr`. Parameters without a gradient are left alone.
    pub fn step(&mut self, grads: &candle_core::backprop::GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let c = self.config;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        for (var, mom) in self.vars.iter().zip(&mut self.moments) {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            match mom {
                Moments::Host(state) => {
                    let g = g.contiguous()?;
                    let op = FusedStep {
                        moments: state,
                        lr: lr as f32,
                        b1: c.beta1 as f32,
                        b2: c.beta2 as f32,
                        eps: c.eps as f32,
                        decay: c.weight_decay as f32,
                        bc1: bc1 as f32,
                        bc2: bc2 as f32,
                    };
                    var.as_tensor().inplace_op2(&g, &op)?;
                }
                Moments::Device { m, v } => {
                    *m = ((&*m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
                    *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                    let update = ((&*m / bc1)? / ((&*v / bc2)?.sqrt()? + c.eps)?)?;
                    let decayed = (var.as_tensor() * (1.0 - lr * c.weight_decay))?;
                    var.set(&(decayed - (update * lr)?)?)?;
                }
            }
        }
        Ok(())
    }

    /// The moments as named tensors (`{i}.m`, `{i}.v`), for checkpoints.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (i, (var, mom)) in self.vars.iter().zip(&self.moments).enumerate() {
            let shape = var.as_tensor().shape().clone();
            let (m, v) = match mom {
                Moments::Host(s) => {
                    let s = s.lock().map_err(|_| candle_core::Error::Msg("adam state poisoned".into()))?;
                    (
                        Tensor::from_slice(&s.0, &shape, &candle_core::Device::Cpu)?,
                        Tensor::from_slice(&s.1, &shape, &candle_core::Device::Cpu)?,
                    )
                }
                Moments::Device { m, v } => (m.clone(), v.clone()),
            };
            out.push((format!("{i}.m"), m));
            out.push((format!("{i}.v"), v));
        }
        Ok(out)
    }

    /// Loads moments saved by [`state`](Self::state) and the step count.
    pub fn load_state(&mut self, state: &[(String, Tensor)], step: u64) -> Result<()> {
        let find = |k: String| {
            state
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, t)| t.clone())
                .ok_or_else(|| candle_core::Error::Msg(format!("optimizer state lacks `{k}`")))
        };
        for (i, (var, mom)) in self.vars.iter().zip(&mut self.moments).enumerate() {
            let (m, v) = (find(format!("{i}.m"))?, find(format!("{i}.v"))?);
            if m.shape() != var.as_tensor().shape() || v.shape() != var.as_tensor().shape() {
                candle_core::bail!(
                    "optimizer state {i} has shape {:?}, parameter {:?}",
                    m.shape(),
                    var.as_tensor().shape()
                );
            }
            match mom {
                Moments::Host(s) => {
                    let mut s = s.lock().map_err(|_| candle_core::Error::Msg("adam state poisoned".into()))?;
                    s.0 = m.flatten_all()?.to_vec1()?;
                    s.1 = v.flatten_all()?.to_vec1()?;
                }
                Moments::Device { m: dm, v: dv } => {
                    *dm = m.to_device(var.device())?;
                    *dv = v.to_device(var.device())?;
                }
            }
        }
        self.step = step;
        Ok(())
    }
}
