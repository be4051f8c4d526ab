//! Evaluation metrics, computed on the host from predictions and labels.

use serde::{Deserialize, Serialize};

use crate::ir::{Head, Metric};

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

/// Group AUC: the AUC within each group (a user, say), averaged with the group's row
/// count as its weight; groups whose rows are all one class are skipped, as usual.
/// Returns the value and the number of groups that counted.
pub fn gauc(scores: &[f32], labels: &[f32], groups: &[u32]) -> Option<(f64, usize)> {
    let mut by_group: std::collections::HashMap<u32, Vec<usize>> = std::collections::HashMap::new();
    for (i, &g) in groups.iter().enumerate().take(scores.len().min(labels.len())) {
        by_group.entry(g).or_default().push(i);
    }
    let (mut sum, mut weight, mut used) = (0.0f64, 0.0f64, 0usize);
    for rows in by_group.values() {
        let s: Vec<f32> = rows.iter().map(|&i| scores[i]).collect();
        let y: Vec<f32> = rows.iter().map(|&i| labels[i]).collect();
        if let Some(a) = roc_auc(&s, &y) {
            sum += a * rows.len() as f64;
            weight += rows.len() as f64;
            used += 1;
        }
    }
    (used > 0).then(|| (sum / weight, used))
}

/// How well probabilities match frequencies.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Calibration {
    pub mean_prediction: f64,
    pub positive_rate: f64,
    /// Expected calibration error over `bins` equal-width bins of the prediction: the
    /// row-weighted mean of |mean prediction - positive rate| per bin.
    pub ece: f64,
    pub bins: usize,
}

pub fn calibration(probs: &[f32], labels: &[f32], bins: usize) -> Calibration {
    let n = probs.len().min(labels.len());
    let bins = bins.max(1);
    let (mut count, mut pred, mut pos) = (vec![0usize; bins], vec![0f64; bins], vec![0f64; bins]);
    for i in 0..n {
        let b = ((probs[i].clamp(0.0, 1.0) as f64 * bins as f64) as usize).min(bins - 1);
        count[b] += 1;
        pred[b] += probs[i] as f64;
        pos[b] += labels[i] as f64;
    }
    let ece = (0..bins)
        .filter(|&b| count[b] > 0)
        .map(|b| count[b] as f64 / n as f64 * (pred[b] / count[b] as f64 - pos[b] / count[b] as f64).abs())
        .sum();
    let total = n.max(1) as f64;
    Calibration {
        mean_prediction: pred.iter().sum::<f64>() / total,
        positive_rate: pos.iter().sum::<f64>() / total,
        ece,
        bins,
    }
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
    /// With a label transform: the same in the transformed (training) space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transformed: Option<(f64, f64)>,
}

pub fn regression_metrics(preds: &[f32], labels: &[f32]) -> RegressionMetrics {
    let n = preds.len().max(1) as f64;
    let (mut se, mut ae) = (0.0, 0.0);
    for (&p, &y) in preds.iter().zip(labels) {
        let d = p as f64 - y as f64;
        se += d * d;
        ae += d.abs();
    }
    RegressionMetrics { mse: se / n, mae: ae / n, transformed: None }
}

/// Metrics of a multiclass task: `probs` is `[rows, K]` row-major, `labels` class indices.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MulticlassMetrics {
    pub accuracy: f64,
    pub logloss: f64,
    /// Mean over classes of the one-vs-rest AUC (classes absent from the labels skipped).
    pub macro_auc: Option<f64>,
}

pub fn multiclass_metrics(probs: &[f32], labels: &[f32], k: usize) -> MulticlassMetrics {
    let n = labels.len();
    let (mut ll, mut correct) = (0.0f64, 0usize);
    for (i, &y) in labels.iter().enumerate() {
        let row = &probs[i * k..(i + 1) * k];
        let y = y as usize;
        ll -= (row.get(y).copied().unwrap_or(0.0) as f64).clamp(1e-7, 1.0).ln();
        let best = (0..k).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap_or(0);
        correct += usize::from(best == y);
    }
    let aucs: Vec<f64> = (0..k)
        .filter_map(|c| {
            let scores: Vec<f32> = (0..n).map(|i| probs[i * k + c]).collect();
            let is_c: Vec<f32> = labels.iter().map(|&y| f32::from(y as usize == c)).collect();
            roc_auc(&scores, &is_c)
        })
        .collect();
    MulticlassMetrics {
        accuracy: correct as f64 / n.max(1) as f64,
        logloss: ll / n.max(1) as f64,
        macro_auc: (!aucs.is_empty()).then(|| aucs.iter().sum::<f64>() / aucs.len() as f64),
    }
}

