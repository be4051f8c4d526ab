//! The load-balancing losses of gated layers (`balance`, `load_balance`), forward and
//! vector-Jacobian product: the squared coefficient of variation, over each gate's
//! experts, of their importance (gate weights summed over the batch) and of their load
//! (each expert's chance to stay in the top k, summed over the batch).

use candle_core::cpu::erf::erf_f64;

/// `cv2(x) = var(x) / (mean(x)^2 + 1e-10)` and its gradient by each `x_j`.
fn cv2(x: &[f64]) -> (f64, Vec<f64>) {
    let e = x.len().max(1) as f64;
    let mean = x.iter().sum::<f64>() / e;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / e;
    let den = mean * mean + 1e-10;
    let grad = x.iter().map(|v| 2.0 * (v - mean) / e / den - var * 2.0 * mean / e / (den * den)).collect();
    (var / den, grad)
}

/// Each segment's column sums of `x` (`[B, C]`, `C = sum segments`).
fn column_sums(x: &[f32], segments: &[usize]) -> Vec<Vec<f64>> {
    let c: usize = segments.iter().sum();
    let mut sums: Vec<Vec<f64>> = segments.iter().map(|&s| vec![0.0; s]).collect();
    for row in x.chunks_exact(c.max(1)) {
        let mut at = 0;
        for (m, &s) in segments.iter().enumerate() {
            sums[m].iter_mut().zip(&row[at..at + s]).for_each(|(a, &v)| *a += v as f64);
            at += s;
        }
    }
    sums
}

/// `weight * sum_m cv2(importance_m)`; with `dy`, also the gradient by the gate weights.
pub(super) fn importance(p: &[f32], segments: &[usize], weight: f32, dy: Option<f32>) -> (f32, Vec<f32>) {
    let sums = column_sums(p, segments);
    let parts: Vec<(f64, Vec<f64>)> = sums.iter().map(|s| cv2(s)).collect();
    let value = weight as f64 * parts.iter().map(|(v, _)| v).sum::<f64>();
    let Some(dy) = dy else { return (value as f32, Vec::new()) };
    let row: Vec<f32> =
        parts.iter().flat_map(|(_, g)| g.iter().map(|&d| (d * weight as f64 * dy as f64) as f32)).collect();
    let dp = p.chunks_exact(row.len().max(1)).flat_map(|_| row.iter().copied()).collect();
    (value as f32, dp)
}

/// Per entry of `[B, C]`: `z = (clean - threshold) / scale`, the threshold being the
/// k-th largest noisy logit of its segment (the (k+1)-th for an entry in the top k).
fn standardised(clean: &[f32], noisy: &[f32], scale: &[f32], segments: &[usize], k: usize) -> Vec<f64> {
    let c: usize = segments.iter().sum();
    let mut z = Vec::with_capacity(clean.len());
    for (r, n) in noisy.chunks_exact(c.max(1)).enumerate() {
        let mut at = 0;
        for &s in segments {
            let seg = &n[at..at + s];
            let mut sorted = seg.to_vec();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let (kth, next) = (sorted[k - 1], sorted[k]);
            for (j, &v) in seg.iter().enumerate() {
                let i = r * c + at + j;
                let threshold = if v >= kth { next } else { kth };
                z.push((clean[i] as f64 - threshold as f64) / scale[i] as f64);
            }
            at += s;
        }
    }
    z
}

/// What [`load`] returns: the loss, and with a gradient asked for, by clean and scale.
pub(super) struct Load {
    pub value: f32,
    pub dclean: Vec<f32>,
    pub dscale: Vec<f32>,
}

/// `weight * sum_m cv2(load_m)`, `load = sum_b Phi(z)`; with `dy`, its gradients.
pub(super) fn load(
    [clean, noisy, scale]: [&[f32]; 3],
    segments: &[usize],
    k: usize,
    weight: f32,
    dy: Option<f32>,
) -> Load {
    let z = standardised(clean, noisy, scale, segments, k);
    let prob: Vec<f32> = z.iter().map(|&v| (0.5 * (1.0 + erf_f64(v / std::f64::consts::SQRT_2))) as f32).collect();
    let (value, dprob) = importance(&prob, segments, weight, dy);
    if dy.is_none() {
        return Load { value, dclean: Vec::new(), dscale: Vec::new() };
    }
    let density = |v: f64| (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let dz: Vec<f64> = z.iter().zip(&dprob).map(|(&v, &g)| g as f64 * density(v)).collect();
    let dclean = dz.iter().zip(scale).map(|(&d, &s)| (d / s as f64) as f32).collect();
    let dscale = dz.iter().zip(&z).zip(scale).map(|((&d, &v), &s)| (-d * v / s as f64) as f32).collect();
    Load { value, dclean, dscale }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The analytic gradient of both losses against central differences.
    #[test]
    fn balance_gradients_match_finite_differences() {
        let segments = [3, 4];
        let p: Vec<f32> = (0..14).map(|i| 0.1 + 0.07 * ((i * 5 % 11) as f32)).collect();
        let (_, dp) = importance(&p, &segments, 0.3, Some(1.0));
        let h = 1e-3;
        for i in 0..p.len() {
            let (mut a, mut b) = (p.clone(), p.clone());
            a[i] += h;
            b[i] -= h;
            let fd = (importance(&a, &segments, 0.3, None).0 - importance(&b, &segments, 0.3, None).0) / (2.0 * h);
            assert!((fd - dp[i]).abs() < 2e-3, "importance[{i}]: {fd} against {}", dp[i]);
        }
        let noisy: Vec<f32> = (0..14).map(|i| ((i * 7 % 13) as f32) * 0.3 - 1.5).collect();
        let clean: Vec<f32> = noisy.iter().map(|v| v - 0.2).collect();
        let scale: Vec<f32> = (0..14).map(|i| 0.5 + 0.05 * i as f32).collect();
        let g = load([&clean, &noisy, &scale], &segments, 2, 0.3, Some(1.0));
        for i in 0..clean.len() {
            let f = |c: &[f32], s: &[f32]| load([c, &noisy, s], &segments, 2, 0.3, None).value;
            let (mut a, mut b) = (clean.clone(), clean.clone());
            a[i] += h;
            b[i] -= h;
            let fd = (f(&a, &scale) - f(&b, &scale)) / (2.0 * h);
            assert!((fd - g.dclean[i]).abs() < 2e-3, "load by clean[{i}]: {fd} against {}", g.dclean[i]);
            let (mut a, mut b) = (scale.clone(), scale.clone());
            a[i] += h;
            b[i] -= h;
            let fd = (f(&clean, &a) - f(&clean, &b)) / (2.0 * h);
            assert!((fd - g.dscale[i]).abs() < 2e-3, "load by scale[{i}]: {fd} against {}", g.dscale[i]);
        }
    }
}
