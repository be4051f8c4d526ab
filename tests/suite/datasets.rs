//! Data at scale: Parquet beside CSV, folders, globs, Hive partitions and date windows.

use std::path::Path;
use std::sync::Arc;

use multigate::data::{self, source, Column, Dataset};
use multigate::ir::{CsvFormat, DataSource};

use super::{compile_ok, repo, shared_data};

/// Two encodings are the same rows, value for value (NaN equal to NaN).
fn assert_same(a: &Dataset, b: &Dataset) {
    assert_eq!(a.rows, b.rows);
    assert_eq!(a.cat, b.cat, "categorical rows differ");
    assert_eq!(a.dense_width, b.dense_width);
    let same = |x: &f32, y: &f32| x == y || (x.is_nan() && y.is_nan());
    assert!(a.dense.iter().zip(&b.dense).all(|(x, y)| same(x, y)), "dense values differ");
    for (x, y) in a.labels.iter().zip(&b.labels) {
        assert!(x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q)), "labels differ");
    }
}

const SPEC: &str = r#"
[model]
name = "d"

[data]
source = "csv"
train = ["rows.csv"]
missing = "NA"

[[features]]
name = "age"
type = "dense"
transform = "zscore"
mean = 40.0
std = 10.0

[[features]]
name = "city"
type = "categorical"
hash_buckets = 64

[[features]]
name = "code"
type = "categorical"
hash_buckets = 64

[[tasks]]
name = "click"
kind = "binary"
label = "click"

[[tasks]]
name = "spend"
kind = "regression"
label = "spend"
"#;

const ROWS: &str = "age,city,code,click,spend\n31,paris,7,1,2.5\nNA,rome,12,0,0\n45,,7,0,1e3\n52,oslo,3,1,-1.25\n";

fn encode(model: &multigate::ir::Model, path: &Path, format: &CsvFormat) -> Dataset {
    let needs = data::needs(&model);
    let frame = source::read_path(path, format, &needs, true, &|n| n.reader.clone()).unwrap();
    data::encode(model, &frame, true).unwrap()
}

fn csv_format(c: &multigate::lower::Compiled) -> CsvFormat {
    let DataSource::Csv(csv) = &c.data.source else { panic!("csv spec") };
    csv.format.clone()
}

#[test]
fn parquet_and_csv_of_the_same_rows_encode_identically() {
    let dir = tempfile::tempdir().unwrap();
    let c = compile_ok("d.toml", SPEC);
    let format = csv_format(&c);
    let csv = dir.path().join("rows.csv");
    std::fs::write(&csv, ROWS).unwrap();
    let from_csv = encode(&c.model, &csv, &format);
    // The frame as Parquet (numbers as FLOAT, text as UTF8, missing as null).
    let frame = source::read_path(&csv, &format, &data::needs(&c.model), true, &|n| n.reader.clone()).unwrap();
    let pq = dir.path().join("rows.parquet");
    data::parquet_source::write_parquet(&frame, &pq).unwrap();
    assert_same(&from_csv, &encode(&c.model, &pq, &format));
    assert_eq!(from_csv.dense[1], (0.0 - 40.0) / 10.0, "NA reads as missing: the fill, standardized");
}

