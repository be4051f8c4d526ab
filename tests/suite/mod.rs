mod aitm;
mod backprop;
mod bags;
mod buckets;
mod cli;
mod csv_data;
mod datasets;
mod device;
mod export;
mod fmt;
mod fused;
mod groups;
mod infer;
mod inputs;
mod models;
mod onnx;
mod program;
mod real_data;
mod release;
mod report;
mod robustness;
mod runs;
mod serve;
mod shard;
mod stream;
mod tables;
mod training;
mod zoo;

use std::path::{Path, PathBuf};
use std::process::Command;

use multigate::lower::Compiled;
use multigate::pipeline::compile_source;
use multigate::source::SourceFile;

/// The repository root: where the test binary was built, or `MULTIGATE_REPO` (a test
/// binary carried to another machine, as `scripts/device-check.sh` does).
pub fn repo() -> PathBuf {
    std::env::var_os("MULTIGATE_REPO").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

/// A temporary folder holding `t.csv` (`csv`) and the spec `name` (`spec`); the folder
/// and the spec's path.
pub fn spec_with_data(name: &str, spec: &str, csv: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    std::fs::write(dir.path().join("t.csv"), csv).expect("t.csv written");
    let path = dir.path().join(name);
    std::fs::write(&path, spec).expect("the spec written");
    (dir, path)
}

/// Trains `spec` through the CLI into `bundle` beside it, then scores `rows` with that
/// bundle: the bundle's path and the predictions as CSV text.
pub fn train_and_predict(spec: &Path, rows: &Path) -> (PathBuf, String) {
    let dir = spec.parent().expect("a spec in a folder");
    let bundle = dir.join("bundle");
    let preds = dir.join("predictions.csv");
    mg_ok(&["compile-and-train", &spec.to_string_lossy(), "--out", &bundle.to_string_lossy(), "--quiet"]);
    mg_ok(&["predict", &bundle.to_string_lossy(), &rows.to_string_lossy(), "--out", &preds.to_string_lossy()]);
    let text = std::fs::read_to_string(&preds).expect("predictions written");
    (bundle, text)
}

/// `models/synthetic_history.toml` reading `train.csv` and `val.csv` beside it (made by
/// its generator), with `extra` in its `[data]` table.
pub fn history_spec(dir: &Path, rows: usize, extra: &str) -> PathBuf {
    let model = repo().join("models/synthetic_history.toml");
    for (file, n) in [("train.csv", rows), ("val.csv", 3000)] {
        let out = dir.join(file);
        if !out.exists() {
            mg_ok(&["synth", model.to_str().unwrap(), "--rows", &n.to_string(), "--out", out.to_str().unwrap()]);
        }
    }
    let text = std::fs::read_to_string(&model).unwrap();
    let (a, b) = (text.find("[data.synthetic]").unwrap(), text.find("[[features]]").unwrap());
    let data = format!("[data]\nsource = \"csv\"\ntrain = [\"train.csv\"]\nvalidation = \"val.csv\"\n{extra}\n");
    let text = format!("{}{data}{}", &text[..a], &text[b..]).replace("epochs = 3", "epochs = 2");
    let path = dir.join(format!("spec{}.toml", extra.len()));
    std::fs::write(&path, text).unwrap();
    path
}

/// The specs in models/ whose file name ends in `.{ext}`, sorted.
pub fn model_files(ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("models"))
        .expect("models/ is readable")
        .map(|e| e.expect("a models/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files
}

/// `../shared/data` beside the checkout, or None (with the reason printed) when absent.
pub fn shared_data(what: &str) -> Option<PathBuf> {
    let p = repo().join("../shared/data");
    if p.is_dir() {
        Some(p)
    } else {
        // Straight to stderr, not through the test harness's capture, so that the skip
        // shows in a normal `cargo test` run.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {what}: {} is absent (a clone without ../shared); CI has it",
            p.display()
        );
        None
    }
}

/// Whether python3 with the modules is here; in CI (`CI` set) their absence fails.
pub fn python_with(modules: &str, what: &str) -> bool {
    let ok =
        Command::new("python3").args(["-c", &format!("import {modules}")]).output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run {what}: python3 with {modules} is missing (.ci/run installs them with pip)"
        );
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {what}: python3 with {modules} is not installed (pip install {})",
            modules.replace(',', "")
        );
    }
    ok
}

