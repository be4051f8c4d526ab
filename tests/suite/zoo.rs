//! The model zoo end to end: task heads (multiclass, label transforms, ESMM products,
//! masked labels), fitted label statistics, and the library API (run, Predictor).

use candle_core::Device;
use multigate::backend::candle::Batch;
use multigate::data::{self, Dataset};
use multigate::run::{self, Event, Observer, Predictor, TrainOptions};
use multigate::source::SourceFile;
use multigate::train::metrics::TaskMetrics;

use super::compile_ok;

/// Two categoricals and a dense value on the categorical generator, then `body`.
fn spec(body: &str) -> String {
    format!(
        r#"
[model]
name = "zoo"

[data.synthetic]
kind = "categorical"
rows = 4000
cardinality = 40

[[features]]
name = "a"
type = "categorical"
hash_buckets = 100
embedding_dim = 8

[[features]]
name = "b"
type = "categorical"
hash_buckets = 100
embedding_dim = 8

[[features]]
name = "d"
type = "dense"

[[layers]]
kind = "cgc"
experts = 2
task_experts = 1
units = [16]

{body}

[train]
batch_size = 128
epochs = 3
lr = 0.005
seed = 7
"#
    )
}

/// Trains `text` through the library API into a fresh folder.
fn train(text: &str, dir: &std::path::Path) -> run::RunResult {
    let src = SourceFile::from_text("zoo.toml", text.to_string());
    let c = compile_ok("zoo.toml", text);
    let opts = TrainOptions { out: Some(dir.to_path_buf()), ..Default::default() };
    run::train_spec(&src, c, &opts, &mut run::Silent).unwrap_or_else(|e| panic!("training failed: {e}"))
}

#[test]
fn batches_keep_every_task_at_its_index_when_one_has_no_labels() {
    // Task 0 has no labels (a product factor), task 1 has. A batch must not shift task
    // 1's labels into slot 0, which would pair heads with the wrong labels.
    let ds = Dataset {
        rows: 3,
        cat: vec![vec![0, 1, 2]],
        bags: vec![None],
        dense: Vec::new(),
        dense_width: 0,
        labels: vec![Vec::new(), vec![1.0, f32::NAN, 0.0]],
    };
    let b = Batch::gather(&ds, &[2, 0, 1], &Device::Cpu).unwrap();
    assert_eq!(b.labels.len(), 2);
    assert!(b.labels[0].is_none() && b.masks[0].is_none());
    assert_eq!(b.labels[1].as_ref().unwrap().to_vec1::<f32>().unwrap(), vec![0.0, 1.0, 0.0]);
    assert_eq!(b.masks[1].as_ref().unwrap().to_vec1::<f32>().unwrap(), vec![1.0, 1.0, 0.0]);
}

#[test]
fn a_log1p_label_trains_in_log_space_and_predicts_in_the_original_one() {
    let text = spec(
        "[[tasks]]\nname = \"dur\"\nkind = \"regression\"\nlabel = \"duration\"\ntransform = \"log1p\"\ntower = [8]\n\n\
         [[tasks]]\nname = \"ctr\"\nkind = \"binary\"\nlabel = \"click\"\ntower = [8]\n",
    );
    let tmp = tempfile::tempdir().unwrap();
    let done = train(&text, &tmp.path().join("b"));
    let TaskMetrics::Regression(val) = &done.report.validation[0] else { panic!("regression metrics") };
    let (mse_t, _) = val.transformed.expect("metrics in the transformed space too");
    // Score the validation rows by hand from the raw labels and the Predictor's output.
    let c = &done.compiled;
    let s = match &c.data.source {
        multigate::ir::DataSource::Synthetic(s) => s.clone(),
        _ => unreachable!(),
    };
    let frame = data::synthetic::generate(&c.model, &s, s.rows);
    let predictor = Predictor::load(&done.out, multigate::backend::Device::Cpu).unwrap();
    let p = predictor.predict_frame(&frame, false).unwrap();
    let Some(data::Column::Num(raw)) = frame.column_as("duration", true) else { panic!("duration column") };
    assert!(p.values[0].iter().all(|&y| y > -1.0), "predictions are exp(z) - 1");
    let (mut se, mut se_t) = (0.0f64, 0.0f64);
    for (&y, &q) in raw.iter().zip(&p.values[0]) {
        se += ((q - y) as f64).powi(2);
        se_t += ((q.ln_1p() - y.ln_1p()) as f64).powi(2);
    }
    let (mse, mse_t_all) = (se / raw.len() as f64, se_t / raw.len() as f64);
    // All rows against the validation split: the same magnitude in both spaces, and the
    // log space far smaller than the original one for heavy-tailed labels.
    assert!((mse_t_all - mse_t).abs() < 0.5 * mse_t, "log-space mse {mse_t_all} vs reported {mse_t}");
    assert!((mse - val.mse).abs() < 0.5 * val.mse, "original-space mse {mse} vs reported {}", val.mse);
    // And the round trip: evaluation of the bundle on the frame reports what the
    // predictions give.
    let ds = data::encode(&c.model, &frame, true).unwrap();
    let e = multigate::train::evaluate(predictor.model(), &ds, 512).unwrap();
    let TaskMetrics::Regression(all) = &e.metrics[0] else { panic!() };
    assert!((all.mse - mse).abs() < 1e-3 * mse.max(1.0), "{} vs {mse}", all.mse);
    assert!((all.transformed.unwrap().0 - mse_t_all).abs() < 1e-4, "{:?} vs {mse_t_all}", all.transformed);
}

