//! The CPU path of a candle model: the native interpreter (`backend::native`) run on
//! the model's op programs, over the parameters' candle storage read in place under
//! its locks (so a pass always sees the current weights, and the optimizer updates
//! them where they are) and over the batch's tensors, also read in place.
//!
//! Each thread running a pass at once takes a [`Run`] from a pool, whose buffers are
//! kept from call to call: a pass allocates nothing once the largest batch was seen.

use std::ops::Deref;
use std::sync::Mutex;

use candle_core::{Layout, Storage, Tensor};

use super::{Batch, CandleModel, Lookup, Output, Result};
use crate::backend::native::{Feed, Native, Run};
use crate::program::{BufId, BufKind, Input, ParamGrad, Program};
use crate::rng::Rng;

/// One shard's training step: what the optimizer applies.
pub struct Gradients {
    /// Each task's mean loss over the rows (0 for a task without labels).
    pub per_task: Vec<f32>,
    /// The dense parameters' gradients, and each lookup's rows' (keyed by its leaf).
    pub grads: candle_core::backprop::GradStore,
    pub lookups: Vec<Lookup>,
}

/// One program and where each of its parameters sits in `CandleModel::vars`.
pub(crate) struct Compiled {
    native: Native,
    /// Per buffer of the program: the index of its parameter in `vars`.
    params: Vec<Option<usize>>,
    /// Runs not in use, each with the thread that used it last.
    pool: Mutex<Vec<(std::thread::ThreadId, Run)>>,
}

fn err(what: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(what.to_string())
}

/// The values of a contiguous CPU tensor, from its storage held under its read lock
/// and its layout.
fn values<'s, E: candle_core::WithDType>(
    g: &'s (impl Deref<Target = Storage>, &Layout),
    what: &str,
) -> Result<&'s [E]> {
    let Storage::Cpu(cpu) = &*g.0 else { candle_core::bail!("{what} is not on the CPU") };
    let v = E::cpu_storage_as_slice(cpu)?;
    let Some((a, b)) = g.1.contiguous_offsets() else { candle_core::bail!("{what} is not contiguous") };
    Ok(&v[a..b])
}

/// Runs `f` on `batch` as a [`Feed`], its tensors read in place under their locks. A
/// task the batch has no labels for gets labels and a mask of zeros: its loss is 0
/// and passes no gradient, as the graph, which leaves it out, has it.
fn with_feed<T>(batch: &Batch, f: impl FnOnce(&Feed) -> Result<T>) -> Result<T> {
    fn lock(t: &Option<Tensor>) -> Option<(impl Deref<Target = Storage> + '_, &Layout)> {
        t.as_ref().map(Tensor::storage_and_layout)
    }
    fn opt<'s>(g: &'s Option<(impl Deref<Target = Storage>, &Layout)>, what: &str) -> Result<Option<&'s [f32]>> {
        g.as_ref().map(|g| values::<f32>(g, what)).transpose()
    }
    let ids: Vec<_> = batch.cat.iter().map(Tensor::storage_and_layout).collect();
    let bags: Vec<_> = batch.bags.iter().map(lock).collect();
    let dense = lock(&batch.dense);
    let labels: Vec<_> = batch.labels.iter().map(lock).collect();
    let masks: Vec<_> = batch.masks.iter().map(lock).collect();
    // Only a batch that lacks some task's labels needs the zeros.
    let lacking = batch.labels.iter().any(Option::is_none);
    let zeros = if lacking { vec![0f32; batch.size] } else { Vec::new() };
    let mut feed = Feed {
        batch: batch.size,
        ids: ids.iter().map(|g| values::<u32>(g, "ids")).collect::<Result<_>>()?,
        bags: bags.iter().map(|g| opt(g, "bag weights")).collect::<Result<_>>()?,
        dense: opt(&dense, "dense values")?,
        labels: labels.iter().map(|g| opt(g, "labels")).collect::<Result<_>>()?,
        masks: masks.iter().map(|g| opt(g, "label masks")).collect::<Result<_>>()?,
    };
    for t in 0..feed.labels.len() {
        if feed.labels[t].is_none() {
            feed.labels[t] = Some(&zeros);
            if let Some(m) = feed.masks.get_mut(t) {
                *m = Some(&zeros);
            }
        }
    }
    f(&feed)
}

