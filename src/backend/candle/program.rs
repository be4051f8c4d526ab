//! The candle backend as an interpreter of the op program: each primitive written once
//! as candle tensor ops, so that candle's autograd differentiates whatever the lowering
//! produces, on any candle device (CPU or CUDA). Nothing here knows a model kind.
//!
//! In training, a `gather` cuts the looked-up rows out of its table as a leaf `Var`
//! ([`Lookup`]), so the table's gradient stays the looked-up rows' and the optimizer
//! applies it sparsely.

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var, D};

use super::{
    activate, add_bias, batched_matmul, dense::dense, device_ops, dropout, log_sigmoid, loss, pool, softplus, Batch,
    CandleModel, Lookup, Output, Result,
};
use crate::ir::{Activation, Pooling};
use crate::program::{mix_scatter, BufKind, Input, Mode, Node, Op, PoolMode, Program, Reduction, Shape, Unary};
use crate::rng::Rng;

fn err(what: String) -> candle_core::Error {
    candle_core::Error::Msg(what)
}

/// `[b, dims..]`, or `[dims..]` without a batch axis.
fn dims(s: &Shape, b: usize) -> Vec<usize> {
    if s.batch {
        std::iter::once(b).chain(s.dims.iter().copied()).collect()
    } else {
        s.dims.clone()
    }
}

/// `f` on each segment of the columns of `x` `[B, C]`: once over `[B, M, w]` when every
/// segment has width w, else per segment and concatenated.
fn per_segment(x: &Tensor, segments: &[usize], f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let b = x.dim(0)?;
    match segments.first() {
        Some(&w) if segments.iter().all(|&s| s == w) => {
            f(&x.reshape((b, segments.len(), w))?)?.reshape((b, segments.len() * w))
        }
        _ => {
            let mut at = 0;
            let mut parts = Vec::with_capacity(segments.len());
            for &s in segments {
                parts.push(f(&x.narrow(1, at, s)?)?);
                at += s;
            }
            Tensor::cat(&parts, 1)
        }
    }
}

/// The sum over segments of `f` on each segment's columns of every operand.
fn sum_segments(xs: &[&Tensor], segments: &[usize], f: impl Fn(&[Tensor]) -> Result<Tensor>) -> Result<Tensor> {
    let mut at = 0;
    let mut total: Option<Tensor> = None;
    for &s in segments {
        let cut = xs.iter().map(|x| x.narrow(1, at, s)).collect::<Result<Vec<_>>>()?;
        let v = f(&cut)?;
        total = Some(match total {
            Some(t) => (t + v)?,
            None => v,
        });
        at += s;
    }
    total.ok_or_else(|| err("no segments".into()))
}

/// The squared coefficient of variation of `x` `[E]` over its entries.
fn cv2(x: &Tensor) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let var = x.broadcast_sub(&mean)?.sqr()?.mean_keepdim(D::Minus1)?;
    (var / (mean.sqr()? + 1e-10)?)?.sum_all()
}

/// All but the k largest of the last axis pushed 1e9 down (no gradient through which).
fn top_k(x: &Tensor, k: usize) -> Result<Tensor> {
    let (sorted, _) = x.detach().contiguous()?.sort_last_dim(false)?;
    let kth = sorted.narrow(D::Minus1, k - 1, 1)?;
    let keep = x.broadcast_ge(&kth)?.to_dtype(x.dtype())?;
    x + ((keep - 1.0)? * 1e9)?
}

/// The load term on one segment (`[B, E]` each): each expert's chance to stay in the
/// top k when only its own noise is redrawn, summed over the batch, then cv2.
fn load(clean: &Tensor, noisy: &Tensor, scale: &Tensor, k: usize) -> Result<Tensor> {
    let (sorted, _) = noisy.detach().contiguous()?.sort_last_dim(false)?;
    let kth = sorted.narrow(D::Minus1, k - 1, 1)?;
    let next = sorted.narrow(D::Minus1, k, 1)?;
    let in_top = noisy.detach().broadcast_ge(&kth)?.to_dtype(noisy.dtype())?;
    let threshold = (in_top.broadcast_mul(&next)? + (1.0 - &in_top)?.broadcast_mul(&kth)?)?;
    let z = ((clean - threshold)? / scale)?;
    let prob = (((z / std::f64::consts::SQRT_2)?.erf()? + 1.0)? * 0.5)?;
    cv2(&prob.sum(0)?)
}

