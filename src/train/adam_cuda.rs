//! Adam on a CUDA device: the moments live on the device and each parameter's update is
//! one kernel (`mg_adam`, the arithmetic of `Coefficients::apply`). Embedding tables
//! take their gradient as looked-up rows: `mg_scatter_rows` adds them into a
//! table-sized scratch buffer kept between steps; dense Adam then runs `mg_adam` over the
//! table and clears the buffer, lazy Adam runs `mg_lazy_adam` over the looked-up rows
//! alone (each row once, however often it was looked up) and clears just those rows.
//!
//! Summing duplicate rows with atomic adds makes the order of that sum, and so the last
//! bits of a row looked up several times in one step, vary from run to run.

use std::sync::Mutex;

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, PushKernelArg};
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{CudaStorage, Layout, Storage, Tensor, Var};

use super::adam_update::Coefficients;
use crate::backend::candle::device_ops::cuda;

type Result<T> = candle_core::Result<T>;

/// One parameter's optimizer state on the device.
pub(super) struct CudaState {
    dev: CudaDevice,
    m: CudaSlice<f32>,
    v: CudaSlice<f32>,
    /// Table-sized gradient buffer of sparse updates, zero between steps.
    scratch: Option<CudaSlice<f32>>,
    /// Lazy Adam: per table row, the last step that updated it.
    owner: Option<CudaSlice<u32>>,
}

fn device_of(t: &Tensor) -> Result<CudaDevice> {
    match t.device() {
        candle_core::Device::Cuda(d) => Ok(d.clone()),
        _ => candle_core::bail!("adam: expected a CUDA tensor"),
    }
}

/// A contiguous f32 view of a CUDA operand (`what` names it in errors).
fn f32_slice<'a>(
    s: &'a CudaStorage,
    l: &Layout,
    what: &str,
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, f32>> {
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("adam: non-contiguous {what}") };
    Ok(s.as_cuda_slice::<f32>()?.slice(a..b))
}

impl CudaState {
    pub(super) fn new(t: &Tensor) -> Result<Mutex<CudaState>> {
        let dev = device_of(t)?;
        let n = t.elem_count();
        Ok(Mutex::new(CudaState { m: dev.alloc_zeros(n)?, v: dev.alloc_zeros(n)?, scratch: None, owner: None, dev }))
    }

    /// The moments, copied to the host.
    pub(super) fn to_host(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((self.dev.clone_dtoh(&self.m)?, self.dev.clone_dtoh(&self.v)?))
    }

    /// Replaces the moments with `m` and `v` (host values of the parameter's size).
    pub(super) fn load(&mut self, m: &[f32], v: &[f32]) -> Result<()> {
        if m.len() != self.m.len() || v.len() != self.v.len() {
            candle_core::bail!("adam: saved moments have {} values, the parameter {}", m.len(), self.m.len());
        }
        self.dev.memcpy_htod(m, &mut self.m)?;
        self.dev.memcpy_htod(v, &mut self.v)?;
        // Row ownership counts steps of this run; a restored step count starts it afresh.
        if let Some(owner) = self.owner.as_mut() {
            self.dev.cuda_stream().memset_zeros(owner).w()?;
        }
        Ok(())
    }
}

fn lock(state: &Mutex<CudaState>) -> Result<std::sync::MutexGuard<'_, CudaState>> {
    state.lock().map_err(|_| candle_core::Error::Msg("adam state poisoned".into()))
}

/// `mg_adam` over `n` values of `p` with gradient `g`.
#[allow(clippy::too_many_arguments)]
fn launch_adam(
    dev: &CudaDevice,
    p: &mut candle_core::cuda_backend::cudarc::driver::CudaViewMut<f32>,
    g: &candle_core::cuda_backend::cudarc::driver::CudaView<f32>,
    m: &mut CudaSlice<f32>,
    v: &mut CudaSlice<f32>,
    k: &Coefficients,
) -> Result<()> {
    let n = p.len() as u64;
    let (stream, f) = cuda::kernel(dev, "mg_adam")?;
    let mut b = stream.launch_builder(&f);
    b.arg(p).arg(g).arg(m).arg(v).arg(&n);
    b.arg(&k.b1).arg(&k.b2).arg(&k.eps).arg(&k.step_size).arg(&k.inv_bc2_sqrt).arg(&k.keep);
    // SAFETY: the arguments match `mg_adam`'s signature; every buffer holds n values.
    unsafe { b.launch(cuda::grid(n)) }.w()?;
    Ok(())
}

