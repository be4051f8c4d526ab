//! Layers and the streams between them, and the one rule that connects them:
//! [`plan_layer`] says which input slot every expert group runs on, which slot every
//! gate reads, which expert instances it mixes and which output slot it writes.
//! Lowering calls it to infer a layer's output stream, the candle backend executes
//! its plan, and the graph renderer draws it; none of them re-derives the rule.
//!
//! # Slots
//!
//! A stream carries up to `T + 1` slots of equal width: one per task, then an optional
//! shared one. At run time it is one tensor `[batch, slots, width]` in that order
//! (`[batch, width]` when it has only the shared slot).
//!
//! # The rule
//!
//! | layer           | on `shared[d]`                                   | on `per_task[d]` (or `per_task+shared[d]`)            |
//! |-----------------|--------------------------------------------------|------------------------------------------------------|
//! | `shared_bottom` | one MLP -> `shared[u]`                           | the same MLP on every task slot -> `per_task[u]`      |
//! | `moe`           | experts + one gate -> `shared[u]`                | experts and the gate on every task slot -> `per_task[u]` |
//! | `mmoe`          | experts; gate t -> slot t: `per_task[u]`         | experts on every task slot; gate t on slot t          |
//! | `cgc`           | shared and per-task experts read the input; gate t mixes task t's experts and the shared ones -> `per_task[u]`; with a shared gate (every PLE level but the last) it also writes `per_task+shared[u]`'s shared slot, mixing all experts | task t's experts and gate read slot t; shared experts and the shared gate read the shared slot (`per_task` without a shared slot is an error) |
//!
//! A `per_task+shared` stream read by a layer other than `cgc` loses its shared slot.

use super::{Activation, TaskId};

/// A stream between layers (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// `[batch, width]`.
    Shared { width: usize },
    /// `[batch, tasks, width]`.
    PerTask { width: usize },
    /// `[batch, tasks + 1, width]`: the task slots, then the shared slot (PLE's inner levels).
    PerTaskShared { width: usize },
}

impl Stream {
    pub fn width(&self) -> usize {
        match *self {
            Stream::Shared { width } | Stream::PerTask { width } | Stream::PerTaskShared { width } => width,
        }
    }

    /// The stream's slots, in their run-time order.
    pub fn slots(&self, n_tasks: usize) -> Vec<Slot> {
        let tasks = (0..n_tasks).map(|t| Slot::Task(TaskId(t)));
        match self {
            Stream::Shared { .. } => vec![Slot::Shared],
            Stream::PerTask { .. } => tasks.collect(),
            Stream::PerTaskShared { .. } => tasks.chain([Slot::Shared]).collect(),
        }
    }

    /// Where slot `slot` sits in the stream, if it has it.
    pub fn slot_index(&self, slot: Slot, n_tasks: usize) -> Option<usize> {
        self.slots(n_tasks).iter().position(|s| *s == slot)
    }

    /// The slot a task's tower reads: its own, or the shared one.
    pub fn task_slot(&self, t: TaskId) -> usize {
        match self {
            Stream::Shared { .. } => 0,
            Stream::PerTask { .. } | Stream::PerTaskShared { .. } => t.0,
        }
    }

    /// The stream whose slots are `slots` (task slots first, then shared).
    pub fn from_slots(slots: &[Slot], width: usize) -> Stream {
        let shared = slots.contains(&Slot::Shared);
        let tasks = slots.iter().any(|s| matches!(s, Slot::Task(_)));
        match (tasks, shared) {
            (true, true) => Stream::PerTaskShared { width },
            (true, false) => Stream::PerTask { width },
            _ => Stream::Shared { width },
        }
    }
}

/// One slot of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Task(TaskId),
    Shared,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    SharedBottom,
    Moe,
    Mmoe,
    /// Customised gate control (PLE's extraction level): shared and task experts.
    Cgc,
}

impl LayerKind {
    pub const NAMES: &'static [&'static str] = &["shared_bottom", "moe", "mmoe", "cgc"];
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "shared_bottom" => LayerKind::SharedBottom,
            "moe" => LayerKind::Moe,
            "mmoe" => LayerKind::Mmoe,
            "cgc" => LayerKind::Cgc,
            _ => return None,
        })
    }
    pub fn as_str(&self) -> &'static str {
        LayerKind::NAMES[*self as usize]
    }
    /// Whether the layer runs on every task slot of a per-task stream alike.
    pub fn is_slotwise(&self) -> bool {
        !matches!(self, LayerKind::Cgc)
    }
}

/// Who an expert group belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpertOwner {
    /// Mixed by every gate that lists it (MMoE, MoE, shared-bottom, CGC's shared experts).
    Shared,
    /// Task-specific experts (CGC/PLE): mixed by that task's gate and the shared gate.
    Task(TaskId),
}

