//! The op program as ONNX nodes, op by op: the exporter is one more interpreter of the
//! program, so it covers every model the lowering covers and knows no model kind.
//!
//! | op              | ONNX                                                          |
//! |-----------------|---------------------------------------------------------------|
//! | `gather`        | `Gather` (axis 0) of the table initializer                    |
//! | `pool`          | weighted sum: `MatMul` `[B,1,L] x [B,L,d]`; max: `ReduceMax` of the rows pushed down where absent |
//! | `slice`, `take`, `concat`, `reshape` | `Slice`, `Gather` (axis 1), `Concat`, `Reshape` |
//! | `expand`        | `Reshape` to `[B, .., 1, d]`, `Expand`                         |
//! | `reduce` (sum over the last axis) | `ReduceSum` over axis -1                    |
//! | `linear`        | `MatMul` + `Add`                                              |
//! | `expert_linear` | one `MatMul` over the experts' weights side by side `[i, E*o]`, `Add`, `Reshape` |
//! | `grouped_linear`| a batched `MatMul` `[.., E, 1, i] x [E, i, o]`, `Reshape`, `Add` |
//! | `top_k_mask`    | `TopK` threshold, `GreaterOrEqual`, the rest pushed 1e9 down  |
//! | `softmax`       | `Softmax` per segment (one, reshaped, when all are equal)     |
//! | `mix`           | the weights scattered to `[B, M, N]` (a constant `MatMul`), batched `MatMul` |
//!
//! The random ops and losses exist only in training programs, which are not exported.

use std::collections::HashMap;

use super::graph::{int_attr, ints_attr, Graph};
use super::proto::{data_type, NodeProto};
use super::OnnxError;
use crate::program::{mix_scatter, BufId, BufKind, Input, Node, Op, PoolMode, Program, Reduction, Shape};

/// Emits a program's nodes into a graph.
pub(super) struct Emitter<'a> {
    pub g: Graph,
    p: &'a Program,
    /// Each buffer's ONNX value name, once emitted.
    names: Vec<Option<String>>,
    /// A parameter's values by its parameter-table name.
    values: &'a dyn Fn(&str) -> Result<Vec<f32>, OnnxError>,
    /// Initializers made, by parameter name and layout.
    inits: HashMap<String, String>,
}

/// `[-1, dims..]`: a reshape target keeping the batch axis.
fn target(s: &Shape) -> Vec<i64> {
    std::iter::once(-1).chain(s.dims.iter().map(|&d| d as i64)).collect()
}

