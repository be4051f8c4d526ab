//! The primitive ops: what each reads, the shape it writes, and which operands its
//! vector-Jacobian product reaches. Backends implement each op's forward and backward
//! once; nothing here knows a model kind.
//!
//! | op              | operands                                     | result                      |
//! |-----------------|----------------------------------------------|-----------------------------|
//! | `gather`        | table `[R, d]`, ids `u32[B]` / `u32[B, L]`   | `[B, d]` / `[B, L, d]`      |
//! | `pool`          | rows `[B, L, d]`, weights `[B, L]`           | `[B, d]`                    |
//! | `slice`         | x `[B, .., n]`                               | `[B, .., len]`              |
//! | `concat`        | xs `[B, a_i, ..]` (same trailing axes)       | `[B, sum a_i, ..]`          |
//! | `take`          | x `[B, a, ..]`                               | `[B, len(indices), ..]`     |
//! | `reshape`       | x                                            | the same elements per row   |
//! | `expand`        | x `[B, .., d]`                               | `[B, .., count, d]`: each row repeated |
//! | `add`, `mul`    | a, b of one shape                            | that shape                  |
//! | `scale`         | x                                            | `x * factor`                |
//! | `add_scalar`    | x                                            | `x + value`                 |
//! | unary           | x                                            | `f(x)`                      |
//! | `linear`        | x `[B, .., i]`, w `[i, o]`, b `[o]` (or none) | `[B, .., o]`               |
//! | `expert_linear` | x `[B, .., i]`, w `[E, i, o]`, b `[E, o]`    | `[B, .., E, o]`: every expert on every row |
//! | `grouped_linear`| x `[B, .., E, i]`, w `[E, i, o]`, b `[E, o]` | `[B, .., E, o]`: expert e on its own rows |
//! | `dropout_mask`  | (none)                                       | `[B, ..]` of 0 and 1/(1-rate), drawn per step |
//! | `normal`        | (none)                                       | `[B, ..]` of N(0, 1), drawn per step |
//! | `top_k_mask`    | x `[B, C]`                                   | x, all but each segment's k largest pushed to -1e9 |
//! | `softmax`       | x `[B, C]`                                   | a softmax per segment       |
//! | `mix`           | weights `[B, C]`, experts `[B, N, u]`        | `[B, M, u]`: mix m weighs `sets[m]` |
//! | `loss`          | raw, label `[B]`, mask `[B]`                 | `[]`: the masked mean       |
//! | `balance`       | gate weights `[B, C]`                        | `[]`: the importance term of the load-balancing loss |
//! | `load_balance`  | clean, noisy logits, noise scale `[B, C]`    | `[]`: its load term (noisy top-k) |

use std::fmt;

use super::Shape;

/// An elementwise function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unary {
    Relu,
    Tanh,
    Sigmoid,
    /// GELU, the tanh approximation (candle's).
    Gelu,
    /// `ln(1 + e^x)`.
    Softplus,
    /// `ln(sigmoid(x)) = -softplus(-x)`.
    LogSigmoid,
    Exp,
}

impl Unary {
    pub fn name(&self) -> &'static str {
        match self {
            Unary::Relu => "relu",
            Unary::Tanh => "tanh",
            Unary::Sigmoid => "sigmoid",
            Unary::Gelu => "gelu",
            Unary::Softplus => "softplus",
            Unary::LogSigmoid => "log_sigmoid",
            Unary::Exp => "exp",
        }
    }
}

/// What `reduce` sums away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduction {
    /// The sum over the last axis: `[B, .., n]` -> `[B, ..]`.
    SumLast,
    /// The mean over the batch of a value per row: `[B]` -> `[]`.
    MeanBatch,
}

/// How `pool` combines a bag's rows (a mean arrives as weights that sum to 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// `sum_l w_l e_l`.
    WeightedSum,
    /// The elementwise maximum over the slots of weight > 0; zeros for an empty row.
    Max,
}

/// A per-row loss, averaged by `loss` over the rows whose mask is 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossKind {
    /// Sigmoid cross-entropy on a logit.
    BceLogits,
    /// Cross-entropy of a probability given as its log (`1 - p` clamped at 1e-7).
    BceLogProb,
    /// Softmax cross-entropy on logits `[B, K]`; the label is the class index.
    SoftmaxCe,
    /// `(x - y)^2`.
    Squared,
}

