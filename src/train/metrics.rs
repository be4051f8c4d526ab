//! Evaluation metrics, computed on the host from predictions and labels.

use serde::{Deserialize, Serialize};

/// Exact ROC-AUC with tied scores given their average rank (as scikit-learn).
/// None when only one class is present.
pub fn roc_auc(scores: &[f32], labels: &[f32]) -> Option<f64> {
    let n = scores.len().min(labels.len());
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let n_pos = labels[..n].iter().filter(|&&y| y > 0.5).count();
    let n_neg = n - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let mut rank_sum_pos = 0.0f64;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        // Ranks i+1 ..= j+1 share their average.
        let avg = (i + j + 2) as f64 / 2.0;
        let pos = idx[i..=j].iter().filter(|&&k| labels[k] > 0.5).count();
        rank_sum_pos += avg * pos as f64;
        i = j + 1;
    }
    let np = n_pos as f64;
    Some((rank_sum_pos - np * (np + 1.0) / 2.0) / (np * n_neg as f64))
}

/// Metrics of a binary task at threshold 0.5.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BinaryMetrics {
    pub auc: Option<f64>,
    pub logloss: f64,
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub positive_rate: f64,
}

pub fn binary_metrics(probs: &[f32], labels: &[f32]) -> BinaryMetrics {
    let n = probs.len().max(1) as f64;
    let eps = 1e-7f64;
    let (mut ll, mut tp, mut fp, mut fn_, mut correct, mut pos) = (0.0, 0usize, 0usize, 0usize, 0usize, 0usize);
    for (&p, &y) in probs.iter().zip(labels) {
        let p = (p as f64).clamp(eps, 1.0 - eps);
        let y1 = y > 0.5;
        ll -= if y1 { p.ln() } else { (1.0 - p).ln() };
        let pred = p >= 0.5;
        pos += usize::from(y1);
        correct += usize::from(pred == y1);
        match (pred, y1) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            _ => {}
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    BinaryMetrics {
        auc: roc_auc(probs, labels),
        logloss: ll / n,
        accuracy: correct as f64 / n,
        precision: ratio(tp, tp + fp),
        recall: ratio(tp, tp + fn_),
        positive_rate: pos as f64 / n,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RegressionMetrics {
    pub mse: f64,
    pub mae: f64,
}

pub fn regression_metrics(preds: &[f32], labels: &[f32]) -> RegressionMetrics {
    let n = preds.len().max(1) as f64;
    let (mut se, mut ae) = (0.0, 0.0);
    for (&p, &y) in preds.iter().zip(labels) {
        let d = p as f64 - y as f64;
        se += d * d;
        ae += d.abs();
    }
    RegressionMetrics { mse: se / n, mae: ae / n }
}

/// One task's metrics on one split.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TaskMetrics {
    Binary(BinaryMetrics),
    Regression(RegressionMetrics),
}

impl std::fmt::Display for TaskMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskMetrics::Binary(m) => {
                match m.auc {
                    Some(a) => write!(f, "auc {a:.4}")?,
                    None => write!(f, "auc n/a")?,
                }
                write!(f, " logloss {:.4} acc {:.4} prec {:.4} rec {:.4}", m.logloss, m.accuracy, m.precision, m.recall)
            }
            TaskMetrics::Regression(m) => write!(f, "mse {:.4} mae {:.4}", m.mse, m.mae),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_matches_hand_counts() {
        // Pairs (pos, neg): (0.8 > 0.1), (0.8 > 0.4), (0.35 > 0.1), (0.35 < 0.4) -> 3/4.
        assert_eq!(roc_auc(&[0.1, 0.4, 0.35, 0.8], &[0.0, 0.0, 1.0, 1.0]), Some(0.75));
        // A tie between a positive and a negative counts one half.
        assert_eq!(roc_auc(&[0.5, 0.5], &[0.0, 1.0]), Some(0.5));
        assert_eq!(roc_auc(&[0.5, 0.7, 0.5, 0.1], &[1.0, 1.0, 0.0, 0.0]), Some(0.875));
        assert_eq!(roc_auc(&[0.1, 0.2], &[1.0, 1.0]), None);
    }

    #[test]
    fn binary_metrics_count_the_confusion_matrix() {
        let m = binary_metrics(&[0.9, 0.6, 0.4, 0.2], &[1.0, 0.0, 1.0, 0.0]);
        assert_eq!(m.accuracy, 0.5);
        assert_eq!(m.precision, 0.5);
        assert_eq!(m.recall, 0.5);
        let ll = -(0.9f64.ln() + 0.4f64.ln() + 0.4f64.ln() + 0.8f64.ln()) / 4.0;
        assert!((m.logloss - ll).abs() < 1e-6);
    }

    #[test]
    fn regression_metrics() {
        let m = super::regression_metrics(&[1.0, 3.0], &[2.0, 2.0]);
        assert_eq!(m, RegressionMetrics { mse: 1.0, mae: 1.0 });
    }
}
