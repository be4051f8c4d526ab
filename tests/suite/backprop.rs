//! Training on the native interpreter (`backend/native`, the derived backward program):
//! its losses and gradients equal candle's autograd of the same loss
//! (`train::batch_loss_weighted`), dense parameters and looked-up rows, on every model
//! of `models/` it applies to and on the layer kinds, activations, gates, poolings,
//! heads, label masks and loss factors those do not cover; on a whole batch and on a
//! shard cut from the middle of one. And two hundred Adam steps through it end where
//! two hundred through the graph end.

use candle_core::{Device, Tensor};
use multigate::backend::candle::{Batch, CandleModel};
use multigate::data::Dataset;
use multigate::lower::Compiled;
use multigate::rng::Rng;
use multigate::train::shard::{self, Workers};

use super::infer::{scramble, small, LAYER_CASES};
use super::{
    central_difference, compile_ok, model_and_rows, model_files, small_spec, smooth_tasks, two_hundred_adam_steps,
    with_product_and_multiclass, TWO_BINARY_TASKS,
};

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Asserts two gradients have one shape and agree to 1e-4 of the larger of their
/// largest value and `floor` (the GEMMs sum in another order than candle's; a gradient
/// far smaller than the step's others, such as an attention's query after its softmax's
/// cancellation, carries their rounding: `floor` is 1e-3 of the step's largest).
fn assert_close(a: &Tensor, b: &Tensor, what: &str, floor: f32) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    let (a, b) = (values(a), values(b));
    let scale = b.iter().fold(floor, |m, x| m.max(x.abs()));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() <= 1e-4 * scale, "{what}[{i}]: {x} against autograd's {y} (largest {scale})");
    }
}

/// The native step against autograd on `batch`, with loss factors `factors`.
fn check_batch(model: &CandleModel, batch: &Batch, factors: Option<&[f64]>, what: &str) {
    assert!(model.native_training(), "{what}: should train on the native interpreter");
    let hand = model.train_step(batch, factors, &mut Rng::new(1)).unwrap();
    let loss = multigate::train::batch_loss_weighted(model, batch, &mut Rng::new(1), factors).unwrap();
    let grads = loss.total.backward().unwrap();
    let largest = |t: &Tensor| values(t).iter().fold(0f32, |m, x| m.max(x.abs()));
    let leaves = loss.lookups.iter().map(|l| l.leaf.as_tensor());
    let floor = 1e-3
        * model
            .vars()
            .iter()
            .map(|(_, v)| v.as_tensor())
            .chain(leaves)
            .filter_map(|t| grads.get(t))
            .map(largest)
            .fold(1.0, f32::max);
    for (t, (a, l)) in hand.per_task.iter().zip(&loss.per_task).enumerate() {
        let b = l.to_scalar::<f32>().unwrap();
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{what}: task {t}'s loss {a} against {b}");
    }
    for (name, v) in model.vars() {
        match (hand.grads.get(v.as_tensor()), grads.get(v.as_tensor())) {
            (Some(a), Some(b)) => assert_close(a, b, &format!("{what}: {name}"), floor),
            (None, None) => {}
            (a, _) => {
                panic!("{what}: {name} has a gradient only {}", if a.is_some() { "by hand" } else { "in autograd" })
            }
        }
    }
    assert_eq!(hand.lookups.len(), loss.lookups.len(), "{what}: lookups");
    for (i, (a, b)) in hand.lookups.iter().zip(&loss.lookups).enumerate() {
        assert_eq!(a.var, b.var, "{what}: lookup {i}'s table");
        assert_eq!(
            values(&a.ids.to_dtype(candle_core::DType::F32).unwrap()),
            values(&b.ids.to_dtype(candle_core::DType::F32).unwrap())
        );
        assert_eq!(a.slots.is_some(), b.slots.is_some(), "{what}: lookup {i}'s slots");
        let (ga, gb) = (hand.grads.get(a.leaf.as_tensor()), grads.get(b.leaf.as_tensor()));
        assert_close(
            ga.expect("hand lookup gradient"),
            gb.expect("autograd lookup gradient"),
            &format!("{what}: lookup {i}"),
            floor,
        );
    }
}

/// [`check_batch`] on rows `0..n` and on rows `n/3..n/3 + n/2` of them, parameters
/// redrawn so that biases and gates matter.
fn check(c: &Compiled, ds: &Dataset, what: &str) {
    let (model, whole, shard) = super::infer::scrambled_batches(c, ds);
    check_batch(&model, &whole, None, &format!("{what}, whole batch"));
    check_batch(&model, &shard, None, &format!("{what}, shard"));
}

