//! Pairs -> [`Spec`]: the DSL's parse tree turned into the same spanned structure the
//! TOML front end builds. Every `expect` on a pair names the grammar rule that
//! guarantees it; key errors are collected, not stopped at.

use miette::SourceSpan;
use pest::iterators::Pair;

use super::super::*;
use super::Rule;
use crate::diag::did_you_mean;
use crate::source::Span;

/// The single value inside `key VALUE` (every such rule holds exactly one inner pair).
fn inner_of<'i>(p: Pair<'i, Rule>, key: &str) -> Pair<'i, Rule> {
    let span = p.as_span();
    p.into_inner().next().unwrap_or_else(|| panic!("grammar: `{key}` at {span:?} holds a value"))
}

fn span_of(p: &Pair<Rule>) -> Span {
    let s = p.as_span();
    s.start()..s.end()
}

fn sp_of<T>(p: &Pair<Rule>, v: T) -> Sp<T> {
    Sp::new(span_of(p), v)
}

fn miette_span(s: &Span) -> SourceSpan {
    (s.start, s.end - s.start).into()
}

/// A value in an argument list.
#[derive(Debug, Clone)]
enum Value {
    Str(String),
    Num(String),
    Bool(bool),
    Word(String),
    List(Vec<(Value, Span)>),
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn string_of(p: Pair<Rule>) -> String {
    // Grammar: `string = ${ "\"" ~ text ~ "\"" }`: one inner `text` pair.
    unescape(p.into_inner().next().map_or("", |t| t.as_str()))
}

fn value_of(p: Pair<Rule>) -> (Value, Span) {
    let span = span_of(&p);
    let v = match p.as_rule() {
        Rule::string => Value::Str(string_of(p)),
        Rule::number => Value::Num(p.as_str().to_string()),
        Rule::boolean => Value::Bool(p.as_str() == "true"),
        Rule::list => Value::List(p.into_inner().map(value_of).collect()),
        _ => Value::Word(p.as_str().to_string()),
    };
    (v, span)
}

/// Parsed `(key = value, ..)` with the keys not yet taken.
struct Args {
    items: Vec<(String, Span, Value, Span)>,
    context: &'static str,
}

pub(super) struct Builder {
    pub(super) errors: Vec<SpecError>,
}

impl Builder {
    fn args(&mut self, p: Option<Pair<Rule>>, context: &'static str) -> Args {
        self.args_of(p.into_iter().flat_map(|p| p.into_inner()), context)
    }

    /// Collects `argument` pairs (repeated keys are errors).
    fn args_of<'i>(&mut self, arguments: impl Iterator<Item = Pair<'i, Rule>>, context: &'static str) -> Args {
        let mut items: Vec<(String, Span, Value, Span)> = Vec::new();
        for arg in arguments {
            // Grammar: `argument = { name ~ "=" ~ value }`.
            let mut inner = arg.into_inner();
            let key = inner.next().expect("argument has a name");
            let (value, vspan) = value_of(inner.next().expect("argument has a value"));
            let kspan = span_of(&key);
            if let Some(first) = items.iter().find(|i| i.0 == key.as_str()) {
                self.errors.push(SpecError::Repeated {
                    key: key.as_str().to_string(),
                    first: miette_span(&first.1),
                    second: miette_span(&kspan),
                });
                continue;
            }
            items.push((key.as_str().to_string(), kspan, value, vspan));
        }
        Args { items, context }
    }

    /// Reports every key nobody took.
    fn finish(&mut self, args: Args, allowed: &[&str]) {
        for (key, span, _, _) in args.items {
            let help = did_you_mean(&key, allowed.iter().copied())
                .unwrap_or_else(|| format!("allowed keys: {}", allowed.join(", ")));
            self.errors.push(SpecError::UnknownKey { key, context: args.context, span: miette_span(&span), help });
        }
    }

