//! What a run leaves for people: TensorBoard events (read back by Python's tensorboard),
//! `evaluate` with calibration and GAUC, metrics keyed by task name.

use std::process::Command;

use super::{python_with, repo};

use super::mg_ok as mg;

#[test]
fn training_writes_tensorboard_events_that_tensorboard_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("b");
    let text = mg(&[
        "compile-and-train",
        "models/synthetic_mmoe.toml",
        "--rows",
        "2000",
        "--epochs",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    let tb = tmp.path().join("b.tensorboard");
    assert!(text.contains(&format!("TensorBoard events in {}", tb.display())), "{text}");
    let files: Vec<_> = std::fs::read_dir(&tb).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].file_name().unwrap().to_string_lossy().starts_with("events.out.tfevents."));
    // The validation numbers the run reports, to compare with what TensorBoard reads.
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    let mse: Vec<f64> = metrics["report"]["epochs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["validation"][0]["mse"].as_f64().unwrap())
        .collect();
    assert_eq!(mse.len(), 2);
    if !python_with("tensorboard", "the TensorBoard read-back check") {
        return;
    }
    let script = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
ea = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
ea.Reload()
tags = ea.Tags()["scalars"]
print(json.dumps({t: [[e.step, e.value] for e in ea.Scalars(t)] for t in tags}))
"#;
    let outp = Command::new("python3").args(["-c", script, tb.to_str().unwrap()]).output().unwrap();
    assert!(outp.status.success(), "{}", String::from_utf8_lossy(&outp.stderr));
    let scalars: serde_json::Value = serde_json::from_slice(&outp.stdout).unwrap();
    for tag in [
        "train/loss/y1",
        "train/loss/y2",
        "train/loss/total",
        "epoch/lr",
        "epoch/validation_loss",
        "validation/y1/mse",
        "validation/y2/mae",
        "gates/layer0.gate.y1/e0",
    ] {
        assert!(scalars.get(tag).is_some(), "{tag} missing from {:?}", scalars.as_object().unwrap().keys());
    }
    // 1600 training rows at batch 256: 7 steps an epoch, one loss point per step.
    let steps = scalars["train/loss/y1"].as_array().unwrap();
    assert_eq!(steps.len(), 14, "{steps:?}");
    let read: Vec<f64> =
        scalars["validation/y1/mse"].as_array().unwrap().iter().map(|p| p[1].as_f64().unwrap()).collect();
    for (a, b) in read.iter().zip(&mse) {
        assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "TensorBoard {a} vs metrics.json {b}");
    }
    // The total is the sum of the tasks' losses at each step.
    let (y1, y2, total) = (&scalars["train/loss/y1"], &scalars["train/loss/y2"], &scalars["train/loss/total"]);
    for i in 0..14 {
        let sum = y1[i][1].as_f64().unwrap() + y2[i][1].as_f64().unwrap();
        assert!((total[i][1].as_f64().unwrap() - sum).abs() < 1e-4);
    }
}

#[test]
fn evaluate_reports_metrics_calibration_and_gauc_keyed_by_task() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |s: &str| tmp.path().join(s).to_string_lossy().to_string();
    let spec = "tests/inputs/onnx/every_op.toml";
    mg(&["compile-and-train", spec, "--rows", "3000", "--epochs", "2", "--out", &p("b"), "--no-tensorboard"]);
    assert!(!tmp.path().join("b.tensorboard").exists(), "--no-tensorboard writes none");
    mg(&["synth", spec, "--rows", "2000", "--out", &p("rows.csv")]);
    let json = mg(&["evaluate", &p("b"), &p("rows.csv"), "--group", "user", "--format", "json"]);
    let e: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(e["rows"], 2000);
    let ctr = &e["tasks"]["ctr"];
    let auc = ctr["metrics"]["auc"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&auc));
    let c = &ctr["calibration"];
    assert!(c["ece"].as_f64().unwrap() >= 0.0 && c["ece"].as_f64().unwrap() <= 1.0, "{c}");
    assert!((0.0..=1.0).contains(&c["positive_rate"].as_f64().unwrap()));
    assert!(ctr["gauc"].as_f64().is_some() && ctr["gauc_groups"].as_u64().unwrap() > 0, "{ctr}");
    assert!(e["tasks"]["genre"]["metrics"]["accuracy"].as_f64().is_some());
    assert!(e["tasks"]["watch"]["metrics"]["mse"].as_f64().is_some());
    assert!(e["tasks"]["genre"]["calibration"].is_null(), "calibration is for binary tasks");
    // The same AUC as predict --evaluate on the same rows.
    let text = mg(&["predict", &p("b"), &p("rows.csv"), "--out", &p("preds.csv"), "--evaluate"]);
    assert!(text.contains(&format!("ctr: auc {auc:.4}")), "{text}");
    // Text form; a missing group column is an error naming it.
    let text = mg(&["evaluate", &p("b"), &p("rows.csv"), "--group", "user"]);
    assert!(text.contains("GAUC by `user`") && text.contains("calibration: mean prediction"), "{text}");
    let out = Command::new(env!("CARGO_BIN_EXE_multigate"))
        .args(["evaluate", &p("b"), &p("rows.csv"), "--group", "nope"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`nope`"));
}

#[test]
fn metrics_json_keys_each_task_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("b");
    mg(&[
        "compile-and-train",
        "models/synthetic_esmm.toml",
        "--rows",
        "2000",
        "--epochs",
        "1",
        "--out",
        out.to_str().unwrap(),
        "--no-tensorboard",
    ]);
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    let tasks = m["tasks"].as_object().unwrap();
    assert_eq!(tasks.keys().collect::<Vec<_>>(), ["ctcvr", "ctr", "cvr"]);
    assert!(tasks["ctr"]["validation"]["auc"].as_f64().is_some(), "{m}");
    assert!(tasks["ctr"]["test"]["logloss"].as_f64().is_some(), "{m}");
    assert!(tasks["ctr"]["train_loss"].as_f64().is_some(), "{m}");
}

