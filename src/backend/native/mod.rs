//! The native CPU backend: an interpreter of the op program over f32 buffers.
//!
//! In: a [`Program`] (and, for training, its [`Backward`]), parameter values by buffer,
//! and a batch's inputs ([`Feed`]). Out: every buffer's value ([`Run`]), and after
//! [`Native::backward`] every gradient buffer's. Each primitive's forward is written
//! once (`forward.rs`) and its vector-Jacobian product once (`vjp.rs`); nothing here
//! knows a model kind, so every model the lowering can express runs here.
//!
//! It is the CPU path of training and evaluation. What keeps it fast: a [`Run`]'s
//! buffers are kept from call to call (no allocation once the largest batch was
//! seen); a gradient's first contribution writes its buffer instead of adding to a
//! cleared one (the backward plan's write-or-add flag); `expert_linear` is one GEMM
//! over the experts' weights side by side; and an activation that only reads a
//! linear op's result runs in that op's kernel (`program::fuse`).

mod balance;
mod forward;
pub(crate) mod gemm;
mod plan;
mod vjp;

pub(crate) use forward::prefetch;
pub use gemm::fma_peak;

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
#[derive(Default)]
pub struct Run {
    pub batch: usize,
    /// Per buffer: which of `values` holds it (see `plan.rs`).
    slot: std::sync::Arc<Vec<usize>>,
    values: Vec<Vec<f32>>,
    grads: Vec<Vec<f32>>,
    /// Per node: a kernel's own working values, kept from its forward for its VJP
    /// (`expert_linear`'s weights side by side).
    scratch: Vec<Vec<f32>>,
}