#[test]
fn parquet_types_map_as_csv_fields_would() {
    use arrow_array::{ArrayRef, BooleanArray, DictionaryArray, Float64Array, Int64Array, RecordBatch};
    use arrow_schema::{DataType, Field, Schema};
    let dir = tempfile::tempdir().unwrap();
    // Spark's types: a long id, a double, a boolean label, a dictionary-encoded string.
    let city: DictionaryArray<arrow_array::types::Int32Type> =
        vec![Some("paris"), None, Some("rome")].into_iter().collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![Some(7), Some(12), None])),
        Arc::new(Float64Array::from(vec![Some(31.0), None, Some(52.0)])),
        Arc::new(BooleanArray::from(vec![true, false, true])),
        Arc::new(city),
        Arc::new(Float64Array::from(vec![2.5, 0.0, 1.0])),
    ];
    let schema = Arc::new(Schema::new(vec![
        Field::new("code", DataType::Int64, true),
        Field::new("age", DataType::Float64, true),
        Field::new("click", DataType::Boolean, false),
        Field::new("city", DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)), true),
        Field::new("spend", DataType::Float64, false),
    ]));
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let pq = dir.path().join("typed.parquet");
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&pq).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    // The same rows as CSV text.
    let csv = dir.path().join("typed.csv");
    std::fs::write(&csv, "code,age,click,city,spend\n7,31,1,paris,2.5\n12,,0,,0\n,52,1,rome,1\n").unwrap();
    let c = compile_ok("d.toml", SPEC);
    let format = CsvFormat::default_csv();
    assert_same(&encode(&c.model, &csv, &format), &encode(&c.model, &pq, &format));
    // And only the columns asked for are decoded: the frame holds nothing else.
    let needs: Vec<_> = data::needs(&c.model).into_iter().filter(|n| n.column == "code").collect();
    let frame = source::read_path(&pq, &format, &needs, false, &|n| n.reader.clone()).unwrap();
    assert_eq!(frame.names, ["code"]);
    let Some(Column::Cat { dict, codes }) = frame.column_as("code", false) else { panic!() };
    let text: Vec<&str> = codes.iter().map(|&k| dict[k as usize].as_str()).collect();
    assert_eq!(text, ["7", "12", ""]);
}

#[test]
fn a_damaged_parquet_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let c = compile_ok("d.toml", SPEC);
    let format = csv_format(&c);
    let csv = dir.path().join("rows.csv");
    std::fs::write(&csv, ROWS).unwrap();
    let frame = source::read_path(&csv, &format, &data::needs(&c.model), true, &|n| n.reader.clone()).unwrap();
    let pq = dir.path().join("rows.parquet");
    data::parquet_source::write_parquet(&frame, &pq).unwrap();
    let bytes = std::fs::read(&pq).unwrap();
    for cut in [bytes.len() / 2, bytes.len() - 3, 4] {
        std::fs::write(&pq, &bytes[..cut]).unwrap();
        let e = source::read_path(&pq, &format, &data::needs(&c.model), true, &|n| n.reader.clone()).unwrap_err();
        assert!(e.to_string().contains("rows.parquet"), "{e}");
    }
    // A misspelled column is named with a suggestion, as for CSV.
    std::fs::write(&pq, &bytes).unwrap();
    let typo = compile_ok("d.toml", &SPEC.replace("name = \"city\"", "name = \"cty\""));
    let e = source::read_path(&pq, &format, &data::needs(&typo.model), true, &|n| n.reader.clone()).unwrap_err();
    assert!(e.to_string().contains("did you mean `city`?"), "{e}");
}

/// `root/dt=DATE/part-0.csv` for each date, `n` rows each whose `age` is the day.
fn partitions(root: &Path, days: &[&str]) {
    for (i, d) in days.iter().enumerate() {
        let dir = root.join(format!("dt={d}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut rows = String::from("age,city,code,click,spend\n");
        for r in 0..(i + 2) {
            rows += &format!("{},c{r},{r},{},{r}.5\n", 20 + i, r % 2);
        }
        std::fs::write(dir.join("part-00000.csv"), rows).unwrap();
    }
    std::fs::write(root.join("_SUCCESS"), "").unwrap();
}

#[test]
fn folders_globs_and_hive_partitions_are_read_with_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let days = ["2026-11-24", "2026-11-25", "2026-11-26", "2026-11-27", "2026-11-28"];
    partitions(dir.path(), &days);
    let parts = source::expand(dir.path()).unwrap();
    assert_eq!(parts.len(), 5, "the _SUCCESS marker is not data: {parts:?}");
    assert_eq!(parts[0].keys, [("dt".to_string(), "2026-11-24".to_string())]);
    let globbed = source::expand(&dir.path().join("dt=2026-11-2?")).unwrap();
    assert_eq!(globbed.len(), 5);
    let one = source::expand(&dir.path().join("dt=*-27").join("part-*.csv")).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].keys, [("dt".to_string(), "2026-11-27".to_string())]);
    assert!(source::expand(&dir.path().join("dt=1999-*")).is_err(), "a glob that matches nothing is an error");
    // A feature may read the partition key as a column.
    let spec = SPEC.replace("name = \"code\"", "name = \"dt\"");
    let c = compile_ok("d.toml", &spec);
    let frame =
        source::read_path(dir.path(), &csv_format(&c), &data::needs(&c.model), true, &|n| n.reader.clone()).unwrap();
    assert_eq!(frame.rows, 2 + 3 + 4 + 5 + 6);
    let Some(Column::Cat { dict, codes }) = frame.column_as("dt", false) else { panic!("dt column") };
    assert_eq!(dict[codes[0] as usize], "2026-11-24");
    assert_eq!(dict[codes[frame.rows - 1] as usize], "2026-11-28");
    // Rows of later parts are described by their own file and line.
    assert!(frame.origin.describe(2).contains("dt=2026-11-25") && frame.origin.describe(2).ends_with(":2"));
}

