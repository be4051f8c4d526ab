//! Spec -> canonical TOML text (`multigate fmt` on a `.toml` file, `--to toml`).
//! Tables in a fixed order, keys in the order of the spec's fields; a key is written
//! when the source wrote it or its value is not the default (so a spec keeps the
//! defaults its author spelled out, and the comments on them). A bundle stores the
//! fuller form of [`Spec::to_toml`], every default written.

use std::fmt::Write;
use std::ops::Range;

use super::{keep, wrap_list, Line, Out};
use crate::spec::*;

/// A TOML basic string.
fn q(s: &str) -> String {
    super::quoted(s, Syntax::Toml)
}

fn num(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let s = format!("{x:?}");
    if s.contains('.') || s.contains('e') {
        s
    } else {
        format!("{s}.0")
    }
}

fn list(items: impl Iterator<Item = String>) -> String {
    format!("[{}]", items.collect::<Vec<_>>().join(", "))
}

/// A key as TOML writes it: bare when it can be.
fn key(k: &str) -> String {
    if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        k.to_string()
    } else {
        q(k)
    }
}

/// One table: its header and its `key = value` entries with their sources.
struct Table {
    header: &'static str,
    entries: Vec<(&'static str, String, Range<usize>)>,
}

impl Table {
    fn new(header: &'static str) -> Table {
        Table { header, entries: Vec::new() }
    }

    fn put<T>(&mut self, k: &'static str, v: &Sp<T>, show: impl Fn(&T) -> String) {
        self.entries.push((k, show(v.get_ref()), v.span()));
    }

    fn opt<T>(&mut self, k: &'static str, v: &Option<Sp<T>>, show: impl Fn(&T) -> String) {
        if let Some(v) = v {
            self.put(k, v, show);
        }
    }

    fn unless_default<T: PartialEq>(&mut self, k: &'static str, v: &Sp<T>, d: &Sp<T>, show: impl Fn(&T) -> String) {
        if keep(v, d) {
            self.put(k, v, show);
        }
    }

    /// Writes the table (nothing when it has no entries). Its header shows the first
    /// of its entries in the source and in canonical order, so a comment above the
    /// table, or above the key that comes to open it, goes above the header.
    fn write(self, out: &mut Out) -> std::fmt::Result {
        if self.entries.is_empty() {
            return Ok(());
        }
        if !out.lines.is_empty() || !out.cur.is_empty() {
            writeln!(out)?;
        }
        let first = self.entries.iter().map(|(_, _, at)| at).filter(|at| !at.is_empty()).min_by_key(|at| at.start);
        if let Some(at) = first {
            out.mark_span(at.clone());
        }
        out.mark_span(self.entries[0].2.clone());
        writeln!(out, "{}", self.header)?;
        for (k, v, at) in self.entries {
            out.mark_span(at);
            writeln!(out, "{k} = {}", wrap_list(&v, "    ", ""))?;
        }
        Ok(())
    }
}

fn strings<'a>(v: impl Iterator<Item = &'a String>) -> String {
    list(v.map(|s| q(s)))
}

/// A spec's canonical TOML lines.
pub(super) fn lines(s: &Spec) -> Vec<Line> {
    let mut out = Out::default();
    // Writing into an `Out` cannot fail.
    let _ = write_spec(&mut out, s);
    out.finish()
}

