//! Spec -> canonical DSL text (`multigate fmt --to mg`). What the source wrote and
//! every value that is not the default is written, in a fixed order, so formatting is
//! idempotent and a TOML spec converts without loss.

use std::fmt::Write;

use super::{keep, wrap_list, Line, Out};
use crate::spec::*;

fn q(s: &str) -> String {
    super::quoted(s, Syntax::Dsl)
}

/// A name as written in the DSL: bare when the grammar's `name` rule accepts it.
pub(super) fn n(s: &str) -> String {
    let mut chars = s.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        s.to_string()
    } else {
        // Names the grammar cannot hold bare are still written, quoted, so that the
        // reader reports them instead of the writer dropping them.
        q(s)
    }
}

fn num(x: f64) -> String {
    let s = format!("{x:?}");
    // `{:?}` prints 1e-5 as "1e-5" and 0.1 as "0.1": both read back exactly.
    if s.contains('.') || s.contains('e') || s.contains("inf") || s.contains("NaN") {
        s
    } else {
        format!("{s}.0")
    }
}

fn ints(v: &[Sp<u64>]) -> String {
    format!("[{}]", v.iter().map(|x| x.get_ref().to_string()).collect::<Vec<_>>().join(", "))
}

fn nums(v: &[f64]) -> String {
    format!("[{}]", v.iter().map(|x| num(*x)).collect::<Vec<_>>().join(", "))
}

fn strs<'a>(v: impl Iterator<Item = &'a String>) -> String {
    format!("[{}]", v.map(|s| q(s)).collect::<Vec<_>>().join(", "))
}

/// One argument: key, value as written, where the value came from.
type Arg<'a> = (&'a str, String, std::ops::Range<usize>);

/// Arguments `(k = v, ..)`, or nothing when empty. Long ones go one per line (each
/// line marked with its value's source), and long lists wrap.
fn args(out: &mut Out, items: &[Arg]) -> std::fmt::Result {
    if items.is_empty() {
        return Ok(());
    }
    let flat = format!("({})", items.iter().map(|(k, v, _)| format!("{k} = {v}")).collect::<Vec<_>>().join(", "));
    if flat.len() <= 88 {
        for (_, _, at) in items {
            out.mark_span(at.clone());
        }
        return write!(out, "{flat}");
    }
    writeln!(out, "(")?;
    for (k, v, at) in items {
        out.mark_span(at.clone());
        writeln!(out, "    {k} = {},", wrap_list(v, "      ", "    "))?;
    }
    write!(out, "  )")
}

/// Writes a spec as DSL text, without comments.
pub fn to_dsl(spec: &Spec) -> String {
    super::format(spec, None, Syntax::Dsl)
}

/// A spec's canonical DSL lines.
pub(super) fn lines(spec: &Spec) -> Vec<Line> {
    let mut out = Out::default();
    // Writing into an `Out` cannot fail.
    let _ = write_spec(&mut out, spec);
    out.finish()
}

fn sp_arg<'a, T>(k: &'a str, v: &Sp<T>, show: impl Fn(&T) -> String) -> Arg<'a> {
    (k, show(v.get_ref()), v.span())
}