/// `count` experts with the same MLP shape, stored and run as one fused tensor per
/// MLP layer: weight `[count, dims[i], dims[i+1]]`, bias `[count, dims[i+1]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpertGroup {
    pub name: String,
    pub owner: ExpertOwner,
    pub count: usize,
    /// DCN-v2 cross layers below the MLP (Wang et al. 2021): `x_{i+1} = x_0 * (W_i x_i +
    /// b_i) + x_i` on the expert's input, weight `[count, d_in, d_in]`, bias `[count,
    /// d_in]` each. 0: a plain MLP expert.
    pub cross: usize,
    /// `[d_in, u_1, .., u_k]`.
    pub dims: Vec<usize>,
    pub activation: Activation,
    /// Dropout rate after each MLP layer while training (0: none).
    pub dropout: f32,
}

impl ExpertGroup {
    pub fn d_in(&self) -> usize {
        self.dims[0]
    }
    pub fn d_out(&self) -> usize {
        *self.dims.last().unwrap_or(&0)
    }
    pub fn params(&self) -> usize {
        let d = self.d_in();
        self.count * (self.cross * (d * d + d) + self.dims.windows(2).map(|w| w[0] * w[1] + w[1]).sum::<usize>())
    }
    /// Forward FLOPs of the group on one row of one slot.
    pub fn flops_per_slot(&self) -> usize {
        let d = self.d_in();
        self.count * (self.cross * 2 * d * d + self.dims.windows(2).map(|w| 2 * w[0] * w[1]).sum::<usize>())
    }
}

/// Which slot a gate's mixture goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateOwner {
    /// One gate for all tasks (MoE / OMoE).
    AllTasks,
    Task(TaskId),
    /// A PLE level's shared gate: writes the shared slot of the next level's input.
    Shared,
}

/// A softmax gate `[d_in -> experts]` over the experts of the groups it lists.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    pub name: String,
    pub owner: GateOwner,
    pub d_in: usize,
    /// Indices into the layer's groups, in the order of the gate's outputs.
    pub groups: Vec<usize>,
    /// Experts mixed: the sum of the listed groups' counts.
    pub experts: usize,
}

impl Gate {
    pub fn params(&self) -> usize {
        self.d_in * self.experts + self.experts
    }
}

/// How every gate of a layer turns logits into weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gating {
    /// Logits are divided by this before the softmax.
    pub temperature: f32,
    /// Keep only the k largest logits of each gate (noisy top-k gating).
    pub top_k: Option<usize>,
    /// With `top_k`: trained Gaussian noise on the logits while training.
    pub noise: bool,
    /// Weight of the load-balancing loss (0: none).
    pub balance: f32,
}

impl Default for Gating {
    fn default() -> Self {
        Gating { temperature: 1.0, top_k: None, noise: false, balance: 0.0 }
    }
}

impl Gating {
    pub fn is_default(&self) -> bool {
        *self == Gating::default()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    pub name: String,
    pub kind: LayerKind,
    pub input: Stream,
    pub output: Stream,
    pub gating: Gating,
    /// Expert groups; a shared group first, then per-task groups in task order.
    pub groups: Vec<ExpertGroup>,
    /// Empty for shared-bottom; one for MoE; one per task for MMoE; one per task plus
    /// an optional shared gate for CGC.
    pub gates: Vec<Gate>,
}

/// What [`plan_layer`] cannot plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanError {
    /// A CGC level's shared experts need a shared slot, and the input has none.
    NoSharedSlot,
}

/// One expert group run: the input slots it runs on. Its instances (one per expert
/// and slot, slot-major) occupy `first .. first + slots.len() * count` of the layer's
/// instance axis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRun {
    pub group: usize,
    /// Indices into the input stream's slots.
    pub slots: Vec<usize>,
    pub first: usize,
}

/// One gate application: gate `gate` reads input slot `input` and mixes `instances`
/// (indices into the instance axis, in the order of the gate's logits) into `output`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    pub gate: usize,
    pub input: usize,
    pub instances: Vec<usize>,
    pub output: Slot,
}

/// How a layer maps its input stream to its output stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerPlan {
    pub inputs: Vec<Slot>,
    pub runs: Vec<GroupRun>,
    /// Length of the instance axis: every group's experts on every slot it runs on.
    pub instances: usize,
    /// Gate applications, in output-slot order; empty for an ungated layer, whose
    /// instances (one per slot) are its output slots.
    pub mixes: Vec<Mix>,
    /// The output slots, in run-time order.
    pub outputs: Vec<Slot>,
}

impl LayerPlan {
    pub fn output_stream(&self, width: usize) -> Stream {
        Stream::from_slots(&self.outputs, width)
    }

    /// The columns of the layer's gate logits on every input slot, `[B, S * sum E_g]`
    /// (slot-major, the gates side by side in each slot), that the mixes read, in mix
    /// order: mix m reads gate g's logits on its input slot.
    pub fn gate_columns(&self, gates: &[Gate]) -> Vec<usize> {
        // Gate g's logit columns start at the sum of the earlier gates' widths.
        let offsets: Vec<usize> =
            gates.iter().scan(0, |acc, g| Some(std::mem::replace(acc, *acc + g.experts))).collect();
        let total: usize = gates.iter().map(|g| g.experts).sum();
        self.mixes
            .iter()
            .flat_map(|m| (0..m.instances.len()).map(|j| m.input * total + offsets[m.gate] + j).collect::<Vec<_>>())
            .collect()
    }
}