impl LossKind {
    /// The loss that trains an output of link `link` (see [`crate::ir::Link`]).
    pub fn of(link: crate::ir::Link) -> LossKind {
        use crate::ir::Link;
        match link {
            Link::Sigmoid => LossKind::BceLogits,
            Link::LogProb => LossKind::BceLogProb,
            Link::Softmax => LossKind::SoftmaxCe,
            Link::Identity => LossKind::Squared,
        }
    }

    /// The link whose output this loss trains ([`LossKind::of`] backwards).
    pub fn link(&self) -> crate::ir::Link {
        use crate::ir::Link;
        match self {
            LossKind::BceLogits => Link::Sigmoid,
            LossKind::BceLogProb => Link::LogProb,
            LossKind::SoftmaxCe => Link::Softmax,
            LossKind::Squared => Link::Identity,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            LossKind::BceLogits => "bce_logits",
            LossKind::BceLogProb => "bce_log_prob",
            LossKind::SoftmaxCe => "softmax_ce",
            LossKind::Squared => "squared",
        }
    }
}

/// A primitive op and its attributes (its operands are the node's `args`).
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Gather,
    Pool {
        mode: PoolMode,
    },
    /// Columns `at .. at + len` of the last axis.
    Slice {
        at: usize,
        len: usize,
    },
    /// Along the first axis after the batch.
    Concat,
    /// Entries `indices` of the first axis after the batch.
    Take {
        indices: Vec<usize>,
    },
    /// `count` copies of the last axis side by side on a new axis before it.
    Expand {
        count: usize,
    },
    /// To these axes after the batch (the same count of elements per row).
    Reshape {
        dims: Vec<usize>,
    },
    Add,
    Mul,
    Scale {
        factor: f32,
    },
    AddScalar {
        value: f32,
    },
    Unary(Unary),
    Reduce {
        over: Reduction,
    },
    /// With two operands, no bias.
    Linear,
    ExpertLinear,
    GroupedLinear,
    /// A step's dropout mask of this shape after the batch, its values drawn from the
    /// step's stream in the axis order `draw` (axis 0 the batch; empty: the layout's
    /// own order). Deeper expert depths draw expert-major, as the graph always has, so
    /// a seed drops the same units it did before the program existed.
    DropoutMask {
        rate: f32,
        dims: Vec<usize>,
        draw: Vec<usize>,
    },
    /// A step's standard normal draws of this shape after the batch.
    Normal {
        dims: Vec<usize>,
    },
    TopKMask {
        segments: Vec<usize>,
        k: usize,
    },
    Softmax {
        segments: Vec<usize>,
    },
    /// Mix m is `sum_j weights[:, c_m + j] * experts[:, sets[m][j], :]`, where `c_m`
    /// is the sum of the earlier sets' lengths.
    Mix {
        sets: Vec<Vec<usize>>,
    },
    Loss {
        kind: LossKind,
    },
    /// `weight * sum_m cv2(importance_m)`, where `importance_m` sums segment m's gate
    /// weights over the batch and `cv2` is the squared coefficient of variation over
    /// its experts (Shazeer et al. 2017, eq. 6).
    Balance {
        segments: Vec<usize>,
        weight: f32,
    },
    /// `weight * sum_m cv2(load_m)`: `load_m` sums over the batch each expert's chance to
    /// stay in its segment's top k when only its own noise is redrawn, from the clean
    /// logits, the noisy ones (which set the threshold, no gradient) and the noise scale
    /// (Shazeer et al. 2017, eq. 8-10).
    LoadBalance {
        segments: Vec<usize>,
        k: usize,
        weight: f32,
    },
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Gather => "gather",
            Op::Pool { .. } => "pool",
            Op::Slice { .. } => "slice",
            Op::Concat => "concat",
            Op::Take { .. } => "take",
            Op::Reshape { .. } => "reshape",
            Op::Expand { .. } => "expand",
            Op::Add => "add",
            Op::Mul => "mul",
            Op::Scale { .. } => "scale",
            Op::Reduce { .. } => "reduce",
            Op::AddScalar { .. } => "add_scalar",
            Op::Unary(u) => u.name(),
            Op::Linear => "linear",
            Op::ExpertLinear => "expert_linear",
            Op::GroupedLinear => "grouped_linear",
            Op::DropoutMask { .. } => "dropout_mask",
            Op::Normal { .. } => "normal",
            Op::TopKMask { .. } => "top_k_mask",
            Op::Softmax { .. } => "softmax",
            Op::Mix { .. } => "mix",
            Op::Loss { .. } => "loss",
            Op::Balance { .. } => "balance",
            Op::LoadBalance { .. } => "load_balance",
        }
    }

    /// For each operand, whether the op's vector-Jacobian product reaches it. Ids,
    /// labels, masks, random draws and the thresholds of `top_k_mask` (no gradient
    /// flows through which logits are kept) have none; a gathered table's gradient is
    /// the gathered rows' (see [`super::ParamGrad`]).
    pub fn grad_inputs(&self, n_args: usize) -> Vec<bool> {
        match self {
            Op::Gather => vec![true, false],
            Op::Loss { .. } => vec![true, false, false],
            Op::LoadBalance { .. } => vec![true, false, true],
            Op::DropoutMask { .. } | Op::Normal { .. } => Vec::new(),
            _ => vec![true; n_args],
        }
    }

    /// Whether the op draws from the step's random stream (training only).
    pub fn is_random(&self) -> bool {
        matches!(self, Op::DropoutMask { .. } | Op::Normal { .. })
    }

    /// The result's shape from the operands', or what does not fit.
    pub fn infer_shape(&self, args: &[&Shape]) -> Result<Shape, String> {
        let arity = match self {
            Op::DropoutMask { .. } | Op::Normal { .. } => 0..=0,
            Op::Concat => 1..=usize::MAX,
            Op::Linear => 2..=3,
            Op::Gather | Op::Pool { .. } | Op::Add | Op::Mul | Op::Mix { .. } => 2..=2,
            Op::ExpertLinear | Op::GroupedLinear | Op::Loss { .. } | Op::LoadBalance { .. } => 3..=3,
            _ => 1..=1,
        };
        if !arity.contains(&args.len()) {
            return Err(format!("takes {arity:?} operands, got {}", args.len()));
        }
        shapes::infer(self, args)
    }
}

