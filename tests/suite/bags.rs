//! Multi-valued categoricals (bags): several values per row, looked up in the feature's
//! table and pooled (sum, mean, max) into one embedding. Pooling is checked against a
//! computation by hand, its gradient likewise; padding trains nothing; CSV and Parquet
//! lists encode alike; bad weights are bad rows.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use multigate::backend::candle::{Batch, CandleModel};
use multigate::data::{self, csv_source::read_csv, hash::hash_bucket, Dataset};
use multigate::ir::CsvFormat;
use multigate::train::adam::{Adam, AdamConfig};

use super::{compile_ok, history_spec, mg_ok, spec_with_data, train_and_predict};

pub const SPEC: &str = r#"
model bags {
  data csv(train = ["t.csv"])
  feature item: categorical(vocab = ["a", "b", "c", "d", "e"]) embed 3
  feature hist: categorical(table = item, max_len = 3)
  feature tags: categorical(hash = 50, max_len = 4, pooling = sum, weights = tw) embed 3
  feature kw: categorical(vocab = ["x", "y", "z"], max_len = 3, pooling = max, separator = ";") embed 3
  layer mmoe { experts 2 x [4] }
  task ctr: binary(label = "label") tower [2]
  train { lazy_adam batch 4 epochs 1 seed 1 }
}
"#;

/// Row 0: two history items, weighted tags, two keywords. Row 1: every bag empty.
/// Row 2: a history of five (three kept), a keyword twice and one out of vocabulary.
/// Row 3: an unknown item twice, five tags (four kept), one keyword.
pub const ROWS: &str = "item,hist,tags,tw,kw,label
a,b|c,t1|t2,0.5|2,x;y,1
b,,,,,0
c,a| b |c|d|e,t1,3,y;y;x;q,1
d,zz|zz,t3|t4|t5|t6|t7,1|1|1|1|1,z,0
";

const FORMAT: CsvFormat =
    CsvFormat { delimiter: b',', header: true, columns: vec![], missing: None, skip_bad_rows: false };

pub fn encoded(spec: &str, rows: &str) -> (multigate::lower::Compiled, Dataset) {
    let (dir, _) = spec_with_data("s.mg", spec, rows);
    let c = compile_ok("s.mg", spec);
    let frame = read_csv(&dir.path().join("t.csv"), &FORMAT, &data::needs(&c.model), true, &|n| n.reader.clone())
        .expect("rows read");
    let ds = data::encode(&c.model, &frame, true).expect("rows encode");
    (c, ds)
}

fn table(model: &CandleModel, f: usize) -> Vec<Vec<f32>> {
    model.table(f).unwrap().as_tensor().to_vec2::<f32>().unwrap()
}

/// `sum_i w_i rows[i]`.
fn weighted(rows: &[(f32, &[f32])]) -> Vec<f32> {
    let mut out = vec![0.0; 3];
    for (w, r) in rows {
        for k in 0..3 {
            out[k] += w * r[k];
        }
    }
    out
}

fn close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-6, "{what}: {a:?} against {b:?}");
    }
}