#[test]
fn standardize_statistics_are_fitted_on_the_training_labels_and_pinned_into_the_bundle() {
    let text = spec(
        "[[tasks]]\nname = \"y\"\nkind = \"regression\"\nlabel = \"y\"\ntransform = \"standardize\"\ntower = [8]\n\n\
         [[tasks]]\nname = \"ctr\"\nkind = \"binary\"\nlabel = \"click\"\n",
    );
    let tmp = tempfile::tempdir().unwrap();
    let done = train(&text, &tmp.path().join("b"));
    let multigate::ir::Head::Regression { transform: multigate::ir::LabelTransform::Standardize { mean, std } } =
        done.compiled.model.tasks[0].head
    else {
        panic!("standardized head")
    };
    // The same numbers from the generated labels.
    let c = compile_ok("zoo.toml", &text);
    let multigate::ir::DataSource::Synthetic(s) = &c.data.source else { unreachable!() };
    let frame = data::synthetic::generate(&c.model, s, s.rows);
    let Some(data::Column::Num(y)) = frame.column_as("y", true) else { panic!() };
    let m = y.iter().map(|&v| v as f64).sum::<f64>() / y.len() as f64;
    let sd = (y.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / y.len() as f64).sqrt();
    assert!((mean - m).abs() < 1e-6 && (std - sd).abs() < 1e-6, "{mean} {std} vs {m} {sd}");
    // Pinned: the bundle's spec carries them, so it loads and predicts without data.
    let spec_toml = std::fs::read_to_string(done.out.join("spec.toml")).unwrap();
    assert!(spec_toml.contains("mean = ") && spec_toml.contains("std = "), "{spec_toml}");
    let p = Predictor::load(&done.out, multigate::backend::Device::Cpu).unwrap();
    assert_eq!(p.compiled().model.tasks[0].head, done.compiled.model.tasks[0].head);
}

#[test]
fn zscore_statistics_left_out_are_fitted_on_the_training_rows_and_pinned_into_the_bundle() {
    let text = spec("[[tasks]]\nname = \"ctr\"\nkind = \"binary\"\nlabel = \"click\"\n")
        .replace("name = \"d\"\ntype = \"dense\"\n", "name = \"d\"\ntype = \"dense\"\ntransform = \"zscore\"\n");
    let c = compile_ok("zoo.toml", &text);
    assert!(format!("{}", *c.model).contains("zscore(fitted on the training rows)"));
    // An open model refuses to encode rather than producing NaN inputs.
    let multigate::ir::DataSource::Synthetic(s) = &c.data.source else { unreachable!() };
    let frame = data::synthetic::generate(&c.model, s, s.rows);
    let e = data::encode(&c.model, &frame, true).unwrap_err().to_string();
    assert!(e.contains("still to fit"), "{e}");

    let tmp = tempfile::tempdir().unwrap();
    let done = train(&text, &tmp.path().join("b"));
    let multigate::ir::FeatureKind::Dense { transform: multigate::ir::Transform::ZScore { mean, std }, .. } =
        done.compiled.model.features[2].kind
    else {
        panic!("zscore feature")
    };
    // The same numbers, computed directly on the generated rows (missing values left out).
    let Some(data::Column::Num(d)) = frame.column_as("d", true) else { panic!() };
    let d: Vec<f64> = d.iter().filter(|v| v.is_finite()).map(|&v| v as f64).collect();
    let m = d.iter().sum::<f64>() / d.len() as f64;
    let sd = (d.iter().map(|&v| (v - m).powi(2)).sum::<f64>() / d.len() as f64).sqrt();
    assert!(((mean as f64) - m).abs() < 1e-5 && ((std as f64) - sd).abs() < 1e-5, "{mean} {std} vs {m} {sd}");
    let spec_toml = std::fs::read_to_string(done.out.join("spec.toml")).unwrap();
    assert!(spec_toml.contains(&format!("mean = {m}")), "{spec_toml}");
    let p = Predictor::load(&done.out, multigate::backend::Device::Cpu).unwrap();
    assert_eq!(p.compiled().model.features[2].kind, done.compiled.model.features[2].kind);

    // Half of the pair is a mistake, pointed at.
    let half = text.replace("transform = \"zscore\"\n", "transform = \"zscore\"\nmean = 1.0\n");
    let src = SourceFile::from_text("zoo.toml", half);
    let e = multigate::pipeline::compile_source(&src).err().expect("half a pair is an error").render(Some(&src), false);
    assert!(e.contains("`std` is required here") && e.contains("or neither (then both are fitted"), "{e}");
}

