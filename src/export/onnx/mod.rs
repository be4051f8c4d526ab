//! ONNX export: a trained model's forward pass as an ONNX graph (opset 17, standard
//! operators only) that ONNX Runtime, Triton or any ONNX consumer runs.
//!
//! The graph mirrors the candle backend's inference path op for op: embeddings are
//! `Gather`s, each expert group one `MatMul` (first depth over the experts' side by side
//! weights) or a batched `MatMul` (deeper), all gates of a layer one `MatMul`, top-k a
//! `TopK` threshold, each mixture one batched `MatMul`. The layer's plan and
//! [`MixLayout`] (the same ones the backend runs) say which slots and columns go where.
//!
//! Inputs are already encoded, as `multigate encode` writes them:
//!
//! | input         | type / shape            | what                                       |
//! |---------------|-------------------------|--------------------------------------------|
//! | `categorical` | int64 `[B, n_cat]`       | table row per categorical feature, in spec order |
//! | `dense`       | float `[B, dense_width]` | transformed dense values, in spec order    |
//!
//! Outputs: one per task, named after it, in the units `predict` writes: `[B]`
//! probabilities (binary, products), `[B]` values in the label's units (regression, the
//! label transform inverted), `[B, K]` class probabilities (multiclass). The model's
//! metadata (`multigate.encoding`) says how raw values become the inputs: the hash
//! function and seed, buckets, vocabularies, dense transforms and fills.

mod proto;

use prost::Message;

use proto::{attribute_type, data_type, AttributeProto, NodeProto, TensorProto, ValueInfoProto};

use crate::backend::candle::{CandleModel, MixLayout};
use crate::data::dense_columns;
use crate::ir::{
    Activation, Encoding, FeatureKind, Head, LabelTransform, Layer, Model, Stream, TaskId, TaskOutput, Transform,
};

/// The ONNX operator set the graph is written for.
pub const OPSET: i64 = 17;
/// ONNX IR version 8 goes with opset 17.
const IR_VERSION: i64 = 8;

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("reading the weights: {0}")]
    Weights(#[from] candle_core::Error),
    #[error("{0}")]
    Unsupported(String),
}

/// The graph under construction: nodes in topological order and the initializers.
struct Graph {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    counter: usize,
}

