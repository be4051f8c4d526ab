//! TOML front end: text -> [`Spec`], with serde's `deny_unknown_fields` and
//! `toml::Spanned` keeping every value's position.

use super::{Spec, SpecError};
use crate::diag::did_you_mean;
use crate::source::SourceFile;

/// Parses a TOML spec. Unknown keys are all reported together (a pass over the
/// document before serde, which stops at the first), and with them the first value
/// error serde finds in the rest (the unknown keys are blanked out, offsets kept).
pub fn parse_toml(src: &SourceFile) -> Result<Spec, Vec<SpecError>> {
    super::check_size(src)?;
    let (mut errors, unknown_spans) = check_keys(&src.text);
    let Some(unknown_spans) = unknown_spans.into_iter().collect::<Option<Vec<_>>>() else {
        // An unknown table cannot be blanked out in place: report the unknown keys only.
        return Err(errors);
    };
    let text = if unknown_spans.is_empty() { src.text.to_string() } else { blank(&src.text, &unknown_spans) };
    match toml::from_str::<Spec>(&text) {
        Ok(spec) if errors.is_empty() => Ok(spec),
        Ok(_) => Err(errors),
        Err(e) => {
            errors.push(value_error(&text, &e));
            Err(errors)
        }
    }
}

/// `text` with each span replaced by spaces (line breaks kept, so offsets stay).
fn blank(text: &str, spans: &[std::ops::Range<usize>]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for r in spans {
        for b in &mut bytes[r.start.min(text.len())..r.end.min(text.len())] {
            if *b != b'\n' && *b != b'\r' {
                *b = b' ';
            }
        }
    }
    // Every byte of a multi-byte character became a space, so the text stays UTF-8.
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A serde/TOML error in the user's words: the key, what it must be, what was found.
fn value_error(text: &str, e: &toml::de::Error) -> SpecError {
    let full = e.message();
    let first = full.lines().next().unwrap_or("invalid TOML").to_string();
    let span = e.span();
    // A table defined twice.
    if let Some(rest) = full.split("duplicate key `").nth(1) {
        let key = rest.split('`').next().unwrap_or("");
        return SpecError::Syntax {
            message: format!("duplicate table or key `{key}`: it is already defined above"),
            span: span.map(Into::into),
            help: "merge the two, or remove one".into(),
        };
    }
    let help = unknown_field_help(&first).unwrap_or_else(|| "see the spec reference in README.md".to_string());
    let message = match (span.as_ref().and_then(|s| key_at(text, s.start)), expected_and_found(&first)) {
        (Some(key), Some((expected, found))) => format!("`{key}` must be {expected}, found {found}"),
        _ => first,
    };
    SpecError::Syntax { message, span: span.map(Into::into), help }
}

/// The key whose value starts at `at`: `key = ` before it on its line.
fn key_at(text: &str, at: usize) -> Option<String> {
    let line_start = text[..at.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
    let (key, _) = text[line_start..at.min(text.len())].split_once('=')?;
    let key = key.trim().trim_matches('"');
    (!key.is_empty() && !key.starts_with('[')).then(|| key.to_string())
}

/// serde's "invalid type/value: FOUND, expected TYPE" in words.
fn expected_and_found(message: &str) -> Option<(String, String)> {
    let rest = message.strip_prefix("invalid type: ").or_else(|| message.strip_prefix("invalid value: "))?;
    let (found, expected) = rest.rsplit_once(", expected ")?;
    let expected = match expected.trim() {
        "u64" | "u32" | "usize" | "u16" | "u8" => "a whole number (0 or more)".to_string(),
        "i64" | "i32" => "a whole number".to_string(),
        "f64" | "f32" => "a number".to_string(),
        "a boolean" => "true or false".to_string(),
        "a string" => "a string (in quotes)".to_string(),
        "a sequence" => "a list `[...]`".to_string(),
        other => other.to_string(),
    };
    let found = match found.split_once(' ') {
        Some(("integer" | "floating", v)) => v.trim_start_matches("point ").trim_matches('`').to_string(),
        Some(("string", v)) => format!("the string {v}"),
        Some(("boolean", v)) => v.trim_matches('`').to_string(),
        _ if found == "sequence" => "a list".to_string(),
        _ if found == "map" => "a table".to_string(),
        _ => found.to_string(),
    };
    Some((expected, found))
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
                    ("partition_date", Leaf),
                    ("cur_date", Leaf),
                    ("days", Leaf),
                    ("bad_rows", Leaf),
                    ("max_bad_rows", Leaf),
                    ("max_bad_fraction", Leaf),
                    ("stream", Leaf),
                    ("shuffle_buffer", Leaf),
                ],
            ),
        ),
        (
            "features",
            Table(
                "[[features]]",
                &[
                    ("name", Leaf),
                    ("also", Leaf),
                    ("type", Leaf),
                    ("column", Leaf),
                    ("hash_buckets", Leaf),
                    ("vocabulary", Leaf),
                    ("embedding_dim", Leaf),
                    ("width", Leaf),
                    ("transform", Leaf),
                    ("mean", Leaf),
                    ("std", Leaf),
                    ("min", Leaf),
                    ("max", Leaf),
                    ("fill", Leaf),
                    ("min_count", Leaf),
                    ("max_size", Leaf),
                    ("table", Leaf),
                    ("bucketize", Leaf),
                    ("boundaries", Leaf),
                    ("max_len", Leaf),
                    ("separator", Leaf),
                    ("pooling", Leaf),
                    ("weights", Leaf),
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
                    ("cross_layers", Leaf),
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
                    ("transfer_from", Leaf),
                    ("calibration", Leaf),
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
/// Every unknown key, and the span of each one's key-value pair (to blank out; None for
/// a whole unknown table).
fn check_keys(text: &str) -> (Vec<SpecError>, Vec<Option<std::ops::Range<usize>>>) {
    let Ok(doc) = toml_edit::ImDocument::parse(text) else { return (Vec::new(), Vec::new()) };
    let mut errors = Vec::new();
    let mut spans = Vec::new();
    walk(doc.as_table(), &SPEC_SCHEMA, &mut errors, &mut spans);
    (errors, spans)
}

fn walk(
    table: &dyn toml_edit::TableLike,
    schema: &Schema,
    errors: &mut Vec<SpecError>,
    spans: &mut Vec<Option<std::ops::Range<usize>>>,
) {
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
                // A plain `key = value` can be blanked out; a table cannot (its header
                // and body are apart), and then serde reports nothing more.
                spans.push(match (item.is_value(), item.span()) {
                    (true, Some(v)) => Some(span.start..v.end),
                    _ => None,
                });
            }
            Some((_, sub @ Table(..))) => {
                if let Some(t) = item.as_table_like() {
                    walk(t, sub, errors, spans);
                } else if let Some(aot) = item.as_array_of_tables() {
                    for t in aot.iter() {
                        walk(t, sub, errors, spans);
                    }
                } else if let Some(arr) = item.as_array() {
                    for v in arr.iter() {
                        if let Some(t) = v.as_inline_table() {
                            walk(t, sub, errors, spans);
                        }
                    }
                }
            }
            Some(_) => {}
        }
    }
}
