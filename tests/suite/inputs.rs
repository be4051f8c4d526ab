//! Data-driven front-end cases: `tests/inputs/ok/*.{toml,mg}` must compile (IR and
//! warnings snapshotted); `tests/inputs/err/*.{toml,mg}` must fail with every error
//! rendered (no colour) and snapshotted.

use multigate::pipeline::{compile_source, CompileError};
use multigate::source::SourceFile;

use super::repo;

fn cases(dir: &str) -> Vec<(String, SourceFile)> {
    let mut files: Vec<_> =
        std::fs::read_dir(repo().join("tests/inputs").join(dir)).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let file = p.file_name().unwrap().to_string_lossy().to_string();
            let stem = p.file_stem().unwrap().to_string_lossy().to_string();
            let name = if file.ends_with(".mg") { format!("{stem}_mg") } else { stem };
            (name, SourceFile::from_text(format!("{dir}/{file}"), text))
        })
        .collect()
}

#[test]
fn ok_inputs_compile() {
    for (name, src) in cases("ok") {
        let c = match compile_source(&src) {
            Ok(c) => c,
            Err(e) => panic!("{name}:\n{}", e.render(Some(&src), false)),
        };
        let warnings: String = c.warnings.iter().map(|w| multigate::diag::render(&src, w, false)).collect();
        insta::assert_snapshot!(format!("ok_{name}"), format!("{}\n{warnings}", *c.model));
    }
}

#[test]
fn err_inputs_report_every_error_with_its_line() {
    for (name, src) in cases("err") {
        let err = match compile_source(&src) {
            Ok(_) => panic!("{name} should not compile"),
            Err(e) => e,
        };
        let rendered = err.render(Some(&src), false);
        if !src.text.trim().is_empty() {
            assert!(rendered.contains(&format!("{}:", src.name)), "{name}: no file:line:col in\n{rendered}");
        }
        insta::assert_snapshot!(format!("err_{name}"), rendered);
    }
}

#[test]
fn several_mistakes_are_reported_together() {
    let src = SourceFile::from_text(
        "t.toml",
        std::fs::read_to_string(repo().join("tests/inputs/err/out_of_range_values.toml")).unwrap(),
    );
    match compile_source(&src) {
        Err(CompileError::Lower(es)) => assert!(es.len() >= 6, "expected every range error, got {es:#?}"),
        other => panic!("expected lowering errors, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn the_readme_spec_reference_uses_only_real_keys() {
    // The README's TOML reference block sets every key; it must parse (the TOML key
    // pass and serde agree) and lower.
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme.find("```toml\n").expect("a TOML block in the README") + 8;
    let block = &readme[start..start + readme[start..].find("```").unwrap()];
    let src = SourceFile::from_text("README.toml", block);
    if let Err(e) = compile_source(&src) {
        panic!("{}", e.render(Some(&src), false));
    }
}

#[test]
fn a_dsl_file_with_a_byte_order_mark_and_crlf_parses_like_its_clean_twin() {
    let clean = repo().join("tests/inputs/ok/dsl_everything.mg");
    let text = std::fs::read_to_string(&clean).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let twin = tmp.path().join("dsl_everything.mg");
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    bytes.extend(text.replace('\n', "\r\n").into_bytes());
    std::fs::write(&twin, bytes).unwrap();
    let a = super::compile_path(&clean);
    let b = super::compile_path(&twin);
    assert_eq!(a.model.to_string(), b.model.to_string());
}
