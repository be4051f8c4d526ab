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
    let mut tally = RangeTally::default();
    tally.add(ds);
    tally.ranges(model)
}

/// The smallest and largest value of each dense column over the rows added so far, a
/// dataset at a time (streamed training rows arrive a chunk at a time).
#[derive(Debug, Clone, Default)]
pub struct RangeTally {
    lo: Vec<f32>,
    hi: Vec<f32>,
    rows: usize,
    /// Every row has been added (rows read again need not be).
    complete: bool,
}

impl RangeTally {
    pub fn complete(&self) -> bool {
        self.complete
    }

    pub fn set_complete(&mut self) {
        self.complete = true;
    }

    pub fn add(&mut self, ds: &Dataset) {
        let w = ds.dense_width;
        if ds.rows == 0 || w == 0 {
            return;
        }
        if self.lo.len() != w {
            (self.lo, self.hi) = (vec![f32::INFINITY; w], vec![f32::NEG_INFINITY; w]);
        }
        for row in ds.dense.chunks_exact(w).take(ds.rows) {
            for ((lo, hi), &x) in self.lo.iter_mut().zip(self.hi.iter_mut()).zip(row) {
                *lo = lo.min(x);
                *hi = hi.max(x);
            }
        }
        self.rows += ds.rows;
    }

    /// Every dense column's range; none when no rows were added.
    pub fn ranges(&self, model: &Model) -> Vec<DenseRange> {
        if self.rows == 0 {
            return Vec::new();
        }
        columns(model)
            .into_iter()
            .zip(self.lo.iter().zip(&self.hi))
            .map(|((column, _), (&lo, &hi))| DenseRange { column, lo, hi })
            .collect()
    }
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
