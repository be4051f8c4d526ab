//! Numerics against the release before the op program (00d3e5b), whose graph was
//! written per layer kind: for every spec of `models/` and `tests/inputs/onnx/every_op`,
//! its graph's heads on 64 rows are recorded in `tests/inputs/release/heads-00d3e5b.json`
//! (as initialised from seed 5, and with every parameter redrawn). Today's candle graph
//! (the program interpreted), the native interpreter and the fast CPU evaluation must
//! give them: to 1e-6 absolute as initialised, 1e-5 relative redrawn. And a bundle that
//! release trained predicts, through today's `predict`, the numbers it predicted then.

use candle_core::{Device, Tensor};
use multigate::backend::candle::{Batch, CandleModel};
use multigate::backend::native::Native;
use multigate::lower::lower_program;
use multigate::program::Mode;

use super::infer::scramble;
use super::program::{borrowed, param_values, HostBatch};
use super::{model_and_rows, repo};

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Every head of every path against the release's, within `tol` (relative above 1 when
/// `relative`).
fn check(
    model: &CandleModel,
    c: &multigate::lower::Compiled,
    batch: &Batch,
    want: &serde_json::Value,
    tol: f32,
    relative: bool,
    what: &str,
) {
    let want: Vec<Vec<f32>> = serde_json::from_value(want.clone()).unwrap();
    let native = Native::new(lower_program(&c.model, Mode::Eval).unwrap(), None);
    let params = param_values(&native.program, model);
    let host = HostBatch::of(batch);
    let run = native.forward(&borrowed(&params), &host.feed(), None).unwrap();
    let native_heads: Vec<Vec<f32>> = native.program.outputs.iter().map(|o| run.value(o.raw).to_vec()).collect();
    let graph: Vec<Vec<f32>> = model.forward_graph(batch).unwrap().heads.iter().map(values).collect();
    let fast: Vec<Vec<f32>> = model.forward(batch).unwrap().heads.iter().map(values).collect();
    for (path, got) in [("graph", graph), ("native", native_heads), ("fast CPU", fast)] {
        assert_eq!(got.len(), want.len(), "{what}: {path} tasks");
        for (t, (a, b)) in got.iter().zip(&want).enumerate() {
            assert_eq!(a.len(), b.len(), "{what}: {path} task {t}");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                let scale = if relative { y.abs().max(1.0) } else { 1.0 };
                assert!((x - y).abs() <= tol * scale, "{what}: {path} task {t}[{i}]: {x} against the release's {y}");
            }
        }
    }
}

#[test]
fn every_path_computes_what_the_release_computed() {
    let text = std::fs::read_to_string(repo().join("tests/inputs/release/heads-00d3e5b.json")).unwrap();
    let golden: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert!(golden.len() >= 17, "{} specs recorded", golden.len());
    for (spec, want) in &golden {
        let (c, ds) = model_and_rows(&repo().join(spec), 64);
        assert_eq!(ds.rows as u64, want["rows"].as_u64().unwrap(), "{spec}: rows");
        let model = CandleModel::new(&c.model, 5, &Device::Cpu).unwrap();
        let batch = Batch::gather(&ds, &(0..ds.rows).collect::<Vec<_>>(), &Device::Cpu).unwrap();
        check(&model, &c, &batch, &want["initialised"], 1e-6, false, &format!("{spec}, as initialised"));
        scramble(&model, 17);
        check(&model, &c, &batch, &want["scrambled"], 1e-5, true, &format!("{spec}, redrawn"));
    }
}

/// A bundle the release trained (every_op: CGC with unequal task experts, two expert
/// depths, gelu, top-k with a temperature, an MMoE level, multiclass and log1p heads)
/// loads and predicts the release's predictions.
#[test]
fn a_bundle_the_release_wrote_predicts_what_it_predicted() {
    let dir = repo().join("tests/inputs/release");
    let out = tempfile::tempdir().unwrap();
    let preds = out.path().join("p.csv");
    let (bundle, rows) = (dir.join("every_op_bundle"), dir.join("every_op_rows.csv"));
    super::mg_ok(&["predict", &bundle.to_string_lossy(), &rows.to_string_lossy(), "--out", &preds.to_string_lossy()]);
    let read = |p: &std::path::Path| -> Vec<Vec<String>> {
        std::fs::read_to_string(p).unwrap().lines().map(|l| l.split(',').map(str::to_string).collect()).collect()
    };
    let (got, want) = (read(&preds), read(&dir.join("every_op_predictions.csv")));
    assert_eq!(got[0], want[0], "columns");
    assert_eq!(got.len(), want.len(), "rows");
    assert!(got.len() > 100);
    for (r, (a, b)) in got.iter().zip(&want).enumerate().skip(1) {
        for (x, y) in a.iter().zip(b) {
            let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
            assert!((x - y).abs() <= 1e-6, "row {r}: {x} against the release's {y}");
        }
    }
}