impl Compiled {
    pub(crate) fn new(native: Native, var_index: &std::collections::HashMap<String, usize>) -> Result<Compiled> {
        let p = &native.program;
        let mut params = vec![None; p.bufs.len()];
        for (id, b) in p.params() {
            let i = var_index.get(b.name.as_str()).ok_or_else(|| err(format!("no parameter `{}`", b.name)))?;
            params[id.0] = Some(*i);
        }
        Ok(Compiled { native, params, pool: Mutex::new(Vec::new()) })
    }

    pub(crate) fn program(&self) -> &Program {
        &self.native.program
    }

    /// Runs `f` with a pooled [`Run`], returned to the pool after. A thread gets back
    /// the run it used last where there is one: its buffers are in that core's cache.
    fn with_run<T>(&self, f: impl FnOnce(&mut Run) -> Result<T>) -> Result<T> {
        let me = std::thread::current().id();
        let taken = self.pool.lock().ok().and_then(|mut p| {
            let at = p.iter().position(|(t, _)| *t == me).or_else(|| p.len().checked_sub(1))?;
            Some(p.swap_remove(at).1)
        });
        let mut run = taken.unwrap_or_default();
        let out = f(&mut run);
        if let Ok(mut pool) = self.pool.lock() {
            pool.push((me, run));
        }
        out
    }

    /// The evaluation pass: heads, and with `gates` each gated layer's mix weights.
    pub(crate) fn forward(&self, model: &CandleModel, batch: &Batch, gates: bool) -> Result<Output> {
        let guards: Vec<_> = model.vars.iter().map(|(_, v)| v.as_tensor().storage_and_layout()).collect();
        let params = self.param_values(&guards)?;
        with_feed(batch, |feed| {
            self.with_run(|run| {
                self.native.forward_into(&params, feed, None, run).map_err(err)?;
                self.output(run, &model.device, gates)
            })
        })
    }

