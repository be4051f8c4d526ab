//! Adam with decoupled weight decay, updating parameters in place.
//!
//! candle's `AdamW` hides its state, defaults to weight decay 0.01 and allocates about
//! a dozen temporaries per parameter per step. This one keeps its moments where they
//! can be saved and, on CPU, updates parameter and moments in one fused pass with no
//! allocation (a candle in-place custom op). Embedding tables get their gradient as
//! the looked-up rows ([`Lookup`]), summed per row. Dense Adam then runs the update
//! over the whole table (the same maths as a dense gradient): the looked-up rows with
//! their sums, the others with a zero gradient read from one small buffer, so the table
//! is three streams read and written, never a fourth table-sized gradient. Lazy Adam
//! updates the looked-up rows alone, so its step costs the same whatever the table's
//! size. On CUDA the same updates are multigate's own
//! kernels (`adam_cuda`), one launch per parameter; on other devices the update falls
//! back to tensor arithmetic with the same maths.

use std::sync::Mutex;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, Layout, Tensor, Var};

pub use super::adam_update::AdamConfig;
use super::adam_update::{Coefficients, CHUNK};
use crate::backend::candle::{cpu_f32, prefetch, Lookup};

type Result<T> = candle_core::Result<T>;

/// Moments on the host, and the zero gradient of a dense step's untouched rows.
#[derive(Default)]
struct HostState {
    m: Vec<f32>,
    v: Vec<f32>,
    /// All zeros, one chunk of rows long; allocated on the first sparse update.
    scratch: Vec<f32>,
}

enum Moments {
    /// Updated by the fused CPU ops.
    Host(Mutex<HostState>),
    /// On a CUDA device, updated by multigate's kernels (`adam_cuda`).
    #[cfg(feature = "cuda")]
    Cuda(Mutex<super::adam_cuda::CudaState>),
    /// Any other device: tensor arithmetic.
    Device { m: Tensor, v: Tensor },
}

pub struct Adam {
    pub config: AdamConfig,
    /// Steps taken (for bias correction).
    pub step: u64,
    vars: Vec<Var>,
    /// Each parameter's name in the IR's parameter table: the key of its saved state.
    names: Vec<String>,
    moments: Vec<Moments>,
}

fn lock(state: &Mutex<HostState>) -> Result<std::sync::MutexGuard<'_, HostState>> {
    state.lock().map_err(|_| candle_core::Error::Msg("adam state poisoned".into()))
}

fn host_slice<'a>(s: &'a mut CpuStorage, l: &Layout, what: &str) -> Result<&'a mut [f32]> {
    let CpuStorage::F32(p) = s else { candle_core::bail!("adam: {what} must be f32") };
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("adam: non-contiguous {what}") };
    Ok(&mut p[a..b])
}

/// Dense step: parameter and gradient tensors.
struct DenseStep<'a> {
    state: &'a Mutex<HostState>,
    k: Coefficients,
}

impl candle_core::InplaceOp2 for DenseStep<'_> {
    fn name(&self) -> &'static str {
        "multigate-adam"
    }
    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let p = host_slice(s1, l1, "parameter")?;
        let g = cpu_f32(s2, l2, "adam: gradient")?;
        let mut st = lock(self.state)?;
        let HostState { m, v, .. } = &mut *st;
        if m.len() != p.len() || g.len() != p.len() {
            candle_core::bail!("adam: state has {} values, parameter {}, gradient {}", m.len(), p.len(), g.len());
        }
        self.k.apply_all(p, g, m, v);
        Ok(())
    }
}

/// Sparse step: a table `[rows, dim]` and the gradient rows of its lookups.
struct SparseStep<'a> {
    state: &'a Mutex<HostState>,
    k: Coefficients,
    /// (ids, gradient rows `[B * dim]`) of each lookup of this table.
    parts: Vec<(Vec<u32>, Vec<f32>)>,
    dim: usize,
    /// Update only the looked-up rows.
    lazy: bool,
}

