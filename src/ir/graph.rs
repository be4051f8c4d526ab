//! The model as a picture: Graphviz `dot` or Mermaid text, from features through
//! embeddings, expert groups and gates to towers, with shapes, parameter counts and
//! FLOPs. Printed by `multigate graph`.

use std::fmt::Write;

use super::*;

/// Output format of [`render`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphFormat {
    Dot,
    Mermaid,
}

struct Node {
    id: String,
    label: String,
}

fn mlp(dims: &[usize]) -> String {
    dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("→")
}

/// Nodes and edges of the model graph.
fn build(m: &Model) -> (Vec<Node>, Vec<(String, String, String)>) {
    let mut nodes = Vec::new();
    let mut edges = Vec::new();
    let concat = "concat".to_string();
    for (i, f) in m.features.iter().enumerate() {
        let id = format!("f{i}");
        let label = match &f.kind {
            FeatureKind::Categorical { encoding, dim, bag } => {
                let enc = match encoding {
                    Encoding::Hash { buckets } => format!("hash {buckets}"),
                    Encoding::Vocab { values } => format!("vocab {}", values.len()),
                    Encoding::FitVocab { .. } => "vocab (fitted)".to_string(),
                    Encoding::Bucketize { boundaries } => format!("buckets {}", boundaries.len() + 1),
                    Encoding::FitBuckets { buckets } => format!("buckets {buckets} (fitted)"),
                };
                let pool =
                    bag.as_ref().map_or_else(String::new, |b| format!(" → {} of ≤{}", b.pooling.as_str(), b.max_len));
                format!("{}\\n{enc} → embed [{dim}]{pool}\\nparams {}", f.name, encoding.rows() * dim)
            }
            FeatureKind::Dense { width, .. } => format!("{}\\ndense [{width}]", f.name),
        };
        nodes.push(Node { id: id.clone(), label });
        edges.push((id, concat.clone(), format!("{}", f.width())));
    }
    for (i, c) in m.crosses.iter().enumerate() {
        let id = format!("c{i}");
        nodes.push(Node { id: id.clone(), label: format!("{}\\nproduct [{}]", c.name, c.dim) });
        edges.push((format!("f{}", c.a.0), id.clone(), format!("{}", c.dim)));
        edges.push((format!("f{}", c.b.0), id.clone(), format!("{}", c.dim)));
        edges.push((id, concat.clone(), format!("{}", c.dim)));
    }
    nodes.push(Node { id: concat.clone(), label: format!("concat [{}]", m.input_width) });
    let n_tasks = m.tasks.len();
    // The node feeding each slot of the current stream, after each layer.
    let mut heads: Vec<String> = vec![concat];
    let mut heads_after: Vec<Vec<String>> = Vec::new();
    for (li, l) in m.layers.iter().enumerate() {
        let plan = l.plan(n_tasks);
        let group_id = |gi: usize| format!("l{li}e{gi}");
        for run in &plan.runs {
            let e = &l.groups[run.group];
            let what =
                if l.kind == LayerKind::SharedBottom { "MLP".to_string() } else { format!("{} experts", e.count) };
            nodes.push(Node {
                id: group_id(run.group),
                label: format!(
                    "{} ({})\\n{what} [{}] {}\\nparams {}  flops {}",
                    e.name,
                    l.kind.as_str(),
                    mlp(&e.dims),
                    e.activation.as_str(),
                    e.params(),
                    run.slots.len() * e.flops_per_slot()
                ),
            });
            let sources: Vec<String> = run.slots.iter().filter_map(|&s| heads.get(s).cloned()).collect();
            for h in dedup(&sources) {
                edges.push((h, group_id(run.group), format!("{}", l.input.width())));
            }
        }
        if plan.mixes.is_empty() {
            // Ungated: each run's output is a slot.
            heads = plan.runs.iter().flat_map(|r| r.slots.iter().map(|_| group_id(r.group))).collect();
            heads_after.push(heads.clone());
            continue;
        }
        let gate_id = |gi: usize| format!("l{li}g{gi}");
        for (gi, g) in l.gates.iter().enumerate() {
            nodes.push(Node {
                id: gate_id(gi),
                label: format!("{}\\nsoftmax [{}→{}] + mix\\nparams {}", g.name, g.d_in, g.experts, g.params()),
            });
            for &grp in &g.groups {
                let e = &l.groups[grp];
                edges.push((group_id(grp), gate_id(gi), format!("{}x[{}]", e.count, e.d_out())));
            }
        }
        let mut gate_inputs: Vec<(String, String)> = Vec::new();
        for mix in &plan.mixes {
            if let Some(h) = heads.get(mix.input) {
                let edge = (h.clone(), gate_id(mix.gate));
                if !gate_inputs.contains(&edge) {
                    gate_inputs.push(edge);
                }
            }
        }
        for (h, g) in gate_inputs {
            edges.push((h, g, format!("{}", l.input.width())));
        }
        heads = plan.mixes.iter().map(|mix| gate_id(mix.gate)).collect();
        heads_after.push(heads.clone());
    }
    for (ti, t) in m.tasks.iter().enumerate() {
        let id = format!("t{ti}");
        match &t.output {
            TaskOutput::Tower { dims, activation, .. } => {
                nodes.push(Node {
                    id: id.clone(),
                    label: format!(
                        "{} ({})\\ntower [{}] {}\\nparams {}  flops {}",
                        t.name,
                        t.head.kind(),
                        mlp(dims),
                        activation.as_str(),
                        t.tower_params(),
                        t.tower_flops()
                    ),
                });
                let from = t.input.and_then(|i| heads_after.get(i)).unwrap_or(&heads);
                let stream = t.input.map_or(m.head_stream(), |i| m.layers[i].output);
                let src = from.get(stream.task_slot(TaskId(ti))).or(from.first()).cloned().unwrap_or_default();
                edges.push((src, id, format!("{}", dims[0])));
            }
            TaskOutput::Product { factors } => {
                nodes.push(Node {
                    id: id.clone(),
                    label: format!("{} ({})\\nproduct of probabilities", t.name, t.head.kind()),
                });
                for f in factors {
                    edges.push((format!("t{}", f.0), id.clone(), "p".to_string()));
                }
            }
        }
    }
    (nodes, edges)
}

