//! Lowering of tasks: heads (kind, classes, label transform), labels, towers, ESMM
//! products, and how task losses are balanced.

use super::*;

impl Lower {
    /// `loss_balance` and its settings.
    pub(super) fn lower_balance(&mut self, t: &spec::TrainSection, layers: &[Layer]) -> LossBalance {
        let word = t.loss_balance.as_ref().and_then(|w| self.word("loss balance", w, LossBalance::NAMES));
        let setting = |cx: &mut Self, v: &Option<Sp<f64>>, key: &'static str, default: f64, ok: fn(f64) -> bool| {
            v.as_ref().map_or(default, |x| {
                cx.range(key, ok(*x.get_ref()), x.get_ref(), "a positive number", x.span());
                *x.get_ref()
            })
        };
        let balance = match word {
            Some("uncertainty") => LossBalance::Uncertainty,
            Some("gradnorm") => {
                if layers.is_empty() {
                    let span = t.loss_balance.as_ref().map_or(0..0, |w| w.span());
                    self.errors.push(LowerError::NotAllowed {
                        key: "loss_balance = \"gradnorm\"",
                        context: "a model without layers",
                        span,
                        help: Some("GradNorm balances gradients on the last shared layer; add one".into()),
                    });
                }
                LossBalance::GradNorm {
                    alpha: setting(self, &t.gradnorm_alpha, "gradnorm_alpha", 1.5, |x| x.is_finite() && x > 0.0),
                }
            }
            Some("dwa") => LossBalance::Dwa {
                temperature: setting(self, &t.dwa_temperature, "dwa_temperature", 2.0, |x| x.is_finite() && x > 0.0),
            },
            _ => LossBalance::Fixed,
        };
        for (key, v, applies) in [
            ("gradnorm_alpha", &t.gradnorm_alpha, matches!(balance, LossBalance::GradNorm { .. })),
            ("dwa_temperature", &t.dwa_temperature, matches!(balance, LossBalance::Dwa { .. })),
        ] {
            if let (Some(v), false) = (v, applies) {
                self.errors.push(LowerError::NotAllowed {
                    key,
                    context: "this loss_balance",
                    span: v.span(),
                    help: None,
                });
            }
        }
        balance
    }

    pub(super) fn lower_task(&mut self, t: &spec::TaskSpec, all: &[spec::TaskSpec], d_in: usize) -> Task {
        let head = self.lower_head(t);
        let product = t.product.as_ref().and_then(|p| self.lower_product(t, p, all));
        let is_factor = all
            .iter()
            .any(|o| o.product.as_ref().is_some_and(|p| p.get_ref().iter().any(|n| n.get_ref() == t.name.get_ref())));
        let label = self.lower_label(t, is_factor);
        if label.is_none() {
            let keys = [
                ("positive", t.positive.as_ref().map(|v| v.span())),
                ("only_where", t.only_where.as_ref().map(|v| v.span())),
            ];
            self.not_allowed("a task without a label", None, &keys);
        }
        if let Some(p) = &t.positive {
            let n = p.get_ref().values().len();
            self.range("positive", n > 0, "an empty list", "a value, or a non-empty list of values", p.span());
        }
        if let (Some(p), false) = (&t.positive, head == Head::Binary) {
            self.errors.push(LowerError::NotAllowed {
                key: "positive",
                context: "a task that is not binary",
                span: p.span(),
                help: Some("`positive` turns a column into a 0/1 label for binary tasks".into()),
            });
        }
        let loss_weight = t.weight.as_ref().map_or(1.0, |w| {
            let x = *w.get_ref();
            self.range("the loss weight", x.is_finite() && x >= 0.0, x, "a finite number >= 0", w.span());
            x
        }) as f32;
        if t.product.is_some() {
            self.not_allowed(
                "a product task",
                Some("a product task has no tower: its probability is its factors' product"),
                &[
                    ("tower", t.tower.as_ref().map(|v| v.span())),
                    ("activation", t.activation.as_ref().map(|v| v.span())),
                    ("dropout", t.dropout.as_ref().map(|v| v.span())),
                    ("input", t.input.as_ref().map(|v| v.span())),
                ],
            );
        }
        let output = match product {
            Some(factors) => TaskOutput::Product { factors },
            None => {
                let hidden = t.tower.as_ref().map_or_else(Vec::new, |u| self.units("tower units", u.get_ref()));
                let mut dims = vec![d_in];
                dims.extend(hidden);
                dims.push(head.width());
                TaskOutput::Tower {
                    dims,
                    activation: self.activation(&t.activation),
                    dropout: self.dropout(&t.dropout),
                }
            }
        };
        let transfer = self.lower_transfer(t, all);
        Task { name: t.name.get_ref().clone(), input: None, head, label, output, loss_weight, transfer }
    }

    /// A task's label column: required unless the task is a factor of a product.
    fn lower_label(&mut self, t: &spec::TaskSpec, is_factor: bool) -> Option<Label> {
        match &t.label {
            Some(l) => {
                if l.get_ref().is_empty() {
                    self.range("the label column", false, "\"\"", "a column name", l.span());
                }
                Some(Label {
                    column: l.get_ref().clone(),
                    positive: t.positive.as_ref().map(|p| p.get_ref().values()),
                    only_where: t.only_where.as_ref().map(|w| w.get_ref().clone()),
                })
            }
            None if is_factor => None,
            None => {
                self.errors.push(LowerError::Missing {
                    what: "`label`",
                    span: t.name.span(),
                    help: Some(format!(
                        "name the column task `{}` learns, e.g. label = \"{}\"",
                        t.name.get_ref(),
                        t.name.get_ref()
                    )),
                });
                None
            }
        }
    }

    /// AITM's `transfer_from` and `calibration`: an earlier binary task with a tower
    /// hidden layer, from a binary task with one; the calibration weight only with it.
    fn lower_transfer(&mut self, t: &spec::TaskSpec, all: &[spec::TaskSpec]) -> Option<Transfer> {
        let calibration = t.calibration.as_ref().map_or(0.0, |c| {
            let x = *c.get_ref();
            self.range("calibration", x.is_finite() && x >= 0.0, x, "a finite number >= 0", c.span());
            x
        }) as f32;
        let Some(from) = &t.transfer_from else {
            let help = Some("the calibration loss compares this task with the one it transfers from");
            self.not_allowed(
                "a task without transfer_from",
                help,
                &[("calibration", t.calibration.as_ref().map(|v| v.span()))],
            );
            return None;
        };
        let me = all.iter().position(|o| std::ptr::eq(o, t)).unwrap_or(all.len());
        let Some(i) = all.iter().position(|o| o.name.get_ref() == from.get_ref()) else {
            self.errors.push(LowerError::UnknownName {
                what: "task",
                name: from.get_ref().clone(),
                span: from.span(),
                help: did_you_mean(from.get_ref(), all.iter().map(|o| o.name.get_ref().as_str())),
            });
            return None;
        };
        let hidden =
            |o: &spec::TaskSpec| o.product.is_none() && o.tower.as_ref().is_some_and(|u| !u.get_ref().is_empty());
        let mine = if t.kind.get_ref() != "binary" {
            Some(("a task that is not binary", "AITM transfers between the binary steps of a funnel"))
        } else if !hidden(t) {
            Some((
                "a task without a tower hidden layer",
                "the attention replaces the tower's last hidden vector: give it `tower = [..]`",
            ))
        } else {
            None
        };
        if let Some((context, help)) = mine {
            self.errors.push(LowerError::NotAllowed {
                key: "transfer_from",
                context,
                span: from.span(),
                help: Some(help.into()),
            });
            return None;
        }
        let problem = if i == me {
            Some("is the task itself")
        } else if i > me {
            Some("comes after it (a funnel's earlier step is declared first)")
        } else if all[i].kind.get_ref() != "binary" {
            Some("is not binary")
        } else if !hidden(&all[i]) {
            Some("has no tower hidden layer (`tower = [..]`)")
        } else {
            None
        };
        if let Some(problem) = problem {
            let (task, from_name) = (t.name.get_ref().clone(), from.get_ref().clone());
            self.errors.push(LowerError::BadTransfer { task, from: from_name, problem, span: from.span() });
            return None;
        }
        Some(Transfer { from: TaskId(i), calibration })
    }

    /// The head of a task: its kind and the kind's settings (classes, label transform).
    fn lower_head(&mut self, t: &spec::TaskSpec) -> Head {
        let kind = self.word("task kind", &t.kind, Head::KINDS).unwrap_or("binary");
        if kind != "multiclass" {
            self.not_allowed(
                "a task that is not multiclass",
                None,
                &[("classes", t.classes.as_ref().map(|v| v.span()))],
            );
        }
        if kind != "regression" {
            let keys = [
                ("transform", t.transform.as_ref().map(|v| v.span())),
                ("mean", t.mean.as_ref().map(|v| v.span())),
                ("std", t.std.as_ref().map(|v| v.span())),
            ];
            self.not_allowed("a task that is not a regression", None, &keys);
        }
        match kind {
            "regression" => Head::Regression { transform: self.label_transform(t) },
            "multiclass" => {
                let classes = t.classes.as_ref().map_or_else(Vec::new, |c| c.get_ref().clone());
                if let Some(c) = &t.classes {
                    let mut uniq = std::collections::HashSet::new();
                    let dup = classes.iter().find(|x| !uniq.insert(*x));
                    let ok = classes.len() >= 2 && classes.len() as u64 <= MAX_UNITS && dup.is_none();
                    let found = dup.map_or_else(|| format!("only {}", classes.len()), |d| format!("repeating {d:?}"));
                    self.range("classes", ok, found, "at least 2 distinct classes", c.span());
                }
                Head::Multiclass { classes }
            }
            _ => Head::Binary,
        }
    }

    fn label_transform(&mut self, t: &spec::TaskSpec) -> LabelTransform {
        let word = t.transform.as_ref().and_then(|w| self.word("label transform", w, LabelTransform::NAMES));
        let transform = match word {
            Some("log1p") => LabelTransform::Log1p,
            Some("standardize") => match (&t.mean, &t.std) {
                (Some(m), Some(s)) => {
                    let (mean, std) = (*m.get_ref(), *s.get_ref());
                    self.range("mean", mean.is_finite(), mean, "a finite number", m.span());
                    self.range("std", std.is_finite() && std > 0.0, std, "a positive number", s.span());
                    LabelTransform::Standardize { mean, std }
                }
                // Fitted on the training labels before the model is built.
                _ => LabelTransform::Standardize { mean: f64::NAN, std: f64::NAN },
            },
            _ => LabelTransform::None,
        };
        if !matches!(transform, LabelTransform::Standardize { .. }) {
            let keys = [("mean", t.mean.as_ref().map(|v| v.span())), ("std", t.std.as_ref().map(|v| v.span()))];
            self.not_allowed("a task without transform = \"standardize\"", None, &keys);
        }
        transform
    }

    /// The factors of a product task: two other binary tasks with towers.
    fn lower_product(
        &mut self,
        t: &spec::TaskSpec,
        p: &Sp<Vec<Sp<String>>>,
        all: &[spec::TaskSpec],
    ) -> Option<[TaskId; 2]> {
        let names = p.get_ref();
        if names.len() != 2 {
            self.range("the number of factors", false, names.len(), "exactly 2", p.span());
            return None;
        }
        if t.kind.get_ref() != "binary" {
            self.errors.push(LowerError::NotAllowed {
                key: "product",
                context: "a task that is not binary",
                span: p.span(),
                help: Some("a product multiplies probabilities: make the task binary".into()),
            });
        }
        let mut ids = Vec::new();
        for n in names {
            let problem = match all.iter().position(|o| o.name.get_ref() == n.get_ref()) {
                None => {
                    self.errors.push(LowerError::UnknownName {
                        what: "task",
                        name: n.get_ref().clone(),
                        span: n.span(),
                        help: did_you_mean(n.get_ref(), all.iter().map(|o| o.name.get_ref().as_str())),
                    });
                    continue;
                }
                Some(_) if n.get_ref() == t.name.get_ref() => Some("is the product task itself"),
                Some(i) if all[i].product.is_some() => Some("is itself a product"),
                Some(i) if all[i].kind.get_ref() != "binary" => Some("is not binary"),
                Some(i) => {
                    ids.push(TaskId(i));
                    None
                }
            };
            if let Some(problem) = problem {
                self.errors.push(LowerError::BadFactor {
                    task: t.name.get_ref().clone(),
                    factor: n.get_ref().clone(),
                    problem,
                    span: n.span(),
                });
            }
        }
        match ids[..] {
            [a, b] if a == b => {
                self.errors.push(LowerError::BadFactor {
                    task: t.name.get_ref().clone(),
                    factor: names[1].get_ref().clone(),
                    problem: "appears twice (a product of a task with itself)",
                    span: p.span(),
                });
                None
            }
            [a, b] => Some([a, b]),
            _ => None,
        }
    }
}
