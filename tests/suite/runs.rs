//! Runs you can trust (the binary end to end): one run per folder, no silent
//! replacement, bundles that say what was trained, and a commit that survives a crash
//! at every step.

use std::path::Path;
use std::process::Command;

use multigate::export::{self, RunLock};

use super::repo;

const SPEC: &str = "models/synthetic_mmoe.toml";

use super::multigate as mg_env;

fn train(out: &Path, extra: &[&str]) -> (Option<i32>, String, String) {
    train_env(out, extra, &[])
}

fn train_env(out: &Path, extra: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut args = vec!["compile-and-train", SPEC, "--rows", "2000", "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    mg_env(&args, env)
}

fn weights(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("model.safetensors")).unwrap()
}

/// Names beside `dir` that are not `dir` itself, its checkpoint, lock file or TensorBoard logs.
fn temporaries(dir: &Path) -> Vec<String> {
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
    let keep = [name.clone(), format!("{name}.checkpoint"), format!(".{name}.lock"), format!("{name}.tensorboard")];
    let mut v: Vec<String> = std::fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(&name) && !keep.contains(n))
        .collect();
    v.sort();
    v
}

#[test]
fn a_second_run_on_a_locked_folder_fails_at_once_naming_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("b");
    let lock = RunLock::acquire(&out).unwrap();
    let holder = format!("process {}", std::process::id());
    // A live run's checkpoint is not an interrupted run's: --resume and --fresh are
    // refused too, before anything is read.
    std::fs::create_dir_all(multigate::run::checkpoint_dir(&out)).unwrap();
    for extra in [&[][..], &["--resume"], &["--fresh"], &["--force"]] {
        let (code, stdout, err) = train(&out, &["--epochs", "1"].iter().chain(extra).copied().collect::<Vec<_>>());
        assert_eq!(code, Some(1), "{extra:?}: {stdout}{err}");
        assert!(err.contains("in use by a running multigate") && err.contains(&holder), "{extra:?}: {err}");
        assert!(!err.contains("interrupted"), "{err}");
        assert!(!stdout.contains("epoch"), "nothing trained: {stdout}");
    }
    drop(lock);
    std::fs::remove_dir_all(multigate::run::checkpoint_dir(&out)).unwrap();
    let (code, _, err) = train(&out, &["--epochs", "1"]);
    assert_eq!(code, Some(0), "the lock is released with its holder: {err}");
}

#[test]
fn a_run_never_silently_replaces_a_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("b");
    let (code, _, err) = train(&out, &["--epochs", "1"]);
    assert_eq!(code, Some(0), "{err}");
    let first = weights(&out);
    let (code, stdout, err) = train(&out, &["--epochs", "1", "--fresh"]);
    assert_eq!(code, Some(1), "{stdout}{err}");
    assert!(err.contains("already holds a bundle (trained 20") && err.contains("--force"), "{err}");
    assert!(!stdout.contains("epoch   1"), "refused before training: {stdout}");
    assert_eq!(weights(&out), first);
    let (code, _, err) = train(&out, &["--epochs", "2", "--force"]);
    assert_eq!(code, Some(0), "{err}");
    assert_ne!(weights(&out), first, "--force replaces it");
}

