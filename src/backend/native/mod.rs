//! The native CPU backend: an interpreter of the op program over f32 buffers.
//!
//! In: a [`Program`] (and, for training, its [`Backward`]), parameter values by buffer,
//! and a batch's inputs ([`Feed`]). Out: every buffer's value ([`Run`]), and after
//! [`Native::backward`] every gradient buffer's. Each primitive's forward is written
//! once (`forward.rs`) and its vector-Jacobian product once (`vjp.rs`); nothing here
//! knows a model kind, so every model the lowering can express runs here.
//!
//! This is the reference interpreter: every op is its own pass over freshly allocated
//! buffers. The fused kernels that make the CPU path fast (`backend/candle/infer.rs`,
//! `backprop/`) are to become fusion patterns over the same ops.

mod balance;
mod forward;
pub(crate) mod gemm;
mod vjp;

use crate::program::{Backward, BufId, BufKind, Input, Program};
use crate::rng::Rng;

/// What a native run can fail on: a program or feed that does not fit (never a panic).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NativeError {
    #[error("input `{name}`: {what}")]
    Feed { name: String, what: String },
    #[error("parameter `{name}`: {what}")]
    Param { name: String, what: String },
    #[error("{0}")]
    Kernel(String),
}

type Result<T> = std::result::Result<T, NativeError>;

/// A batch's inputs, as the program's [`Input`]s name them.
#[derive(Debug, Clone, Default)]
pub struct Feed<'a> {
    pub batch: usize,
    /// Per categorical input: table rows `[B]`, a bag's `[B, len]`.
    pub ids: Vec<&'a [u32]>,
    /// Per categorical input: a bag's slot weights `[B, len]`.
    pub bags: Vec<Option<&'a [f32]>>,
    /// Every dense value side by side, `[B, dense_width]`.
    pub dense: Option<&'a [f32]>,
    /// Per task: labels `[B]` (missing ones as 0).
    pub labels: Vec<Option<&'a [f32]>>,
    /// Per task: 1 where the label is present `[B]`; None when every row has it.
    pub masks: Vec<Option<&'a [f32]>>,
}

/// Every buffer's value after a forward pass (and gradients after a backward one).
pub struct Run {
    pub batch: usize,
    values: Vec<Vec<f32>>,
    grads: Vec<Vec<f32>>,
}

impl Run {
    /// A computed buffer's value (empty for inputs and parameters).
    pub fn value(&self, id: BufId) -> &[f32] {
        &self.values[id.0]
    }

    /// A gradient buffer's value (see [`Backward::grad_of`]).
    pub fn grad(&self, id: BufId) -> &[f32] {
        self.grads.get(id.0).map_or(&[], Vec::as_slice)
    }
}

/// The native backend for one program.
pub struct Native {
    pub program: Program,
    pub backward: Option<Backward>,
}

/// One operand of a kernel.
#[derive(Clone, Copy)]
pub(crate) enum Arg<'a> {
    F32(&'a [f32]),
    U32(&'a [u32]),
}

impl<'a> Arg<'a> {
    fn f32(self, what: &str) -> Result<&'a [f32]> {
        match self {
            Arg::F32(v) => Ok(v),
            Arg::U32(_) => Err(NativeError::Kernel(format!("{what}: expected f32 values, got ids"))),
        }
    }
}

/// The operands `args` as a kernel reads them: parameters, bound inputs, or values
/// computed earlier.
fn operands<'a>(
    p: &Program,
    args: &[BufId],
    params: &[Option<&'a [f32]>],
    bound: &[Option<Arg<'a>>],
    values: &'a [Vec<f32>],
) -> Vec<Arg<'a>> {
    args.iter()
        .map(|a| match (&p.buf(*a).kind, bound[a.0]) {
            (BufKind::Param, _) => Arg::F32(params.get(a.0).copied().flatten().unwrap_or(&[])),
            (_, Some(arg)) => arg,
            _ => Arg::F32(&values[a.0]),
        })
        .collect()
}

impl Native {
    pub fn new(program: Program, backward: Option<Backward>) -> Native {
        Native { program, backward }
    }

    /// Checks that `params` holds every parameter at its shape.
    fn check_params(&self, params: &[Option<&[f32]>]) -> Result<()> {
        for (id, b) in self.program.params() {
            let n = b.shape.row_elems();
            match params.get(id.0).copied().flatten() {
                Some(v) if v.len() == n => {}
                Some(v) => {
                    let what = format!("has {} values, its shape {} holds {n}", v.len(), b.shape);
                    return Err(NativeError::Param { name: b.name.clone(), what });
                }
                None => return Err(NativeError::Param { name: b.name.clone(), what: "has no value".into() }),
            }
        }
        Ok(())
    }

