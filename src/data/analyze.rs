//! `multigate analyze`: what the training data looks like before a model is trained.
//!
//! Per task: the positive rate (binary), the class shares (multiclass), or the
//! distribution (regression: quantiles, mean, standard deviation, skewness; a heavy
//! right tail suggests `transform = "log1p"`). Between every pair of tasks: the Pearson
//! and Spearman correlation of their labels over rows that have both (the MMoE paper's
//! measure of task relatedness). Per categorical feature: cardinality, the share of the
//! most common values, the missing rate, and a hash bucket count to suggest against
//! the spec's. Per dense column: missing rate, mean, standard deviation, range.

use std::collections::HashMap;

use serde::Serialize;

use super::{dense_columns, Column, Dataset, Frame};
use crate::ir::{Encoding, FeatureKind, Head, Model};

#[derive(Debug, Clone, Serialize)]
pub struct Analysis {
    pub rows: usize,
    pub tasks: Vec<TaskLabels>,
    pub correlations: Vec<LabelCorrelation>,
    pub categorical: Vec<CategoricalStats>,
    pub dense: Vec<DenseStats>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskLabels {
    pub task: String,
    pub labelled_rows: usize,
    pub positive_rate: Option<f64>,
    pub class_shares: Option<Vec<(String, f64)>>,
    pub distribution: Option<Distribution>,
    pub suggestion: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Distribution {
    pub mean: f64,
    pub std: f64,
    pub skewness: f64,
    /// (quantile, value) at 0, 1, 25, 50, 75, 99 and 100 %.
    pub quantiles: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LabelCorrelation {
    pub a: String,
    pub b: String,
    pub rows: usize,
    pub pearson: f64,
    pub spearman: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CategoricalStats {
    pub feature: String,
    pub column: String,
    pub cardinality: usize,
    pub missing_rate: f64,
    /// The most common values and their shares of the rows.
    pub top: Vec<(String, f64)>,
    /// The table the spec gives it (hash buckets, or vocabulary size + 1).
    pub table_rows: usize,
    /// Buckets worth using for a hashed feature: the next power of two at or above
    /// twice the cardinality (collisions then touch about a fifth of the values).
    pub suggested_buckets: usize,
    pub suggestion: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DenseStats {
    pub column: String,
    pub missing_rate: f64,
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
    pub skewness: f64,
}

fn moments(v: &[f64]) -> (f64, f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    let std = var.sqrt();
    let skew = if std > 0.0 { v.iter().map(|x| ((x - mean) / std).powi(3)).sum::<f64>() / n } else { 0.0 };
    (mean, std, skew)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let (ma, sa, _) = moments(a);
    let (mb, sb, _) = moments(b);
    if sa == 0.0 || sb == 0.0 {
        return f64::NAN;
    }
    a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum::<f64>() / a.len() as f64 / (sa * sb)
}

/// Ranks with ties sharing their mean rank.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        for &k in &idx[i..=j] {
            r[k] = (i + j) as f64 / 2.0 + 1.0;
        }
        i = j + 1;
    }
    r
}

pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    pearson(&ranks(a), &ranks(b))
}

/// Analyses the training rows (`frames`, read with every column the model needs, and
/// `labels`, the encoded rows).
pub fn analyze(model: &Model, frames: &[Frame], labels: &Dataset) -> Analysis {
    let rows = labels.rows;
    let mut tasks = Vec::new();
    for (t, task) in model.tasks.iter().enumerate() {
        let y: Vec<f64> = labels.labels[t].iter().filter(|v| !v.is_nan()).map(|&v| v as f64).collect();
        let mut out = TaskLabels {
            task: task.name.clone(),
            labelled_rows: y.len(),
            positive_rate: None,
            class_shares: None,
            distribution: None,
            suggestion: None,
        };
        match &task.head {
            Head::Binary => out.positive_rate = Some(y.iter().sum::<f64>() / y.len().max(1) as f64),
            Head::Multiclass { classes } => {
                let mut counts = vec![0usize; classes.len()];
                y.iter().for_each(|&c| counts[(c as usize).min(classes.len().saturating_sub(1))] += 1);
                out.class_shares = Some(
                    classes.iter().zip(counts).map(|(c, n)| (c.clone(), n as f64 / y.len().max(1) as f64)).collect(),
                );
            }
            Head::Regression { transform } => {
                // In the label's own units.
                let raw: Vec<f64> = y.iter().map(|&v| transform.invert(v as f32) as f64).collect();
                let (mean, std, skewness) = moments(&raw);
                let mut sorted = raw.clone();
                sorted.sort_by(f64::total_cmp);
                let quantiles =
                    [0.0, 0.01, 0.25, 0.5, 0.75, 0.99, 1.0].iter().map(|&q| (q, quantile(&sorted, q))).collect();
                if skewness > 2.0 && sorted.first().is_some_and(|m| *m >= 0.0) && transform.is_identity() {
                    out.suggestion =
                        Some(format!("skewness {skewness:.1}: a heavy right tail; consider `transform = \"log1p\"`"));
                }
                out.distribution = Some(Distribution { mean, std, skewness, quantiles });
            }
        }
        tasks.push(out);
    }
    let mut correlations = Vec::new();
    for a in 0..model.tasks.len() {
        for b in a + 1..model.tasks.len() {
            let (la, lb) = (&labels.labels[a], &labels.labels[b]);
            if la.is_empty() || lb.is_empty() {
                continue;
            }
            let (xa, xb): (Vec<f64>, Vec<f64>) = la
                .iter()
                .zip(lb)
                .filter(|(x, y)| !x.is_nan() && !y.is_nan())
                .map(|(&x, &y)| (x as f64, y as f64))
                .unzip();
            if xa.len() < 2 {
                continue;
            }
            correlations.push(LabelCorrelation {
                a: model.tasks[a].name.clone(),
                b: model.tasks[b].name.clone(),
                rows: xa.len(),
                pearson: pearson(&xa, &xb),
                spearman: spearman(&xa, &xb),
            });
        }
    }
    let mut categorical = Vec::new();
    let mut dense = Vec::new();
    for f in &model.features {
        match &f.kind {
            FeatureKind::Categorical { encoding, .. } => {
                let mut counts: HashMap<String, usize> = HashMap::new();
                let mut total = 0usize;
                for frame in frames {
                    match frame.column_as(&f.column, false) {
                        Some(Column::Cat { dict, codes }) => {
                            let mut c = vec![0usize; dict.len()];
                            codes.iter().for_each(|&k| c[k as usize] += 1);
                            for (v, n) in dict.iter().zip(c) {
                                if n > 0 {
                                    *counts.entry(v.clone()).or_default() += n;
                                }
                            }
                            total += codes.len();
                        }
                        Some(Column::Num(v)) => {
                            for x in v {
                                *counts.entry(format!("{x}")).or_default() += 1;
                            }
                            total += v.len();
                        }
                        None => {}
                    }
                }
                let missing = counts.get("").copied().unwrap_or(0);
                let mut top: Vec<(String, usize)> = counts.iter().map(|(k, v)| (k.clone(), *v)).collect();
                top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                let cardinality = counts.len() - usize::from(missing > 0);
                let suggested_buckets = (2 * cardinality.max(1)).next_power_of_two();
                let table_rows = encoding.rows();
                let suggestion = match encoding {
                    Encoding::Hash { buckets } if *buckets < cardinality => Some(format!(
                        "{cardinality} distinct values in {buckets} buckets: many share a row; consider hash_buckets = {suggested_buckets}"
                    )),
                    Encoding::Hash { buckets } if *buckets > 64 * suggested_buckets => Some(format!(
                        "{buckets} buckets for {cardinality} distinct values: most rows of the table are never used"
                    )),
                    _ => None,
                };
                categorical.push(CategoricalStats {
                    feature: f.name.clone(),
                    column: f.column.clone(),
                    cardinality,
                    missing_rate: missing as f64 / total.max(1) as f64,
                    top: top.into_iter().take(5).map(|(k, n)| (k, n as f64 / total.max(1) as f64)).collect(),
                    table_rows,
                    suggested_buckets,
                    suggestion,
                });
            }
            FeatureKind::Dense { width, .. } => {
                for c in dense_columns(&f.column, *width) {
                    let mut v = Vec::new();
                    let mut missing = 0usize;
                    for frame in frames {
                        if let Some(Column::Num(x)) = frame.column_as(&c, true) {
                            for &x in x {
                                if x.is_nan() {
                                    missing += 1;
                                } else {
                                    v.push(x as f64);
                                }
                            }
                        }
                    }
                    let (mean, std, skewness) = moments(&v);
                    dense.push(DenseStats {
                        column: c,
                        missing_rate: missing as f64 / (v.len() + missing).max(1) as f64,
                        mean,
                        std,
                        min: v.iter().copied().fold(f64::INFINITY, f64::min),
                        max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                        skewness,
                    });
                }
            }
        }
    }
    Analysis { rows, tasks, correlations, categorical, dense }
}

impl std::fmt::Display for Analysis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} training rows", self.rows)?;
        writeln!(f, "tasks:")?;
        for t in &self.tasks {
            write!(f, "  {} ({} labelled rows): ", t.task, t.labelled_rows)?;
            if let Some(p) = t.positive_rate {
                write!(f, "positive rate {p:.4}")?;
            }
            if let Some(c) = &t.class_shares {
                let s: Vec<String> = c.iter().map(|(k, v)| format!("{k} {v:.3}")).collect();
                write!(f, "classes {}", s.join(", "))?;
            }
            if let Some(d) = &t.distribution {
                let q: Vec<String> = d.quantiles.iter().map(|(q, v)| format!("p{:.0} {v:.4}", q * 100.0)).collect();
                write!(f, "mean {:.4} sd {:.4} skewness {:.2}; {}", d.mean, d.std, d.skewness, q.join(" "))?;
            }
            writeln!(f)?;
            if let Some(s) = &t.suggestion {
                writeln!(f, "    suggestion: {s}")?;
            }
        }
        if !self.correlations.is_empty() {
            writeln!(f, "label correlation (task relatedness):")?;
            for c in &self.correlations {
                writeln!(
                    f,
                    "  {} ~ {}: Pearson {:.4}, Spearman {:.4} ({} rows)",
                    c.a, c.b, c.pearson, c.spearman, c.rows
                )?;
            }
        }
        if !self.categorical.is_empty() {
            writeln!(f, "categorical features:")?;
            for c in &self.categorical {
                let top: Vec<String> = c.top.iter().take(3).map(|(k, v)| format!("{k:?} {:.1}%", v * 100.0)).collect();
                writeln!(
                    f,
                    "  {}: {} distinct, {:.1}% missing, table {} rows (suggested buckets {}); top {}",
                    c.feature,
                    c.cardinality,
                    c.missing_rate * 100.0,
                    c.table_rows,
                    c.suggested_buckets,
                    top.join(", ")
                )?;
                if let Some(s) = &c.suggestion {
                    writeln!(f, "    suggestion: {s}")?;
                }
            }
        }
        if !self.dense.is_empty() {
            writeln!(f, "dense columns:")?;
            for d in &self.dense {
                writeln!(
                    f,
                    "  {}: {:.1}% missing, mean {:.4} sd {:.4}, range [{:.4}, {:.4}], skewness {:.2}",
                    d.column,
                    d.missing_rate * 100.0,
                    d.mean,
                    d.std,
                    d.min,
                    d.max,
                    d.skewness
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlations_of_known_series() {
        let a = [1.0, 2.0, 3.0, 4.0, 5.0];
        let b = [2.0, 4.0, 6.0, 8.0, 10.0];
        assert!((pearson(&a, &b) - 1.0).abs() < 1e-12);
        // Monotone but not linear: Spearman 1, Pearson below 1.
        let c = [1.0, 8.0, 27.0, 64.0, 125.0];
        assert!((spearman(&a, &c) - 1.0).abs() < 1e-12);
        assert!(pearson(&a, &c) < 0.99);
        // Ties share ranks.
        assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
    }
}
