//! ONNX export checked by the reference runtime: every model in `models/` is trained
//! briefly, exported, validated with `onnx.checker` and run by onnxruntime on the rows
//! `multigate encode` writes; every output must match `multigate predict` to 1e-5.
//! Also: the bundle's weights read with Python's `safetensors` reproduce a prediction
//! in numpy from the documented layout.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{python_with, repo, shared_data};

fn mg(args: &[&str]) -> (bool, String) {
    let (code, out, err) = super::multigate(args, &[]);
    (code == Some(0), format!("{out}{err}"))
}

/// How to train a model briefly and which rows to score with it.
enum Rows {
    /// Synthetic: `--rows`, and `synth` rows to score.
    Synthetic,
    /// Train on this file (`--data`) and score it.
    File(PathBuf),
    /// The spec's own files; score this one.
    Spec(PathBuf),
}

fn rows_for(spec: &Path, tmp: &Path) -> Option<Rows> {
    let text = std::fs::read_to_string(spec).unwrap();
    if !text.contains("source = \"csv\"") {
        return Some(Rows::Synthetic);
    }
    let name = spec.file_stem().unwrap().to_string_lossy().to_string();
    let data = shared_data(&format!("ONNX export of {name}"))?;
    if name.starts_with("census") {
        // The DeepCTR sample in the census layout, minus its leading row-index field.
        let sample = std::fs::read_to_string(data.join("samples/census-income.sample")).unwrap();
        let stripped: String =
            sample.lines().map(|l| format!("{}\n", l.split_once(',').map_or(l, |(_, rest)| rest))).collect();
        let p = tmp.join(format!("{name}.sample.csv"));
        std::fs::write(&p, stripped).unwrap();
        Some(Rows::File(p))
    } else if name.starts_with("aliccp") {
        Some(Rows::Spec(data.join("samples/torch-rechub/ali_ccp_test_sample.csv")))
    } else {
        panic!("{name}: no rows known for the ONNX test; add them here");
    }
}

#[test]
fn every_model_exports_to_onnx_that_onnxruntime_runs_to_1e_5() {
    if !python_with("onnx, onnxruntime, numpy", "the ONNX export check") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Every model, and tests/inputs/onnx/ for the operators no model uses (gelu, top-k,
    // temperature, deeper experts, unequal task experts, towers on an earlier layer) and
    // the inputs (bags of each pooling, a shared table, bucketize, minmax).
    let mut specs: Vec<PathBuf> = ["models", "tests/inputs/onnx"]
        .iter()
        .flat_map(|d| std::fs::read_dir(repo().join(d)).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    specs.sort();
    assert!(specs.len() >= 12);
    let mut checked = Vec::new();
    let mut skipped = 0;
    for spec in &specs {
        let name = spec.file_stem().unwrap().to_string_lossy().to_string();
        let Some(rows) = rows_for(spec, tmp.path()) else {
            skipped += 1;
            continue;
        };
        let p = |suffix: &str| tmp.path().join(format!("{name}{suffix}")).to_string_lossy().to_string();
        let (bundle, onnx, enc, preds) = (p(""), p(".onnx"), p(".enc.csv"), p(".preds.csv"));
        let spec_s = spec.to_string_lossy().to_string();
        let mut train = vec!["compile-and-train", &spec_s, "--epochs", "1", "--out", &bundle, "--force"];
        let scored = match &rows {
            Rows::Synthetic => {
                train.extend(["--rows", "1500"]);
                let csv = p(".rows.csv");
                let (ok, log) = mg(&["synth", &spec_s, "--rows", "200", "--out", &csv]);
                assert!(ok, "{name}: {log}");
                csv
            }
            Rows::File(f) | Rows::Spec(f) => f.to_string_lossy().to_string(),
        };
        if let Rows::File(_) = rows {
            train.extend(["--data", &scored]);
        }
        let (ok, log) = mg(&train);
        assert!(ok, "{name}: training failed: {log}");
        for args in [
            vec!["export", &bundle, "--format", "onnx", "--out", &onnx],
            vec!["encode", &bundle, &scored, "--out", &enc],
            vec!["predict", &bundle, &scored, "--out", &preds],
        ] {
            let (ok, log) = mg(&args);
            assert!(ok, "{name}: {args:?}: {log}");
        }
        let out = Command::new("python3")
            .args([repo().join("scripts/onnx_check.py").to_string_lossy().as_ref(), &onnx, &enc, &preds])
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{name}: {text}");
        checked.push(name);
    }
    // Every model but those whose data needs ../shared (skipped, with the reason printed).
    assert_eq!(checked.len() + skipped, specs.len());
    let has = |n: &str| checked.iter().any(|c| c == n);
    assert!(checked.len() >= 12 && has("every_op") && has("bags_buckets"), "{checked:?}");
}

#[test]
fn numpy_reproduces_a_prediction_from_the_bundle_layout() {
    if !python_with("safetensors, numpy", "the safetensors read-back check") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let p = |s: &str| tmp.path().join(s).to_string_lossy().to_string();
    let spec = "models/synthetic_mmoe.toml";
    let (ok, log) = mg(&["compile-and-train", spec, "--rows", "1500", "--epochs", "1", "--out", &p("b")]);
    assert!(ok, "{log}");
    let (ok, log) = mg(&["synth", spec, "--rows", "20", "--out", &p("rows.csv")]);
    assert!(ok, "{log}");
    let (ok, log) = mg(&["encode", &p("b"), &p("rows.csv"), "--out", &p("enc.csv")]);
    assert!(ok, "{log}");
    let (ok, log) = mg(&["predict", &p("b"), &p("rows.csv"), "--out", &p("preds.csv")]);
    assert!(ok, "{log}");
    let out = Command::new("python3")
        .args([
            repo().join("scripts/numpy_mmoe.py").to_string_lossy().as_ref(),
            &p("b"),
            &p("enc.csv"),
            &p("preds.csv"),
        ])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("max |numpy - multigate|"), "{text}");
}