#[test]
fn an_out_that_cannot_be_a_run_folder_fails_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let (code, stdout, err) = train(&file, &["--epochs", "1"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("exists and is not a folder") && !stdout.contains("epoch   1"), "{stdout}{err}");
    // Somewhere nothing can be created (even by root).
    let (code, stdout, err) = train(Path::new("/proc/self/nowhere/b"), &["--epochs", "1"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("/proc/self/nowhere") && !stdout.contains("epoch   1"), "{stdout}{err}");
}

#[test]
fn the_bundle_records_what_was_trained() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("b");
    let (code, _, err) = train(&out, &["--epochs", "1"]);
    assert_eq!(code, Some(0), "{err}");
    let spec = std::fs::read_to_string(out.join("spec.toml")).unwrap();
    assert!(spec.contains("rows = 2000") && spec.contains("epochs = 1"), "overrides applied:\n{spec}");
    let p: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("provenance.json")).unwrap()).unwrap();
    let command: Vec<&str> = p["command"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(command.ends_with(&["--epochs", "1"]) && command.contains(&"compile-and-train"), "{command:?}");
    assert_eq!(p["multigate"], env!("CARGO_PKG_VERSION"));
    let rows = &p["rows"];
    let total: u64 = ["train", "validation", "test"].iter().map(|k| rows[k].as_u64().unwrap()).sum();
    assert_eq!(total, 2000, "{rows}");
    assert_eq!(rows["test"], 200);
    assert_eq!(p["epochs_trained"], 1);
    for t in ["started", "finished"] {
        let s = p[t].as_str().unwrap();
        assert!(s.len() == 20 && s.starts_with("20") && s.ends_with('Z'), "{t}: {s}");
    }
    assert!(p["data_source"].as_str().unwrap().contains("synthetic"), "{p}");
    assert_eq!(p["dense_ranges"].as_array().unwrap().len(), 100, "one per dense column x_0..x_99");

    // From a file: its fingerprint is recorded, and a changed file refuses --resume.
    let csv = tmp.path().join("rows.csv");
    let (code, _, err) = mg_env(&["synth", SPEC, "--rows", "1500", "--out", csv.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{err}");
    let out2 = tmp.path().join("c");
    let (code, _, err) = mg_env(
        &["compile-and-train", SPEC, "--data", csv.to_str().unwrap(), "--epochs", "1", "--out", out2.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    let p: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out2.join("provenance.json")).unwrap()).unwrap();
    let (bytes, sha) = export::files::sha256_file(&csv).unwrap();
    assert_eq!(p["data_files"][0]["sha256"], sha.as_str());
    assert_eq!(p["data_files"][0]["bytes"], bytes);
}

#[test]
fn resume_on_changed_data_is_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("rows.csv");
    let (code, _, err) = mg_env(&["synth", SPEC, "--rows", "1500", "--out", csv.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{err}");
    let out = tmp.path().join("b");
    let args =
        ["compile-and-train", SPEC, "--data", csv.to_str().unwrap(), "--epochs", "2", "--out", out.to_str().unwrap()];
    // Killed while the second epoch's checkpoint is being written: the first epoch's
    // checkpoint is what a resume finds.
    let (code, _, err) = mg_env(&args, &[("MULTIGATE_CRASH_AT", "filled:2")]);
    assert_eq!(code, None, "killed by the injected crash: {err}");
    assert!(multigate::run::checkpoint_dir(&out).exists());
    let mut text = std::fs::read_to_string(&csv).unwrap();
    text.push_str(&text.lines().nth(1).unwrap().to_string());
    text.push('\n');
    std::fs::write(&csv, text).unwrap();
    let (code, stdout, err) = mg_env(&[&args[..], &["--resume"]].concat(), &[]);
    assert_eq!(code, Some(1), "{stdout}{err}");
    assert!(err.contains(&format!("data file {}", csv.display())) && err.contains("in the checkpoint"), "{err}");
}

/// The states a run can be killed in around its commits, each followed by the next
/// command: `out` always holds the complete old bundle or the complete new one, and
/// the resumed run ends bit for bit where an uninterrupted one does.
#[test]
fn a_crash_at_every_commit_step_loses_nothing_and_resumes_bit_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    // The reference: two epochs, never interrupted.
    let reference = tmp.path().join("reference");
    let (code, _, err) = train(&reference, &["--epochs", "2"]);
    assert_eq!(code, Some(0), "{err}");
    let (new, old_bundle) = (weights(&reference), tmp.path().join("old"));
    let (code, _, err) = train(&old_bundle, &["--epochs", "1"]);
    assert_eq!(code, Some(0), "{err}");
    let old = weights(&old_bundle);
    assert_ne!(old, new);
    let mut crashes = 0;
    for step in ["filled", "ready", "aside", "placed", "committed", "doomed"] {
        for nth in 1.. {
            // `out` starts with the old bundle; the run replaces it (two checkpoint
            // commits, one bundle commit, one checkpoint removal).
            let out = tmp.path().join(format!("{step}{nth}"));
            std::fs::create_dir_all(&out).unwrap();
            for f in std::fs::read_dir(&old_bundle).unwrap() {
                let f = f.unwrap().path();
                std::fs::copy(&f, out.join(f.file_name().unwrap())).unwrap();
            }
            let at = format!("{step}:{nth}");
            let (code, _, err) = train_env(&out, &["--epochs", "2", "--force"], &[("MULTIGATE_CRASH_AT", &at)]);
            if code == Some(0) {
                assert!(nth > 1, "{at}: never reached");
                break;
            }
            assert_eq!(code, None, "{at}: killed by a signal, not an error exit: {err}");
            assert!(err.contains(&format!("aborting at `{step}`")), "{err}");
            crashes += 1;
            // The next reader sees a complete bundle, old or new, and leaves no temporaries.
            let b = export::read_bundle(&out, &candle_core::Device::Cpu);
            assert!(b.is_ok(), "{at}: {:?}", b.err().map(|e| e.to_string()));
            let w = weights(&out);
            assert!(w == old || w == new, "{at}: the bundle is neither the old nor the new one");
            // The run is resumed (or, without a checkpoint, rerun) and ends where the
            // uninterrupted one did.
            let (code, stdout, err) = train(&out, &["--epochs", "2", "--force", "--resume"]);
            assert_eq!(code, Some(0), "{at}: {stdout}{err}");
            assert!(weights(&out) == new, "{at}: resumed run differs from the uninterrupted one:\n{stdout}");
            assert!(!multigate::run::checkpoint_dir(&out).exists(), "{at}: checkpoint left");
            assert_eq!(temporaries(&out), Vec::<String>::new(), "{at}");
        }
    }
    // filled x3, ready x3, aside x2, placed x2, committed, doomed.
    assert_eq!(crashes, 12);
}

/// `scripts/kill_loop.sh` in its short form: real kill -9 at random moments.
#[test]
fn the_kill_loop_script_survives_random_kills() {
    let out = Command::new("bash")
        .arg(repo().join("scripts/kill_loop.sh"))
        .arg("3")
        .env("MULTIGATE_BIN", env!("CARGO_BIN_EXE_multigate"))
        .current_dir(repo())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("bundles lost: 0") && text.contains("resumes bit-exact: 3 of 3"), "{text}");
}

#[test]
fn predict_reads_labels_only_to_evaluate_and_flags_values_training_never_saw() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("b");
    let (code, _, err) = train(&out, &["--epochs", "1"]);
    assert_eq!(code, Some(0), "{err}");
    let csv = tmp.path().join("rows.csv");
    let (code, _, err) = mg_env(&["synth", SPEC, "--rows", "20", "--out", csv.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{err}");
    // Row 2 has an absurd x_0 and a broken label.
    let text = std::fs::read_to_string(&csv).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    let (x0, y1) = (header.iter().position(|h| *h == "x_0").unwrap(), header.iter().position(|h| *h == "y1").unwrap());
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut row2: Vec<String> = lines[2].split(',').map(str::to_string).collect();
    row2[x0] = "1e30".into();
    row2[y1] = "oops".into();
    lines[2] = row2.join(",");
    std::fs::write(&csv, lines.join("\n") + "\n").unwrap();
    let (code, preds, err) = mg_env(&["predict", out.to_str().unwrap(), csv.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "a label column is not read to predict: {err}");
    assert_eq!(preds.lines().count(), 21);
    assert!(
        err.contains("warning: column `x_0`: 1 of 20 value(s) far outside what training saw")
            && err.contains("1000000000000000000000000000000 at row 2"),
        "{err}"
    );
    let (code, _, err) = mg_env(&["predict", out.to_str().unwrap(), csv.to_str().unwrap(), "--evaluate"], &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("rows.csv:3") && err.contains("`y1`") && err.contains("`oops` is not a number"), "{err}");
}