#[test]
fn json_logs_one_object_per_event_and_quiet_prints_only_the_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("b");
    let common =
        ["compile-and-train", "models/synthetic_mmoe.toml", "--rows", "2000", "--epochs", "2", "--no-tensorboard"];
    let text = mg(&[&common[..], &["--out", out.to_str().unwrap(), "--log-format", "json"]].concat());
    let events: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"built"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"done"), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "epoch").count(), 2);
    // 1600 training rows at batch 256: 7 steps an epoch.
    assert_eq!(kinds.iter().filter(|k| **k == "step").count(), 14);
    let step = events.iter().find(|e| e["event"] == "step").unwrap();
    assert!(step["loss"]["y1"].as_f64().is_some() && step["loss"]["y2"].as_f64().is_some(), "{step}");
    let done = events.last().unwrap();
    assert!(done["validation"]["y1"]["mse"].as_f64().is_some(), "{done}");
    assert!(!text.contains("epoch   1"), "no text lines in json mode");

    let text = mg(&[&common[..], &["--out", tmp.path().join("q").to_str().unwrap(), "--quiet"]].concat());
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(lines[0].starts_with("bundle written to"), "{text}");
}

#[test]
fn analyze_reports_label_rates_correlations_and_cardinalities() {
    // The MMoE generator's label correlation, as training reports it for the same rows.
    let train = mg(&[
        "compile-and-train",
        "models/synthetic_mmoe.toml",
        "--rows",
        "3000",
        "--epochs",
        "1",
        "--out",
        tempfile::tempdir().unwrap().path().join("b").to_str().unwrap(),
        "--no-tensorboard",
    ]);
    let reported: f64 = train
        .split("Pearson correlation ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{train}"));
    let tmp = tempfile::tempdir().unwrap();
    let spec = tmp.path().join("s.toml");
    std::fs::write(
        &spec,
        std::fs::read_to_string(repo().join("models/synthetic_mmoe.toml"))
            .unwrap()
            .replace("rows = 100000", "rows = 3000"),
    )
    .unwrap();
    let json = mg(&["analyze", spec.to_str().unwrap(), "--format", "json"]);
    let a: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(a["rows"], 3000);
    let c = &a["correlations"][0];
    assert_eq!((c["a"].as_str(), c["b"].as_str()), (Some("y1"), Some("y2")));
    assert!((c["pearson"].as_f64().unwrap() - reported).abs() < 5e-4, "{c} vs {reported}");
    assert!(c["spearman"].as_f64().unwrap() > 0.0);
    let d = &a["tasks"][0]["distribution"];
    assert_eq!(d["quantiles"].as_array().unwrap().len(), 7);
    assert_eq!(a["dense"].as_array().unwrap().len(), 100);

    // Categorical features: cardinality, top values, and the bucket suggestion.
    let text = mg(&["analyze", "tests/inputs/onnx/every_op.toml"]);
    assert!(
        text.contains("hour: ")
            && text.contains("distinct")
            && text.contains("ctr (3000 labelled rows): positive rate"),
        "{text}"
    );
    assert!(text.contains("genre (3000 labelled rows): classes a "), "{text}");
    assert!(text.contains("label correlation (task relatedness):"), "{text}");
}

