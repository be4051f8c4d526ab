//! Every spec in models/ compiles, and its IR text is snapshotted.

use super::{compile_path, repo};

#[test]
fn every_model_compiles_and_its_ir_is_stable() {
    let mut files: Vec<_> = std::fs::read_dir(repo().join("models"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "models/ should hold the documented specs, found {files:?}");
    for path in files {
        let c = compile_path(&path);
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        insta::assert_snapshot!(format!("model_{name}"), c.model.to_string());
    }
}

#[test]
fn paper_sized_synthetic_models_have_comparable_parameter_counts() {
    let count = |f: &str| compile_path(&repo().join("models").join(f)).model.param_count();
    let (sb, omoe, mmoe) =
        (count("synthetic_shared_bottom.toml"), count("synthetic_omoe.toml"), count("synthetic_mmoe.toml"));
    // The paper sizes shared-bottom (113 units) to match the gated models.
    for p in [omoe, mmoe] {
        let ratio = sb as f64 / p as f64;
        assert!((0.85..1.2).contains(&ratio), "shared-bottom {sb} vs gated {p}");
    }
    assert!(mmoe > omoe, "MMoE has one more gate than OMoE");
}