#[test]
fn bags_encode_as_padded_ids_with_their_pooling_weights() {
    let (_, ds) = encoded(SPEC, ROWS);
    assert_eq!(ds.rows, 4);
    // hist (the item vocabulary: a = 1, ..., e = 5, unknown = 0), mean pooling.
    assert_eq!(ds.cat[1], [2, 3, 0, 0, 0, 0, 1, 2, 3, 0, 0, 0]);
    let third = 1.0 / 3.0;
    let hist = &ds.bags[1].as_ref().unwrap().weights;
    close(hist, &[0.5, 0.5, 0.0, 0.0, 0.0, 0.0, third, third, third, 0.5, 0.5, 0.0], "hist weights");
    // tags: hashed, the given weights (sum pooling), the first four of five.
    let h = |v: &str| hash_bucket("tags", v, 50);
    assert_eq!(&ds.cat[2][0..2], [h("t1"), h("t2")]);
    assert_eq!(&ds.cat[2][8..9], [h("t1")]);
    assert_eq!(&ds.cat[2][12..16], [h("t3"), h("t4"), h("t5"), h("t6")]);
    close(&ds.bags[2].as_ref().unwrap().weights[0..4], &[0.5, 2.0, 0.0, 0.0], "tags row 0");
    close(&ds.bags[2].as_ref().unwrap().weights[8..12], &[3.0, 0.0, 0.0, 0.0], "tags row 2");
    close(&ds.bags[2].as_ref().unwrap().weights[12..16], &[1.0; 4], "tags row 3");
    // kw, max pooling on `;`: a row once per table row (y twice is one y), q unknown (0).
    assert_eq!(ds.cat[3], [1, 2, 0, 0, 0, 0, 2, 1, 0, 3, 0, 0]);
    close(&ds.bags[3].as_ref().unwrap().weights, &[1., 1., 0., 0., 0., 0., 1., 1., 1., 1., 0., 0.], "kw");
    // A row selection carries the bags along.
    let picked = ds.select(&[2, 0]);
    assert_eq!(picked.cat[1], [1, 2, 3, 2, 3, 0]);
    assert_eq!(picked.bags[3].as_ref().unwrap().weights, [1.0, 1.0, 1.0, 1.0, 1.0, 0.0]);
}

#[test]
fn pooling_matches_a_computation_by_hand() {
    let (c, ds) = encoded(SPEC, ROWS);
    let model = CandleModel::new(&c.model, 7, &Device::Cpu).unwrap();
    let batch = Batch::gather(&ds, &[0, 1, 2, 3], &Device::Cpu).unwrap();
    let got = model.input_row(&batch).unwrap().to_vec2::<f32>().unwrap();
    let (item, tags, kw) = (table(&model, 0), table(&model, 2), table(&model, 3));
    let t = |v: &str| tags[hash_bucket("tags", v, 50) as usize].as_slice();
    let max = |rows: &[&[f32]]| -> Vec<f32> {
        (0..3).map(|k| rows.iter().map(|r| r[k]).fold(f32::NEG_INFINITY, f32::max)).collect()
    };
    let third = 1.0 / 3.0;
    let expected: [Vec<f32>; 4] = [
        [
            item[1].clone(),
            weighted(&[(0.5, &item[2]), (0.5, &item[3])]),
            weighted(&[(0.5, t("t1")), (2.0, t("t2"))]),
            max(&[&kw[1], &kw[2]]),
        ]
        .concat(),
        [item[2].clone(), vec![0.0; 3], vec![0.0; 3], vec![0.0; 3]].concat(),
        [
            item[3].clone(),
            weighted(&[(third, &item[1]), (third, &item[2]), (third, &item[3])]),
            weighted(&[(3.0, t("t1"))]),
            max(&[&kw[2], &kw[1], &kw[0]]),
        ]
        .concat(),
        [
            item[4].clone(),
            item[0].clone(),
            weighted(&[(1.0, t("t3")), (1.0, t("t4")), (1.0, t("t5")), (1.0, t("t6"))]),
            kw[3].clone(),
        ]
        .concat(),
    ];
    for (r, e) in expected.iter().enumerate() {
        close(&got[r], e, &format!("input row {r}"));
    }
}