    fn bad(&mut self, key: &str, expected: &'static str, span: &Span) {
        self.errors.push(SpecError::BadValue { key: key.to_string(), expected, span: miette_span(span) });
    }

    fn take(&mut self, args: &mut Args, key: &str) -> Option<(Value, Span)> {
        let i = args.items.iter().position(|i| i.0 == key)?;
        let (_, _, v, s) = args.items.remove(i);
        Some((v, s))
    }

    fn take_str(&mut self, args: &mut Args, key: &str) -> Option<Sp<String>> {
        match self.take(args, key)? {
            (Value::Str(s) | Value::Word(s), span) => Some(Sp::new(span, s)),
            (_, span) => {
                self.bad(key, "a string", &span);
                None
            }
        }
    }

    /// A number argument parsed as `T`; anything else is a `BadValue` saying `expected`.
    fn take_num<T: std::str::FromStr>(&mut self, args: &mut Args, key: &str, expected: &'static str) -> Option<Sp<T>> {
        let (value, span) = self.take(args, key)?;
        match value {
            Value::Num(n) => match n.parse::<T>() {
                Ok(x) => return Some(Sp::new(span, x)),
                Err(_) => self.bad(key, expected, &span),
            },
            _ => self.bad(key, expected, &span),
        }
        None
    }

    fn take_f64(&mut self, args: &mut Args, key: &str) -> Option<Sp<f64>> {
        self.take_num(args, key, "a number")
    }

    fn take_u64(&mut self, args: &mut Args, key: &str) -> Option<Sp<u64>> {
        self.take_num(args, key, "a whole number >= 0")
    }

    fn take_bool(&mut self, args: &mut Args, key: &str) -> Option<Sp<bool>> {
        match self.take(args, key)? {
            (Value::Bool(b), span) => Some(Sp::new(span, b)),
            (_, span) => {
                self.bad(key, "true or false", &span);
                None
            }
        }
    }

    fn take_strings(&mut self, args: &mut Args, key: &str) -> Option<Sp<Vec<Sp<String>>>> {
        match self.take(args, key)? {
            (Value::List(items), span) => {
                let mut out = Vec::new();
                for (v, s) in items {
                    match v {
                        Value::Str(x) | Value::Word(x) => out.push(Sp::new(s, x)),
                        _ => self.bad(key, "a list of strings", &s),
                    }
                }
                Some(Sp::new(span, out))
            }
            (Value::Str(x), span) => Some(Sp::new(span.clone(), vec![Sp::new(span, x)])),
            (_, span) => {
                self.bad(key, "a list of strings", &span);
                None
            }
        }
    }

    fn take_numbers(&mut self, args: &mut Args, key: &str) -> Option<Sp<Vec<f64>>> {
        match self.take(args, key)? {
            (Value::List(items), span) => {
                let mut out = Vec::new();
                for (v, s) in items {
                    match v {
                        Value::Num(x) => match x.parse::<f64>() {
                            Ok(x) => out.push(x),
                            Err(_) => self.bad(key, "a list of numbers", &s),
                        },
                        _ => self.bad(key, "a list of numbers", &s),
                    }
                }
                Some(Sp::new(span, out))
            }
            (_, span) => {
                self.bad(key, "a list of numbers", &span);
                None
            }
        }
    }

    fn integer(&mut self, p: Pair<Rule>, what: &'static str) -> Sp<u64> {
        match p.as_str().parse::<u64>() {
            Ok(x) => sp_of(&p, x),
            Err(_) => {
                self.bad(what, "a whole number that fits in 64 bits", &span_of(&p));
                sp_of(&p, 0)
            }
        }
    }

    fn integer_list(&mut self, p: Pair<Rule>, what: &'static str) -> Sp<Vec<Sp<u64>>> {
        let span = span_of(&p);
        let items = p.into_inner().map(|i| self.integer(i, what)).collect();
        Sp::new(span, items)
    }

