//! Shared embedding tables: a categorical feature with `table = "x"` reads through
//! feature x's table, with x's encoding (one value, one row, whichever column it is in).

use candle_core::Device;
use multigate::backend::candle::{Batch, CandleModel};
use multigate::data::{self, csv_source::read_csv};
use multigate::ir::{CsvFormat, FeatureId};
use multigate::source::SourceFile;
use multigate::train::adam::{Adam, AdamConfig};

use super::{compile_ok, spec_with_data, train_and_predict};

const SPEC: &str = r#"
model shared {
  data csv(train = ["t.csv"])
  feature item: categorical(hash = 1000) embed 6
  feature clicked: categorical(table = item)
  feature user: categorical embed 4
  feature last_user: categorical(table = user)
  layer mmoe { experts 2 x [8] relu }
  task ctr: binary(label = "label") tower [4]
  train { lazy_adam batch 64 epochs 1 seed 1 }
}
"#;

fn csv(n: usize) -> String {
    let mut text = String::from("item,clicked,user,last_user,label\n");
    for i in 0..n {
        text.push_str(&format!("i{},i{},u{},u{},{}\n", i % 13, (i + 5) % 17, i % 4, (i + 1) % 6, (i % 3 == 0) as u8));
    }
    text
}

#[test]
fn a_shared_table_is_the_owners_table_and_encoding() {
    let c = compile_ok("s.mg", SPEC);
    let m = &c.model;
    assert_eq!(m.features[1].shares, Some(FeatureId(0)));
    assert_eq!(m.features[1].kind, m.features[0].kind, "hash(1000), 6 wide");
    assert_eq!(m.features[3].shares, Some(FeatureId(2)));
    let tables: Vec<String> =
        m.parameters().into_iter().filter(|p| p.name.ends_with(".embedding")).map(|p| p.name).collect();
    assert_eq!(tables, ["features.item.embedding", "features.user.embedding"]);
    let text = m.to_string();
    assert!(text.contains("feature clicked: categorical hash(1000), the table of item"), "{text}");
    // Both syntaxes say it, and fmt carries it across.
    let spec = multigate::spec::parse(&SourceFile::from_text("s.mg", SPEC)).unwrap();
    let toml = multigate::spec::format(&spec, None, multigate::spec::Syntax::Toml);
    assert!(toml.contains("table = \"item\""), "{toml}");
    assert_eq!(compile_ok("s.toml", &toml).model.to_string(), m.to_string());
}

#[test]
fn one_value_takes_one_row_in_either_column_and_both_lookups_train_the_table() {
    let (dir, path) = spec_with_data("s.mg", SPEC, &csv(300));
    let src = SourceFile::read(&path).unwrap();
    let c = multigate::pipeline::compile_source(&src).unwrap();
    // The table's vocabulary is fitted on the columns of both features reading it; both
    // get it.
    let fitted = data::fit::fit(&c.model, &c.data, None, &|n| n.reader.clone()).unwrap();
    assert_eq!(fitted.vocabularies.len(), 1, "one table, one vocabulary");
    let mut users = fitted.vocabularies[0].values.clone();
    users.sort();
    assert_eq!(users, ["u0", "u1", "u2", "u3", "u4", "u5"], "u4 and u5 appear as last_user only");
    let (_, c) = multigate::run::pin_fitted(&src, c, fitted, &mut multigate::run::Silent).unwrap();
    assert_eq!(c.model.features[3].kind, c.model.features[2].kind);
    let format = CsvFormat { delimiter: b',', header: true, columns: vec![], missing: None, skip_bad_rows: false };
    let frame =
        read_csv(&dir.path().join("t.csv"), &format, &data::needs(&c.model), true, &|n| n.reader.clone()).unwrap();
    let ds = data::encode(&c.model, &frame, true).unwrap();
    // Row i's clicked item is i + 5 mod 17; it equals row j's item where j = i + 5 (< 13).
    for i in 0..8 {
        assert_eq!(ds.cat[1][i], ds.cat[0][i + 5], "row {i}: i{} in either column", i + 5);
    }
    // A user takes one row whichever column names it; u4 and u5 (last_user only) have
    // rows of their own, not the out-of-vocabulary row 0.
    for i in 0..12 {
        let u = (i + 1) % 6;
        if u < 4 {
            assert_eq!(ds.cat[3][i], ds.cat[2][u], "row {i}");
        } else {
            assert!(ds.cat[3][i] > 0 && !ds.cat[2].contains(&ds.cat[3][i]), "row {i}: u{u}");
        }
    }
    // One table var; a lazy step moves rows looked up through either feature.
    let model = CandleModel::new(&c.model, 3, &Device::Cpu).unwrap();
    let id = |f: usize| model.table(f).unwrap().as_tensor().id();
    assert_eq!(id(1), id(0));
    let before = model.table(0).unwrap().as_tensor().to_vec2::<f32>().unwrap();
    let mut opt = Adam::new(model.vars().to_vec(), AdamConfig { lazy: true, ..AdamConfig::from(&c.train) }).unwrap();
    let batch = Batch::gather(&ds, &[0], &Device::Cpu).unwrap();
    let loss = multigate::train::batch_loss(&model, &batch, &mut multigate::rng::Rng::new(1)).unwrap();
    assert_eq!(loss.lookups.iter().filter(|l| l.var == loss.lookups[0].var).count(), 2, "two lookups of one table");
    let grads = loss.total.backward().unwrap();
    opt.step(&[grads], &loss.lookups, 0.01).unwrap();
    let after = model.table(0).unwrap().as_tensor().to_vec2::<f32>().unwrap();
    let changed: Vec<usize> = (0..after.len()).filter(|&r| after[r] != before[r]).collect();
    let mut expected = vec![ds.cat[0][0] as usize, ds.cat[1][0] as usize];
    expected.sort_unstable();
    assert_eq!(changed, expected, "the item row and the clicked row, nothing else");
}

#[test]
fn a_table_must_be_another_categorical_that_owns_one() {
    let bad = |from: &str, to: &str| -> String {
        let text = SPEC.replace(from, to);
        let src = SourceFile::from_text("s.mg", text.as_str());
        match multigate::pipeline::compile_source(&src) {
            Ok(_) => panic!("should not compile:\n{text}"),
            Err(e) => e.render(Some(&src), false),
        }
    };
    let e = bad("table = item)", "table = itme)");
    assert!(e.contains("itme") && e.contains("item"), "unknown, with a did-you-mean: {e}");
    let e = bad("table = item)", "table = clicked)");
    assert!(e.contains("another feature"), "{e}");
    let e = bad("table = user)", "table = clicked)");
    assert!(e.contains("a feature with a table of its own"), "{e}");
    let e = bad("table = item)", "table = item, hash = 10)");
    assert!(e.contains("`hash_buckets` does not apply to a feature reading another's table"), "{e}");
    let e = bad("feature user: categorical embed 4", "feature user: dense");
    assert!(e.contains("a categorical feature"), "{e}");
}

#[test]
fn a_model_with_shared_tables_trains_and_predicts_through_the_cli() {
    let (dir, spec) = spec_with_data("s.mg", SPEC, &csv(400));
    let (_, preds) = train_and_predict(&spec, &dir.path().join("t.csv"));
    assert_eq!(preds.lines().count(), 401, "a header and a row per input row");
}
