//! Built-in generators.
//!
//! * [`mmoe_frame`]: the MMoE paper's synthetic regression data (Ma et al., KDD 2018,
//!   section 3.2). Two orthogonal unit vectors u1, u2 in R^d; w1 = c u1,
//!   w2 = c (p u1 + sqrt(1 - p^2) u2); x ~ N(0, I);
//!   y_k = w_k.x + sum_{i=1..m} sin(alpha_i w_k.x + beta_i) + eps, eps ~ N(0, noise^2),
//!   alpha_i, beta_i ~ N(0, sin_sd^2), shared by both tasks (as in the paper).
//! * [`categorical_frame`]: random ids per categorical feature (log-uniform over
//!   `cardinality` values) and labels from a fixed random teacher, for benchmarks.

use super::frame::{Column, Frame, Interner, Origin};
use crate::ir::{FeatureKind, Head, LabelTransform, Model, SyntheticConfig, SyntheticKind};
use crate::rng::{splitmix64, Rng};

/// Pearson correlation of two equal-length series.
pub fn pearson(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len()) as f64;
    if n < 2.0 {
        return f64::NAN;
    }
    let ma = a.iter().map(|&x| x as f64).sum::<f64>() / n;
    let mb = b.iter().map(|&x| x as f64).sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    sab / (saa * sbb).sqrt()
}

/// Generates `rows` rows with the generator `cfg` names (its row count is ignored).
pub fn generate(model: &Model, cfg: &SyntheticConfig, rows: usize) -> Frame {
    match cfg.kind {
        SyntheticKind::Mmoe { dim, correlation, scale, sin_terms, sin_sd, noise_sd } => {
            let p = MmoeParams { dim, correlation, scale, sin_terms, sin_sd, noise_sd };
            mmoe_frame(model, &p, rows, cfg.seed)
        }
        SyntheticKind::Categorical { cardinality } => categorical_frame(model, cardinality, rows, cfg.seed),
        SyntheticKind::Funnel { cardinality } => funnel_frame(model, cardinality, rows, cfg.seed),
    }
}

/// Label columns of the funnel generator.
pub const FUNNEL_COLUMNS: &[&str] = &["click", "conversion", "would_convert"];

/// Impressions -> clicks -> conversions with sample-selection bias (ESMM's setting):
/// inputs as [`categorical_frame`]'s; a click follows teacher 0; a conversion can only
/// follow a click, and whether the user would convert follows 0.6 teacher 0 + 0.8
/// teacher 1, so the features that drive clicks also drive conversions. Columns:
/// `click`, `conversion` (clicked and converted) and `would_convert` (the latent
/// conversion of every impression, which only a generator can know: the ground truth
/// that CVR over all impressions is scored against).
pub fn funnel_frame(model: &Model, cardinality: usize, rows: usize, seed: u64) -> Frame {
    let mut rng = Rng::derive(seed, "funnel-labels");
    let (mut names, mut columns, score, norm) = categorical_inputs(model, cardinality, rows, seed, 2);
    let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
    let (mut click, mut conversion, mut would) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rows {
        let c = rng.uniform() < sigmoid(norm * score[0][r] - 3.0);
        let w = rng.uniform() < sigmoid(norm * (0.6 * score[0][r] + 0.8 * score[1][r]) - 2.2);
        click.push(f32::from(c));
        would.push(f32::from(w));
        conversion.push(f32::from(c && w));
    }
    for (name, col) in FUNNEL_COLUMNS.iter().zip([click, conversion, would]) {
        names.push(name.to_string());
        columns.push(Column::Num(col));
    }
    Frame {
        names,
        columns,
        rows,
        origin: Origin { name: "synthetic funnel data".into(), lines: Vec::new(), later: Vec::new(), first_row: 0 },
        skipped: Default::default(),
    }
}

/// Settings of the MMoE generator.
#[derive(Debug, Clone, Copy)]
pub struct MmoeParams {
    pub dim: usize,
    pub correlation: f64,
    pub scale: f64,
    pub sin_terms: usize,
    pub sin_sd: f64,
    pub noise_sd: f64,
}

/// The two weight vectors w1, w2 (Gram-Schmidt on Gaussian draws).
pub fn mmoe_weights(p: &MmoeParams, rng: &mut Rng) -> (Vec<f64>, Vec<f64>) {
    let d = p.dim;
    let normalise = |v: &mut Vec<f64>| {
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
    };
    let mut u1: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
    normalise(&mut u1);
    let mut u2: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
    if d > 1 {
        let dot: f64 = u1.iter().zip(&u2).map(|(a, b)| a * b).sum();
        u2.iter_mut().zip(&u1).for_each(|(b, a)| *b -= dot * a);
        normalise(&mut u2);
    }
    let q = (1.0 - p.correlation * p.correlation).max(0.0).sqrt();
    let w1 = u1.iter().map(|a| p.scale * a).collect();
    let w2 = u1.iter().zip(&u2).map(|(a, b)| p.scale * (p.correlation * a + q * b)).collect();
    (w1, w2)
}