/// Scores one task: `preds` is `[rows, head.width()]` in the label's units, `labels` the
/// encoded labels (NaN where the label is missing: those rows are left out).
pub fn score(head: &Head, preds: &[f32], labels: &[f32]) -> TaskMetrics {
    let k = head.width().max(1);
    let keep: Vec<usize> = (0..labels.len()).filter(|&i| !labels[i].is_nan()).collect();
    let y: Vec<f32> = keep.iter().map(|&i| labels[i]).collect();
    let p: Vec<f32> = keep.iter().flat_map(|&i| preds[i * k..(i + 1) * k].iter().copied()).collect();
    match head {
        Head::Binary => TaskMetrics::Binary(binary_metrics(&p, &y)),
        Head::Multiclass { .. } => TaskMetrics::Multiclass(multiclass_metrics(&p, &y, k)),
        Head::Regression { transform } => {
            // Labels are stored transformed; score in the original units, and in the
            // transformed ones when they differ.
            let y_raw: Vec<f32> = y.iter().map(|&v| transform.invert(v)).collect();
            let mut m = regression_metrics(&p, &y_raw);
            if !transform.is_identity() {
                let p_t: Vec<f32> = p.iter().map(|&v| transform.apply(v)).collect();
                let t = regression_metrics(&p_t, &y);
                m.transformed = Some((t.mse, t.mae));
            }
            TaskMetrics::Regression(m)
        }
    }
}

/// One task's metrics on one split.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TaskMetrics {
    Binary(BinaryMetrics),
    Regression(RegressionMetrics),
    Multiclass(MulticlassMetrics),
    /// A task without labels in this split (ESMM's CVR trained only through a product).
    Unlabelled,
}

impl TaskMetrics {
    /// The training loss on the split: logloss, or the squared error in the space the
    /// model is trained in (transformed, for a regression with a label transform).
    pub fn loss(&self) -> Option<f64> {
        match self {
            TaskMetrics::Binary(b) => Some(b.logloss),
            TaskMetrics::Multiclass(m) => Some(m.logloss),
            TaskMetrics::Regression(r) => Some(r.transformed.map_or(r.mse, |t| t.0)),
            TaskMetrics::Unlabelled => None,
        }
    }

    /// The value of `metric`, when this task has it.
    pub fn value(&self, metric: Metric) -> Option<f64> {
        match (self, metric) {
            (TaskMetrics::Binary(b), Metric::Auc) => b.auc,
            (TaskMetrics::Binary(b), Metric::Logloss) => Some(b.logloss),
            (TaskMetrics::Binary(b), Metric::Accuracy) => Some(b.accuracy),
            (TaskMetrics::Regression(r), Metric::Mse) => Some(r.mse),
            (TaskMetrics::Regression(r), Metric::Mae) => Some(r.mae),
            (TaskMetrics::Multiclass(m), Metric::Auc) => m.macro_auc,
            (TaskMetrics::Multiclass(m), Metric::Logloss) => Some(m.logloss),
            (TaskMetrics::Multiclass(m), Metric::Accuracy) => Some(m.accuracy),
            _ => None,
        }
    }
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
            TaskMetrics::Regression(m) => {
                write!(f, "mse {:.4} mae {:.4}", m.mse, m.mae)?;
                match m.transformed {
                    Some((mse, mae)) => write!(f, " (transformed: mse {mse:.4} mae {mae:.4})"),
                    None => Ok(()),
                }
            }
            TaskMetrics::Multiclass(m) => {
                write!(f, "acc {:.4} logloss {:.4} ", m.accuracy, m.logloss)?;
                match m.macro_auc {
                    Some(a) => write!(f, "macro auc {a:.4}"),
                    None => write!(f, "macro auc n/a"),
                }
            }
            TaskMetrics::Unlabelled => write!(f, "no labels"),
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
    fn gauc_weights_groups_by_rows_and_skips_one_class_groups() {
        // Group 1 (4 rows): AUC 0.75; group 2 (2 rows): AUC 0; group 3: one class, skipped.
        let s = [0.1, 0.4, 0.35, 0.8, 0.9, 0.2, 0.5, 0.6];
        let y = [0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0];
        let g = [1, 1, 1, 1, 2, 2, 3, 3];
        let (v, used) = gauc(&s, &y, &g).unwrap();
        assert_eq!(used, 2);
        assert!((v - (0.75 * 4.0 + 0.0 * 2.0) / 6.0).abs() < 1e-12, "{v}");
        assert_eq!(gauc(&[0.5], &[1.0], &[1]), None);
    }