fn write_spec(out: &mut Out, s: &Spec) -> std::fmt::Result {
    let mut t = Table::new("[model]");
    t.put("name", &s.model.name, |x| q(x));
    t.write(out)?;

    let d = &s.data;
    let dd = DataSection::default();
    let mut t = Table::new("[data]");
    t.unless_default("source", &d.source, &dd.source, |x| q(x));
    if !d.train.is_empty() {
        let at = d.train.first().map(|x| x.span()).unwrap_or_default();
        t.entries.push(("train", strings(d.train.iter().map(|x| x.get_ref())), at));
    }
    t.opt("validation", &d.validation, |x| q(x));
    t.opt("test", &d.test, |x| q(x));
    t.unless_default("validation_fraction", &d.validation_fraction, &dd.validation_fraction, |x| num(*x));
    t.unless_default("test_fraction", &d.test_fraction, &dd.test_fraction, |x| num(*x));
    t.unless_default("delimiter", &d.delimiter, &dd.delimiter, |x| q(x));
    t.unless_default("header", &d.header, &dd.header, |x| x.to_string());
    if !d.columns.is_empty() {
        let at = d.columns.first().map(|x| x.span()).unwrap_or_default();
        t.entries.push(("columns", strings(d.columns.iter().map(|x| x.get_ref())), at));
    }
    t.opt("missing", &d.missing, |x| q(x));
    t.opt("partition_date", &d.partition_date, |x| q(x));
    t.opt("cur_date", &d.cur_date, |x| q(x));
    t.opt("days", &d.days, |x| x.to_string());
    t.opt("bad_rows", &d.bad_rows, |x| q(x));
    t.opt("max_bad_rows", &d.max_bad_rows, |x| x.to_string());
    t.opt("max_bad_fraction", &d.max_bad_fraction, |x| num(*x));
    t.opt("stream", &d.stream, |x| x.to_string());
    t.opt("shuffle_buffer", &d.shuffle_buffer, |x| x.to_string());
    t.write(out)?;

    let y = &d.synthetic;
    let yd = SyntheticSpec::default();
    let mut t = Table::new("[data.synthetic]");
    t.unless_default("kind", &y.kind, &yd.kind, |x| q(x));
    t.unless_default("rows", &y.rows, &yd.rows, |x| x.to_string());
    t.unless_default("seed", &y.seed, &yd.seed, |x| x.to_string());
    t.unless_default("dim", &y.dim, &yd.dim, |x| x.to_string());
    t.unless_default("correlation", &y.correlation, &yd.correlation, |x| num(*x));
    t.unless_default("scale", &y.scale, &yd.scale, |x| num(*x));
    t.unless_default("sin_terms", &y.sin_terms, &yd.sin_terms, |x| x.to_string());
    t.unless_default("sin_sd", &y.sin_sd, &yd.sin_sd, |x| num(*x));
    t.unless_default("noise_sd", &y.noise_sd, &yd.noise_sd, |x| num(*x));
    t.unless_default("cardinality", &y.cardinality, &yd.cardinality, |x| x.to_string());
    t.write(out)?;

    for f in &s.features {
        let mut t = Table::new("[[features]]");
        t.put("name", &f.name, |x| q(x));
        t.opt("also", &f.also, |x| strings(x.iter().map(|n| n.get_ref())));
        t.put("type", &f.kind, |x| q(x));
        t.opt("column", &f.column, |x| q(x));
        t.opt("hash_buckets", &f.hash_buckets, |x| x.to_string());
        t.opt("vocabulary", &f.vocabulary, |x| strings(x.iter()));
        t.opt("embedding_dim", &f.embedding_dim, |x| x.to_string());
        t.opt("width", &f.width, |x| x.to_string());
        t.opt("transform", &f.transform, |x| q(x));
        t.opt("mean", &f.mean, |x| num(*x));
        t.opt("std", &f.std, |x| num(*x));
        t.opt("min", &f.min, |x| num(*x));
        t.opt("max", &f.max, |x| num(*x));
        t.opt("fill", &f.fill, |x| num(*x));
        t.opt("min_count", &f.min_count, |x| x.to_string());
        t.opt("max_size", &f.max_size, |x| x.to_string());
        t.opt("table", &f.table, |x| q(x));
        t.opt("bucketize", &f.bucketize, |x| x.to_string());
        t.opt("boundaries", &f.boundaries, |x| list(x.iter().map(|v| num(*v))));
        t.opt("max_len", &f.max_len, |x| x.to_string());
        t.opt("separator", &f.separator, |x| q(x));
        t.opt("pooling", &f.pooling, |x| q(x));
        t.opt("weights", &f.weights, |x| q(x));
        t.write(out)?;
    }
    for c in &s.crosses {
        let mut t = Table::new("[[crosses]]");
        t.put("name", &c.name, |x| q(x));
        t.put("op", &c.op, |x| q(x));
        t.put("features", &c.features, |x| strings(x.iter().map(|s| s.get_ref())));
        t.write(out)?;
    }
    for l in &s.layers {
        let mut t = Table::new("[[layers]]");
        t.opt("name", &l.name, |x| q(x));
        t.put("kind", &l.kind, |x| q(x));
        t.opt("experts", &l.experts, |x| x.to_string());
        t.opt("task_experts", &l.task_experts, |x| match x {
            TaskExperts::Each(n) => n.to_string(),
            TaskExperts::Per(m) => {
                format!("{{ {} }}", m.iter().map(|(k, v)| format!("{} = {v}", key(k))).collect::<Vec<_>>().join(", "))
            }
        });
        t.put("units", &l.units, |x| list(x.iter().map(|u| u.get_ref().to_string())));
        t.opt("activation", &l.activation, |x| q(x));
        t.opt("cross_layers", &l.cross_layers, |x| x.to_string());
        t.opt("dropout", &l.dropout, |x| num(*x));
        t.opt("temperature", &l.temperature, |x| num(*x));
        t.opt("top_k", &l.top_k, |x| x.to_string());
        t.opt("noise", &l.noise, |x| x.to_string());
        t.opt("balance", &l.balance, |x| num(*x));
        t.write(out)?;
    }
    for task in &s.tasks {
        let mut t = Table::new("[[tasks]]");
        t.put("name", &task.name, |x| q(x));
        t.put("kind", &task.kind, |x| q(x));
        t.opt("label", &task.label, |x| q(x));
        t.opt("positive", &task.positive, |x| match x {
            Positive::One(v) => q(v),
            Positive::Any(vs) => strings(vs.iter()),
        });
        t.opt("only_where", &task.only_where, |x| q(x));
        t.opt("classes", &task.classes, |x| strings(x.iter()));
        t.opt("transform", &task.transform, |x| q(x));
        t.opt("mean", &task.mean, |x| num(*x));
        t.opt("std", &task.std, |x| num(*x));
        t.opt("product", &task.product, |x| strings(x.iter().map(|s| s.get_ref())));
        t.opt("transfer_from", &task.transfer_from, |x| q(x));
        t.opt("calibration", &task.calibration, |x| num(*x));
        t.opt("input", &task.input, |x| q(x));
        t.opt("tower", &task.tower, |x| list(x.iter().map(|u| u.get_ref().to_string())));
        t.opt("activation", &task.activation, |x| q(x));
        t.opt("dropout", &task.dropout, |x| num(*x));
        t.opt("weight", &task.weight, |x| num(*x));
        t.write(out)?;
    }

    let r = &s.train;
    let rd = TrainSection::default();
    let mut t = Table::new("[train]");
    t.unless_default("optimizer", &r.optimizer, &rd.optimizer, |x| q(x));
    for (k, v, d) in [
        ("lr", &r.lr, &rd.lr),
        ("beta1", &r.beta1, &rd.beta1),
        ("beta2", &r.beta2, &rd.beta2),
        ("eps", &r.eps, &rd.eps),
        ("weight_decay", &r.weight_decay, &rd.weight_decay),
        ("lr_decay_rate", &r.lr_decay_rate, &rd.lr_decay_rate),
    ] {
        t.unless_default(k, v, d, |x| num(*x));
    }
    t.unless_default("lr_decay_epochs", &r.lr_decay_epochs, &rd.lr_decay_epochs, |x| x.to_string());
    t.unless_default("batch_size", &r.batch_size, &rd.batch_size, |x| x.to_string());
    t.unless_default("epochs", &r.epochs, &rd.epochs, |x| x.to_string());
    t.unless_default("seed", &r.seed, &rd.seed, |x| x.to_string());
    t.opt("select", &r.select, |x| q(x));
    t.opt("patience", &r.patience, |x| x.to_string());
    t.opt("loss_balance", &r.loss_balance, |x| q(x));
    t.opt("gradnorm_alpha", &r.gradnorm_alpha, |x| num(*x));
    t.opt("dwa_temperature", &r.dwa_temperature, |x| num(*x));
    t.write(out)
}
