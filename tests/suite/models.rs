//! Every spec in models/ compiles, and its IR is snapshotted; each `.toml` has a `.mg`
//! twin that lowers to the same IR.

use super::{compile_path, model_files, repo};

#[test]
fn every_toml_model_has_a_dsl_twin_with_the_same_ir() {
    let mut n = 0;
    for e in std::fs::read_dir(repo().join("models")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let twin = p.with_extension("mg");
            assert!(twin.exists(), "{} has no .mg twin", p.display());
            let (a, b) = (compile_path(&p), compile_path(&twin));
            assert_eq!(a.model.to_string(), b.model.to_string(), "{} and its twin differ", p.display());
            assert_eq!(a.data, b.data, "data settings of {}", p.display());
            assert_eq!(a.train, b.train, "train settings of {}", p.display());
            n += 1;
        }
    }
    assert!(n >= 6);
}

#[test]
fn every_dsl_model_is_snapshotted() {
    let files = model_files("mg");
    assert!(files.len() >= 6);
    for path in files {
        let c = compile_path(&path);
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        insta::assert_snapshot!(format!("model_{name}_mg"), c.model.to_string());
    }
}

#[test]
fn the_seed_model_graph_renders() {
    let c = compile_path(&repo().join("models/seed_avazu_mmoe.toml"));
    let mermaid = multigate::ir::render_graph(&c.model, multigate::ir::GraphFormat::Mermaid);
    insta::assert_snapshot!("graph_seed_mermaid", mermaid);
    let dot = multigate::ir::render_graph(&c.model, multigate::ir::GraphFormat::Dot);
    assert!(dot.starts_with("digraph") && dot.contains("l0e0 -> l0g0") && dot.contains("l0g1 -> t1"), "{dot}");
}

#[test]
fn every_model_compiles_and_its_ir_is_stable() {
    let files = model_files("toml");
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

/// Every spec in models/ is in `fmt`'s canonical form (what `multigate fmt --check` checks).
#[test]
fn every_model_is_canonical() {
    for (p, syntax) in model_files("toml")
        .into_iter()
        .map(|p| (p, multigate::spec::Syntax::Toml))
        .chain(model_files("mg").into_iter().map(|p| (p, multigate::spec::Syntax::Dsl)))
    {
        let text = std::fs::read_to_string(&p).unwrap();
        let src = multigate::source::SourceFile::from_text(p.display().to_string(), text.as_str());
        let spec = multigate::spec::parse(&src).unwrap();
        let canonical = multigate::spec::format(&spec, Some((&text, syntax)), syntax);
        assert_eq!(canonical, text, "{} is not canonical (multigate fmt --write fixes it)", p.display());
    }
}
