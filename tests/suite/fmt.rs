//! `fmt`: canonical forms and conversions keep the IR, as a property over generated specs.

use multigate::pipeline::compile_source;
use multigate::source::SourceFile;
use multigate::spec::{self, Spec, Syntax};
use proptest::prelude::*;

use super::repo;

fn ir_of(name: &str, text: &str) -> String {
    let src = SourceFile::from_text(name, text);
    match compile_source(&src) {
        Ok(c) => format!("{}\n{:?}\n{:?}", *c.model, c.data, c.train),
        Err(e) => panic!("{name} does not compile:\n{}\n{text}", e.render(Some(&src), false)),
    }
}

fn parse(name: &str, text: &str) -> Spec {
    spec::parse(&SourceFile::from_text(name, text)).unwrap_or_else(|e| panic!("{name}: {e:?}\n{text}"))
}

/// Every comment's text, sorted.
fn comment_texts(text: &str, syntax: Syntax) -> Vec<String> {
    let mut v: Vec<String> = spec::comments(text, syntax).into_iter().map(|c| c.text).collect();
    v.sort();
    v
}

/// TOML -> DSL -> TOML and DSL -> TOML -> DSL keep the IR (and the data and train
/// settings) and every comment; formatting is idempotent in both syntaxes. A spec
/// with a name the DSL cannot spell must fail to read back as DSL (so `fmt` refuses
/// the conversion) and still format as TOML.
fn check_round_trips(toml_text: &str) {
    let ir = ir_of("a.toml", toml_text);
    let comments = comment_texts(toml_text, Syntax::Toml);
    let spec = parse("a.toml", toml_text);

    // TOML -> canonical TOML.
    let canonical = spec::format(&spec, Some((toml_text, Syntax::Toml)), Syntax::Toml);
    assert_eq!(ir_of("f.toml", &canonical), ir, "canonical TOML changed the model:\n{canonical}");
    assert_eq!(comment_texts(&canonical, Syntax::Toml), comments, "canonical TOML lost comments:\n{canonical}");
    let again = spec::format(&parse("f.toml", &canonical), Some((&canonical, Syntax::Toml)), Syntax::Toml);
    assert_eq!(again, canonical, "TOML formatting is not idempotent");

    // TOML -> DSL.
    let mg = spec::format(&spec, Some((toml_text, Syntax::Toml)), Syntax::Dsl);
    let names_ascii = spec
        .features
        .iter()
        .map(|f| f.name.get_ref())
        .chain(spec.tasks.iter().map(|t| t.name.get_ref()))
        .chain(spec.layers.iter().filter_map(|l| l.name.as_ref().map(|n| n.get_ref())))
        .all(|n| n.is_ascii());
    if spec::parse(&SourceFile::from_text("b.mg", mg.as_str())).is_err() {
        assert!(!names_ascii, "TOML -> DSL does not read back, and every name is ASCII:\n{mg}");
        return;
    }
    assert_eq!(ir_of("b.mg", &mg), ir, "TOML -> DSL changed the model:\n{mg}");
    assert_eq!(comment_texts(&mg, Syntax::Dsl), comments, "TOML -> DSL lost comments:\n{mg}");
    let mg_spec = parse("b.mg", &mg);
    assert_eq!(spec::format(&mg_spec, Some((&mg, Syntax::Dsl)), Syntax::Dsl), mg, "DSL formatting is not idempotent");

    // DSL -> TOML -> DSL.
    let toml2 = spec::format(&mg_spec, Some((&mg, Syntax::Dsl)), Syntax::Toml);
    assert_eq!(ir_of("c.toml", &toml2), ir, "DSL -> TOML changed the model:\n{toml2}");
    assert_eq!(comment_texts(&toml2, Syntax::Toml), comments, "DSL -> TOML lost comments:\n{toml2}");
    let mg2 = spec::format(&parse("c.toml", &toml2), Some((&toml2, Syntax::Toml)), Syntax::Dsl);
    assert_eq!(mg2, mg, "DSL -> TOML -> DSL is not the same text");

    // The bundle's form (every default written) reads back too.
    let full = spec.to_toml();
    assert_eq!(ir_of("d.toml", &full), ir, "Spec::to_toml changed the model:\n{full}");
    assert_eq!(parse("d.toml", &full).to_toml(), full, "Spec::to_toml is not idempotent");
}

