//! Losses. Both return the batch mean as a scalar tensor.

use candle_core::Tensor;

type Result<T> = candle_core::Result<T>;

/// Numerically stable binary cross-entropy on logits:
/// `max(z, 0) - z y + log(1 + exp(-|z|))`, finite for any finite logit (candle's
/// `binary_cross_entropy_with_logit` goes through sigmoid and returns inf at |z| = 40).
///
/// # Shapes
/// `logits: [B]`, `labels: [B]` -> `[]`.
pub fn bce_with_logits(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let softplus = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    ((logits.relu()? - (logits * labels)?)? + softplus)?.mean_all()
}

/// Mean squared error. `preds: [B]`, `labels: [B]` -> `[]`.
pub fn mse(preds: &Tensor, labels: &Tensor) -> Result<Tensor> {
    (preds - labels)?.sqr()?.mean_all()
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
