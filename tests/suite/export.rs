//! Bundles: reload gives the same predictions; bad bundles are errors; writes are atomic.

use candle_core::Device;
use multigate::backend::candle::CandleModel;
use multigate::data;
use multigate::export::{self, BundleContents, ExportError};
use multigate::train;

use super::{compile_ok, small_spec, TWO_BINARY_TASKS};

fn trained(dir: &std::path::Path) -> (Vec<Vec<f32>>, data::Dataset) {
    let text = small_spec("[[layers]]\nkind = \"mmoe\"\nexperts = 3\nunits = [6]\n", TWO_BINARY_TASKS);
    let c = compile_ok("export.toml", &text);
    let (splits, _) = data::load_splits(&c.model, &c.data, None, &|_| String::new()).unwrap();
    let model = CandleModel::new(&c.model, 4, &Device::Cpu).unwrap();
    train::fit(&model, &c.train, &splits, &mut |_| {}).unwrap();
    let (preds, _) = train::predict(&model, &splits.validation, 100).unwrap();
    let spec = multigate::spec::parse_toml(&multigate::source::SourceFile::from_text("x", text)).unwrap().to_toml();
    export::write_bundle(
        dir,
        &model,
        BundleContents { spec_toml: &spec, metrics_json: "{}", provenance_json: "{}", extra: &[] },
    )
    .unwrap();
    (preds, splits.validation)
}

#[test]
fn reloaded_bundle_predicts_the_same_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bundle");
    let (preds, val) = trained(&dir);
    let b = export::read_bundle(&dir, &Device::Cpu).unwrap();
    let (again, _) = train::predict(&b.model, &val, 37).unwrap();
    for (p, q) in preds.iter().zip(&again) {
        assert_eq!(p.len(), q.len());
        for (x, y) in p.iter().zip(q) {
            assert!((x - y).abs() <= 1e-6, "{x} vs {y}");
        }
    }
}

/// A copy of bundle `dir` named `name` beside it.
fn copy_bundle(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let d = dir.with_file_name(name);
    std::fs::create_dir_all(&d).unwrap();
    for f in std::fs::read_dir(dir).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, d.join(f.file_name().unwrap())).unwrap();
    }
    d
}

/// Rewrites the manifest's entry for `file` to match its current content: a tamperer
/// who also edits the manifest, so that the checks behind the file table are reached.
fn reseal(dir: &std::path::Path, file: &str) {
    let bytes = std::fs::read(dir.join(file)).unwrap();
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    m["files"][file] = serde_json::json!({ "bytes": bytes.len(), "sha256": export::files::sha256_hex(&bytes) });
    std::fs::write(dir.join("manifest.json"), serde_json::to_string_pretty(&m).unwrap()).unwrap();
}

fn expect_corrupt(d: &std::path::Path, needles: &[&str]) {
    match export::read_bundle(d, &Device::Cpu) {
        Err(e @ (ExportError::Corrupt { .. } | ExportError::BadSpec { .. } | ExportError::NotOurs { .. })) => {
            let msg = e.to_string();
            for needle in needles {
                assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
            }
        }
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("{} should not load", d.display()),
    }
}

