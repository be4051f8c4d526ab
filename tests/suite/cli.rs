//! The binary end to end: exit codes and what it prints.

use std::process::Command;

use super::repo;

/// Runs the binary from the repository root.
fn mg(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_multigate"))
        .args(args)
        .current_dir(repo())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn check_prints_the_ir_or_every_error() {
    let (code, out, _) = mg(&["check", "models/synthetic_mmoe.toml"]);
    assert_eq!(code, 0);
    assert!(out.contains("expert_group layer0.experts: 8 x Mlp[100 -> 16] relu"), "{out}");

    let (code, _, err) = mg(&["check", "tests/inputs/err/unknown_words.toml"]);
    assert_eq!(code, 2);
    for needle in [
        "unknown feature type `categoricl`",
        "did you mean `categorical`?",
        "unknown layer kind `mmeo`",
        "unknown activation `rlu`",
        "unknown task kind `binray`",
        "4 error(s)",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in\n{err}");
    }
    assert!(err.contains("unknown_words.toml:"), "{err}");
}

#[test]
fn unreadable_and_absent_specs_exit_non_zero_without_panicking() {
    let (code, _, err) = mg(&["check", "does/not/exist.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("does/not/exist.toml"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, [0xff, 0xfe, b'[', 0x80]).unwrap();
    let (code, _, err) = mg(&["check", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("UTF-8") && !err.contains("panicked"), "{err}");
}

#[test]
fn train_predict_synth_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("m.toml");
    let text = std::fs::read_to_string(repo().join("models/seed_avazu_mmoe.toml"))
        .unwrap()
        .replace("rows = 200000", "rows = 3000")
        .replace("epochs = 3", "epochs = 1");
    std::fs::write(&spec, text).unwrap();
    let bundle = dir.path().join("bundle");
    let (code, out, err) = mg(&["compile-and-train", spec.to_str().unwrap(), "--out", bundle.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("val click: auc") && out.contains("gate usage"), "{out}");
    for f in ["model.safetensors", "spec.toml", "model.ir", "metrics.json"] {
        assert!(bundle.join(f).exists(), "{f}");
    }
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["report"]["epochs"].as_array().unwrap().len(), 1);

    let csv = dir.path().join("rows.csv");
    let (code, _, err) = mg(&["synth", spec.to_str().unwrap(), "--rows", "50", "--out", csv.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let preds = dir.path().join("preds.csv");
    let (code, _, err) = mg(&[
        "predict",
        bundle.to_str().unwrap(),
        csv.to_str().unwrap(),
        "--out",
        preds.to_str().unwrap(),
        "--evaluate",
    ]);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&preds).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "click,banner_top");
    assert_eq!(lines.len(), 51);
    for l in &lines[1..] {
        for p in l.split(',') {
            let p: f32 = p.parse().unwrap();
            assert!((0.0..=1.0).contains(&p));
        }
    }
    assert!(err.contains("click: auc"), "--evaluate prints metrics: {err}");

    // --keep copies input columns in front of the predictions, row for row.
    let (code, kept, err) = mg(&["predict", bundle.to_str().unwrap(), csv.to_str().unwrap(), "--keep", "site_id"]);
    assert_eq!(code, 0, "{err}");
    let input = std::fs::read_to_string(&csv).unwrap();
    let site_col = input.lines().next().unwrap().split(',').position(|h| h == "site_id").unwrap();
    let ids: Vec<&str> = input.lines().skip(1).map(|l| l.split(',').nth(site_col).unwrap()).collect();
    let kept_ids: Vec<&str> = kept.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(kept.lines().next().unwrap(), "site_id,click,banner_top");
    assert_eq!(kept_ids, ids);

    // With --gates, every row also carries each gate's weights, which sum to one.
    let (code, text, err) = mg(&["predict", bundle.to_str().unwrap(), csv.to_str().unwrap(), "--gates"]);
    assert_eq!(code, 0, "{err}");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(header.len(), 2 + 2 * 8);
    assert_eq!(header[2], "layer0.gate.click.e0");
    assert_eq!(header[17], "layer0.gate.banner_top.e7");
    for l in lines {
        let v: Vec<f32> = l.split(',').map(|x| x.parse().unwrap()).collect();
        for gate in [&v[2..10], &v[10..18]] {
            assert!((gate.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{gate:?}");
        }
    }

    // A CSV without a feature column is an error naming it.
    let broken = dir.path().join("broken.csv");
    std::fs::write(&broken, "click,site_id\n1,a\n").unwrap();
    let (code, _, err) = mg(&["predict", bundle.to_str().unwrap(), broken.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("column `id`") && err.contains("adid"), "{err}");
}

#[test]
fn bench_reports_phases() {
    let (code, out, err) = mg(&["bench", "models/seed_avazu_mmoe.toml", "--batch", "64", "--steps", "3"]);
    assert_eq!(code, 0, "{err}");
    for needle in ["train:", "forward+loss", "backward", "optimizer", "forward only:", "threads"] {
        assert!(out.contains(needle), "{needle} in {out}");
    }
    // Allocations per step (a training step allocates its tensors) and the peak RSS.
    let mem = out.lines().find(|l| l.starts_with("memory:")).unwrap_or_else(|| panic!("{out}"));
    let allocs: u64 = mem.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{mem}"));
    assert!(allocs > 10, "{mem}");
    let mib: f64 = mem
        .split("peak resident ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{mem}"));
    assert!(mib > 1.0 && mib < 4096.0, "{mem}");
    // The forward pass beside its FLOPs at the FMA peak measured on the same thread: a
    // small model at batch 64 is far from it, and no pass is above it.
    let ceiling = out.lines().find(|l| l.starts_with("ceiling:")).unwrap_or_else(|| panic!("{out}"));
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        let rate: f64 =
            ceiling.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{ceiling}"));
        let at: f64 = ceiling
            .split("this run is at ")
            .nth(1)
            .and_then(|s| s.strip_suffix("% of it"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{ceiling}"));
        assert!(rate > 1000.0 && ceiling.contains(" FLOPs/sample"), "{ceiling}");
        assert!(at > 0.0 && at < 100.0, "{ceiling}");
        return;
    }
    assert!(ceiling.contains("unknown"), "{ceiling}");
}

#[test]
fn fmt_converts_checks_and_keeps_comments() {
    let dir = tempfile::tempdir().unwrap();
    let (code, dsl, err) = mg(&["fmt", "models/synthetic_mmoe.toml", "--to", "mg"]);
    assert_eq!(code, 0, "{err}");
    assert!(dsl.starts_with("// MMoE: 8 experts") && dsl.contains("\nmodel synthetic_mmoe {\n"), "{dsl}");
    assert!(dsl.contains("layer mmoe { experts 8 x [16] relu }"), "{dsl}");
    assert!(dsl.contains("  feature x: dense(width = 100)  // reads columns x_0 .. x_99\n"), "{dsl}");
    let file = dir.path().join("m.mg");
    std::fs::write(&file, &dsl).unwrap();
    let (code, _, err) = mg(&["fmt", "--check", file.to_str().unwrap()]);
    assert_eq!(code, 0, "canonical output passes --check: {err}");
    std::fs::write(&file, dsl.replace("  ", "    ")).unwrap();
    let (code, _, err) = mg(&["fmt", "--check", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    let (code, _, _) = mg(&["fmt", "--write", file.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), dsl);
    // The models carry comments: --write keeps them, and the shipped specs are canonical.
    let commented = dir.path().join("c.toml");
    let shipped = std::fs::read_to_string(repo().join("models/synthetic_mmoe.toml")).unwrap();
    std::fs::write(&commented, shipped.replace("dim = 100          # d", "dim=100 # d")).unwrap();
    let (code, _, err) = mg(&["fmt", "--check", commented.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = mg(&["fmt", "--write", commented.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_to_string(&commented).unwrap(), shipped);
    // Back to TOML, and the IR is the same as the original's.
    let toml_file = dir.path().join("back.toml");
    let (_, toml_text, _) = mg(&["fmt", file.to_str().unwrap(), "--to", "toml"]);
    std::fs::write(&toml_file, toml_text).unwrap();
    let (_, a, _) = mg(&["check", "models/synthetic_mmoe.toml"]);
    let (_, b, _) = mg(&["check", toml_file.to_str().unwrap()]);
    assert_eq!(a, b);
}

#[test]
fn fit_pins_open_statistics_into_the_spec_keeping_comments() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f.toml");
    let text = "# the model\n[model]\nname = \"f\"\n\n[data.synthetic]\nkind = \"categorical\"\nrows = 2000\n\n\
                [[features]]\nname = \"d\"\ntype = \"dense\"\ntransform = \"zscore\"  # fitted\n\n\
                [[tasks]]\nname = \"ctr\"\nkind = \"binary\"\nlabel = \"click\"\n";
    std::fs::write(&p, text).unwrap();
    let (code, out, err) = mg(&["fit", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("fitted on the training rows, feature d: mean"), "{err}");
    assert!(out.starts_with("# the model\n") && out.contains("transform = \"zscore\"  # fitted\nmean = "), "{out}");
    assert_eq!(std::fs::read_to_string(&p).unwrap(), text, "printing leaves the file alone");
    let (code, _, err) = mg(&["fit", "--write", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_to_string(&p).unwrap(), out);
    let (code, again, err) = mg(&["fit", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("nothing to fit"), "{err}");
    assert_eq!(again, out);
}

#[test]
fn check_looks_up_every_column_in_the_data_and_loads_it_with_data() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.csv"), "age,city,click\n30,paris,1\n40,rome,0\n50,oslo,0\n").unwrap();
    let spec = |age: &str, label: &str, positive: &str| {
        format!(
            "[model]\nname = \"c\"\n\n[data]\nsource = \"csv\"\ntrain = [\"t.csv\"]\nvalidation_fraction = 0.34\n\n\
             [[features]]\nname = \"{age}\"\ntype = \"dense\"\n\n\
             [[features]]\nname = \"city\"\ntype = \"categorical\"\nhash_buckets = 10\n\n\
             [[tasks]]\nname = \"ctr\"\nkind = \"binary\"\nlabel = \"{label}\"\npositive = \"{positive}\"\n"
        )
    };
    let p = dir.path().join("c.toml");
    let path = p.to_str().unwrap();
    // Two misspellings, both reported at once, at their lines, with suggestions.
    std::fs::write(&p, spec("agee", "clik", "1")).unwrap();
    let (code, _, err) = mg(&["check", path]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("column `agee` is not in") && err.contains("did you mean `age`?"), "{err}");
    assert!(err.contains("column `clik` is not in") && err.contains("did you mean `click`?"), "{err}");
    assert!(err.contains("c.toml:10:") && err.contains("2 column(s) missing"), "{err}");
    // Columns found: the header is enough without --data.
    std::fs::write(&p, spec("age", "click", "yes")).unwrap();
    let (code, _, err) = mg(&["check", path]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("every column found"), "{err}");
    // --data loads the rows: a positive value that never occurs is found.
    let (code, _, err) = mg(&["check", path, "--data"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("yes"), "{err}");
    std::fs::write(&p, spec("age", "click", "1")).unwrap();
    let (code, _, err) = mg(&["check", path, "--data"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("training") && err.contains("load and encode"), "{err}");
    // Files that are not there: checked without data, noted; with --data, an error.
    std::fs::remove_file(dir.path().join("t.csv")).unwrap();
    let (code, _, err) = mg(&["check", path]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("not checked"), "{err}");
    let (code, _, err) = mg(&["check", path, "--data"]);
    assert_eq!(code, 1, "{err}");
}

#[test]
fn init_writes_a_spec_that_trains_with_roles_inferred_from_the_data() {
    let dir = tempfile::tempdir().unwrap();
    // 300 rows: a wide-ranging age, a heavy-tailed count, a city, a numeric code,
    // a rare string label, a 0/1 label, a duration and an id to ignore.
    let mut csv = String::from("user id,age,spend,city,plan,bought,click,minutes\n");
    for i in 0..300u64 {
        let spend = if i % 20 == 0 { 5000 + i * 37 } else { i % 80 };
        let city = ["paris", "rome", "oslo", "lima"][(i % 4) as usize];
        let bought = if i % 10 == 0 { "yes" } else { "no" };
        csv += &format!(
            "{i},{},{spend},{city},{},{bought},{},{}.5\n",
            18 + (i * 7919) % 80,
            i % 3,
            (i / 2) % 2,
            (i * 13) % 97
        );
    }
    let data = dir.path().join("rows.csv");
    std::fs::write(&data, csv).unwrap();
    let out = dir.path().join("spec.toml");
    let args = ["init", data.to_str().unwrap(), "--label", "bought", "--label", "click", "--label", "minutes"];
    let (code, _, err) = mg(&[&args[..], &["--ignore", "user id", "--out", out.to_str().unwrap()]].concat());
    assert_eq!(code, 0, "{err}");
    let said = err.split_whitespace().collect::<Vec<_>>().join(" ");
    for role in [
        "age dense, zscore",
        "spend dense, log1p",
        "city categorical, 4 distinct",
        "plan categorical, 3 distinct",
        "bought binary task, positive `yes` (the rarer value)",
        "click binary task (0/1)",
        "minutes regression task",
        "user id ignored",
    ] {
        assert!(said.contains(role), "{role}: {err}");
    }
    let spec = std::fs::read_to_string(&out).unwrap();
    assert!(spec.starts_with("# Written by `multigate init`") && spec.contains("train = [\"rows.csv\"]"), "{spec}");
    // It is canonical, and it trains (zscore statistics fitted on the way).
    let (code, _, err) = mg(&["fmt", "--check", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let run = dir.path().join("run");
    let (code, _, err) =
        mg(&["compile-and-train", out.to_str().unwrap(), "--out", run.to_str().unwrap(), "--epochs", "1", "--quiet"]);
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read_to_string(run.join("spec.toml")).unwrap().contains("mean = "));
    // The file is kept; a typo in a label is caught with a suggestion.
    let (code, _, err) = mg(&[&args[..], &["--out", out.to_str().unwrap()]].concat());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--force"), "{err}");
    let (code, _, err) = mg(&["init", data.to_str().unwrap(), "--label", "clik"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("did you mean `click`?"), "{err}");
    // DSL on request.
    let mg_out = dir.path().join("spec.mg");
    let (code, _, err) = mg(&[&args[..], &["--out", mg_out.to_str().unwrap()]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read_to_string(&mg_out).unwrap().contains("model rows {"));
}

#[test]
fn skipped_bad_rows_are_printed_and_written_to_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows = String::from("x,click\n");
    for i in 0..200 {
        rows += &format!("{},{}\n", i % 13, i % 2);
    }
    rows += "oops,1\n5,7\n";
    std::fs::write(dir.path().join("t.csv"), rows).unwrap();
    let spec = dir.path().join("s.toml");
    std::fs::write(
        &spec,
        "[model]\nname = \"s\"\n\n[data]\nsource = \"csv\"\ntrain = [\"t.csv\"]\nbad_rows = \"warn\"\n\n\
         [[features]]\nname = \"x\"\ntype = \"dense\"\n\n[[tasks]]\nname = \"click\"\nkind = \"binary\"\nlabel = \"click\"\n",
    )
    .unwrap();
    let out = dir.path().join("run");
    let (code, stdout, err) =
        mg(&["compile-and-train", spec.to_str().unwrap(), "--out", out.to_str().unwrap(), "--epochs", "1"]);
    assert_eq!(code, 0, "{err}");
    let said = format!("{stdout}{err}");
    assert!(
        said.contains("skipped 2 bad row(s) of 202 read: 1 binary label not 0 or 1, 1 unparsable number"),
        "{said}"
    );
    assert!(said.contains("t.csv:202: column `x`"), "warn shows where: {said}");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["bad_rows"]["total"], 2, "{m}");
    assert_eq!(m["bad_rows"]["by_reason"]["unparsable number"], 1, "{m}");
}

#[test]
fn every_shipped_spec_is_in_canonical_form() {
    for e in std::fs::read_dir(repo().join("models")).unwrap() {
        let p = e.unwrap().path();
        let (code, _, err) = mg(&["fmt", "--check", p.to_str().unwrap()]);
        assert_eq!(code, 0, "{}: {err}", p.display());
    }
}

#[test]
fn graph_renders_dot_and_mermaid() {
    let (code, dot, err) = mg(&["graph", "models/census_income_mmoe.mg"]);
    assert_eq!(code, 0, "{err}");
    assert!(dot.starts_with("digraph") && dot.contains("income (binary)"), "{dot}");
    let (code, mermaid, _) = mg(&["graph", "models/synthetic_shared_bottom.toml", "--format", "mermaid"]);
    assert_eq!(code, 0);
    assert!(mermaid.contains("flowchart TB") && mermaid.contains("MLP [100→113] relu"), "{mermaid}");
    let (code, _, err) = mg(&["graph", "tests/inputs/err/dsl_semantic_errors.mg"]);
    assert_eq!(code, 2);
    assert!(err.contains("9 error(s)"), "{err}");
}

#[test]
fn every_command_accepts_both_syntaxes() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("rows.csv");
    let (code, _, err) = mg(&["synth", "models/synthetic_omoe.mg", "--rows", "20", "--out", csv.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = mg(&[
        "compile-and-train",
        "models/synthetic_omoe.mg",
        "--rows",
        "500",
        "--epochs",
        "1",
        "--out",
        dir.path().join("b").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("test y1: mse"), "{out}");
    let (code, out, err) = mg(&["bench", "models/synthetic_omoe.mg", "--batch", "32", "--steps", "2"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("train:"));
}

#[test]
fn check_fails_cleanly_on_every_broken_input() {
    let mut n = 0;
    for e in std::fs::read_dir(repo().join("tests/inputs/err")).unwrap() {
        let p = e.unwrap().path();
        let rel = p.strip_prefix(repo()).unwrap().to_str().unwrap().to_string();
        let (code, out, err) = mg(&["check", &rel]);
        assert_eq!(code, 2, "{rel}: exit {code}\n{err}");
        assert!(out.is_empty(), "{rel}: printed IR for a broken spec");
        assert!(!err.contains("panicked"), "{rel}: {err}");
        assert!(err.contains("error(s) in"), "{rel}: {err}");
        if !std::fs::read_to_string(&p).unwrap().trim().is_empty() {
            assert!(err.contains(&format!("{rel}:")), "{rel}: no line in\n{err}");
        }
        n += 1;
    }
    assert!(n >= 20, "{n} cases");
}

#[test]
fn an_interrupted_run_is_never_overwritten_silently() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bundle");
    let ck = dir.path().join("bundle.checkpoint");
    std::fs::create_dir_all(&ck).unwrap();
    std::fs::write(ck.join("state.json"), "{}").unwrap();
    let args = |extra: &[&str]| {
        let mut a = vec![
            "compile-and-train",
            "models/synthetic_mmoe.mg",
            "--rows",
            "400",
            "--epochs",
            "2",
            "--out",
            out.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| mg(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let (code, _, err) = run(args(&[]));
    assert_eq!(code, 1);
    assert!(err.contains("--resume") && err.contains("--fresh"), "{err}");
    assert!(ck.join("state.json").exists(), "the checkpoint is kept");
    let (code, _, err) = run(args(&["--resume"]));
    assert_eq!(code, 1, "a broken checkpoint is an error: {err}");
    assert!(err.contains("manifest.json"), "{err}");
    let (code, out_text, err) = run(args(&["--fresh"]));
    assert_eq!(code, 0, "{err}");
    assert!(out_text.contains("bundle written"));
    assert!(!ck.exists(), "a finished run removes its checkpoint");
    assert!(out.join("model.safetensors").exists());
}

#[test]
fn a_device_this_build_lacks_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("b");
    let (code, _, err) = mg(&[
        "compile-and-train",
        "models/synthetic_mmoe.mg",
        "--rows",
        "100",
        "--device",
        "cuda:0",
        "--out",
        out.to_str().unwrap(),
    ]);
    if cfg!(feature = "cuda") {
        return; // A CUDA build on a machine without a GPU fails differently; nothing to check here.
    }
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--features cuda"), "{err}");
    assert!(!out.exists());
    // --threads is an option of the commands that run a model (0 counts as 1), not of `check`.
    let (code, _, err) = mg(&["bench", "models/synthetic_mmoe.mg", "--threads", "0", "--steps", "1", "--batch", "8"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = mg(&["check", "models/synthetic_mmoe.mg", "--threads", "1"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = mg(&["compile-and-train", "models/synthetic_mmoe.mg", "--device", "tpu"]);
    assert_eq!(code, 2);
    assert!(err.contains("expected cpu, cuda or cuda:N"), "{err}");
}

#[test]
fn fmt_refuses_a_conversion_that_would_not_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("na.toml");
    std::fs::write(
        &p,
        "[model]\nname = \"m\"\n[[features]]\nname = \"sit\u{e9}_id\"\ntype = \"categorical\"\nhash_buckets = 10\n[[tasks]]\nname = \"t\"\nkind = \"binary\"\nlabel = \"y\"\n",
    )
    .unwrap();
    let (code, out, err) = mg(&["fmt", p.to_str().unwrap(), "--to", "mg"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.is_empty(), "nothing written: {out}");
    assert!(err.contains("cannot be written in the other syntax") && err.contains("sit\u{e9}_id"), "{err}");
    // An ASCII spec converts and reads back.
    let (code, out, _) = mg(&["fmt", "models/synthetic_mmoe.toml", "--to", "mg"]);
    assert_eq!(code, 0);
    assert!(out.contains("\nmodel synthetic_mmoe {"), "{out}");
}
