//! Spec -> canonical DSL text (`multigate fmt --to mg`). Keys at their default value
//! are left out; everything else is written in a fixed order, so formatting is
//! idempotent and a TOML spec converts without loss.

use std::fmt::Write;

use super::*;

fn q(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A name as written in the DSL: bare when the grammar's `name` rule accepts it.
fn n(s: &str) -> String {
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

fn strs<'a>(v: impl Iterator<Item = &'a String>) -> String {
    format!("[{}]", v.map(|s| q(s)).collect::<Vec<_>>().join(", "))
}

/// Arguments `(k = v, ..)`, or nothing when empty. Long ones go one per line, and
/// long lists wrap.
fn args(items: &[(&str, String)]) -> String {
    if items.is_empty() {
        return String::new();
    }
    let flat = format!("({})", items.iter().map(|(k, v)| format!("{k} = {v}")).collect::<Vec<_>>().join(", "));
    if flat.len() <= 88 {
        return flat;
    }
    let mut out = String::from("(\n");
    for (k, v) in items {
        out.push_str(&format!("    {k} = {},\n", wrap_list(v)));
    }
    out.push_str("  )");
    out
}

/// Breaks a long `[a, b, ..]` over lines of about 90 characters.
fn wrap_list(v: &str) -> String {
    if v.len() <= 80 || !v.starts_with('[') {
        return v.to_string();
    }
    // Split on the separators between items (outside strings).
    let inner = &v[1..v.len() - 1];
    let mut items = Vec::new();
    let (mut start, mut in_string, mut escaped) = (0, false, false);
    for (i, c) in inner.char_indices() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if c == ',' {
            items.push(inner[start..i].trim());
            start = i + 1;
        }
    }
    items.push(inner[start..].trim());
    let mut out = String::from("[\n");
    let mut line = String::new();
    for it in items {
        if !line.is_empty() && line.len() + it.len() + 2 > 88 {
            out.push_str(&format!("      {}\n", line.trim_end()));
            line.clear();
        }
        line.push_str(it);
        line.push_str(", ");
    }
    if !line.is_empty() {
        out.push_str(&format!("      {}\n", line.trim_end()));
    }
    out.push_str("    ]");
    out
}

/// Writes a spec as DSL text.
pub fn to_dsl(spec: &Spec) -> String {
    let mut out = String::new();
    let _ = write_spec(&mut out, spec);
    out
}