/// The rule of the module docs, for a layer of `kind` with these groups and gates.
pub fn plan_layer(
    kind: LayerKind,
    input: Stream,
    groups: &[ExpertGroup],
    gates: &[Gate],
    n_tasks: usize,
) -> Result<LayerPlan, PlanError> {
    let inputs = input.slots(n_tasks);
    let shared_slot = input.slot_index(Slot::Shared, n_tasks);
    let task_slots: Vec<usize> = (0..inputs.len()).filter(|&i| matches!(inputs[i], Slot::Task(_))).collect();
    // Which input slots each group runs on.
    let slotwise = kind.is_slotwise() && !task_slots.is_empty();
    let mut runs = Vec::with_capacity(groups.len());
    let mut first = 0;
    for (gi, g) in groups.iter().enumerate() {
        let slots = if slotwise {
            task_slots.clone()
        } else {
            let own = match g.owner {
                ExpertOwner::Task(t) => input.slot_index(Slot::Task(t), n_tasks),
                ExpertOwner::Shared => None,
            };
            vec![own.or(shared_slot).ok_or(PlanError::NoSharedSlot)?]
        };
        runs.push(GroupRun { group: gi, first, slots });
        first += runs[gi].slots.len() * g.count;
    }
    // The instances of `group` on input slot `slot`.
    let instances_on = |group: usize, slot: usize| -> Vec<usize> {
        let r = &runs[group];
        let k = r.slots.iter().position(|&s| s == slot).unwrap_or(0);
        let count = groups[group].count;
        (r.first + k * count..r.first + (k + 1) * count).collect()
    };
    let mix = |gate: usize, input: usize, output: Slot| Mix {
        gate,
        input,
        instances: gates[gate]
            .groups
            .iter()
            .flat_map(|&g| instances_on(g, if slotwise { input } else { runs[g].slots[0] }))
            .collect(),
        output,
    };
    let mut mixes = Vec::new();
    let outputs: Vec<Slot>;
    if slotwise {
        // Every task slot alike; a task's own gate (MMoE) or the one gate (MoE) on it.
        for &s in &task_slots {
            let slot = inputs[s];
            let gate =
                gates.iter().position(|g| matches!((g.owner, slot), (GateOwner::Task(a), Slot::Task(b)) if a == b));
            match (gate, gates.is_empty()) {
                (_, true) => {}
                (Some(g), false) => mixes.push(mix(g, s, slot)),
                (None, false) => mixes.push(mix(0, s, slot)),
            }
        }
        outputs = task_slots.iter().map(|&s| inputs[s]).collect();
    } else {
        for (gi, g) in gates.iter().enumerate() {
            let (input, output) = match g.owner {
                GateOwner::Task(t) => (input.slot_index(Slot::Task(t), n_tasks).or(shared_slot), Slot::Task(t)),
                GateOwner::AllTasks | GateOwner::Shared => (shared_slot, Slot::Shared),
            };
            mixes.push(mix(gi, input.ok_or(PlanError::NoSharedSlot)?, output));
        }
        if gates.is_empty() {
            outputs = vec![Slot::Shared];
        } else {
            // Task slots first, then the shared one: the stream's run-time order.
            mixes.sort_by_key(|m| match m.output {
                Slot::Task(t) => t.0,
                Slot::Shared => usize::MAX,
            });
            outputs = mixes.iter().map(|m| m.output).collect();
        }
    }
    Ok(LayerPlan { inputs, runs, instances: first, mixes, outputs })
}

impl Layer {
    /// This layer's plan (see [`plan_layer`]). Lowering checked that it exists.
    pub fn plan(&self, n_tasks: usize) -> LayerPlan {
        plan_layer(self.kind, self.input, &self.groups, &self.gates, n_tasks).unwrap_or(LayerPlan {
            inputs: Vec::new(),
            runs: Vec::new(),
            instances: 0,
            mixes: Vec::new(),
            outputs: Vec::new(),
        })
    }

    /// Width of the layer's output slots.
    pub fn d_out(&self) -> usize {
        self.groups.first().map_or(0, ExpertGroup::d_out)
    }

    /// Forward FLOPs per sample: every group on every slot it runs on, gate matmuls,
    /// mixtures.
    pub fn flops(&self, n_tasks: usize) -> usize {
        let plan = self.plan(n_tasks);
        let experts: usize = plan.runs.iter().map(|r| r.slots.len() * self.groups[r.group].flops_per_slot()).sum();
        let mixes: usize = plan
            .mixes
            .iter()
            .map(|m| 2 * self.gates[m.gate].d_in * m.instances.len() + 2 * m.instances.len() * self.d_out())
            .sum();
        experts + mixes
    }

    pub fn params(&self) -> usize {
        let noise = if self.gating.noise { self.gates.iter().map(|g| g.d_in * g.experts).sum() } else { 0 };
        self.groups.iter().map(ExpertGroup::params).sum::<usize>()
            + self.gates.iter().map(Gate::params).sum::<usize>()
            + noise
    }
}
