//! A minibatch on the device, and how a split's rows get there: gathered from the host
//! per batch, or uploaded once and indexed on the device ([`Resident`]).

use candle_core::Tensor;

use super::Result;
use crate::data::Dataset;

/// One minibatch on the device.
pub struct Batch {
    /// Per categorical feature: table rows `[B]` (u32), or `[B, len]` for a bag.
    pub cat: Vec<Tensor>,
    /// Per categorical feature: a bag's slot weights `[B, len]` (see `data::BagRows`).
    pub bags: Vec<Option<Tensor>>,
    /// All dense values `[B, dense_width]`, or None when the model has no dense input.
    pub dense: Option<Tensor>,
    /// Per task: labels `[B]` (missing ones as 0), or None when the data has none for
    /// that task. Index t is always task t.
    pub labels: Vec<Option<Tensor>>,
    /// Per task: 1 where the label is present, `[B]`; None when every row has it.
    pub masks: Vec<Option<Tensor>>,
    pub size: usize,
}

impl Batch {
    /// Gathers rows `idx` of `ds` into device tensors.
    pub fn gather(ds: &Dataset, idx: &[usize], device: &candle_core::Device) -> Result<Batch> {
        let b = idx.len();
        let (cat, bags) = cat_columns(ds, Some(idx), device)?;
        let w = ds.dense_width;
        let dense = if w > 0 {
            Some(Tensor::from_vec(crate::data::select_rows(&ds.dense, w, idx), (b, w), device)?)
        } else {
            None
        };
        let (labels, masks) = label_columns(ds, |l| idx.iter().map(|&i| l[i]).collect(), device)?;
        Ok(Batch { cat, bags, dense, labels, masks, size: b })
    }

    /// Rows `start..start + len` of the batch (views, no copy).
    pub fn narrow(&self, start: usize, len: usize) -> Result<Batch> {
        let cut = |t: &Tensor| t.narrow(0, start, len);
        let opt = |t: &Option<Tensor>| t.as_ref().map(cut).transpose();
        Ok(Batch {
            cat: self.cat.iter().map(cut).collect::<Result<_>>()?,
            bags: self.bags.iter().map(opt).collect::<Result<_>>()?,
            dense: opt(&self.dense)?,
            labels: self.labels.iter().map(opt).collect::<Result<_>>()?,
            masks: self.masks.iter().map(opt).collect::<Result<_>>()?,
            size: len,
        })
    }
}

/// Per categorical of `ds`, its table rows (`[B]`, a bag's `[B, len]`) and a bag's slot
/// weights (`[B, len]`), of rows `idx` (every row when None).
#[allow(clippy::type_complexity)]
fn cat_columns(
    ds: &Dataset,
    idx: Option<&[usize]>,
    device: &candle_core::Device,
) -> Result<(Vec<Tensor>, Vec<Option<Tensor>>)> {
    fn rows<T: Copy + candle_core::WithDType>(
        v: &[T],
        len: usize,
        idx: Option<&[usize]>,
        shape: candle_core::Shape,
        device: &candle_core::Device,
    ) -> Result<Tensor> {
        match idx {
            Some(idx) => Tensor::from_vec(crate::data::select_rows(v, len, idx), shape, device),
            None => Tensor::from_slice(v, shape, device),
        }
    }
    let n = idx.map_or(ds.rows, <[usize]>::len);
    let mut cat = Vec::with_capacity(ds.cat.len());
    let mut bags = Vec::with_capacity(ds.cat.len());
    for (i, c) in ds.cat.iter().enumerate() {
        match ds.bags.get(i).and_then(Option::as_ref) {
            Some(bag) => {
                cat.push(rows(c, bag.len, idx, (n, bag.len).into(), device)?);
                bags.push(Some(rows(&bag.weights, bag.len, idx, (n, bag.len).into(), device)?));
            }
            None => {
                cat.push(rows(c, 1, idx, n.into(), device)?);
                bags.push(None);
            }
        }
    }
    Ok((cat, bags))
}

/// Per task of `ds`, the labels `pick` takes from its column, a missing one (NaN) as 0,
/// and the mask of the present ones (None when all are, or the task has no labels).
#[allow(clippy::type_complexity)]
fn label_columns(
    ds: &Dataset,
    pick: impl Fn(&[f32]) -> Vec<f32>,
    device: &candle_core::Device,
) -> Result<(Vec<Option<Tensor>>, Vec<Option<Tensor>>)> {
    let mut labels = Vec::with_capacity(ds.labels.len());
    let mut masks = Vec::with_capacity(ds.labels.len());
    for l in &ds.labels {
        if l.is_empty() {
            labels.push(None);
            masks.push(None);
            continue;
        }
        let mut y = pick(l);
        let n = y.len();
        masks.push(if y.iter().any(|v| v.is_nan()) {
            Some(Tensor::from_vec(y.iter().map(|v| f32::from(!v.is_nan())).collect::<Vec<f32>>(), n, device)?)
        } else {
            None
        });
        y.iter_mut().filter(|v| v.is_nan()).for_each(|v| *v = 0.0);
        labels.push(Some(Tensor::from_vec(y, n, device)?));
    }
    Ok((labels, masks))
}

