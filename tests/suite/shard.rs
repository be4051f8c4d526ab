//! Data-parallel steps: the shards' gradients sum to the whole batch's, and training
//! on several workers follows training on one.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use multigate::backend::candle::{Batch, CandleModel};
use multigate::data::{self, synthetic, Dataset};
use multigate::rng::Rng;
use multigate::train::shard::{self, Workers};

use super::{compile_ok, small_spec, smooth_tasks, two_hundred_adam_steps, TWO_BINARY_TASKS};

// tanh, not ReLU: see `smooth_tasks`.
const MMOE: &str = r#"
[[layers]]
kind = "mmoe"
experts = 3
units = [8, 6]
activation = "tanh"
"#;

fn model_and_data(rows: usize) -> (CandleModel, Dataset, multigate::lower::Compiled) {
    let c = compile_ok("shard.toml", &small_spec(MMOE, &smooth_tasks()));
    let model = CandleModel::new(&c.model, 5, &Device::Cpu).unwrap();
    let frame = synthetic::categorical_frame(&c.model, 40, rows, 9);
    let mut ds = data::encode(&c.model, &frame, true).unwrap();
    // Task t2 misses every third label: its loss is a mean over the rows that have one,
    // so each shard's share is its labelled rows, not its rows.
    for (i, y) in ds.labels[1].iter_mut().enumerate() {
        if i % 3 == 0 {
            *y = f32::NAN;
        }
    }
    (model, ds, c)
}

/// Every parameter's gradient from a step: dense ones summed over the shards' stores,
/// embedding tables' from their looked-up rows scattered into the table's shape.
fn gradients(model: &CandleModel, step: &shard::Step) -> HashMap<String, Vec<f32>> {
    let mut out = HashMap::new();
    for (i, (name, var)) in model.vars().iter().enumerate() {
        let mut sum: Option<Tensor> = None;
        for g in step.grads.iter().filter_map(|g| g.get(var.as_tensor())) {
            sum = Some(match sum {
                None => g.clone(),
                Some(s) => (s + g).unwrap(),
            });
        }
        for l in step.lookups.iter().filter(|l| l.var == i) {
            let rows = step.grads.iter().find_map(|g| g.get(l.leaf.as_tensor())).expect("lookup gradient");
            let base = sum.take().unwrap_or_else(|| var.as_tensor().zeros_like().unwrap());
            sum = Some(base.index_add(&l.ids, rows, 0).unwrap());
        }
        if let Some(s) = sum {
            out.insert(name.clone(), s.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
    }
    out
}

#[test]
fn shard_gradients_sum_to_the_whole_batch() {
    let (model, ds, _) = model_and_data(301);
    assert!(shard::shardable(&model));
    let idx: Vec<usize> = (0..301).collect();
    let batch = Batch::gather(&ds, &idx, &Device::Cpu).unwrap();
    let one = Workers::new(1).unwrap();
    let three = Workers::new(3).unwrap();
    assert_eq!(one.shards(&model, 301), 1);
    assert_eq!(three.shards(&model, 301), 3);
    let whole = shard::step(&model, &batch, &mut Rng::new(1), Some(&[1.0, 0.5]), &one).unwrap();
    let split = shard::step(&model, &batch, &mut Rng::new(1), Some(&[1.0, 0.5]), &three).unwrap();
    assert_eq!(whole.grads.len(), 1);
    assert_eq!(split.grads.len(), 3);
    let (whole_loss, split_loss) = (whole.per_task.to_vec1::<f32>().unwrap(), split.per_task.to_vec1::<f32>().unwrap());
    for (a, b) in whole_loss.iter().zip(&split_loss) {
        assert!((a - b).abs() < 1e-5 * a.abs().max(1.0), "task loss {a} whole, {b} in shards");
    }
    let (gw, gs) = (gradients(&model, &whole), gradients(&model, &split));
    assert_eq!(gw.len(), model.vars().len(), "every parameter has a gradient");
    for (name, a) in &gw {
        let b = &gs[name];
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-3);
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(diff <= 1e-4 * scale, "{name}: gradients differ by {diff} (largest {scale})");
    }
}

#[test]
fn models_whose_loss_couples_rows_are_not_sharded() {
    let balanced = MMOE.replace("units = [8, 6]", "units = [8, 6]\nbalance = 0.01");
    let c = compile_ok("shard.toml", &small_spec(&balanced, TWO_BINARY_TASKS));
    let model = CandleModel::new(&c.model, 5, &Device::Cpu).unwrap();
    assert!(!shard::shardable(&model));
    assert_eq!(Workers::new(2).unwrap().shards(&model, 512), 1);
    let spec = small_spec(MMOE, TWO_BINARY_TASKS).replace("[train]", "[train]\nloss_balance = \"uncertainty\"");
    let c = compile_ok("shard.toml", &spec);
    let model = CandleModel::new(&c.model, 5, &Device::Cpu).unwrap();
    assert!(!shard::shardable(&model));
}

/// Two hundred Adam steps (dense and lazy) on two workers end where they end on one,
/// within float rounding (the shards sum their gradients in another order).
#[test]
fn two_workers_train_like_one() {
    for lazy in [false, true] {
        two_workers_train_like_one_with(lazy);
    }
}

fn two_workers_train_like_one_with(lazy: bool) {
    let train = |threads: usize| -> (Vec<f32>, Vec<f32>) {
        let (model, ds, c) = model_and_data(1024);
        two_hundred_adam_steps(&model, &ds, lazy, &c.train, &Workers::new(threads).unwrap())
    };
    let (p1, l1) = train(1);
    let (p2, l2) = train(2);
    let diff = p1.iter().zip(&p2).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff < 1e-3, "parameters differ by {diff} after 200 steps (lazy: {lazy})");
    for (a, b) in l1.iter().zip(&l2) {
        assert!((a - b).abs() < 1e-3, "last losses {l1:?} and {l2:?}");
    }
    // And the training moved: the last loss is below ln 2 for the learnable task.
    assert!(l1[0] < 0.69, "{l1:?}");
}

#[test]
fn sharded_forward_equals_the_whole_batch() {
    let (model, ds, _) = model_and_data(300);
    let idx: Vec<usize> = (0..300).collect();
    let batch = Batch::gather(&ds, &idx, &Device::Cpu).unwrap();
    let whole = model.forward(&batch).unwrap().heads;
    let split = shard::forward(&model, &batch, &Workers::new(2).unwrap()).unwrap();
    for (a, b) in whole.iter().zip(&split) {
        assert_eq!(a.dims(), b.dims());
        let d = (a - b).unwrap().abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-6, "{d}");
    }
}