/// Random values of `shape` for a training step: the dropout mask at `rate`, or
/// standard normal draws; drawn on the device where it is a GPU. A mask is drawn in the
/// axis order `draw` asks for (see [`Op::DropoutMask`]), then laid out as `shape`.
fn random(op: &Op, shape: &[usize], device: &candle_core::Device, rng: &mut Rng) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    match op {
        Op::DropoutMask { rate, draw, .. } if !draw.is_empty() => {
            let drawn: Vec<usize> = draw.iter().map(|&a| shape[a]).collect();
            let mask = dropout(&Tensor::ones(drawn, DType::F32, device)?, *rate, Some(rng))?;
            // Axis i of the layout is axis `position of i in draw` of the drawn tensor.
            let back: Vec<usize> = (0..shape.len()).map(|i| draw.iter().position(|&a| a == i).unwrap_or(i)).collect();
            mask.permute(back)?.contiguous()
        }
        Op::DropoutMask { rate, .. } => dropout(&Tensor::ones(shape, DType::F32, device)?, *rate, Some(rng)),
        _ if device.is_cpu() => {
            Tensor::from_vec((0..n).map(|_| rng.normal() as f32).collect::<Vec<f32>>(), shape, device)
        }
        _ => {
            use device_ops::Fill;
            device_ops::StandardNormal { seed: rng.next_u64() }.like(&Tensor::zeros(shape, DType::F32, device)?)
        }
    }
}

impl CandleModel {
    /// Runs the program on a batch: its outputs as [`Output`] (heads, each gated layer's
    /// mixes' weights, lookups in training, the auxiliary losses summed). `rng` draws
    /// the training program's dropout masks and gate noise; without one, every unit is
    /// kept and no noise added.
    pub fn run_program(&self, p: &Program, batch: &Batch, mut rng: Option<&mut Rng>) -> Result<Output> {
        let b = batch.size;
        let vars = &self.programs.var_index;
        let mut values: Vec<Option<Tensor>> = vec![None; p.bufs.len()];
        for (id, buf) in p.bufs.iter().enumerate() {
            values[id] = match buf.kind {
                BufKind::Param => {
                    let i = vars.get(buf.name.as_str()).ok_or_else(|| err(format!("no parameter `{}`", buf.name)))?;
                    Some(self.vars[*i].1.as_tensor().clone())
                }
                BufKind::Input(input) => self.bind(input, batch)?,
                BufKind::Value => None,
            };
        }
        let mut lookups = Vec::new();
        for n in &p.nodes {
            let y = if n.op == Op::Gather && p.mode == Mode::Train {
                self.lookup(p, n, &values, vars, batch, &mut lookups)?
            } else if let Op::Loss { kind } = n.op {
                let get = |i: usize| values[n.args[i].0].as_ref();
                let (raw, label) = (get(0), get(1));
                // A batch without this task's labels adds no loss.
                let (Some(raw), Some(label)) = (raw, label) else { continue };
                loss::task_loss(kind.link(), raw, label, get(2))?
            } else {
                let args = n
                    .args
                    .iter()
                    .map(|a| values[a.0].clone().ok_or_else(|| err(format!("{} has no value", p.label(*a)))))
                    .collect::<Result<Vec<_>>>()?;
                let shapes: Vec<&Shape> = n.args.iter().map(|a| &p.buf(*a).shape).collect();
                let out = dims(&p.buf(n.out).shape, b);
                if n.op.is_random() {
                    match rng.as_deref_mut() {
                        Some(rng) => random(&n.op, &out, &self.device, rng)?,
                        // No random stream: every unit kept, no noise.
                        None if matches!(n.op, Op::DropoutMask { .. }) => Tensor::ones(out, DType::F32, &self.device)?,
                        None => Tensor::zeros(out, DType::F32, &self.device)?,
                    }
                } else {
                    self.eval(&n.op, &args, &shapes, &out)?
                }
            };
            values[n.out.0] = Some(y);
        }
        self.collect(p, values, lookups)
    }

