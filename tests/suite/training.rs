//! Training behaviour: learning happens, Adam is correct and resumable, failures stop
//! with an error, the synthetic generator has the paper's properties.

use candle_core::{Device, Tensor, Var};
use multigate::backend::candle::CandleModel;
use multigate::data::{self, synthetic};
use multigate::train::adam::{Adam, AdamConfig};
use multigate::train::{self, metrics::TaskMetrics, TrainError};

use super::{compile_ok, small_spec, TWO_BINARY_TASKS};

fn mmoe_spec(correlation: f64, rows: usize, epochs: usize) -> String {
    format!(
        r#"
[model]
name = "syn"
[data]
validation_fraction = 0.2
[data.synthetic]
kind = "mmoe"
rows = {rows}
dim = 20
correlation = {correlation}
[[features]]
name = "x"
type = "dense"
width = 20
[[layers]]
kind = "mmoe"
experts = 4
units = [16]
[[tasks]]
name = "y1"
kind = "regression"
label = "y1"
tower = [8]
[[tasks]]
name = "y2"
kind = "regression"
label = "y2"
tower = [8]
[train]
batch_size = 128
epochs = {epochs}
lr = 0.003
"#
    )
}

#[test]
fn mmoe_learns_the_synthetic_tasks() {
    let c = compile_ok("syn.toml", &mmoe_spec(0.5, 6000, 8));
    let (splits, _) = data::load_splits(&c.model, &c.data, None, &|_| String::new()).unwrap();
    let model = CandleModel::new(&c.model, 1, &Device::Cpu).unwrap();
    let before = train::evaluate(&model, &splits.validation, 1024).unwrap().loss;
    let mut epochs = 0;
    let report = train::fit(&model, &c.train, &splits, &mut |_| epochs += 1).unwrap();
    assert_eq!(epochs, 8);
    let after = train::evaluate(&model, &splits.validation, 1024).unwrap().loss;
    assert!(after < before * 0.5, "validation loss {before} -> {after}");
    // The model is left at the best epoch.
    let best = report.epochs[report.best_epoch - 1].validation_loss;
    assert!((after - best).abs() < 1e-6 * best.max(1.0), "restored {after}, best {best}");
    assert_eq!(report.gate_usage.len(), 1);
    for (_, w) in &report.gate_usage[0].gates {
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-4);
    }
    // exp(entropy) of a distribution over 4 experts lies in [1, 4].
    let eff = &report.gate_usage[0].effective_experts;
    assert_eq!(eff.len(), 2);
    assert!(eff.iter().all(|&e| (1.0..=4.0 + 1e-9).contains(&e)), "{eff:?}");
}

#[test]
fn label_correlation_follows_the_task_relatedness() {
    let corr = |p: f64| {
        let c = compile_ok("syn.toml", &mmoe_spec(p, 20000, 1));
        let (_, info) = data::load_splits(&c.model, &c.data, None, &|_| String::new()).unwrap();
        info.label_correlation.unwrap()
    };
    let (c0, c5, c1) = (corr(0.0), corr(0.5), corr(1.0));
    assert!(c1 > 0.99, "p = 1 gives identical tasks up to noise, got {c1}");
    assert!(c0.abs() < 0.1, "p = 0: {c0}");
    assert!(c0 < c5 && c5 < c1, "{c0} {c5} {c1}");
}

#[test]
fn generator_weights_have_the_papers_geometry() {
    let p = synthetic::MmoeParams { dim: 50, correlation: 0.3, scale: 2.0, sin_terms: 10, sin_sd: 1.0, noise_sd: 0.1 };
    let (w1, w2) = synthetic::mmoe_weights(&p, &mut multigate::rng::Rng::new(9));
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    assert!((dot(&w1, &w1).sqrt() - 2.0).abs() < 1e-9);
    assert!((dot(&w2, &w2).sqrt() - 2.0).abs() < 1e-9);
    assert!((dot(&w1, &w2) / 4.0 - 0.3).abs() < 1e-9, "cosine of w1, w2 is p");
}