#[test]
fn a_date_window_trains_on_the_last_days_and_validates_on_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let days = ["2026-11-24", "2026-11-25", "2026-11-26", "2026-11-27", "2026-11-28"];
    partitions(dir.path(), &days);
    let spec = SPEC.replace(
        "train = [\"rows.csv\"]",
        &format!(
            "train = [{:?}]\npartition_date = \"dt\"\ncur_date = \"2026-11-27\"\ndays = 3",
            dir.path().display().to_string()
        ),
    );
    let c = compile_ok("d.toml", &spec);
    let (splits, _) = data::load_splits(&c.model, &c.data, None, &|n| n.reader.clone()).unwrap();
    // 25, 26, 27 train (3 + 4 + 5 rows), 28 validates (6), 24 is outside.
    assert_eq!((splits.train.rows, splits.validation.rows), (12, 6));
    let ages: std::collections::BTreeSet<i32> =
        splits.train.dense.iter().map(|z| (z * 10.0 + 40.0).round() as i32).collect();
    assert_eq!(ages.into_iter().collect::<Vec<_>>(), [21, 22, 23]);
    // The window moves with --cur-date / --days (here through the IR), and an empty
    // window is an error, not an empty run.
    let mut moved = c.clone();
    let DataSource::Csv(csv) = &mut moved.data.source else { unreachable!() };
    csv.window.as_mut().unwrap().cur = "2026-12-25".into();
    let e = data::load_splits(&moved.model, &moved.data, None, &|n| n.reader.clone()).unwrap_err();
    assert!(e.to_string().contains("no `dt` partition"), "{e}");
    // Half a window, or a date that is not one, is a spec error at its line.
    let src = multigate::source::SourceFile::from_text(
        "d.toml",
        spec.replace("cur_date = \"2026-11-27\"", "cur_date = \"27/11/2026\""),
    );
    let e = multigate::pipeline::compile_source(&src).err().unwrap().render(Some(&src), false);
    assert!(e.contains("cur_date") && e.contains("2026-11-28"), "{e}");
}

#[test]
fn census_as_parquet_encodes_like_the_csv() {
    let Some(root) = shared_data("census CSV vs Parquet") else { return };
    let c = super::compile_path(&repo().join("models/census_income_mmoe.toml"));
    let DataSource::Csv(csv) = &c.data.source else { panic!() };
    let needs = data::needs(&c.model);
    let test = root.join("census-income-kdd/paper-split/test.gz");
    let frame = source::read_path(&test, &csv.format, &needs, true, &|n| n.reader.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pq = dir.path().join("test.parquet");
    data::parquet_source::write_parquet(&frame, &pq).unwrap();
    let a = data::encode(&c.model, &frame, true).unwrap();
    let b = encode(&c.model, &pq, &csv.format);
    assert_eq!(a.rows, 49_881);
    assert_same(&a, &b);
}

const BAD_SPEC: &str = r#"
[model]
name = "bad"

[data]
source = "csv"
train = ["rows.csv"]
validation_fraction = 0.25
POLICY

[[features]]
name = "age"
type = "dense"
transform = "zscore"
mean = 40.0
std = 10.0

[[features]]
name = "city"
type = "categorical"
hash_buckets = 64

[[features]]
name = "spend"
type = "dense"
transform = "log1p"

[[tasks]]
name = "click"
kind = "binary"
label = "click"

[[tasks]]
name = "minutes"
kind = "regression"
label = "minutes"
"#;

/// 20 good rows and one of each kind of bad row.
fn bad_rows_csv() -> Vec<u8> {
    let mut rows = b"age,city,spend,click,minutes\n".to_vec();
    for i in 0..20 {
        rows.extend(format!("{},c{},{},{},{}.5\n", 20 + i, i % 3, i, i % 2, i).as_bytes());
    }
    for bad in [
        &b"31,paris,2,1\n"[..], // ragged
        b"abc,paris,2,1,5\n",   // not a number
        b"31,paris,2,nan,5\n",  // a NaN label
        b"31,paris,2,2,5\n",    // a binary label that is not 0/1
        b"31,paris,2,,5\n",     // a missing label
        b"31,par\xff,2,1,5\n",  // invalid UTF-8
        b"31,paris,-3,1,5\n",   // a negative count for log1p
    ] {
        rows.extend_from_slice(bad);
    }
    rows
}

fn load_bad(policy: &str, data: &[u8], name: &str) -> Result<(data::Splits, data::LoadInfo), String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(name), data).unwrap();
    let spec = BAD_SPEC.replace("POLICY", policy).replace("rows.csv", &dir.path().join(name).display().to_string());
    let c = compile_ok("bad.toml", &spec);
    data::load_splits(&c.model, &c.data, None, &|n| n.reader.clone()).map_err(|e| e.to_string())
}

