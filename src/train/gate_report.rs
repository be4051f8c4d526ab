//! What the gate diagnostics conclude: alarms for collapsed gates and dead experts, and
//! how alike the tasks' gates are. In: a [`GateUsage`]. Out: sentences and numbers for
//! the CLI and `metrics.json`.

use super::GateUsage;
use crate::ir::{Layer, LayerPlan};

/// Share of rows above which a gate that puts more than 0.99 on one expert is collapsed.
pub const COLLAPSE_ROWS: f64 = 0.5;
/// Mean weight under which an expert counts as unused by a gate.
pub const DEAD_WEIGHT: f64 = 0.01;

/// For each instance of a layer's plan (an expert on a slot), the index of its expert
/// among all the layer's experts, and the experts' names (`group.e{j}`).
pub fn expert_ids(l: &Layer, plan: &LayerPlan) -> (Vec<usize>, Vec<String>) {
    let offsets: Vec<usize> = l.groups.iter().scan(0, |acc, g| Some(std::mem::replace(acc, *acc + g.count))).collect();
    let names = l.groups.iter().flat_map(|g| (0..g.count).map(move |j| format!("{}.e{j}", g.name))).collect();
    let mut of = vec![0; plan.instances];
    for r in &plan.runs {
        let count = l.groups[r.group].count;
        for i in 0..r.slots.len() * count {
            of[r.first + i] = offsets[r.group] + i % count;
        }
    }
    (of, names)
}

impl GateUsage {
    /// Mean weight of every expert of the layer in gate `g` (0 where it does not mix it).
    fn on_experts(&self, g: usize) -> Vec<f64> {
        let mut v = vec![0.0; self.experts.len()];
        for (&e, &w) in self.mixes[g].iter().zip(&self.gates[g].1) {
            v[e] += w;
        }
        v
    }

    /// Collapsed gates and dead experts, as sentences.
    pub fn alarms(&self) -> Vec<String> {
        let mut out = Vec::new();
        for ((name, _), &p) in self.gates.iter().zip(&self.peaked) {
            if p > COLLAPSE_ROWS {
                out.push(format!(
                    "gate {name} has collapsed: it puts more than 0.99 on one expert for {:.0}% of rows",
                    100.0 * p
                ));
            }
        }
        let per_gate: Vec<Vec<f64>> = (0..self.gates.len()).map(|g| self.on_experts(g)).collect();
        for (e, name) in self.experts.iter().enumerate() {
            let users: Vec<f64> =
                (0..self.gates.len()).filter(|&g| self.mixes[g].contains(&e)).map(|g| per_gate[g][e]).collect();
            if !users.is_empty() && users.iter().all(|&w| w < DEAD_WEIGHT) {
                out.push(format!(
                    "expert {name} is dead: under {:.0}% of the weight of every gate that mixes it",
                    100.0 * DEAD_WEIGHT
                ));
            }
        }
        out
    }

    /// Cosine similarity of the mean weight vectors (over the layer's experts) of every
    /// pair of task gates: near 1, the tasks route alike; near 0, they use different experts.
    pub fn similarity(&self) -> Vec<(String, String, f64)> {
        let tasks: Vec<usize> = (0..self.gates.len()).filter(|&g| self.task_gate[g]).collect();
        let mut out = Vec::new();
        for (i, &a) in tasks.iter().enumerate() {
            for &b in &tasks[i + 1..] {
                let (x, y) = (self.on_experts(a), self.on_experts(b));
                let dot: f64 = x.iter().zip(&y).map(|(p, q)| p * q).sum();
                let norm = (x.iter().map(|p| p * p).sum::<f64>() * y.iter().map(|q| q * q).sum::<f64>()).sqrt();
                out.push((self.gates[a].0.clone(), self.gates[b].0.clone(), if norm > 0.0 { dot / norm } else { 0.0 }));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(gates: Vec<Vec<f64>>, peaked: Vec<f64>, mixes: Vec<Vec<usize>>, experts: usize) -> GateUsage {
        GateUsage {
            layer: "l".into(),
            gates: gates.into_iter().enumerate().map(|(i, w)| (format!("g{i}"), w)).collect(),
            effective_experts: Vec::new(),
            task_gate: vec![true; peaked.len()],
            peaked,
            mixes,
            experts: (0..experts).map(|e| format!("l.experts.e{e}")).collect(),
        }
    }

    #[test]
    fn a_collapsed_gate_and_a_dead_expert_raise_alarms() {
        // The article's (0.999, 0.001) gate on most rows, and expert 2 that no gate uses.
        let u = usage(
            vec![vec![0.995, 0.004, 0.001], vec![0.6, 0.395, 0.005]],
            vec![0.9, 0.0],
            vec![vec![0, 1, 2], vec![0, 1, 2]],
            3,
        );
        let alarms = u.alarms();
        assert_eq!(alarms.len(), 2, "{alarms:?}");
        assert!(alarms[0].contains("g0 has collapsed") && alarms[0].contains("90%"));
        assert!(alarms[1].contains("l.experts.e2 is dead"));
        // A healthy layer raises none.
        let ok = usage(vec![vec![0.5, 0.3, 0.2]], vec![0.1], vec![vec![0, 1, 2]], 3);
        assert!(ok.alarms().is_empty());
    }

    #[test]
    fn similarity_is_the_cosine_over_the_layers_experts() {
        // CGC-like: gate 0 mixes experts [2, 0], gate 1 mixes [3, 0] (expert 0 shared).
        let u = usage(vec![vec![0.5, 0.5], vec![0.5, 0.5]], vec![0.0, 0.0], vec![vec![2, 0], vec![3, 0]], 4);
        let s = u.similarity();
        assert_eq!(s.len(), 1);
        assert!((s[0].2 - 0.5).abs() < 1e-12, "{s:?}"); // dot 0.25, norms sqrt(0.5) each
    }
}