/// Dense step of one parameter: `var.inplace_op2(grad, ..)`.
struct Dense<'a> {
    state: &'a Mutex<CudaState>,
    k: Coefficients,
}

impl candle_core::InplaceOp2 for Dense<'_> {
    fn name(&self) -> &'static str {
        "multigate-adam"
    }
    fn cpu_fwd(
        &self,
        _: &mut candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<()> {
        candle_core::bail!("adam: CUDA state on a CPU tensor")
    }
    fn cuda_fwd(&self, s1: &mut CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<()> {
        let g = f32_slice(s2, l2, "gradient")?;
        let dev = s1.device.clone();
        let Some((a, b)) = l1.contiguous_offsets() else { candle_core::bail!("adam: non-contiguous parameter") };
        let mut p = s1.as_cuda_slice_mut::<f32>()?.slice_mut(a..b);
        let mut st = lock(self.state)?;
        if st.m.len() != p.len() || g.len() != p.len() {
            candle_core::bail!("adam: state has {} values, parameter {}, gradient {}", st.m.len(), p.len(), g.len());
        }
        let CudaState { m, v, .. } = &mut *st;
        launch_adam(&dev, &mut p, &g, m, v, &self.k)
    }
}

/// One lookup's gradient: ids, rows and, for a bag, slot weights.
pub(super) type Lookup = (Tensor, Tensor, Option<Tensor>);

/// Sparse step of one table from the gradient rows of its lookups.
struct Sparse<'a> {
    state: &'a Mutex<CudaState>,
    k: Coefficients,
    /// (ids `[B]` u32, gradient rows `[B, dim]`, a bag's slot weights `[B]`: 0 on
    /// padding, which is no lookup) of each lookup of the table.
    parts: Vec<Lookup>,
    dim: usize,
    lazy: bool,
    step: u64,
}

