//! CSV reading and encoding: every bad input is an error that names where.

use multigate::data::{self, csv_source::read_csv, hash::hash_bucket, DataError};
use multigate::ir::CsvFormat;

use super::compile_ok;

const SPEC: &str = r#"
[model]
name = "csv"
[data]
source = "csv"
train = ["t.csv"]
[[features]]
name = "city"
type = "categorical"
hash_buckets = 100
[[features]]
name = "kind"
type = "categorical"
vocabulary = ["a", "b"]
[[features]]
name = "age"
type = "dense"
transform = "zscore"
mean = 30.0
std = 10.0
fill = 30.0
[[tasks]]
name = "buy"
kind = "binary"
label = "label"
positive = "yes"
[[tasks]]
name = "spend"
kind = "regression"
label = "amount"
"#;

fn fmt() -> CsvFormat {
    CsvFormat { delimiter: b',', header: true, columns: vec![], missing: Some("?".into()) }
}

fn read(text: &str) -> Result<data::Dataset, DataError> {
    let c = compile_ok("csv.toml", SPEC);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.csv");
    std::fs::write(&p, text).unwrap();
    let frame = read_csv(&p, &fmt(), &data::needs(&c.model), true, &|n| format!("{} at spec.toml:9:1", n.reader))?;
    data::encode(&c.model, &frame, true)
}

#[test]
fn encodes_hash_vocab_dense_and_labels() {
    let ds = read("city, kind, age, label, amount, extra\nParis, b, 40, yes, 1.5, z\nRome, c, ?, no, 2, z\n").unwrap();
    assert_eq!(ds.rows, 2);
    assert_eq!(ds.cat[0], vec![hash_bucket("city", "Paris", 100), hash_bucket("city", "Rome", 100)]);
    assert_eq!(ds.cat[1], vec![2, 0], "vocabulary: b is row 2, unknown c is the OOV row 0");
    assert_eq!(ds.dense, vec![1.0, 0.0], "z-scored; `?` takes the fill value");
    assert_eq!(ds.labels, vec![vec![1.0, 0.0], vec![1.5, 2.0]]);
}

#[test]
fn a_missing_column_names_the_column_and_the_spec_line() {
    let e = read("city, kind, label, amount\nParis, a, yes, 1\n").unwrap_err().to_string();
    assert!(e.contains("`age`") && e.contains("spec.toml:9:1") && e.contains("t.csv"), "{e}");
}

#[test]
fn a_short_row_names_the_file_and_line() {
    let e = read("city, kind, age, label, amount\nParis, a, 1, yes, 1\nRome, a, 2\n").unwrap_err().to_string();
    assert!(e.contains("t.csv:3") && e.contains("expected 5 fields"), "{e}");
}

#[test]
fn a_non_number_names_file_line_and_column() {
    let e = read("city, kind, age, label, amount\nParis, a, old, yes, 1\n").unwrap_err().to_string();
    assert!(e.contains("t.csv:2") && e.contains("`age`") && e.contains("`old`"), "{e}");
}

#[test]
fn nan_and_missing_labels_are_errors() {
    let e = read("city, kind, age, label, amount\nParis, a, 1, yes, 1\nRome, a, 1, no, NaN\n").unwrap_err().to_string();
    assert!(e.contains("t.csv:3") && e.contains("spend"), "{e}");
    let e = read("city, kind, age, label, amount\nParis, a, 1, yes, ?\n").unwrap_err().to_string();
    assert!(e.contains("t.csv:2"), "{e}");
}

#[test]
fn binary_labels_must_be_zero_or_one_without_positive() {
    let spec = SPEC.replace("positive = \"yes\"\n", "");
    let c = compile_ok("csv.toml", &spec);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.csv");
    std::fs::write(&p, "city, kind, age, label, amount\nParis, a, 1, 1, 1\nRome, a, 1, 2, 1\n").unwrap();
    let frame = read_csv(&p, &fmt(), &data::needs(&c.model), true, &|_| String::new()).unwrap();
    let e = data::encode(&c.model, &frame, true).unwrap_err().to_string();
    assert!(e.contains("t.csv:3") && e.contains("expected 0 or 1"), "{e}");
}

#[test]
fn empty_and_absent_files_are_errors() {
    assert!(matches!(read("city, kind, age, label, amount\n"), Err(DataError::NoRows { .. })));
    let c = compile_ok("csv.toml", SPEC);
    let r =
        read_csv(std::path::Path::new("/nonexistent/x.csv"), &fmt(), &data::needs(&c.model), true, &|_| String::new());
    assert!(matches!(r, Err(DataError::Open { .. })));
}

#[test]
fn gzip_files_are_read() {
    use std::io::Write;
    let c = compile_ok("csv.toml", SPEC);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.csv.gz");
    let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(&p).unwrap(), flate2::Compression::fast());
    gz.write_all(b"city,kind,age,label,amount\nParis,a,1,yes,1\n").unwrap();
    gz.finish().unwrap();
    let frame = read_csv(&p, &fmt(), &data::needs(&c.model), true, &|_| String::new()).unwrap();
    assert_eq!(frame.rows, 1);
}

#[test]
fn one_column_can_feed_a_categorical_and_a_dense_feature() {
    let spec = SPEC.replace(
        "[[tasks]]\nname = \"buy\"",
        "[[features]]\nname = \"age_bucket\"\ncolumn = \"age\"\ntype = \"categorical\"\nhash_buckets = 10\n\n[[tasks]]\nname = \"buy\"",
    );
    let c = compile_ok("csv.toml", &spec);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.csv");
    std::fs::write(&p, "city, kind, age, label, amount\nParis, b, 40, yes, 1.5\n").unwrap();
    let frame = read_csv(&p, &fmt(), &data::needs(&c.model), true, &|_| String::new()).unwrap();
    let ds = data::encode(&c.model, &frame, true).unwrap();
    assert_eq!(ds.dense, vec![1.0], "age as a number, z-scored");
    assert_eq!(ds.cat[2], vec![hash_bucket("age_bucket", "40", 10)], "age as a category");
}

#[test]
fn a_positive_value_no_training_row_has_is_an_error_with_a_suggestion() {
    let c = compile_ok("csv.toml", &SPEC.replace("positive = \"yes\"", "positive = \"Yes\""));
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.csv");
    std::fs::write(&p, "city, kind, age, label, amount\nParis, a, 1, yes, 1\nRome, a, 1, no, 2\n").unwrap();
    let frame = read_csv(&p, &fmt(), &data::needs(&c.model), true, &|_| String::new()).unwrap();
    let e = data::encode_training(&c.model, &frame).unwrap_err().to_string();
    assert!(e.contains("`label`") && e.contains("\"Yes\"") && e.contains("did you mean `yes`?"), "{e}");
    // Held-out files may lack positives: plain encoding accepts them.
    assert_eq!(data::encode(&c.model, &frame, true).unwrap().labels[0], vec![0.0, 0.0]);
}