#[test]
fn minmax_ranges_left_out_are_fitted_on_the_training_rows_and_encode_onto_0_1() {
    let text = spec("[[tasks]]\nname = \"ctr\"\nkind = \"binary\"\nlabel = \"click\"\n")
        .replace("name = \"d\"\ntype = \"dense\"\n", "name = \"d\"\ntype = \"dense\"\ntransform = \"minmax\"\n");
    let c = compile_ok("zoo.toml", &text);
    assert!(format!("{}", *c.model).contains("minmax(fitted on the training rows)"));
    let multigate::ir::DataSource::Synthetic(s) = &c.data.source else { unreachable!() };
    let frame = data::synthetic::generate(&c.model, s, s.rows);
    let tmp = tempfile::tempdir().unwrap();
    let done = train(&text, &tmp.path().join("b"));
    let multigate::ir::FeatureKind::Dense { transform: multigate::ir::Transform::MinMax { min, max }, .. } =
        done.compiled.model.features[2].kind
    else {
        panic!("minmax feature")
    };
    // The training rows' own range (the generator's rows before the held-out split).
    let Some(data::Column::Num(d)) = frame.column_as("d", true) else { panic!() };
    let lo = d.iter().copied().filter(|v| v.is_finite()).fold(f32::INFINITY, f32::min);
    let hi = d.iter().copied().filter(|v| v.is_finite()).fold(f32::NEG_INFINITY, f32::max);
    assert_eq!((min, max), (lo, hi));
    // Encoded onto [0, 1], the extremes exactly.
    let ds = data::encode(&done.compiled.model, &frame, true).unwrap();
    let col: Vec<f32> = (0..ds.rows).map(|i| ds.dense[i * ds.dense_width]).collect();
    assert!(col.iter().all(|&v| (0.0..=1.0).contains(&v)), "{:?}", &col[..8]);
    assert!(col.contains(&0.0) && col.contains(&1.0));
    let spec_toml = std::fs::read_to_string(done.out.join("spec.toml")).unwrap();
    let pinned = format!("min = {}\nmax = {}", lo as f64, hi as f64);
    assert!(spec_toml.contains(&pinned), "{pinned} in {spec_toml}");
    // Mistakes: half the pair, an empty range, min on another transform.
    let bad = |from: &str, to: &str| {
        let src = SourceFile::from_text("zoo.toml", text.replace(from, to));
        multigate::pipeline::compile_source(&src).err().expect("an error").render(Some(&src), false)
    };
    let e = bad("transform = \"minmax\"\n", "transform = \"minmax\"\nmin = 1.0\n");
    assert!(e.contains("`max` is required here") && e.contains("minmax takes both"), "{e}");
    let e = bad("transform = \"minmax\"\n", "transform = \"minmax\"\nmin = 1.0\nmax = 1.0\n");
    assert!(e.contains("a finite number above min (1)"), "{e}");
    let e = bad("transform = \"minmax\"\n", "transform = \"log1p\"\nmin = 1.0\n");
    assert!(e.contains("`min` does not apply to a feature without transform = \"minmax\""), "{e}");
}

