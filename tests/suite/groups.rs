//! Feature groups: several features declared with one set of settings (`also` in TOML,
//! `feature a, b, c:` in the DSL) are the features declared one by one.

use multigate::source::SourceFile;

use super::{compile_ok, mg_ok, spec_with_data, train_and_predict};

const ONE_BY_ONE: &str = r#"
model m {
  synthetic categorical
  feature a: categorical(hash = 100) embed 4
  feature b: categorical(hash = 100) embed 4
  feature c: categorical(hash = 100) embed 4
  feature x: dense(transform = log1p)
  feature y: dense(transform = log1p)
  feature d: categorical(hash = 100) embed 4
  cross ac = product(a, c)
  layer mmoe { experts 2 x [8] relu }
  task ctr: binary(label = "click") tower [4]
}
"#;

const GROUPED: &str = r#"
model m {
  synthetic categorical
  feature a, b, c: categorical(hash = 100) embed 4
  feature x, y: dense(transform = log1p)
  feature d: categorical(hash = 100) embed 4
  cross ac = product(a, c)
  layer mmoe { experts 2 x [8] relu }
  task ctr: binary(label = "click") tower [4]
}
"#;

#[test]
fn a_group_is_its_features_one_by_one_in_both_syntaxes() {
    let one = compile_ok("one.mg", ONE_BY_ONE);
    let grouped = compile_ok("grouped.mg", GROUPED);
    assert_eq!(grouped.model.to_string(), one.model.to_string());
    // TOML spells a group with `also`; fmt keeps it in either syntax.
    let spec = multigate::spec::parse(&SourceFile::from_text("g.mg", GROUPED)).unwrap();
    let toml = multigate::spec::format(&spec, None, multigate::spec::Syntax::Toml);
    assert!(toml.contains("name = \"a\"\nalso = [\"b\", \"c\"]"), "{toml}");
    assert_eq!(compile_ok("g.toml", &toml).model.to_string(), one.model.to_string());
    let dsl = multigate::spec::format(&spec, None, multigate::spec::Syntax::Dsl);
    assert!(dsl.contains("feature a, b, c: categorical"), "{dsl}");
}

#[test]
fn pinning_a_member_splits_its_group_in_place() {
    let mut spec = multigate::spec::parse(&SourceFile::from_text(
        "g.mg",
        GROUPED.replace("feature a, b, c: categorical(hash = 100)", "feature a, b, c, e: categorical").as_str(),
    ))
    .unwrap();
    spec.pin_vocabulary("c", vec!["p".into(), "q".into()]);
    let names = |s: &multigate::spec::Spec| -> Vec<String> {
        s.feature_list().iter().map(|f| f.name.get_ref().clone()).collect()
    };
    assert_eq!(names(&spec), ["a", "b", "c", "e", "x", "y", "d"], "the order is kept");
    let heads: Vec<&str> = spec.features.iter().map(|f| f.name.get_ref().as_str()).collect();
    assert_eq!(heads, ["a", "c", "e", "x", "d"], "a, b | c | e, then the other declarations");
    assert!(spec.features[1].vocabulary.is_some() && spec.features[0].vocabulary.is_none());
    // Pinning the head of a group, and a feature declared alone.
    spec.pin_vocabulary("a", vec!["r".into()]);
    spec.pin_vocabulary("d", vec!["s".into()]);
    assert_eq!(names(&spec), ["a", "b", "c", "e", "x", "y", "d"]);
    let heads: Vec<&str> = spec.features.iter().map(|f| f.name.get_ref().as_str()).collect();
    assert_eq!(heads, ["a", "b", "c", "e", "x", "d"]);
}

#[test]
fn a_group_cannot_name_one_column_and_repeats_its_mistakes_once() {
    let text = GROUPED
        .replace("feature a, b, c: categorical(hash = 100)", "feature a, b, c: categorical(hash = 0, column = \"z\")");
    let src = SourceFile::from_text("bad.mg", text.as_str());
    let e = match multigate::pipeline::compile_source(&src) {
        Ok(_) => panic!("should not compile"),
        Err(e) => e.render(Some(&src), false),
    };
    assert_eq!(e.matches("hash_buckets is 0").count(), 1, "{e}");
    assert!(e.contains("`column` does not apply to a group of features"), "{e}");
    let dup = GROUPED.replace("feature a, b, c:", "feature a, b, a:");
    let src = SourceFile::from_text("dup.mg", dup.as_str());
    let e = multigate::pipeline::compile_source(&src).err().expect("a repeated name").render(Some(&src), false);
    assert!(e.contains("dup.mg:4"), "{e}");
}

/// Vocabularies fitted for the members of groups are pinned into the bundle's spec with
/// the features in their order: the bundle reloads and predicts.
#[test]
fn a_grouped_spec_with_fitted_vocabularies_trains_and_predicts() {
    let mut csv = String::from("a,b,c,x,label\n");
    for i in 0..400 {
        csv.push_str(&format!("a{},b{},c{},{},{}\n", i % 5, i % 3, i % 7, i % 11, (i % 3 == 0) as u8));
    }
    let spec = r#"model g {
  data csv(train = ["t.csv"])
  feature a, b, c: categorical embed 3
  feature x: dense(transform = zscore)
  layer mmoe { experts 2 x [8] relu }
  task ctr: binary(label = "label") tower [4]
  train { adam batch 64 epochs 1 seed 1 }
}
"#;
    let (dir, spec) = spec_with_data("g.mg", spec, &csv);
    let (bundle, preds) = train_and_predict(&spec, &dir.path().join("t.csv"));
    let ir = |p: &std::path::Path| -> Vec<String> {
        mg_ok(&["check", p.to_str().unwrap()])
            .lines()
            .filter(|l| l.starts_with("  feature"))
            .map(|l| l.split(':').next().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(ir(&bundle.join("spec.toml")), ["  feature a", "  feature b", "  feature c", "  feature x"]);
    assert_eq!(preds.lines().count(), 401);
}