    fn number(&mut self, p: Pair<Rule>, what: &'static str) -> Sp<f64> {
        match p.as_str().parse::<f64>() {
            Ok(x) => sp_of(&p, x),
            Err(_) => {
                self.bad(what, "a number", &span_of(&p));
                sp_of(&p, 0.0)
            }
        }
    }

    /// Sets a word field (an activation, a layer name) from its pair, once.
    fn set_word(&mut self, slot: &mut Option<Sp<String>>, key: &str, p: Pair<Rule>) {
        let v = sp_of(&p, p.as_str().to_string());
        self.once(slot, key, v);
    }

    /// Sets a number field from its pair, once.
    fn set_number(&mut self, slot: &mut Option<Sp<f64>>, key: &'static str, p: Pair<Rule>) {
        let v = self.number(p, key);
        self.once(slot, key, v);
    }

    /// Sets an optional field once; a second occurrence is an error.
    fn once<T>(&mut self, slot: &mut Option<Sp<T>>, key: &str, value: Sp<T>) {
        if let Some(first) = slot {
            self.errors.push(SpecError::Repeated {
                key: key.into(),
                first: miette_span(&first.span()),
                second: miette_span(&value.span()),
            });
        } else {
            *slot = Some(value);
        }
    }

    pub(super) fn model(&mut self, p: Pair<Rule>) -> Spec {
        let mut inner = p.into_inner();
        // Grammar: `model = { "model" ~ name ~ "{" ~ declaration* ~ "}" }`.
        let name = inner.next().expect("model has a name");
        let mut spec = Spec {
            model: ModelSection { name: sp_of(&name, name.as_str().to_string()) },
            data: DataSection::default(),
            features: Vec::new(),
            crosses: Vec::new(),
            layers: Vec::new(),
            tasks: Vec::new(),
            train: TrainSection::default(),
        };
        let (mut seen_data, mut seen_synthetic, mut seen_train): (Option<Span>, Option<Span>, Option<Span>) =
            (None, None, None);
        for decl in inner {
            let span = span_of(&decl);
            let once = |b: &mut Builder, seen: &mut Option<Span>, key: &str| {
                if let Some(first) = seen {
                    b.errors.push(SpecError::Repeated {
                        key: key.into(),
                        first: miette_span(&(first.start..first.start + key.len())),
                        second: miette_span(&(span.start..span.start + key.len())),
                    });
                }
                *seen = Some(span.clone());
            };
            match decl.as_rule() {
                Rule::data => {
                    once(self, &mut seen_data, "data");
                    self.data(decl, &mut spec.data);
                }
                Rule::synthetic => {
                    once(self, &mut seen_synthetic, "synthetic");
                    self.synthetic(decl, &mut spec.data.synthetic);
                }
                Rule::feature => spec.features.push(self.feature(decl)),
                Rule::cross => spec.crosses.push(self.cross(decl)),
                Rule::layer => spec.layers.push(self.layer(decl)),
                Rule::task => spec.tasks.push(self.task(decl)),
                Rule::train => {
                    once(self, &mut seen_train, "train");
                    self.train(decl, &mut spec.train);
                }
                _ => {}
            }
        }
        spec
    }