/// The 0/1 matrix `[sum |sets|, M * N]` that scatters a `mix`'s weights `[B, C]` to a
/// dense `[B, M, N]` (every backend that runs `mix` as a batched matmul builds it here),
/// or None when every set is all N instances in order (the weights are then `[B, M, N]`
/// as they are).
pub fn mix_scatter(sets: &[Vec<usize>], n: usize) -> Option<(usize, usize, Vec<f32>)> {
    if sets.iter().all(|s| s.iter().copied().eq(0..n)) {
        return None;
    }
    let m = sets.len();
    let rows: usize = sets.iter().map(Vec::len).sum();
    let mut q = vec![0f32; rows * m * n];
    let mut row = 0;
    for (mi, set) in sets.iter().enumerate() {
        for &inst in set {
            q[row * m * n + mi * n + inst] = 1.0;
            row += 1;
        }
    }
    Some((rows, m * n, q))
}

/// The shape rules, one arm per op.
mod shapes {
    use super::{Op, Shape};

    fn batched(s: &Shape, what: &str) -> Result<(), String> {
        if s.batch {
            Ok(())
        } else {
            Err(format!("{what} must have a batch axis, got {s}"))
        }
    }

    fn same(a: &Shape, b: &Shape) -> Result<Shape, String> {
        if a == b {
            Ok(a.clone())
        } else {
            Err(format!("operands differ: {a} and {b}"))
        }
    }

    fn segments_fit(x: &Shape, segments: &[usize]) -> Result<Shape, String> {
        batched(x, "x")?;
        let total: usize = segments.iter().sum();
        if x.dims.len() != 1 || x.dims[0] != total {
            return Err(format!("x is {x}, the segments cover {total} columns"));
        }
        Ok(x.clone())
    }

    /// The weight `[E, i, o]` and bias `[E, o]` of the expert ops.
    fn experts(w: &Shape, b: &Shape) -> Result<(usize, usize, usize), String> {
        match (w.batch, w.dims.as_slice(), b.batch, b.dims.as_slice()) {
            (false, &[e, i, o], false, &[e2, o2]) if e == e2 && o == o2 => Ok((e, i, o)),
            _ => Err(format!("weight {w} and bias {b} are not [E, i, o] and [E, o]")),
        }
    }