#[test]
fn every_tampering_of_a_bundle_is_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bundle");
    trained(&dir);
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();

    // One flipped bit in the tensor data (the end of the file is data, not header).
    let d = copy_bundle(&dir, "flipped");
    let mut bytes = weights.clone();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x10;
    std::fs::write(d.join("model.safetensors"), &bytes).unwrap();
    expect_corrupt(&d, &["model.safetensors", "SHA-256", "changed after it was written"]);

    // Two experts swapped inside the fused tensor: valid tensors, same shapes, only
    // the table knows.
    let d = copy_bundle(&dir, "swapped");
    let model = export::read_bundle(&dir, &Device::Cpu).unwrap().model;
    let mut named: std::collections::HashMap<String, candle_core::Tensor> =
        model.vars().iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
    let name = "layers.layer0.experts.0.weight".to_string();
    let t = named[&name].clone();
    let swapped = candle_core::Tensor::cat(
        &[t.narrow(0, 1, 1).unwrap(), t.narrow(0, 0, 1).unwrap(), t.narrow(0, 2, 1).unwrap()],
        0,
    )
    .unwrap();
    named.insert(name, swapped);
    export::files::save_tensors(&d.join("model.safetensors"), &named).unwrap();
    expect_corrupt(&d, &["model.safetensors", "SHA-256"]);

    // Another seed's weights, same model.
    let other = tmp.path().join("other");
    trained(&other);
    let d = copy_bundle(&dir, "other_seed");
    let other_weights = {
        let text = small_spec("[[layers]]\nkind = \"mmoe\"\nexperts = 3\nunits = [6]\n", TWO_BINARY_TASKS);
        let c = compile_ok("export.toml", &text);
        let m = CandleModel::new(&c.model, 77, &Device::Cpu).unwrap();
        m.vars().iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect()
    };
    export::files::save_tensors(&d.join("model.safetensors"), &other_weights).unwrap();
    expect_corrupt(&d, &["model.safetensors"]);

    // Truncated, garbage, absent weights.
    let d = copy_bundle(&dir, "truncated");
    std::fs::write(d.join("model.safetensors"), &weights[..weights.len() / 2]).unwrap();
    expect_corrupt(&d, &["model.safetensors", "bytes, manifest.json records"]);
    let d = copy_bundle(&dir, "garbage");
    std::fs::write(d.join("model.safetensors"), b"not a tensor file").unwrap();
    expect_corrupt(&d, &["model.safetensors"]);
    let d = copy_bundle(&dir, "no_weights");
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    expect_corrupt(&d, &["model.safetensors"]);

    // A consistent edit of spec and IR (another model): the spec's hash gives it away...
    let d = copy_bundle(&dir, "edited_spec");
    let spec = std::fs::read_to_string(d.join("spec.toml")).unwrap().replace("experts = 3", "experts = 4");
    std::fs::write(d.join("spec.toml"), &spec).unwrap();
    std::fs::write(d.join("model.ir"), "model other\n").unwrap();
    expect_corrupt(&d, &["spec.toml", "SHA-256"]);
    // ...and with the manifest's hashes redone too, the parameter table does.
    reseal(&d, "spec.toml");
    reseal(&d, "model.ir");
    expect_corrupt(&d, &["manifest.json records parameter `layers."]);

    // The weight file as a symlink (to /dev/zero, or out of the bundle): refused unread.
    let d = copy_bundle(&dir, "symlink");
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", d.join("model.safetensors")).unwrap();
    expect_corrupt(&d, &["model.safetensors", "symbolic link"]);
    let d = copy_bundle(&dir, "symlink_out");
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    std::os::unix::fs::symlink(dir.join("model.safetensors"), d.join("model.safetensors")).unwrap();
    expect_corrupt(&d, &["model.safetensors", "symbolic link"]);

    // A 2 GiB weight file (sparse) whose header declares the real size, with a manifest
    // edited to its size: refused after reading the header only.
    let d = copy_bundle(&dir, "huge");
    let f = std::fs::OpenOptions::new().write(true).open(d.join("model.safetensors")).unwrap();
    f.set_len(2 << 30).unwrap();
    drop(f);
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("manifest.json")).unwrap()).unwrap();
    m["files"]["model.safetensors"]["bytes"] = serde_json::json!(2u64 << 30);
    std::fs::write(d.join("manifest.json"), m.to_string()).unwrap();
    expect_corrupt(&d, &["model.safetensors", "header declares", &format!("the file has {}", 2u64 << 30)]);

    // Manifest damage.
    let d = copy_bundle(&dir, "edited_manifest");
    let m = std::fs::read_to_string(d.join("manifest.json")).unwrap().replacen(
        "\"parameters\": [",
        "\"parameters\": [ \"extra [1]\",",
        1,
    );
    std::fs::write(d.join("manifest.json"), m).unwrap();
    expect_corrupt(&d, &["manifest.json"]);
    let d = copy_bundle(&dir, "broken_manifest");
    std::fs::write(d.join("manifest.json"), "{").unwrap();
    expect_corrupt(&d, &["manifest.json"]);
    let d = copy_bundle(&dir, "broken_spec");
    std::fs::write(d.join("spec.toml"), "[model\n").unwrap();
    reseal(&d, "spec.toml");
    expect_corrupt(&d, &["spec"]);

    // Not a bundle at all, or not there: said as such, not as damage.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    expect_corrupt(&empty, &["not a bundle written by multigate"]);
    match export::read_bundle(&tmp.path().join("absent"), &Device::Cpu) {
        Err(e @ ExportError::Io { .. }) => assert!(e.to_string().contains("absent"), "{e}"),
        other => panic!("absent folder: {:?}", other.err().map(|e| e.to_string())),
    }

    // The untouched bundle still loads: none of the above was a false alarm.
    export::read_bundle(&dir, &Device::Cpu).expect("the original loads");
}