    fn data(&mut self, p: Pair<Rule>, d: &mut DataSection) {
        let mut inner = p.into_inner();
        let source = inner.next().expect("data has a source word");
        d.source = sp_of(&source, source.as_str().to_string());
        let mut a = self.args(inner.next(), "data");
        if let Some(v) = self.take_strings(&mut a, "train") {
            d.train = v.into_inner();
        }
        d.validation = self.take_str(&mut a, "validation");
        d.test = self.take_str(&mut a, "test");
        if let Some(v) = self.take_f64(&mut a, "validation_fraction") {
            d.validation_fraction = v;
        }
        if let Some(v) = self.take_f64(&mut a, "test_fraction") {
            d.test_fraction = v;
        }
        if let Some(v) = self.take_str(&mut a, "delimiter") {
            d.delimiter = v;
        }
        if let Some(v) = self.take_bool(&mut a, "header") {
            d.header = v;
        }
        if let Some(v) = self.take_strings(&mut a, "columns") {
            d.columns = v.into_inner();
        }
        d.missing = self.take_str(&mut a, "missing");
        d.partition_date = self.take_str(&mut a, "partition_date");
        d.cur_date = self.take_str(&mut a, "cur_date");
        d.days = self.take_u64(&mut a, "days");
        d.bad_rows = self.take_str(&mut a, "bad_rows");
        d.max_bad_rows = self.take_u64(&mut a, "max_bad_rows");
        d.max_bad_fraction = self.take_f64(&mut a, "max_bad_fraction");
        d.stream = self.take_bool(&mut a, "stream");
        d.shuffle_buffer = self.take_u64(&mut a, "shuffle_buffer");
        self.finish(a, DATA_KEYS);
    }

    fn synthetic(&mut self, p: Pair<Rule>, s: &mut SyntheticSpec) {
        let mut inner = p.into_inner();
        let kind = inner.next().expect("synthetic has a generator word");
        s.kind = sp_of(&kind, kind.as_str().to_string());
        let mut a = self.args(inner.next(), "synthetic");
        macro_rules! set {
            ($field:ident, $take:ident) => {
                if let Some(v) = self.$take(&mut a, stringify!($field)) {
                    s.$field = v;
                }
            };
        }
        set!(rows, take_u64);
        if let Some(v) = self.take_u64(&mut a, "seed") {
            s.seed = v;
        }
        set!(dim, take_u64);
        set!(correlation, take_f64);
        set!(scale, take_f64);
        set!(sin_terms, take_u64);
        set!(sin_sd, take_f64);
        set!(noise_sd, take_f64);
        set!(cardinality, take_u64);
        self.finish(a, SYNTHETIC_KEYS);
    }

    fn feature(&mut self, p: Pair<Rule>) -> FeatureSpec {
        let mut inner = p.into_inner();
        // Grammar: `feature = { "feature" ~ name ~ also? ~ ":" ~ word ~ arguments? ~ feature_option* }`.
        let name = inner.next().expect("feature has a name");
        let mut kind = inner.next().expect("feature has a type word");
        let mut also = None;
        if kind.as_rule() == Rule::also {
            let span = span_of(&kind);
            let names = kind.into_inner().map(|n| sp_of(&n, n.as_str().to_string())).collect();
            also = Some(Sp::new(span, names));
            kind = inner.next().expect("feature has a type word");
        }
        let mut f = FeatureSpec {
            name: sp_of(&name, name.as_str().to_string()),
            also,
            kind: sp_of(&kind, kind.as_str().to_string()),
            column: None,
            hash_buckets: None,
            vocabulary: None,
            embedding_dim: None,
            width: None,
            transform: None,
            mean: None,
            std: None,
            min: None,
            max: None,
            fill: None,
            min_count: None,
            max_size: None,
            table: None,
            bucketize: None,
            boundaries: None,
            max_len: None,
            separator: None,
            pooling: None,
            weights: None,
        };
        for opt in inner {
            match opt.as_rule() {
                Rule::arguments => {
                    let mut a = self.args(Some(opt), "a feature");
                    f.hash_buckets = self.take_u64(&mut a, "hash");
                    f.vocabulary = self.take_strings(&mut a, "vocab").map(|v| {
                        let span = v.span();
                        Sp::new(span, v.into_inner().into_iter().map(Sp::into_inner).collect())
                    });
                    f.width = self.take_u64(&mut a, "width");
                    f.transform = self.take_str(&mut a, "transform");
                    f.mean = self.take_f64(&mut a, "mean");
                    f.std = self.take_f64(&mut a, "std");
                    f.min = self.take_f64(&mut a, "min");
                    f.max = self.take_f64(&mut a, "max");
                    f.fill = self.take_f64(&mut a, "fill");
                    f.min_count = self.take_u64(&mut a, "min_count");
                    f.max_size = self.take_u64(&mut a, "max_size");
                    f.table = self.take_str(&mut a, "table");
                    f.bucketize = self.take_u64(&mut a, "bucketize");
                    f.boundaries = self.take_numbers(&mut a, "boundaries");
                    f.max_len = self.take_u64(&mut a, "max_len");
                    f.separator = self.take_str(&mut a, "separator");
                    f.pooling = self.take_str(&mut a, "pooling");
                    f.weights = self.take_str(&mut a, "weights");
                    if let Some(c) = self.take_str(&mut a, "column") {
                        self.once(&mut f.column, "column", c);
                    }
                    if let Some(e) = self.take_u64(&mut a, "embed") {
                        self.once(&mut f.embedding_dim, "embed", e);
                    }
                    self.finish(a, FEATURE_KEYS);
                }
                Rule::embed => {
                    let n = self.integer(opt.into_inner().next().expect("embed has an integer"), "embed");
                    self.once(&mut f.embedding_dim, "embed", n);
                }
                Rule::column => {
                    let s = opt.into_inner().next().expect("column has a string");
                    let c = sp_of(&s, string_of(s.clone()));
                    self.once(&mut f.column, "column", c);
                }
                _ => {}
            }
        }
        f
    }

