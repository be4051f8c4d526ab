//! What the dense inputs looked like in training, so that prediction can say when it
//! is asked about values far outside it (an age of 1e30 scores without complaint, and
//! its score means nothing).
//!
//! Ranges are kept per dense column in the transformed space the model sees, and shown
//! to people back in raw units.

use serde::{Deserialize, Serialize};

use super::{dense_columns, Dataset};
use crate::ir::{FeatureKind, Model, Transform};

/// The smallest and largest value of one dense column in the training rows (after the
/// transform).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DenseRange {
    pub column: String,
    pub lo: f32,
    pub hi: f32,
}

/// Every dense column with its transform, in dataset order.
fn columns(model: &Model) -> Vec<(String, Transform)> {
    let mut out = Vec::new();
    for f in &model.features {
        if let FeatureKind::Dense { width, transform, .. } = &f.kind {
            out.extend(dense_columns(&f.column, *width).into_iter().map(|c| (c, *transform)));
        }
    }
    out
}

/// The range of every dense column over `ds`'s rows.
pub fn dense_ranges(model: &Model, ds: &Dataset) -> Vec<DenseRange> {
    // No rows held (streamed training data): no range to compare against.
    if ds.rows == 0 {
        return Vec::new();
    }
    let w = ds.dense_width;
    columns(model)
        .into_iter()
        .enumerate()
        .map(|(j, (column, _))| {
            let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
            for i in 0..ds.rows {
                let x = ds.dense[i * w + j];
                lo = lo.min(x);
                hi = hi.max(x);
            }
            DenseRange { column, lo, hi }
        })
        .collect()
}

fn raw(t: &Transform, y: f32) -> f32 {
    match *t {
        Transform::None => y,
        Transform::Log1p => y.exp_m1(),
        Transform::ZScore { mean, std } => y * std + mean,
        Transform::MinMax { min, max } => y * (max - min) + min,
    }
}

/// One sentence per dense column of `ds` with values far outside the training range
/// (beyond it by more than the range's own width), counting them and showing the
/// furthest, in raw units.
pub fn far_outside(model: &Model, ranges: &[DenseRange], ds: &Dataset) -> Vec<String> {
    let w = ds.dense_width;
    let mut out = Vec::new();
    for (j, (column, transform)) in columns(model).iter().enumerate() {
        let Some(r) = ranges.iter().find(|r| r.column == *column) else { continue };
        let slack = (r.hi - r.lo).max(1e-3);
        let (lo, hi) = (r.lo - slack, r.hi + slack);
        let mut count = 0usize;
        let mut worst: Option<(usize, f32)> = None;
        for i in 0..ds.rows {
            let x = ds.dense[i * w + j];
            if x < lo || x > hi {
                count += 1;
                let d = if x < lo { lo - x } else { x - hi };
                if worst.is_none_or(|(_, wd)| d > wd) {
                    worst = Some((i, d));
                }
            }
        }
        if let Some((row, _)) = worst {
            out.push(format!(
                "column `{column}`: {count} of {} value(s) far outside what training saw ({} to {}); the furthest, {} at row {}, gets a score the model never learned",
                ds.rows,
                raw(transform, r.lo),
                raw(transform, r.hi),
                raw(transform, ds.dense[row * w + j]),
                row + 1
            ));
        }
    }
    out
}