#[test]
fn every_file_of_a_bundle_has_the_same_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bundle");
    trained(&dir);
    let modes: std::collections::BTreeMap<String, u32> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().to_string(), e.metadata().unwrap().permissions().mode() & 0o777)
        })
        .collect();
    assert!(modes.len() >= 6, "{modes:?}");
    let first = *modes.values().next().unwrap();
    assert!(modes.values().all(|m| *m == first), "{modes:?}");
}

#[test]
fn bundles_of_other_formats_are_refused_naming_both_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bundle");
    trained(&dir);
    let expect_version = |found: &str| match export::read_bundle(&dir, &Device::Cpu) {
        Err(e @ ExportError::Version { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(found), "{msg:?} should name the bundle's format {found:?}");
            assert!(msg.contains(&format!("reads format {}", export::FORMAT_VERSION)), "{msg}");
        }
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("a bundle of format {found} should not load"),
    };
    // A bundle written before format versions (multigate 0.1 before expert groups) has
    // no manifest: its gate and expert tensors are laid out differently.
    let manifest = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    std::fs::remove_file(dir.join("manifest.json")).unwrap();
    expect_version("format 1 (no manifest.json)");
    // A bundle from a future format.
    let future = manifest.replace(&format!("\"format\": {}", export::FORMAT_VERSION), "\"format\": 99");
    assert_ne!(future, manifest);
    std::fs::write(dir.join("manifest.json"), future).unwrap();
    expect_version("format 99");
}

#[test]
fn a_real_format_1_bundle_is_refused_with_the_version_error() {
    // Written by multigate 0.1 at commit aa69819, before expert groups (gates were one
    // `[G, d_in, E]` tensor). Its tensors cannot be mapped onto today's table silently,
    // so loading says which formats are involved instead of failing on a shape.
    let dir = super::repo().join("tests/inputs/bundles/format1_mmoe");
    match export::read_bundle(&dir, &Device::Cpu) {
        Err(e @ ExportError::Version { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("format 1") && msg.contains(&format!("reads format {}", export::FORMAT_VERSION)),
                "{msg}"
            );
        }
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("a format 1 bundle should not load"),
    }
}

#[test]
fn export_replaces_an_old_bundle_and_leaves_no_temporaries() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bundle");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("stale.txt"), "old").unwrap();
    trained(&dir);
    assert!(!dir.join("stale.txt").exists(), "the old bundle is replaced as a whole");
    assert!(dir.join("model.safetensors").exists());
    let leftovers: Vec<_> =
        std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).filter(|n| n != "bundle").collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_failed_export_keeps_the_old_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bundle");
    trained(&dir);
    let before = std::fs::read(dir.join("model.safetensors")).unwrap();
    // A file where the bundle's parent folder should be makes the export fail.
    let blocked = tmp.path().join("file");
    std::fs::write(&blocked, "x").unwrap();
    let c = compile_ok("e.toml", &small_spec("", TWO_BINARY_TASKS));
    let model = CandleModel::new(&c.model, 1, &Device::Cpu).unwrap();
    let r = export::write_bundle(
        &blocked.join("bundle"),
        &model,
        BundleContents { spec_toml: "", metrics_json: "{}", provenance_json: "{}", extra: &[] },
    );
    assert!(r.is_err());
    assert_eq!(std::fs::read(dir.join("model.safetensors")).unwrap(), before);
}

