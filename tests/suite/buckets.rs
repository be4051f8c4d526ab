//! Bucketized features: quantile boundaries fitted on the training rows (or pinned),
//! numbers cut into embedding rows, the boundaries pinned into the bundle's spec.

use multigate::data::{self, csv_source::read_csv, fit};
use multigate::ir::{CsvFormat, Encoding, FeatureKind};
use multigate::source::SourceFile;

use super::{compile_ok, mg_ok, multigate, spec_with_data, train_and_predict};

const SPEC: &str = r#"
[model]
name = "buckets"
[data]
source = "csv"
train = ["t.csv"]
missing = "?"
[[features]]
name = "age"
type = "categorical"
bucketize = 4
embedding_dim = 4
[[features]]
name = "city"
type = "categorical"
hash_buckets = 50
embedding_dim = 4
[[layers]]
kind = "mmoe"
experts = 2
units = [8]
[[tasks]]
name = "buy"
kind = "binary"
label = "label"
tower = [4]
"#;

fn fmt() -> CsvFormat {
    CsvFormat { delimiter: b',', header: true, columns: vec![], missing: Some("?".into()), skip_bad_rows: false }
}

#[test]
fn quantile_boundaries_equal_a_direct_computation() {
    // 1..=100 in four buckets: the 25th, 50th and 75th values (0-based 25, 50, 75).
    let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
    assert_eq!(fit::quantile_boundaries(&mut v, 4), vec![26.0, 51.0, 76.0]);
    // Ties merge buckets, and no boundary sits at the minimum: 90 zeros and 1..=10 in
    // ten buckets leave one cut, at 1 (zeros below it, the rest at or above).
    let mut v: Vec<f64> = std::iter::repeat_n(0.0, 90).chain((1..=10).map(f64::from)).collect();
    assert_eq!(fit::quantile_boundaries(&mut v, 10), vec![1.0]);
    // Against a direct computation on skewed values: each boundary is the k n / B-th
    // smallest value, and about n / B values fall in each bucket.
    let mut rng = multigate::rng::Rng::new(3);
    let raw: Vec<f64> = (0..10_000).map(|_| (rng.normal() * 2.0).exp()).collect();
    let mut sorted = raw.clone();
    sorted.sort_by(f64::total_cmp);
    let b = fit::quantile_boundaries(&mut raw.clone(), 8);
    let direct: Vec<f64> = (1..8).map(|k| sorted[k * 10_000 / 8]).collect();
    assert_eq!(b, direct);
    let mut counts = [0usize; 10];
    for &x in &raw {
        counts[Encoding::bucket(&b, x) as usize] += 1;
    }
    assert_eq!(counts[0], 0, "no value is missing");
    assert!(counts[1..9].iter().all(|&c| c == 1250), "{counts:?}");
}

#[test]
fn bucket_rows_follow_the_boundaries() {
    let b = [18.0, 30.0, 65.0];
    let rows: Vec<u32> =
        [f64::NAN, -5.0, 17.9, 18.0, 29.0, 30.0, 64.9, 65.0, 1e9].iter().map(|&x| Encoding::bucket(&b, x)).collect();
    assert_eq!(rows, vec![0, 1, 1, 2, 2, 3, 3, 4, 4]);
    assert_eq!(Encoding::Bucketize { boundaries: b.to_vec() }.rows(), 5);
}

/// A CSV of `n` rows: age 0..n-1 (every tenth missing), a city, a label.
fn csv(n: usize) -> String {
    let mut text = String::from("age,city,label\n");
    for i in 0..n {
        let age = if i % 10 == 9 { "?".to_string() } else { i.to_string() };
        text.push_str(&format!("{age},c{},{}\n", i % 7, (i * 7 % 3 == 0) as u8));
    }
    text
}

#[test]
fn fitted_boundaries_are_pinned_and_encode_the_rows() {
    let (dir, spec_path) = spec_with_data("spec.toml", SPEC, &csv(200));
    let src = SourceFile::read(&spec_path).unwrap();
    let c = multigate::pipeline::compile_source(&src).unwrap();
    assert!(fit::is_open(&c.model));
    let fitted = fit::fit(&c.model, &c.data, None, &|n| n.reader.clone()).unwrap();
    assert_eq!(fitted.buckets.len(), 1);
    let b = fitted.buckets[0].clone();
    // 180 ages (every tenth of 0..199 missing) in four buckets.
    let mut ages: Vec<f64> = (0..200).filter(|i| i % 10 != 9).map(|i| i as f64).collect();
    assert_eq!(b.boundaries, fit::quantile_boundaries(&mut ages, 4));
    assert_eq!((b.values, b.missing), (180, 20));
    let (spec, c) = multigate::run::pin_fitted(&src, c, fitted, &mut multigate::run::Silent).unwrap();
    let FeatureKind::Categorical { encoding: Encoding::Bucketize { boundaries }, .. } = &c.model.features[0].kind
    else {
        panic!("age should be bucketized: {:?}", c.model.features[0].kind)
    };
    assert_eq!(boundaries, &b.boundaries);
    // The bundle's spec carries the boundaries and compiles to the same encoding.
    let pinned = spec.to_toml();
    assert!(pinned.contains("boundaries = [") && !pinned.contains("bucketize ="), "{pinned}");
    let again = compile_ok("pinned.toml", &pinned);
    assert_eq!(again.model.features[0].kind, c.model.features[0].kind);
    // Encoding: each age's row by hand.
    let frame =
        read_csv(&dir.path().join("t.csv"), &fmt(), &data::needs(&c.model), true, &|n| n.reader.clone()).unwrap();
    let ds = data::encode(&c.model, &frame, true).unwrap();
    for (i, &row) in ds.cat[0].iter().enumerate() {
        let expected = if i % 10 == 9 { 0 } else { 1 + boundaries.iter().filter(|&&x| x <= i as f64).count() as u32 };
        assert_eq!(row, expected, "row {i}");
    }
}