#[test]
fn every_bad_row_kind_fails_by_default_and_is_counted_when_skipped() {
    let rows = bad_rows_csv();
    // fail (the default): the first bad row, with its file and line.
    let e = load_bad("", &rows, "rows.csv").unwrap_err();
    assert!(e.contains("rows.csv:22") && e.contains("expected 5 fields, found 4"), "{e}");
    // skip: every kind counted by reason, the good rows kept.
    let (splits, info) = load_bad("bad_rows = \"skip\"\nmax_bad_fraction = 0.5", &rows, "rows.csv").unwrap();
    assert_eq!(splits.train.rows + splits.validation.rows, 20);
    assert_eq!(info.skipped.total, 7, "{:?}", info.skipped);
    assert_eq!(info.rows_read, 27);
    let count = |r: &str| info.skipped.by_reason.get(r).copied().unwrap_or(0);
    assert_eq!(count("ragged row"), 1, "{:?}", info.skipped);
    assert_eq!(count("unparsable number"), 2, "{:?}", info.skipped); // `abc` and the NaN label
    assert_eq!(count("binary label not 0 or 1"), 1, "{:?}", info.skipped);
    assert_eq!(count("missing label"), 1, "{:?}", info.skipped);
    assert_eq!(count("invalid UTF-8"), 1, "{:?}", info.skipped);
    assert_eq!(count("value outside its transform's domain"), 1, "{:?}", info.skipped);
    assert_eq!(info.skipped.first.len(), 5);
    assert!(info.skipped.first[0].contains("rows.csv:22"), "{:?}", info.skipped.first);
    assert!(!info.warn_skipped);
    let (_, info) = load_bad("bad_rows = \"warn\"\nmax_bad_fraction = 0.5", &rows, "rows.csv").unwrap();
    assert!(info.warn_skipped && info.skipped.total == 7);
    // Past the cap (a count, or the default 1%), skipping fails anyway, saying why.
    let e = load_bad("bad_rows = \"skip\"\nmax_bad_rows = 3", &rows, "rows.csv").unwrap_err();
    assert!(e.contains("7 bad rows of 27") && e.contains("max_bad_rows = 3"), "{e}");
    let e = load_bad("bad_rows = \"skip\"", &rows, "rows.csv").unwrap_err();
    assert!(e.contains("max_bad_fraction = 0.01"), "{e}");
}

#[test]
fn a_truncated_gzip_file_is_a_counted_bad_read_when_skipping() {
    use std::io::Write;
    let mut rows = b"age,city,spend,click,minutes\n".to_vec();
    for i in 0..5000 {
        rows.extend(format!("{},c{},{},{},{}.5\n", 20 + i % 50, i % 3, i % 7, i % 2, i % 11).as_bytes());
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&rows).unwrap();
    let gz = gz.finish().unwrap();
    let cut = &gz[..gz.len() * 2 / 3];
    let e = load_bad("", cut, "rows.csv.gz").unwrap_err();
    assert!(e.contains("truncated"), "{e}");
    let (splits, info) =
        load_bad("bad_rows = \"skip\"\nmax_bad_rows = 1\nmax_bad_fraction = 1.0", cut, "rows.csv.gz").unwrap();
    assert_eq!(info.skipped.by_reason.get("unreadable data"), Some(&1), "{:?}", info.skipped);
    assert!(info.skipped.first[0].contains("truncated"), "{:?}", info.skipped.first);
    let kept = splits.train.rows + splits.validation.rows;
    assert!(kept > 1000 && kept < 5000, "the rows before the damage are kept: {kept}");
}