/// Generates the paper's data: columns `{x}_0 .. {x}_{d-1}` (the model's dense
/// feature columns, in order) and the two tasks' label columns.
pub fn mmoe_frame(model: &Model, p: &MmoeParams, rows: usize, seed: u64) -> Frame {
    let mut rng = Rng::derive(seed, "mmoe-synthetic");
    let (w1, w2) = mmoe_weights(p, &mut rng);
    let alpha: Vec<f64> = (0..p.sin_terms).map(|_| p.sin_sd * rng.normal()).collect();
    let beta: Vec<f64> = (0..p.sin_terms).map(|_| p.sin_sd * rng.normal()).collect();
    let mut xs = vec![Vec::with_capacity(rows); p.dim];
    let (mut y1, mut y2) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
    let mut x = vec![0.0f64; p.dim];
    for _ in 0..rows {
        x.iter_mut().for_each(|v| *v = rng.normal());
        let label = |w: &[f64], rng: &mut Rng| {
            let wx: f64 = w.iter().zip(&x).map(|(a, b)| a * b).sum();
            let s: f64 = alpha.iter().zip(&beta).map(|(a, b)| (a * wx + b).sin()).sum();
            wx + s + p.noise_sd * rng.normal()
        };
        y1.push(label(&w1, &mut rng) as f32);
        y2.push(label(&w2, &mut rng) as f32);
        for (col, v) in xs.iter_mut().zip(&x) {
            col.push(*v as f32);
        }
    }
    let mut names = Vec::new();
    for f in &model.features {
        if let FeatureKind::Dense { width, .. } = f.kind {
            names.extend(super::dense_columns(&f.column, width));
        }
    }
    let mut columns: Vec<Column> = xs.into_iter().map(Column::Num).collect();
    names.truncate(columns.len());
    for (t, y) in model.tasks.iter().zip([y1, y2]) {
        if let Some(l) = &t.label {
            names.push(l.column.clone());
            columns.push(Column::Num(y));
        }
    }
    Frame {
        names,
        columns,
        rows,
        origin: Origin { name: "synthetic mmoe data".into(), lines: Vec::new(), later: Vec::new(), first_row: 0 },
        skipped: Default::default(),
    }
}

/// Teacher weight of one categorical value for one task: a fixed N(0, 1) draw.
fn teacher(seed: u64, feature: usize, value: usize, task: usize) -> f64 {
    let k = splitmix64(seed ^ splitmix64((feature as u64) << 40 ^ (value as u64) << 8 ^ task as u64));
    Rng::new(k).normal()
}

/// Random categorical (and dense) inputs for `model`'s features, and `n_scores` teacher
/// scores per row (teacher t: a fixed N(0, 1) weight per value and dense column), with
/// the factor that scales a score to unit-ish spread.
#[allow(clippy::type_complexity)]
fn categorical_inputs(
    model: &Model,
    cardinality: usize,
    rows: usize,
    seed: u64,
    n_scores: usize,
) -> (Vec<String>, Vec<Column>, Vec<Vec<f64>>, f64) {
    let mut rng = Rng::derive(seed, "categorical-synthetic");
    let n_tasks = n_scores;
    let mut names = Vec::new();
    let mut columns = Vec::new();
    let mut score = vec![vec![0.0f64; rows]; n_tasks.max(1)];
    let n_feat = model.features.len().max(1) as f64;
    for (fi, f) in model.features.iter().enumerate() {
        match &f.kind {
            FeatureKind::Categorical { encoding, bag, .. } => {
                let card = cardinality.min(encoding.rows() * 4).max(1);
                let mut col = Interner::default();
                // Features sharing a table share the teacher's meaning of a value.
                let key = f.shares.map_or(fi, |o| o.0);
                let weights: Vec<Vec<f64>> =
                    (0..n_tasks).map(|t| (0..card).map(|v| teacher(seed, key, v, t)).collect()).collect();
                // A bucketized feature reads numbers: value v is spread over [-1, 1).
                let values: Vec<String> = if encoding.numeric() {
                    (0..card).map(|v| format!("{:.4}", 2.0 * v as f64 / card as f64 - 1.0)).collect()
                } else {
                    (0..card).map(|v| format!("v{v}")).collect()
                };
                let draw = |rng: &mut Rng| ((card as f64).powf(rng.uniform()) as usize).saturating_sub(1).min(card - 1);
                match bag {
                    None => {
                        for r in 0..rows {
                            let v = draw(&mut rng);
                            col.push(&values[v]);
                            for t in 0..n_tasks {
                                score[t][r] += weights[t][v];
                            }
                        }
                    }
                    // 0..=max_len values (weights in [0.5, 1.5) when the bag reads some);
                    // the teacher scores their weighted mean, times 2 (bags carry more).
                    Some(b) => {
                        let mut wcol = Interner::default();
                        let (mut cell, mut wcell) = (String::new(), String::new());
                        for r in 0..rows {
                            let n = (rng.uniform() * (b.max_len + 1) as f64) as usize;
                            let (mut sum, mut total) = (vec![0.0; n_tasks], 0.0);
                            cell.clear();
                            wcell.clear();
                            for k in 0..n.min(b.max_len) {
                                let v = draw(&mut rng);
                                let w = if b.weights.is_some() { 0.5 + rng.uniform() } else { 1.0 };
                                if k > 0 {
                                    cell.push_str(&b.separator);
                                    wcell.push_str(&b.separator);
                                }
                                cell.push_str(&values[v]);
                                wcell.push_str(&format!("{w:.3}"));
                                for t in 0..n_tasks {
                                    sum[t] += w * weights[t][v];
                                }
                                total += w;
                            }
                            col.push(&cell);
                            wcol.push(&wcell);
                            if total > 0.0 {
                                for t in 0..n_tasks {
                                    score[t][r] += 2.0 * sum[t] / total;
                                }
                            }
                        }
                        if let Some(w) = &b.weights {
                            names.push(w.clone());
                            columns.push(wcol.finish());
                        }
                    }
                }
                names.push(f.column.clone());
                columns.push(col.finish());
            }
            FeatureKind::Dense { width, transform, .. } => {
                // log1p reads counts: its columns get |N(0, 1)|.
                let counts = matches!(transform, crate::ir::Transform::Log1p);
                for (j, c) in super::dense_columns(&f.column, *width).into_iter().enumerate() {
                    let w: Vec<f64> = (0..n_tasks).map(|t| teacher(seed, fi, 1_000_000 + j, t)).collect();
                    let v: Vec<f32> = (0..rows)
                        .map(|r| {
                            let x = if counts { rng.normal().abs() } else { rng.normal() };
                            for t in 0..n_tasks {
                                score[t][r] += w[t] * x;
                            }
                            x as f32
                        })
                        .collect();
                    names.push(c);
                    columns.push(Column::Num(v));
                }
            }
        }
    }
    (names, columns, score, 1.5 / n_feat.sqrt())
}