    /// Per program buffer: a parameter's values, read under `guards`.
    fn param_values<'g>(
        &self,
        guards: &'g [(impl Deref<Target = Storage>, &Layout)],
    ) -> Result<Vec<Option<&'g [f32]>>> {
        self.params.iter().map(|i| i.map(|i| values::<f32>(&guards[i], "a parameter")).transpose()).collect()
    }

    /// The pass's [`Output`]: heads, and with `gates` the gate weights.
    fn output(&self, run: &Run, device: &candle_core::Device, gates: bool) -> Result<Output> {
        let p = self.program();
        let b = run.batch;
        let tensor = |id: BufId| -> Result<Tensor> {
            let s = &p.buf(id).shape;
            let mut dims = vec![b];
            dims.extend_from_slice(&s.dims);
            Tensor::from_slice(run.value(id), dims, device)
        };
        let heads = p.outputs.iter().map(|o| tensor(o.raw)).collect::<Result<Vec<_>>>()?;
        let mut out = Output { heads, gates: Vec::new(), lookups: Vec::new(), balance: None, losses: Vec::new() };
        if gates {
            for g in &p.gates {
                out.gates.push(super::mixes_of(&tensor(g.probs)?, &g.widths)?);
            }
        }
        Ok(out)
    }

    /// One training step (forward, the losses, backward) on `batch`: each task's loss
    /// and the gradients the optimizer applies, those of the embedding tables as their
    /// looked-up rows. `factors` multiply the tasks' loss weights; `rng` draws dropout
    /// masks and gate noise, in the graph's order (None: none of either).
    pub(crate) fn train_step(
        &self,
        model: &CandleModel,
        batch: &Batch,
        factors: Option<&[f64]>,
        rng: Option<&mut Rng>,
    ) -> Result<Gradients> {
        let p = self.program();
        let seeds: Vec<f32> = p
            .losses
            .iter()
            .map(|l| (model.ir.tasks[l.task].loss_weight as f64 * factors.map_or(1.0, |f| f[l.task])) as f32)
            .collect();
        let guards: Vec<_> = model.vars.iter().map(|(_, v)| v.as_tensor().storage_and_layout()).collect();
        let params = self.param_values(&guards)?;
        let (per_task, dense, rows) = with_feed(batch, |feed| {
            self.with_run(|run| {
                self.native.forward_into(&params, feed, rng, run).map_err(err)?;
                self.native.backward(&params, feed, run, &seeds).map_err(err)?;
                let mut per_task = vec![0f32; model.ir.tasks.len()];
                for l in &p.losses {
                    per_task[l.task] = run.value(l.loss).first().copied().unwrap_or(0.0);
                }
                let bw = self.native.backward.as_ref().ok_or_else(|| err("no backward program"))?;
                let (mut dense, mut rows) = (Vec::new(), Vec::new());
                for g in &bw.params {
                    match *g {
                        ParamGrad::Dense { param, grad } => dense.push((param, run.grad(grad).to_vec())),
                        ParamGrad::Rows { param, ids, rows: r } => rows.push((param, ids, run.grad(r).to_vec())),
                    }
                }
                Ok((per_task, dense, rows))
            })
        })?;
        drop(guards);
        self.gradients(model, batch, per_task, dense, rows)
    }

    /// The step's gradients as the optimizer takes them: a store with the dense
    /// parameters' and, keyed by each lookup's placeholder leaf, its rows'.
    fn gradients(
        &self,
        model: &CandleModel,
        batch: &Batch,
        per_task: Vec<f32>,
        dense: Vec<(BufId, Vec<f32>)>,
        rows: Vec<(BufId, BufId, Vec<f32>)>,
    ) -> Result<Gradients> {
        let p = self.program();
        let dev = &model.device;
        // candle makes a gradient store only from a backward pass: that of a constant, its
        // one entry removed.
        let root = Tensor::zeros((), candle_core::DType::F32, dev)?;
        let mut grads = root.backward()?;
        grads.remove(&root);
        let var_of = |id: BufId| self.params[id.0].ok_or_else(|| err(format!("`{}` is no parameter", p.label(id))));
        for (param, g) in dense {
            let var = &model.vars[var_of(param)?].1;
            grads.insert(var.as_tensor(), Tensor::from_vec(g, var.as_tensor().shape(), dev)?);
        }
        let mut lookups = Vec::with_capacity(rows.len());
        // The backward lists the gathers last to first; the graph records them first to
        // last, and the optimizer sums a table's rows in that order.
        for (param, ids, g) in rows.into_iter().rev() {
            let var = var_of(param)?;
            let BufKind::Input(Input::Ids(i)) = p.buf(ids).kind else {
                return Err(err(format!("`{}`: gathered by ids that are not an input", p.label(param))));
            };
            let ids = batch.cat.get(i).ok_or_else(|| err("the batch lacks a categorical column"))?.flatten_all()?;
            let slots = batch.bags.get(i).cloned().flatten().map(|w| w.flatten_all()).transpose()?;
            let dim = model.vars[var].1.as_tensor().dims().last().copied().unwrap_or(1);
            let leaf = candle_core::Var::zeros(0, candle_core::DType::F32, dev)?;
            grads.insert(leaf.as_tensor(), Tensor::from_vec(g, (ids.elem_count(), dim), dev)?);
            lookups.push(Lookup { var, ids, leaf, slots });
        }
        Ok(Gradients { per_task, grads, lookups })
    }
}
