//! Streamed training data (`stream = true`): files read in chunks on a background
//! thread while training runs, shuffled through a bounded buffer.

use std::path::Path;

use multigate::data::{self, stream::Stream};
use multigate::ir::{BadRows, CsvFormat, StreamConfig};

use super::{compile_ok, history_spec, mg_ok};

fn train(spec: &Path, out: &Path) -> serde_json::Value {
    mg_ok(&["compile-and-train", spec.to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet"]);
    serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap()
}

#[test]
fn streaming_equals_in_memory_training_when_the_buffer_holds_every_row() {
    let dir = tempfile::tempdir().unwrap();
    // The validation file doubles as the test file: both stream with the training rows.
    let test = "test = \"val.csv\"\n";
    let memory = train(&history_spec(dir.path(), 20_000, test), &dir.path().join("memory"));
    let streamed = train(
        &history_spec(dir.path(), 20_000, &format!("{test}stream = true\nshuffle_buffer = 50000")),
        &dir.path().join("streamed"),
    );
    // The same batches in the same order: the same losses and metrics, bit for bit,
    // validation and test read a chunk at a time as the in-memory run reads them whole.
    assert_eq!(streamed["tasks"], memory["tasks"]);
    for task in ["ctr", "like"] {
        let t = &streamed["tasks"][task];
        assert!(t["validation"]["auc"].as_f64().is_some_and(|a| a > 0.5), "{t}");
        assert_eq!(t["test"], t["validation"], "{t}");
    }
    let weights = |b: &str| std::fs::read(dir.path().join(b).join("model.safetensors")).unwrap();
    assert!(weights("streamed") == weights("memory"), "identical weights");
}

#[test]
fn a_small_buffer_streams_every_row_once_an_epoch_in_a_bounded_window() {
    // 10,000 rows whose dense value is the row's index, in chunks of 500 through a
    // buffer of 2,000.
    let spec = r#"
model s {
  data csv(train = ["t.csv"], validation = "t.csv", stream = true, shuffle_buffer = 2000)
  feature id: dense
  feature tag: categorical(hash = 10, max_len = 3)
  layer mmoe { experts 2 x [4] }
  task ctr: binary(label = "label") tower [2]
  train { adam batch 64 epochs 1 seed 3 }
}
"#;
    let c = compile_ok("s.mg", spec);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.csv");
    let mut text = String::from("id,tag,label\n");
    for i in 0..10_000 {
        text.push_str(&format!("{i},a|b{},{}\n", i % 7, i % 2));
    }
    std::fs::write(&path, text).unwrap();
    let format = CsvFormat { delimiter: b',', header: true, columns: vec![], missing: None, skip_bad_rows: false };
    let parts = data::source::expand(&path).unwrap();
    let config = StreamConfig { shuffle_buffer: 2000, chunk_rows: 500 };
    let stream = Stream::new(&c.model, parts, format, config, BadRows::default(), &|n| n.reader.clone());
    let mut seen: Vec<usize> = Vec::new();
    let mut batches = 0;
    for (k, batch) in stream.epoch(0, 64, 3).enumerate() {
        let batch = batch.unwrap();
        assert!(batch.rows <= 64);
        let ids: Vec<usize> = batch.dense.iter().map(|&x| x as usize).collect();
        if k == 0 {
            // The first batch comes from the first buffer-full (2,000 rows, rounded up
            // to whole chunks), shuffled.
            assert!(ids.iter().all(|&i| i < 2000), "{ids:?}");
            assert!(ids.windows(2).any(|w| w[0] > w[1]), "shuffled: {ids:?}");
        }
        // Each row keeps its own bag (a|b{i mod 7}).
        for (r, &i) in ids.iter().enumerate() {
            let tags = &batch.cat[0][r * 3..r * 3 + 2];
            assert_eq!(tags[0], data::hash::hash_bucket("tag", "a", 10), "row {i}");
            assert_eq!(tags[1], data::hash::hash_bucket("tag", &format!("b{}", i % 7), 10), "row {i}");
        }
        seen.extend(ids);
        batches += 1;
    }
    assert_eq!(batches, 10_000usize.div_ceil(64));
    seen.sort_unstable();
    assert_eq!(seen, (0..10_000).collect::<Vec<_>>(), "every row exactly once");
    // The epoch saw every row: the dense range predict warns against is all of them.
    let ranges = stream.dense_ranges();
    assert_eq!(ranges.len(), 1);
    assert_eq!((ranges[0].column.as_str(), ranges[0].lo, ranges[0].hi), ("id", 0.0, 9999.0));
    // Another epoch, another order.
    let first = |e: usize| stream.epoch(e, 64, 3).next().unwrap().unwrap().dense;
    assert_ne!(first(0), first(1));
    // Dropping an epoch half-way stops its reader (no hang, no leak of the thread).
    let mut half = stream.epoch(2, 64, 3);
    half.next().unwrap().unwrap();
    drop(half);
}

#[test]
fn a_parquet_file_streams_in_chunks_like_its_csv() {
    let dir = tempfile::tempdir().unwrap();
    let spec = history_spec(dir.path(), 5000, "");
    let c = multigate::pipeline::compile_file(&spec).unwrap().1.unwrap();
    let csv = dir.path().join("train.csv");
    let format = CsvFormat { delimiter: b',', header: true, columns: vec![], missing: None, skip_bad_rows: false };
    let frame = data::csv_source::read_csv(&csv, &format, &data::needs(&c.model), true, &|n| n.reader.clone()).unwrap();
    let pq = dir.path().join("train.parquet");
    data::parquet_source::write_parquet(&frame, &pq).unwrap();
    let all = |path: &Path| -> data::Dataset {
        let parts = data::source::expand(path).unwrap();
        let config = StreamConfig { shuffle_buffer: 100_000, chunk_rows: 700 };
        let s = Stream::new(&c.model, parts, format.clone(), config, BadRows::default(), &|n| n.reader.clone());
        let mut out = data::Dataset::default();
        for b in s.epoch(0, 5000, 1) {
            out.extend(b.unwrap());
        }
        out
    };
    let (a, b) = (all(&csv), all(&pq));
    assert_eq!(a.rows, 5000);
    assert_eq!(a.cat, b.cat);
    assert_eq!(a.bags, b.bags);
    assert_eq!(a.labels, b.labels);
}

#[test]
fn bad_rows_in_a_stream_fail_with_their_line_or_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("x,label\n");
    for i in 0..3000 {
        text.push_str(&if i == 2500 { "oops,1\n".to_string() } else { format!("{i},{}\n", i % 2) });
    }
    std::fs::write(dir.path().join("t.csv"), text).unwrap();
    let spec = |policy: &str| {
        let p = dir.path().join(format!("s_{policy}.mg"));
        std::fs::write(
            &p,
            format!(
                r#"model s {{
  data csv(train = ["t.csv"], validation = "t.csv", stream = true, shuffle_buffer = 1000, bad_rows = {policy}, max_bad_rows = 5)
  feature x: dense
  layer mmoe {{ experts 2 x [4] }}
  task ctr: binary(label = "label") tower [2]
  train {{ adam batch 64 epochs 1 seed 3 }}
}}"#
            ),
        )
        .unwrap();
        p
    };
    let (code, _, err) = super::multigate(
        &["compile-and-train", spec("fail").to_str().unwrap(), "--out", dir.path().join("a").to_str().unwrap()],
        &[],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("t.csv:2502") && err.contains("oops"), "{err}");
    // Warned: counted and shown once for the stream (and once for the validation file,
    // the same rows, surveyed when the run starts).
    let (code, out, err) = super::multigate(
        &["compile-and-train", spec("warn").to_str().unwrap(), "--out", dir.path().join("b").to_str().unwrap()],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("streamed training rows: skipped 1 bad row(s) of 3000 read: 1 unparsable number"), "{out}");
    assert_eq!(out.matches("skipped t.csv:2502: column `x`: `oops` is not a number").count(), 0, "{out}");
    assert_eq!(out.matches("t.csv:2502: column `x`: `oops` is not a number").count(), 2, "{out}");
    // The streamed model knows the range of x it trained on (0 to 2999): predict warns
    // about a value far outside it.
    std::fs::write(dir.path().join("p.csv"), "x\n5\n1e9\n").unwrap();
    let (code, _, err) = super::multigate(
        &["predict", dir.path().join("b").to_str().unwrap(), dir.path().join("p.csv").to_str().unwrap()],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("column `x`: 1 of 2 value(s) far outside what training saw (0 to 2999)"), "{err}");
}