#[test]
fn pooling_gradients_reach_the_pooled_rows_and_never_the_padding() {
    let (c, ds) = encoded(SPEC, ROWS);
    let model = CandleModel::new(&c.model, 7, &Device::Cpu).unwrap();
    let batch = Batch::gather(&ds, &[0, 1, 2, 3], &Device::Cpu).unwrap();
    let (row, lookups) = model.input_row_train(&batch).unwrap();
    // loss = sum(row * coef): d loss / d pooled = coef.
    let coef: Vec<f32> = (0..4 * 12).map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0).collect();
    let coef_t = Tensor::from_vec(coef.clone(), (4, 12), &Device::Cpu).unwrap();
    let grads = (row * coef_t).unwrap().sum_all().unwrap().backward().unwrap();
    let grad_of = |l: usize| grads.get(lookups[l].leaf.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
    // Lookups in feature order: item, hist, tags, kw. Slot (r, j) of a bag of `len` is
    // leaf row r * len + j; its pooled columns start at `col`.
    let slot_grad = |l: usize, r: usize, j: usize, len: usize| grad_of(l)[r * len + j].clone();
    let coef_at =
        |r: usize, col: usize, scale: f32| -> Vec<f32> { (0..3).map(|k| scale * coef[r * 12 + col + k]).collect() };
    // Sum and mean: the slot's weight times the upstream gradient; padding gets zero.
    for (l, col) in [(1usize, 3usize), (2, 6)] {
        let w = &ds.bags[l].as_ref().unwrap().weights;
        let len = ds.cat_len(l);
        for r in 0..4 {
            for j in 0..len {
                close(
                    &slot_grad(l, r, j, len),
                    &coef_at(r, col, w[r * len + j]),
                    &format!("lookup {l} slot ({r}, {j})"),
                );
            }
        }
    }
    // Max: each column's gradient goes to the slot holding the maximum, nowhere else.
    let kw = table(&model, 3);
    for r in 0..4 {
        for k in 0..3 {
            let present: Vec<usize> =
                (0..3).filter(|&j| ds.bags[3].as_ref().unwrap().weights[r * 3 + j] > 0.0).collect();
            let winner = present
                .iter()
                .copied()
                .max_by(|&a, &b| kw[ds.cat[3][r * 3 + a] as usize][k].total_cmp(&kw[ds.cat[3][r * 3 + b] as usize][k]));
            for j in 0..3 {
                let expected = if Some(j) == winner { coef[r * 12 + 9 + k] } else { 0.0 };
                assert_eq!(slot_grad(3, r, j, 3)[k], expected, "kw row {r} slot {j} column {k}");
            }
        }
    }
}

#[test]
fn a_lazy_step_moves_the_bags_rows_and_leaves_the_padding_row_alone() {
    let (c, ds) = encoded(SPEC, ROWS);
    let model = CandleModel::new(&c.model, 7, &Device::Cpu).unwrap();
    let before = table(&model, 0);
    let mut opt = Adam::new(model.vars().to_vec(), AdamConfig { lazy: true, ..AdamConfig::from(&c.train) }).unwrap();
    // Row 0: item a, history b|c and one padding slot (id 0, the unknown item's row).
    let batch = Batch::gather(&ds, &[0], &Device::Cpu).unwrap();
    let loss = multigate::train::batch_loss(&model, &batch, &mut multigate::rng::Rng::new(1)).unwrap();
    let grads = loss.total.backward().unwrap();
    opt.step(&[grads], &loss.lookups, 0.01).unwrap();
    let after = table(&model, 0);
    let changed: Vec<usize> = (0..after.len()).filter(|&r| after[r] != before[r]).collect();
    assert_eq!(changed, [1, 2, 3], "a, b and c move; the padding row 0 does not");
}

#[test]
fn weights_that_do_not_match_their_values_are_bad_rows() {
    let spec = SPEC;
    let rows = "item,hist,tags,tw,kw,label\na,b,t1|t2,1,x,1\nb,c,t1,oops,y,0\nc,d,t1,2,z,1\n";
    let (dir, _) = spec_with_data("s.mg", spec, rows);
    let c = compile_ok("s.mg", spec);
    let frame =
        read_csv(&dir.path().join("t.csv"), &FORMAT, &data::needs(&c.model), true, &|n| n.reader.clone()).unwrap();
    let e = data::encode(&c.model, &frame, true).unwrap_err().to_string();
    assert!(e.contains("t.csv:2") && e.contains("1 weights for the 2 values of feature `tags`"), "{e}");
    let (ds, skipped) = data::encode_skipping(&c.model, &frame, true).unwrap();
    assert_eq!(ds.rows, 1, "only the last row is sound");
    assert_eq!(skipped.total, 2);
    assert_eq!(skipped.by_reason["bag weights not matching its values"], 1);
    assert_eq!(skipped.by_reason["unparsable number"], 1);
    assert!(skipped.first.iter().any(|s| s.contains("t.csv:3") && s.contains("\"oops\"")), "{:?}", skipped.first);
}