    pub(super) fn infer(op: &Op, a: &[&Shape]) -> Result<Shape, String> {
        match op {
            Op::Gather
            | Op::Pool { .. }
            | Op::Slice { .. }
            | Op::Concat
            | Op::Take { .. }
            | Op::Expand { .. }
            | Op::Reshape { .. } => layout(op, a),
            Op::Add
            | Op::Mul
            | Op::Scale { .. }
            | Op::AddScalar { .. }
            | Op::Unary(_)
            | Op::Reduce { .. }
            | Op::Linear
            | Op::ExpertLinear
            | Op::GroupedLinear => arithmetic(op, a),
            _ => gating(op, a),
        }
    }

    /// A layout op: lookups, pooling, cuts, joins, copies, reshapes.
    fn layout(op: &Op, a: &[&Shape]) -> Result<Shape, String> {
        match op {
            Op::Gather => {
                let [table, ids] = [a[0], a[1]];
                match (table.batch, table.dims.as_slice(), ids.batch) {
                    (false, &[_, d], true) => Ok(Shape::batched(&[ids.dims.as_slice(), &[d]].concat())),
                    _ => Err(format!("table {table} and ids {ids} are not [R, d] and [B, ..]")),
                }
            }
            Op::Pool { .. } => {
                let [rows, w] = [a[0], a[1]];
                match (rows.dims.as_slice(), w.dims.as_slice()) {
                    (&[l, d], &[l2]) if l == l2 && rows.batch && w.batch => Ok(Shape::batched(&[d])),
                    _ => Err(format!("rows {rows} and weights {w} are not [B, L, d] and [B, L]")),
                }
            }
            Op::Slice { at, len } => {
                let x = a[0];
                if x.dims.is_empty() || at + len > x.last() {
                    return Err(format!("columns {at}..{} of {x}", at + len));
                }
                let mut dims = x.dims.clone();
                *dims.last_mut().unwrap_or(&mut 0) = *len;
                Ok(Shape { batch: x.batch, dims })
            }
            Op::Concat => {
                let first = a[0];
                batched(first, "every operand")?;
                let mut total = 0;
                for s in a {
                    if !s.batch || s.dims.is_empty() || s.dims[1..] != first.dims[1..] {
                        return Err(format!("{s} does not concatenate with {first}"));
                    }
                    total += s.dims[0];
                }
                let mut dims = first.dims.clone();
                dims[0] = total;
                Ok(Shape::batched(&dims))
            }
            Op::Take { indices } => {
                let x = a[0];
                batched(x, "x")?;
                match x.dims.first() {
                    Some(&n) if indices.iter().all(|&i| i < n) && !indices.is_empty() => {
                        let mut dims = x.dims.clone();
                        dims[0] = indices.len();
                        Ok(Shape::batched(&dims))
                    }
                    _ => Err(format!("indices {indices:?} of {x}")),
                }
            }
            Op::Expand { count } => {
                let x = a[0];
                batched(x, "x")?;
                let d = *x.dims.last().ok_or_else(|| format!("x {x} has no axis to repeat"))?;
                let lead = &x.dims[..x.dims.len() - 1];
                Ok(Shape::batched(&[lead, &[*count, d]].concat()))
            }
            Op::Reshape { dims } => {
                let x = a[0];
                let to = Shape { batch: x.batch, dims: dims.clone() };
                if to.row_elems() == x.row_elems() {
                    Ok(to)
                } else {
                    Err(format!("{x} cannot become {to}"))
                }
            }
            _ => Err(format!("`{}` is not a layout op", op.name())),
        }
    }