impl Run {
    /// A computed buffer's value (empty for inputs and parameters). After an
    /// evaluation run only the values the program hands out (heads, gate weights) are
    /// kept: the others' buffers were reused (see `plan.rs`).
    pub fn value(&self, id: BufId) -> &[f32] {
        self.slot.get(id.0).and_then(|&s| self.values.get(s)).map_or(&[], Vec::as_slice)
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
    /// The fused kernels and where each value lives (`plan.rs`).
    plan: plan::Plan,
}

/// One operand of a kernel.
#[derive(Clone, Copy)]
pub(crate) enum Arg<'a> {
    F32(&'a [f32]),
    U32(&'a [u32]),
    /// A gather not run by itself: rows `ids` of `table` (`dim` values a row), which
    /// only a concat reads (`program::fuse::gathers_into_concat`).
    Rows {
        table: &'a [f32],
        ids: &'a [u32],
        dim: usize,
        name: &'a str,
    },
}

impl<'a> Arg<'a> {
    fn f32(self, what: &str) -> Result<&'a [f32]> {
        match self {
            Arg::F32(v) => Ok(v),
            Arg::U32(_) => Err(NativeError::Kernel(format!("{what}: expected f32 values, got ids"))),
            Arg::Rows { .. } => Err(NativeError::Kernel(format!("{what}: expected f32 values, got a deferred gather"))),
        }
    }
}

/// The operands `args` as a kernel reads them: parameters, bound inputs, values
/// computed earlier, or a deferred gather's table and ids (`deferred[buf]` its node).
fn operands<'a>(
    p: &'a Program,
    args: &[BufId],
    params: &[Option<&'a [f32]>],
    bound: &[Option<Arg<'a>>],
    (values, slot): (&'a [Vec<f32>], &[usize]),
    deferred: &[Option<usize>],
) -> Vec<Arg<'a>> {
    let one = |a: BufId| match (&p.buf(a).kind, bound[a.0]) {
        (BufKind::Param, _) => Arg::F32(params.get(a.0).copied().flatten().unwrap_or(&[])),
        (_, Some(arg)) => arg,
        _ => Arg::F32(&values[slot[a.0]]),
    };
    args.iter()
        .map(|&a| match deferred[a.0].map(|g| &p.nodes[g]) {
            Some(g) => match (one(g.args[0]), one(g.args[1])) {
                (Arg::F32(table), Arg::U32(ids)) => {
                    let t = p.buf(g.args[0]);
                    Arg::Rows { table, ids, dim: t.shape.last(), name: &t.name }
                }
                _ => one(a),
            },
            None => one(a),
        })
        .collect()
}

impl Native {
    pub fn new(program: Program, backward: Option<Backward>) -> Native {
        let plan = plan::plan(&program, backward.is_some());
        Native { program, backward, plan }
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
            Arg::U32(v) | Arg::Rows { ids: v, .. } => v.len(),
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
    /// is a parameter; `rng` draws dropout masks and gate noise (training programs);
    /// without one, a training program keeps every unit and adds no noise.
    pub fn forward(&self, params: &[Option<&[f32]>], feed: &Feed, rng: Option<&mut Rng>) -> Result<Run> {
        let mut run = Run::default();
        self.forward_into(params, feed, rng, &mut run)?;
        Ok(run)
    }

    /// [`Native::forward`] into `run`, whose buffers are reused: a caller that keeps
    /// one `Run` per thread allocates nothing once the largest batch has been seen.
    pub fn forward_into(
        &self,
        params: &[Option<&[f32]>],
        feed: &Feed,
        mut rng: Option<&mut Rng>,
        run: &mut Run,
    ) -> Result<()> {
        self.check_params(params)?;
        let p = &self.program;
        let b = feed.batch;
        run.batch = b;
        run.slot = self.plan.slot.clone();
        run.values.resize_with(self.plan.slots, Vec::new);
        run.scratch.resize_with(p.nodes.len(), Vec::new);
        let (values, slot) = (&mut run.values, &self.plan.slot);
        let bound = self.bind_all(feed)?;
        for (id, _, _) in p.inputs() {
            if bound[id.0].is_none() {
                values[slot[id.0]].clear();
                values[slot[id.0]].resize(b, 1.0); // every label present
            }
        }
        for (i, (n, scratch)) in p.nodes.iter().zip(&mut run.scratch).enumerate() {
            if self.plan.fused_away[i] {
                continue;
            }
            let act = self.plan.epilogue[i].map(|(u, _)| u);
            let target = slot[self.plan.target(p, i).0];
            let mut dst = std::mem::take(&mut values[target]);
            let done = {
                let args = operands(p, &n.args, params, &bound, (values, slot), &self.plan.deferred);
                let shapes: Vec<_> = n.args.iter().map(|a| &p.buf(*a).shape).collect();
                let out = forward::Out { shape: &p.buf(n.out).shape, values: &mut dst, scratch, act };
                forward::run(&n.op, &args, &shapes, out, b, rng.as_deref_mut())
            };
            values[target] = dst;
            // A gather's failure names its table.
            done.map_err(|e| match n.op {
                crate::program::Op::Gather => NativeError::Kernel(format!("`{}`: {e}", p.label(n.args[0]))),
                _ => e,
            })?;
        }
        Ok(())
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
        // The buffers of the run before are reused, not cleared: the step that first
        // contributes to a buffer writes it (the plan's write-or-add flag) where its
        // kernel covers every element, and is given it cleared where not.
        let first = p.bufs.len();
        let grads = &mut run.grads;
        grads.resize_with(first + bw.bufs.len(), Vec::new);
        for (i, g) in bw.bufs.iter().enumerate() {
            let dst = &mut grads[first + i];
            let n = g.shape.elems(run.batch);
            if dst.len() != n {
                dst.clear();
                dst.resize(n, 0.0);
            }
        }
        for (s, &v) in bw.seeds.iter().zip(seeds) {
            grads[s.0].clear();
            grads[s.0].push(v);
        }
        for s in &bw.aux_seeds {
            grads[s.0].clear();
            grads[s.0].push(1.0);
        }
        let bound = self.bind_all(feed)?;
        for step in &bw.steps {
            let n = &p.nodes[step.node];
            // Each operand's gradient buffer, taken out of the run while the step adds
            // into it (an operand read twice, `mul x, x`, adds into a copy put back after).
            let mut taken: Vec<Option<Vec<f32>>> = Vec::with_capacity(step.dargs.len());
            let mut twice: Vec<(usize, BufId)> = Vec::new();
            for (i, d) in step.dargs.iter().enumerate() {
                taken.push(d.map(|(g, adds)| {
                    let mut buf = std::mem::take(&mut run.grads[g.0]);
                    if buf.is_empty() && step.dargs[..i].iter().flatten().any(|(h, _)| *h == g) {
                        twice.push((i, g));
                        buf = vec![0.0; bw.buf(g).shape.elems(run.batch)];
                    } else if !adds && !vjp::overwrites(&n.op, i) {
                        buf.fill(0.0);
                    }
                    buf
                }));
            }
            let add: Vec<bool> = step
                .dargs
                .iter()
                .enumerate()
                .map(|(i, d)| d.is_some_and(|(_, adds)| adds || twice.iter().any(|&(j, _)| j == i)))
                .collect();
            let done = {
                let args = operands(p, &n.args, params, &bound, (&run.values, &run.slot), &self.plan.deferred);
                let shapes: Vec<_> = n.args.iter().map(|a| &p.buf(*a).shape).collect();
                let out = &run.values[run.slot[n.out.0]];
                let ctx = vjp::Ctx { args: &args, shapes: &shapes, out, b: run.batch, add: &add };
                let mut dargs: Vec<Option<&mut [f32]>> =
                    taken.iter_mut().map(|t| t.as_mut().map(Vec::as_mut_slice)).collect();
                vjp::run(&n.op, &ctx, &run.grads[step.dout.0], &mut dargs, &mut run.scratch[step.node])
            };
            for (i, (d, t)) in step.dargs.iter().zip(taken).enumerate() {
                if let (Some((g, _)), Some(t)) = (d, t) {
                    if twice.iter().any(|&(j, _)| j == i) {
                        run.grads[g.0].iter_mut().zip(&t).for_each(|(a, v)| *a += v);
                    } else {
                        run.grads[g.0] = t;
                    }
                }
            }
            done.map_err(|e| NativeError::Kernel(format!("vjp of {}: {e}", n.op.name())))?;
        }
        Ok(())
    }
}
