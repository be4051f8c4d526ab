//! The device side of training: batches gathered from a device-resident copy of the
//! data, and (on a GPU) CUDA against CPU parity.
//!
//! The GPU tests are `#[ignore]`d: CI has no GPU. `scripts/device-check.sh` runs them
//! on one, from a test binary built with `--features cuda` (`scripts/build-cuda.sh`):
//! `multigate-tests --ignored --test-threads 1 cuda_`. Each prints its largest
//! difference. `MULTIGATE_TEST_DEVICE=cpu` runs them against the CPU itself: a dry run
//! of the tests, not of a device.

use candle_core::{Device, Tensor};
use multigate::backend::candle::{Batch, CandleModel, Feed};
use multigate::data::{self, synthetic};
use multigate::rng::Rng;
use multigate::train::adam::{Adam, AdamConfig};
use multigate::train::shard::{self, Workers};

use super::{compile_ok, model_and_rows, model_files, repo, small_spec, TWO_BINARY_TASKS};

fn assert_same_batch(a: &Batch, b: &Batch) {
    let v = |t: &Tensor| t.flatten_all().unwrap().to_dtype(candle_core::DType::F32).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a.size, b.size);
    assert_eq!(a.cat.len(), b.cat.len());
    for (x, y) in a.cat.iter().zip(&b.cat) {
        assert_eq!(v(x), v(y));
    }
    assert_eq!(a.dense.as_ref().map(v), b.dense.as_ref().map(v));
    assert_eq!(
        a.labels.iter().map(|l| l.as_ref().map(v)).collect::<Vec<_>>(),
        b.labels.iter().map(|l| l.as_ref().map(v)).collect::<Vec<_>>()
    );
    // A resident label column carries its mask whenever any row lacks the label; a host
    // batch only when one of its own rows does. Where both have one they agree, and a
    // missing mask means all ones.
    for (x, y) in a.masks.iter().zip(&b.masks) {
        let ones = vec![1.0; a.size];
        assert_eq!(x.as_ref().map_or(ones.clone(), v), y.as_ref().map_or(ones, v));
    }
}

#[test]
fn resident_batches_equal_host_batches() {
    let c = compile_ok(
        "resident.toml",
        &small_spec("[[layers]]\nkind = \"mmoe\"\nexperts = 2\nunits = [4]\n", TWO_BINARY_TASKS),
    );
    let frame = synthetic::categorical_frame(&c.model, 30, 500, 4);
    let mut ds = data::encode(&c.model, &frame, true).unwrap();
    for (i, y) in ds.labels[1].iter_mut().enumerate() {
        if i % 7 == 0 {
            *y = f32::NAN;
        }
    }
    let host = Feed::Host(&ds, Device::Cpu);
    let resident = Feed::Resident(multigate::backend::candle::Resident::upload(&ds, &Device::Cpu).unwrap());
    let mut rows: Vec<usize> = (0..ds.rows).collect();
    Rng::new(2).shuffle(&mut rows);
    let (oh, or) = (host.order(rows.clone()).unwrap(), resident.order(rows).unwrap());
    for (start, len) in [(0, 128), (128, 128), (256, 200), (456, 44)] {
        assert_same_batch(&host.batch(&oh, start, len).unwrap(), &resident.batch(&or, start, len).unwrap());
    }
    // An order is tied to its feed.
    assert!(resident.batch(&oh, 0, 8).is_err());
}

// ---- CUDA parity (needs a GPU and a build with --features cuda) ----

/// The device the parity tests hold against the CPU: `MULTIGATE_TEST_DEVICE` (cuda,
/// cuda:N, or cpu for a dry run of the tests themselves), default cuda.
fn cuda() -> Device {
    let name = std::env::var("MULTIGATE_TEST_DEVICE").unwrap_or_else(|_| "cuda".into());
    let device: multigate::backend::Device = name.parse().expect("MULTIGATE_TEST_DEVICE: cpu, cuda or cuda:N");
    multigate::backend::candle::candle_device(device)
        .expect("a CUDA device: build with --features cuda and run on a machine with a GPU")
}

fn device_name() -> String {
    std::env::var("MULTIGATE_TEST_DEVICE").unwrap_or_else(|_| "cuda".into())
}

