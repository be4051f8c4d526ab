//! The program's stable text: one line per buffer declaration and per op, no handles
//! beyond `%i` (the i-th computed value, in order). `multigate compile --emit program`
//! prints it, and every spec in `models/` has it snapshotted.

use std::fmt;

use super::{BufKind, DType, Input, Mode, Op, PoolMode, Program, Reduction};

/// `0..4` for a run of consecutive indices, else `[0,2,5]`; several lists joined by ','.
fn indices(v: &[usize]) -> String {
    let run = v.windows(2).all(|w| w[1] == w[0] + 1);
    match (v.first(), v.last()) {
        (Some(a), Some(b)) if run && v.len() > 1 => format!("{a}..{}", b + 1),
        _ => format!("[{}]", v.iter().map(usize::to_string).collect::<Vec<_>>().join(",")),
    }
}

/// `2x8` when every segment has one width, else `[6,6,8]`.
fn segments(s: &[usize]) -> String {
    match s.first() {
        Some(&w) if s.iter().all(|&x| x == w) => format!("{}x{w}", s.len()),
        _ => format!("[{}]", s.iter().map(usize::to_string).collect::<Vec<_>>().join(",")),
    }
}

/// The attributes an op prints after its operands (empty when it has none).
fn attributes(op: &Op) -> String {
    match op {
        Op::Pool { mode: PoolMode::WeightedSum } => " weighted_sum".into(),
        Op::Pool { mode: PoolMode::Max } => " max".into(),
        Op::Slice { at, len } => format!(" cols={at}..{}", at + len),
        Op::Take { indices: i } => format!(" at={}", indices(i)),
        Op::Reshape { dims } => format!(" to={dims:?}").replace(' ', "").replacen("to=", " to=", 1),
        Op::Scale { factor } => format!(" by={factor}"),
        Op::Reduce { over: Reduction::SumLast } => " sum over=last".into(),
        Op::Reduce { over: Reduction::MeanBatch } => " mean over=batch".into(),
        Op::Expand { count } => format!(" count={count}"),
        Op::AddScalar { value } => format!(" value={value}"),
        Op::DropoutMask { rate, draw, .. } if draw.is_empty() => format!(" rate={rate}"),
        Op::DropoutMask { rate, draw, .. } => format!(" rate={rate} drawn={draw:?}").replace(", ", ","),
        Op::TopKMask { segments: s, k } => format!(" k={k} segments={}", segments(s)),
        Op::Softmax { segments: s } => format!(" segments={}", segments(s)),
        Op::Mix { sets } => format!(" sets={}", sets.iter().map(|s| indices(s)).collect::<Vec<_>>().join(",")),
        Op::Loss { kind } => format!(" {}", kind.name()),
        Op::Balance { segments: s, weight } => format!(" weight={weight} segments={}", segments(s)),
        Op::LoadBalance { segments: s, k, weight } => format!(" k={k} weight={weight} segments={}", segments(s)),
        _ => String::new(),
    }
}

fn dtype(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::U32 => "u32",
    }
}

fn input(i: Input) -> String {
    match i {
        Input::Ids(c) => format!("ids of categorical {c}"),
        Input::BagWeights(c) => format!("bag weights of categorical {c}"),
        Input::Dense => "dense values".into(),
        Input::Label(t) => format!("labels of task {t}"),
        Input::Mask(t) => format!("label mask of task {t}"),
    }
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.mode {
            Mode::Eval => "eval",
            Mode::Train => "train",
        };
        writeln!(f, "program {} {mode}  batch B", self.name)?;
        for b in &self.bufs {
            match b.kind {
                BufKind::Input(i) => writeln!(f, "  in    {} {}{}  <- {}", b.name, dtype(b.dtype), b.shape, input(i))?,
                BufKind::Param => writeln!(f, "  param {} {}{}", b.name, dtype(b.dtype), b.shape)?,
                BufKind::Value => {}
            }
        }
        for n in &self.nodes {
            let args: Vec<String> = n.args.iter().map(|a| self.label(*a)).collect();
            let out = self.buf(n.out);
            let sep = if args.is_empty() { "" } else { " " };
            writeln!(
                f,
                "  {} = {}{sep}{}{} : {}{}",
                self.label(n.out),
                n.op.name(),
                args.join(", "),
                attributes(&n.op),
                dtype(out.dtype),
                out.shape
            )?;
        }
        for o in &self.outputs {
            let link = match o.link {
                super::Link::Sigmoid => "sigmoid",
                super::Link::LogProb => "exp",
                super::Link::Softmax => "softmax",
                super::Link::Identity => "identity",
            };
            writeln!(f, "  out {} = {}  link {link}", o.task, self.label(o.raw))?;
        }
        for (i, g) in self.gates.iter().enumerate() {
            writeln!(f, "  gates {i} = {}  widths {}", self.label(g.probs), segments(&g.widths))?;
        }
        for l in &self.losses {
            writeln!(f, "  loss {} = {}", self.outputs[l.task].task, self.label(l.loss))?;
        }
        for a in &self.aux_losses {
            writeln!(f, "  aux loss = {}", self.label(*a))?;
        }
        Ok(())
    }
}

/// The program as a Graphviz graph: one box per op (its name, attributes and result
/// shape), one ellipse per input, an edge per value read; parameters are listed in the
/// op that reads them, not drawn.
pub fn render_dot(p: &Program) -> String {
    let mut out = format!("digraph \"{}\" {{\n  rankdir=TB;\n  node [fontname=\"monospace\", fontsize=10];\n", p.name);
    let node_of = |id: super::BufId| -> Option<String> {
        match p.buf(id).kind {
            BufKind::Input(_) => Some(format!("in{}", id.0)),
            BufKind::Value => p.nodes.iter().position(|n| n.out == id).map(|i| format!("op{i}")),
            BufKind::Param => None,
        }
    };
    for (id, _, b) in p.inputs() {
        out.push_str(&format!("  in{} [shape=ellipse, label=\"{} {}\"];\n", id.0, b.name, b.shape));
    }
    for (i, n) in p.nodes.iter().enumerate() {
        let params: Vec<String> =
            n.args.iter().filter(|a| p.buf(**a).kind == BufKind::Param).map(|a| p.label(*a)).collect();
        let with = if params.is_empty() { String::new() } else { format!("\\n{}", params.join("\\n")) };
        let label = format!("{} = {}{}{with}\\n{}", p.label(n.out), n.op.name(), attributes(&n.op), p.buf(n.out).shape);
        out.push_str(&format!("  op{i} [shape=box, label=\"{}\"];\n", label.replace('"', "'")));
        for a in &n.args {
            if let Some(src) = node_of(*a) {
                out.push_str(&format!("  {src} -> op{i};\n"));
            }
        }
    }
    for o in &p.outputs {
        if let Some(src) = node_of(o.raw) {
            out.push_str(&format!("  out_{0} [shape=ellipse, label=\"out {0}\"];\n  {src} -> out_{0};\n", o.task));
        }
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_lists_print_runs_compactly() {
        assert_eq!(indices(&[0, 1, 2, 3]), "0..4");
        assert_eq!(indices(&[2]), "[2]");
        assert_eq!(indices(&[0, 2, 5]), "[0,2,5]");
        assert_eq!(segments(&[8, 8]), "2x8");
        assert_eq!(segments(&[6, 6, 8]), "[6,6,8]");
    }
}