#[test]
fn models_round_trip() {
    for e in std::fs::read_dir(repo().join("models")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            check_round_trips(&std::fs::read_to_string(&p).unwrap());
        }
    }
    check_round_trips(&std::fs::read_to_string(repo().join("tests/inputs/ok/no_layers_dense_vocab.toml")).unwrap());
    let everything = std::fs::read_to_string(repo().join("tests/inputs/ok/dsl_everything.mg")).unwrap();
    check_round_trips(&parse("e.mg", &everything).to_toml());
}

fn name() -> impl Strategy<Value = String> {
    // Mostly ASCII; now and then a name only TOML can spell.
    prop_oneof![9 => "[a-z][a-z0-9_]{0,7}", 1 => "[a-zé][a-z0-9_éü]{0,7}"]
}

/// Puts comments into a TOML text: per line, `decor` says none, one on its own line
/// before it, one after it, or both.
fn with_comments(text: &str, decor: &[u8], words: &[String]) -> String {
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        let d = decor.get(i).copied().unwrap_or(0);
        let word = words.get(i % words.len().max(1)).cloned().unwrap_or_default();
        if d & 1 == 1 {
            out += &format!("# before {i} {word}\n");
        }
        out += line;
        if d & 2 == 2 && !line.trim().is_empty() {
            out += &format!("  # after {i} {word}");
        }
        out += "\n";
    }
    out
}

fn text() -> impl Strategy<Value = String> {
    // Strings with the characters that need escaping in both syntaxes.
    "[ -~\\t]{0,10}"
}

prop_compose! {
    fn feature()(n in name(), categorical in any::<bool>(), hashed in any::<bool>(), buckets in 1u64..5000,
                 vocab in prop::collection::vec(text(), 1..4), dim in 1u64..32, width in 1u64..4,
                 transform in 0usize..3, mean in -100.0f64..100.0, std in 0.01f64..50.0,
                 column in prop::option::of(text())) -> String {
        let mut s = format!("[[features]]\nname = \"{n}\"\n");
        if let Some(c) = column { s += &format!("column = {}\n", toml_str(&c)); }
        if categorical {
            s += "type = \"categorical\"\n";
            if hashed { s += &format!("hash_buckets = {buckets}\n"); }
            else {
                let mut v = vocab.clone(); v.sort(); v.dedup();
                s += &format!("vocabulary = [{}]\n", v.iter().map(|x| toml_str(x)).collect::<Vec<_>>().join(", "));
            }
            s += &format!("embedding_dim = {dim}\n");
        } else {
            s += &format!("type = \"dense\"\nwidth = {width}\n");
            match transform {
                1 => s += "transform = \"log1p\"\n",
                2 => s += &format!("transform = \"zscore\"\nmean = {mean:?}\nstd = {std:?}\n"),
                _ => {}
            }
        }
        s
    }
}

fn toml_str(s: &str) -> String {
    format!("{:?}", s).replace("\\u{7f}", "\\u007f")
}