/// The largest difference of `b` from `a`: relative to `a`'s value where that is above
/// 1, absolute below (where a relative one would blow up near 0; losses of binary tasks
/// are below 1, so for them this is the absolute difference).
fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs() / x.abs().max(1.0)).fold(0.0, f32::max)
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_device(&Device::Cpu).unwrap().to_vec1::<f32>().unwrap()
}

#[test]
#[ignore = "needs a CUDA GPU (scripts/device-check.sh)"]
fn cuda_forward_matches_cpu_for_every_model() {
    let gpu = cuda();
    for path in model_files("toml") {
        let (c, ds) = model_and_rows(&path, 1024);
        // The same seed draws the same weights on either device (our host RNG).
        let cpu_model = CandleModel::new(&c.model, 7, &Device::Cpu).unwrap();
        let gpu_model = CandleModel::new(&c.model, 7, &gpu).unwrap();
        let idx: Vec<usize> = (0..512).collect();
        let a = cpu_model.forward(&Batch::gather(&ds, &idx, &Device::Cpu).unwrap()).unwrap();
        let b = gpu_model.forward(&Batch::gather(&ds, &idx, &gpu).unwrap()).unwrap();
        let mut worst = 0f32;
        for (x, y) in a.heads.iter().zip(&b.heads) {
            worst = worst.max(max_rel(&values(x), &values(y)));
        }
        println!("{}: largest forward difference {worst:.2e}", path.display());
        assert!(worst <= 1e-4, "{}: CUDA forward differs from CPU by {worst}", path.display());
    }
}

/// 200 steps from the same weights on the same batches: each step's task losses agree
/// within 1e-3 ([`max_rel`]: absolute below 1), for adam and lazy_adam.
#[test]
#[ignore = "needs a CUDA GPU (scripts/device-check.sh)"]
fn cuda_training_follows_cpu_for_every_model() {
    let gpu = cuda();
    let one = Workers::new(1).unwrap();
    // Every model runs (GPU time is scarce: one run shows every figure); the test fails
    // at the end, naming each that did not agree.
    let mut disagree = Vec::new();
    for path in model_files("toml") {
        let (c, ds) = model_and_rows(&path, 4096);
        for lazy in [false, true] {
            let run = |dev: &Device| -> Vec<Vec<f32>> {
                let mut model = CandleModel::new(&c.model, 7, dev).unwrap();
                model.without_randomness();
                let config = AdamConfig { lazy, ..AdamConfig::from(&c.train) };
                let mut opt = Adam::new(model.vars().to_vec(), config).unwrap();
                let mut rng = Rng::new(3);
                let mut losses = Vec::new();
                for s in 0..200 {
                    let idx: Vec<usize> = (0..256).map(|i| (s * 256 + i) % ds.rows).collect();
                    let batch = Batch::gather(&ds, &idx, dev).unwrap();
                    let step = shard::step(&model, &batch, &mut rng, None, &one).unwrap();
                    opt.step(&step.grads, &step.lookups, c.train.lr).unwrap();
                    losses.push(values(&step.per_task));
                }
                losses
            };
            let (a, b) = (run(&Device::Cpu), run(&gpu));
            let worst = a.iter().zip(&b).map(|(x, y)| max_rel(x, y)).fold(0.0, f32::max);
            let name = if lazy { "lazy_adam" } else { "adam" };
            println!("{} ({name}): largest loss difference over 200 steps {worst:.2e}", path.display());
            if worst > 1e-3 {
                disagree.push(format!("{} ({name}): {worst:.2e}", path.display()));
            }
        }
    }
    assert!(disagree.is_empty(), "CUDA losses differ from CPU by more than 1e-3: {}", disagree.join(", "));
}

/// The device's random ops equal their CPU twins (same hash, same arithmetic).
#[test]
#[ignore = "needs a CUDA GPU (scripts/device-check.sh)"]
fn cuda_random_ops_equal_their_cpu_twins() {
    use multigate::backend::candle::device_ops::{DropoutMask, Fill, StandardNormal};
    let gpu = cuda();
    let shape = (1000, 37);
    let (x, y) = (
        Tensor::zeros(shape, candle_core::DType::F32, &Device::Cpu).unwrap(),
        Tensor::zeros(shape, candle_core::DType::F32, &gpu).unwrap(),
    );
    let op = DropoutMask::new(11, 0.8);
    assert_eq!(values(&op.like(&x).unwrap()), values(&op.like(&y).unwrap()));
    let op = StandardNormal { seed: 11 };
    let worst = max_rel(&values(&op.like(&x).unwrap()), &values(&op.like(&y).unwrap()));
    println!("standard normal: largest difference {worst:.2e}");
    assert!(worst <= 1e-5, "{worst}");
}