/// Runs the binary from the repository root (one CPU thread, no colour) with extra
/// environment: exit code (None when killed by a signal), stdout, stderr.
pub fn multigate(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    // `MULTIGATE_BIN`: the binary beside a carried test binary.
    let bin =
        std::env::var_os("MULTIGATE_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_multigate")), PathBuf::from);
    let mut cmd = Command::new(bin);
    cmd.args(args).current_dir(repo()).env("NO_COLOR", "1").env("RAYON_NUM_THREADS", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the multigate binary runs");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Runs the binary, which must succeed; returns stdout and stderr together.
pub fn mg_ok(args: &[&str]) -> String {
    let (code, out, err) = multigate(args, &[]);
    assert_eq!(code, Some(0), "{args:?}:\n{out}{err}");
    format!("{out}{err}")
}

/// Compiles spec text that must be valid.
pub fn compile_ok(name: &str, text: &str) -> Compiled {
    let src = SourceFile::from_text(name, text);
    match compile_source(&src) {
        Ok(c) => c,
        Err(e) => panic!("{name} should compile:\n{}", e.render(Some(&src), false)),
    }
}

/// Compiles a spec file that must be valid (data paths resolve against its folder).
pub fn compile_path(path: &Path) -> Compiled {
    let src = SourceFile::read(path).expect("readable spec");
    match compile_source(&src) {
        Ok(c) => c,
        Err(e) => panic!("{} should compile:\n{}", path.display(), e.render(Some(&src), false)),
    }
}

/// A small MMoE spec over two categoricals, a dense pair and a cross.
pub fn small_spec(layers: &str, tasks: &str) -> String {
    format!(
        r#"
[model]
name = "small"

[data.synthetic]
kind = "categorical"
rows = 2000

[[features]]
name = "a"
type = "categorical"
hash_buckets = 50
embedding_dim = 4

[[features]]
name = "b"
type = "categorical"
vocabulary = ["x", "y", "z"]
embedding_dim = 4

[[features]]
name = "d"
type = "dense"
width = 2

[[crosses]]
name = "ab"
features = ["a", "b"]

{layers}
{tasks}

[train]
batch_size = 64
epochs = 2
lr = 0.01
"#
    )
}

pub const TWO_BINARY_TASKS: &str = r#"
[[tasks]]
name = "t1"
kind = "binary"
label = "y1"
tower = [4]

[[tasks]]
name = "t2"
kind = "binary"
label = "y2"
tower = [3]
"#;

/// [`TWO_BINARY_TASKS`] with tanh towers: smooth, for finite differences (a ReLU kink is
/// no derivative) and for long trajectories compared across summation orders (a unit on
/// either side of a kink now and then, which Adam turns into a visible step).
pub fn smooth_tasks() -> String {
    TWO_BINARY_TASKS
        .replace("tower = [4]", "tower = [4]\nactivation = \"tanh\"")
        .replace("tower = [3]", "tower = [3]\nactivation = \"tanh\"")
}

/// `tasks` and two more heads over them: an ESMM product `t3 = t1 * t2` and a
/// three-class head `t4` with a tanh tower.
pub fn with_product_and_multiclass(tasks: &str) -> String {
    format!(
        "{tasks}\n[[tasks]]\nname = \"t3\"\nkind = \"binary\"\nlabel = \"y1\"\nproduct = [\"t1\", \"t2\"]\n\n\
         [[tasks]]\nname = \"t4\"\nkind = \"multiclass\"\nlabel = \"k\"\nclasses = [\"p\", \"q\", \"r\"]\ntower = [5]\nactivation = \"tanh\"\n"
    )
}

/// The central difference `(loss(w + h) - loss(w - h)) / 2h` in element `at` of `v`
/// (flattened), `v` restored after.
pub fn central_difference(v: &candle_core::Var, at: usize, h: f32, loss: impl Fn() -> f64) -> f64 {
    let t = v.as_tensor();
    let (shape, base) = (t.shape().clone(), t.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    let set = |x: f32| {
        let mut w = base.clone();
        w[at] = x;
        v.set(&candle_core::Tensor::from_vec(w, &shape, t.device()).unwrap()).unwrap();
    };
    set(base[at] + h);
    let up = loss();
    set(base[at] - h);
    let down = loss();
    set(base[at]);
    (up - down) / (2.0 * h as f64)
}

/// Two hundred Adam steps at lr 0.01, through `shard::step` on `workers`, on 256-row
/// batches cycling through the first 1024 rows of `ds` (dropout and noise draw from seed
/// 3): the parameters after, flattened in the model's order, and the last step's
/// per-task losses.
pub fn two_hundred_adam_steps(
    model: &multigate::backend::candle::CandleModel,
    ds: &multigate::data::Dataset,
    lazy: bool,
    train: &multigate::ir::TrainConfig,
    workers: &multigate::train::shard::Workers,
) -> (Vec<f32>, Vec<f32>) {
    use multigate::train::adam::{Adam, AdamConfig};
    let mut opt = Adam::new(model.vars().to_vec(), AdamConfig { lazy, ..AdamConfig::from(train) }).unwrap();
    let mut rng = multigate::rng::Rng::new(3);
    let mut last = Vec::new();
    for s in 0..200 {
        let idx: Vec<usize> = (0..256).map(|i| (s * 256 + i) % 1024).collect();
        let batch = multigate::backend::candle::Batch::gather(ds, &idx, &candle_core::Device::Cpu).unwrap();
        let step = multigate::train::shard::step(model, &batch, &mut rng, None, workers).unwrap();
        workers.run(|| opt.step(&step.grads, &step.lookups, 0.01)).unwrap();
        last = step.per_task.to_vec1::<f32>().unwrap();
    }
    let params = model.vars().iter().flat_map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap());
    (params.collect(), last)
}

/// A model of `models/` and `rows` rows of data for it (the spec's synthetic generator,
/// or the categorical generator for file-backed specs), with what the spec leaves open
/// fitted on those rows, as `multigate bench` does.
pub fn model_and_rows(path: &Path, rows: usize) -> (Compiled, multigate::data::Dataset) {
    let (src, c) = multigate::pipeline::compile_file(path).expect("readable spec");
    let c = c.unwrap_or_else(|e| panic!("{} should compile:\n{}", path.display(), e.render(Some(&src), false)));
    let frame = match &c.data.source {
        multigate::ir::DataSource::Synthetic(s) => multigate::data::synthetic::generate(&c.model, s, rows),
        multigate::ir::DataSource::Csv(_) => multigate::data::synthetic::categorical_frame(&c.model, 1000, rows, 1),
    };
    let fitted = multigate::data::fit::fit_on_frames(&c.model, std::slice::from_ref(&frame)).expect("fit");
    let c = if fitted.is_empty() {
        c
    } else {
        multigate::run::pin_fitted(&src, c, fitted, &mut multigate::run::Silent).expect("pin fitted").1
    };
    let ds = multigate::data::encode(&c.model, &frame, true).expect("encode");
    (c, ds)
}
