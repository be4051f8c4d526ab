//! ONNX export: a trained model's forward pass as an ONNX graph (opset 17, standard
//! operators only) that ONNX Runtime, Triton or any ONNX consumer runs.
//!
//! The graph is the model's evaluation program (`lower::lower_program`) emitted op by
//! op (`emit.rs`): embeddings are `Gather`s, each expert group one `MatMul` (first depth
//! over the experts' side by side weights) or a batched `MatMul` (deeper), all gates of
//! a layer one `MatMul`, top-k a `TopK` threshold, each mixture one batched `MatMul`.
//! The exporter sees primitive ops only; the parameters are read by their names in the
//! model's parameter table.
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

mod emit;
mod graph;
mod metadata;
mod proto;

use prost::Message;

pub use metadata::encoding_metadata;

use graph::value_info;
use proto::{data_type, NodeProto};

use crate::backend::candle::CandleModel;
use crate::ir::{Head, LabelTransform, Link, Validated};
use crate::program::{Mode, ProgramError};

/// The ONNX operator set the graph is written for.
pub const OPSET: i64 = 17;
/// ONNX IR version 8 goes with opset 17.
const IR_VERSION: i64 = 8;

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("reading the weights: {0}")]
    Weights(#[from] candle_core::Error),
    #[error("the model's program: {0}")]
    Program(#[from] ProgramError),
    #[error("{0}")]
    Unsupported(String),
}

/// A task's raw output (`raw`) in the units `predict` writes: probabilities, class
/// probabilities, or a value in the label's units (the label transform inverted).
fn prediction(g: &mut graph::Graph, raw: &str, link: Link, head: &Head) -> String {
    match (link, head) {
        (Link::Sigmoid, _) => g.node("Sigmoid", &[raw], vec![]),
        (Link::LogProb, _) => g.node("Exp", &[raw], vec![]),
        (Link::Softmax, _) => g.node("Softmax", &[raw], vec![graph::int_attr("axis", -1)]),
        (Link::Identity, Head::Regression { transform }) => match *transform {
            LabelTransform::None => raw.to_string(),
            LabelTransform::Log1p => {
                let e = g.node("Exp", &[raw], vec![]);
                let one = g.scalar(1.0);
                g.node("Sub", &[&e, &one], vec![])
            }
            LabelTransform::Standardize { mean, std } => {
                let s = g.scalar(std as f32);
                let m = g.scalar(mean as f32);
                let y = g.node("Mul", &[raw, &s], vec![]);
                g.node("Add", &[&y, &m], vec![])
            }
        },
        (Link::Identity, _) => raw.to_string(),
    }
}

/// The model's forward pass as ONNX protobuf bytes.
pub fn to_onnx(model: &CandleModel) -> Result<Vec<u8>, OnnxError> {
    let ir = model.ir();
    // The model was validated to be built; its IR is unchanged since.
    let program = crate::lower::lower_program(&Validated::new_unchecked(ir.clone()), Mode::Eval)?;
    let values = |name: &str| -> Result<Vec<f32>, OnnxError> {
        let var = model.var(name).ok_or_else(|| OnnxError::Unsupported(format!("no parameter `{name}`")))?;
        Ok(var.as_tensor().flatten_all()?.to_vec1::<f32>()?)
    };
    let mut e = emit::Emitter::new(&program, &values);
    let (n_cat, n_slots, dense_width) = e.bind_inputs();
    e.emit_all()?;
    // Each output in predict's units, named after its task.
    let mut outputs_info = Vec::new();
    for (o, task) in program.outputs.iter().zip(&ir.tasks) {
        let raw = e.name(o.raw)?;
        let y = prediction(&mut e.g, &raw, o.link, &task.head);
        e.g.nodes.push(NodeProto {
            input: vec![y],
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
        let doc = "table row of each categorical feature, in spec order";
        inputs.push(value_info("categorical", data_type::INT64, &[None, Some(n_cat as i64)], doc));
    }
    if dense_width > 0 {
        let doc = "transformed dense values, in spec order";
        inputs.push(value_info("dense", data_type::FLOAT, &[None, Some(dense_width as i64)], doc));
    }
    if n_slots > 0 {
        let doc = "the pooling weight of each slot of each bag feature (max_len each), in spec order";
        inputs.push(value_info("bag_weights", data_type::FLOAT, &[None, Some(n_slots as i64)], doc));
    }
    let graph = proto::GraphProto {
        node: e.g.nodes,
        name: ir.name.clone(),
        initializer: e.g.inits,
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
        doc_string: format!("{}", model.ir()),
        graph: Some(graph),
        metadata_props: vec![proto::StringStringEntryProto {
            key: "multigate.encoding".into(),
            value: encoding_metadata(ir).to_string(),
        }],
    };
    Ok(m.encode_to_vec())
}
