//! Losses, one per [`Link`] (the program's `loss` op on candle tensors): each gives a per-row loss `[B]`, and [`task_loss`] takes
//! the mean over the rows whose label is present.

use candle_core::{DType, Tensor, D};

use crate::ir::Link;

type Result<T> = candle_core::Result<T>;

/// Numerically stable binary cross-entropy on logits, per row:
/// `max(z, 0) - z y + log(1 + exp(-|z|))`, finite for any finite logit (candle's
/// `binary_cross_entropy_with_logit` goes through sigmoid and returns inf at |z| = 40).
///
/// # Shapes
/// `logits: [B]`, `labels: [B]` -> `[B]`.
pub fn bce_with_logits_rows(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let softplus = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    (logits.relu()? - (logits * labels)?)? + softplus
}

/// The batch mean of [`bce_with_logits_rows`]. `[B]`, `[B]` -> `[]`.
pub fn bce_with_logits(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    bce_with_logits_rows(logits, labels)?.mean_all()
}

/// Cross-entropy of a probability given as its log, per row:
/// `-(y log p + (1 - y) log(1 - p))`, with `1 - p` clamped away from 0.
/// `log_p: [B]`, `labels: [B]` -> `[B]`.
pub fn bce_with_log_prob_rows(log_p: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let log_not_p = (1.0 - log_p.exp()?)?.clamp(1e-7f32, 1f32)?.log()?;
    let one_minus_y = (1.0 - labels)?;
    ((labels * log_p)? + (one_minus_y * log_not_p)?)?.neg()
}

/// Softmax cross-entropy per row. `logits: [B, K]`, `labels: [B]` (class indices as
/// f32) -> `[B]`.
pub fn softmax_cross_entropy_rows(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let k = logits.dim(1)?;
    let classes = Tensor::arange(0u32, k as u32, logits.device())?.to_dtype(DType::F32)?; // [K]
    let one_hot = labels.unsqueeze(1)?.broadcast_eq(&classes.unsqueeze(0)?)?.to_dtype(DType::F32)?; // [B, K]
    let log_probs = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    (one_hot * log_probs)?.sum(D::Minus1)?.neg()
}

/// Squared error per row. `preds: [B]`, `labels: [B]` -> `[B]`.
pub fn squared_error_rows(preds: &Tensor, labels: &Tensor) -> Result<Tensor> {
    (preds - labels)?.sqr()
}

/// Mean squared error. `[B]`, `[B]` -> `[]`.
pub fn mse(preds: &Tensor, labels: &Tensor) -> Result<Tensor> {
    squared_error_rows(preds, labels)?.mean_all()
}