impl candle_core::InplaceOp1 for Sparse<'_> {
    fn name(&self) -> &'static str {
        "multigate-sparse-adam"
    }
    fn cpu_fwd(&self, _: &mut candle_core::CpuStorage, _: &Layout) -> Result<()> {
        candle_core::bail!("adam: CUDA state on a CPU tensor")
    }
    fn cuda_fwd(&self, s: &mut CudaStorage, l: &Layout) -> Result<()> {
        let dev = s.device.clone();
        let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("adam: non-contiguous embedding table") };
        let mut p = s.as_cuda_slice_mut::<f32>()?.slice_mut(a..b);
        let n = p.len();
        let d = self.dim as u64;
        let mut st = lock(self.state)?;
        let st = &mut *st;
        if st.scratch.is_none() {
            st.scratch = Some(dev.alloc_zeros::<f32>(n)?);
        }
        if self.lazy && st.owner.is_none() {
            st.owner = Some(dev.alloc_zeros::<u32>(n / self.dim.max(1))?);
        }
        let CudaState { m, v, scratch, owner, .. } = st;
        let Some(scratch) = scratch.as_mut() else { candle_core::bail!("adam: no scratch gradient") };
        // Every lookup's rows into the scratch gradient first; then the update.
        let mut held = Vec::with_capacity(self.parts.len());
        for (ids, rows, slots) in &self.parts {
            held.push((
                ids.storage_and_layout(),
                rows.storage_and_layout(),
                slots.as_ref().map(|s| s.storage_and_layout()),
            ));
        }
        // A null `slots` pointer: every lookup counts.
        let no_slots = 0u64;
        let mut views = Vec::with_capacity(held.len());
        for ((ids_s, ids_l), (rows_s, rows_l), slots) in &held {
            let (Storage::Cuda(ids_s), Storage::Cuda(rows_s)) = (&**ids_s, &**rows_s) else {
                candle_core::bail!("adam: lookups of a CUDA table must be on the device")
            };
            let Some((ia, ib)) = ids_l.contiguous_offsets() else { candle_core::bail!("adam: non-contiguous ids") };
            let ids = ids_s.as_cuda_slice::<u32>()?.slice(ia..ib);
            let rows = f32_slice(rows_s, rows_l, "gradient rows")?;
            if rows.len() != ids.len() * self.dim {
                candle_core::bail!("adam: {} gradient values for {} rows of {}", rows.len(), ids.len(), self.dim);
            }
            let slots = match slots {
                Some((s, l)) => {
                    let Storage::Cuda(s) = &**s else { candle_core::bail!("adam: slot weights must be on the device") };
                    let view = f32_slice(s, l, "slot weights")?;
                    if view.len() != ids.len() {
                        candle_core::bail!("adam: {} slot weights for {} lookups", view.len(), ids.len());
                    }
                    Some(view)
                }
                None => None,
            };
            let bn = ids.len() as u64;
            let (stream, f) = cuda::kernel(&dev, "mg_scatter_rows")?;
            let mut launch = stream.launch_builder(&f);
            launch.arg(&mut *scratch).arg(&ids).arg(&rows);
            match &slots {
                Some(s) => launch.arg(s),
                None => launch.arg(&no_slots),
            };
            launch.arg(&bn).arg(&d);
            // SAFETY: matches `mg_scatter_rows`; ids index rows of the table (checked
            // when the batch was encoded: every id is below the table's row count);
            // `slots` is null or has a value per id.
            unsafe { launch.launch(cuda::grid(bn * d)) }.w()?;
            views.push((ids, slots));
        }
        let k = &self.k;
        if self.lazy {
            let Some(owner) = owner.as_mut() else { candle_core::bail!("adam: no row owners") };
            let step = self.step as u32;
            for (ids, slots) in &views {
                let bn = ids.len() as u64;
                let (stream, f) = cuda::kernel(&dev, "mg_lazy_adam")?;
                let mut launch = stream.launch_builder(&f);
                launch.arg(&mut p).arg(&mut *m).arg(&mut *v).arg(&mut *scratch).arg(&mut *owner).arg(ids);
                match slots {
                    Some(s) => launch.arg(s),
                    None => launch.arg(&no_slots),
                };
                launch.arg(&bn).arg(&d).arg(&step);
                launch.arg(&k.b1).arg(&k.b2).arg(&k.eps).arg(&k.step_size).arg(&k.inv_bc2_sqrt).arg(&k.keep);
                // SAFETY: matches `mg_lazy_adam`; `owner` has a value per table row, and
                // `slots` is null or has a value per id.
                unsafe { launch.launch(cuda::rows(bn, d)) }.w()?;
            }
        } else {
            let g = scratch.slice(..);
            launch_adam(&dev, &mut p, &g, m, v, k)?;
            dev.cuda_stream().memset_zeros(scratch).w()?;
        }
        Ok(())
    }
}

/// Applies a dense gradient to `var`.
pub(super) fn dense_step(var: &Var, grad: &Tensor, state: &Mutex<CudaState>, k: Coefficients) -> Result<()> {
    var.as_tensor().inplace_op2(&grad.contiguous()?, &Dense { state, k })
}

/// Applies the gradient rows of a table's lookups to `var`.
pub(super) fn sparse_step(
    var: &Var,
    parts: Vec<Lookup>,
    state: &Mutex<CudaState>,
    k: Coefficients,
    lazy: bool,
    step: u64,
) -> Result<()> {
    let dim = var.as_tensor().dims().last().copied().unwrap_or(1);
    let parts = parts
        .into_iter()
        .map(|(ids, rows, slots)| {
            Ok((ids.contiguous()?, rows.contiguous()?, slots.map(|s| s.contiguous()).transpose()?))
        })
        .collect::<Result<Vec<_>>>()?;
    var.as_tensor().inplace_op1(&Sparse { state, k, parts, dim, lazy, step })
}

pub(super) fn host_moments(state: &Mutex<CudaState>) -> Result<(Vec<f32>, Vec<f32>)> {
    lock(state)?.to_host()
}

pub(super) fn load_moments(state: &Mutex<CudaState>, m: &[f32], v: &[f32]) -> Result<()> {
    lock(state)?.load(m, v)
}
