//! The IR's stable text form: one line per node with shapes and parameter counts.
//! Snapshots test this text, and bundles store it to detect a mismatched spec.

use std::fmt;

use super::*;

fn mlp(dims: &[usize]) -> String {
    let dims: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("Mlp[{}]", dims.join(" -> "))
}

fn dropout(rate: f32) -> String {
    if rate > 0.0 {
        format!(" dropout {rate}")
    } else {
        String::new()
    }
}

fn stream(s: &Stream) -> String {
    match s {
        Stream::Shared { width } => format!("shared[{width}]"),
        Stream::PerTask { width } => format!("per_task[{width}]"),
        Stream::PerTaskShared { width } => format!("per_task+shared[{width}]"),
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "model {}", self.name)?;
        for feat in &self.features {
            match &feat.kind {
                FeatureKind::Categorical { encoding, dim, bag } => {
                    let enc = match encoding {
                        Encoding::Hash { buckets } => format!("hash({buckets})"),
                        Encoding::Vocab { values } => format!("vocab({} + oov)", values.len()),
                        Encoding::FitVocab { min_count, max_size } => format!(
                            "vocab(fitted on the training rows: min_count {min_count}{} + oov)",
                            max_size.map_or_else(String::new, |m| format!(", max_size {m}"))
                        ),
                        Encoding::Bucketize { boundaries } => format!(
                            "bucketize({} boundaries: {} buckets + missing)",
                            boundaries.len(),
                            boundaries.len() + 1
                        ),
                        Encoding::FitBuckets { buckets } => {
                            format!("bucketize({buckets} quantile buckets fitted on the training rows + missing)")
                        }
                    };
                    let (enc, params) = match (feat.shares, encoding) {
                        (Some(owner), _) => {
                            let of = &self.features[owner.0].name;
                            (format!("{enc}, the table of {of}"), format!("0 (the table of {of})"))
                        }
                        (None, Encoding::FitVocab { .. }) => (enc, format!("{dim} per value")),
                        (None, Encoding::FitBuckets { .. }) => (enc, format!("{dim} per bucket")),
                        (None, _) => (enc, (encoding.rows() * dim).to_string()),
                    };
                    let bag = bag.as_ref().map_or_else(String::new, |b| {
                        format!(
                            " bag(max_len {}, {} pooling, split on {:?}{})",
                            b.max_len,
                            b.pooling.as_str(),
                            b.separator,
                            b.weights.as_ref().map_or_else(String::new, |w| format!(", weights <- {w:?}"))
                        )
                    });
                    writeln!(
                        f,
                        "  feature {}: categorical {enc}{bag} <- {:?} -> embed[{dim}]  params {params}",
                        feat.name, feat.column
                    )?;
                }
                FeatureKind::Dense { width, transform, fill } => {
                    let t = match transform {
                        Transform::None => "none".to_string(),
                        Transform::Log1p => "log1p".to_string(),
                        Transform::ZScore { mean, .. } if mean.is_nan() => {
                            "zscore(fitted on the training rows)".to_string()
                        }
                        Transform::ZScore { mean, std } => format!("zscore(mean={mean}, std={std})"),
                        Transform::MinMax { min, .. } if min.is_nan() => {
                            "minmax(fitted on the training rows)".to_string()
                        }
                        Transform::MinMax { min, max } => format!("minmax(min={min}, max={max})"),
                    };
                    writeln!(f, "  feature {}: dense[{width}] {t} fill {fill} <- {:?}", feat.name, feat.column)?;
                }
            }
        }
        for c in &self.crosses {
            writeln!(
                f,
                "  cross {}: product({}, {}) -> [{}]",
                c.name,
                self.feature(c.a).name,
                self.feature(c.b).name,
                c.dim
            )?;
        }
        writeln!(f, "  concat -> [{}]", self.input_width)?;
        for l in &self.layers {
            writeln!(
                f,
                "  layer {}: {} {} -> {}  params {}",
                l.name,
                l.kind.as_str(),
                stream(&l.input),
                stream(&l.output),
                l.params()
            )?;
            for e in &l.groups {
                let owner = match e.owner {
                    ExpertOwner::Shared => "shared".to_string(),
                    ExpertOwner::Task(t) => format!("task {}", self.tasks[t.0].name),
                };
                writeln!(
                    f,
                    "    expert_group {}: {} x {} {}{} ({owner})  params {}",
                    e.name,
                    e.count,
                    if e.cross > 0 {
                        format!("Cross[{}] x {} -> {}", e.d_in(), e.cross, mlp(&e.dims))
                    } else {
                        mlp(&e.dims)
                    },
                    e.activation.as_str(),
                    dropout(e.dropout),
                    e.params()
                )?;
            }
            for g in &l.gates {
                let owner = match g.owner {
                    GateOwner::AllTasks => "all tasks".to_string(),
                    GateOwner::Task(t) => format!("task {}", self.tasks[t.0].name),
                    GateOwner::Shared => "shared slot".to_string(),
                };
                let over = if l.groups.len() > 1 {
                    let names: Vec<&str> = g.groups.iter().map(|&i| l.groups[i].name.as_str()).collect();
                    format!(" over {}", names.join(" + "))
                } else {
                    String::new()
                };
                writeln!(
                    f,
                    "    gate {}: softmax[{} -> {}]{over} ({owner})  params {}",
                    g.name,
                    g.d_in,
                    g.experts,
                    g.params()
                )?;
            }
            if !l.gating.is_default() {
                let g = &l.gating;
                let mut parts = vec![format!("temperature {}", g.temperature)];
                if let Some(k) = g.top_k {
                    parts.push(format!("top {k}{}", if g.noise { " noisy" } else { "" }));
                }
                if g.balance > 0.0 {
                    parts.push(format!("balance loss weight {}", g.balance));
                }
                writeln!(f, "    gating: {}", parts.join(", "))?;
            }
        }
        for t in &self.tasks {
            let head = match &t.head {
                Head::Binary => "binary".to_string(),
                Head::Regression { transform } => match transform {
                    LabelTransform::None => "regression".to_string(),
                    LabelTransform::Log1p => "regression(log1p)".to_string(),
                    LabelTransform::Standardize { mean, std } if mean.is_nan() => {
                        let _ = std;
                        "regression(standardize: fitted on the training labels)".to_string()
                    }
                    LabelTransform::Standardize { mean, std } => {
                        format!("regression(standardize mean={mean} std={std})")
                    }
                },
                Head::Multiclass { classes } if classes.is_empty() => {
                    "multiclass(classes from the training labels)".to_string()
                }
                Head::Multiclass { classes } => {
                    format!("multiclass({} classes: {})", classes.len(), classes.join(", "))
                }
            };
            let label = match &t.label {
                None => "no label".to_string(),
                Some(l) => {
                    let mut s = match l.positive.as_deref() {
                        Some([p]) => format!("label {:?} == {:?}", l.column, p),
                        Some(ps) => format!("label {:?} in {:?}", l.column, ps),
                        None => format!("label {:?}", l.column),
                    };
                    if let Some(w) = &l.only_where {
                        s += &format!(" only where {w:?}");
                    }
                    s
                }
            };
            writeln!(f, "  task {}: {head} {label} weight {}", t.name, t.loss_weight)?;
            match &t.output {
                TaskOutput::Tower { dims, activation, dropout: rate } => {
                    let (dims, act, rate) = (mlp(dims), activation.as_str(), dropout(*rate));
                    let from = t.input.map_or(String::new(), |i| format!(" <- {}", self.layers[i].name));
                    writeln!(f, "    tower {}: {dims} {act}{rate}{from}  params {}", t.name, t.tower_params())?;
                }
                TaskOutput::Product { factors: [a, b] } => {
                    writeln!(f, "    product {}: {} x {}", t.name, self.tasks[a.0].name, self.tasks[b.0].name)?;
                }
            }
            if let Some(tr) = t.transfer {
                let from = &self.tasks[tr.from.0].name;
                writeln!(f, "    transfer {from} -> {}: info + attention, calibration {}", t.name, tr.calibration)?;
            }
        }
        match self.balance {
            LossBalance::Fixed => {}
            LossBalance::Uncertainty => writeln!(f, "  loss balance: uncertainty (learned log-variance per task)")?,
            LossBalance::GradNorm { alpha } => writeln!(f, "  loss balance: gradnorm alpha {alpha}")?,
            LossBalance::Dwa { temperature } => writeln!(f, "  loss balance: dwa temperature {temperature}")?,
        }
        if self
            .features
            .iter()
            .any(|x| matches!(&x.kind, FeatureKind::Categorical { encoding, .. } if encoding.rows() == 0))
        {
            writeln!(f, "  params {} + the embeddings of what is fitted (vocabularies, buckets)", self.param_count())?;
        } else {
            writeln!(f, "  params {}", self.param_count())?;
        }
        writeln!(f, "  flops/sample {}", self.flops_per_sample())
    }
}