    fn cross(&mut self, p: Pair<Rule>) -> CrossSpec {
        let mut inner = p.into_inner();
        // Grammar: `cross = { "cross" ~ name ~ "=" ~ word ~ "(" ~ name ~ ("," ~ name)* ~ ")" }`.
        let name = inner.next().expect("cross has a name");
        let op = inner.next().expect("cross has an op");
        let names: Vec<Pair<Rule>> = inner.collect();
        let span = match (names.first(), names.last()) {
            (Some(a), Some(b)) => a.as_span().start()..b.as_span().end(),
            _ => span_of(&op),
        };
        CrossSpec {
            name: sp_of(&name, name.as_str().to_string()),
            op: sp_of(&op, op.as_str().to_string()),
            features: Sp::new(span, names.iter().map(|n| sp_of(n, n.as_str().to_string())).collect()),
        }
    }

    fn layer(&mut self, p: Pair<Rule>) -> LayerSpec {
        let span = span_of(&p);
        let parts: Vec<Pair<Rule>> = p.into_inner().collect();
        // Grammar: `layer = { "layer" ~ (name ~ ":")? ~ word ~ "{" ~ layer_option* ~ "}" }`:
        // a leading `name` pair only when the layer is named.
        let (name, rest) = match parts.first().map(|p| p.as_rule()) {
            Some(Rule::name) => (Some(&parts[0]), &parts[1..]),
            _ => (None, &parts[..]),
        };
        let kind = rest.first().expect("layer has a kind word");
        let mut l = LayerSpec {
            name: name.map(|n| sp_of(n, n.as_str().to_string())),
            kind: sp_of(kind, kind.as_str().to_string()),
            experts: None,
            task_experts: None,
            temperature: None,
            top_k: None,
            noise: None,
            balance: None,
            units: Sp::new(span.start..span.start + 5, Vec::new()),
            activation: None,
            cross_layers: None,
            dropout: None,
        };
        let mut units_seen: Option<Span> = None;
        for opt in rest[1..].iter().cloned() {
            match opt.as_rule() {
                // Grammar: `experts = { "experts" ~ integer ~ ("x" ~ integer_list ~ bare_activation?)? }`
                // and `units = { "units" ~ integer_list ~ bare_activation? }`.
                Rule::experts | Rule::units => {
                    for part in opt.into_inner() {
                        match part.as_rule() {
                            Rule::integer => {
                                let n = self.integer(part, "experts");
                                self.once(&mut l.experts, "experts", n);
                            }
                            Rule::integer_list => self.set_units(&mut l, &mut units_seen, part),
                            Rule::bare_activation => self.set_word(&mut l.activation, "activation", part),
                            _ => {}
                        }
                    }
                }
                Rule::activation => self.set_word(&mut l.activation, "activation", inner_of(opt, "activation")),
                // Grammar: `cross_layers = { "cross" ~ integer }`.
                Rule::cross_layers => {
                    let n = self.integer(inner_of(opt, "cross"), "cross");
                    self.once(&mut l.cross_layers, "cross", n);
                }
                Rule::dropout => self.set_number(&mut l.dropout, "dropout", inner_of(opt, "dropout")),
                Rule::gate => self.gate(opt, &mut l),
                Rule::task_experts => {
                    let v = self.task_experts(inner_of(opt, "task_experts"));
                    if let Some(v) = v {
                        self.once(&mut l.task_experts, "task_experts", v);
                    }
                }
                _ => {}
            }
        }
        if units_seen.is_none() {
            self.errors.push(SpecError::BadValue {
                key: "units".into(),
                expected: "given: `experts N x [units]` or `units [..]`",
                span: miette_span(&span_of(kind)),
            });
        }
        l
    }