impl candle_core::InplaceOp1 for SparseStep<'_> {
    fn name(&self) -> &'static str {
        "multigate-sparse-adam"
    }
    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let p = host_slice(s, l, "embedding table")?;
        let mut st = lock(self.state)?;
        let HostState { m, v, scratch } = &mut *st;
        let d = self.dim;
        let rows = p.len() / d.max(1);
        for (ids, _) in &self.parts {
            if let Some(&r) = ids.iter().find(|&&r| r as usize >= rows) {
                candle_core::bail!("adam: row {r} outside a table of {rows} rows");
            }
        }
        if self.lazy {
            // Each looked-up row once, in row order: its gradient rows summed (in the
            // order the lookups and their rows come, as a scatter would) into a buffer
            // of one row, then the update of that row. Nothing table-sized is touched.
            // The rows lie scattered over the table (over a big one, each a cache miss):
            // the row four runs ahead is asked for while this one is updated.
            let mut g = vec![0f32; d];
            let order = self.order();
            let runs: Vec<&[(u32, u32, u32)]> = order.chunk_by(|a, b| a.0 == b.0).collect();
            for (i, run) in runs.iter().enumerate() {
                if let Some(ahead) = runs.get(i + 4) {
                    let at = ahead[0].0 as usize * d;
                    [&*p, &*m, &*v].into_iter().for_each(|x| prefetch(x, at));
                }
                g.fill(0.0);
                self.add_run(run, &mut g);
                let r = (run[0].0 as usize) * d..(run[0].0 as usize + 1) * d;
                self.k.apply(&mut p[r.clone()], &g, &mut m[r.clone()], &mut v[r]);
            }
            return Ok(());
        }
        let (ids, grads) = self.summed_rows();
        // Dense: every row, the others with a zero gradient read from a buffer of one
        // chunk that stays in cache (a table-sized zero gradient would be one more
        // stream of the whole table); chunks of rows in parallel when the table is big.
        if d == 0 {
            return Ok(());
        }
        let chunk_rows = (CHUNK / d).max(1);
        if scratch.len() < chunk_rows * d {
            *scratch = vec![0.0; chunk_rows * d];
        }
        let zeros = &scratch[..chunk_rows * d];
        let chunk = |c: usize, p: &mut [f32], m: &mut [f32], v: &mut [f32]| {
            let first = c * chunk_rows;
            let end = first + p.len() / d;
            let (lo, hi) =
                (ids.partition_point(|&r| (r as usize) < first), ids.partition_point(|&r| (r as usize) < end));
            let mut at = first;
            for j in lo..=hi {
                // The untouched rows before the next looked-up one (or the chunk's end).
                let next = if j < hi { ids[j] as usize } else { end };
                let (a, b) = ((at - first) * d, (next - first) * d);
                self.k.apply(&mut p[a..b], &zeros[..b - a], &mut m[a..b], &mut v[a..b]);
                if j < hi {
                    let (a, g) = ((next - first) * d, &grads[j * d..(j + 1) * d]);
                    self.k.apply(&mut p[a..a + d], g, &mut m[a..a + d], &mut v[a..a + d]);
                    at = next + 1;
                }
            }
        };
        if p.len() >= 2 * CHUNK && rayon::current_num_threads() > 1 {
            use rayon::prelude::*;
            p.par_chunks_mut(chunk_rows * d)
                .zip(m.par_chunks_mut(chunk_rows * d))
                .zip(v.par_chunks_mut(chunk_rows * d))
                .enumerate()
                .for_each(|(c, ((p, m), v))| chunk(c, p, m, v));
        } else {
            for (c, ((p, m), v)) in p
                .chunks_mut(chunk_rows * d)
                .zip(m.chunks_mut(chunk_rows * d))
                .zip(v.chunks_mut(chunk_rows * d))
                .enumerate()
            {
                chunk(c, p, m, v);
            }
        }
        Ok(())
    }
}

impl SparseStep<'_> {
    /// Every gradient row of every lookup as `(table row, lookup, row in the lookup)`,
    /// sorted: each table row's gradient rows together, in the order they come.
    fn order(&self) -> Vec<(u32, u32, u32)> {
        let mut order: Vec<(u32, u32, u32)> = Vec::new();
        for (part, (ids, _)) in self.parts.iter().enumerate() {
            order.extend(ids.iter().enumerate().map(|(i, &id)| (id, part as u32, i as u32)));
        }
        order.sort_unstable();
        order
    }

    /// One table row's gradient rows (a run of [`SparseStep::order`]) added into `g`, in
    /// order.
    #[inline]
    fn add_run(&self, run: &[(u32, u32, u32)], g: &mut [f32]) {
        let d = self.dim;
        for &(_, part, i) in run {
            let rows = &self.parts[part as usize].1;
            let i = i as usize;
            g.iter_mut().zip(&rows[i * d..(i + 1) * d]).for_each(|(s, x)| *s += x);
        }
    }

    /// The looked-up rows in increasing order, each once, and their summed gradients
    /// `[rows, dim]`.
    fn summed_rows(&self) -> (Vec<u32>, Vec<f32>) {
        let d = self.dim;
        let order = self.order();
        let runs = order.chunk_by(|a, b| a.0 == b.0);
        let mut ids = Vec::new();
        let mut grads = Vec::with_capacity(order.len() * d);
        for run in runs {
            ids.push(run[0].0);
            let at = grads.len();
            grads.resize(at + d, 0.0);
            self.add_run(run, &mut grads[at..]);
        }
        (ids, grads)
    }
}

