//! TensorBoard event files, written without TensorFlow.
//!
//! A file is a sequence of records, each `u64 length (LE) | u32 masked CRC32C of the
//! length bytes | data | u32 masked CRC32C of data`, where data is a serialized
//! `tensorflow.Event` (`event.proto`: `wall_time = 1`, `step = 2`, `file_version = 3`,
//! `summary = 5`; `Summary.value = 1`; `Summary.Value.tag = 1`, `simple_value = 2`). The
//! first record carries `file_version = "brain.Event:2"`. [`Observer`](super::events::Observer)
//! [`TensorBoard`] writes a run's scalars: per-step training loss per task and total,
//! per-epoch learning rate, training loss, validation loss and metrics per task,
//! effective loss weights, and at the end each gate's mean weight per expert.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;

use super::events::{Event as RunEvent, Observer};

#[derive(Clone, PartialEq, prost::Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(string, optional, tag = "3")]
    file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    summary: Option<Summary>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(float, optional, tag = "2")]
    simple_value: Option<f32>,
}

/// CRC32C (Castagnoli), bitwise over a lookup table.
pub fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            }
            *e = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8))
}

/// TensorFlow's masked CRC: rotated and offset, so that a CRC of data holding CRCs
/// stays well distributed.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// An open event file.
pub struct EventWriter {
    file: std::io::BufWriter<std::fs::File>,
    pub path: PathBuf,
}

impl EventWriter {
    /// Creates `dir/events.out.tfevents.<seconds>.multigate.<pid>` and writes the version
    /// record.
    pub fn create(dir: &Path) -> std::io::Result<EventWriter> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("events.out.tfevents.{}.multigate.{}", now() as u64, std::process::id()));
        let file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut w = EventWriter { file, path };
        w.record(&Event { wall_time: now(), step: 0, file_version: Some("brain.Event:2".into()), summary: None })?;
        Ok(w)
    }

    fn record(&mut self, e: &Event) -> std::io::Result<()> {
        let data = e.encode_to_vec();
        let len = (data.len() as u64).to_le_bytes();
        self.file.write_all(&len)?;
        self.file.write_all(&masked_crc32c(&len).to_le_bytes())?;
        self.file.write_all(&data)?;
        self.file.write_all(&masked_crc32c(&data).to_le_bytes())
    }

    /// Writes scalars `(tag, value)` at `step`; non-finite values are skipped.
    pub fn scalars(&mut self, step: i64, values: &[(String, f64)]) -> std::io::Result<()> {
        let value = values
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(tag, v)| SummaryValue { tag: tag.clone(), simple_value: Some(*v as f32) })
            .collect();
        self.record(&Event { wall_time: now(), step, file_version: None, summary: Some(Summary { value }) })
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// The TensorBoard folder of a bundle folder: `<out>.tensorboard` beside it (the bundle
/// itself is replaced whole when committed, so live logs cannot go inside).
pub fn tensorboard_dir(out: &Path) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "bundle".into());
    out.with_file_name(format!("{name}.tensorboard"))
}

/// Writes a run's scalars as it goes; the first I/O error is kept and the rest skipped.
pub struct TensorBoard {
    dir: PathBuf,
    writer: Option<EventWriter>,
    tasks: Vec<String>,
    step: i64,
    pub error: Option<String>,
}

impl TensorBoard {
    pub fn new(dir: PathBuf) -> TensorBoard {
        TensorBoard { dir, writer: None, tasks: Vec::new(), step: 0, error: None }
    }

    fn write(&mut self, step: i64, values: Vec<(String, f64)>) {
        if self.error.is_some() {
            return;
        }
        if self.writer.is_none() {
            match EventWriter::create(&self.dir) {
                Ok(w) => self.writer = Some(w),
                Err(e) => {
                    self.error = Some(format!("{}: {e}", self.dir.display()));
                    return;
                }
            }
        }
        if let Some(w) = self.writer.as_mut() {
            if let Err(e) = w.scalars(step, &values) {
                self.error = Some(format!("{}: {e}", w.path.display()));
            }
        }
    }
}

/// Every numeric field of a task's metrics, by name (`auc`, `logloss`, `mse`, ...).
fn metric_fields(m: &crate::train::metrics::TaskMetrics) -> Vec<(String, f64)> {
    match serde_json::to_value(m) {
        Ok(serde_json::Value::Object(o)) => o.into_iter().filter_map(|(k, v)| v.as_f64().map(|x| (k, x))).collect(),
        _ => Vec::new(),
    }
}

impl Observer for TensorBoard {
    fn on(&mut self, event: &RunEvent<'_>) {
        match event {
            RunEvent::Built { compiled } => {
                self.tasks = compiled.model.tasks.iter().map(|t| t.name.clone()).collect();
            }
            RunEvent::Step { step, losses, .. } => {
                self.step = *step as i64;
                let mut v: Vec<(String, f64)> =
                    self.tasks.iter().zip(losses.iter()).map(|(t, l)| (format!("train/loss/{t}"), *l as f64)).collect();
                v.push(("train/loss/total".into(), losses.iter().map(|&l| l as f64).sum()));
                self.write(self.step, v);
            }
            RunEvent::Epoch(e) => {
                let mut v = vec![
                    ("epoch/lr".to_string(), e.lr),
                    ("epoch/validation_loss".to_string(), e.validation_loss),
                    ("epoch/samples_per_sec".to_string(), e.train_samples_per_sec),
                ];
                for (i, t) in self.tasks.iter().enumerate() {
                    if let Some(l) = e.train_loss.get(i) {
                        v.push((format!("epoch/train_loss/{t}"), *l));
                    }
                    if let Some(w) = e.loss_weights.get(i) {
                        v.push((format!("epoch/loss_weight/{t}"), *w));
                    }
                    if let Some(m) = e.validation.get(i) {
                        v.extend(metric_fields(m).into_iter().map(|(k, x)| (format!("validation/{t}/{k}"), x)));
                    }
                }
                self.write(self.step, v);
                // Visible to a TensorBoard watching the run after every epoch.
                if let Some(w) = self.writer.as_mut() {
                    if let Err(e) = w.flush() {
                        self.error = Some(format!("{}: {e}", w.path.display()));
                    }
                }
            }
            RunEvent::Finished { report, .. } => {
                let mut v = Vec::new();
                for g in &report.gate_usage {
                    for (gate, weights) in &g.gates {
                        v.extend(weights.iter().enumerate().map(|(k, w)| (format!("gates/{gate}/e{k}"), *w)));
                    }
                }
                self.write(self.step, v);
                if let Some(w) = self.writer.as_mut() {
                    if let Err(e) = w.flush() {
                        self.error = Some(format!("{}: {e}", w.path.display()));
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_values() {
        // The standard check value of CRC-32C, and RFC 3720's all-zero vector.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    }
}