    /// A layer's gate settings. Grammar: `gate = { "gate" ~ arguments }`.
    fn gate(&mut self, opt: Pair<Rule>, l: &mut LayerSpec) {
        let mut args = self.args(opt.into_inner().next(), "gate(..)");
        l.temperature = self.take_f64(&mut args, "temperature");
        l.top_k = self.take_u64(&mut args, "top_k");
        l.noise = match self.take(&mut args, "noise") {
            Some((Value::Bool(b), span)) => Some(Sp::new(span, b)),
            Some((_, span)) => {
                self.bad("noise", "true or false", &span);
                None
            }
            None => None,
        };
        l.balance = self.take_f64(&mut args, "balance");
        self.finish(args, &["temperature", "top_k", "noise", "balance"]);
    }

    /// Grammar: `task_experts = { "task_experts" ~ (integer | arguments) }`.
    fn task_experts(&mut self, p: Pair<Rule>) -> Option<Sp<TaskExperts>> {
        let span = span_of(&p);
        if p.as_rule() == Rule::integer {
            let n = self.integer(p, "task_experts");
            return Some(Sp::new(span, TaskExperts::Each(*n.get_ref())));
        }
        let mut args = self.args(Some(p), "task_experts(..)");
        let mut counts = std::collections::BTreeMap::new();
        let keys: Vec<String> = args.items.iter().map(|i| i.0.clone()).collect();
        for key in keys {
            if let Some(n) = self.take_u64(&mut args, &key) {
                counts.insert(key, *n.get_ref());
            }
        }
        Some(Sp::new(span, TaskExperts::Per(counts)))
    }

    fn set_units(&mut self, l: &mut LayerSpec, seen: &mut Option<Span>, p: Pair<Rule>) {
        let units = self.integer_list(p, "units");
        if let Some(first) = seen {
            self.errors.push(SpecError::Repeated {
                key: "units".into(),
                first: miette_span(first),
                second: miette_span(&units.span()),
            });
            return;
        }
        *seen = Some(units.span());
        l.units = units;
    }

