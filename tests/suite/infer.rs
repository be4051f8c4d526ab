//! Evaluation on the native interpreter (`backend/native`, the evaluation program): the CPU pass that
//! `CandleModel::forward` runs computes what candle's graph computes
//! (`forward_graph`), heads and gate weights, on every model of `models/` and on the
//! layer kinds, activations, gates, poolings and heads that those do not cover; on a
//! whole batch and on a shard cut from the middle of one (rows at an offset, as
//! `shard::forward` and the predictor's chunks hand them over).

use candle_core::{Device, Tensor};
use multigate::backend::candle::{Batch, CandleModel};
use multigate::data::{synthetic, Dataset};
use multigate::lower::Compiled;
use multigate::rng::Rng;

use super::{compile_ok, model_and_rows, model_files, small_spec, with_product_and_multiclass, TWO_BINARY_TASKS};

/// Every parameter redrawn as N(0, 0.5²): biases non-zero and gates far from uniform,
/// so that a slot, column or bias taken from the wrong place shows.
pub(super) fn scramble(model: &CandleModel, seed: u64) {
    let mut rng = Rng::new(seed);
    for (_, v) in model.vars() {
        let shape = v.as_tensor().dims().to_vec();
        let n: usize = shape.iter().product();
        let w: Vec<f32> = (0..n).map(|_| 0.5 * rng.normal() as f32).collect();
        v.set(&Tensor::from_vec(w, shape, &Device::Cpu).unwrap()).unwrap();
    }
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Asserts two tensors have one shape and agree to 1e-5 (relative above 1).
fn assert_close(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    for (i, (x, y)) in values(a).iter().zip(values(b)).enumerate() {
        let tol = 1e-5 * y.abs().max(1.0);
        assert!((x - y).abs() <= tol, "{what}[{i}]: {x} against the graph's {y}");
    }
}

/// A model of `c` with every parameter redrawn ([`scramble`]), a batch of its first rows
/// (at most 203) and a shard cut from the middle of that batch (rows at an offset, as
/// `shard::forward` and the predictor's chunks hand them over).
pub(super) fn scrambled_batches(c: &Compiled, ds: &Dataset) -> (CandleModel, Batch, Batch) {
    let model = CandleModel::new(&c.model, 5, &Device::Cpu).unwrap();
    scramble(&model, 17);
    let n = ds.rows.min(203);
    let whole = Batch::gather(ds, &(0..n).collect::<Vec<_>>(), &Device::Cpu).unwrap();
    let shard = whole.narrow(n / 3, n / 2).unwrap();
    (model, whole, shard)
}

/// The CPU pass against the graph on rows `0..n` and on rows `at..at + len` of them.
fn check(c: &Compiled, ds: &Dataset, what: &str) {
    let (model, whole, shard) = scrambled_batches(c, ds);
    for (batch, part) in [(&whole, "whole batch"), (&shard, "shard")] {
        let fast = model.forward(batch).unwrap();
        let graph = model.forward_graph(batch).unwrap();
        assert_eq!(fast.heads.len(), graph.heads.len());
        for (t, (a, b)) in fast.heads.iter().zip(&graph.heads).enumerate() {
            assert_close(a, b, &format!("{what}, {part}: task {t}"));
        }
        let heads = model.forward_heads(batch).unwrap();
        for (a, b) in heads.iter().zip(&fast.heads) {
            assert_eq!(values(a), values(b), "{what}: forward_heads differs from forward");
        }
        assert_eq!(fast.gates.len(), graph.gates.len(), "{what}: gated layers");
        for (l, (a, b)) in fast.gates.iter().zip(&graph.gates).enumerate() {
            assert_eq!(a.len(), b.len(), "{what}: layer {l}'s mixes");
            for (m, (x, y)) in a.iter().zip(b).enumerate() {
                assert_close(x, y, &format!("{what}, {part}: layer {l} mix {m} gate weights"));
            }
        }
    }
}

#[test]
fn every_model_evaluates_as_the_graph_does() {
    let files = model_files("toml");
    assert!(files.len() >= 10, "models/ holds {} specs", files.len());
    for path in files {
        let (c, ds) = model_and_rows(&path, 203);
        check(&c, &ds, &path.display().to_string());
    }
}

/// The small spec with `layers` and `tasks`, and `rows` rows of categorical data for it.
pub(super) fn small(layers: &str, tasks: &str, rows: usize) -> (Compiled, Dataset) {
    let c = compile_ok("infer.toml", &small_spec(layers, tasks));
    let frame = synthetic::categorical_frame(&c.model, 40, rows, 5);
    let ds = multigate::data::encode(&c.model, &frame, true).unwrap();
    (c, ds)
}

fn check_layers(layers: &str, tasks: &str) {
    let (c, ds) = small(layers, tasks, 150);
    check(&c, &ds, layers);
}

/// Layer stacks that the models of `models/` do not cover, for the evaluation and the
/// training passes without autograd: deep experts in each activation (depth i > 0 reads
/// each expert's columns), ungated layers, tempered top-k gates (ties and all), PLE
/// levels, and no layers at all.
pub(super) const LAYER_CASES: &[&str] = &[
    "[[layers]]\nkind = \"mmoe\"\nexperts = 3\nunits = [7, 5, 4]\nactivation = \"tanh\"\n",
    "[[layers]]\nkind = \"mmoe\"\nexperts = 2\nunits = [6, 3]\nactivation = \"gelu\"\n",
    "[[layers]]\nkind = \"moe\"\nexperts = 4\nunits = [5]\nactivation = \"sigmoid\"\n",
    "[[layers]]\nkind = \"mmoe\"\nexperts = 2\nunits = [5]\nactivation = \"linear\"\n",
    "[[layers]]\nkind = \"mmoe\"\nexperts = 3\nunits = [8, 6]\n",
    // Ungated: one instance, written straight into the stream.
    "[[layers]]\nkind = \"shared_bottom\"\nunits = [6, 4]\n",
    "[[layers]]\nkind = \"mmoe\"\nexperts = 4\nunits = [6]\ntemperature = 0.5\ntop_k = 2\nnoise = false\n",
    // PLE: task and shared slots, runs on one slot each, unequal gates, then a
    // slotwise MMoE whose run covers every slot.
    "[[layers]]\nkind = \"cgc\"\nexperts = 2\ntask_experts = 1\nunits = [6]\ntop_k = 1\nnoise = false\n\n\
     [[layers]]\nkind = \"cgc\"\nexperts = 3\ntask_experts = { t2 = 2 }\nunits = [5]\ntemperature = 2.0\n\n\
     [[layers]]\nkind = \"cgc\"\nexperts = 1\ntask_experts = 2\nunits = [4]\n\n\
     [[layers]]\nkind = \"mmoe\"\nexperts = 2\nunits = [3]\n",
    // No layers: the towers read the input row.
    "",
];

#[test]
fn layer_kinds_and_activations_evaluate_as_the_graph_does() {
    // Top-k gates with a balance loss and (in training) noise: evaluation has neither.
    let balanced =
        "[[layers]]\nkind = \"mmoe\"\nexperts = 4\nunits = [6]\ntemperature = 0.5\ntop_k = 2\nbalance = 0.01\n";
    for &layers in LAYER_CASES.iter().chain([&balanced]) {
        check_layers(layers, TWO_BINARY_TASKS);
    }
}

#[test]
fn towers_products_and_multiclass_heads_evaluate_as_the_graph_does() {
    // A tower reading an inner PLE level, an ESMM product, a multiclass head.
    let tasks = with_product_and_multiclass(&TWO_BINARY_TASKS.replace("tower = [4]", "tower = [4]\ninput = \"l1\""));
    check_layers(
        "[[layers]]\nname = \"l1\"\nkind = \"cgc\"\nexperts = 2\ntask_experts = 1\nunits = [6]\n\n\
         [[layers]]\nname = \"l2\"\nkind = \"cgc\"\nexperts = 2\ntask_experts = 1\nunits = [5]\n",
        &tasks,
    );
}

#[test]
fn bags_of_each_pooling_evaluate_as_the_graph_does() {
    // Mean, weighted sum and max pooling, with empty rows, padding and a shared table.
    let (c, ds) = super::bags::encoded(super::bags::SPEC, super::bags::ROWS);
    check(&c, &ds, "bags");
}

/// An id outside its table is an error, not a read past the table.
#[test]
fn an_id_outside_its_table_is_an_error() {
    let (c, mut ds) = small("[[layers]]\nkind = \"mmoe\"\nexperts = 2\nunits = [4]\n", TWO_BINARY_TASKS, 10);
    ds.cat[0][3] = 1_000_000;
    let model = CandleModel::new(&c.model, 5, &Device::Cpu).unwrap();
    let batch = Batch::gather(&ds, &(0..10).collect::<Vec<_>>(), &Device::Cpu).unwrap();
    let err = model.forward(&batch).err().expect("an error").to_string();
    assert!(err.contains("outside its table"), "{err}");
}

/// No rows in, no rows out: every head empty, in its shape.
#[test]
fn an_empty_batch_gives_empty_heads() {
    let layers = "[[layers]]\nkind = \"cgc\"\nexperts = 2\ntask_experts = 1\nunits = [4]\n";
    let (c, ds) = small(layers, TWO_BINARY_TASKS, 10);
    let model = CandleModel::new(&c.model, 5, &Device::Cpu).unwrap();
    let batch = Batch::gather(&ds, &[], &Device::Cpu).unwrap();
    let out = model.forward(&batch).unwrap();
    assert_eq!(out.heads.len(), 2);
    for h in &out.heads {
        assert_eq!(h.dims(), [0]);
    }
    for g in out.gates.iter().flatten() {
        assert_eq!(g.dim(0).unwrap(), 0);
    }
}

/// Threads scoring at once each take their own scratch from the pool: the results equal
/// those of one thread, batch for batch, whatever sizes came before on the same scratch.
#[test]
fn concurrent_passes_equal_sequential_ones() {
    let (c, ds) = small("[[layers]]\nkind = \"mmoe\"\nexperts = 3\nunits = [6, 4]\n", TWO_BINARY_TASKS, 400);
    let model = CandleModel::new(&c.model, 5, &Device::Cpu).unwrap();
    scramble(&model, 3);
    // Batches of different sizes, so a reused scratch holds stale, longer rows.
    let batches: Vec<Batch> = [(0, 300), (10, 7), (50, 120), (3, 1), (200, 199)]
        .iter()
        .map(|&(at, len)| Batch::gather(&ds, &(at..at + len).collect::<Vec<_>>(), &Device::Cpu).unwrap())
        .collect();
    let expected: Vec<Vec<Vec<f32>>> =
        batches.iter().map(|b| model.forward_graph(b).unwrap().heads.iter().map(values).collect()).collect();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (model, batches, expected) = (&model, &batches, &expected);
            s.spawn(move || {
                for round in 0..10 {
                    let i = (t + round) % batches.len();
                    let got: Vec<Vec<f32>> = model.forward(&batches[i]).unwrap().heads.iter().map(values).collect();
                    for (g, e) in got.iter().zip(&expected[i]) {
                        assert_eq!(g.len(), e.len());
                        for (x, y) in g.iter().zip(e) {
                            assert!((x - y).abs() <= 1e-5 * y.abs().max(1.0), "thread {t} batch {i}: {x} against {y}");
                        }
                    }
                }
            });
        }
    });
}
