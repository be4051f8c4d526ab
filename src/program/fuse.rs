//! Fusion: which ops of a program a backend may run as one kernel, found once here so
//! that every backend that fuses fuses the same way (and the rule is tested once).
//!
//! Two patterns so far. The activation epilogue: a `linear`, `expert_linear` or
//! `grouped_linear` whose result only a `relu`, `tanh` or `sigmoid` reads. The GEMM's
//! kernel applies the activation as it adds the bias, and the pre-activation value is
//! never kept: each of these three has a derivative that its output alone gives
//! ([`Unary::grad_from_output`]), and a linear op's VJP does not read its own result.
//! And the gather into a concat: a `gather` whose result only a `concat` reads is
//! not run by itself; the concat copies the table rows straight into its own (the
//! gathered value is never kept: a concat's VJP does not read its operands).
//! (The experts of a layer are already one op, `expert_linear`: the lowering never
//! emits a loop over experts, which `tests/suite/program.rs` checks.)

use super::{Op, Program, Unary};

/// A linear op and the activation run in its kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epilogue {
    /// The linear op's node.
    pub producer: usize,
    /// The activation's node: its result is the fused kernel's.
    pub activation: usize,
    pub unary: Unary,
}

impl Unary {
    /// Whether the derivative at x is a function of the output f(x) alone.
    pub fn grad_from_output(self) -> bool {
        matches!(self, Unary::Relu | Unary::Tanh | Unary::Sigmoid | Unary::Exp)
    }
}

/// How many nodes read each buffer, and which buffers the program hands out.
fn readers(p: &Program) -> Vec<usize> {
    let mut n = vec![0; p.bufs.len()];
    for node in &p.nodes {
        node.args.iter().for_each(|a| n[a.0] += 1);
    }
    p.handed_out().for_each(|b| n[b.0] += 1);
    n
}

/// Every activation epilogue of `p`, in program order.
pub fn epilogues(p: &Program) -> Vec<Epilogue> {
    let readers = readers(p);
    let mut producer_of = vec![None; p.bufs.len()];
    for (i, n) in p.nodes.iter().enumerate() {
        producer_of[n.out.0] = Some(i);
    }
    let mut out = Vec::new();
    for (j, n) in p.nodes.iter().enumerate() {
        let Op::Unary(u) = n.op else { continue };
        if !matches!(u, Unary::Relu | Unary::Tanh | Unary::Sigmoid) {
            continue;
        }
        let Some(i) = producer_of[n.args[0].0] else { continue };
        if matches!(p.nodes[i].op, Op::Linear | Op::ExpertLinear | Op::GroupedLinear) && readers[n.args[0].0] == 1 {
            out.push(Epilogue { producer: i, activation: j, unary: u });
        }
    }
    out
}

/// The `gather` nodes whose result only a `concat` reads (see the module docs).
pub fn gathers_into_concat(p: &Program) -> Vec<usize> {
    let readers = readers(p);
    let mut read_by_concat = vec![false; p.bufs.len()];
    for n in p.nodes.iter().filter(|n| n.op == Op::Concat) {
        n.args.iter().for_each(|a| read_by_concat[a.0] = true);
    }
    (0..p.nodes.len())
        .filter(|&i| {
            let n = &p.nodes[i];
            n.op == Op::Gather && read_by_concat[n.out.0] && readers[n.out.0] == 1
        })
        .collect()
}