impl<'a> Emitter<'a> {
    pub fn new(p: &'a Program, values: &'a dyn Fn(&str) -> Result<Vec<f32>, OnnxError>) -> Emitter<'a> {
        Emitter { g: Graph::default(), p, names: vec![None; p.bufs.len()], values, inits: HashMap::new() }
    }

    /// Binds every input of the program to a cut of the graph's inputs: `categorical`
    /// (int64, a column per categorical, `max_len` per bag), `bag_weights` (a column per
    /// bag slot) and `dense`. Returns the widths of those three.
    pub fn bind_inputs(&mut self) -> (usize, usize, usize) {
        let mut ids: Vec<(usize, BufId)> = Vec::new();
        let mut bags: Vec<(usize, BufId)> = Vec::new();
        let mut dense = 0;
        for (id, input, b) in self.p.inputs() {
            match input {
                Input::Ids(i) => ids.push((i, id)),
                Input::BagWeights(i) => bags.push((i, id)),
                Input::Dense => {
                    dense = b.shape.last();
                    self.names[id.0] = Some("dense".into());
                }
                Input::Label(_) | Input::Mask(_) => {}
            }
        }
        ids.sort();
        bags.sort();
        let (mut at, mut slot) = (0, 0);
        for (i, id) in ids {
            let shape = &self.p.buf(id).shape;
            let name = match shape.dims.first() {
                None => self.g.gather_const("categorical", 1, &[at as i64], true), // [B]
                Some(&len) => {
                    let cut = self.g.slice("categorical", 1, at, at + len); // [B, len]
                    if let Some(&(_, w)) = bags.iter().find(|(j, _)| *j == i) {
                        self.names[w.0] = Some(self.g.slice("bag_weights", 1, slot, slot + len));
                        slot += len;
                    }
                    cut
                }
            };
            at += shape.row_elems();
            self.names[id.0] = Some(name);
        }
        (at, slot, dense)
    }

    /// The ONNX name of a buffer: a parameter's initializer (made once), or the value
    /// an earlier node wrote.
    pub fn name(&mut self, id: BufId) -> Result<String, OnnxError> {
        if let Some(n) = &self.names[id.0] {
            return Ok(n.clone());
        }
        let b = self.p.buf(id);
        if b.kind != BufKind::Param {
            return Err(OnnxError::Unsupported(format!("{} is read before it is computed", self.p.label(id))));
        }
        let v = (self.values)(&b.name)?;
        let n = self.g.f32s(&b.name.replace('.', "_"), &b.shape.dims, &v);
        self.names[id.0] = Some(n.clone());
        Ok(n)
    }

    /// A depth-0 expert weight `[E, i, o]` side by side as `[i, E*o]` (made once).
    fn side_by_side(&mut self, w: BufId) -> Result<String, OnnxError> {
        let b = self.p.buf(w);
        let key = format!("{}#side_by_side", b.name);
        if let Some(n) = self.inits.get(&key) {
            return Ok(n.clone());
        }
        let (e, i, o) = (b.shape.dims[0], b.shape.dims[1], b.shape.dims[2]);
        let v = (self.values)(&b.name)?;
        let mut cat = vec![0f32; i * e * o];
        for k in 0..e {
            for r in 0..i {
                cat[r * e * o + k * o..][..o].copy_from_slice(&v[(k * i + r) * o..][..o]);
            }
        }
        let n = self.g.f32s(&format!("{}_side_by_side", b.name.replace('.', "_")), &[i, e * o], &cat);
        self.inits.insert(key, n.clone());
        Ok(n)
    }

    /// Emits every node of the program.
    pub fn emit_all(&mut self) -> Result<(), OnnxError> {
        for n in &self.p.nodes {
            let out = self.emit(n)?;
            self.names[n.out.0] = Some(out);
        }
        Ok(())
    }

    fn emit(&mut self, n: &Node) -> Result<String, OnnxError> {
        let a: Vec<String> = n.args.iter().map(|&x| self.name(x)).collect::<Result<_, _>>()?;
        let out_shape = self.p.buf(n.out).shape.clone();
        let arg_shape = |i: usize| self.p.buf(n.args[i]).shape.clone();
        let g = &mut self.g;
        Ok(match &n.op {
            Op::Gather => g.node("Gather", &[&a[0], &a[1]], vec![int_attr("axis", 0)]),
            Op::Pool { mode } => pool(g, &a[0], &a[1], *mode, &arg_shape(0)),
            Op::Slice { at, len } => g.slice(&a[0], -1, *at, at + len),
            Op::Concat => {
                let refs: Vec<&str> = a.iter().map(String::as_str).collect();
                g.node("Concat", &refs, vec![int_attr("axis", 1)])
            }
            Op::Take { indices } => {
                let idx: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
                g.gather_const(&a[0], 1, &idx, false)
            }
            Op::Reshape { .. } => g.reshape(&a[0], &target(&out_shape)),
            Op::Expand { count } => {
                // [B, .., 1, d] broadcast to [1, .., count, d].
                let xs = arg_shape(0);
                let mut one = target(&xs);
                one.insert(one.len() - 1, 1);
                let x = g.reshape(&a[0], &one);
                let mut to: Vec<i64> = one.iter().map(|_| 1).collect();
                let n = to.len();
                to[n - 2] = *count as i64;
                to[n - 1] = xs.last() as i64;
                let shape = g.i64s("expand", &[n], &to);
                g.node("Expand", &[&x, &shape], vec![])
            }
            Op::Add => g.node("Add", &[&a[0], &a[1]], vec![]),
            Op::Mul => g.node("Mul", &[&a[0], &a[1]], vec![]),
            Op::Scale { factor } => {
                let c = g.scalar(*factor);
                g.node("Mul", &[&a[0], &c], vec![])
            }
            Op::AddScalar { value } => {
                let c = g.scalar(*value);
                g.node("Add", &[&a[0], &c], vec![])
            }
            Op::Unary(u) => g.unary(&a[0], *u),
            Op::Reduce { over: Reduction::SumLast } => {
                let axes = g.i64s("axes", &[1], &[-1]);
                g.node("ReduceSum", &[&a[0], &axes], vec![int_attr("keepdims", 0)])
            }
            Op::Linear => match a.get(2) {
                Some(b) => g.matmul_add(&a[0], &a[1], b),
                None => g.node("MatMul", &[&a[0], &a[1]], vec![]),
            },
            Op::ExpertLinear => {
                let w = self.side_by_side(n.args[1])?;
                let (e, o) = (arg_shape(1).dims[0], arg_shape(1).dims[2]);
                let g = &mut self.g;
                let b = g.reshape(&a[2], &[(e * o) as i64]);
                let y = g.matmul_add(&a[0], &w, &b); // [B, .., E*o]
                g.reshape(&y, &target(&out_shape))
            }
            Op::GroupedLinear => {
                let xs = arg_shape(0);
                let mut split = target(&xs);
                split.insert(split.len() - 1, 1); // [B, .., E, 1, i]
                let x = g.reshape(&a[0], &split);
                let y = g.node("MatMul", &[&x, &a[1]], vec![]); // [B, .., E, 1, o]
                let y = g.reshape(&y, &target(&out_shape));
                g.node("Add", &[&y, &a[2]], vec![])
            }
            Op::TopKMask { segments, k } => per_segment(g, &a[0], segments, |g, x| top_k(g, x, *k)),
            Op::Softmax { segments } => {
                per_segment(g, &a[0], segments, |g, x| g.node("Softmax", &[x], vec![int_attr("axis", -1)]))
            }
            Op::Mix { sets } => mix(g, &a[0], &a[1], sets, &arg_shape(1)),
            Op::DropoutMask { .. }
            | Op::Normal { .. }
            | Op::Loss { .. }
            | Op::Balance { .. }
            | Op::Reduce { over: Reduction::MeanBatch }
            | Op::LoadBalance { .. } => {
                return Err(OnnxError::Unsupported(format!("`{}` exists only in training programs", n.op.name())))
            }
        })
    }
}

