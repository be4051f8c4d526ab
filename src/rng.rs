//! A small seeded RNG (xoshiro256** seeded by SplitMix64). candle's CPU RNG cannot be
//! seeded, so weights, shuffles and synthetic data all come from here: the same seed
//! gives the same model on every platform.

/// One SplitMix64 step: also the hash behind the census paper split.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut s = [0u64; 4];
        for v in &mut s {
            *v = splitmix64(x);
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        }
        Rng { s }
    }

    /// An independent stream derived from this seed and a label.
    pub fn derive(seed: u64, label: &str) -> Self {
        Rng::new(seed ^ xxhash_rust::xxh3::xxh3_64(label.as_bytes()))
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// The CPU's dropout mask of `n` values at `rate` (kept ones `1 / (1 - rate)`, the others
/// 0), drawn from `rng`: two values per draw, in order. The candle graph and the
/// native backend both draw it here, so they drop the same units.
pub fn dropout_mask(rng: &mut Rng, n: usize, rate: f32) -> Vec<f32> {
    let keep = 1.0 - rate;
    let threshold = (keep as f64 * u32::MAX as f64) as u32;
    let scale = 1.0 / keep;
    let mut mask = Vec::with_capacity(n + 1);
    while mask.len() < n {
        let r = rng.next_u64();
        for half in [r as u32, (r >> 32) as u32] {
            mask.push(if half < threshold { scale } else { 0.0 });
        }
    }
    mask.truncate(n);
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_the_census_readme() {
        // The census README orders test rows by splitmix64(i); validation starts with
        // rows 3, 4, 5, 7, 10, test with 0, 1, 2, 6, 8. Checked end to end in the
        // integration tests; here only that the function is the published one.
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn normal_has_unit_variance() {
        let mut r = Rng::new(7);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
    }
}