    /// The value an input buffer is bound to, checked against its shape.
    fn bind<'a>(&self, id: BufId, input: Input, feed: &Feed<'a>) -> Result<Option<Arg<'a>>> {
        let b = self.program.buf(id);
        let missing = || NativeError::Feed { name: b.name.clone(), what: "the batch has none".into() };
        let arg = match input {
            Input::Ids(i) => Arg::U32(feed.ids.get(i).copied().ok_or_else(missing)?),
            Input::BagWeights(i) => Arg::F32(feed.bags.get(i).copied().flatten().ok_or_else(missing)?),
            Input::Dense => Arg::F32(feed.dense.ok_or_else(missing)?),
            Input::Label(t) => Arg::F32(feed.labels.get(t).copied().flatten().ok_or_else(missing)?),
            Input::Mask(t) => match feed.masks.get(t).copied().flatten() {
                Some(m) => Arg::F32(m),
                None => return Ok(None),
            },
        };
        let len = match arg {
            Arg::F32(v) => v.len(),
            Arg::U32(v) => v.len(),
        };
        let want = b.shape.elems(feed.batch);
        if len != want {
            let what = format!("has {len} values; {} at batch {} holds {want}", b.shape, feed.batch);
            return Err(NativeError::Feed { name: b.name.clone(), what });
        }
        Ok(Some(arg))
    }

    /// Every input buffer's binding (None: a mask the batch does not have).
    fn bind_all<'a>(&self, feed: &Feed<'a>) -> Result<Vec<Option<Arg<'a>>>> {
        let mut bound = vec![None; self.program.bufs.len()];
        for (id, input, _) in self.program.inputs() {
            bound[id.0] = self.bind(id, input, feed)?;
        }
        Ok(bound)
    }

    /// Runs the forward program on one batch. `params[i]` is buffer i's value when it
    /// is a parameter; `rng` draws dropout masks and gate noise (training programs).
    pub fn forward(&self, params: &[Option<&[f32]>], feed: &Feed, mut rng: Option<&mut Rng>) -> Result<Run> {
        self.check_params(params)?;
        let p = &self.program;
        let b = feed.batch;
        let mut values: Vec<Vec<f32>> = vec![Vec::new(); p.bufs.len()];
        let bound = self.bind_all(feed)?;
        for (id, _, _) in p.inputs() {
            if bound[id.0].is_none() {
                values[id.0] = vec![1.0; b]; // every label present
            }
        }
        for n in &p.nodes {
            let out = {
                let args = operands(p, &n.args, params, &bound, &values);
                let shapes: Vec<_> = n.args.iter().map(|a| &p.buf(*a).shape).collect();
                forward::run(&n.op, &args, &shapes, &p.buf(n.out).shape, b, rng.as_deref_mut())?
            };
            values[n.out.0] = out;
        }
        Ok(Run { batch: b, values, grads: Vec::new() })
    }

    /// Runs the backward program after [`Native::forward`] of the same batch:
    /// `seeds[i]` is `dL/dloss` of the program's i-th loss (its task's weight); the
    /// auxiliary losses count once each.
    pub fn backward(&self, params: &[Option<&[f32]>], feed: &Feed, run: &mut Run, seeds: &[f32]) -> Result<()> {
        let p = &self.program;
        let Some(bw) = &self.backward else { return Err(NativeError::Kernel("no backward program".into())) };
        if seeds.len() != bw.seeds.len() {
            return Err(NativeError::Kernel(format!("{} seeds for {} losses", seeds.len(), bw.seeds.len())));
        }
        // Every gradient buffer starts at zero and every step adds into it, so the plan's
        // write-or-add flag (for backends that do not clear their buffers) is not needed.
        let first = p.bufs.len();
        let mut grads: Vec<Vec<f32>> = vec![Vec::new(); first + bw.bufs.len()];
        for (i, g) in bw.bufs.iter().enumerate() {
            grads[first + i] = vec![0.0; g.shape.elems(run.batch)];
        }
        for (s, &v) in bw.seeds.iter().zip(seeds) {
            grads[s.0] = vec![v];
        }
        for s in &bw.aux_seeds {
            grads[s.0] = vec![1.0];
        }
        let bound = self.bind_all(feed)?;
        for step in &bw.steps {
            let n = &p.nodes[step.node];
            let contributions = {
                let args = operands(p, &n.args, params, &bound, &run.values);
                let shapes: Vec<_> = n.args.iter().map(|a| &p.buf(*a).shape).collect();
                let want: Vec<bool> = step.dargs.iter().map(Option::is_some).collect();
                let ctx =
                    vjp::Ctx { args: &args, shapes: &shapes, out: &run.values[n.out.0], b: run.batch, want: &want };
                vjp::run(&n.op, &ctx, &grads[step.dout.0])?
            };
            for (d, c) in step.dargs.iter().zip(contributions) {
                if let (Some((g, _)), Some(c)) = (d, c) {
                    let dst = &mut grads[g.0];
                    if dst.len() != c.len() {
                        return Err(NativeError::Kernel(format!(
                            "vjp of {}: {} values for {}",
                            n.op.name(),
                            c.len(),
                            dst.len()
                        )));
                    }
                    dst.iter_mut().zip(&c).for_each(|(x, y)| *x += y);
                }
            }
        }
        run.grads = grads;
        Ok(())
    }
}