fn write_spec(out: &mut String, s: &Spec) -> std::fmt::Result {
    writeln!(out, "model {} {{", n(s.model.name.get_ref()))?;
    let d = &s.data;
    let dd = DataSection::default();
    let mut a: Vec<(&str, String)> = Vec::new();
    if !d.train.is_empty() {
        a.push(("train", strs(d.train.iter().map(|x| x.get_ref()))));
    }
    if let Some(v) = &d.validation {
        a.push(("validation", q(v.get_ref())));
    }
    if let Some(v) = &d.test {
        a.push(("test", q(v.get_ref())));
    }
    if d.validation_fraction.get_ref() != dd.validation_fraction.get_ref() {
        a.push(("validation_fraction", num(*d.validation_fraction.get_ref())));
    }
    if d.test_fraction.get_ref() != dd.test_fraction.get_ref() {
        a.push(("test_fraction", num(*d.test_fraction.get_ref())));
    }
    if d.delimiter.get_ref() != dd.delimiter.get_ref() {
        a.push(("delimiter", q(d.delimiter.get_ref())));
    }
    if d.header != dd.header {
        a.push(("header", d.header.to_string()));
    }
    if !d.columns.is_empty() {
        a.push(("columns", strs(d.columns.iter().map(|x| x.get_ref()))));
    }
    if let Some(v) = &d.missing {
        a.push(("missing", q(v.get_ref())));
    }
    writeln!(out, "  data {}{}", n(d.source.get_ref()), args(&a))?;

    let y = &d.synthetic;
    let yd = SyntheticSpec::default();
    let mut a: Vec<(&str, String)> = Vec::new();
    macro_rules! diff {
        ($f:ident, $fmt:expr) => {
            if y.$f.get_ref() != yd.$f.get_ref() {
                a.push((stringify!($f), $fmt(*y.$f.get_ref())));
            }
        };
    }
    diff!(rows, |x: u64| x.to_string());
    if y.seed != yd.seed {
        a.push(("seed", y.seed.to_string()));
    }
    diff!(dim, |x: u64| x.to_string());
    diff!(correlation, num);
    diff!(scale, num);
    diff!(sin_terms, |x: u64| x.to_string());
    diff!(sin_sd, num);
    diff!(noise_sd, num);
    diff!(cardinality, |x: u64| x.to_string());
    if y.kind.get_ref() != yd.kind.get_ref() || !a.is_empty() {
        writeln!(out, "  synthetic {}{}", n(y.kind.get_ref()), args(&a))?;
    }
    if !s.features.is_empty() {
        writeln!(out)?;
    }
    for f in &s.features {
        let mut a: Vec<(&str, String)> = Vec::new();
        if let Some(v) = &f.hash_buckets {
            a.push(("hash", v.get_ref().to_string()));
        }
        if let Some(v) = &f.vocabulary {
            a.push(("vocab", strs(v.get_ref().iter())));
        }
        if let Some(v) = &f.width {
            a.push(("width", v.get_ref().to_string()));
        }
        if let Some(v) = &f.transform {
            a.push(("transform", n(v.get_ref())));
        }
        if let Some(v) = &f.mean {
            a.push(("mean", num(*v.get_ref())));
        }
        if let Some(v) = &f.std {
            a.push(("std", num(*v.get_ref())));
        }
        if let Some(v) = &f.fill {
            a.push(("fill", num(*v.get_ref())));
        }
        write!(out, "  feature {}: {}{}", n(f.name.get_ref()), n(f.kind.get_ref()), args(&a))?;
        if let Some(e) = &f.embedding_dim {
            write!(out, " embed {}", e.get_ref())?;
        }
        if let Some(c) = &f.column {
            write!(out, " column {}", q(c.get_ref()))?;
        }
        writeln!(out)?;
    }
    for c in &s.crosses {
        let names: Vec<String> = c.features.get_ref().iter().map(|x| n(x.get_ref())).collect();
        writeln!(out, "  cross {} = {}({})", n(c.name.get_ref()), n(c.op.get_ref()), names.join(", "))?;
    }
    if !s.layers.is_empty() {
        writeln!(out)?;
    }
    for l in &s.layers {
        write!(out, "  layer ")?;
        if let Some(name) = &l.name {
            write!(out, "{}: ", n(name.get_ref()))?;
        }
        write!(out, "{} {{ ", n(l.kind.get_ref()))?;
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
        if let Some(d) = &l.dropout {
            write!(out, " dropout {}", num(*d.get_ref()))?;
        }
        let mut gate: Vec<(&str, String)> = Vec::new();
        if let Some(t) = &l.temperature {
            gate.push(("temperature", num(*t.get_ref())));
        }
        if let Some(k) = &l.top_k {
            gate.push(("top_k", k.get_ref().to_string()));
        }
        if let Some(n) = &l.noise {
            gate.push(("noise", n.get_ref().to_string()));
        }
        if let Some(b) = &l.balance {
            gate.push(("balance", num(*b.get_ref())));
        }
        if !gate.is_empty() {
            write!(out, " gate{}", args(&gate))?;
        }
        writeln!(out, " }}")?;
    }
    if !s.tasks.is_empty() {
        writeln!(out)?;
    }
    for t in &s.tasks {
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
    let mut a: Vec<(&str, String)> = Vec::new();
    for (k, v, dv) in [
        ("lr", &t.lr, &td.lr),
        ("beta1", &t.beta1, &td.beta1),
        ("beta2", &t.beta2, &td.beta2),
        ("eps", &t.eps, &td.eps),
        ("weight_decay", &t.weight_decay, &td.weight_decay),
    ] {
        if v.get_ref() != dv.get_ref() {
            a.push((k, num(*v.get_ref())));
        }
    }
    writeln!(out)?;
    write!(out, "  train {{ {}{}", n(t.optimizer.get_ref()), args(&a))?;
    if t.lr_decay_rate.get_ref() != td.lr_decay_rate.get_ref()
        || t.lr_decay_epochs.get_ref() != td.lr_decay_epochs.get_ref()
    {
        write!(out, " decay(rate = {}, epochs = {})", num(*t.lr_decay_rate.get_ref()), t.lr_decay_epochs.get_ref())?;
    }
    write!(out, " batch {} epochs {} seed {}", t.batch_size.get_ref(), t.epochs.get_ref(), t.seed)?;
    if let Some(sel) = &t.select {
        write!(out, " select {}", q(sel.get_ref()))?;
    }
    if let Some(p) = &t.patience {
        write!(out, " patience {}", p.get_ref())?;
    }
    if let Some(b) = &t.loss_balance {
        let mut a: Vec<(&str, String)> = Vec::new();
        if let Some(x) = &t.gradnorm_alpha {
            a.push(("alpha", num(*x.get_ref())));
        }
        if let Some(x) = &t.dwa_temperature {
            a.push(("temperature", num(*x.get_ref())));
        }
        write!(out, " balance {}{}", n(b.get_ref()), args(&a))?;
    }
    writeln!(out, " }}")?;
    writeln!(out, "}}")
}