fn dedup(v: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for x in v {
        if !out.contains(x) {
            out.push(x.clone());
        }
    }
    out
}

/// Renders the model graph.
pub fn render(m: &Model, format: GraphFormat) -> String {
    let (nodes, edges) = build(m);
    let mut out = String::new();
    let title = format!("{}: {} params, {} FLOPs/sample", m.name, m.param_count(), m.flops_per_sample());
    match format {
        GraphFormat::Dot => {
            let _ = writeln!(out, "digraph {:?} {{", m.name);
            let _ = writeln!(out, "  label={:?}; labelloc=t; rankdir=TB;", title);
            let _ = writeln!(out, "  node [shape=box, fontname=\"Helvetica\", fontsize=10];");
            for n in &nodes {
                let _ = writeln!(out, "  {} [label=\"{}\"];", n.id, n.label.replace('"', "'"));
            }
            for (a, b, l) in &edges {
                let _ = writeln!(out, "  {a} -> {b} [label=\"{l}\"];");
            }
            out.push_str("}\n");
        }
        GraphFormat::Mermaid => {
            let _ = writeln!(out, "---\ntitle: {title}\n---");
            out.push_str("flowchart TB\n");
            for n in &nodes {
                let _ = writeln!(out, "  {}[\"{}\"]", n.id, n.label.replace("\\n", "<br/>").replace('"', "'"));
            }
            for (a, b, l) in &edges {
                let _ = writeln!(out, "  {a} -->|{l}| {b}");
            }
        }
    }
    out
}