    fn task(&mut self, p: Pair<Rule>) -> TaskSpec {
        let mut inner = p.into_inner();
        // Grammar: `task = { "task" ~ name ~ ":" ~ word ~ "(" ~ (task_arg ..)? ~ ")" ~ task_option* }`
        // with `task_arg = _{ label | argument }`.
        let name = inner.next().expect("task has a name");
        let kind = inner.next().expect("task has a kind word");
        let mut t = TaskSpec {
            name: sp_of(&name, name.as_str().to_string()),
            kind: sp_of(&kind, kind.as_str().to_string()),
            label: None,
            positive: None,
            only_where: None,
            classes: None,
            transform: None,
            mean: None,
            std: None,
            product: None,
            transfer_from: None,
            calibration: None,
            input: None,
            tower: None,
            activation: None,
            dropout: None,
            weight: None,
        };
        let mut arguments = Vec::new();
        for opt in inner {
            match opt.as_rule() {
                Rule::argument => arguments.push(opt),
                Rule::product => {
                    let span = span_of(&opt);
                    let names = opt.into_inner().map(|n| sp_of(&n, n.as_str().to_string())).collect();
                    self.once(&mut t.product, "product", Sp::new(span, names));
                }
                Rule::label => {
                    let mut it = opt.into_inner();
                    let col = it.next().expect("label has a column");
                    let column = match col.as_rule() {
                        Rule::string => string_of(col.clone()),
                        _ => col.as_str().to_string(),
                    };
                    t.label = Some(sp_of(&col, column));
                    // Grammar: `label = { "label" ~ "=" ~ (string | name) ~ ("==" ~ (string | list))? }`.
                    if let Some(pos) = it.next() {
                        let value = match pos.as_rule() {
                            Rule::list => {
                                let mut args = Args { items: Vec::new(), context: "a label" };
                                let (v, s) = value_of(pos.clone());
                                args.items.push(("positive".into(), s.clone(), v, s));
                                let values = self.take_strings(&mut args, "positive").map(|v| v.into_inner());
                                Positive::Any(values.unwrap_or_default().into_iter().map(|s| s.into_inner()).collect())
                            }
                            _ => Positive::One(string_of(pos.clone())),
                        };
                        t.positive = Some(sp_of(&pos, value));
                    }
                }
                Rule::tower => {
                    for part in opt.into_inner() {
                        match part.as_rule() {
                            Rule::integer_list => {
                                let u = self.integer_list(part, "tower");
                                self.once(&mut t.tower, "tower", u);
                            }
                            Rule::bare_activation => self.set_word(&mut t.activation, "activation", part),
                            _ => {}
                        }
                    }
                }
                Rule::weight => self.set_number(&mut t.weight, "weight", inner_of(opt, "weight")),
                Rule::dropout => self.set_number(&mut t.dropout, "dropout", inner_of(opt, "dropout")),
                Rule::input => self.set_word(&mut t.input, "input", inner_of(opt, "input")),
                Rule::activation => self.set_word(&mut t.activation, "activation", inner_of(opt, "activation")),
                _ => {}
            }
        }
        if !arguments.is_empty() {
            self.task_arguments(&mut t, arguments);
        }
        t
    }

    /// The `key = value` arguments of a task: only_where, classes, transform, mean, std,
    /// transfer_from, calibration.
    fn task_arguments(&mut self, t: &mut TaskSpec, arguments: Vec<Pair<Rule>>) {
        let mut args = self.args_of(arguments.into_iter(), "a task");
        t.only_where = self.take_str(&mut args, "only_where");
        t.transform = self.take_str(&mut args, "transform");
        t.mean = self.take_f64(&mut args, "mean");
        t.std = self.take_f64(&mut args, "std");
        t.transfer_from = self.take_str(&mut args, "transfer_from");
        t.calibration = self.take_f64(&mut args, "calibration");
        t.classes = self.take_strings(&mut args, "classes").map(|v| {
            let span = v.span();
            Sp::new(span, v.into_inner().into_iter().map(|s| s.into_inner()).collect())
        });
        self.finish(
            args,
            &["label", "only_where", "classes", "transform", "mean", "std", "transfer_from", "calibration"],
        );
    }

