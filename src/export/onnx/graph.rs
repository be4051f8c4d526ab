//! The ONNX graph under construction: nodes, initializers and the helpers that add
//! the common node patterns.

use super::proto::{self, attribute_type, data_type, AttributeProto, NodeProto, TensorProto, ValueInfoProto};
use crate::program::Unary;

/// The graph under construction: nodes in topological order and the initializers.
#[derive(Default)]
pub(super) struct Graph {
    pub nodes: Vec<NodeProto>,
    pub inits: Vec<TensorProto>,
    counter: usize,
}

pub(super) fn int_attr(name: &str, i: i64) -> AttributeProto {
    AttributeProto { name: name.into(), i, r#type: attribute_type::INT, ..Default::default() }
}

pub(super) fn ints_attr(name: &str, ints: Vec<i64>) -> AttributeProto {
    AttributeProto { name: name.into(), ints, r#type: attribute_type::INTS, ..Default::default() }
}

impl Graph {
    pub(super) fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    /// A constant tensor (an initializer) of `data_type`, row-major little-endian bytes.
    pub(super) fn constant(&mut self, hint: &str, dims: &[usize], data_type: i32, raw_data: Vec<u8>) -> String {
        let name = self.fresh(hint);
        self.inits.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type,
            name: name.clone(),
            raw_data,
        });
        name
    }

    pub(super) fn f32s(&mut self, hint: &str, dims: &[usize], values: &[f32]) -> String {
        self.constant(hint, dims, data_type::FLOAT, values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    pub(super) fn i64s(&mut self, hint: &str, dims: &[usize], values: &[i64]) -> String {
        self.constant(hint, dims, data_type::INT64, values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    pub(super) fn scalar(&mut self, v: f32) -> String {
        self.f32s("c", &[], &[v])
    }

    pub(super) fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
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

    pub(super) fn reshape(&mut self, x: &str, shape: &[i64]) -> String {
        let s = self.i64s("shape", &[shape.len()], shape);
        self.node("Reshape", &[x, &s], vec![])
    }

    pub(super) fn matmul_add(&mut self, x: &str, w: &str, b: &str) -> String {
        let y = self.node("MatMul", &[x, w], vec![]);
        self.node("Add", &[&y, b], vec![])
    }

    /// `x[..., start..end]` on `axis`.
    pub(super) fn slice(&mut self, x: &str, axis: i64, start: usize, end: usize) -> String {
        let s = self.i64s("starts", &[1], &[start as i64]);
        let e = self.i64s("ends", &[1], &[end as i64]);
        let a = self.i64s("axes", &[1], &[axis]);
        self.node("Slice", &[x, &s, &e, &a], vec![])
    }

    /// `x` indexed by constant `idx` on `axis` (a scalar index drops the axis).
    pub(super) fn gather_const(&mut self, x: &str, axis: i64, idx: &[i64], scalar: bool) -> String {
        let i = if scalar { self.i64s("index", &[], idx) } else { self.i64s("index", &[idx.len()], idx) };
        self.node("Gather", &[x, &i], vec![int_attr("axis", axis)])
    }

    /// `f(x)` elementwise.
    pub(super) fn unary(&mut self, x: &str, u: Unary) -> String {
        match u {
            Unary::Relu => self.node("Relu", &[x], vec![]),
            Unary::Tanh => self.node("Tanh", &[x], vec![]),
            Unary::Sigmoid => self.node("Sigmoid", &[x], vec![]),
            Unary::Exp => self.node("Exp", &[x], vec![]),
            Unary::Softplus => self.node("Softplus", &[x], vec![]),
            Unary::LogSigmoid => {
                let n = self.node("Neg", &[x], vec![]);
                let s = self.node("Softplus", &[&n], vec![]);
                self.node("Neg", &[&s], vec![])
            }
            Unary::Gelu => {
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

pub(super) fn value_info(name: &str, elem: i32, dims: &[Option<i64>], doc: &str) -> ValueInfoProto {
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