#[test]
fn a_vocabulary_left_out_is_fitted_most_frequent_first_and_pinned() {
    let text = spec("[[tasks]]\nname = \"ctr\"\nkind = \"binary\"\nlabel = \"click\"\n").replacen(
        "hash_buckets = 100\n",
        "max_size = 10\nmin_count = 2\n",
        1,
    );
    let c = compile_ok("zoo.toml", &text);
    assert!(format!("{}", *c.model).contains("vocab(fitted on the training rows: min_count 2, max_size 10 + oov)"));
    let tmp = tempfile::tempdir().unwrap();
    let done = train(&text, &tmp.path().join("b"));
    let multigate::ir::FeatureKind::Categorical { encoding: multigate::ir::Encoding::Vocab { values }, .. } =
        &done.compiled.model.features[0].kind
    else {
        panic!("a fitted vocabulary: {:?}", done.compiled.model.features[0].kind)
    };
    // The same list, counted directly on the generated rows.
    let multigate::ir::DataSource::Synthetic(s) = &c.data.source else { unreachable!() };
    let frame = data::synthetic::generate(&c.model, s, s.rows);
    let Some(data::Column::Cat { dict, codes }) = frame.column_as("a", false) else { panic!() };
    let mut counts = vec![0u64; dict.len()];
    codes.iter().for_each(|&k| counts[k as usize] += 1);
    let mut ranked: Vec<(u64, &String)> =
        counts.iter().copied().zip(dict).filter(|(n, v)| *n >= 2 && !v.is_empty()).collect();
    ranked.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(y.1)));
    let expected: Vec<String> = ranked.iter().take(10).map(|(_, v)| (*v).clone()).collect();
    assert_eq!(values, &expected);
    // Pinned into the bundle's spec; the embedding table has 10 rows plus the OOV row.
    let p = Predictor::load(&done.out, multigate::backend::Device::Cpu).unwrap();
    assert_eq!(p.compiled().model.features[0].kind, done.compiled.model.features[0].kind);
    assert!(std::fs::read_to_string(done.out.join("spec.toml")).unwrap().contains("vocabulary = ["));
}

#[test]
fn multiclass_classes_come_from_the_training_labels_and_predict_writes_one_column_each() {
    let text = spec(
        "[[tasks]]\nname = \"kind\"\nkind = \"multiclass\"\nlabel = \"category\"\ntower = [8]\n\n\
         [[tasks]]\nname = \"ctr\"\nkind = \"binary\"\nlabel = \"click\"\n",
    );
    let tmp = tempfile::tempdir().unwrap();
    let done = train(&text, &tmp.path().join("b"));
    let task = &done.compiled.model.tasks[0];
    assert_eq!(task.head, multigate::ir::Head::Multiclass { classes: vec!["c0".into(), "c1".into(), "c2".into()] });
    assert_eq!(task.output_columns(), ["kind.c0", "kind.c1", "kind.c2"]);
    let TaskMetrics::Multiclass(m) = &done.report.validation[0] else { panic!("multiclass metrics") };
    assert!(m.accuracy > 0.4 && m.macro_auc.unwrap() > 0.6, "{m:?}");
    // Probabilities per row sum to one.
    let p = Predictor::load(&done.out, multigate::backend::Device::Cpu).unwrap();
    let cols = vec![
        ("a".to_string(), vec!["1".to_string(), "7".to_string()]),
        ("b".to_string(), vec!["2".to_string(), "x".to_string()]),
        ("d".to_string(), vec!["0.5".to_string(), "".to_string()]),
    ];
    let out = p.predict_columns(&cols).unwrap();
    assert_eq!(out.values[0].len(), 6);
    for row in out.values[0].chunks(3) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{row:?}");
    }
}

#[test]
fn esmm_trains_cvr_through_the_product_and_scores_it_on_clicked_rows() {
    let text = spec(
        "[[tasks]]\nname = \"ctr\"\nkind = \"binary\"\nlabel = \"click\"\ntower = [8]\n\n\
         [[tasks]]\nname = \"cvr\"\nkind = \"binary\"\nlabel = \"buy\"\nonly_where = \"click\"\nweight = 0.0\ntower = [8]\n\n\
         [[tasks]]\nname = \"ctcvr\"\nkind = \"binary\"\nlabel = \"buy\"\nproduct = [\"ctr\", \"cvr\"]\n",
    );
    let tmp = tempfile::tempdir().unwrap();
    let done = train(&text, &tmp.path().join("b"));
    // CVR learns although its own loss weight is 0: the product carries its gradient.
    for m in &done.report.validation {
        let TaskMetrics::Binary(b) = m else { panic!("binary") };
        assert!(b.auc.unwrap() > 0.55, "{m}");
    }
    // The product's prediction is the product of its factors'.
    let p = Predictor::load(&done.out, multigate::backend::Device::Cpu).unwrap();
    let cols = vec![
        ("a".to_string(), (0..20).map(|i| format!("{i}")).collect::<Vec<_>>()),
        ("b".to_string(), (0..20).map(|i| format!("{}", i * 3)).collect()),
        ("d".to_string(), (0..20).map(|i| format!("{}", i as f32 / 10.0)).collect()),
    ];
    let out = p.predict_columns(&cols).unwrap();
    for i in 0..20 {
        let (ctr, cvr, ctcvr) = (out.values[0][i], out.values[1][i], out.values[2][i]);
        assert!((ctr * cvr - ctcvr).abs() < 1e-6, "{ctr} x {cvr} != {ctcvr}");
    }
    // The CVR metrics count only clicked rows.
    let c = compile_ok("zoo.toml", &text);
    let multigate::ir::DataSource::Synthetic(s) = &c.data.source else { unreachable!() };
    let frame = data::synthetic::generate(&c.model, s, 1000);
    let ds = data::encode(&c.model, &frame, true).unwrap();
    let clicked = ds.labels[0].iter().filter(|&&y| y == 1.0).count();
    assert_eq!(ds.labels[1].iter().filter(|y| !y.is_nan()).count(), clicked);
}