/// One step's update of one parameter at a time.
struct Update<'a> {
    grads: &'a [GradStore],
    lookups: &'a [Lookup],
    k: Coefficients,
    config: AdamConfig,
    lr: f64,
    bc1: f64,
    bc2: f64,
    /// The optimizer's step count, this step included.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    step: u64,
}

impl Update<'_> {
    /// Parameter `i` (`var`, its moments `mom`): dense gradients summed over the
    /// shards' stores, embedding gradients from its lookups; left alone with neither.
    fn apply(&self, i: usize, var: &Var, mom: &mut Moments) -> Result<()> {
        let (grads, lookups, k, c, lr, bc1, bc2) =
            (self.grads, self.lookups, self.k, self.config, self.lr, self.bc1, self.bc2);
        let grad_of = |t: &Tensor| grads.iter().find_map(|g| g.get(t));
        let mine: Vec<&Lookup> = lookups.iter().filter(|l| l.var == i).collect();
        let mut dense: Option<Tensor> = None;
        for g in grads.iter().filter_map(|g| g.get(var.as_tensor())) {
            dense = Some(match dense {
                None => g.clone(),
                Some(sum) => (sum + g)?,
            });
        }
        if mine.is_empty() && dense.is_none() {
            return Ok(());
        }
        match mom {
            Moments::Host(state) if !mine.is_empty() => {
                if dense.is_some() {
                    candle_core::bail!("adam: parameter {i} has both a dense and a sparse gradient");
                }
                let dim = var.as_tensor().dims().last().copied().unwrap_or(1);
                let mut parts = Vec::with_capacity(mine.len());
                for l in mine {
                    let Some(g) = grad_of(l.leaf.as_tensor()) else { continue };
                    let (mut ids, mut rows) = (l.ids.to_vec1::<u32>()?, g.flatten_all()?.to_vec1::<f32>()?);
                    if let Some(slots) = &l.slots {
                        // A bag's padding slots are not lookups.
                        let slots = slots.to_vec1::<f32>()?;
                        let keep: Vec<usize> = (0..ids.len()).filter(|&j| slots[j] != 0.0).collect();
                        ids = keep.iter().map(|&j| ids[j]).collect();
                        rows = crate::data::select_rows(&rows, dim, &keep);
                    }
                    parts.push((ids, rows));
                }
                var.as_tensor().inplace_op1(&SparseStep { state, k, parts, dim, lazy: c.lazy })?;
            }
            Moments::Host(state) => {
                // `dense` is Some: checked above.
                let g = dense.map(|g| g.contiguous()).transpose()?;
                if let Some(g) = g {
                    var.as_tensor().inplace_op2(&g, &DenseStep { state, k })?;
                }
            }
            #[cfg(feature = "cuda")]
            Moments::Cuda(state) if !mine.is_empty() => {
                if dense.is_some() {
                    candle_core::bail!("adam: parameter {i} has both a dense and a sparse gradient");
                }
                let mut parts = Vec::with_capacity(mine.len());
                for l in mine {
                    if let Some(g) = grad_of(l.leaf.as_tensor()) {
                        parts.push((l.ids.clone(), g.clone(), l.slots.as_ref().map(|s| s.flatten_all()).transpose()?));
                    }
                }
                super::adam_cuda::sparse_step(var, parts, state, k, c.lazy, self.step)?;
            }
            #[cfg(feature = "cuda")]
            Moments::Cuda(state) => {
                if let Some(g) = dense {
                    super::adam_cuda::dense_step(var, &g, state, k)?;
                }
            }
            Moments::Device { m, v } => {
                if c.lazy && !mine.is_empty() {
                    candle_core::bail!(
                        "lazy_adam runs on the CPU and CUDA only; use optimizer = \"adam\" on this device"
                    );
                }
                let mut g = match dense {
                    Some(g) => g,
                    None => var.as_tensor().zeros_like()?,
                };
                for l in mine {
                    if let Some(rows) = grad_of(l.leaf.as_tensor()) {
                        g = g.index_add(&l.ids, rows, 0)?;
                    }
                }
                *m = ((&*m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
                *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                let update = ((&*m / bc1)? / ((&*v / bc2)?.sqrt()? + c.eps)?)?;
                let decayed = (var.as_tensor() * (1.0 - lr * c.weight_decay))?;
                var.set(&(decayed - (update * lr)?)?)?;
            }
        }
        Ok(())
    }
}

/// Zero moments of a parameter off the CPU: multigate's kernels on CUDA, tensor
/// arithmetic elsewhere.
fn device_moments(t: &Tensor) -> Result<Moments> {
    #[cfg(feature = "cuda")]
    if t.device().is_cuda() {
        return Ok(Moments::Cuda(super::adam_cuda::CudaState::new(t)?));
    }
    Ok(Moments::Device { m: t.zeros_like()?, v: t.zeros_like()? })
}

impl Adam {
    /// An optimizer over named parameters (names from the IR's parameter table).
    pub fn new(named: Vec<(String, Var)>, config: AdamConfig) -> Result<Adam> {
        let (names, vars): (Vec<String>, Vec<Var>) = named.into_iter().unzip();
        let moments = vars
            .iter()
            .map(|v| {
                let t = v.as_tensor();
                Ok(if t.device().is_cpu() {
                    let n = t.elem_count();
                    Moments::Host(Mutex::new(HostState { m: vec![0.0; n], v: vec![0.0; n], scratch: Vec::new() }))
                } else {
                    device_moments(t)?
                })
            })
            .collect::<Result<_>>()?;
        Ok(Adam { config, step: 0, vars, names, moments })
    }

    /// One update with learning rate `lr`: dense gradients summed over `grads` (one
    /// store per shard of the batch), embedding gradients from the `lookups` of the
    /// step. Parameters with neither are left alone.
    pub fn step(&mut self, grads: &[GradStore], lookups: &[Lookup], lr: f64) -> Result<()> {
        self.step += 1;
        let c = self.config;
        let k = Coefficients::new(&c, lr, self.step);
        let (bc1, bc2) = (1.0 - c.beta1.powi(self.step as i32), 1.0 - c.beta2.powi(self.step as i32));
        let step = Update { grads, lookups, k, config: c, lr, bc1, bc2, step: self.step };
        // Parameters are independent: on the CPU, with workers, they are updated in
        // parallel (each one's state has its own lock).
        let on_host = self.moments.iter().all(|m| matches!(m, Moments::Host(_)));
        if on_host && rayon::current_num_threads() > 1 {
            use rayon::prelude::*;
            self.vars
                .par_iter()
                .zip(self.moments.par_iter_mut())
                .enumerate()
                .try_for_each(|(i, (var, mom))| step.apply(i, var, mom))
        } else {
            self.vars.iter().zip(&mut self.moments).enumerate().try_for_each(|(i, (var, mom))| step.apply(i, var, mom))
        }
    }

    /// The moments as named tensors (`{parameter}.m`, `{parameter}.v`), for checkpoints.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for ((var, mom), name) in self.vars.iter().zip(&self.moments).zip(&self.names) {
            let shape = var.as_tensor().shape().clone();
            let (m, v) = match mom {
                Moments::Host(s) => {
                    let s = lock(s)?;
                    let cpu = candle_core::Device::Cpu;
                    (Tensor::from_slice(&s.m, &shape, &cpu)?, Tensor::from_slice(&s.v, &shape, &cpu)?)
                }
                #[cfg(feature = "cuda")]
                Moments::Cuda(s) => {
                    let (m, v) = super::adam_cuda::host_moments(s)?;
                    let cpu = candle_core::Device::Cpu;
                    (Tensor::from_vec(m, &shape, &cpu)?, Tensor::from_vec(v, &shape, &cpu)?)
                }
                Moments::Device { m, v } => (m.clone(), v.clone()),
            };
            out.push((format!("{name}.m"), m));
            out.push((format!("{name}.v"), v));
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
        for ((var, mom), name) in self.vars.iter().zip(&mut self.moments).zip(&self.names) {
            let (m, v) = (find(format!("{name}.m"))?, find(format!("{name}.v"))?);
            if m.shape() != var.as_tensor().shape() || v.shape() != var.as_tensor().shape() {
                candle_core::bail!(
                    "optimizer state of `{name}` has shape {:?}, the parameter {:?}",
                    m.shape(),
                    var.as_tensor().shape()
                );
            }
            match mom {
                Moments::Host(s) => {
                    let mut s = lock(s)?;
                    s.m = m.flatten_all()?.to_vec1()?;
                    s.v = v.flatten_all()?.to_vec1()?;
                }
                #[cfg(feature = "cuda")]
                Moments::Cuda(s) => {
                    let (m, v) = (m.flatten_all()?.to_vec1::<f32>()?, v.flatten_all()?.to_vec1::<f32>()?);
                    super::adam_cuda::load_moments(s, &m, &v)?;
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