#[test]
fn streaming_needs_files_and_a_validation_file() {
    let bad = |data: &str| -> String {
        let text = format!(
            "model s {{\n  {data}\n  feature x: dense\n  layer mmoe {{ experts 2 x [4] }}\n  task ctr: binary(label = \"label\") tower [2]\n}}\n"
        );
        let src = multigate::source::SourceFile::from_text("s.mg", text.as_str());
        match multigate::pipeline::compile_source(&src) {
            Ok(_) => panic!("should not compile:\n{text}"),
            Err(e) => e.render(Some(&src), false),
        }
    };
    let e = bad(r#"data csv(train = ["t.csv"], stream = true)"#);
    assert!(e.contains("a `validation` file (or a date window) for streamed training data"), "{e}");
    let e = bad(r#"data csv(train = ["t.csv"], validation = "v.csv", stream = true, test_fraction = 0.1)"#);
    assert!(e.contains("test_fraction"), "{e}");
    let e = bad(r#"data synthetic(stream = true)"#);
    assert!(e.contains("`stream` does not apply to generated data"), "{e}");
    let e = bad(r#"data csv(train = ["t.csv"], shuffle_buffer = 10)"#);
    assert!(e.contains("`shuffle_buffer` does not apply to data that is not streamed"), "{e}");
}

/// A streamed validation split is evaluated a chunk at a time: the metrics, gate usage,
/// rows and label spread of the file read whole.
#[test]
fn a_streamed_split_evaluates_in_chunks_like_the_file_read_whole() {
    use multigate::backend::candle::CandleModel;
    use multigate::data::{SplitData, StreamedSplit};
    let dir = tempfile::tempdir().unwrap();
    let spec = history_spec(dir.path(), 100, "");
    let c = super::compile_ok(spec.to_str().unwrap(), &std::fs::read_to_string(&spec).unwrap());
    let format = CsvFormat { delimiter: b',', header: true, columns: vec![], missing: None, skip_bad_rows: false };
    let val = dir.path().join("val.csv");
    let whole = data::source::read_part(
        &data::source::expand(&val).unwrap()[0],
        &format,
        &data::needs(&c.model),
        true,
        &|n| n.reader.clone(),
        &|_, _| {},
    )
    .unwrap();
    let held = data::encode(&c.model, &whole, true).unwrap();
    // 3,000 rows in chunks of 700: five chunks, the last one short.
    let config = StreamConfig { shuffle_buffer: 1000, chunk_rows: 700 };
    let stream = Stream::new(&c.model, data::source::expand(&val).unwrap(), format, config, BadRows::default(), &|n| {
        n.reader.clone()
    });
    let streamed = StreamedSplit::survey(&c.model, stream, &mut Default::default()).unwrap();
    assert_eq!(streamed.rows, 3000);
    let model = CandleModel::new(&c.model, 5, &candle_core::Device::Cpu).unwrap();
    let a = multigate::train::evaluate_split(&model, SplitData::Held(&held), 512).unwrap();
    let b = multigate::train::evaluate_split(&model, SplitData::Streamed(&streamed), 512).unwrap();
    assert_eq!(a.predictions.iter().map(Vec::len).collect::<Vec<_>>(), vec![3000, 3000]);
    let diff = a.predictions.iter().flatten().zip(b.predictions.iter().flatten()).map(|(x, y)| (x - y).abs());
    assert!(diff.fold(0f32, f32::max) < 1e-6);
    for (x, y) in a.metrics.iter().zip(&b.metrics) {
        let (x, y) = (serde_json::to_value(x).unwrap(), serde_json::to_value(y).unwrap());
        let auc = |v: &serde_json::Value| v["auc"].as_f64().unwrap();
        assert!((auc(&x) - auc(&y)).abs() < 1e-9, "{x} against {y}");
    }
    assert!((a.loss - b.loss).abs() < 1e-6, "{} against {}", a.loss, b.loss);
    // Gate usage: the same report, its numbers equal to float noise.
    fn numbers(v: &serde_json::Value, out: &mut Vec<f64>) {
        match v {
            serde_json::Value::Number(n) => out.push(n.as_f64().unwrap()),
            serde_json::Value::Array(a) => a.iter().for_each(|x| numbers(x, out)),
            serde_json::Value::Object(o) => o.values().for_each(|x| numbers(x, out)),
            _ => {}
        }
    }
    let usage = |e: &multigate::train::Evaluation| {
        let mut out = Vec::new();
        numbers(&serde_json::to_value(&e.gate_usage).unwrap(), &mut out);
        out
    };
    let (ua, ub) = (usage(&a), usage(&b));
    assert!(ua.len() > 4 && ua.len() == ub.len(), "{ua:?} against {ub:?}");
    assert!(ua.iter().zip(&ub).all(|(x, y)| (x - y).abs() < 1e-5), "{ua:?} against {ub:?}");
    for t in 0..2 {
        assert_eq!(
            SplitData::Held(&held).label_stats(&c.model, t),
            SplitData::Streamed(&streamed).label_stats(&c.model, t)
        );
    }
}

/// A bad row in a streamed validation file stops the run before training, at its line.
#[test]
fn a_bad_row_in_a_streamed_validation_file_fails_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let train_text: String =
        std::iter::once("x,label\n".to_string()).chain((0..500).map(|i| format!("{i},{}\n", i % 2))).collect();
    std::fs::write(dir.path().join("t.csv"), &train_text).unwrap();
    std::fs::write(dir.path().join("v.csv"), "x,label\n1,0\n2,1\nnope,1\n4,0\n").unwrap();
    let spec = dir.path().join("s.mg");
    std::fs::write(
        &spec,
        r#"model s {
  data csv(train = ["t.csv"], validation = "v.csv", stream = true, shuffle_buffer = 1000)
  feature x: dense
  layer mmoe { experts 2 x [4] }
  task ctr: binary(label = "label") tower [2]
  train { adam batch 64 epochs 3 seed 3 }
}"#,
    )
    .unwrap();
    let (code, out, err) = super::multigate(
        &["compile-and-train", spec.to_str().unwrap(), "--out", dir.path().join("a").to_str().unwrap()],
        &[],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("v.csv:4") && err.contains("nope"), "{err}");
    assert!(!out.contains("epoch 1"), "no training before the error: {out}");
}