#[test]
fn the_run_api_reports_every_step_and_epoch() {
    #[derive(Default)]
    struct Count {
        steps: u64,
        epochs: usize,
        last_step: u64,
        finished: bool,
    }
    impl Observer for Count {
        fn on(&mut self, e: &Event<'_>) {
            match e {
                Event::Step { step, losses, .. } => {
                    assert_eq!(losses.len(), 1);
                    self.steps += 1;
                    self.last_step = *step;
                }
                Event::Epoch(_) => self.epochs += 1,
                Event::Finished { .. } => self.finished = true,
                _ => {}
            }
        }
    }
    let text = spec("[[tasks]]\nname = \"ctr\"\nkind = \"binary\"\nlabel = \"click\"\n");
    let src = SourceFile::from_text("zoo.toml", text.clone());
    let tmp = tempfile::tempdir().unwrap();
    let opts = TrainOptions { out: Some(tmp.path().join("b")), epochs: Some(2), ..Default::default() };
    let mut count = Count::default();
    let done = run::train_spec(&src, compile_ok("zoo.toml", &text), &opts, &mut count).unwrap();
    // 4000 rows, 10% held out: 3600 training rows in batches of 128 -> 29 steps an epoch.
    assert_eq!((count.steps, count.epochs, count.last_step), (58, 2, 58));
    assert!(count.finished && done.out.join("manifest.json").exists());
    // The bundle's spec says what was trained: the --epochs override, not the spec's 3.
    let bundle_spec = std::fs::read_to_string(done.out.join("spec.toml")).unwrap();
    assert!(bundle_spec.contains("epochs = 2\n") && !bundle_spec.contains("epochs = 3\n"), "{bundle_spec}");
    // An --out that cannot be a bundle folder fails before training.
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let opts_file = TrainOptions { out: Some(file), ..Default::default() };
    let mut steps = Count::default();
    let err = run::train_spec(&src, compile_ok("zoo.toml", &text), &opts_file, &mut steps).err().unwrap();
    assert!(err.to_string().contains("not a folder") && steps.steps == 0, "{err}");
    // A second run into the same folder is fine; a leftover checkpoint is not.
    std::fs::create_dir_all(run::checkpoint_dir(&done.out)).unwrap();
    let again = run::train_spec(&src, compile_ok("zoo.toml", &text), &opts, &mut run::Silent);
    assert!(matches!(again, Err(run::RunError::Interrupted(_))));
}

#[test]
fn the_predictor_scores_raw_columns_as_predict_does() {
    let text = spec("[[tasks]]\nname = \"ctr\"\nkind = \"binary\"\nlabel = \"click\"\ntower = [4]\n");
    let tmp = tempfile::tempdir().unwrap();
    let done = train(&text, &tmp.path().join("b"));
    let p = Predictor::load(&done.out, multigate::backend::Device::Cpu).unwrap();
    let c = &done.compiled;
    let multigate::ir::DataSource::Synthetic(s) = &c.data.source else { unreachable!() };
    let frame = data::synthetic::generate(&c.model, s, 50);
    let from_frame = p.predict_frame(&frame, false).unwrap();
    let text_of = |name: &str| {
        let col = frame.column(name).unwrap();
        (name.to_string(), (0..frame.rows).map(|i| col.text(i)).collect::<Vec<_>>())
    };
    let from_text = p.predict_columns(&[text_of("a"), text_of("b"), text_of("d")]).unwrap();
    for (x, y) in from_frame.values[0].iter().zip(&from_text.values[0]) {
        assert!((x - y).abs() < 1e-6, "{x} vs {y}");
    }
    // A missing column is an error that names it, not a panic.
    let err = p.predict_columns(&[text_of("a"), text_of("b")]).err().unwrap().to_string();
    assert!(err.contains("`d`"), "{err}");
}

