//! TOML front end: text -> [`Spec`], with serde's `deny_unknown_fields` and
//! `toml::Spanned` keeping every value's position.

use super::{Spec, SpecError};
use crate::diag::did_you_mean;
use crate::source::SourceFile;

/// Parses a TOML spec. Unknown keys are all reported together (a pass over the
/// document before serde, which stops at the first); other errors one at a time.
pub fn parse_toml(src: &SourceFile) -> Result<Spec, Vec<SpecError>> {
    super::check_size(src)?;
    let unknown = check_keys(&src.text);
    if !unknown.is_empty() {
        return Err(unknown);
    }
    toml::from_str::<Spec>(&src.text).map_err(|e| {
        // toml's message repeats the snippet; keep only its first line, the snippet is ours.
        let message = e.message().lines().next().unwrap_or("invalid TOML").to_string();
        let help = unknown_field_help(&message).unwrap_or_else(|| "see the spec reference in README.md".to_string());
        vec![SpecError::Syntax { message, span: e.span().map(Into::into), help }]
    })
}

/// "unknown field `x`, expected one of `a`, `b`" -> "did you mean `a`?".
fn unknown_field_help(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (found, rest) = rest.split_once('`')?;
    let expected: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    did_you_mean(found, expected.iter().copied())
        .or_else(|| Some(format!("allowed keys here: {}", expected.join(", "))))
}

/// The keys each table of a spec allows (mirrors the serde structs in `spec`; a test
/// parses the README's reference spec, which uses every key, to keep them in step).
enum Schema {
    Table(&'static str, &'static [(&'static str, Schema)]),
    Leaf,
}

use Schema::{Leaf, Table};

const SPEC_SCHEMA: Schema = Table(
    "the spec",
    &[
        ("model", Table("[model]", &[("name", Leaf)])),
        (
            "data",
            Table(
                "[data]",
                &[
                    ("source", Leaf),
                    (
                        "synthetic",
                        Table(
                            "[data.synthetic]",
                            &[
                                ("kind", Leaf),
                                ("rows", Leaf),
                                ("seed", Leaf),
                                ("dim", Leaf),
                                ("correlation", Leaf),
                                ("scale", Leaf),
                                ("sin_terms", Leaf),
                                ("sin_sd", Leaf),
                                ("noise_sd", Leaf),
                                ("cardinality", Leaf),
                            ],
                        ),
                    ),
                    ("train", Leaf),
                    ("validation", Leaf),
                    ("test", Leaf),
                    ("validation_fraction", Leaf),
                    ("test_fraction", Leaf),
                    ("delimiter", Leaf),
                    ("header", Leaf),
                    ("columns", Leaf),
                    ("missing", Leaf),
                ],
            ),
        ),
        (
            "features",
            Table(
                "[[features]]",
                &[
                    ("name", Leaf),
                    ("type", Leaf),
                    ("column", Leaf),
                    ("hash_buckets", Leaf),
                    ("vocabulary", Leaf),
                    ("embedding_dim", Leaf),
                    ("width", Leaf),
                    ("transform", Leaf),
                    ("mean", Leaf),
                    ("std", Leaf),
                    ("fill", Leaf),
                ],
            ),
        ),
        ("crosses", Table("[[crosses]]", &[("name", Leaf), ("op", Leaf), ("features", Leaf)])),
        (
            "layers",
            Table(
                "[[layers]]",
                &[
                    ("name", Leaf),
                    ("kind", Leaf),
                    ("experts", Leaf),
                    ("task_experts", Leaf),
                    ("units", Leaf),
                    ("activation", Leaf),
                    ("dropout", Leaf),
                    ("temperature", Leaf),
                    ("top_k", Leaf),
                    ("noise", Leaf),
                    ("balance", Leaf),
                ],
            ),
        ),
        (
            "tasks",
            Table(
                "[[tasks]]",
                &[
                    ("name", Leaf),
                    ("kind", Leaf),
                    ("label", Leaf),
                    ("positive", Leaf),
                    ("only_where", Leaf),
                    ("classes", Leaf),
                    ("transform", Leaf),
                    ("mean", Leaf),
                    ("std", Leaf),
                    ("product", Leaf),
                    ("input", Leaf),
                    ("tower", Leaf),
                    ("activation", Leaf),
                    ("dropout", Leaf),
                    ("weight", Leaf),
                ],
            ),
        ),
        (
            "train",
            Table(
                "[train]",
                &[
                    ("optimizer", Leaf),
                    ("lr", Leaf),
                    ("beta1", Leaf),
                    ("beta2", Leaf),
                    ("eps", Leaf),
                    ("weight_decay", Leaf),
                    ("lr_decay_rate", Leaf),
                    ("lr_decay_epochs", Leaf),
                    ("batch_size", Leaf),
                    ("epochs", Leaf),
                    ("seed", Leaf),
                    ("select", Leaf),
                    ("patience", Leaf),
                    ("loss_balance", Leaf),
                    ("gradnorm_alpha", Leaf),
                    ("dwa_temperature", Leaf),
                ],
            ),
        ),
    ],
);

/// Every key the schema does not allow, with did-you-mean. Empty when the text is not
/// TOML at all (serde then reports the syntax error).
fn check_keys(text: &str) -> Vec<SpecError> {
    let Ok(doc) = toml_edit::ImDocument::parse(text) else { return Vec::new() };
    let mut errors = Vec::new();
    walk(doc.as_table(), &SPEC_SCHEMA, &mut errors);
    errors
}

fn walk(table: &dyn toml_edit::TableLike, schema: &Schema, errors: &mut Vec<SpecError>) {
    let Table(context, fields) = schema else { return };
    for (key, item) in table.iter() {
        match fields.iter().find(|(k, _)| *k == key) {
            None => {
                let span = table.get_key_value(key).and_then(|(k, _)| k.span()).or_else(|| item.span()).unwrap_or(0..0);
                let allowed: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
                let help = did_you_mean(key, allowed.iter().copied())
                    .unwrap_or_else(|| format!("allowed keys here: {}", allowed.join(", ")));
                errors.push(SpecError::UnknownKey {
                    key: key.to_string(),
                    context,
                    span: (span.start, span.end - span.start).into(),
                    help,
                });
            }
            Some((_, sub @ Table(..))) => {
                if let Some(t) = item.as_table_like() {
                    walk(t, sub, errors);
                } else if let Some(aot) = item.as_array_of_tables() {
                    for t in aot.iter() {
                        walk(t, sub, errors);
                    }
                } else if let Some(arr) = item.as_array() {
                    for v in arr.iter() {
                        if let Some(t) = v.as_inline_table() {
                            walk(t, sub, errors);
                        }
                    }
                }
            }
            Some(_) => {}
        }
    }
}
