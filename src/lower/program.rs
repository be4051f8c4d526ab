//! Model IR -> op program: the one place where model kinds become primitive ops.
//!
//! In: a [`Validated`] model and a [`Mode`]. Out: a [`Program`] whose parameters carry
//! the names of the model's parameter table ([`Model::parameters`]), so bundles,
//! checkpoints and optimizer state are keyed as before.
//!
//! | model IR                      | ops                                                        |
//! |-------------------------------|------------------------------------------------------------|
//! | categorical feature           | `gather` (a bag: `gather` + `pool`)                        |
//! | dense feature                 | `slice` of the dense input                                 |
//! | cross                         | `mul` of two embeddings                                    |
//! | concat                        | `concat`                                                   |
//! | expert group on k slots       | (`take` of its slots) `expert_linear`, then `grouped_linear` per depth, activation and dropout each |
//! | DCN-v2 cross layers below it  | `expand` to one copy per expert, then per layer `grouped_linear`, `mul` by the copy, `add` (its first MLP depth is then a `grouped_linear`) |
//! | a layer's gates               | one `linear` over every slot, `take` of the columns its mixes read, `scale` (temperature), noise (`linear`, `softplus`, `normal`, ...), `top_k_mask`, `softmax` |
//! | a layer's mixes               | one `mix` over every group's instances                     |
//! | tower                         | (`take` of its slot) `linear` + activation per depth       |
//! | ESMM product                  | `log_sigmoid` of both factors' logits, `add`               |
//! | AITM transfer                 | info `linear` + `relu` on the earlier tower's last hidden vector, `concat` with this one's, `reshape` to two items; query, key, value `linear`s; `mul`, `reduce` (sum), `scale` by 1/sqrt(h), `softmax`, `mix` |
//! | AITM calibration (training)   | `sigmoid` of both logits, `scale` by -1, `add`, `relu`, `reduce` (batch mean), `scale` by its weight |
//! | training loss                 | `loss` per task with a label (its weight seeds the backward) |
//! | load-balancing loss (training)| `balance` on the gate weights, `load_balance` with noise   |
//!
//! The layer's slots, instances and mixes come from [`crate::ir::plan_layer`], as every
//! other reader of a layer takes them.

use crate::ir::{
    Activation, FeatureKind, Gating, Layer, LayerPlan, Model, Param, Pooling, Role, Stream, TaskId, TaskOutput,
    TransferPart, Validated,
};
use crate::program::{
    BufId, DType, GateWeights, Input, LossKind, Mode, Op, Output, PoolMode, Program, ProgramError, Reduction, Shape,
    TaskLoss, Unary,
};

type Result<T> = std::result::Result<T, ProgramError>;

/// Lowers a validated model to its op program for `mode`.
pub fn lower_program(model: &Validated, mode: Mode) -> Result<Program> {
    let m = model.model();
    let params = m.parameters();
    let mut cx = Cx { p: Program::new(&m.name, mode), params: &params, model: m };
    let x = cx.inputs()?;
    let mut h = x;
    let mut outputs = Vec::with_capacity(m.layers.len());
    for (li, l) in m.layers.iter().enumerate() {
        h = cx.layer(li, l, h)?;
        outputs.push(h);
    }
    let raws = cx.heads(x, &outputs)?;
    if mode == Mode::Train {
        cx.calibration(&raws)?;
    }
    for (t, (task, raw)) in m.tasks.iter().zip(&raws).enumerate() {
        cx.p.outputs.push(Output { task: task.name.clone(), raw: *raw, link: task.link() });
        if mode == Mode::Train && task.label.is_some() {
            let loss = cx.loss(t, *raw)?;
            cx.p.losses.push(TaskLoss { task: t, loss });
        }
    }
    cx.p.validate()?;
    Ok(cx.p)
}

struct Cx<'a> {
    p: Program,
    params: &'a [Param],
    model: &'a Model,
}

