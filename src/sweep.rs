//! `multigate sweep`: a grid over spec fields, every combination trained with every
//! seed, summarised per combination.
//!
//! A field is a dotted path into the spec's TOML form: `train.lr`, `data.synthetic.rows`,
//! `layers.0.experts` (a layer by index) or `layers.NAME.experts` (by its `name`, or its
//! `kind` when unnamed), `tasks.ctr.tower`, `features.user.embedding_dim`. Values are
//! TOML literals (`0.01`, `8`, `"relu"`, `[16, 8]`); a bare word that is not a TOML
//! literal is taken as a string. Every combination is edited into the spec, checked by
//! the full front end, and trained with `train.seed` set to each seed.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::ir::Selection;
use crate::run::{self, RunResult, TrainOptions};
use crate::source::SourceFile;

/// One `--set KEY=V1,V2,...`.
#[derive(Debug, Clone)]
pub struct Axis {
    pub key: String,
    pub values: Vec<String>,
}

impl std::str::FromStr for Axis {
    type Err = String;
    fn from_str(s: &str) -> Result<Axis, String> {
        let (key, values) = s.split_once('=').ok_or_else(|| format!("`{s}`: expected KEY=V1,V2,..."))?;
        let values = split_values(values);
        if key.trim().is_empty() || values.is_empty() {
            return Err(format!("`{s}`: expected KEY=V1,V2,..."));
        }
        Ok(Axis { key: key.trim().to_string(), values })
    }
}

/// Splits `a,b,[1, 2],c` at the commas outside brackets and quotes.
fn split_values(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth, mut quoted) = (Vec::new(), String::new(), 0i32, false);
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            '[' | '{' if !quoted => depth += 1,
            ']' | '}' if !quoted => depth -= 1,
            ',' if depth == 0 && !quoted => {
                out.push(std::mem::take(&mut cur).trim().to_string());
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out.into_iter().filter(|v| !v.is_empty()).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("--set {key}: {problem}")]
    Key { key: String, problem: String },
    #[error("the spec with {combo}: {problem}")]
    Spec { combo: String, problem: String },
    #[error("{combo}, seed {seed}: {source}")]
    Run { combo: String, seed: u64, source: run::RunError },
    #[error(transparent)]
    Write(#[from] crate::export::ExportError),
}

fn value_item(v: &str) -> toml_edit::Item {
    match format!("x = {v}").parse::<toml_edit::DocumentMut>() {
        Ok(doc) => doc["x"].clone(),
        Err(_) => toml_edit::value(v),
    }
}

/// Sets `key` (a dotted path) to `value` in the TOML document.
fn set(doc: &mut toml_edit::DocumentMut, key: &str, value: &str) -> Result<(), String> {
    let parts: Vec<&str> = key.split('.').collect();
    let (last, path) = parts.split_last().ok_or("empty key")?;
    let mut table: &mut dyn toml_edit::TableLike = doc.as_table_mut();
    let mut i = 0;
    while i < path.len() {
        let part = path[i];
        let item = table.get_mut(part).ok_or_else(|| format!("no `{part}` in the spec"))?;
        match item {
            toml_edit::Item::ArrayOfTables(aot) => {
                // The next part picks an entry: an index, a name, or a kind.
                let sel = path.get(i + 1).copied().ok_or_else(|| format!("`{part}` needs an index or a name"))?;
                let by = |field: &str, t: &toml_edit::Table| t.get(field).and_then(|v| v.as_str()) == Some(sel);
                let idx = match sel.parse::<usize>() {
                    Ok(n) => Some(n),
                    Err(_) => aot.iter().position(|t| by("name", t)).or_else(|| aot.iter().position(|t| by("kind", t))),
                };
                let n = aot.len();
                table = idx.and_then(|k| aot.get_mut(k)).ok_or_else(|| {
                    format!("no entry `{sel}` among the {n} of `{part}` (an index from 0, a name or a kind)")
                })?;
                i += 2;
            }
            other => {
                table = other.as_table_like_mut().ok_or_else(|| format!("`{part}` is not a table"))?;
                i += 1;
            }
        }
    }
    table.insert(last, value_item(value));
    Ok(())
}