/// Adam's kernels against the CPU's fused update on one embedding table looked up with
/// repeated rows (two lookups in a step) and a dense parameter, 20 steps.
#[test]
#[ignore = "needs a CUDA GPU (scripts/device-check.sh)"]
fn cuda_adam_kernels_equal_the_cpu_update() {
    use candle_core::Var;
    use multigate::backend::candle::Lookup;
    let gpu = cuda();
    for lazy in [false, true] {
        let run = |dev: &Device| -> Vec<f32> {
            let mut rng = Rng::new(5);
            let table: Vec<f32> = (0..50 * 8).map(|_| rng.normal() as f32).collect();
            let dense: Vec<f32> = (0..30).map(|_| rng.normal() as f32).collect();
            let table = Var::from_tensor(&Tensor::from_vec(table, (50, 8), dev).unwrap()).unwrap();
            let dense = Var::from_tensor(&Tensor::from_vec(dense, (5, 6), dev).unwrap()).unwrap();
            let config = AdamConfig { lazy, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
            let mut opt = Adam::new(vec![("t".into(), table.clone()), ("d".into(), dense.clone())], config).unwrap();
            for s in 0..20u32 {
                // Rows 0..16 twice over in the first lookup, a shifted window in the second.
                let lookups: Vec<Lookup> = [0u32, 7]
                    .iter()
                    .map(|&shift| {
                        let ids: Vec<u32> = (0..32).map(|i| (i % 16 + shift + s) % 50).collect();
                        let ids = Tensor::from_vec(ids, 32, dev).unwrap();
                        let leaf = Var::from_tensor(&table.as_tensor().index_select(&ids, 0).unwrap()).unwrap();
                        Lookup { var: 0, ids, leaf, slots: None }
                    })
                    .collect();
                let loss = lookups
                    .iter()
                    .map(|l| l.leaf.as_tensor().sqr().unwrap().sum_all().unwrap())
                    .fold((dense.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap(), |a, b| {
                        (a + b).unwrap()
                    });
                let grads = loss.backward().unwrap();
                opt.step(&[grads], &lookups, 0.01).unwrap();
            }
            let mut out = values(table.as_tensor());
            out.extend(values(dense.as_tensor()));
            out.extend(opt.state().unwrap().iter().flat_map(|(_, t)| values(t)));
            out
        };
        let (a, b) = (run(&Device::Cpu), run(&gpu));
        let worst = max_rel(&a, &b);
        println!("adam kernels (lazy: {lazy}): largest difference in weights and moments {worst:.2e}");
        assert!(worst <= 1e-5, "lazy {lazy}: {worst}");
    }
}

/// Training through the CLI on the device: the run ends and scores like the CPU's (the
/// synthetic MMoE's test MSE on its first task; dropout streams differ, so not exactly).
#[test]
#[ignore = "needs a CUDA GPU (scripts/device-check.sh)"]
fn cuda_compile_and_train_scores_like_cpu() {
    let spec = repo().join("models/synthetic_mmoe.toml");
    let mse = |device: &str| -> f64 {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle");
        let out = super::mg_ok(&[
            "compile-and-train",
            spec.to_str().unwrap(),
            "--device",
            device,
            "--out",
            bundle.to_str().unwrap(),
            "--epochs",
            "2",
            "--quiet",
        ]);
        let text = std::fs::read_to_string(bundle.join("metrics.json")).unwrap_or_else(|e| panic!("{e}\n{out}"));
        let metrics: serde_json::Value = serde_json::from_str(&text).unwrap();
        metrics["report"]["test"][0]["mse"].as_f64().unwrap_or_else(|| panic!("no test MSE in {text}"))
    };
    let (cpu, gpu) = (mse("cpu"), mse(&device_name()));
    println!("synthetic MMoE, 2 epochs: test MSE {cpu:.4} on CPU, {gpu:.4} on {}", device_name());
    assert!((cpu - gpu).abs() <= 0.05 * cpu, "CPU {cpu}, device {gpu}");
}
