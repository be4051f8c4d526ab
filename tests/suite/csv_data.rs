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
    CsvFormat { delimiter: b',', header: true, columns: vec![], missing: Some("?".into()), skip_bad_rows: false }
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
    // A literal NaN is not taken as missing unless the spec says so...
    let e = read("city, kind, age, label, amount\nParis, a, 1, yes, 1\nRome, a, 1, no, NaN\n").unwrap_err().to_string();
    assert!(e.contains("t.csv:3") && e.contains("`amount`") && e.contains("missing = \"NaN\""), "{e}");
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

/// Reads `text` as `t.csv` (or `t.csv.gz` bytes) with `spec`, returning the error text.
fn read_with(spec: &str, name: &str, bytes: &[u8]) -> Result<data::Dataset, String> {
    let c = compile_ok("csv.toml", spec);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    let frame = read_csv(&p, &fmt(), &data::needs(&c.model), true, &|n| n.reader.clone()).map_err(|e| e.to_string())?;
    data::encode(&c.model, &frame, true).map_err(|e| e.to_string())
}

#[test]
fn bad_numbers_are_errors_naming_file_line_column_and_reason() {
    let head = "city, kind, age, label, amount\n";
    let case = |row: &str| read_with(SPEC, "t.csv", format!("{head}Paris, a, 1, yes, 1\n{row}\n").as_bytes());
    // Literal infinities and NaN are not missing values (the spec's token is `?`).
    for lit in ["inf", "-inf", "NaN", "infinity"] {
        let e = case(&format!("Rome, a, {lit}, no, 2")).unwrap_err();
        assert!(e.contains("t.csv:3") && e.contains("`age`") && e.contains("not a finite number"), "{lit}: {e}");
    }
    // Beyond f32.
    let e = case("Rome, a, 1e39, no, 2").unwrap_err();
    assert!(e.contains("t.csv:3") && e.contains("beyond the range of a 32-bit float"), "{e}");
    // An empty label with `positive` set is missing, not 0.
    let e = case("Rome, a, 3, , 2").unwrap_err();
    assert!(e.contains("t.csv:3") && e.contains("the label of task `buy` is missing"), "{e}");
    // An empty regression label too.
    let e = case("Rome, a, 3, no, ").unwrap_err();
    assert!(e.contains("t.csv:3") && e.contains("the label of task `spend` is missing"), "{e}");
    // A declared missing token is read as missing.
    let nan_missing = |text: &str| {
        let c = compile_ok("csv.toml", SPEC);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.csv");
        std::fs::write(&p, text).unwrap();
        let f = CsvFormat { missing: Some("NaN".into()), ..fmt() };
        let frame = read_csv(&p, &f, &data::needs(&c.model), true, &|n| n.reader.clone()).unwrap();
        data::encode(&c.model, &frame, true).map_err(|e| e.to_string())
    };
    let ds = nan_missing(&format!("{head}Paris, a, NaN, yes, 1\n")).unwrap();
    assert_eq!(ds.dense, vec![0.0], "NaN declared missing takes the fill (30, z-scored to 0)");
}

#[test]
fn log1p_of_a_negative_value_is_an_error_not_a_clamp() {
    let spec = SPEC.replace("transform = \"zscore\"\nmean = 30.0\nstd = 10.0\nfill = 30.0", "transform = \"log1p\"");
    let ok =
        read_with(&spec, "t.csv", b"city, kind, age, label, amount\nParis, a, 0, yes, 1\nRome, a, 3, no, 1\n").unwrap();
    assert_eq!(ok.dense, vec![0.0, 4f32.ln()]);
    let e = read_with(&spec, "t.csv", b"city, kind, age, label, amount\nParis, a, 1, yes, 1\nRome, a, -5, no, 1\n")
        .unwrap_err();
    assert!(e.contains("t.csv:3") && e.contains("`age`") && e.contains("-5 is negative"), "{e}");
}

#[test]
fn a_duplicated_header_column_names_both_positions() {
    let e = read_with(SPEC, "t.csv", b"city, age, kind, age, label, amount\nParis, 1, a, 2, yes, 1\n").unwrap_err();
    assert!(e.contains("t.csv:1") && e.contains("`age`") && e.contains("fields 2 and 4"), "{e}");
}