/// A task's loss on a batch: its link's per-row loss, averaged over the rows where
/// `mask` (1 = label present, `[B]`) says the label exists; a batch with none gives 0.
pub fn task_loss(link: Link, raw: &Tensor, labels: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let rows = match link {
        Link::Sigmoid => bce_with_logits_rows(raw, labels)?,
        Link::LogProb => bce_with_log_prob_rows(raw, labels)?,
        Link::Softmax => softmax_cross_entropy_rows(raw, labels)?,
        Link::Identity => squared_error_rows(raw, labels)?,
    };
    match mask {
        None => rows.mean_all(),
        Some(m) => {
            let present = m.sum_all()?.maximum(1f32)?;
            (rows * m)?.sum_all()?.broadcast_div(&present)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn bce_is_finite_at_large_logits_and_matches_the_formula() {
        let z = Tensor::new(&[-100f32, -40.0, 0.0, 3.0, 40.0, 100.0], &Device::Cpu).unwrap();
        let y = Tensor::new(&[1f32, 1.0, 0.0, 1.0, 0.0, 1.0], &Device::Cpu).unwrap();
        let l = bce_with_logits(&z, &y).unwrap().to_scalar::<f32>().unwrap();
        let expect = [100.0, 40.0, 2f64.ln(), (1.0 + (-3f64).exp()).ln(), 40.0, 0.0];
        let mean = expect.iter().sum::<f64>() / 6.0;
        assert!(l.is_finite());
        assert!((l as f64 - mean).abs() < 1e-4, "{l} vs {mean}");
    }

    #[test]
    fn the_log_prob_loss_matches_a_hand_computation() {
        // A log-probability head, here p = sigmoid(a) sigmoid(b): -(y ln p + (1-y) ln(1-p)).
        let (a, b) = ([0.5f32, -1.0, 2.0], [1.5f32, 0.3, -0.7]);
        let y = [1f32, 0.0, 1.0];
        let s = |x: f32| 1.0 / (1.0 + (-x as f64).exp());
        let log_p: Vec<f32> = a.iter().zip(&b).map(|(&x, &z)| (s(x) * s(z)).ln() as f32).collect();
        let dev = Device::Cpu;
        let l = task_loss(
            Link::LogProb,
            &Tensor::new(log_p.as_slice(), &dev).unwrap(),
            &Tensor::new(&y, &dev).unwrap(),
            None,
        )
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
        let expect: f64 = (0..3)
            .map(|i| {
                let p = s(a[i]) * s(b[i]);
                -(y[i] as f64 * p.ln() + (1.0 - y[i] as f64) * (1.0 - p).ln())
            })
            .sum::<f64>()
            / 3.0;
        assert!((l as f64 - expect).abs() < 1e-5, "{l} vs {expect}");
    }

    #[test]
    fn masked_rows_add_no_loss() {
        let dev = Device::Cpu;
        let z = Tensor::new(&[0.3f32, 5.0, -1.0], &dev).unwrap();
        let y = Tensor::new(&[1f32, 0.0, 0.0], &dev).unwrap();
        let m = Tensor::new(&[1f32, 0.0, 1.0], &dev).unwrap();
        let masked = task_loss(Link::Sigmoid, &z, &y, Some(&m)).unwrap().to_scalar::<f32>().unwrap();
        let kept =
            bce_with_logits(&Tensor::new(&[0.3f32, -1.0], &dev).unwrap(), &Tensor::new(&[1f32, 0.0], &dev).unwrap())
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
        assert!((masked - kept).abs() < 1e-6);
        let none = task_loss(Link::Sigmoid, &z, &y, Some(&Tensor::zeros(3, DType::F32, &dev).unwrap())).unwrap();
        assert_eq!(none.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn softmax_cross_entropy_is_minus_log_of_the_true_class() {
        let dev = Device::Cpu;
        let z = Tensor::new(&[[1f32, 2.0, 0.5], [0.0, 0.0, 3.0]], &dev).unwrap();
        let y = Tensor::new(&[1f32, 0.0], &dev).unwrap();
        let l = task_loss(Link::Softmax, &z, &y, None).unwrap().to_scalar::<f32>().unwrap();
        let lse = |r: [f64; 3]| r.iter().map(|x| x.exp()).sum::<f64>().ln();
        let expect = ((lse([1.0, 2.0, 0.5]) - 2.0) + (lse([0.0, 0.0, 3.0]) - 0.0)) / 2.0;
        assert!((l as f64 - expect).abs() < 1e-5);
    }

    #[test]
    fn bce_gradient_is_sigmoid_minus_label() {
        let z = Var::new(&[0.3f32, -2.0], &Device::Cpu).unwrap();
        let y = Tensor::new(&[1f32, 0.0], &Device::Cpu).unwrap();
        let g = bce_with_logits(z.as_tensor(), &y).unwrap().backward().unwrap();
        let g = g.get(z.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        let s = |x: f32| 1.0 / (1.0 + (-x).exp());
        assert!((g[0] - (s(0.3) - 1.0) / 2.0).abs() < 1e-6);
        assert!((g[1] - s(-2.0) / 2.0).abs() < 1e-6);
    }
}