fn write_spec(out: &mut Out, s: &Spec) -> std::fmt::Result {
    out.mark(&s.model.name);
    writeln!(out, "model {} {{", n(s.model.name.get_ref()))?;
    let d = &s.data;
    let dd = DataSection::default();
    let mut a: Vec<Arg> = Vec::new();
    if !d.train.is_empty() {
        let at = d.train.first().map(|x| x.span()).unwrap_or_default();
        a.push(("train", strs(d.train.iter().map(|x| x.get_ref())), at));
    }
    if let Some(v) = &d.validation {
        a.push(sp_arg("validation", v, |x| q(x)));
    }
    if let Some(v) = &d.test {
        a.push(sp_arg("test", v, |x| q(x)));
    }
    if keep(&d.validation_fraction, &dd.validation_fraction) {
        a.push(sp_arg("validation_fraction", &d.validation_fraction, |x| num(*x)));
    }
    if keep(&d.test_fraction, &dd.test_fraction) {
        a.push(sp_arg("test_fraction", &d.test_fraction, |x| num(*x)));
    }
    if keep(&d.delimiter, &dd.delimiter) {
        a.push(sp_arg("delimiter", &d.delimiter, |x| q(x)));
    }
    if keep(&d.header, &dd.header) {
        a.push(sp_arg("header", &d.header, |x| x.to_string()));
    }
    if !d.columns.is_empty() {
        let at = d.columns.first().map(|x| x.span()).unwrap_or_default();
        a.push(("columns", strs(d.columns.iter().map(|x| x.get_ref())), at));
    }
    if let Some(v) = &d.missing {
        a.push(sp_arg("missing", v, |x| q(x)));
    }
    if let Some(v) = &d.partition_date {
        a.push(sp_arg("partition_date", v, |x| q(x)));
    }
    if let Some(v) = &d.cur_date {
        a.push(sp_arg("cur_date", v, |x| q(x)));
    }
    if let Some(v) = &d.days {
        a.push(sp_arg("days", v, |x| x.to_string()));
    }
    if let Some(v) = &d.bad_rows {
        a.push(sp_arg("bad_rows", v, |x| n(x)));
    }
    if let Some(v) = &d.max_bad_rows {
        a.push(sp_arg("max_bad_rows", v, |x| x.to_string()));
    }
    if let Some(v) = &d.max_bad_fraction {
        a.push(sp_arg("max_bad_fraction", v, |x| num(*x)));
    }
    if let Some(v) = &d.stream {
        a.push(sp_arg("stream", v, |x| x.to_string()));
    }
    if let Some(v) = &d.shuffle_buffer {
        a.push(sp_arg("shuffle_buffer", v, |x| x.to_string()));
    }
    out.mark(&d.source);
    write!(out, "  data {}", n(d.source.get_ref()))?;
    args(out, &a)?;
    writeln!(out)?;

    let y = &d.synthetic;
    let yd = SyntheticSpec::default();
    let mut a: Vec<Arg> = Vec::new();
    macro_rules! diff {
        ($f:ident, $show:expr) => {
            if keep(&y.$f, &yd.$f) {
                a.push(sp_arg(stringify!($f), &y.$f, $show));
            }
        };
    }
    diff!(rows, |x: &u64| x.to_string());
    diff!(seed, |x: &u64| x.to_string());
    diff!(dim, |x: &u64| x.to_string());
    diff!(correlation, |x: &f64| num(*x));
    diff!(scale, |x: &f64| num(*x));
    diff!(sin_terms, |x: &u64| x.to_string());
    diff!(sin_sd, |x: &f64| num(*x));
    diff!(noise_sd, |x: &f64| num(*x));
    diff!(cardinality, |x: &u64| x.to_string());
    if keep(&y.kind, &yd.kind) || !a.is_empty() {
        out.mark(&y.kind);
        write!(out, "  synthetic {}", n(y.kind.get_ref()))?;
        args(out, &a)?;
        writeln!(out)?;
    }
    if !s.features.is_empty() {
        writeln!(out)?;
    }
    for f in &s.features {
        let mut a: Vec<Arg> = Vec::new();
        if let Some(v) = &f.hash_buckets {
            a.push(sp_arg("hash", v, |x| x.to_string()));
        }
        if let Some(v) = &f.vocabulary {
            a.push(sp_arg("vocab", v, |x| strs(x.iter())));
        }
        if let Some(v) = &f.width {
            a.push(sp_arg("width", v, |x| x.to_string()));
        }
        if let Some(v) = &f.transform {
            a.push(sp_arg("transform", v, |x| n(x)));
        }
        if let Some(v) = &f.mean {
            a.push(sp_arg("mean", v, |x| num(*x)));
        }
        if let Some(v) = &f.std {
            a.push(sp_arg("std", v, |x| num(*x)));
        }
        if let Some(v) = &f.min {
            a.push(sp_arg("min", v, |x| num(*x)));
        }
        if let Some(v) = &f.max {
            a.push(sp_arg("max", v, |x| num(*x)));
        }
        if let Some(v) = &f.fill {
            a.push(sp_arg("fill", v, |x| num(*x)));
        }
        if let Some(v) = &f.min_count {
            a.push(sp_arg("min_count", v, |x| x.to_string()));
        }
        if let Some(v) = &f.max_size {
            a.push(sp_arg("max_size", v, |x| x.to_string()));
        }
        if let Some(v) = &f.table {
            a.push(sp_arg("table", v, |x| n(x)));
        }
        if let Some(v) = &f.bucketize {
            a.push(sp_arg("bucketize", v, |x| x.to_string()));
        }
        if let Some(v) = &f.boundaries {
            a.push(sp_arg("boundaries", v, |x| nums(x)));
        }
        if let Some(v) = &f.max_len {
            a.push(sp_arg("max_len", v, |x| x.to_string()));
        }
        if let Some(v) = &f.separator {
            a.push(sp_arg("separator", v, |x| q(x)));
        }
        if let Some(v) = &f.pooling {
            a.push(sp_arg("pooling", v, |x| n(x)));
        }
        if let Some(v) = &f.weights {
            a.push(sp_arg("weights", v, |x| n(x)));
        }
        out.mark(&f.name);
        out.mark(&f.kind);
        // A group's names, wrapped before 92 columns (continuation lines indented 4).
        let mut width = format!("  feature {}", n(f.name.get_ref())).len();
        write!(out, "  feature {}", n(f.name.get_ref()))?;
        for also in f.also.iter().flat_map(|a| a.get_ref()) {
            out.mark(also);
            let name = n(also.get_ref());
            if width + 2 + name.len() > 92 {
                write!(out, ",\n    {name}")?;
                width = 4 + name.len();
            } else {
                write!(out, ", {name}")?;
                width += 2 + name.len();
            }
        }
        write!(out, ": {}", n(f.kind.get_ref()))?;
        args(out, &a)?;
        if let Some(e) = &f.embedding_dim {
            out.mark(e);
            write!(out, " embed {}", e.get_ref())?;
        }
        if let Some(c) = &f.column {
            out.mark(c);
            write!(out, " column {}", q(c.get_ref()))?;
        }
        writeln!(out)?;
    }
    for c in &s.crosses {
        let names: Vec<String> = c.features.get_ref().iter().map(|x| n(x.get_ref())).collect();
        out.mark(&c.name);
        out.mark(&c.op);
        out.mark(&c.features);
        writeln!(out, "  cross {} = {}({})", n(c.name.get_ref()), n(c.op.get_ref()), names.join(", "))?;
    }
    if !s.layers.is_empty() {
        writeln!(out)?;
    }
    for l in &s.layers {
        if let Some(name) = &l.name {
            out.mark(name);
        }
        out.mark(&l.kind);
        write!(out, "  layer ")?;
        if let Some(name) = &l.name {
            write!(out, "{}: ", n(name.get_ref()))?;
        }
        write!(out, "{} {{ ", n(l.kind.get_ref()))?;
        out.mark(&l.units);
        for v in [&l.experts].into_iter().flatten() {
            out.mark(v);
        }
        for v in [&l.activation].into_iter().flatten() {
            out.mark(v);
        }
        for v in [&l.task_experts].into_iter().flatten() {
            out.mark(v);
        }
        for v in [&l.dropout].into_iter().flatten() {
            out.mark(v);
        }
        for v in [&l.cross_layers].into_iter().flatten() {
            out.mark(v);
        }
        match &l.experts {
            Some(e) => write!(out, "experts {} x {}", e.get_ref(), ints(l.units.get_ref()))?,
            None => write!(out, "units {}", ints(l.units.get_ref()))?,
        }
        if let Some(a) = &l.activation {
            write!(out, " {}", n(a.get_ref()))?;
        }
        match l.task_experts.as_ref().map(|t| t.get_ref()) {
            Some(crate::spec::TaskExperts::Each(n)) => write!(out, " task_experts {n}")?,
            Some(crate::spec::TaskExperts::Per(m)) => {
                let items: Vec<String> = m.iter().map(|(k, v)| format!("{} = {v}", n(k))).collect();
                write!(out, " task_experts({})", items.join(", "))?
            }
            None => {}
        }
        if let Some(c) = &l.cross_layers {
            write!(out, " cross {}", c.get_ref())?;
        }
        if let Some(d) = &l.dropout {
            write!(out, " dropout {}", num(*d.get_ref()))?;
        }
        let mut gate: Vec<Arg> = Vec::new();
        if let Some(t) = &l.temperature {
            gate.push(sp_arg("temperature", t, |x| num(*x)));
        }
        if let Some(k) = &l.top_k {
            gate.push(sp_arg("top_k", k, |x| x.to_string()));
        }
        if let Some(v) = &l.noise {
            gate.push(sp_arg("noise", v, |x| x.to_string()));
        }
        if let Some(b) = &l.balance {
            gate.push(sp_arg("balance", b, |x| num(*x)));
        }
        if !gate.is_empty() {
            write!(out, " gate")?;
            args(out, &gate)?;
        }
        writeln!(out, " }}")?;
    }
    if !s.tasks.is_empty() {
        writeln!(out)?;
    }
    for t in &s.tasks {
        out.mark(&t.name);
        out.mark(&t.kind);
        for v in
            [&t.label, &t.only_where, &t.transform, &t.transfer_from, &t.input, &t.activation].into_iter().flatten()
        {
            out.mark(v);
        }
        for v in [&t.mean, &t.std, &t.calibration, &t.dropout, &t.weight].into_iter().flatten() {
            out.mark(v);
        }
        for v in [&t.product].into_iter().flatten() {
            out.mark(v);
        }
        for v in [&t.tower].into_iter().flatten() {
            out.mark(v);
        }
        if let Some(v) = &t.positive {
            out.mark(v);
        }
        if let Some(v) = &t.classes {
            out.mark(v);
        }
        write!(out, "  task {}: {}(", n(t.name.get_ref()), n(t.kind.get_ref()))?;
        let mut parts = Vec::new();
        if let Some(l) = &t.label {
            let mut label = format!("label = {}", q(l.get_ref()));
            match t.positive.as_ref().map(|p| p.get_ref()) {
                Some(crate::spec::Positive::One(p)) => label += &format!(" == {}", q(p)),
                Some(crate::spec::Positive::Any(ps)) => {
                    let items: Vec<String> = ps.iter().map(|p| q(p)).collect();
                    label += &format!(" == [{}]", items.join(", "));
                }
                None => {}
            }
            parts.push(label);
        }
        if let Some(w) = &t.only_where {
            parts.push(format!("only_where = {}", q(w.get_ref())));
        }
        if let Some(c) = &t.classes {
            let cs: Vec<String> = c.get_ref().iter().map(|x| q(x)).collect();
            parts.push(format!("classes = [{}]", cs.join(", ")));
        }
        if let Some(x) = &t.transform {
            parts.push(format!("transform = {}", n(x.get_ref())));
        }
        if let Some(x) = &t.mean {
            parts.push(format!("mean = {}", num(*x.get_ref())));
        }
        if let Some(x) = &t.std {
            parts.push(format!("std = {}", num(*x.get_ref())));
        }
        if let Some(x) = &t.transfer_from {
            parts.push(format!("transfer_from = {}", q(x.get_ref())));
        }
        if let Some(x) = &t.calibration {
            parts.push(format!("calibration = {}", num(*x.get_ref())));
        }
        write!(out, "{})", parts.join(", "))?;
        if let Some(p) = &t.product {
            let names: Vec<String> = p.get_ref().iter().map(|x| n(x.get_ref())).collect();
            write!(out, " product({})", names.join(", "))?;
        }
        if let Some(i) = &t.input {
            write!(out, " input {}", n(i.get_ref()))?;
        }
        if let Some(tw) = &t.tower {
            write!(out, " tower {}", ints(tw.get_ref()))?;
        }
        if let Some(a) = &t.activation {
            write!(out, " activation {}", n(a.get_ref()))?;
        }
        if let Some(d) = &t.dropout {
            write!(out, " dropout {}", num(*d.get_ref()))?;
        }
        if let Some(w) = &t.weight {
            write!(out, " weight {}", num(*w.get_ref()))?;
        }
        writeln!(out)?;
    }
    let t = &s.train;
    let td = TrainSection::default();
    let mut a: Vec<Arg> = Vec::new();
    for (k, v, dv) in [
        ("lr", &t.lr, &td.lr),
        ("beta1", &t.beta1, &td.beta1),
        ("beta2", &t.beta2, &td.beta2),
        ("eps", &t.eps, &td.eps),
        ("weight_decay", &t.weight_decay, &td.weight_decay),
    ] {
        if keep(v, dv) {
            a.push(sp_arg(k, v, |x| num(*x)));
        }
    }
    writeln!(out)?;
    let optional = [&t.select, &t.loss_balance].into_iter().flatten().map(|v| v.span());
    let more = [&t.patience].into_iter().flatten().map(|v| v.span());
    let decay = [t.lr_decay_rate.span(), t.lr_decay_epochs.span()];
    for v in [t.optimizer.span(), t.batch_size.span(), t.epochs.span(), t.seed.span()]
        .into_iter()
        .chain(decay)
        .chain(optional)
        .chain(more)
    {
        out.mark_span(v);
    }
    write!(out, "  train {{ {}", n(t.optimizer.get_ref()))?;
    args(out, &a)?;
    if keep(&t.lr_decay_rate, &td.lr_decay_rate) || keep(&t.lr_decay_epochs, &td.lr_decay_epochs) {
        write!(out, " decay(rate = {}, epochs = {})", num(*t.lr_decay_rate.get_ref()), t.lr_decay_epochs.get_ref())?;
    }
    write!(out, " batch {} epochs {} seed {}", t.batch_size.get_ref(), t.epochs.get_ref(), t.seed.get_ref())?;
    if let Some(sel) = &t.select {
        write!(out, " select {}", q(sel.get_ref()))?;
    }
    if let Some(p) = &t.patience {
        write!(out, " patience {}", p.get_ref())?;
    }
    if let Some(b) = &t.loss_balance {
        let mut a: Vec<Arg> = Vec::new();
        if let Some(x) = &t.gradnorm_alpha {
            a.push(sp_arg("alpha", x, |x| num(*x)));
        }
        if let Some(x) = &t.dwa_temperature {
            a.push(sp_arg("temperature", x, |x| num(*x)));
        }
        write!(out, " balance {}", n(b.get_ref()))?;
        args(out, &a)?;
    }
    writeln!(out, " }}")?;
    writeln!(out, "}}")
}