#[test]
fn every_model_differentiates_as_autograd_does() {
    let mut checked = 0;
    for path in model_files("toml") {
        let (c, ds) = model_and_rows(&path, 203);
        let model = CandleModel::new(&c.model, 5, &Device::Cpu).unwrap();
        if !model.native_training() {
            println!("{}: trains through the graph (a coupled loss)", path.display());
            continue;
        }
        check(&c, &ds, &path.display().to_string());
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} models of models/ train without autograd");
}

#[test]
fn layer_kinds_and_activations_differentiate_as_autograd_does() {
    for layers in LAYER_CASES {
        let (c, ds) = small(layers, TWO_BINARY_TASKS, 150);
        check(&c, &ds, layers);
    }
}

#[test]
fn towers_products_and_multiclass_heads_differentiate_as_autograd_does() {
    let tasks = format!(
        "{}\n[[tasks]]\nname = \"t3\"\nkind = \"binary\"\nlabel = \"y1\"\nproduct = [\"t1\", \"t2\"]\n\n\
         [[tasks]]\nname = \"t4\"\nkind = \"multiclass\"\nlabel = \"k\"\nclasses = [\"p\", \"q\", \"r\"]\ntower = [5, 4]\n\
         activation = \"gelu\"\n\n\
         [[tasks]]\nname = \"t5\"\nkind = \"regression\"\nlabel = \"v\"\ntower = [3]\nactivation = \"sigmoid\"\n",
        TWO_BINARY_TASKS.replace("tower = [4]", "tower = [4]\ninput = \"l1\"")
    );
    let (c, ds) = small(
        "[[layers]]\nname = \"l1\"\nkind = \"cgc\"\nexperts = 2\ntask_experts = 1\nunits = [6]\n\n\
         [[layers]]\nname = \"l2\"\nkind = \"cgc\"\nexperts = 2\ntask_experts = 1\nunits = [5]\n",
        &tasks,
        150,
    );
    check(&c, &ds, "towers and heads");
    // A class label that is no class index: no loss and no gradient, as in the graph.
    let mut ds = ds;
    ds.labels[3][0] = 7.0;
    check(&c, &ds, "a label outside the classes");
}

#[test]
fn bags_of_each_pooling_differentiate_as_autograd_does() {
    let (c, ds) = super::bags::encoded(super::bags::SPEC, super::bags::ROWS);
    check(&c, &ds, "bags");
}

/// Missing labels (each task's mean over its labelled rows) and loss factors (DWA's).
#[test]
fn masks_and_loss_factors_differentiate_as_autograd_does() {
    let (c, mut ds) = small("[[layers]]\nkind = \"mmoe\"\nexperts = 3\nunits = [6]\n", TWO_BINARY_TASKS, 120);
    for (i, y) in ds.labels[1].iter_mut().enumerate() {
        if i % 3 == 0 {
            *y = f32::NAN;
        }
    }
    let model = CandleModel::new(&c.model, 5, &Device::Cpu).unwrap();
    scramble(&model, 4);
    let batch = Batch::gather(&ds, &(0..120).collect::<Vec<_>>(), &Device::Cpu).unwrap();
    assert!(batch.masks[1].is_some());
    check_batch(&model, &batch, Some(&[0.7, 1.9]), "masks and factors");
    // A shard whose task-2 labels are all missing: that task adds nothing.
    let none: Vec<usize> = (0..40).map(|i| 3 * i).collect();
    let batch = Batch::gather(&ds, &none, &Device::Cpu).unwrap();
    check_batch(&model, &batch, None, "no labels for t2");
}