fn int_attr(name: &str, i: i64) -> AttributeProto {
    AttributeProto { name: name.into(), i, r#type: attribute_type::INT, ..Default::default() }
}

fn ints_attr(name: &str, ints: Vec<i64>) -> AttributeProto {
    AttributeProto { name: name.into(), ints, r#type: attribute_type::INTS, ..Default::default() }
}

impl Graph {
    fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    /// A constant tensor (an initializer) of `data_type`, row-major little-endian bytes.
    fn constant(&mut self, hint: &str, dims: &[usize], data_type: i32, raw_data: Vec<u8>) -> String {
        let name = self.fresh(hint);
        self.inits.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type,
            name: name.clone(),
            raw_data,
        });
        name
    }

    fn f32s(&mut self, hint: &str, dims: &[usize], values: &[f32]) -> String {
        self.constant(hint, dims, data_type::FLOAT, values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    fn i64s(&mut self, hint: &str, dims: &[usize], values: &[i64]) -> String {
        self.constant(hint, dims, data_type::INT64, values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    fn scalar(&mut self, v: f32) -> String {
        self.f32s("c", &[], &[v])
    }

    fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = self.fresh(&op.to_lowercase());
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: out.clone(),
            op_type: op.into(),
            attribute: attrs,
            domain: String::new(),
        });
        out
    }

    fn reshape(&mut self, x: &str, shape: &[i64]) -> String {
        let s = self.i64s("shape", &[shape.len()], shape);
        self.node("Reshape", &[x, &s], vec![])
    }

    fn matmul_add(&mut self, x: &str, w: &str, b: &str) -> String {
        let y = self.node("MatMul", &[x, w], vec![]);
        self.node("Add", &[&y, b], vec![])
    }

    /// `x[..., start..end]` on `axis`.
    fn slice(&mut self, x: &str, axis: i64, start: usize, end: usize) -> String {
        let s = self.i64s("starts", &[1], &[start as i64]);
        let e = self.i64s("ends", &[1], &[end as i64]);
        let a = self.i64s("axes", &[1], &[axis]);
        self.node("Slice", &[x, &s, &e, &a], vec![])
    }

    /// `x` indexed by constant `idx` on `axis` (a scalar index drops the axis).
    fn gather_const(&mut self, x: &str, axis: i64, idx: &[i64], scalar: bool) -> String {
        let i = if scalar { self.i64s("index", &[], idx) } else { self.i64s("index", &[idx.len()], idx) };
        self.node("Gather", &[x, &i], vec![int_attr("axis", axis)])
    }

    fn activate(&mut self, x: &str, a: Activation) -> String {
        match a {
            Activation::Relu => self.node("Relu", &[x], vec![]),
            Activation::Tanh => self.node("Tanh", &[x], vec![]),
            Activation::Sigmoid => self.node("Sigmoid", &[x], vec![]),
            Activation::Linear => x.to_string(),
            Activation::Gelu => {
                // candle's gelu: the tanh approximation,
                // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
                let x3 = {
                    let x2 = self.node("Mul", &[x, x], vec![]);
                    self.node("Mul", &[&x2, x], vec![])
                };
                let c = self.scalar(0.044715);
                let t = self.node("Mul", &[&x3, &c], vec![]);
                let inner = self.node("Add", &[x, &t], vec![]);
                let k = self.scalar((2.0 / std::f64::consts::PI).sqrt() as f32);
                let scaled = self.node("Mul", &[&inner, &k], vec![]);
                let th = self.node("Tanh", &[&scaled], vec![]);
                let one = self.scalar(1.0);
                let p = self.node("Add", &[&th, &one], vec![]);
                let half = self.scalar(0.5);
                let hx = self.node("Mul", &[x, &half], vec![]);
                self.node("Mul", &[&hx, &p], vec![])
            }
        }
    }
}

fn values(v: &candle_core::Var) -> Result<(Vec<usize>, Vec<f32>), OnnxError> {
    let t = v.as_tensor();
    Ok((t.dims().to_vec(), t.flatten_all()?.to_vec1::<f32>()?))
}

/// One layer on stream `h` (`[B, d]` or `[B, S, d]`): the inference path of
/// `LayerParams::forward`.
fn layer(g: &mut Graph, model: &CandleModel, li: usize, l: &Layer, h: &str, d: usize) -> Result<String, OnnxError> {
    let p = &model.layers[li];
    let plan = &p.plan;
    let n_slots = plan.inputs.len() as i64;
    let slots = g.reshape(h, &[-1, n_slots, d as i64]); // [B, S, d]
    let mut parts = Vec::new();
    let mut u = 0;
    for run in &plan.runs {
        let stack = &p.groups[run.group];
        let k = run.slots.len();
        let idx: Vec<i64> = run.slots.iter().map(|&s| s as i64).collect();
        let x = g.gather_const(&slots, 1, &idx, false); // [B, k, d]
        let x = g.reshape(&x, &[-1, d as i64]); // [B*k, d]
        let e = stack.count;
        // Depth 0: one GEMM over the experts' weights side by side, [d, E*d1].
        let (dims, w) = values(&stack.layers[0].0)?;
        let (d_in, d1) = (dims[1], dims[2]);
        let mut side = vec![0f32; d_in * e * d1];
        for ei in 0..e {
            for r in 0..d_in {
                for c in 0..d1 {
                    side[r * e * d1 + ei * d1 + c] = w[ei * d_in * d1 + r * d1 + c];
                }
            }
        }
        let w0 = g.f32s("expert_w", &[d_in, e * d1], &side);
        let (_, b) = values(&stack.layers[0].1)?;
        let b0 = g.f32s("expert_b", &[e * d1], &b);
        let y = g.matmul_add(&x, &w0, &b0);
        let mut y = g.activate(&y, stack.activation); // [B*k, E*d1]
        u = d1;
        if stack.layers.len() > 1 {
            let y3 = g.reshape(&y, &[-1, e as i64, d1 as i64]);
            let mut h3 = g.node("Transpose", &[&y3], vec![ints_attr("perm", vec![1, 0, 2])]); // [E, B*k, d1]
            for (w, b) in &stack.layers[1..] {
                let (dims, wv) = values(w)?;
                let wn = g.f32s("expert_w", &dims, &wv);
                let (_, bv) = values(b)?;
                let bn = g.f32s("expert_b", &[e, 1, dims[2]], &bv);
                let z = g.matmul_add(&h3, &wn, &bn);
                h3 = g.activate(&z, stack.activation);
                u = dims[2];
            }
            y = g.node("Transpose", &[&h3], vec![ints_attr("perm", vec![1, 0, 2])]);
            // [B*k, E, u]
        }
        parts.push(g.reshape(&y, &[-1, (k * e) as i64, u as i64])); // [B, k*E, u]
    }
    let experts = if parts.len() == 1 {
        parts.remove(0)
    } else {
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        g.node("Concat", &refs, vec![int_attr("axis", 1)])
    }; // [B, N, u]
    let shared_out = matches!(l.output, Stream::Shared { .. });
    let Some((w, bias)) = &p.gates else {
        return Ok(if shared_out { g.reshape(&experts, &[-1, u as i64]) } else { experts });
    };
    // All gates on all slots: one MatMul, then the columns the mixes read.
    let (dims, wv) = values(w)?;
    let total = dims[1];
    let wg = g.f32s("gate_w", &dims, &wv);
    let (_, bv) = values(bias)?;
    let bg = g.f32s("gate_b", &[total], &bv);
    let flat = g.reshape(&slots, &[-1, d as i64]);
    let logits = g.matmul_add(&flat, &wg, &bg);
    let mut logits = g.reshape(&logits, &[-1, n_slots * total as i64]);
    let layout: &MixLayout = &p.layout;
    if let Some(cols) = &layout.columns {
        let idx: Vec<i64> = cols.iter().map(|&c| c as i64).collect();
        logits = g.gather_const(&logits, 1, &idx, false);
    }
    if p.gating.temperature != 1.0 {
        let t = g.scalar(p.gating.temperature);
        logits = g.node("Div", &[&logits, &t], vec![]);
    }
    let m = plan.mixes.len();
    let weights = match layout.equal_width {
        Some(e) => {
            let x = g.reshape(&logits, &[-1, m as i64, e as i64]);
            let p3 = gate_softmax(g, &x, p.gating.top_k);
            g.reshape(&p3, &[-1, (m * e) as i64])
        }
        None => {
            let mut per_mix = Vec::new();
            let mut at = 0;
            for mix in &plan.mixes {
                let k = mix.instances.len();
                let x = g.slice(&logits, 1, at, at + k);
                per_mix.push(gate_softmax(g, &x, p.gating.top_k));
                at += k;
            }
            let refs: Vec<&str> = per_mix.iter().map(String::as_str).collect();
            g.node("Concat", &refs, vec![int_attr("axis", 1)])
        }
    };
    let n = plan.instances as i64;
    let dense = match &layout.scatter {
        Some((rows, cols, q)) => {
            let qn = g.f32s("scatter", &[*rows, *cols], q);
            let x = g.node("MatMul", &[&weights, &qn], vec![]);
            g.reshape(&x, &[-1, m as i64, n])
        }
        None => g.reshape(&weights, &[-1, m as i64, n]),
    };
    let mixed = g.node("MatMul", &[&dense, &experts], vec![]); // [B, M, u]
    Ok(if shared_out { g.reshape(&mixed, &[-1, u as i64]) } else { mixed })
}

/// Softmax over the last axis, keeping only each gate's k largest logits first.
fn gate_softmax(g: &mut Graph, x: &str, top_k: Option<usize>) -> String {
    let masked = match top_k {
        Some(k) => {
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
        None => x.to_string(),
    };
    g.node("Softmax", &[&masked], vec![int_attr("axis", -1)])
}

fn value_info(name: &str, elem: i32, dims: &[Option<i64>], doc: &str) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| match d {
            Some(v) => proto::Dimension { dim_value: Some(*v), dim_param: None },
            None => proto::Dimension { dim_value: None, dim_param: Some("batch".into()) },
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(proto::TypeProto {
            tensor_type: Some(proto::TensorTypeProto { elem_type: elem, shape: Some(proto::TensorShapeProto { dim }) }),
        }),
        doc_string: doc.into(),
    }
}

/// A categorical's metadata, with how a bag's values fill its `max_len` columns of
/// `categorical` and of `bag_weights`.
fn with_bag(bag: Option<&crate::ir::Bag>, mut entry: serde_json::Value) -> serde_json::Value {
    if let (Some(b), Some(obj)) = (bag, entry.as_object_mut()) {
        obj.insert(
            "bag".into(),
            serde_json::json!({
                "max_len": b.max_len,
                "separator": b.separator,
                "pooling": b.pooling.as_str(),
                "weights_column": b.weights,
                "rule": "the cell's values (split on the separator, trimmed, empty ones dropped; for max pooling each table row once), the first max_len, fill this feature's max_len columns of `categorical` (padding: row 0) and of `bag_weights`: sum pooling the value's weight (1 without a weights column), mean pooling that over the row's total, max pooling 1; padding 0",
            }),
        );
    }
    entry
}

/// A bag's looked-up embeddings `e` `[B, len, dim]` pooled by its slot weights `w`
/// `[B, len]` into `[B, dim]`, as the candle backend's `pool` does.
fn pool(g: &mut Graph, e: &str, w: &str, pooling: crate::ir::Pooling, len: usize, dim: usize) -> String {
    match pooling {
        crate::ir::Pooling::Sum | crate::ir::Pooling::Mean => {
            let w = g.reshape(w, &[-1, 1, len as i64]);
            let y = g.node("MatMul", &[&w, e], vec![]); // [B, 1, dim]
            g.reshape(&y, &[-1, dim as i64])
        }
        crate::ir::Pooling::Max => {
            let one = g.scalar(1.0);
            let far = g.scalar(1e9);
            let off = g.node("Sub", &[w, &one], vec![]);
            let off = g.node("Mul", &[&off, &far], vec![]);
            let off = g.reshape(&off, &[-1, len as i64, 1]);
            let pushed = g.node("Add", &[e, &off], vec![]);
            let max = g.node("ReduceMax", &[&pushed], vec![ints_attr("axes", vec![1]), int_attr("keepdims", 0)]);
            let present = g.node("ReduceMax", &[w], vec![ints_attr("axes", vec![1]), int_attr("keepdims", 1)]);
            g.node("Mul", &[&max, &present], vec![])
        }
    }
}

/// What a client needs to turn raw values into the graph's inputs, as JSON.
pub fn encoding_metadata(model: &Model) -> serde_json::Value {
    let mut categorical = Vec::new();
    let mut dense = Vec::new();
    for f in &model.features {
        match &f.kind {
            FeatureKind::Categorical { encoding, bag, .. } => categorical.push(with_bag(
                bag.as_ref(),
                match encoding {
                    // A feature reading another's table hashes under that feature's name.
                    Encoding::Hash { buckets } => serde_json::json!({
                        "feature": f.name, "column": f.column, "encoding": "hash", "buckets": buckets,
                        "hash": "xxh3_64_with_seed(utf8(hash_name + \"=\" + value), seed) % buckets",
                        "hash_name": f.shares.map_or(&f.name, |o| &model.features[o.0].name),
                        "seed": crate::data::hash::HASH_SEED,
                    }),
                    Encoding::Vocab { values } => serde_json::json!({
                        "feature": f.name, "column": f.column, "encoding": "vocabulary",
                        "values": values, "rule": "row i+1 for values[i]; row 0 for anything else",
                    }),
                    Encoding::Bucketize { boundaries } => serde_json::json!({
                        "feature": f.name, "column": f.column, "encoding": "bucketize",
                        "boundaries": boundaries,
                        "rule": "row 0 for a missing value; row 1 + k for a number with k boundaries <= it",
                    }),
                    // A bundle's vocabularies and buckets are fitted; open ones have no rows to describe.
                    Encoding::FitVocab { .. } => serde_json::json!({
                        "feature": f.name, "column": f.column, "encoding": "vocabulary (not fitted)",
                    }),
                    Encoding::FitBuckets { .. } => serde_json::json!({
                        "feature": f.name, "column": f.column, "encoding": "bucketize (not fitted)",
                    }),
                },
            )),
            FeatureKind::Dense { width, transform, fill } => dense.push(serde_json::json!({
                "feature": f.name,
                "columns": dense_columns(&f.column, *width),
                "fill": fill,
                "transform": match transform {
                    Transform::None => serde_json::json!({"kind": "none"}),
                    Transform::Log1p => serde_json::json!({"kind": "log1p"}),
                    Transform::ZScore { mean, std } => serde_json::json!({"kind": "zscore", "mean": mean, "std": std}),
                    Transform::MinMax { min, max } => serde_json::json!({"kind": "minmax", "min": min, "max": max}),
                },
            })),
        }
    }
    let outputs: Vec<serde_json::Value> = model
        .tasks
        .iter()
        .map(|t| {
            serde_json::json!({
                "name": t.name,
                "columns": t.output_columns(),
                "head": match &t.head {
                    Head::Binary => "probability".to_string(),
                    Head::Regression { .. } => "value in the label's units".to_string(),
                    Head::Multiclass { .. } => "class probabilities".to_string(),
                },
            })
        })
        .collect();
    serde_json::json!({
        "inputs": {"categorical": categorical, "dense": dense},
        "missing": "a missing dense value takes `fill`, then the transform; a categorical hashes its text (empty included)",
        "outputs": outputs,
    })
}

/// The model's forward pass as ONNX protobuf bytes.
pub fn to_onnx(model: &CandleModel) -> Result<Vec<u8>, OnnxError> {
    let ir = &model.ir;
    let mut g = Graph { nodes: Vec::new(), inits: Vec::new(), counter: 0 };
    // Columns of `categorical` (a bag takes max_len) and of `bag_weights`.
    let n_cat: usize = ir
        .features
        .iter()
        .filter(|f| matches!(f.kind, FeatureKind::Categorical { .. }))
        .map(|f| f.bag().map_or(1, |b| b.max_len))
        .sum();
    let n_slots: usize = ir.features.iter().filter_map(|f| f.bag()).map(|b| b.max_len).sum();
    let dense_width: usize =
        ir.features.iter().map(|f| if let FeatureKind::Dense { width, .. } = f.kind { width } else { 0 }).sum();
    // Inputs, then the concatenated input row.
    let mut pieces = Vec::new();
    let mut looked_up: Vec<Option<String>> = Vec::new();
    let (mut cat_i, mut dense_off, mut slot_i) = (0usize, 0usize, 0usize);
    for (f, table) in ir.features.iter().zip(&model.embeddings) {
        match (&f.kind, table) {
            (FeatureKind::Categorical { bag, dim, .. }, Some(table)) => {
                let (dims, v) = values(table)?;
                let t = g.f32s(&format!("embedding_{}", f.name), &dims, &v);
                let e = match bag {
                    None => {
                        let ids = g.gather_const("categorical", 1, &[cat_i as i64], true); // [B]
                        cat_i += 1;
                        g.node("Gather", &[&t, &ids], vec![int_attr("axis", 0)])
                        // [B, dim]
                    }
                    Some(b) => {
                        let len = b.max_len;
                        let ids = g.slice("categorical", 1, cat_i, cat_i + len); // [B, len]
                        let w = g.slice("bag_weights", 1, slot_i, slot_i + len); // [B, len]
                        (cat_i, slot_i) = (cat_i + len, slot_i + len);
                        let e = g.node("Gather", &[&t, &ids], vec![int_attr("axis", 0)]); // [B, len, dim]
                        pool(&mut g, &e, &w, b.pooling, len, *dim)
                    }
                };
                pieces.push(e.clone());
                looked_up.push(Some(e));
            }
            (FeatureKind::Dense { width, .. }, _) => {
                pieces.push(g.slice("dense", 1, dense_off, dense_off + width));
                dense_off += width;
                looked_up.push(None);
            }
            _ => return Err(OnnxError::Unsupported(format!("feature `{}` has no embedding table", f.name))),
        }
    }
    for c in &ir.crosses {
        match (&looked_up[c.a.0], &looked_up[c.b.0]) {
            (Some(a), Some(b)) => {
                let (a, b) = (a.clone(), b.clone());
                pieces.push(g.node("Mul", &[&a, &b], vec![]));
            }
            _ => return Err(OnnxError::Unsupported("a cross of a dense feature".into())),
        }
    }
    let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
    let mut h = if refs.len() == 1 { refs[0].to_string() } else { g.node("Concat", &refs, vec![int_attr("axis", 1)]) };
    let mut stream = Stream::Shared { width: ir.input_width };
    let mut width = ir.input_width;
    let mut outputs: Vec<(String, Stream, usize)> = Vec::new();
    for (li, l) in ir.layers.iter().enumerate() {
        h = layer(&mut g, model, li, l, &h, width)?;
        stream = l.output;
        width = l.output.width();
        outputs.push((h.clone(), stream, width));
    }
    // Towers.
    let mut raw: Vec<Option<String>> = vec![None; ir.tasks.len()];
    for (t, (tower, task)) in model.towers.iter().zip(&ir.tasks).enumerate() {
        if !matches!(task.output, TaskOutput::Tower { .. }) {
            continue;
        }
        let (src, s_src) = match task.input {
            Some(i) => (outputs[i].0.clone(), outputs[i].1),
            None => (h.clone(), stream),
        };
        let mut x = match s_src {
            Stream::Shared { .. } => src,
            _ => g.gather_const(&src, 1, &[s_src.task_slot(TaskId(t)) as i64], true), // [B, d]
        };
        let last = tower.layers.len() - 1;
        for (i, (w, b)) in tower.layers.iter().enumerate() {
            let (dims, wv) = values(w)?;
            let wn = g.f32s("tower_w", &dims, &wv);
            let (bd, bv) = values(b)?;
            let bn = g.f32s("tower_b", &bd, &bv);
            x = g.matmul_add(&x, &wn, &bn);
            if i < last {
                x = g.activate(&x, tower.activation);
            }
        }
        raw[t] = Some(x); // [B, 1] or [B, K]
    }
    // Heads in predict's units.
    let mut probs: Vec<Option<String>> = vec![None; ir.tasks.len()];
    for (t, task) in ir.tasks.iter().enumerate() {
        if let Some(x) = raw[t].clone() {
            probs[t] = Some(match &task.head {
                Head::Binary => {
                    let p = g.node("Sigmoid", &[&x], vec![]);
                    g.reshape(&p, &[-1])
                }
                Head::Multiclass { .. } => g.node("Softmax", &[&x], vec![int_attr("axis", -1)]),
                Head::Regression { transform } => {
                    let y = g.reshape(&x, &[-1]);
                    match *transform {
                        LabelTransform::None => y,
                        LabelTransform::Log1p => {
                            let e = g.node("Exp", &[&y], vec![]);
                            let one = g.scalar(1.0);
                            g.node("Sub", &[&e, &one], vec![])
                        }
                        LabelTransform::Standardize { mean, std } => {
                            let s = g.scalar(std as f32);
                            let m = g.scalar(mean as f32);
                            let y = g.node("Mul", &[&y, &s], vec![]);
                            g.node("Add", &[&y, &m], vec![])
                        }
                    }
                }
            });
        }
    }
    // Products (ESMM): p = sigmoid(a) sigmoid(b), of the factors' raw outputs.
    for (t, task) in ir.tasks.iter().enumerate() {
        if let TaskOutput::Product { factors: [a, b] } = task.output {
            let (Some(za), Some(zb)) = (raw[a.0].clone(), raw[b.0].clone()) else {
                return Err(OnnxError::Unsupported(format!("product task `{}` lacks a factor", task.name)));
            };
            let pa = g.node("Sigmoid", &[&za], vec![]);
            let pb = g.node("Sigmoid", &[&zb], vec![]);
            let p = g.node("Mul", &[&pa, &pb], vec![]);
            probs[t] = Some(g.reshape(&p, &[-1]));
        }
    }
    // Name each output after its task.
    let mut outputs_info = Vec::new();
    for (t, task) in ir.tasks.iter().enumerate() {
        let Some(x) = probs[t].clone() else {
            return Err(OnnxError::Unsupported(format!("task `{}` has no output", task.name)));
        };
        g.nodes.push(NodeProto {
            input: vec![x],
            output: vec![task.name.clone()],
            name: format!("output_{}", task.name),
            op_type: "Identity".into(),
            attribute: vec![],
            domain: String::new(),
        });
        let dims: Vec<Option<i64>> = match &task.head {
            Head::Multiclass { classes } => vec![None, Some(classes.len() as i64)],
            _ => vec![None],
        };
        outputs_info.push(value_info(&task.name, data_type::FLOAT, &dims, &format!("task {}", task.name)));
    }
    let mut inputs = Vec::new();
    if n_cat > 0 {
        inputs.push(value_info(
            "categorical",
            data_type::INT64,
            &[None, Some(n_cat as i64)],
            "table row of each categorical feature, in spec order",
        ));
    }
    if dense_width > 0 {
        inputs.push(value_info(
            "dense",
            data_type::FLOAT,
            &[None, Some(dense_width as i64)],
            "transformed dense values, in spec order",
        ));
    }
    if n_slots > 0 {
        inputs.push(value_info(
            "bag_weights",
            data_type::FLOAT,
            &[None, Some(n_slots as i64)],
            "the pooling weight of each slot of each bag feature (max_len each), in spec order",
        ));
    }
    let graph = proto::GraphProto {
        node: g.nodes,
        name: ir.name.clone(),
        initializer: g.inits,
        doc_string: format!("multigate model {}", ir.name),
        input: inputs,
        output: outputs_info,
    };
    let m = proto::ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![proto::OperatorSetIdProto { domain: String::new(), version: OPSET }],
        producer_name: "multigate".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        domain: String::new(),
        model_version: 1,
        doc_string: format!("{}", model.ir),
        graph: Some(graph),
        metadata_props: vec![proto::StringStringEntryProto {
            key: "multigate.encoding".into(),
            value: encoding_metadata(ir).to_string(),
        }],
    };
    Ok(m.encode_to_vec())
}
