//! The backward program, derived from the forward one: one vector-Jacobian step per op
//! that both a loss and a trainable parameter reach, in reverse order, with every
//! gradient buffer planned (written by the first step that reaches it, added to by the
//! later ones). Backends implement each op's VJP once; nothing here knows a model.
//!
//! A `gather` of an embedding table has no step: the table's gradient is the gathered
//! rows' gradient with their ids ([`ParamGrad::Rows`]), which the optimizer applies
//! row by row, so no table-sized gradient exists.

use std::collections::HashMap;
use std::fmt;

use super::{Buf, BufId, BufKind, DType, Op, Program, ProgramError};

/// One VJP: given the gradient of node `node`'s output, the gradients of its operands.
#[derive(Debug, Clone, PartialEq)]
pub struct GradStep {
    pub node: usize,
    /// The gradient of the node's output.
    pub dout: BufId,
    /// Per operand: its gradient buffer and whether this step adds to it (it was
    /// written by an earlier step) or writes it; None when no gradient flows there.
    pub dargs: Vec<Option<(BufId, bool)>>,
}

/// Where a parameter's gradient ends up.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamGrad {
    /// A dense gradient of the parameter's shape.
    Dense { param: BufId, grad: BufId },
    /// Gathered rows: `rows` (`[B, .., d]`) is the gradient of table rows `ids`. A
    /// table gathered twice (a shared table) has two.
    Rows { param: BufId, ids: BufId, rows: BufId },
}

/// The backward program of a training [`Program`].
#[derive(Debug, Clone, PartialEq)]
pub struct Backward {
    /// Gradient buffers; the i-th has id `BufId(forward.bufs.len() + i)`.
    pub bufs: Vec<Buf>,
    /// Per task loss (as [`Program::losses`]): the scalar seed buffer `dL/dloss_t`,
    /// which the trainer fills with the task's weight.
    pub seeds: Vec<BufId>,
    /// Per auxiliary loss ([`Program::aux_losses`]): its seed, always 1.
    pub aux_seeds: Vec<BufId>,
    pub steps: Vec<GradStep>,
    pub params: Vec<ParamGrad>,
    /// The gradient buffer of each forward buffer that has one.
    pub grad_of: HashMap<BufId, BufId>,
    first: usize,
}

impl Backward {
    /// A gradient buffer's declaration.
    pub fn buf(&self, id: BufId) -> &Buf {
        &self.bufs[id.0 - self.first]
    }
}

/// Which buffers a trainable parameter reaches through ops that pass gradients.
fn trainable(p: &Program) -> Vec<bool> {
    let mut t: Vec<bool> = p.bufs.iter().map(|b| b.kind == BufKind::Param).collect();
    for n in &p.nodes {
        let reach = n.op.grad_inputs(n.args.len());
        t[n.out.0] = n.args.iter().zip(&reach).any(|(a, &r)| r && t[a.0]);
    }
    t
}

/// The backward program of `p` (a training program with its losses).
pub fn derive(p: &Program) -> Result<Backward, ProgramError> {
    let trainable = trainable(p);
    let first = p.bufs.len();
    let mut b = Backward {
        bufs: Vec::new(),
        seeds: Vec::new(),
        aux_seeds: Vec::new(),
        steps: Vec::new(),
        params: Vec::new(),
        grad_of: HashMap::new(),
        first,
    };
    // The gradient buffer of forward buffer `of`: (id, whether it already holds a sum).
    let grad = |b: &mut Backward, of: BufId| -> (BufId, bool) {
        if let Some(&g) = b.grad_of.get(&of) {
            return (g, true);
        }
        let id = BufId(first + b.bufs.len());
        let src = p.buf(of);
        b.bufs.push(Buf {
            name: format!("d{}", p.label(of)),
            shape: src.shape.clone(),
            dtype: DType::F32,
            kind: BufKind::Value,
        });
        b.grad_of.insert(of, id);
        (id, false)
    };
    for l in &p.losses {
        let (seed, _) = grad(&mut b, l.loss);
        b.seeds.push(seed);
    }
    for &a in &p.aux_losses {
        let (seed, _) = grad(&mut b, a);
        b.aux_seeds.push(seed);
    }
    for (i, n) in p.nodes.iter().enumerate().rev() {
        let Some(&dout) = b.grad_of.get(&n.out) else { continue };
        if !trainable[n.out.0] {
            continue;
        }
        if n.op == Op::Gather {
            let table = n.args[0];
            if p.buf(table).kind != BufKind::Param {
                let what = "gathers from a computed buffer".to_string();
                return Err(ProgramError::Invalid { node: i, op: n.op.name(), what });
            }
            b.params.push(ParamGrad::Rows { param: table, ids: n.args[1], rows: dout });
            continue;
        }
        let reach = n.op.grad_inputs(n.args.len());
        let dargs = n.args.iter().zip(&reach).map(|(&a, &r)| (r && trainable[a.0]).then(|| grad(&mut b, a))).collect();
        b.steps.push(GradStep { node: i, dout, dargs });
    }
    // A gathered table has its rows above; any other parameter reached, a dense gradient.
    for (id, _) in p.params() {
        if let Some(&grad) = b.grad_of.get(&id) {
            b.params.push(ParamGrad::Dense { param: id, grad });
        }
    }
    Ok(b)
}

/// The backward program beside its forward one, for `--emit backward`.
pub struct Show<'a>(pub &'a Program, pub &'a Backward);

impl fmt::Display for Show<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (p, b) = (self.0, self.1);
        let label = |id: BufId| if id.0 >= b.first { b.buf(id).name.clone() } else { p.label(id) };
        writeln!(f, "backward {}", p.name)?;
        for (l, s) in p.losses.iter().zip(&b.seeds) {
            writeln!(f, "  seed  {} f32[]  <- weight of task {}", label(*s), p.outputs[l.task].task)?;
        }
        for s in &b.aux_seeds {
            writeln!(f, "  seed  {} f32[]  <- 1", label(*s))?;
        }
        for s in &b.steps {
            let n = &p.nodes[s.node];
            let args: Vec<String> = n.args.iter().map(|a| p.label(*a)).collect();
            let outs: Vec<String> = s
                .dargs
                .iter()
                .flatten()
                .map(|(g, add)| format!("{}{}", if *add { "+" } else { "" }, label(*g)))
                .collect();
            writeln!(f, "  {} = vjp {}({}) of {}", outs.join(", "), n.op.name(), args.join(", "), label(s.dout))?;
        }
        for g in &b.params {
            match g {
                ParamGrad::Dense { param, grad } => writeln!(f, "  grad {} = {}", p.label(*param), label(*grad))?,
                ParamGrad::Rows { param, ids, rows } => {
                    writeln!(f, "  grad {} = rows {} at {}", p.label(*param), label(*rows), p.label(*ids))?
                }
            }
        }
        Ok(())
    }
}