/// Dropout in experts (depth 0 and deeper) and towers: the native step draws the
/// graph's masks from the same stream, so its gradients are autograd's, unsharded and
/// in shards (each shard's stream seeded from the run's, as the graph's step does).
#[test]
fn dropout_differentiates_as_autograd_does() {
    let tasks = TWO_BINARY_TASKS.replace("tower = [4]", "tower = [5, 4]\ndropout = 0.3\nactivation = \"tanh\"");
    for layers in [
        "[[layers]]\nkind = \"mmoe\"\nexperts = 3\nunits = [7, 5]\ndropout = 0.25\n",
        "[[layers]]\nkind = \"cgc\"\nexperts = 2\ntask_experts = 1\nunits = [6, 4]\ndropout = 0.2\nactivation = \"sigmoid\"\n",
    ] {
        let (c, ds) = small(layers, &tasks, 150);
        check(&c, &ds, layers);
        let mut model = CandleModel::new(&c.model, 5, &Device::Cpu).unwrap();
        // Non-zero biases: with the initial zero ones, a row whose units all dropped
        // meets the next depth's ReLU exactly at 0, where candle's ReLU passes the
        // gradient and ours (like the fused dense op's) does not; both are subgradients.
        scramble(&model, 6);
        let batch = Batch::gather(&ds, &(0..150).collect::<Vec<_>>(), &Device::Cpu).unwrap();
        let workers = Workers::new(2).unwrap();
        let hand = shard::step(&model, &batch, &mut Rng::new(8), None, &workers).unwrap();
        model.set_graph_training(true);
        let graph = shard::step(&model, &batch, &mut Rng::new(8), None, &workers).unwrap();
        assert_eq!((hand.grads.len(), graph.grads.len()), (2, 2));
        for (s, (h, g)) in hand.grads.iter().zip(&graph.grads).enumerate() {
            for (name, v) in model.vars() {
                if let (Some(a), Some(b)) = (h.get(v.as_tensor()), g.get(v.as_tensor())) {
                    assert_close(a, b, &format!("{layers}: shard {s}, {name}"), 1e-3);
                }
            }
        }
        // Dropout did drop: another stream's masks give other gradients.
        model.set_graph_training(false);
        let (one, two) = (Rng::new(1), Rng::new(2));
        let g1 = model.train_step(&batch, None, &mut { one }).unwrap();
        let g2 = model.train_step(&batch, None, &mut { two }).unwrap();
        let (_, w) = &model.vars().iter().find(|(n, _)| n.contains("experts")).unwrap();
        assert_ne!(values(g1.grads.get(w.as_tensor()).unwrap()), values(g2.grads.get(w.as_tensor()).unwrap()));
    }
}

/// Noise and balance losses train natively; a loss coupled across the batch through the graph.
#[test]
fn noise_and_balance_train_natively_and_coupled_losses_through_the_graph() {
    let base = "[[layers]]\nkind = \"mmoe\"\nexperts = 3\nunits = [6]\n";
    for layers in [
        // Noisy top-k (noise is on by default with top_k), and both balance losses.
        base.replace("units = [6]", "units = [6]\ntop_k = 2"),
        base.replace("units = [6]", "units = [6]\nbalance = 0.01"),
        base.replace("units = [6]", "units = [6]\ntop_k = 2\nbalance = 0.01"),
    ] {
        let (c, ds) = small(&layers, TWO_BINARY_TASKS, 150);
        let (model, whole, _) = super::infer::scrambled_batches(&c, &ds);
        // The same random stream: the same noise and dropout draws.
        check_batch(&model, &whole, None, &layers);
    }
    let spec = small_spec(base, TWO_BINARY_TASKS).replace("[train]", "[train]\nloss_balance = \"uncertainty\"");
    let model = CandleModel::new(&compile_ok("graph.toml", &spec).model, 5, &Device::Cpu).unwrap();
    assert!(!model.native_training());
    let mut model =
        CandleModel::new(&compile_ok("graph.toml", &small_spec(base, TWO_BINARY_TASKS)).model, 5, &Device::Cpu)
            .unwrap();
    assert!(model.native_training());
    model.set_graph_training(true);
    assert!(!model.native_training());
}

/// Two hundred Adam steps (dense and lazy) through the native backward end where
/// two hundred through autograd end, within float rounding (its GEMMs sum in another
/// order): the same algorithm.
#[test]
fn two_hundred_steps_train_as_autograd_does() {
    // tanh, not ReLU: see `smooth_tasks`.
    let spec = small_spec(
        "[[layers]]\nkind = \"cgc\"\nexperts = 2\ntask_experts = 1\nunits = [8, 6]\nactivation = \"tanh\"\n\n\
         [[layers]]\nkind = \"mmoe\"\nexperts = 3\nunits = [6]\nactivation = \"tanh\"\n",
        &smooth_tasks(),
    );
    let c = compile_ok("steps.toml", &spec);
    let frame = multigate::data::synthetic::categorical_frame(&c.model, 40, 1024, 9);
    let ds = multigate::data::encode(&c.model, &frame, true).unwrap();
    for lazy in [false, true] {
        let train = |graph: bool, threads: usize| -> (Vec<f32>, Vec<f32>) {
            let mut model = CandleModel::new(&c.model, 5, &Device::Cpu).unwrap();
            model.set_graph_training(graph);
            assert_eq!(model.native_training(), !graph);
            two_hundred_adam_steps(&model, &ds, lazy, &c.train, &Workers::new(threads).unwrap())
        };
        let (pg, lg) = train(true, 1);
        for threads in [1, 2] {
            let (ph, lh) = train(false, threads);
            let diff = pg.iter().zip(&ph).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff < 2e-3, "parameters differ by {diff} after 200 steps (lazy: {lazy}, {threads} threads)");
            for (a, b) in lg.iter().zip(&lh) {
                assert!((a - b).abs() < 1e-3, "last losses {lg:?} (autograd) and {lh:?} (lazy: {lazy})");
            }
        }
        assert!(lg[0] < 0.69, "training moved: {lg:?}");
    }
}