#[test]
fn a_parquet_list_column_encodes_as_the_csv_cell_does() {
    use arrow_array::builder::{ListBuilder, StringBuilder};
    use arrow_array::{ArrayRef, Float32Array, RecordBatch, StringArray};
    let (c, from_csv) = encoded(SPEC, ROWS);
    // The same rows, each bag a list<utf8> (the weights a list too), labels as numbers.
    let list = |cells: &[&[&str]]| -> ArrayRef {
        let mut b = ListBuilder::new(StringBuilder::new());
        for cell in cells {
            for v in *cell {
                b.values().append_value(v);
            }
            b.append(true);
        }
        Arc::new(b.finish())
    };
    let text = |v: &[&str]| -> ArrayRef { Arc::new(StringArray::from(v.to_vec())) };
    let batch = RecordBatch::try_from_iter([
        ("item", text(&["a", "b", "c", "d"])),
        ("hist", list(&[&["b", "c"], &[], &["a", " b ", "c", "d", "e"], &["zz", "zz"]])),
        ("tags", list(&[&["t1", "t2"], &[], &["t1"], &["t3", "t4", "t5", "t6", "t7"]])),
        ("tw", list(&[&["0.5", "2"], &[], &["3"], &["1", "1", "1", "1", "1"]])),
        ("kw", list(&[&["x", "y"], &[], &["y", "y", "x", "q"], &["z"]])),
        ("label", Arc::new(Float32Array::from(vec![1.0, 0.0, 1.0, 0.0])) as ArrayRef),
    ])
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.parquet");
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let frame = data::parquet_source::read_parquet(
        &path,
        &data::needs(&c.model),
        true,
        false,
        &|n| n.reader.clone(),
        &|_, _| {},
    )
    .unwrap();
    let from_parquet = data::encode(&c.model, &frame, true).unwrap();
    assert_eq!(from_parquet.cat, from_csv.cat);
    assert_eq!(from_parquet.bags, from_csv.bags);
}

#[test]
fn a_fitted_vocabulary_counts_the_values_of_a_bag() {
    let spec = r#"
model fitted {
  data csv(train = ["t.csv"])
  feature tags: categorical(max_len = 4, pooling = sum) embed 3
  layer mmoe { experts 2 x [4] }
  task ctr: binary(label = "label") tower [2]
}
"#;
    let (_dir, path) = spec_with_data("s.mg", spec, "tags,label\nx|y,1\ny,0\ny|z|,1\n,0\n");
    let src = multigate::source::SourceFile::read(&path).unwrap();
    let c = multigate::pipeline::compile_source(&src).unwrap();
    let fitted = data::fit::fit(&c.model, &c.data, None, &|n| n.reader.clone()).unwrap();
    assert_eq!(fitted.vocabularies[0].values, ["y", "x", "z"], "by count (y three times), then by name");
}

#[test]
fn a_bag_spec_round_trips_through_both_syntaxes() {
    let c = compile_ok("s.mg", SPEC);
    let spec = multigate::spec::parse(&multigate::source::SourceFile::from_text("s.mg", SPEC)).unwrap();
    let toml = multigate::spec::format(&spec, None, multigate::spec::Syntax::Toml);
    for key in ["max_len = 4", "pooling = \"sum\"", "weights = \"tw\"", "separator = \";\""] {
        assert!(toml.contains(key), "{key} in\n{toml}");
    }
    assert_eq!(compile_ok("s.toml", &toml).model.to_string(), c.model.to_string());
    let text = c.model.to_string();
    assert!(
        text.contains("feature kw: categorical vocab(3 + oov) bag(max_len 3, max pooling, split on \";\")"),
        "{text}"
    );
}