#[test]
fn a_gate_pinned_to_one_expert_raises_the_collapse_and_dead_expert_alarms() {
    let text = spec("[[tasks]]\nname = \"ctr\"\nkind = \"binary\"\nlabel = \"click\"\n\n[[tasks]]\nname = \"cvr\"\nkind = \"binary\"\nlabel = \"buy\"\n")
        .replace("kind = \"cgc\"\nexperts = 2\ntask_experts = 1\nunits = [16]", "kind = \"mmoe\"\nexperts = 3\nunits = [8]");
    let c = compile_ok("zoo.toml", &text);
    let model = multigate::backend::candle::CandleModel::new(&c.model, 1, &Device::Cpu).unwrap();
    let multigate::ir::DataSource::Synthetic(s) = &c.data.source else { unreachable!() };
    let ds = data::encode(&c.model, &data::synthetic::generate(&c.model, s, 300), true).unwrap();
    let healthy = multigate::train::predict_rows(&model, &ds, 100, false).unwrap();
    assert!(healthy.usage[0].alarms().is_empty(), "{:?}", healthy.usage[0].alarms());
    // Both gates (3 experts each, side by side) put everything on expert 0: expert 1
    // and 2 are dead, and both gates have collapsed.
    let bias = model.vars().iter().find(|(n, _)| n == "layers.layer0.gates.bias").unwrap().1.clone();
    bias.set(&candle_core::Tensor::new(&[50f32, 0.0, 0.0, 50.0, 0.0, 0.0], &Device::Cpu).unwrap()).unwrap();
    let pinned = multigate::train::predict_rows(&model, &ds, 100, false).unwrap();
    let alarms = pinned.usage[0].alarms();
    assert_eq!(alarms.len(), 4, "{alarms:?}");
    assert!(alarms[0].contains("layer0.gate.ctr has collapsed") && alarms[0].contains("100%"), "{alarms:?}");
    assert!(alarms[2].contains("layer0.experts.e1 is dead") && alarms[3].contains("layer0.experts.e2 is dead"));
    let sim = pinned.usage[0].similarity();
    assert!((sim[0].2 - 1.0).abs() < 1e-6, "{sim:?}");
}

/// Trains the zoo spec with `[train]` extended by `balance` and returns the epochs' loss
/// weights.
fn balanced_weights(balance: &str, epochs: usize) -> (Vec<Vec<f64>>, run::RunResult) {
    let text = spec(
        "[[tasks]]\nname = \"ctr\"\nkind = \"binary\"\nlabel = \"click\"\ntower = [4]\n\n\
         [[tasks]]\nname = \"dur\"\nkind = \"regression\"\nlabel = \"seconds\"\ntower = [4]\n",
    )
    .replace("seed = 7\n", &format!("seed = 7\n{balance}\nepochs = {epochs}\n"))
    .replace("epochs = 3\n", "");
    let tmp = tempfile::tempdir().unwrap();
    let done = train(&text, &tmp.path().join("b"));
    (done.report.epochs.iter().map(|e| e.loss_weights.clone()).collect(), done)
}

#[test]
fn uncertainty_weighting_learns_a_variance_per_task() {
    let (weights, done) = balanced_weights("loss_balance = \"uncertainty\"", 3);
    assert!(done.compiled.model.parameters().iter().any(|p| p.name == "loss.log_variance" && p.shape == [2]));
    // Kendall et al.: the classification weight starts at exp(0) = 1, the regression one
    // at 1/2; both move as the variances are learned.
    let last = weights.last().unwrap();
    assert!((last[0] - 1.0).abs() > 1e-3 && (last[1] - 0.5).abs() > 1e-3, "{weights:?}");
    assert!(last.iter().all(|w| w.is_finite() && *w > 0.0));
}

#[test]
fn dwa_weights_follow_the_ratio_of_the_last_two_epochs_losses() {
    let (weights, done) = balanced_weights("loss_balance = \"dwa\"\ndwa_temperature = 2.0", 4);
    assert_eq!(weights[0], vec![1.0, 1.0]);
    assert_eq!(weights[1], vec![1.0, 1.0]);
    // Epoch 3 from epochs 1 and 2: 2 softmax(ratio / 2).
    let e = &done.report.epochs;
    let r: Vec<f64> = (0..2).map(|t| e[1].train_loss[t] / e[0].train_loss[t] / 2.0).collect();
    let z: f64 = r.iter().map(|x| x.exp()).sum();
    for t in 0..2 {
        assert!((weights[2][t] - 2.0 * r[t].exp() / z).abs() < 1e-9, "{weights:?}");
    }
    assert!((weights[3].iter().sum::<f64>() - 2.0).abs() < 1e-9);
}

