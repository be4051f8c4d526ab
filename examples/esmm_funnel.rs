//! ESMM, AITM and the naive CVR model on the funnel generator (impressions -> clicks
//! -> conversions with sample-selection bias): each is trained over several seeds (data
//! and weights), then scored on the test split, where every impression's latent
//! conversion (`would_convert`) is known. ESMM and the naive model predict CVR (task
//! `cvr`); AITM predicts click and conversion (`ctr`, `ctcvr`), so its CVR is
//! `p(conversion) / p(click)`. Every model's conversion AUC over all impressions
//! (`ctcvr` against `conversion`) is scored too where it predicts one. Prints Markdown
//! tables. Run by scripts/reproduce_esmm.sh.
//!
//! ```sh
//! cargo run --release --example esmm_funnel -- [SEEDS]
//! ```

use multigate::data;
use multigate::ir::DataSource;
use multigate::lower::Compiled;
use multigate::run::{self, Predictor, TrainOptions};
use multigate::train::metrics::roc_auc;

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len().max(2) - 1) as f64;
    (m, var.sqrt())
}

/// Compiles `spec` with data seed and weight seed `seed`.
fn compile(spec: &str, seed: u64) -> Result<(multigate::source::SourceFile, Compiled), Box<dyn std::error::Error>> {
    let (src, compiled) = multigate::pipeline::compile_file(spec.as_ref())?;
    let mut c = compiled.map_err(|e| e.render(Some(&src), false))?;
    let DataSource::Synthetic(s) = &mut c.data.source else { return Err("a synthetic spec".into()) };
    s.seed = seed;
    c.train.seed = seed;
    Ok((src, c))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seeds: u64 = std::env::args().nth(1).map_or(Ok(5), |s| s.parse())?;
    let tmp = std::env::temp_dir().join(format!("multigate-esmm-{}", std::process::id()));
    let models = [
        ("ESMM", "models/synthetic_esmm.toml"),
        ("AITM", "models/synthetic_aitm.toml"),
        ("naive CVR (clicked rows)", "models/synthetic_esmm_naive.toml"),
    ];
    let mut results: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); models.len()];
    let mut ctcvr: Vec<Vec<f64>> = vec![Vec::new(); models.len()];
    for seed in 1..=seeds {
        // The test split, with ESMM's labels: click, would_convert (every impression's
        // latent conversion) and conversion. Both specs read the same features and data.
        let (_, esmm) = compile(models[0].1, seed)?;
        let (splits, _) = data::load_splits(&esmm.model, &esmm.data, None, &|_| String::new())?;
        let test = splits.test.ok_or("a test split")?;
        let (click, would, conversion) = (&test.labels[0], &test.labels[1], &test.labels[2]);
        let clicked: Vec<usize> = (0..test.rows).filter(|&i| click[i] == 1.0).collect();
        for (m, (name, spec)) in models.iter().enumerate() {
            let (src, c) = compile(spec, seed)?;
            let opts =
                TrainOptions { out: Some(tmp.join(format!("m{m}"))), fresh: true, force: true, ..Default::default() };
            let done = run::train_spec(&src, c, &opts, &mut run::Silent)?;
            let predictor = Predictor::load(&done.out, multigate::backend::Device::Cpu)?;
            let p = multigate::train::predict_rows(predictor.model(), &test, 4096, false)?;
            let task = |name: &str| done.compiled.model.tasks.iter().position(|t| t.name == name);
            let cvr: Vec<f32> = match (task("cvr"), task("ctr"), task("ctcvr")) {
                (Some(cvr), _, _) => p.values[cvr].clone(),
                // AITM: p(conversion) / p(click).
                (None, Some(ctr), Some(conv)) => {
                    p.values[conv].iter().zip(&p.values[ctr]).map(|(a, b)| a / b.max(1e-12)).collect()
                }
                _ => return Err(format!("{spec}: no cvr, or ctr and ctcvr, task").into()),
            };
            if let Some(conv) = task("ctcvr") {
                ctcvr[m].push(roc_auc(&p.values[conv], conversion).ok_or("one class")?);
            }
            let all = roc_auc(&cvr, would).ok_or("one class")?;
            let scores: Vec<f32> = clicked.iter().map(|&i| cvr[i]).collect();
            let labels: Vec<f32> = clicked.iter().map(|&i| would[i]).collect();
            let on_clicks = roc_auc(&scores, &labels).ok_or("one class")?;
            eprintln!("seed {seed} {name}: CVR AUC all impressions {all:.4}, clicked {on_clicks:.4}");
            results[m].0.push(all);
            results[m].1.push(on_clicks);
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    println!("| model | CVR AUC, all impressions | CVR AUC, clicked impressions |");
    println!("|---|---|---|");
    for ((name, _), (all, clicked)) in models.iter().zip(&results) {
        let ((a, sa), (c, sc)) = (mean_sd(all), mean_sd(clicked));
        println!("| {name} | {a:.4} ± {sa:.4} | {c:.4} ± {sc:.4} |");
    }
    println!(
        "\n{seeds} seeds (data and weights); scored on each seed's test split (10% of the impressions); mean ± sd."
    );
    println!("\nConversion (CTCVR) AUC over all impressions, for the models that predict it:\n");
    println!("| model | CTCVR AUC |");
    println!("|---|---|");
    for ((name, _), v) in models.iter().zip(&ctcvr).filter(|(_, v)| !v.is_empty()) {
        let (a, sa) = mean_sd(v);
        println!("| {name} | {a:.4} ± {sa:.4} |");
    }
    println!("\nPer seed (CVR AUC over all impressions):\n");
    println!("| seed | {} |", models.iter().map(|m| m.0).collect::<Vec<_>>().join(" | "));
    println!("|---|{}", "---|".repeat(models.len()));
    for s in 0..seeds as usize {
        let cells: Vec<String> = results.iter().map(|r| format!("{:.4}", r.0[s])).collect();
        println!("| {} | {} |", s + 1, cells.join(" | "));
    }
    Ok(())
}