    fn train(&mut self, p: Pair<Rule>, t: &mut TrainSection) {
        let mut seen: Vec<(&'static str, Span)> = Vec::new();
        for opt in p.into_inner() {
            let key: &'static str = match opt.as_rule() {
                Rule::batch => "batch",
                Rule::epochs => "epochs",
                Rule::seed => "seed",
                Rule::decay => "decay",
                Rule::select => "select",
                Rule::patience => "patience",
                Rule::loss_balance => "balance",
                _ => "optimizer",
            };
            let span = span_of(&opt);
            if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
                self.errors.push(SpecError::Repeated {
                    key: key.into(),
                    first: miette_span(first),
                    second: miette_span(&span),
                });
                continue;
            }
            seen.push((key, span));
            match opt.as_rule() {
                Rule::batch => {
                    t.batch_size = self.integer(opt.into_inner().next().expect("batch has an integer"), "batch")
                }
                Rule::epochs => {
                    t.epochs = self.integer(opt.into_inner().next().expect("epochs has an integer"), "epochs")
                }
                Rule::seed => t.seed = self.integer(opt.into_inner().next().expect("seed has an integer"), "seed"),
                Rule::patience => {
                    t.patience =
                        Some(self.integer(opt.into_inner().next().expect("patience has an integer"), "patience"))
                }
                // Grammar: `loss_balance = { "balance" ~ word ~ arguments? }`.
                Rule::loss_balance => {
                    let mut inner = opt.into_inner();
                    let word = inner.next().expect("balance has a method word");
                    t.loss_balance = Some(sp_of(&word, word.as_str().to_string()));
                    let mut a = self.args(inner.next(), "balance");
                    t.gradnorm_alpha = self.take_f64(&mut a, "alpha");
                    t.dwa_temperature = self.take_f64(&mut a, "temperature");
                    self.finish(a, &["alpha", "temperature"]);
                }
                Rule::select => {
                    let v = opt.into_inner().next().expect("select has a value");
                    let text = match v.as_rule() {
                        Rule::string => string_of(v.clone()),
                        _ => v.as_str().to_string(),
                    };
                    t.select = Some(sp_of(&v, text));
                }
                Rule::decay => {
                    let mut a = self.args(opt.into_inner().next(), "decay");
                    if let Some(v) = self.take_f64(&mut a, "rate") {
                        t.lr_decay_rate = v;
                    }
                    if let Some(v) = self.take_u64(&mut a, "epochs") {
                        t.lr_decay_epochs = v;
                    }
                    self.finish(a, &["rate", "epochs"]);
                }
                _ => {
                    let mut inner = opt.into_inner();
                    let word = inner.next().expect("optimizer has a word");
                    t.optimizer = sp_of(&word, word.as_str().to_string());
                    let mut a = self.args(inner.next(), "the optimizer");
                    macro_rules! set {
                        ($field:ident) => {
                            if let Some(v) = self.take_f64(&mut a, stringify!($field)) {
                                t.$field = v;
                            }
                        };
                    }
                    set!(lr);
                    set!(beta1);
                    set!(beta2);
                    set!(eps);
                    set!(weight_decay);
                    self.finish(a, OPTIMIZER_KEYS);
                }
            }
        }
    }
}

const DATA_KEYS: &[&str] = &[
    "train",
    "validation",
    "test",
    "validation_fraction",
    "test_fraction",
    "delimiter",
    "header",
    "columns",
    "missing",
    "partition_date",
    "cur_date",
    "days",
    "bad_rows",
    "max_bad_rows",
    "max_bad_fraction",
    "stream",
    "shuffle_buffer",
];
const SYNTHETIC_KEYS: &[&str] =
    &["rows", "seed", "dim", "correlation", "scale", "sin_terms", "sin_sd", "noise_sd", "cardinality"];
const FEATURE_KEYS: &[&str] = &[
    "hash",
    "vocab",
    "width",
    "transform",
    "mean",
    "std",
    "min",
    "max",
    "fill",
    "min_count",
    "max_size",
    "table",
    "bucketize",
    "boundaries",
    "max_len",
    "separator",
    "pooling",
    "weights",
    "column",
    "embed",
];
const OPTIMIZER_KEYS: &[&str] = &["lr", "beta1", "beta2", "eps", "weight_decay"];