#[test]
fn gradnorm_moves_the_weights_and_keeps_their_sum() {
    let (weights, _) = balanced_weights("loss_balance = \"gradnorm\"\ngradnorm_alpha = 1.5", 2);
    for w in &weights {
        assert!((w.iter().sum::<f64>() - 2.0).abs() < 1e-6, "{w:?}");
    }
    assert!((weights[1][0] - 1.0).abs() > 1e-3, "{weights:?}");
}

#[test]
fn gate_columns_name_each_expert_by_its_index_in_the_layer() {
    // One CGC level: shared experts e0, e1; ctr's e2; cvr's e3 (task_experts = 1).
    let text = spec("[[tasks]]\nname = \"ctr\"\nkind = \"binary\"\nlabel = \"click\"\n\n[[tasks]]\nname = \"cvr\"\nkind = \"binary\"\nlabel = \"buy\"\n");
    let c = compile_ok("zoo.toml", &text);
    let model = multigate::backend::candle::CandleModel::new(&c.model, 1, &Device::Cpu).unwrap();
    let multigate::ir::DataSource::Synthetic(s) = &c.data.source else { unreachable!() };
    let ds = data::encode(&c.model, &data::synthetic::generate(&c.model, s, 20), true).unwrap();
    let p = multigate::train::predict_rows(&model, &ds, 8, true).unwrap();
    let names: Vec<&str> = p.gate_columns.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "layer0.gate.ctr.e2",
            "layer0.gate.ctr.e0",
            "layer0.gate.ctr.e1",
            "layer0.gate.cvr.e3",
            "layer0.gate.cvr.e0",
            "layer0.gate.cvr.e1"
        ]
    );
    assert_eq!(
        p.usage[0].experts,
        ["layer0.experts.e0", "layer0.experts.e1", "layer0.experts.ctr.e0", "layer0.experts.cvr.e0"]
    );
    // Each row's weights of one gate sum to one.
    for row in 0..20 {
        let sum: f32 = p.gate_columns[..3].iter().map(|(_, v)| v[row]).sum();
        assert!((sum - 1.0).abs() < 1e-5);
    }
}

/// Runs `text` for 3 epochs and leaves behind the checkpoint written after epoch 1, as
/// a run killed during epoch 2 would.
fn interrupted_after_epoch_1(text: &str, out: &std::path::Path) {
    struct Keep {
        ckpt: std::path::PathBuf,
        copy: std::path::PathBuf,
    }
    impl Observer for Keep {
        fn on(&mut self, e: &Event<'_>) {
            // The epoch 2 event comes before epoch 2's checkpoint replaces epoch 1's.
            if let Event::Epoch(r) = e {
                if r.epoch == 2 {
                    let _ = std::fs::remove_dir_all(&self.copy);
                    std::fs::create_dir_all(&self.copy).unwrap();
                    for f in std::fs::read_dir(&self.ckpt).unwrap() {
                        let f = f.unwrap().path();
                        std::fs::copy(&f, self.copy.join(f.file_name().unwrap())).unwrap();
                    }
                }
            }
        }
    }
    let src = SourceFile::from_text("zoo.toml", text.to_string());
    let opts = TrainOptions { out: Some(out.to_path_buf()), ..Default::default() };
    let ckpt = run::checkpoint_dir(out);
    let copy = out.with_file_name("saved.checkpoint");
    run::train_spec(&src, compile_ok("zoo.toml", text), &opts, &mut Keep { ckpt: ckpt.clone(), copy: copy.clone() })
        .unwrap();
    std::fs::rename(&copy, &ckpt).unwrap();
}