/// A bag's rows `[B, L, d]` pooled by its slot weights `[B, L]` into `[B, d]`.
fn pool(g: &mut Graph, e: &str, w: &str, mode: PoolMode, rows: &Shape) -> String {
    let (len, dim) = (rows.dims[0] as i64, rows.dims[1] as i64);
    match mode {
        PoolMode::WeightedSum => {
            let w = g.reshape(w, &[-1, 1, len]);
            let y = g.node("MatMul", &[&w, e], vec![]); // [B, 1, d]
            g.reshape(&y, &[-1, dim])
        }
        PoolMode::Max => {
            // Absent slots (weight 0) pushed far down; an empty row gives zeros.
            let one = g.scalar(1.0);
            let far = g.scalar(1e9);
            let off = g.node("Sub", &[w, &one], vec![]);
            let off = g.node("Mul", &[&off, &far], vec![]);
            let off = g.reshape(&off, &[-1, len, 1]);
            let pushed = g.node("Add", &[e, &off], vec![]);
            let max = g.node("ReduceMax", &[&pushed], vec![ints_attr("axes", vec![1]), int_attr("keepdims", 0)]);
            let present = g.node("ReduceMax", &[w], vec![ints_attr("axes", vec![1]), int_attr("keepdims", 1)]);
            g.node("Mul", &[&max, &present], vec![])
        }
    }
}

/// `f` on each segment of the columns of `x` `[B, C]`: once over `[B, M, w]` when every
/// segment has width w, else per segment and concatenated.
fn per_segment(g: &mut Graph, x: &str, segments: &[usize], mut f: impl FnMut(&mut Graph, &str) -> String) -> String {
    let total: usize = segments.iter().sum();
    match segments.first() {
        Some(&w) if segments.iter().all(|&s| s == w) => {
            let r = g.reshape(x, &[-1, segments.len() as i64, w as i64]);
            let y = f(g, &r);
            g.reshape(&y, &[-1, total as i64])
        }
        _ => {
            let mut at = 0;
            let parts: Vec<String> = segments
                .iter()
                .map(|&s| {
                    let cut = g.slice(x, 1, at, at + s);
                    at += s;
                    f(g, &cut)
                })
                .collect();
            let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
            g.node("Concat", &refs, vec![int_attr("axis", 1)])
        }
    }
}

/// All but the k largest of the last axis pushed 1e9 down (ties with the k-th kept).
fn top_k(g: &mut Graph, x: &str, k: usize) -> String {
    let kk = g.i64s("k", &[1], &[k as i64]);
    let top = g.fresh("topk");
    let idx = g.fresh("topk_idx");
    g.nodes.push(NodeProto {
        input: vec![x.to_string(), kk],
        output: vec![top.clone(), idx],
        name: top.clone(),
        op_type: "TopK".into(),
        attribute: vec![int_attr("axis", -1), int_attr("largest", 1), int_attr("sorted", 1)],
        domain: String::new(),
    });
    let kth = g.slice(&top, -1, k - 1, k);
    let ge = g.node("GreaterOrEqual", &[x, &kth], vec![]);
    let keep = g.node("Cast", &[&ge], vec![int_attr("to", data_type::FLOAT as i64)]);
    let one = g.scalar(1.0);
    let off = g.node("Sub", &[&keep, &one], vec![]);
    let big = g.scalar(1e9);
    let penalty = g.node("Mul", &[&off, &big], vec![]);
    g.node("Add", &[x, &penalty], vec![])
}

/// `[B, M, u]`: the weights `[B, C]` scattered to `[B, M, N]` by a constant 0/1 matrix
/// (none when every mix weighs all N instances in order), then one batched `MatMul`.
fn mix(g: &mut Graph, w: &str, x: &str, sets: &[Vec<usize>], xs: &Shape) -> String {
    let (m, n) = (sets.len(), xs.dims[0]);
    let dense = match mix_scatter(sets, n) {
        None => g.reshape(w, &[-1, m as i64, n as i64]),
        Some((rows, cols, q)) => {
            let q = g.f32s("scatter", &[rows, cols], &q);
            let d = g.node("MatMul", &[w, &q], vec![]);
            g.reshape(&d, &[-1, m as i64, n as i64])
        }
    };
    g.node("MatMul", &[&dense, x], vec![]) // [B, M, u]
}