prop_compose! {
    fn layer()(kind in 0usize..4, experts in 1u64..6, units in prop::collection::vec(1u64..40, 1..3),
               act in 0usize..5, named in prop::option::of(name()), dropout in prop::option::of(0.0f64..0.9),
               task_experts in prop::option::of(0u64..4), temperature in prop::option::of(0.1f64..3.0)) -> String {
        let kinds = ["shared_bottom", "moe", "mmoe", "cgc"];
        let acts = ["relu", "tanh", "sigmoid", "gelu", "linear"];
        let mut s = String::from("[[layers]]\n");
        if let Some(n) = named { s += &format!("name = \"L{n}\"\n"); }
        s += &format!("kind = \"{}\"\n", kinds[kind]);
        if kind > 0 { s += &format!("experts = {experts}\n"); }
        if let (3, Some(n)) = (kind, task_experts) { s += &format!("task_experts = {n}\n"); }
        if let (1.., Some(t)) = (kind, temperature) { s += &format!("temperature = {t:?}\n"); }
        s += &format!("units = {:?}\nactivation = \"{}\"\n", units, acts[act]);
        if let Some(d) = dropout { s += &format!("dropout = {d:?}\n"); }
        s
    }
}

prop_compose! {
    fn task()(n in name(), binary in any::<bool>(), positive in prop::option::of(text()),
              tower in prop::collection::vec(1u64..20, 0..3), weight in prop::option::of(0.0f64..5.0),
              dropout in prop::option::of(0.0f64..0.9)) -> String {
        let mut s = format!("[[tasks]]\nname = \"T{n}\"\nkind = \"{}\"\nlabel = \"label_{n}\"\n", if binary { "binary" } else { "regression" });
        if binary { if let Some(p) = positive { s += &format!("positive = {}\n", toml_str(&p)); } }
        if !tower.is_empty() { s += &format!("tower = {tower:?}\n"); }
        if let Some(w) = weight { s += &format!("weight = {w:?}\n"); }
        if let Some(d) = dropout { s += &format!("dropout = {d:?}\n"); }
        s
    }
}

prop_compose! {
    fn toml_spec()(features in prop::collection::vec(feature(), 1..5), layers in prop::collection::vec(layer(), 0..3),
                   tasks in prop::collection::vec(task(), 1..4), csv in any::<bool>(), lr in 1e-5f64..0.5,
                   batch in 1u64..4096, epochs in 1u64..20, seed in any::<u32>(), decay in 0.1f64..1.0,
                   rows in 1u64..100000, header in any::<bool>(), lazy in any::<bool>(), select_loss in any::<bool>(),
                   decor in prop::collection::vec(prop_oneof![6 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8)], 0..200),
                   words in prop::collection::vec("[ -~é]{0,12}", 1..4)) -> String {
        let mut s = String::from("[model]\nname = \"gen\"\n\n[data]\n");
        if csv {
            s += &format!("source = \"csv\"\ntrain = [\"t.csv\"]\nheader = {header}\ncolumns = [\"a\", \"b\"]\ndelimiter = \";\"\nmissing = \"NA\"\n");
        } else {
            s += &format!("[data.synthetic]\nkind = \"categorical\"\nrows = {rows}\n");
        }
        // Names must be unique: drop repeated feature and task names.
        let mut seen = std::collections::HashSet::new();
        for f in features { let n = f.lines().nth(1).unwrap_or_default().to_string(); if seen.insert(n) { s += "\n"; s += &f; } }
        for l in layers { s += "\n"; s += &l; }
        let mut seen = std::collections::HashSet::new();
        for t in tasks { let n = t.lines().nth(1).unwrap_or_default().to_string(); if seen.insert(n) { s += "\n"; s += &t; } }
        s += &format!("\n[train]\nlr = {lr:?}\nbatch_size = {batch}\nepochs = {epochs}\nseed = {seed}\nlr_decay_rate = {decay:?}\nlr_decay_epochs = 3\n");
        if lazy { s += "optimizer = \"lazy_adam\"\n"; }
        if select_loss { s += "select = \"loss\"\n"; }
        with_comments(&s, &decor, &words)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    #[test]
    fn generated_specs_round_trip(spec in toml_spec()) {
        // Generated specs may still be invalid (a column named like a label, say); the
        // property is about those that compile, and proptest fails the run if too many
        // are rejected.
        let src = SourceFile::from_text("gen.toml", spec.as_str());
        prop_assume!(compile_source(&src).is_ok());
        check_round_trips(&spec);
    }
}