#[test]
fn resume_refuses_other_settings_and_continues_under_the_same() {
    let text = spec("[[tasks]]\nname = \"ctr\"\nkind = \"binary\"\nlabel = \"click\"\n");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("b");
    interrupted_after_epoch_1(&text, &out);
    let resume = |text: &str, epochs: Option<usize>| {
        let src = SourceFile::from_text("zoo.toml", text.to_string());
        let opts = TrainOptions { out: Some(out.clone()), resume: true, epochs, ..Default::default() };
        run::train_spec(&src, compile_ok("zoo.toml", text), &opts, &mut run::Silent)
    };
    // Another learning rate, another seed, other epochs: each named.
    let other = text.replace("lr = 0.005", "lr = 0.01").replace("seed = 7", "seed = 8");
    match resume(&other, Some(5)) {
        Err(run::RunError::ResumeMismatch { differences, .. }) => {
            let all = differences.join("\n");
            assert!(all.contains("epochs: 3 in the checkpoint, 5 now"), "{all}");
            assert!(
                all.contains("[train] lr = 0.005` in the checkpoint") && all.contains("[train] lr = 0.01` now"),
                "{all}"
            );
            assert!(all.contains("seed = 7") && all.contains("seed = 8"), "{all}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a resume under other settings must be refused"),
    }
    // Each other kind of setting, alone: batch, optimizer, data seed, synthetic rows.
    let cases: [(String, Option<usize>, &str); 4] = [
        (text.replace("batch_size = 128", "batch_size = 64"), None, "batch_size = 64"),
        (text.replace("lr = 0.005", "lr = 0.005\noptimizer = \"lazy_adam\""), None, "optimizer = \"lazy_adam\""),
        (text.replace("rows = 4000", "rows = 4000\nseed = 3"), None, "seed = 3"),
        (text.replace("rows = 4000", "rows = 3000"), None, "rows = 3000"),
    ];
    for (changed, epochs, needle) in cases {
        match resume(&changed, epochs) {
            Err(run::RunError::ResumeMismatch { differences, .. }) => {
                assert!(differences.iter().any(|d| d.contains(needle) && d.ends_with("now")), "{differences:?}")
            }
            Err(e) => panic!("{needle}: wrong error: {e}"),
            Ok(_) => panic!("{needle}: a resume under other settings must be refused"),
        }
    }
    assert!(run::checkpoint_dir(&out).exists(), "a refused resume keeps the checkpoint");
    // A damaged checkpoint is refused naming the file, not resumed from.
    let ckpt = run::checkpoint_dir(&out);
    let saved = std::fs::read(ckpt.join("optimizer.safetensors")).unwrap();
    let mut flipped = saved.clone();
    let n = flipped.len() - 1;
    flipped[n] ^= 1;
    std::fs::write(ckpt.join("optimizer.safetensors"), &flipped).unwrap();
    let e = resume(&text, None).err().expect("refused").to_string();
    assert!(e.contains("optimizer.safetensors") && e.contains("SHA-256"), "{e}");
    std::fs::write(ckpt.join("optimizer.safetensors"), &saved).unwrap();
    // A checkpoint is not a bundle, and says so.
    let e = multigate::export::read_bundle(&ckpt, &Device::Cpu).err().expect("refused").to_string();
    assert!(e.contains("a training checkpoint, not a bundle"), "{e}");
    // The same settings continue from epoch 2 and finish.
    let done = resume(&text, None).unwrap();
    assert_eq!(done.report.epochs.len(), 3);
    assert!(!run::checkpoint_dir(&out).exists());
}

#[test]
fn resuming_a_run_that_stopped_early_trains_no_further() {
    // Patience 1 with a learning rate so large that validation gets worse: the run stops
    // early (deterministically, for this seed). Its last checkpoint, resumed, trains on
    // no further and keeps its best epoch.
    let text = spec("[[tasks]]\nname = \"ctr\"\nkind = \"binary\"\nlabel = \"click\"\n")
        .replace("lr = 0.005", "lr = 0.3\npatience = 1")
        .replace("epochs = 3", "epochs = 8");
    let c = compile_ok("zoo.toml", &text);
    let (splits, _) = data::load_splits(&c.model, &c.data, None, &|_| String::new()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ck");
    let first = multigate::backend::candle::CandleModel::new(&c.model, 3, &Device::Cpu).unwrap();
    let mut save = multigate::train::OnEpoch(|end: &multigate::train::EpochEnd| {
        multigate::export::write_checkpoint(&dir, &first, &end.checkpoint().unwrap()).map_err(|e| e.to_string())
    });
    let a = multigate::train::fit_from(&first, &c.train, &splits, None, &mut save).unwrap();
    assert!(a.stopped_early && a.epochs.len() < 8, "this configuration stops early: {} epochs", a.epochs.len());
    let second = multigate::backend::candle::CandleModel::new(&c.model, 99, &Device::Cpu).unwrap();
    let ck = multigate::export::read_checkpoint(&dir, &second).unwrap();
    let mut none = multigate::train::OnEpoch(|_: &multigate::train::EpochEnd| Ok(()));
    let b = multigate::train::fit_from(&second, &c.train, &splits, Some(ck), &mut none).unwrap();
    assert_eq!(b.epochs.len(), a.epochs.len(), "no epoch after the stop");
    assert!(b.stopped_early);
    assert_eq!(b.best_epoch, a.best_epoch);
    assert_eq!(b.test, a.test);
}