/// Random categorical (and dense) inputs; task 0 follows teacher 0, task k > 0
/// follows 0.6 teacher 0 + 0.8 teacher k, so tasks are related but not equal.
pub fn categorical_frame(model: &Model, cardinality: usize, rows: usize, seed: u64) -> Frame {
    let mut rng = Rng::derive(seed, "categorical-labels");
    let (mut names, mut columns, score, norm) = categorical_inputs(model, cardinality, rows, seed, model.tasks.len());
    for (t, task) in model.tasks.iter().enumerate() {
        let z: Vec<f64> = (0..rows)
            .map(|r| {
                let s = if t == 0 { score[0][r] } else { 0.6 * score[0][r] + 0.8 * score[t][r] };
                s * norm - 1.0
            })
            .collect();
        let Some(label) = &task.label else { continue };
        if names.contains(&label.column) {
            continue;
        }
        let col = match (&task.head, &label.positive) {
            // log1p(y) = z + noise: a heavy-tailed positive label, as durations are.
            (Head::Regression { transform: LabelTransform::Log1p }, _) => {
                Column::Num(z.iter().map(|&v| (v + 0.1 * rng.normal()).exp_m1() as f32).collect())
            }
            (Head::Regression { .. }, _) => Column::Num(z.iter().map(|&v| (v + 0.1 * rng.normal()) as f32).collect()),
            (Head::Multiclass { classes }, _) => {
                // Class k where the noisy score falls in the k-th of K equal-probability bands.
                let names: Vec<String> =
                    if classes.is_empty() { (0..3).map(|k| format!("c{k}")).collect() } else { classes.clone() };
                let k = names.len();
                let codes = z
                    .iter()
                    .map(|&v| {
                        let p = 1.0 / (1.0 + (-(v + 0.5 * rng.normal())).exp());
                        ((p * k as f64) as usize).min(k - 1) as u32
                    })
                    .collect();
                Column::Cat { dict: names, codes }
            }
            (Head::Binary, positive) => {
                let positive = positive.as_ref().and_then(|ps| ps.first());
                let y: Vec<bool> = z.iter().map(|&v| rng.uniform() < 1.0 / (1.0 + (-v).exp())).collect();
                match positive {
                    None => Column::Num(y.iter().map(|&b| f32::from(b)).collect()),
                    Some(p) => {
                        let neg = if p == "0" { "1".to_string() } else { "0".to_string() };
                        Column::Cat { dict: vec![neg, p.clone()], codes: y.iter().map(|&b| u32::from(b)).collect() }
                    }
                }
            }
        };
        names.push(label.column.clone());
        columns.push(col);
    }
    Frame {
        names,
        columns,
        rows,
        origin: Origin {
            name: "synthetic categorical data".into(),
            lines: Vec::new(),
            later: Vec::new(),
            first_row: 0,
        },
        skipped: Default::default(),
    }
}
