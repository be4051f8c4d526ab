//! Lowering of layers: expert groups, gates and their settings, the output stream (from
//! `ir::plan_layer`).

use super::*;

impl Lower {
    pub(super) fn lower_layer(
        &mut self,
        l: &spec::LayerSpec,
        name: String,
        input: Stream,
        tasks: &[spec::TaskSpec],
        next_is_cgc: bool,
    ) -> Layer {
        let n_tasks = tasks.len().max(1);
        // An unknown kind is reported once; the layer is then read as what its keys
        // suggest (experts: gated), so that no second error follows from the first.
        let kind = match self.word("layer kind", &l.kind, LayerKind::NAMES).and_then(LayerKind::parse) {
            Some(k) => k,
            None if l.task_experts.is_some() => LayerKind::Cgc,
            None if l.experts.is_some() => LayerKind::Mmoe,
            None => LayerKind::SharedBottom,
        };
        let count = match (kind, &l.experts) {
            (LayerKind::SharedBottom, Some(e)) => {
                self.errors.push(LowerError::GateOnSharedBottom { layer: name.clone(), span: e.span() });
                1
            }
            (LayerKind::SharedBottom, None) => 1,
            (_, Some(e)) => self.count("experts", e, MAX_EXPERTS),
            (_, None) => DEFAULT_EXPERTS,
        };
        if matches!(kind, LayerKind::Moe | LayerKind::Mmoe) && count == 1 {
            let span = l.experts.as_ref().map_or_else(|| l.kind.span(), |e| e.span());
            self.warnings.push(LowerWarning::OneExpert { layer: name.clone(), span });
        }
        let units = self.units("expert units", l.units.get_ref());
        if units.is_empty() {
            self.errors.push(LowerError::OutOfRange {
                what: "units",
                found: "[]".into(),
                expected: "at least one layer of units".into(),
                span: l.units.span(),
            });
        }
        let mut dims = vec![input.width()];
        dims.extend(&units);
        let activation = self.activation(&l.activation);
        let dropout = self.dropout(&l.dropout);
        let cross = l.cross_layers.as_ref().map_or(0, |c| self.count("cross_layers", c, MAX_CROSS_LAYERS));
        let group = |name: String, owner: ExpertOwner, count: usize| ExpertGroup {
            name,
            owner,
            count,
            cross,
            dims: dims.clone(),
            activation,
            dropout,
        };
        let task_name = |t: usize| tasks.get(t).map_or("task", |t| t.name.get_ref().as_str()).to_string();
        let mut groups = vec![group(format!("{name}.experts"), ExpertOwner::Shared, count)];
        let d_in = input.width();
        let gate = |name: String, owner: GateOwner, members: Vec<usize>, groups: &[ExpertGroup]| Gate {
            name,
            owner,
            d_in,
            experts: members.iter().map(|&g| groups[g].count).sum(),
            groups: members,
        };
        let gates = match kind {
            LayerKind::SharedBottom => Vec::new(),
            LayerKind::Moe => vec![gate(format!("{name}.gate"), GateOwner::AllTasks, vec![0], &groups)],
            LayerKind::Mmoe => (0..n_tasks)
                .map(|t| gate(format!("{name}.gate.{}", task_name(t)), GateOwner::Task(TaskId(t)), vec![0], &groups))
                .collect(),
            LayerKind::Cgc => {
                let per_task = self.task_expert_counts(l, tasks);
                let mut own = vec![None; n_tasks];
                for (t, &c) in per_task.iter().enumerate().filter(|(_, &c)| c > 0) {
                    own[t] = Some(groups.len());
                    groups.push(group(format!("{name}.experts.{}", task_name(t)), ExpertOwner::Task(TaskId(t)), c));
                }
                let mut gates: Vec<Gate> = (0..n_tasks)
                    .map(|t| {
                        let members = own[t].into_iter().chain([0]).collect();
                        gate(format!("{name}.gate.{}", task_name(t)), GateOwner::Task(TaskId(t)), members, &groups)
                    })
                    .collect();
                if next_is_cgc {
                    let all = (0..groups.len()).collect();
                    gates.push(gate(format!("{name}.shared_gate"), GateOwner::Shared, all, &groups));
                }
                gates
            }
        };
        if kind != LayerKind::Cgc && l.task_experts.is_some() {
            let span = l.task_experts.as_ref().map_or_else(|| l.kind.span(), |t| t.span());
            self.errors.push(LowerError::NotAllowed {
                key: "task_experts",
                context: "a layer other than `cgc`",
                span,
                help: Some("task-specific experts belong to `cgc` layers (CGC / PLE)".into()),
            });
        }
        let d_out = *dims.last().unwrap_or(&1);
        let output = match plan_layer(kind, input, &groups, &gates, n_tasks) {
            Ok(plan) => plan.output_stream(d_out),
            Err(PlanError::NoSharedSlot) => {
                self.errors.push(LowerError::NoSharedSlot { layer: name.clone(), span: l.kind.span() });
                Stream::PerTask { width: d_out }
            }
        };
        let gating = self.lower_gating(l, kind, &gates);
        Layer { name, kind, input, output, gating, groups, gates }
    }