    /// The tensor an input buffer is bound to (a mask only when some label is missing).
    fn bind(&self, input: Input, batch: &Batch) -> Result<Option<Tensor>> {
        let missing = |what: &str| err(format!("the batch has no {what}"));
        Ok(match input {
            Input::Ids(i) => Some(batch.cat.get(i).ok_or_else(|| missing("categorical column"))?.clone()),
            Input::BagWeights(i) => Some(batch.bags.get(i).cloned().flatten().ok_or_else(|| missing("bag weights"))?),
            Input::Dense => Some(batch.dense.clone().ok_or_else(|| missing("dense values"))?),
            Input::Label(t) => batch.labels.get(t).cloned().flatten(),
            Input::Mask(t) => batch.masks.get(t).cloned().flatten(),
        })
    }

    /// A training `gather`: the rows as a leaf, recorded as a [`Lookup`].
    fn lookup(
        &self,
        p: &Program,
        n: &Node,
        values: &[Option<Tensor>],
        vars: &HashMap<String, usize>,
        batch: &Batch,
        lookups: &mut Vec<Lookup>,
    ) -> Result<Tensor> {
        let table = p.buf(n.args[0]);
        let var = *vars.get(table.name.as_str()).ok_or_else(|| err(format!("no parameter `{}`", table.name)))?;
        let ids = values[n.args[1].0].as_ref().ok_or_else(|| err("a gather without ids".into()))?.flatten_all()?;
        let leaf = Var::from_tensor(&self.vars[var].1.as_tensor().detach().index_select(&ids, 0)?)?;
        let slots = match p.buf(n.args[1]).kind {
            BufKind::Input(Input::Ids(i)) => {
                batch.bags.get(i).cloned().flatten().map(|w| w.flatten_all()).transpose()?
            }
            _ => None,
        };
        let y = leaf.as_tensor().reshape(dims(&p.buf(n.out).shape, batch.size))?;
        lookups.push(Lookup { var, ids, leaf, slots });
        Ok(y)
    }