/// A dataset's columns on the device, uploaded once, from which batches are gathered on
/// the device (`index_select` by the epoch's row order): no host gather and no upload
/// per batch. Labels come with their masks made (NaN: missing).
pub struct Resident {
    cat: Vec<Tensor>,
    bags: Vec<Option<Tensor>>,
    dense: Option<Tensor>,
    labels: Vec<Option<Tensor>>,
    masks: Vec<Option<Tensor>>,
    pub rows: usize,
    device: candle_core::Device,
}

/// Datasets larger than this stay on the host and are uploaded a batch at a time.
pub const RESIDENT_MAX_BYTES: usize = 16 << 30;

impl Resident {
    /// The dataset's bytes once resident (ids, dense values, labels and masks).
    pub fn bytes(ds: &Dataset) -> usize {
        // A bag's ids and slot weights.
        let cat: usize = (0..ds.cat.len())
            .map(|i| ds.cat_len(i) * if ds.bags.get(i).is_some_and(Option::is_some) { 2 } else { 1 })
            .sum();
        4 * ds.rows * (cat + ds.dense_width + 2 * ds.labels.iter().filter(|l| !l.is_empty()).count())
    }

    pub fn upload(ds: &Dataset, device: &candle_core::Device) -> Result<Resident> {
        let n = ds.rows;
        let (cat, bags) = cat_columns(ds, None, device)?;
        let dense =
            if ds.dense_width > 0 { Some(Tensor::from_slice(&ds.dense, (n, ds.dense_width), device)?) } else { None };
        let (labels, masks) = label_columns(ds, |l| l.to_vec(), device)?;
        Ok(Resident { cat, bags, dense, labels, masks, rows: n, device: device.clone() })
    }

    /// The rows `idx` (`[B]` u32 on the same device) as a batch.
    pub fn batch(&self, idx: &Tensor) -> Result<Batch> {
        let pick = |t: &Tensor| t.index_select(idx, 0);
        let opt = |t: &Option<Tensor>| t.as_ref().map(pick).transpose();
        Ok(Batch {
            cat: self.cat.iter().map(pick).collect::<Result<_>>()?,
            bags: self.bags.iter().map(opt).collect::<Result<_>>()?,
            dense: opt(&self.dense)?,
            labels: self.labels.iter().map(opt).collect::<Result<_>>()?,
            masks: self.masks.iter().map(opt).collect::<Result<_>>()?,
            size: idx.dim(0)?,
        })
    }
}

/// Where a training loop's batches come from: gathered on the host and uploaded one at
/// a time (the CPU, or data too large for the device), or gathered on the device from
/// a [`Resident`] copy.
pub enum Feed<'a> {
    Host(&'a Dataset, candle_core::Device),
    Resident(Resident),
}

/// An epoch's row order, and on the device a copy of it (uploaded once per epoch).
pub struct Order {
    pub rows: Vec<usize>,
    device: Option<Tensor>,
}

impl<'a> Feed<'a> {
    /// Resident on a GPU when the data fits under [`RESIDENT_MAX_BYTES`]; on the host
    /// otherwise.
    pub fn new(ds: &'a Dataset, device: &candle_core::Device) -> Result<Feed<'a>> {
        if device.is_cpu() || Resident::bytes(ds) > RESIDENT_MAX_BYTES {
            Ok(Feed::Host(ds, device.clone()))
        } else {
            Ok(Feed::Resident(Resident::upload(ds, device)?))
        }
    }

    /// The device batches go to.
    pub fn device(&self) -> &candle_core::Device {
        match self {
            Feed::Host(_, d) => d,
            Feed::Resident(r) => &r.device,
        }
    }

    pub fn order(&self, rows: Vec<usize>) -> Result<Order> {
        let device = match self {
            Feed::Host(..) => None,
            Feed::Resident(r) => {
                let ids: Vec<u32> = rows.iter().map(|&i| i as u32).collect();
                Some(Tensor::from_vec(ids, rows.len(), &r.device)?)
            }
        };
        Ok(Order { rows, device })
    }

    /// Rows `start..start + len` of `order`.
    pub fn batch(&self, order: &Order, start: usize, len: usize) -> Result<Batch> {
        match (self, &order.device) {
            (Feed::Resident(r), Some(ids)) => r.batch(&ids.narrow(0, start, len)?),
            (Feed::Host(ds, dev), _) => Batch::gather(ds, &order.rows[start..start + len], dev),
            (Feed::Resident(_), None) => Err(candle_core::Error::Msg("an order made by another feed".into())),
        }
    }
}