    /// Temperature, top-k, noise and the balance loss of a layer's gates.
    fn lower_gating(&mut self, l: &spec::LayerSpec, kind: LayerKind, gates: &[Gate]) -> Gating {
        let mut g = Gating::default();
        if kind == LayerKind::SharedBottom {
            self.not_allowed(
                "a shared_bottom layer",
                Some("gate settings apply to moe, mmoe and cgc layers"),
                &[
                    ("temperature", l.temperature.as_ref().map(|v| v.span())),
                    ("top_k", l.top_k.as_ref().map(|v| v.span())),
                    ("noise", l.noise.as_ref().map(|v| v.span())),
                    ("balance", l.balance.as_ref().map(|v| v.span())),
                ],
            );
            return g;
        }
        if let Some(t) = &l.temperature {
            let x = *t.get_ref();
            self.range("temperature", x.is_finite() && x > 0.0, x, "a positive number", t.span());
            g.temperature = if x.is_finite() && x > 0.0 { x as f32 } else { 1.0 };
        }
        if let Some(k) = &l.top_k {
            // Every gate must have more than k experts to choose from.
            let fewest = gates.iter().map(|g| g.experts).min().unwrap_or(0);
            let x = *k.get_ref();
            let ok = x >= 1 && (x as usize) < fewest.max(1);
            self.range(
                "top_k",
                ok,
                x,
                format!(
                    "between 1 and {} (fewer than the {fewest} experts of the smallest gate)",
                    fewest.saturating_sub(1)
                ),
                k.span(),
            );
            g.top_k = ok.then_some(x as usize);
            g.noise = l.noise.as_ref().is_none_or(|n| *n.get_ref());
        } else if let Some(n) = &l.noise {
            self.errors.push(LowerError::NotAllowed {
                key: "noise",
                context: "a layer without top_k",
                span: n.span(),
                help: Some("noise belongs to noisy top-k gating: set top_k too".into()),
            });
        }
        if let Some(b) = &l.balance {
            let x = *b.get_ref();
            self.range("balance", x.is_finite() && x >= 0.0, x, "a number >= 0", b.span());
            g.balance = x.max(0.0) as f32;
        }
        g
    }

    /// Task-specific expert counts of a `cgc` layer, one per task.
    fn task_expert_counts(&mut self, l: &spec::LayerSpec, tasks: &[spec::TaskSpec]) -> Vec<usize> {
        let n_tasks = tasks.len().max(1);
        let Some(te) = &l.task_experts else { return vec![DEFAULT_TASK_EXPERTS; n_tasks] };
        match te.get_ref() {
            spec::TaskExperts::Each(n) => {
                self.range("task_experts", *n <= MAX_EXPERTS, n, format!("at most {MAX_EXPERTS}"), te.span());
                vec![(*n).min(MAX_EXPERTS) as usize; n_tasks]
            }
            spec::TaskExperts::Per(map) => {
                for (k, n) in map {
                    if !tasks.iter().any(|t| t.name.get_ref() == k) {
                        self.errors.push(LowerError::UnknownName {
                            what: "task",
                            name: k.clone(),
                            span: te.span(),
                            help: did_you_mean(k, tasks.iter().map(|t| t.name.get_ref().as_str())),
                        });
                    }
                    self.range("task_experts", *n <= MAX_EXPERTS, n, format!("at most {MAX_EXPERTS}"), te.span());
                }
                (0..n_tasks)
                    .map(|t| {
                        let name = tasks.get(t).map(|t| t.name.get_ref().clone()).unwrap_or_default();
                        map.get(&name).map_or(0, |&n| n.min(MAX_EXPERTS) as usize)
                    })
                    .collect()
            }
        }
    }
}