#[test]
fn a_resumed_run_takes_the_same_steps_as_one_that_never_stopped() {
    let text = small_spec("[[layers]]\nkind = \"mmoe\"\nexperts = 3\nunits = [6]\ndropout = 0.2\n", TWO_BINARY_TASKS)
        .replace("epochs = 2", "epochs = 4");
    let c = compile_ok("resume.toml", &text);
    let (splits, _) = data::load_splits(&c.model, &c.data, None, &|_| String::new()).unwrap();
    let flat = |m: &CandleModel| -> Vec<f32> {
        m.vars().iter().flat_map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect()
    };
    // Uninterrupted.
    let straight = CandleModel::new(&c.model, 4, &Device::Cpu).unwrap();
    let a = train::fit(&straight, &c.train, &splits, &mut |_| {}).unwrap();
    // Stopped after epoch 2 with a checkpoint on disk...
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run.checkpoint");
    let first = CandleModel::new(&c.model, 4, &Device::Cpu).unwrap();
    let stopped = train::fit_from(
        &first,
        &c.train,
        &splits,
        None,
        &mut train::OnEpoch(|end: &train::EpochEnd| {
            export::write_checkpoint(&dir, &first, &end.checkpoint().unwrap()).unwrap();
            if end.report.epoch == 2 {
                Err("interrupted".into())
            } else {
                Ok(())
            }
        }),
    );
    assert!(matches!(stopped, Err(train::TrainError::Checkpoint(m)) if m == "interrupted"));
    // ...and resumed into a model initialised from another seed.
    let second = CandleModel::new(&c.model, 99, &Device::Cpu).unwrap();
    let ck = export::read_checkpoint(&dir, &second).unwrap();
    assert_eq!(ck.epochs_done, 2);
    let b = train::fit_from(&second, &c.train, &splits, Some(ck), &mut train::OnEpoch(|_: &train::EpochEnd| Ok(())))
        .unwrap();
    assert_eq!(flat(&straight), flat(&second), "final weights differ");
    assert_eq!(a.best_epoch, b.best_epoch);
    for (x, y) in a.epochs.iter().zip(&b.epochs) {
        assert_eq!(
            (x.train_loss.clone(), x.validation_loss),
            (y.train_loss.clone(), y.validation_loss),
            "epoch {}",
            x.epoch
        );
    }
    assert_eq!(a.test, b.test);
}

#[test]
fn a_checkpoint_of_another_model_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ck");
    let c =
        compile_ok("a.toml", &small_spec("[[layers]]\nkind = \"mmoe\"\nexperts = 3\nunits = [6]\n", TWO_BINARY_TASKS));
    let (splits, _) = data::load_splits(&c.model, &c.data, None, &|_| String::new()).unwrap();
    let model = CandleModel::new(&c.model, 4, &Device::Cpu).unwrap();
    train::fit_from(
        &model,
        &c.train,
        &splits,
        None,
        &mut train::OnEpoch(|end: &train::EpochEnd| {
            export::write_checkpoint(&dir, &model, &end.checkpoint().unwrap()).map_err(|e| e.to_string())
        }),
    )
    .unwrap();
    let other =
        compile_ok("b.toml", &small_spec("[[layers]]\nkind = \"mmoe\"\nexperts = 4\nunits = [6]\n", TWO_BINARY_TASKS));
    let m2 = CandleModel::new(&other.model, 4, &Device::Cpu).unwrap();
    let err = export::read_checkpoint(&dir, &m2).err().expect("refused").to_string();
    assert!(err.contains("another model"), "{err}");
    std::fs::write(dir.join("state.json"), "{").unwrap();
    let err = export::read_checkpoint(&dir, &model).err().expect("refused").to_string();
    assert!(err.contains("state.json"), "{err}");
}

#[test]
fn a_bundle_commit_killed_midway_is_finished_by_the_next_reader() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bundle");
    let (preds, val) = trained(&dir);
    // The state a kill between "old moved aside" and "new put in place" leaves: no
    // bundle at `dir`, the old one and a complete new one beside it (PID of no process).
    let dead = 4_194_400;
    let old = tmp.path().join(format!(".bundle.old-{dead}"));
    let ready = tmp.path().join(format!(".bundle.ready-{dead}"));
    std::fs::create_dir_all(&ready).unwrap();
    for f in std::fs::read_dir(&dir).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, ready.join(f.file_name().unwrap())).unwrap();
    }
    std::fs::rename(&dir, &old).unwrap();
    let b = export::read_bundle(&dir, &Device::Cpu).expect("recovered");
    let (again, _) = train::predict(&b.model, &val, 64).unwrap();
    assert_eq!(preds, again);
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("bundle")], "no temporaries left");
}
