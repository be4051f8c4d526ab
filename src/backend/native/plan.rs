//! What the native backend decides once per program, before any batch: which ops run
//! fused (`program::fuse`), and where each value lives in a [`super::Run`].
//!
//! In evaluation no value outlives its last reader, so values whose lives do not
//! overlap share one buffer (a greedy assignment in program order): a pass over the
//! bench shape keeps a handful of buffers, not one per op, and stays in cache. In
//! training every value keeps its own: the backward reads the forward's.

use std::sync::Arc;

use crate::program::{fuse, BufId, BufKind, Program, Unary};

pub(super) struct Plan {
    /// Per node: the activation its kernel applies and the buffer it then writes (the
    /// activation's); the activation's own node is skipped.
    pub epilogue: Vec<Option<(Unary, BufId)>>,
    /// Per node: run inside another node's kernel (an epilogue, a deferred gather).
    pub fused_away: Vec<bool>,
    /// Per buffer: the gather node that a concat runs in its own kernel.
    pub deferred: Vec<Option<usize>>,
    /// Per buffer: the index of the run's buffer that holds its value.
    pub slot: Arc<Vec<usize>>,
    pub slots: usize,
}

impl Plan {
    /// The buffer node `i` writes.
    pub fn target(&self, p: &Program, i: usize) -> BufId {
        self.epilogue[i].map_or(p.nodes[i].out, |(_, to)| to)
    }
}

pub(super) fn plan(p: &Program, training: bool) -> Plan {
    let (nodes, bufs) = (p.nodes.len(), p.bufs.len());
    let mut epilogue = vec![None; nodes];
    let mut fused_away = vec![false; nodes];
    for e in fuse::epilogues(p) {
        epilogue[e.producer] = Some((e.unary, p.nodes[e.activation].out));
        fused_away[e.activation] = true;
    }
    let mut deferred = vec![None; bufs];
    for g in fuse::gathers_into_concat(p) {
        deferred[p.nodes[g].out.0] = Some(g);
        fused_away[g] = true;
    }
    let mut plan = Plan { epilogue, fused_away, deferred, slot: Arc::new((0..bufs).collect()), slots: bufs };
    if !training {
        let (slot, slots) = share(p, &plan);
        plan.slot = Arc::new(slot);
        plan.slots = slots;
    }
    plan
}

/// Slots for an evaluation program: each value's slot is free again after its last
/// reader has run. Inputs (a mask filled with ones) and the values the program hands
/// out keep theirs to the end.
fn share(p: &Program, plan: &Plan) -> (Vec<usize>, usize) {
    const END: usize = usize::MAX;
    let mut last = vec![0usize; p.bufs.len()];
    for (i, n) in p.nodes.iter().enumerate().filter(|(i, _)| !plan.fused_away[*i]) {
        n.args.iter().for_each(|a| last[a.0] = last[a.0].max(i));
    }
    p.handed_out().for_each(|b| last[b.0] = END);
    let mut slot = vec![usize::MAX; p.bufs.len()];
    let mut count = 0;
    for (id, b) in p.bufs.iter().enumerate() {
        if matches!(b.kind, BufKind::Input(_)) {
            slot[id] = count;
            count += 1;
        }
    }
    let mut free: Vec<usize> = Vec::new();
    let mut dies: Vec<Vec<usize>> = vec![Vec::new(); p.nodes.len()];
    for i in (0..p.nodes.len()).filter(|&i| !plan.fused_away[i]) {
        let t = plan.target(p, i).0;
        slot[t] = free.pop().unwrap_or_else(|| {
            count += 1;
            count - 1
        });
        // A value no later op reads dies with its own node.
        if last[t] != END {
            dies[last[t].max(i)].push(slot[t]);
        }
        free.append(&mut dies[i]);
    }
    // Buffers never written (fused away, parameters) get a slot of their own that stays
    // empty, so that reading one is an empty value, never another's.
    for s in slot.iter_mut().filter(|s| **s == usize::MAX) {
        *s = count;
    }
    (slot, count + 1)
}