#[test]
fn a_non_number_in_a_bucketized_column_names_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.csv"), "age,city,label\n3,a,1\nold,b,0\n").unwrap();
    let spec = SPEC.replace("bucketize = 4", "boundaries = [1.0, 10.0]");
    let c = compile_ok("spec.toml", &spec);
    let e = read_csv(&dir.path().join("t.csv"), &fmt(), &data::needs(&c.model), true, &|n| n.reader.clone())
        .and_then(|f| data::encode(&c.model, &f, true))
        .unwrap_err()
        .to_string();
    assert!(e.contains("t.csv:3") && e.contains("`age`") && e.contains("old"), "{e}");
}

#[test]
fn a_constant_column_cannot_be_bucketized() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.csv"), "age,city,label\n5,a,1\n5,b,0\n5,c,1\n").unwrap();
    std::fs::write(dir.path().join("spec.toml"), SPEC).unwrap();
    let (code, _, err) = multigate(&["fit", dir.path().join("spec.toml").to_str().unwrap()], &[]);
    assert_eq!(code, Some(1), "a data error: {err}");
    assert!(err.contains("feature `age`") && err.contains("all equal to 5") && err.contains("boundaries"), "{err}");
}

/// Through the CLI: `fit` prints the buckets, training pins them into the bundle, and
/// the bundle predicts rows it reads as text.
#[test]
fn a_bucketized_model_trains_and_predicts_through_the_cli() {
    let (dir, spec) =
        spec_with_data("spec.toml", &SPEC.replace("[[layers]]", "[train]\nepochs = 2\n\n[[layers]]"), &csv(600));
    let out = mg_ok(&["fit", spec.to_str().unwrap()]);
    assert!(out.contains("feature age") && out.contains("4 bucket(s) from 540 value(s), 60 row(s) missing"), "{out}");
    let (bundle, preds) = train_and_predict(&spec, &dir.path().join("t.csv"));
    let stored = std::fs::read_to_string(bundle.join("spec.toml")).unwrap();
    assert!(stored.contains("boundaries = ["), "{stored}");
    assert_eq!(preds.lines().count(), 601, "a header and a row per input row");
}

/// Both syntaxes say it, and `fmt` carries it from one to the other.
#[test]
fn the_dsl_says_it_too_and_fmt_carries_it_across() {
    use multigate::spec::{format, Syntax};
    let toml = SPEC.replace("bucketize = 4", "boundaries = [18, 30.5, 65]");
    let c = compile_ok("b.toml", &toml);
    let spec = multigate::spec::parse(&SourceFile::from_text("b.toml", toml.as_str())).unwrap();
    let dsl = format(&spec, None, Syntax::Dsl);
    assert!(dsl.contains("boundaries = [18.0, 30.5, 65.0]"), "{dsl}");
    let from_dsl = compile_ok("b.mg", &dsl);
    assert_eq!(from_dsl.model.features[0].kind, c.model.features[0].kind);
    assert_eq!(
        c.model.features[0].kind,
        FeatureKind::Categorical {
            encoding: Encoding::Bucketize { boundaries: vec![18.0, 30.5, 65.0] },
            dim: 4,
            bag: None
        }
    );
    let back =
        format(&multigate::spec::parse(&SourceFile::from_text("b.mg", dsl.as_str())).unwrap(), None, Syntax::Toml);
    assert_eq!(compile_ok("back.toml", &back).model.features[0].kind, c.model.features[0].kind);
    // An open count in the DSL.
    let open = dsl.replace("boundaries = [18.0, 30.5, 65.0]", "bucketize = 10");
    let c = compile_ok("open.mg", &open);
    assert_eq!(
        c.model.features[0].kind,
        FeatureKind::Categorical { encoding: Encoding::FitBuckets { buckets: 10 }, dim: 4, bag: None }
    );
    assert!(c.model.to_string().contains("bucketize(10 quantile buckets fitted on the training rows + missing)"));
}
