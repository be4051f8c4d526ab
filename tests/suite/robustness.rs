//! Nothing crashes the front end: arbitrary bytes and mutated valid specs give Ok or
//! an error, never a panic.

use multigate::pipeline::compile_source;
use multigate::source::SourceFile;
use proptest::prelude::*;

use super::repo;

/// Both front ends, rendering any errors (rendering must not panic either).
fn compile_str(text: &str) {
    for name in ["fuzz.toml", "fuzz.mg"] {
        let src = SourceFile::from_text(name, text);
        if let Err(e) = compile_source(&src) {
            let _ = e.render(Some(&src), false);
        }
    }
}

fn seeds() -> Vec<String> {
    let mut v = Vec::new();
    for dir in ["models", "tests/inputs/ok"] {
        for e in std::fs::read_dir(repo().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml" || x == "mg") {
                v.push(std::fs::read_to_string(p).unwrap());
            }
        }
    }
    v.sort();
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,400}") {
        compile_str(&s);
    }

    #[test]
    fn mutated_specs_never_panic(which in 0usize..100, at in 0usize..10_000, cut in 0usize..64, insert in "[\\[\\]=\"a-z0-9 .\\n-]{0,12}") {
        let seeds = seeds();
        let s = &seeds[which % seeds.len()];
        let mut bytes = s.as_bytes().to_vec();
        let at = at % (bytes.len() + 1);
        let end = (at + cut).min(bytes.len());
        bytes.splice(at..end, insert.bytes());
        if let Ok(text) = String::from_utf8(bytes) {
            compile_str(&text);
        }
    }

    #[test]
    fn numbers_anywhere_never_panic(n in prop_oneof![Just(0i64), Just(-1), Just(i64::MAX), Just(1 << 40), any::<i64>()]) {
        for s in seeds() {
            let text = s.replace("= 8\n", &format!("= {n}\n")).replace("= 16\n", &format!("= {n}\n"));
            compile_str(&text);
        }
    }
}

fn spec_error(name: &str, text: &str) -> Vec<multigate::spec::SpecError> {
    match compile_source(&SourceFile::from_text(name, text)) {
        Err(multigate::pipeline::CompileError::Spec(es)) => es,
        other => panic!("{name}: expected a spec error, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn deep_nesting_and_huge_specs_are_errors_not_crashes() {
    use multigate::spec::SpecError;
    let deep_toml = format!("a = {}1{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(!spec_error("deep.toml", &deep_toml).is_empty());
    let deep_mg = format!("model m {{ data csv(train = {}) }}", "[".repeat(100_000));
    assert!(matches!(spec_error("deep.mg", &deep_mg)[..], [SpecError::TooDeep { .. }]));
    let huge = format!("[model]\nname = \"{}\"\n", "x".repeat(10 << 20));
    for name in ["huge.toml", "huge.mg"] {
        assert!(matches!(spec_error(name, &huge)[..], [SpecError::TooLarge { .. }]));
    }
    for name in ["empty.toml", "empty.mg"] {
        assert!(matches!(spec_error(name, "")[..], [SpecError::Empty]));
        assert!(matches!(spec_error(name, " \n\t\n")[..], [SpecError::Empty]));
    }
    compile_str("\u{feff}");
    compile_str("model m { feature a: dense(mean = 1e999999) task t: regression(label = y) train { adam(lr = -0) } }");
    compile_str("model m { feature a: categorical(hash = 99999999999999999999999) }");
}