#[test]
fn sweep_trains_every_combination_and_seed_and_summarises_best_first() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sw");
    let text = mg(&[
        "sweep",
        "models/synthetic_mmoe.toml",
        "--set",
        "layers.0.experts=2,4",
        "--set",
        "train.lr=0.01",
        "--seeds",
        "0-1",
        "--jobs",
        "2",
        "--rows",
        "1500",
        "--epochs",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(text.contains("4 runs (2 combination(s) x 2 seed(s))"), "{text}");
    let csv = std::fs::read_to_string(out.join("sweep.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "layers.0.experts,train.lr,seed,selection,y1.mse,y1.mae,y2.mse,y2.mae");
    assert_eq!(lines.len(), 5, "{csv}");
    // Each run's bundle has the combination and the seed in its spec.
    let spec = std::fs::read_to_string(out.join("runs/layers.0.experts=4_train.lr=0.01_seed1/spec.toml")).unwrap();
    assert!(spec.contains("experts = 4") && spec.contains("seed = 1") && spec.contains("lr = 0.01"), "{spec}");
    // The summary: one row per combination, lowest validation loss first, mean ± sd.
    let md = std::fs::read_to_string(out.join("sweep.md")).unwrap();
    let rows: Vec<&str> = md.lines().skip(2).collect();
    assert_eq!(rows.len(), 2, "{md}");
    let sel = |row: &str| -> f64 { row.split('|').nth(4).unwrap().trim().split(' ').next().unwrap().parse().unwrap() };
    assert!(sel(rows[0]) <= sel(rows[1]), "{md}");
    // The selection means agree with the per-run values.
    let mean_for = |experts: &str| -> f64 {
        let v: Vec<f64> = lines[1..]
            .iter()
            .filter(|l| l.starts_with(&format!("{experts},")))
            .map(|l| l.split(',').nth(3).unwrap().parse().unwrap())
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let row2 = rows.iter().find(|r| r.contains("`2`")).unwrap();
    assert!((sel(row2) - mean_for("2")).abs() < 1e-4, "{row2} vs {}", mean_for("2"));
    // A key that is not in the spec is an error naming it, before anything trains.
    let bad = Command::new(env!("CARGO_BIN_EXE_multigate"))
        .args([
            "sweep",
            "models/synthetic_mmoe.toml",
            "--set",
            "layers.7.experts=2",
            "--out",
            tmp.path().join("x").to_str().unwrap(),
        ])
        .current_dir(repo())
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no entry `7`"));
    assert!(!tmp.path().join("x/runs").exists());
}

#[test]
fn a_run_draws_its_curves_and_gates_and_plot_overlays_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for (out, lr) in [(&a, "0.01"), (&b, "0.001")] {
        let spec = tmp.path().join(format!("s{lr}.toml"));
        std::fs::write(
            &spec,
            std::fs::read_to_string(repo().join("models/synthetic_ple.toml"))
                .unwrap()
                .replace("lr = 0.001", &format!("lr = {lr}")),
        )
        .unwrap();
        mg(&[
            "compile-and-train",
            spec.to_str().unwrap(),
            "--rows",
            "2000",
            "--epochs",
            "3",
            "--out",
            out.to_str().unwrap(),
            "--no-tensorboard",
        ]);
    }
    let png_size = |p: &std::path::Path| -> (u32, u32) {
        let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{} is a PNG", p.display());
        (u32::from_be_bytes(bytes[16..20].try_into().unwrap()), u32::from_be_bytes(bytes[20..24].try_into().unwrap()))
    };
    // In the bundle (and in its manifest's file table).
    assert_eq!(png_size(&a.join("curves.png")), (1200, 600), "two tasks: two rows of panels");
    let (gw, gh) = png_size(&a.join("gates.png"));
    assert!(gw > 300 && gh > 200);
    let manifest = std::fs::read_to_string(a.join("manifest.json")).unwrap();
    assert!(manifest.contains("\"curves.png\"") && manifest.contains("\"gates.png\""));
    // Redrawn and overlaid from the runs' metrics.json.
    let plots = tmp.path().join("plots");
    let text = mg(&["plot", a.to_str().unwrap(), b.to_str().unwrap(), "--out", plots.to_str().unwrap()]);
    assert!(text.contains("curves.png") && text.contains("gates.png"), "{text}");
    assert_eq!(png_size(&plots.join("curves.png")), (1200, 600));
    // Two runs' curves differ from one run's picture.
    assert_ne!(std::fs::read(plots.join("curves.png")).unwrap(), std::fs::read(a.join("curves.png")).unwrap());
}

#[test]
fn reading_a_data_file_reports_its_progress_in_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("rows.csv");
    mg(&["synth", "models/synthetic_mmoe.toml", "--rows", "20000", "--out", csv.to_str().unwrap()]);
    let size = std::fs::metadata(&csv).unwrap().len();
    let text = mg(&[
        "compile-and-train",
        "models/synthetic_mmoe.toml",
        "--data",
        csv.to_str().unwrap(),
        "--epochs",
        "1",
        "--out",
        tmp.path().join("b").to_str().unwrap(),
        "--no-tensorboard",
        "--log-format",
        "json",
    ]);
    let reads: Vec<(u64, u64)> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "loading")
        .map(|e| (e["read"].as_u64().unwrap(), e["total"].as_u64().unwrap()))
        .collect();
    assert!(reads.len() >= 2, "{reads:?}");
    assert!(reads.windows(2).all(|w| w[0].0 <= w[1].0), "bytes read only grow: {reads:?}");
    assert!(reads.iter().all(|&(_, t)| t == size));
    assert_eq!(reads.last().unwrap().0, size, "the last report is the whole file");
}