    /// One op on its operands' tensors, into a result of shape `out`.
    fn eval(&self, op: &Op, a: &[Tensor], shapes: &[&Shape], out: &[usize]) -> Result<Tensor> {
        let flat = |x: &Tensor, width: usize| x.reshape((x.elem_count() / width.max(1), width));
        match op {
            Op::Gather => a[0].index_select(&a[1].flatten_all()?, 0)?.reshape(out),
            Op::Pool { mode } => {
                let pooling = if *mode == PoolMode::Max { Pooling::Max } else { Pooling::Sum };
                pool(&flat(&a[0], shapes[0].last())?, &a[1], pooling)
            }
            Op::Slice { at, len } => a[0].narrow(D::Minus1, *at, *len)?.contiguous(),
            Op::Concat => Tensor::cat(a, 1),
            Op::Take { indices } => {
                let first = indices[0];
                if indices.iter().copied().eq(first..first + indices.len()) {
                    a[0].narrow(1, first, indices.len())?.contiguous()
                } else {
                    let idx: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
                    a[0].index_select(&Tensor::from_vec(idx, indices.len(), &self.device)?, 1)
                }
            }
            Op::Reshape { .. } => a[0].reshape(out),
            Op::Expand { .. } => a[0].unsqueeze(a[0].rank() - 1)?.broadcast_as(out)?.contiguous(),
            Op::Add => &a[0] + &a[1],
            Op::Mul => &a[0] * &a[1],
            Op::Scale { factor } => &a[0] * *factor as f64,
            Op::Reduce { over: Reduction::SumLast } => a[0].sum(D::Minus1),
            Op::Reduce { over: Reduction::MeanBatch } => a[0].mean_all(),
            Op::AddScalar { value } => &a[0] + *value as f64,
            Op::Unary(u) => match u {
                Unary::Relu => a[0].relu(),
                Unary::Tanh => a[0].tanh(),
                Unary::Sigmoid => activate(&a[0], Activation::Sigmoid),
                Unary::Gelu => a[0].gelu(),
                Unary::Softplus => softplus(&a[0]),
                Unary::LogSigmoid => log_sigmoid(&a[0]),
                Unary::Exp => a[0].exp(),
            },
            Op::Linear => {
                let x = flat(&a[0], shapes[1].dims[0])?;
                let y = match a.get(2) {
                    Some(bias) => dense(&x, &a[1], bias, Activation::Linear)?,
                    None => x.matmul(&a[1])?,
                };
                y.reshape(out)
            }
            Op::ExpertLinear => {
                // One GEMM over the experts' weights side by side, [i, E*o].
                let (e, i, o) = a[1].dims3()?;
                let w = a[1].permute((1, 0, 2))?.reshape((i, e * o))?;
                dense(&flat(&a[0], i)?, &w, &a[2].reshape(e * o)?, Activation::Linear)?.reshape(out)
            }
            Op::GroupedLinear => {
                // One batched matmul over the expert axis: [E, R, i] x [E, i, o].
                let (e, i, o) = a[1].dims3()?;
                let rows = a[0].elem_count() / (e * i).max(1);
                let x = a[0].reshape((rows, e, i))?.transpose(0, 1)?.contiguous()?;
                let y = add_bias(&x.matmul(&a[1])?, &a[2].reshape((e, 1, o))?)?;
                y.transpose(0, 1)?.reshape(out)
            }
            Op::TopKMask { segments, k } => per_segment(&a[0], segments, |x| top_k(x, *k)),
            Op::Softmax { segments } => per_segment(&a[0], segments, |x| candle_nn::ops::softmax(x, D::Minus1)),
            Op::Mix { sets } => self.mix(&a[0], &a[1], sets),
            Op::Balance { segments, weight } => {
                sum_segments(&[&a[0]], segments, |c| cv2(&c[0].sum(0)?))? * *weight as f64
            }
            Op::LoadBalance { segments, k, weight } => {
                sum_segments(&[&a[0], &a[1], &a[2]], segments, |c| load(&c[0], &c[1], &c[2], *k))? * *weight as f64
            }
            Op::DropoutMask { .. } | Op::Normal { .. } | Op::Loss { .. } => {
                Err(err(format!("`{}` is run by the interpreter loop", op.name())))
            }
        }
    }

    /// `[B, M, u]`: the weights `[B, C]` scattered to `[B, M, N]` (a constant 0/1 matrix,
    /// none when every mix weighs all N instances in order), then one batched matmul.
    fn mix(&self, w: &Tensor, experts: &Tensor, sets: &[Vec<usize>]) -> Result<Tensor> {
        let (b, n, _) = experts.dims3()?;
        let m = sets.len();
        let dense = match mix_scatter(sets, n) {
            None => w.reshape((b, m, n))?,
            Some((rows, cols, q)) => w.matmul(&Tensor::from_vec(q, (rows, cols), &self.device)?)?.reshape((b, m, n))?,
        };
        batched_matmul(&dense, experts)
    }

    /// The run's [`Output`]: heads, each gated layer's mixes' weights, the auxiliary
    /// losses summed.
    fn collect(&self, p: &Program, values: Vec<Option<Tensor>>, lookups: Vec<Lookup>) -> Result<Output> {
        let get = |id: crate::program::BufId| {
            values[id.0].clone().ok_or_else(|| err(format!("{} was not computed", p.label(id))))
        };
        let heads = p.outputs.iter().map(|o| get(o.raw)).collect::<Result<Vec<_>>>()?;
        let mut gates = Vec::with_capacity(p.gates.len());
        for g in &p.gates {
            gates.push(super::mixes_of(&get(g.probs)?, &g.widths)?);
        }
        let mut balance: Option<Tensor> = None;
        for &a in &p.aux_losses {
            balance = super::add_opt(balance, Some(get(a)?))?;
        }
        let mut losses = vec![None; p.outputs.len()];
        for l in &p.losses {
            losses[l.task] = values[l.loss.0].clone();
        }
        Ok(Output { heads, gates, lookups, balance, losses })
    }
}
