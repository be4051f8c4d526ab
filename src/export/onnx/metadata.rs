//! The bundle's and the ONNX model's encoding metadata: how a client turns raw values
//! into the graph's inputs (hashing, vocabularies, buckets, bags, dense transforms).

use crate::data::dense_columns;
use crate::ir::{Encoding, FeatureKind, Head, Model, Transform};

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