#[test]
fn adam_matches_the_textbook_update() {
    let dev = Device::Cpu;
    let x = Var::new(&[1.0f32, -2.0, 3.0], &dev).unwrap();
    let cfg = AdamConfig { lazy: false, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let mut opt = Adam::new(vec![("x".to_string(), x.clone())], cfg).unwrap();
    let (mut m, mut v) = ([0f64; 3], [0f64; 3]);
    let mut p = [1.0f64, -2.0, 3.0];
    for step in 1..=3 {
        // loss = sum(x^2) -> grad 2x
        let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
        opt.step(&[loss.backward().unwrap()], &[], 0.1).unwrap();
        for i in 0..3 {
            let g = 2.0 * p[i];
            m[i] = 0.9 * m[i] + 0.1 * g;
            v[i] = 0.999 * v[i] + 0.001 * g * g;
            let mh = m[i] / (1.0 - 0.9f64.powi(step));
            let vh = v[i] / (1.0 - 0.999f64.powi(step));
            p[i] -= 0.1 * mh / (vh.sqrt() + 1e-8);
        }
    }
    let got = x.as_tensor().to_vec1::<f32>().unwrap();
    for i in 0..3 {
        assert!((got[i] as f64 - p[i]).abs() < 1e-5, "{got:?} vs {p:?}");
    }
}

#[test]
fn adam_state_saves_and_resumes_exactly() {
    let dev = Device::Cpu;
    let run = |resume_at: Option<usize>| {
        let x = Var::new(&[0.5f32, -1.5, 2.0, 4.0], &dev).unwrap();
        let cfg = AdamConfig { lazy: false, beta1: 0.8, beta2: 0.99, eps: 1e-8, weight_decay: 0.01 };
        let mut opt = Adam::new(vec![("x".to_string(), x.clone())], cfg).unwrap();
        for step in 0..6 {
            if Some(step) == resume_at {
                let state = opt.state().unwrap();
                let n = opt.step;
                let mut fresh = Adam::new(vec![("x".to_string(), x.clone())], cfg).unwrap();
                fresh.load_state(&state, n).unwrap();
                opt = fresh;
            }
            let loss = (x.as_tensor().sqr().unwrap().sum_all().unwrap() + x.as_tensor().sum_all().unwrap()).unwrap();
            opt.step(&[loss.backward().unwrap()], &[], 0.05).unwrap();
        }
        x.as_tensor().to_vec1::<f32>().unwrap()
    };
    assert_eq!(run(None), run(Some(3)));
}

#[test]
fn diverging_loss_stops_with_the_step() {
    let spec = small_spec("", TWO_BINARY_TASKS).replace("kind = \"binary\"", "kind = \"regression\"");
    let c = compile_ok("nan.toml", &spec);
    let (mut splits, _) = data::load_splits(&c.model, &c.data, None, &|_| String::new()).unwrap();
    // A label of 1e30 squares to infinity in f32.
    splits.train.labels[0][5] = 1e30;
    let model = CandleModel::new(&c.model, 1, &Device::Cpu).unwrap();
    match train::fit(&model, &c.train, &splits, &mut |_| {}) {
        Err(TrainError::NonFinite { task, epoch, step, .. }) => {
            assert_eq!(task, "t1");
            assert_eq!(epoch, 1);
            assert!(step >= 1);
        }
        other => panic!("expected a non-finite loss error, got {:?}", other.map(|r| r.best_epoch)),
    }
}

#[test]
fn categorical_model_beats_chance() {
    let c = compile_ok(
        "cat.toml",
        &small_spec("[[layers]]\nkind = \"mmoe\"\nexperts = 4\nunits = [8]\n", TWO_BINARY_TASKS)
            .replace("rows = 2000", "rows = 8000")
            .replace("epochs = 2", "epochs = 4"),
    );
    let (splits, _) = data::load_splits(&c.model, &c.data, None, &|_| String::new()).unwrap();
    // The spec's seed, as the CLI uses it. (Seeds exist for which a 3-unit ReLU tower dies
    // at lr 0.01 and one task predicts a constant; that is the spec's doing, not the code's.)
    let model = CandleModel::new(&c.model, c.train.seed, &Device::Cpu).unwrap();
    let report = train::fit(&model, &c.train, &splits, &mut |_| {}).unwrap();
    for m in &report.validation {
        let TaskMetrics::Binary(b) = m else { panic!("binary") };
        assert!(b.auc.unwrap() > 0.6, "{m}");
    }
}

#[test]
fn same_seed_same_weights() {
    let c = compile_ok(
        "seed.toml",
        &small_spec("[[layers]]\nkind = \"mmoe\"\nexperts = 2\nunits = [4]\n", TWO_BINARY_TASKS),
    );
    let a = CandleModel::new(&c.model, 5, &Device::Cpu).unwrap();
    let b = CandleModel::new(&c.model, 5, &Device::Cpu).unwrap();
    let d = CandleModel::new(&c.model, 6, &Device::Cpu).unwrap();
    let flat = |m: &CandleModel| {
        Tensor::cat(&m.vars().iter().map(|(_, v)| v.as_tensor().flatten_all().unwrap()).collect::<Vec<_>>(), 0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_eq!(flat(&a), flat(&b));
    assert_ne!(flat(&a), flat(&d));
}

#[test]
fn sparse_embedding_updates_equal_dense_adam() {
    use multigate::backend::candle::Batch;
    let c = compile_ok(
        "sparse.toml",
        &small_spec("[[layers]]\nkind = \"mmoe\"\nexperts = 2\nunits = [4]\n", TWO_BINARY_TASKS),
    );
    let frame = synthetic::categorical_frame(&c.model, 40, 128, 5);
    let ds = data::encode(&c.model, &frame, true).unwrap();
    let batches: Vec<Batch> = (0..2)
        .map(|i| Batch::gather(&ds, &((i * 64)..(i + 1) * 64).collect::<Vec<_>>(), &Device::Cpu).unwrap())
        .collect();
    let cfg = AdamConfig { lazy: false, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
    // The training path: embedding gradients arrive as looked-up rows.
    let sparse = CandleModel::new(&c.model, 2, &Device::Cpu).unwrap();
    let mut opt = Adam::new(sparse.vars().to_vec(), cfg).unwrap();
    for b in batches.iter().chain(&batches) {
        let step = train::batch_loss(&sparse, b, &mut multigate::rng::Rng::new(0)).unwrap();
        assert_eq!(step.lookups.len(), 2, "one lookup per categorical feature");
        opt.step(&[step.total.backward().unwrap()], &step.lookups, 0.01).unwrap();
    }
    // The reference: the evaluation graph (candle's, differentiable) keeps dense table
    // gradients.
    let dense = CandleModel::new(&c.model, 2, &Device::Cpu).unwrap();
    let mut opt = Adam::new(dense.vars().to_vec(), cfg).unwrap();
    for b in batches.iter().chain(&batches) {
        let out = dense.forward_graph(b).unwrap();
        let mut total: Option<Tensor> = None;
        for (h, y) in out.heads.iter().zip(&b.labels) {
            let l = train::loss::bce_with_logits(h, y.as_ref().unwrap()).unwrap();
            total = Some(match total {
                Some(t) => (t + l).unwrap(),
                None => l,
            });
        }
        opt.step(&[total.unwrap().backward().unwrap()], &[], 0.01).unwrap();
    }
    for ((name, a), (_, b)) in sparse.vars().iter().zip(dense.vars()) {
        let d = (a.as_tensor() - b.as_tensor())
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-6, "{name} differs by {d}");
    }
}

#[test]
fn lazy_adam_moves_only_the_rows_a_step_looks_up() {
    use multigate::backend::candle::Batch;
    let spec = small_spec("", TWO_BINARY_TASKS).replace("lr = 0.01", "lr = 0.01\noptimizer = \"lazy_adam\"");
    let c = compile_ok("lazy.toml", &spec);
    assert!(c.train.lazy_embeddings);
    let frame = synthetic::categorical_frame(&c.model, 40, 64, 5);
    let ds = data::encode(&c.model, &frame, true).unwrap();
    let rows = |from: usize, to: usize| Batch::gather(&ds, &(from..to).collect::<Vec<_>>(), &Device::Cpu).unwrap();
    let (first, second) = (rows(0, 32), rows(32, 64));
    let table = |m: &CandleModel| m.vars()[0].1.as_tensor().to_vec2::<f32>().unwrap();
    let run = |lazy: bool, batches: &[&Batch]| {
        let model = CandleModel::new(&c.model, 2, &Device::Cpu).unwrap();
        let cfg = AdamConfig { lazy, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        let mut opt = Adam::new(model.vars().to_vec(), cfg).unwrap();
        for b in batches {
            let step = train::batch_loss(&model, b, &mut multigate::rng::Rng::new(0)).unwrap();
            opt.step(&[step.total.backward().unwrap()], &step.lookups, 0.01).unwrap();
        }
        model
    };
    // From zero moments, the first step is the same either way.
    assert_eq!(table(&run(true, &[&first])), table(&run(false, &[&first])));
    // In the second step, rows only the first batch touched keep still under lazy Adam
    // and keep moving (momentum) under dense Adam.
    let after_one = table(&run(true, &[&first]));
    let (lazy, dense) = (table(&run(true, &[&first, &second])), table(&run(false, &[&first, &second])));
    let ids_first: std::collections::HashSet<u32> = ds.cat[0][..32].iter().copied().collect();
    let ids_second: std::collections::HashSet<u32> = ds.cat[0][32..].iter().copied().collect();
    let only_first: Vec<u32> = ids_first.difference(&ids_second).copied().collect();
    assert!(!only_first.is_empty());
    for r in only_first {
        let r = r as usize;
        assert_eq!(lazy[r], after_one[r], "lazy Adam moved untouched row {r}");
        assert_ne!(dense[r], after_one[r], "dense Adam keeps momentum on row {r}");
    }
    for r in ids_second {
        assert_ne!(lazy[r as usize], after_one[r as usize], "row {r} was looked up and must move");
    }
}

#[test]
fn select_picks_the_epoch_with_the_best_task_metric() {
    let spec = small_spec("[[layers]]\nkind = \"mmoe\"\nexperts = 2\nunits = [4]\n", TWO_BINARY_TASKS)
        .replace("epochs = 2", "epochs = 4\nselect = \"t2.auc\"");
    let c = compile_ok("select.toml", &spec);
    assert_eq!(c.train.select, multigate::ir::Selection::Metric { task: 1, metric: multigate::ir::Metric::Auc });
    let (splits, _) = data::load_splits(&c.model, &c.data, None, &|_| String::new()).unwrap();
    let model = CandleModel::new(&c.model, 1, &Device::Cpu).unwrap();
    let report = train::fit(&model, &c.train, &splits, &mut |_| {}).unwrap();
    let auc = |e: &train::EpochReport| match &e.validation[1] {
        TaskMetrics::Binary(b) => b.auc.unwrap(),
        _ => panic!("binary"),
    };
    let best = report.epochs.iter().map(auc).fold(f64::MIN, f64::max);
    assert_eq!(auc(&report.epochs[report.best_epoch - 1]), best);
    // The model is left at that epoch.
    let TaskMetrics::Binary(now) = &report.validation[1] else { panic!("binary") };
    assert!((now.auc.unwrap() - best).abs() < 1e-9);
}

#[test]
fn patience_stops_training_when_the_criterion_stalls() {
    // With a negligible learning rate, accuracy at 0.5 never changes: epoch 1 stays best
    // and two more epochs without a new best end the run.
    let spec = small_spec("", TWO_BINARY_TASKS)
        .replace("lr = 0.01", "lr = 1e-12")
        .replace("epochs = 2", "epochs = 10\nselect = \"t1.accuracy\"\npatience = 2");
    let c = compile_ok("patience.toml", &spec);
    assert_eq!(c.train.patience, Some(2));
    let (splits, _) = data::load_splits(&c.model, &c.data, None, &|_| String::new()).unwrap();
    let model = CandleModel::new(&c.model, 1, &Device::Cpu).unwrap();
    let report = train::fit(&model, &c.train, &splits, &mut |_| {}).unwrap();
    assert!(report.stopped_early);
    assert_eq!(report.best_epoch, 1);
    assert_eq!(report.epochs.len(), 3);
}