    #[test]
    fn calibration_bins_predictions_and_weighs_the_gaps() {
        // Bin 0.1: predictions 0.1, 0.1 with 1 positive of 2 (gap 0.4); bin 0.9: 0.9 with 1 of 1 (gap 0.1).
        let c = calibration(&[0.1, 0.1, 0.9], &[0.0, 1.0, 1.0], 10);
        assert!((c.ece - (2.0 / 3.0 * 0.4 + 1.0 / 3.0 * 0.1)).abs() < 1e-6, "{c:?}");
        assert!((c.mean_prediction - 1.1 / 3.0).abs() < 1e-6);
        assert!((c.positive_rate - 2.0 / 3.0).abs() < 1e-12);
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
        assert_eq!(m, RegressionMetrics { mse: 1.0, mae: 1.0, transformed: None });
    }

    #[test]
    fn multiclass_auc_is_the_mean_of_one_vs_rest_aucs() {
        // Three rows, three classes. Class 0 vs rest: scores [0.7, 0.2, 0.1], positive
        // row 0 -> AUC 1. Class 1: scores [0.2, 0.5, 0.6], positive row 1 -> 0.5 (beats
        // row 0, loses to row 2). Class 2: [0.1, 0.3, 0.3], positive row 2 -> (1 + 0.5)/2.
        let probs = [0.7, 0.2, 0.1, 0.2, 0.5, 0.3, 0.1, 0.6, 0.3];
        let m = multiclass_metrics(&probs, &[0.0, 1.0, 2.0], 3);
        assert!((m.macro_auc.unwrap() - (1.0 + 0.5 + 0.75) / 3.0).abs() < 1e-12, "{m:?}");
        assert!((m.accuracy - 2.0 / 3.0).abs() < 1e-12); // row 2 predicts class 1
        let ll = -(0.7f64.ln() + 0.5f64.ln() + 0.3f64.ln()) / 3.0;
        assert!((m.logloss - ll).abs() < 1e-6);
    }

    #[test]
    fn missing_labels_are_left_out_of_the_score() {
        let m = score(&Head::Binary, &[0.9, 0.1, 0.8, 0.3], &[1.0, f32::NAN, 0.0, f32::NAN]);
        let TaskMetrics::Binary(b) = m else { panic!() };
        assert_eq!(b.auc, Some(1.0));
        assert_eq!(b.accuracy, 0.5);
    }

    #[test]
    fn transformed_regressions_score_in_both_spaces() {
        let head = Head::Regression { transform: crate::ir::LabelTransform::Log1p };
        // Labels are stored as log1p(y); predictions come in y's units.
        let y = [3.0f32, 0.0];
        let stored: Vec<f32> = y.iter().map(|v| v.ln_1p()).collect();
        let TaskMetrics::Regression(m) = score(&head, &[1.0, 0.0], &stored) else { panic!() };
        assert!((m.mse - 2.0).abs() < 1e-6); // (1 - 3)^2 / 2
        let (mse_t, _) = m.transformed.unwrap();
        let d = 2f64.ln() - 4f64.ln();
        assert!((mse_t - d * d / 2.0).abs() < 1e-6);
    }
}