#[test]
fn bags_carry_the_signal_of_the_synthetic_history_model() {
    // The generator's labels follow the pooled bag values: on the same rows, the model
    // with its bags must beat the same model without them on validation AUC.
    let dir = tempfile::tempdir().unwrap();
    let spec = std::fs::read_to_string(history_spec(dir.path(), 30_000, "")).unwrap();
    let without = {
        // Drop the three bag features (each table from `[[features]]` through the
        // blank line after it).
        let mut out = String::new();
        for block in spec.split("\n\n") {
            if !block.contains("max_len") {
                out.push_str(block);
                out.push_str("\n\n");
            }
        }
        out
    };
    assert_eq!(without.matches("[[features]]").count(), 2, "{without}");
    let auc = |text: &str| -> f64 {
        let path = dir.path().join("h.toml");
        std::fs::write(&path, text).unwrap();
        let out = dir.path().join("b");
        let _ = std::fs::remove_dir_all(&out);
        mg_ok(&["compile-and-train", path.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
        m["tasks"]["ctr"]["validation"]["auc"].as_f64().unwrap_or_else(|| panic!("{m}"))
    };
    let (with, plain) = (auc(&spec), auc(&without));
    println!("validation ctr AUC: with bags {with:.4}, without {plain:.4}");
    assert!(with > plain + 0.015, "with bags {with:.4}, without {plain:.4}");
}

#[test]
fn a_model_with_bags_trains_and_predicts_through_the_cli() {
    let mut rows = String::from("item,hist,tags,tw,kw,label\n");
    for i in 0..300 {
        rows.push_str(&format!(
            "{},{}|{},t{}|t{},1|0.5,{};z,{}\n",
            ["a", "b", "c"][i % 3],
            ["a", "b", "d"][i % 3],
            ["c", "e"][i % 2],
            i % 7,
            i % 5,
            ["x", "y"][i % 2],
            (i % 3 == 0) as u8
        ));
    }
    let (dir, spec) = spec_with_data("s.mg", SPEC, &rows);
    let (_, preds) = train_and_predict(&spec, &dir.path().join("t.csv"));
    assert_eq!(preds.lines().count(), 301, "a header and a row per input row");
}

#[test]
fn init_makes_a_bag_of_a_multi_valued_column_and_the_spec_trains() {
    // The generator's own history data: three bag columns, one of them weights.
    let dir = tempfile::tempdir().unwrap();
    history_spec(dir.path(), 2000, "");
    let rows = dir.path().join("train.csv");
    let out = dir.path().join("spec.toml");
    let (code, _, err) = super::multigate(
        &["init", rows.to_str().unwrap(), "--label", "click", "--label", "like", "--out", out.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    let said = err.split_whitespace().collect::<Vec<_>>().join(" ");
    // history: 0..=20 values per row, uniform, so the 95th percentile is 20; keywords 5.
    for role in [
        "history multi-valued categorical (`|`-separated)",
        "up to 20 per row",
        "keywords multi-valued categorical",
        "up to 5 per row",
        "tag_weights skipped: several numbers per row",
        "user categorical",
    ] {
        assert!(said.contains(role), "{role}: {err}");
    }
    let spec = std::fs::read_to_string(&out).unwrap();
    assert!(spec.contains("name = \"history\"") && spec.contains("max_len = 20"), "{spec}");
    let run = dir.path().join("run");
    mg_ok(&["compile-and-train", out.to_str().unwrap(), "--out", run.to_str().unwrap(), "--epochs", "1", "--quiet"]);
}