/// One trained run of the grid.
#[derive(Debug, Clone, Serialize)]
pub struct SweepRun {
    pub combo: Vec<(String, String)>,
    pub seed: u64,
    /// The selection criterion's value at the best epoch.
    pub selection: f64,
    /// `task.metric` -> test value (validation when there is no test split).
    pub metrics: Vec<(String, f64)>,
    pub out: PathBuf,
}

/// What the sweep runs.
pub struct SweepPlan {
    pub axes: Vec<Axis>,
    pub seeds: Vec<u64>,
    pub out: PathBuf,
    /// Overrides for every run (`--rows`, `--epochs`).
    pub rows: Option<usize>,
    pub epochs: Option<usize>,
    pub jobs: usize,
}

/// Every combination of the axes' values, in order.
pub fn combinations(axes: &[Axis]) -> Vec<Vec<(String, String)>> {
    let mut out = vec![Vec::new()];
    for a in axes {
        out = out
            .into_iter()
            .flat_map(|c: Vec<(String, String)>| {
                a.values.iter().map(move |v| {
                    let mut c = c.clone();
                    c.push((a.key.clone(), v.clone()));
                    c
                })
            })
            .collect();
    }
    out
}

fn combo_name(c: &[(String, String)]) -> String {
    c.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

fn selection_value(r: &RunResult) -> f64 {
    match r.compiled.train.select {
        Selection::Loss => {
            r.report.epochs.get(r.report.best_epoch.saturating_sub(1)).map_or(f64::NAN, |e| e.validation_loss)
        }
        Selection::Metric { task, metric } => {
            r.report.validation.get(task).and_then(|m| m.value(metric)).unwrap_or(f64::NAN)
        }
    }
}

/// Runs the grid; `progress` hears about each finished run.
pub fn sweep(
    src: &SourceFile,
    plan: &SweepPlan,
    progress: &(dyn Fn(&SweepRun) + Sync),
) -> Result<Vec<SweepRun>, SweepError> {
    let spec = crate::spec::parse(src).map_err(|e| SweepError::Spec {
        combo: "no changes".into(),
        problem: format!("{} error(s); run `multigate check`", e.len()),
    })?;
    let base = spec.to_toml();
    // Every combination is built and checked before anything trains.
    let mut jobs = Vec::new();
    for combo in combinations(&plan.axes) {
        for &seed in &plan.seeds {
            let mut doc: toml_edit::DocumentMut =
                base.parse().map_err(|e| SweepError::Spec { combo: combo_name(&combo), problem: format!("{e}") })?;
            for (k, v) in &combo {
                set(&mut doc, k, v).map_err(|problem| SweepError::Key { key: k.clone(), problem })?;
            }
            set(&mut doc, "train.seed", &seed.to_string())
                .map_err(|problem| SweepError::Key { key: "train.seed".into(), problem })?;
            // The edited spec is TOML whatever the input's syntax.
            let name = if src.name.ends_with(".toml") { src.name.clone() } else { format!("{}.toml", src.name) };
            let text = doc.to_string();
            let mut s = SourceFile::from_text(name, text);
            s.path = src.path.clone(); // Data paths resolve as in the original spec.
            let compiled = crate::pipeline::compile_source(&s)
                .map_err(|e| SweepError::Spec { combo: combo_name(&combo), problem: e.render(Some(&s), false) })?;
            let dir_name: String = combo_name(&combo)
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '=' || c == '-' { c } else { '_' })
                .collect();
            let out = plan.out.join("runs").join(format!("{dir_name}_seed{seed}"));
            jobs.push((combo.clone(), seed, s, compiled, out));
        }
    }
    let results = std::sync::Mutex::new(Vec::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failure = std::sync::Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..plan.jobs.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some((combo, seed, s, compiled, out)) = jobs.get(i) else { break };
                if failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                    break;
                }
                let opts = TrainOptions {
                    out: Some(out.clone()),
                    rows: plan.rows,
                    epochs: plan.epochs,
                    force: true,
                    fresh: true,
                    ..Default::default()
                };
                match run::train_spec(s, compiled.clone(), &opts, &mut run::Silent) {
                    Ok(r) => {
                        let split = r.report.test.as_ref().unwrap_or(&r.report.validation);
                        let mut metrics = Vec::new();
                        for (t, m) in r.compiled.model.tasks.iter().zip(split) {
                            for name in t.head.metric_names() {
                                if let Some(metric) = crate::ir::Metric::parse(name) {
                                    if let Some(v) = m.value(metric) {
                                        metrics.push((format!("{}.{name}", t.name), v));
                                    }
                                }
                            }
                        }
                        let run = SweepRun {
                            combo: combo.clone(),
                            seed: *seed,
                            selection: selection_value(&r),
                            metrics,
                            out: out.clone(),
                        };
                        progress(&run);
                        if let Ok(mut v) = results.lock() {
                            v.push((i, run));
                        }
                    }
                    Err(source) => {
                        if let Ok(mut f) = failure.lock() {
                            f.get_or_insert(SweepError::Run { combo: combo_name(combo), seed: *seed, source });
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e);
    }
    let mut runs = results.into_inner().unwrap_or_default();
    runs.sort_by_key(|(i, _)| *i);
    Ok(runs.into_iter().map(|(_, r)| r).collect())
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let m = v.iter().sum::<f64>() / n;
    let sd = if v.len() > 1 { (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() } else { 0.0 };
    (m, sd)
}

/// Every run as CSV: the axes, the seed, the selection value, each metric.
pub fn runs_csv(axes: &[Axis], runs: &[SweepRun]) -> String {
    let metric_names: Vec<String> =
        runs.first().map(|r| r.metrics.iter().map(|m| m.0.clone()).collect()).unwrap_or_default();
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = axes.iter().map(|a| a.key.clone()).collect();
    header.extend(["seed".to_string(), "selection".to_string()]);
    header.extend(metric_names.iter().cloned());
    let _ = w.write_record(&header);
    for r in runs {
        let mut row: Vec<String> = r.combo.iter().map(|(_, v)| v.clone()).collect();
        row.push(r.seed.to_string());
        row.push(format!("{}", r.selection));
        row.extend(r.metrics.iter().map(|(_, v)| format!("{v}")));
        let _ = w.write_record(&row);
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

/// Mean ± sd per combination, best selection value first.
pub fn summary_markdown(axes: &[Axis], runs: &[SweepRun], higher_is_better: bool, criterion: &str) -> String {
    let metric_names: Vec<String> =
        runs.first().map(|r| r.metrics.iter().map(|m| m.0.clone()).collect()).unwrap_or_default();
    let mut combos: Vec<(Vec<(String, String)>, Vec<&SweepRun>)> = Vec::new();
    for r in runs {
        match combos.iter_mut().find(|(c, _)| *c == r.combo) {
            Some((_, v)) => v.push(r),
            None => combos.push((r.combo.clone(), vec![r])),
        }
    }
    let mut rows: Vec<(f64, String)> = combos
        .iter()
        .map(|(c, rs)| {
            let (m, sd) = mean_sd(&rs.iter().map(|r| r.selection).collect::<Vec<_>>());
            let mut cells: Vec<String> = c.iter().map(|(_, v)| format!("`{v}`")).collect();
            cells.push(rs.len().to_string());
            cells.push(format!("{m:.4} ± {sd:.4}"));
            for name in &metric_names {
                let v: Vec<f64> =
                    rs.iter().filter_map(|r| r.metrics.iter().find(|x| &x.0 == name).map(|x| x.1)).collect();
                let (m, sd) = mean_sd(&v);
                cells.push(format!("{m:.4} ± {sd:.4}"));
            }
            (m, format!("| {} |", cells.join(" | ")))
        })
        .collect();
    rows.sort_by(|a, b| if higher_is_better { b.0.total_cmp(&a.0) } else { a.0.total_cmp(&b.0) });
    let mut header: Vec<String> = axes.iter().map(|a| a.key.clone()).collect();
    header.push("seeds".into());
    header.push(format!("{criterion} (selection)"));
    header.extend(metric_names.iter().cloned());
    let mut out = format!("| {} |\n|{}\n", header.join(" | "), "---|".repeat(header.len()));
    for (_, r) in rows {
        out.push_str(&r);
        out.push('\n');
    }
    out
}

/// Writes `sweep.csv` and `sweep.md` into the sweep folder.
pub fn write_results(dir: &Path, csv_text: &str, md: &str) -> Result<(), SweepError> {
    for (name, text) in [("sweep.csv", csv_text), ("sweep.md", md)] {
        crate::fs::write_file(&dir.join(name), text.as_bytes()).map_err(crate::export::ExportError::from)?;
    }
    Ok(())
}