/// The native step's gradients against central finite differences of its own loss
/// (in f64 of the f32 losses), on a smooth model (tanh everywhere: a ReLU kink is not a
/// derivative) with every kind of parameter: embeddings through a cross, deep experts,
/// gates, towers, an ESMM product and a multiclass head.
#[test]
fn hand_gradients_match_finite_differences() {
    let layers = "[[layers]]\nkind = \"cgc\"\nexperts = 2\ntask_experts = 1\nunits = [6, 4]\nactivation = \"tanh\"\n";
    let (c, ds) = small(layers, &with_product_and_multiclass(&smooth_tasks()), 64);
    let model = CandleModel::new(&c.model, 5, &Device::Cpu).unwrap();
    scramble(&model, 9);
    let batch = Batch::gather(&ds, &(0..64).collect::<Vec<_>>(), &Device::Cpu).unwrap();
    assert!(model.native_training());
    let weights: Vec<f64> = c.model.tasks.iter().map(|t| t.loss_weight as f64).collect();
    let loss = || -> f64 {
        let g = model.train_step(&batch, None, &mut Rng::new(1)).unwrap();
        g.per_task.iter().zip(&weights).map(|(&l, w)| l as f64 * w).sum()
    };
    let step = model.train_step(&batch, None, &mut Rng::new(1)).unwrap();
    let h = 2e-3f32;
    let mut checked = 0;
    for (i, (name, v)) in model.vars().iter().enumerate() {
        // A table's gradient is its looked-up rows'; check the dense parameters here and
        // one looked-up row of each table through its lookup.
        let lookups: Vec<_> = step.lookups.iter().filter(|l| l.var == i).collect();
        let (g, coords): (Vec<f32>, Vec<(usize, usize)>) = match lookups.first() {
            Some(first) => {
                let dim = v.as_tensor().dim(1).unwrap();
                // The first id's row, summed over every row of every lookup that read it.
                let id = first.ids.to_vec1::<u32>().unwrap()[0] as usize;
                let mut g = vec![0f32; dim];
                for l in &lookups {
                    let rows = values(step.grads.get(l.leaf.as_tensor()).unwrap());
                    for (r, &other) in l.ids.to_vec1::<u32>().unwrap().iter().enumerate() {
                        if other as usize == id {
                            g.iter_mut().zip(&rows[r * dim..(r + 1) * dim]).for_each(|(s, x)| *s += x);
                        }
                    }
                }
                (g, (0..dim.min(3)).map(|j| (id * dim + j, j)).collect())
            }
            None => {
                let g = values(step.grads.get(v.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}")));
                let n = g.len();
                (g, [0, n / 2, n - 1].into_iter().map(|j| (j, j)).collect())
            }
        };
        for (at, gi) in coords {
            let numeric = central_difference(v, at, h, &loss);
            let analytic = g[gi] as f64;
            assert!(
                (numeric - analytic).abs() <= 2e-3 + 0.03 * analytic.abs(),
                "{name}[{at}]: native {analytic}, finite differences {numeric}"
            );
            checked += 1;
        }
    }
    assert!(checked > 40, "{checked} coordinates");
}

/// No rows: every loss 0 and every gradient zero, no error. An id outside its table is
/// an error, not a read past the table.
#[test]
fn empty_batches_and_bad_ids() {
    let (c, mut ds) = small("[[layers]]\nkind = \"mmoe\"\nexperts = 2\nunits = [4]\n", TWO_BINARY_TASKS, 10);
    let model = CandleModel::new(&c.model, 5, &Device::Cpu).unwrap();
    let empty = Batch::gather(&ds, &[], &Device::Cpu).unwrap();
    let g = model.train_step(&empty, None, &mut Rng::new(1)).unwrap();
    assert!(g.per_task.iter().all(|&l| l == 0.0), "{:?}", g.per_task);
    for (name, v) in model.vars() {
        if let Some(t) = g.grads.get(v.as_tensor()) {
            assert!(values(t).iter().all(|&x| x == 0.0), "{name}");
        }
    }
    ds.cat[0][3] = 1_000_000;
    let batch = Batch::gather(&ds, &(0..10).collect::<Vec<_>>(), &Device::Cpu).unwrap();
    let err = model.train_step(&batch, None, &mut Rng::new(1)).err().expect("an error").to_string();
    assert!(err.contains("outside its table"), "{err}");
}