#[test]
fn quoted_fields_with_commas_read_in_the_comma_space_format() {
    let ds = read_with(
        SPEC,
        "t.csv",
        b"city, kind, age, label, amount\n\"Paris, France\", a, 40, yes, 1\n   \"Rome, \"\"IT\"\"\", b, 30, no, 2\n",
    )
    .unwrap();
    assert_eq!(ds.cat[0], vec![hash_bucket("city", "Paris, France", 100), hash_bucket("city", "Rome, \"IT\"", 100)]);
    assert_eq!(ds.cat[1], vec![1, 2]);
}

#[test]
fn broken_gzip_and_folders_name_the_file_and_what_is_wrong() {
    use std::io::Write;
    let text = b"city, kind, age, label, amount\nParis, a, 40, yes, 1\nRome, b, 30, no, 2\n";
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text).unwrap();
    let gz = gz.finish().unwrap();
    assert_eq!(read_with(SPEC, "t.csv.gz", &gz).unwrap().rows, 2);
    // Truncated.
    let e = read_with(SPEC, "t.csv.gz", &gz[..gz.len() - 10]).unwrap_err();
    assert!(e.contains("t.csv.gz") && e.contains("truncated") && e.contains("compressed bytes"), "{e}");
    assert!(!e.contains(":0:"), "no line 0: {e}");
    // Trailing garbage after a complete stream.
    let mut tail = gz.clone();
    tail.extend_from_slice(b"garbage that is not gzip");
    let e = read_with(SPEC, "t.csv.gz", &tail).unwrap_err();
    assert!(e.contains("t.csv.gz") && e.contains("trailing garbage"), "{e}");
    // A folder where a file should be.
    let c = compile_ok("csv.toml", SPEC);
    let dir = tempfile::tempdir().unwrap();
    let e = read_csv(dir.path(), &fmt(), &data::needs(&c.model), true, &|n| n.reader.clone()).unwrap_err().to_string();
    assert!(e.contains(&dir.path().display().to_string()) && e.contains("is a folder"), "{e}");
}

/// Each split's label spread (positive rate of a binary task, class shares of a
/// multiclass one) equals a direct count; a masked task counts its labelled rows only.
#[test]
fn label_spread_equals_a_direct_count() {
    use multigate::data::{label_spread, LabelStats, Splits};
    let c = compile_ok("csv.toml", SPEC);
    let mut ds = read("city, kind, age, label, amount\nParis, a, 1, yes, 1\nRome, a, 1, no, 2\nOslo, b, 3, yes, 3\nNice, b, 4, no, 4\nLyon, a, 5, yes, 5\n").unwrap();
    assert_eq!(
        LabelStats::of(&c.model, 0, &ds),
        Some(LabelStats { labelled: 5, positive_rate: Some(0.6), class_shares: None })
    );
    assert_eq!(LabelStats::of(&c.model, 1, &ds), None, "a regression has no spread");
    ds.labels[0][4] = f32::NAN;
    let spread = label_spread(
        &c.model,
        &Splits {
            train: ds.clone(),
            validation: ds,
            test: None,
            stream: None,
            validation_stream: None,
            test_stream: None,
        },
    );
    assert_eq!(spread.len(), 1);
    assert_eq!(spread[0].task, "buy");
    assert_eq!(spread[0].train, Some(LabelStats { labelled: 4, positive_rate: Some(0.5), class_shares: None }));
    assert!(spread[0].test.is_none());
}

/// Training labels all of one class: the run says so (and still trains).
#[test]
fn a_binary_task_with_one_label_class_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("city,kind,age,label,amount\n");
    for i in 0..300 {
        text.push_str(&format!("c{},a,{},0,{}\n", i % 9, i % 50, i % 7));
    }
    std::fs::write(dir.path().join("t.csv"), text).unwrap();
    let spec = dir.path().join("spec.toml");
    let text = SPEC
        .replace("positive = \"yes\"\n", "")
        .replace("[[tasks]]\nname = \"buy\"", "[train]\nepochs = 1\n[[tasks]]\nname = \"buy\"");
    std::fs::write(&spec, text).unwrap();
    let (code, out, err) = super::multigate(
        &["compile-and-train", spec.to_str().unwrap(), "--out", dir.path().join("b").to_str().unwrap()],
        &[],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("labels buy: positive 0.00% train"), "{out}");
    assert!(format!("{out}{err}").contains("every training label of task `buy` is 0"), "{out}{err}");
}