#[test]
fn parquet_rows_with_text_that_is_no_number_are_skipped_too() {
    use arrow_array::{ArrayRef, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    let dir = tempfile::tempdir().unwrap();
    let text = |v: Vec<&str>| -> ArrayRef { Arc::new(StringArray::from(v)) };
    let schema = Arc::new(Schema::new(
        ["age", "city", "spend", "click", "minutes"].map(|n| Field::new(n, DataType::Utf8, true)).to_vec(),
    ));
    let mut ages: Vec<&str> = vec!["30"; 200];
    ages[7] = "thirty";
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![text(ages), text(vec!["paris"; 200]), text(vec!["1"; 200]), text(vec!["0"; 200]), text(vec!["2.5"; 200])],
    )
    .unwrap();
    let pq = dir.path().join("rows.parquet");
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&pq).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let bytes = std::fs::read(&pq).unwrap();
    let e = load_bad("", &bytes, "rows.parquet").unwrap_err();
    assert!(e.contains("rows.parquet row 8") && e.contains("thirty"), "{e}");
    let (splits, info) = load_bad("bad_rows = \"skip\"", &bytes, "rows.parquet").unwrap();
    assert_eq!((info.skipped.total, splits.train.rows + splits.validation.rows), (1, 199));
}

#[test]
fn a_large_csv_parsed_in_parallel_stretches_keeps_lines_and_order() {
    // ~7 MB: several parallel blocks, then a quoted field that switches the rest of the
    // file to one reader. Errors name the right line before and after the switch.
    let dir = tempfile::tempdir().unwrap();
    let n = 400_000usize;
    let line_of = |row: usize| row + 2; // after the header
    let build = |bad_at: usize| {
        let mut s = String::with_capacity(n * 20);
        s.push_str("age,city,code,click,spend\n");
        for i in 0..n {
            if i == bad_at {
                s.push_str("x,c,1,0,1\n");
            } else if i == 300_000 {
                s.push_str("30,\"quoted, city\",1,0,1\n");
            } else {
                s += &format!("{},c{},{},{},{}\n", 20 + i % 50, i % 97, i % 5, i % 2, i % 7);
            }
        }
        s
    };
    let spec = SPEC.replace("rows.csv", &dir.path().join("big.csv").display().to_string());
    let c = compile_ok("d.toml", &spec);
    let format = csv_format(&c);
    for bad_at in [10_000usize, 250_000, 350_000] {
        std::fs::write(dir.path().join("big.csv"), build(bad_at)).unwrap();
        let e = source::read_path(&dir.path().join("big.csv"), &format, &data::needs(&c.model), true, &|n| {
            n.reader.clone()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains(&format!("big.csv:{}", line_of(bad_at))), "bad row {bad_at}: {e}");
    }
    // Rows in file order, every line number right.
    std::fs::write(dir.path().join("big.csv"), build(usize::MAX)).unwrap();
    let frame =
        source::read_path(&dir.path().join("big.csv"), &format, &data::needs(&c.model), true, &|n| n.reader.clone())
            .unwrap();
    assert_eq!(frame.rows, n);
    assert_eq!(frame.origin.lines.first(), Some(&2));
    assert!(frame.origin.lines.windows(2).all(|w| w[1] == w[0] + 1));
    let Some(Column::Num(age)) = frame.column_as("age", true) else { panic!() };
    assert!(age.iter().enumerate().filter(|(i, _)| *i != 300_000).all(|(i, &a)| a == (20 + i % 50) as f32));
    let Some(Column::Cat { dict, codes }) = frame.column_as("city", false) else { panic!() };
    assert_eq!(dict[codes[300_000] as usize], "quoted, city");
    assert_eq!(dict[codes[n - 1] as usize], format!("c{}", (n - 1) % 97));
}