    /// An arithmetic op: elementwise and the matmuls.
    fn arithmetic(op: &Op, a: &[&Shape]) -> Result<Shape, String> {
        match op {
            Op::Add | Op::Mul => same(a[0], a[1]),
            Op::Scale { .. } | Op::AddScalar { .. } | Op::Unary(_) => Ok(a[0].clone()),
            Op::Reduce { over: super::Reduction::SumLast } => match a[0].dims.split_last() {
                Some((_, rest)) => Ok(Shape { batch: a[0].batch, dims: rest.to_vec() }),
                None => Err(format!("{} has no last axis to sum", a[0])),
            },
            Op::Reduce { over: super::Reduction::MeanBatch } => match (a[0].batch, a[0].dims.is_empty()) {
                (true, true) => Ok(Shape::fixed(&[])),
                _ => Err(format!("{} is not one value per row", a[0])),
            },
            Op::Linear => {
                let [x, w] = [a[0], a[1]];
                let (i, o) = match (w.batch, w.dims.as_slice()) {
                    (false, &[i, o]) => (i, o),
                    _ => return Err(format!("weight {w} is not [i, o]")),
                };
                if let Some(b) = a.get(2) {
                    if b.batch || b.dims != [o] {
                        return Err(format!("bias {b} is not [{o}]"));
                    }
                }
                batched(x, "x")?;
                if x.last() != i || x.dims.is_empty() {
                    return Err(format!("x {x} does not end in {i}"));
                }
                let mut dims = x.dims.clone();
                *dims.last_mut().unwrap_or(&mut 0) = o;
                Ok(Shape::batched(&dims))
            }
            Op::ExpertLinear => {
                let (e, i, o) = experts(a[1], a[2])?;
                let x = a[0];
                batched(x, "x")?;
                if x.dims.last() != Some(&i) {
                    return Err(format!("x {x} does not end in {i}"));
                }
                let lead = &x.dims[..x.dims.len() - 1];
                Ok(Shape::batched(&[lead, &[e, o]].concat()))
            }
            Op::GroupedLinear => {
                let (e, i, o) = experts(a[1], a[2])?;
                let x = a[0];
                batched(x, "x")?;
                let n = x.dims.len();
                if n < 2 || x.dims[n - 2..] != [e, i] {
                    return Err(format!("x {x} does not end in [{e}, {i}]"));
                }
                let mut dims = x.dims.clone();
                dims[n - 1] = o;
                Ok(Shape::batched(&dims))
            }
            _ => Err(format!("`{}` is not an arithmetic op", op.name())),
        }
    }

    /// A gating, random or loss op.
    fn gating(op: &Op, a: &[&Shape]) -> Result<Shape, String> {
        match op {
            Op::DropoutMask { dims, .. } | Op::Normal { dims } => Ok(Shape::batched(dims)),
            Op::TopKMask { segments, k } => {
                if segments.iter().any(|s| s < k) || *k == 0 {
                    return Err(format!("top {k} of segments {segments:?}"));
                }
                segments_fit(a[0], segments)
            }
            Op::Softmax { segments } => segments_fit(a[0], segments),
            Op::Mix { sets } => {
                let [w, x] = [a[0], a[1]];
                let total: usize = sets.iter().map(Vec::len).sum();
                let (n, u) = match (x.batch, x.dims.as_slice()) {
                    (true, &[n, u]) => (n, u),
                    _ => return Err(format!("experts {x} are not [B, N, u]")),
                };
                if !w.batch || w.dims != [total] || sets.iter().flatten().any(|&i| i >= n) {
                    return Err(format!("weights {w} do not fit the sets over {n} instances"));
                }
                Ok(Shape::batched(&[sets.len(), u]))
            }
            Op::Balance { segments, .. } => {
                segments_fit(a[0], segments)?;
                Ok(Shape::fixed(&[]))
            }
            Op::LoadBalance { segments, k, .. } => {
                if a[1] != a[0] || a[2] != a[0] || segments.iter().any(|s| s <= k) {
                    return Err(format!("clean {}, noisy {}, scale {} and top {k} do not fit", a[0], a[1], a[2]));
                }
                segments_fit(a[0], segments)?;
                Ok(Shape::fixed(&[]))
            }
            Op::Loss { kind } => {
                let [x, y, m] = [a[0], a[1], a[2]];
                let rows_ok = y.batch && y.dims.is_empty() && m == y && x.batch;
                let x_ok = match kind {
                    super::LossKind::SoftmaxCe => x.dims.len() == 1,
                    _ => x.dims.is_empty(),
                };
                if rows_ok && x_ok {
                    Ok(Shape::fixed(&[]))
                } else {
                    Err(format!("raw {x}, label {y} and mask {m} do not fit"))
                }
            }
            _ => Err(format!("`{}` is not a gating, random or loss op", op.name())),
        }
    }
}

impl fmt::Display for Shape {
    /// `[B,8,16]`, `[8,100,16]`, `[B]`, `[]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::with_capacity(self.dims.len() + 1);
        if self.batch {
            parts.push("B".into());
        }
        parts.extend(self.dims.iter().map(|d| d.to_string()));
        write!(f, "[{}]", parts.join(","))
    }
}