impl Cx<'_> {
    fn op(&mut self, op: Op, args: &[BufId]) -> Result<BufId> {
        self.p.push(op, args)
    }

    /// The parameter of `role`, declared under its parameter-table name.
    fn param(&mut self, role: Role) -> Result<BufId> {
        match self.params.iter().find(|p| p.role == role) {
            Some(p) => Ok(self.p.param(&p.name, &p.shape)),
            None => Err(ProgramError::Invalid { node: self.p.nodes.len(), op: "param", what: format!("no {role:?}") }),
        }
    }

    fn shape(&self, b: BufId) -> &Shape {
        &self.p.buf(b).shape
    }

    /// `act(x)`, nothing for a linear activation.
    fn activate(&mut self, x: BufId, a: Activation) -> Result<BufId> {
        let u = match a {
            Activation::Relu => Unary::Relu,
            Activation::Tanh => Unary::Tanh,
            Activation::Sigmoid => Unary::Sigmoid,
            Activation::Gelu => Unary::Gelu,
            Activation::Linear => return Ok(x),
        };
        self.op(Op::Unary(u), &[x])
    }

    /// Inverted dropout in training (a mask drawn per step, then `mul`); nothing else.
    /// `draw`: the mask's draw order (see [`Op::DropoutMask`]).
    fn dropout(&mut self, x: BufId, rate: f32, draw: Vec<usize>) -> Result<BufId> {
        if self.p.mode != Mode::Train || rate <= 0.0 {
            return Ok(x);
        }
        let dims = self.shape(x).dims.clone();
        let mask = self.op(Op::DropoutMask { rate, dims, draw }, &[])?;
        self.op(Op::Mul, &[x, mask])
    }

    fn reshape(&mut self, x: BufId, dims: &[usize]) -> Result<BufId> {
        if self.shape(x).dims == dims {
            return Ok(x);
        }
        self.op(Op::Reshape { dims: dims.to_vec() }, &[x])
    }

    /// The concatenated input `[B, input_width]`: embeddings (bags pooled), dense
    /// values, crosses.
    fn inputs(&mut self) -> Result<BufId> {
        let m = self.model;
        let dense_width: usize = m
            .features
            .iter()
            .map(|f| match f.kind {
                FeatureKind::Dense { width, .. } => width,
                FeatureKind::Categorical { .. } => 0,
            })
            .sum();
        let dense =
            (dense_width > 0).then(|| self.p.input("dense", Shape::batched(&[dense_width]), DType::F32, Input::Dense));
        let mut pieces = Vec::with_capacity(m.features.len() + m.crosses.len());
        let mut embedded: Vec<Option<BufId>> = Vec::with_capacity(m.features.len());
        let (mut cat, mut at) = (0, 0);
        for (fi, f) in m.features.iter().enumerate() {
            let e = match &f.kind {
                FeatureKind::Categorical { bag, .. } => {
                    let e = self.embedding(fi, cat, bag.as_ref())?;
                    cat += 1;
                    embedded.push(Some(e));
                    e
                }
                FeatureKind::Dense { width, .. } => {
                    let d = dense.ok_or_else(|| ProgramError::Invalid {
                        node: 0,
                        op: "slice",
                        what: "no dense input".into(),
                    })?;
                    let e = if *width == dense_width { d } else { self.op(Op::Slice { at, len: *width }, &[d])? };
                    at += width;
                    embedded.push(None);
                    e
                }
            };
            pieces.push(e);
        }
        for c in &m.crosses {
            let (Some(a), Some(b)) = (embedded[c.a.0], embedded[c.b.0]) else {
                let what = format!("cross `{}` of a dense feature", c.name);
                return Err(ProgramError::Invalid { node: self.p.nodes.len(), op: "mul", what });
            };
            pieces.push(self.op(Op::Mul, &[a, b])?);
        }
        match pieces.as_slice() {
            [one] => Ok(*one),
            _ => self.op(Op::Concat, &pieces),
        }
    }

    /// Categorical `fi` (the batch's categorical input `cat`): its table's rows
    /// gathered, `[B, dim]`, a bag's pooled by its slot weights.
    fn embedding(&mut self, fi: usize, cat: usize, bag: Option<&crate::ir::Bag>) -> Result<BufId> {
        let f = &self.model.features[fi];
        let table = self.param(Role::Embedding { feature: f.shares.map_or(fi, |o| o.0) })?;
        let len: Vec<usize> = bag.map(|b| b.max_len).into_iter().collect();
        let ids = self.p.input(&format!("ids.{}", f.name), Shape::batched(&len), DType::U32, Input::Ids(cat));
        let rows = self.op(Op::Gather, &[table, ids])?;
        let Some(bag) = bag else { return Ok(rows) };
        let w = self.p.input(&format!("bag.{}", f.name), Shape::batched(&len), DType::F32, Input::BagWeights(cat));
        let mode = match bag.pooling {
            Pooling::Sum | Pooling::Mean => PoolMode::WeightedSum,
            Pooling::Max => PoolMode::Max,
        };
        self.op(Op::Pool { mode }, &[rows, w])
    }

    /// One layer on its input stream (`[B, d]` shared, `[B, S, d]` slotted) -> its
    /// output stream.
    fn layer(&mut self, li: usize, l: &Layer, h: BufId) -> Result<BufId> {
        let plan = l.plan(self.model.tasks.len());
        let experts = self.experts(li, l, &plan, h)?; // [B, N, u]
        let u = l.d_out();
        if l.gates.is_empty() {
            // Ungated: each instance is an output slot.
            return match l.output {
                Stream::Shared { .. } => self.reshape(experts, &[u]),
                _ => Ok(experts),
            };
        }
        let probs = self.gates(li, l, &plan, h)?; // [B, sum E_m]
        let sets: Vec<Vec<usize>> = plan.mixes.iter().map(|m| m.instances.clone()).collect();
        let widths = sets.iter().map(Vec::len).collect();
        let mixed = self.op(Op::Mix { sets }, &[probs, experts])?; // [B, M, u]
        self.p.gates.push(GateWeights { probs, widths });
        match l.output {
            Stream::Shared { .. } => self.reshape(mixed, &[u]),
            _ => Ok(mixed),
        }
    }

    /// Every expert group on its slots, side by side: `[B, N, u]`.
    fn experts(&mut self, li: usize, l: &Layer, plan: &LayerPlan, h: BufId) -> Result<BufId> {
        let slotted = self.shape(h).dims.len() == 2;
        let n_slots = plan.inputs.len();
        let mut parts = Vec::with_capacity(plan.runs.len());
        for run in &plan.runs {
            let g = &l.groups[run.group];
            let k = run.slots.len();
            let mut x = h;
            if slotted && !run.slots.iter().copied().eq(0..n_slots) {
                x = self.op(Op::Take { indices: run.slots.clone() }, &[h])?; // [B, k, d]
            }
            if g.cross > 0 {
                x = self.cross_layers(li, run.group, g.cross, g.count, x)?; // [B, (k,) E, d]
            }
            for depth in 0..g.dims.len() - 1 {
                let w = self.param(Role::ExpertWeight { layer: li, group: run.group, depth })?;
                let b = self.param(Role::ExpertBias { layer: li, group: run.group, depth })?;
                let op = if depth == 0 && g.cross == 0 { Op::ExpertLinear } else { Op::GroupedLinear };
                x = self.op(op, &[x, w, b])?; // [B, (k,) E, u_depth]
                x = self.activate(x, g.activation)?;
                // Deeper depths draw their mask expert-major: [E, B, (k,) u].
                let rank = self.shape(x).dims.len() + 1;
                let draw = if depth == 0 {
                    Vec::new()
                } else {
                    [vec![rank - 2], (0..rank - 2).collect(), vec![rank - 1]].concat()
                };
                x = self.dropout(x, g.dropout, draw)?;
            }
            let width = if slotted { k * g.count } else { g.count };
            parts.push(self.reshape(x, &[width, g.d_out()])?); // [B, k*E, u]
        }
        match parts.as_slice() {
            [one] => Ok(*one),
            _ => self.op(Op::Concat, &parts),
        }
    }

    /// DCN-v2 cross layers below an expert group's MLP, every expert on its own copy of
    /// the input: `x_{i+1} = x_0 * (W_i x_i + b_i) + x_i`, `[B, (k,) d]` -> `[B, (k,) E, d]`.
    fn cross_layers(&mut self, li: usize, group: usize, layers: usize, count: usize, x: BufId) -> Result<BufId> {
        let x0 = self.op(Op::Expand { count }, &[x])?;
        let mut xi = x0;
        for depth in 0..layers {
            let w = self.param(Role::CrossWeight { layer: li, group, depth })?;
            let b = self.param(Role::CrossBias { layer: li, group, depth })?;
            let z = self.op(Op::GroupedLinear, &[xi, w, b])?;
            let gated = self.op(Op::Mul, &[x0, z])?;
            xi = self.op(Op::Add, &[gated, xi])?;
        }
        Ok(xi)
    }

    /// Every gate of the layer on every slot: one `linear`, the columns the mixes read,
    /// temperature, noise (training), top-k and a softmax per mix: `[B, sum E_m]`.
    fn gates(&mut self, li: usize, l: &Layer, plan: &LayerPlan, h: BufId) -> Result<BufId> {
        let w = self.param(Role::GateWeight { layer: li })?;
        let b = self.param(Role::GateBias { layer: li })?;
        let total: usize = l.gates.iter().map(|g| g.experts).sum();
        let columns = plan.gate_columns(&l.gates);
        let segments: Vec<usize> = plan.mixes.iter().map(|m| m.instances.len()).collect();
        let n_slots = plan.inputs.len();
        // [B, S * sum E_g] -> the columns the mixes read, [B, sum E_m].
        let select = |cx: &mut Self, logits: BufId| -> Result<BufId> {
            let flat = cx.reshape(logits, &[n_slots * total])?;
            if columns.iter().copied().eq(0..n_slots * total) {
                Ok(flat)
            } else {
                cx.op(Op::Take { indices: columns.clone() }, &[flat])
            }
        };
        let logits = self.op(Op::Linear, &[h, w, b])?; // [B, (S,) sum E_g]
        let mut clean = select(self, logits)?;
        let Gating { temperature, top_k, noise, balance } = l.gating;
        if temperature != 1.0 {
            clean = self.op(Op::Scale { factor: 1.0 / temperature }, &[clean])?;
        }
        let train = self.p.mode == Mode::Train;
        let mut noisy = None;
        if let (true, Some(_), true) = (noise, top_k, train) {
            // logits + N(0, 1) * (softplus(x W_noise) + 0.01).
            let wn = self.param(Role::GateNoise { layer: li })?;
            let raw = self.op(Op::Linear, &[h, wn])?;
            let raw = select(self, raw)?;
            let sp = self.op(Op::Unary(Unary::Softplus), &[raw])?;
            let scale = self.op(Op::AddScalar { value: 1e-2 }, &[sp])?;
            let eps = self.op(Op::Normal { dims: vec![columns.len()] }, &[])?;
            let jitter = self.op(Op::Mul, &[eps, scale])?;
            noisy = Some((self.op(Op::Add, &[clean, jitter])?, scale));
        }
        let mut x = noisy.map_or(clean, |(n, _)| n);
        if let Some(k) = top_k {
            x = self.op(Op::TopKMask { segments: segments.clone(), k }, &[x])?;
        }
        let probs = self.op(Op::Softmax { segments: segments.clone() }, &[x])?;
        if train && balance > 0.0 {
            let imp = self.op(Op::Balance { segments: segments.clone(), weight: balance }, &[probs])?;
            self.p.aux_losses.push(imp);
            if let (Some(k), Some((noisy, scale))) = (top_k, noisy) {
                let load = self.op(Op::LoadBalance { segments, k, weight: balance }, &[clean, noisy, scale])?;
                self.p.aux_losses.push(load);
            }
        }
        Ok(probs)
    }

    /// Every task's raw output, in task order: towers on their slot, then products.
    fn heads(&mut self, input: BufId, outputs: &[BufId]) -> Result<Vec<BufId>> {
        let m = self.model;
        let mut raws: Vec<Option<BufId>> = vec![None; m.tasks.len()];
        // Each tower's last hidden vector (after its transfer, AITM's `z`).
        let mut hidden: Vec<Option<BufId>> = vec![None; m.tasks.len()];
        for (t, task) in m.tasks.iter().enumerate() {
            let TaskOutput::Tower { dims, activation, dropout } = &task.output else { continue };
            let (src, stream) = match task.input {
                Some(i) => (outputs[i], m.layers[i].output),
                None => (outputs.last().copied().unwrap_or(input), m.head_stream()),
            };
            let mut x = match stream {
                Stream::Shared { .. } => src,
                Stream::PerTask { width } | Stream::PerTaskShared { width } => {
                    let slot = self.op(Op::Take { indices: vec![stream.task_slot(TaskId(t))] }, &[src])?;
                    self.reshape(slot, &[width])?
                }
            };
            let depths = dims.len() - 1;
            for depth in 0..depths {
                if depth + 1 == depths && depth > 0 {
                    if let Some(tr) = task.transfer {
                        x = self.transfer(t, hidden[tr.from.0], x)?;
                    }
                    hidden[t] = Some(x);
                }
                let w = self.param(Role::TowerWeight { task: t, depth })?;
                let b = self.param(Role::TowerBias { task: t, depth })?;
                x = self.op(Op::Linear, &[x, w, b])?;
                if depth + 1 < depths {
                    x = self.activate(x, *activation)?;
                    x = self.dropout(x, *dropout, Vec::new())?;
                }
            }
            let out = if task.head.width() == 1 { self.reshape(x, &[])? } else { x };
            raws[t] = Some(out);
        }
        for (t, task) in m.tasks.iter().enumerate() {
            if let TaskOutput::Product { factors: [a, b] } = task.output {
                // log p = log sigmoid(a) + log sigmoid(b), kept in log space.
                let (Some(za), Some(zb)) = (raws[a.0], raws[b.0]) else {
                    let what = format!("product task `{}` lacks a factor", task.name);
                    return Err(ProgramError::Invalid { node: self.p.nodes.len(), op: "add", what });
                };
                let la = self.op(Op::Unary(Unary::LogSigmoid), &[za])?;
                let lb = self.op(Op::Unary(Unary::LogSigmoid), &[zb])?;
                raws[t] = Some(self.op(Op::Add, &[la, lb])?);
            }
        }
        raws.into_iter()
            .enumerate()
            .map(|(t, r)| {
                r.ok_or_else(|| ProgramError::Invalid { node: 0, op: "out", what: format!("task {t} has no output") })
            })
            .collect()
    }

    /// AITM's transfer into task `t`'s tower: its last hidden vector `q` `[B, h]` and
    /// the earlier task's `prev` (through the info layer) are the two items of a
    /// self-attention; the result `[B, h]` replaces `q`.
    fn transfer(&mut self, t: usize, prev: Option<BufId>, q: BufId) -> Result<BufId> {
        let part = |cx: &mut Self, part| cx.param(Role::Transfer { task: t, part });
        let prev = prev.ok_or_else(|| ProgramError::Invalid {
            node: self.p.nodes.len(),
            op: "concat",
            what: format!("task {t} transfers from a task without a hidden vector"),
        })?;
        let h = self.shape(q).last();
        let (w, b) = (part(self, TransferPart::InfoWeight)?, part(self, TransferPart::InfoBias)?);
        let info = self.op(Op::Linear, &[prev, w, b])?;
        let info = self.op(Op::Unary(Unary::Relu), &[info])?;
        let both = self.op(Op::Concat, &[q, info])?;
        let items = self.reshape(both, &[2, h])?;
        let project = |cx: &mut Self, which| -> Result<BufId> {
            let w = part(cx, which)?;
            cx.op(Op::Linear, &[items, w])
        };
        let (query, key, value) = (
            project(self, TransferPart::Query)?,
            project(self, TransferPart::Key)?,
            project(self, TransferPart::Value)?,
        );
        let dots = self.op(Op::Mul, &[query, key])?;
        let scores = self.op(Op::Reduce { over: Reduction::SumLast }, &[dots])?;
        let scores = self.op(Op::Scale { factor: 1.0 / (h as f32).sqrt() }, &[scores])?;
        let weights = self.op(Op::Softmax { segments: vec![2] }, &[scores])?;
        let z = self.op(Op::Mix { sets: vec![vec![0, 1]] }, &[weights, value])?;
        self.reshape(z, &[h])
    }

    /// AITM's calibration losses (auxiliary): per transfer with a weight, the batch mean
    /// of `max(p_task - p_from, 0)` times the weight.
    fn calibration(&mut self, raws: &[BufId]) -> Result<()> {
        for (t, task) in self.model.tasks.iter().enumerate() {
            let Some(tr) = task.transfer.filter(|tr| tr.calibration > 0.0) else { continue };
            let p = self.op(Op::Unary(Unary::Sigmoid), &[raws[t]])?;
            let p_from = self.op(Op::Unary(Unary::Sigmoid), &[raws[tr.from.0]])?;
            let minus = self.op(Op::Scale { factor: -1.0 }, &[p_from])?;
            let excess = self.op(Op::Add, &[p, minus])?;
            let excess = self.op(Op::Unary(Unary::Relu), &[excess])?;
            let mean = self.op(Op::Reduce { over: Reduction::MeanBatch }, &[excess])?;
            let loss = self.op(Op::Scale { factor: tr.calibration }, &[mean])?;
            self.p.aux_losses.push(loss);
        }
        Ok(())
    }

    /// Task `t`'s loss on its labels and label mask.
    fn loss(&mut self, t: usize, raw: BufId) -> Result<BufId> {
        let name = &self.model.tasks[t].name;
        let label = self.p.input(&format!("label.{name}"), Shape::batched(&[]), DType::F32, Input::Label(t));
        let mask = self.p.input(&format!("mask.{name}"), Shape::batched(&[]), DType::F32, Input::Mask(t));
        let kind = LossKind::of(self.model.tasks[t].link());
        self.op(Op::Loss { kind }, &[raw, label, mask])
    }
}
