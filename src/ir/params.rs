//! The parameter table: every trainable tensor of a model with its stable name, shape
//! and initialiser, derived from the IR alone. The candle backend creates its
//! variables from it, bundles and checkpoints are checked against it, and the
//! optimizer's state is keyed by its names.
//!
//! | name                                     | shape                 | role                     |
//! |------------------------------------------|-----------------------|--------------------------|
//! | `features.{f}.embedding`                 | `[rows, dim]`         | embedding table          |
//! | `layers.{l}.experts.{i}.weight` / `.bias`| `[E, d_i, d_i+1]` / `[E, d_i+1]` | shared experts, depth i |
//! | `layers.{l}.experts.cross.{i}.weight` / `.bias` | `[E, d_in, d_in]` / `[E, d_in]` | DCN-v2 cross layer i below them |
//! | `layers.{l}.task_experts.{t}.{i}.weight` / `.bias` | as above    | task t's experts (CGC)   |
//! | `layers.{l}.gates.weight` / `.bias`      | `[d_in, sum E_g]` / `[sum E_g]` | every gate of the layer, side by side |
//! | `layers.{l}.gates.noise`                 | `[d_in, sum E_g]`     | noisy top-k: noise scale weights |
//! | `tasks.{t}.tower.{i}.weight` / `.bias`   | `[d_i, d_i+1]` / `[d_i+1]` | tower, depth i        |
//! | `tasks.{t}.transfer.info.weight` / `.bias` | `[h_from, h]` / `[h]` | AITM: the info layer on the earlier tower's last hidden vector |
//! | `tasks.{t}.transfer.query` / `.key` / `.value` | `[h, h]`      | AITM: the attention's projections (no bias) |
//! | `loss.log_variance`                      | `[T]`                 | uncertainty weighting    |

use std::fmt;

use super::{ExpertOwner, FeatureKind, LossBalance, Model, TaskOutput};

/// How a parameter starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Init {
    /// Every value from U(-limit, limit).
    Uniform {
        limit: f64,
    },
    /// Glorot-uniform per column block of the last axis: a block of width w draws from
    /// U(-a, a) with a = sqrt(6 / (fan_in + w)). Several blocks: gates side by side.
    Glorot {
        fan_in: usize,
        blocks: Vec<usize>,
    },
    Zeros,
}

/// Which of an AITM transfer's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferPart {
    InfoWeight,
    InfoBias,
    Query,
    Key,
    Value,
}

/// What a parameter is, for a backend placing it in its structures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Embedding {
        feature: usize,
    },
    ExpertWeight {
        layer: usize,
        group: usize,
        depth: usize,
    },
    ExpertBias {
        layer: usize,
        group: usize,
        depth: usize,
    },
    /// A DCN-v2 cross layer of an expert group, `[E, d_in, d_in]`.
    CrossWeight {
        layer: usize,
        group: usize,
        depth: usize,
    },
    CrossBias {
        layer: usize,
        group: usize,
        depth: usize,
    },
    GateWeight {
        layer: usize,
    },
    GateBias {
        layer: usize,
    },
    /// Noisy top-k gating: the weights of the noise scale, `[d_in, sum E_g]`.
    GateNoise {
        layer: usize,
    },
    TowerWeight {
        task: usize,
        depth: usize,
    },
    /// AITM: one of a task's transfer parameters.
    Transfer {
        task: usize,
        part: TransferPart,
    },
    TowerBias {
        task: usize,
        depth: usize,
    },
    /// Uncertainty weighting: one log-variance per task, `[T]`.
    LossLogVariance,
}

/// One trainable tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
    pub role: Role,
}

impl Param {
    pub fn elems(&self) -> usize {
        self.shape.iter().product()
    }
}

impl fmt::Display for Param {
    /// `name [d0, d1]`: the form bundles record and compare.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        write!(f, "{} [{}]", self.name, dims.join(", "))
    }
}

/// Range of the uniform initialisation of embedding tables.
pub const EMBEDDING_INIT: f64 = 0.05;

fn mlp(
    out: &mut Vec<Param>,
    prefix: &str,
    dims: &[usize],
    stacked: Option<usize>,
    roles: impl Fn(usize) -> (Role, Role),
) {
    for (i, w) in dims.windows(2).enumerate() {
        let (wr, br) = roles(i);
        let (ws, bs) = match stacked {
            Some(e) => (vec![e, w[0], w[1]], vec![e, w[1]]),
            None => (vec![w[0], w[1]], vec![w[1]]),
        };
        out.push(Param {
            name: format!("{prefix}.{i}.weight"),
            shape: ws,
            init: Init::Glorot { fan_in: w[0], blocks: vec![w[1]] },
            role: wr,
        });
        out.push(Param { name: format!("{prefix}.{i}.bias"), shape: bs, init: Init::Zeros, role: br });
    }
}

impl Model {
    /// Every trainable tensor, in a stable order (features, layers, towers).
    pub fn parameters(&self) -> Vec<Param> {
        let mut out = Vec::new();
        for (fi, f) in self.features.iter().enumerate() {
            // A feature reading another's table has none of its own.
            if let (FeatureKind::Categorical { encoding, dim, .. }, None) = (&f.kind, f.shares) {
                out.push(Param {
                    name: format!("features.{}.embedding", f.name),
                    shape: vec![encoding.rows(), *dim],
                    init: Init::Uniform { limit: EMBEDDING_INIT },
                    role: Role::Embedding { feature: fi },
                });
            }
        }
        for (li, l) in self.layers.iter().enumerate() {
            for (gi, g) in l.groups.iter().enumerate() {
                let prefix = match g.owner {
                    ExpertOwner::Shared => format!("layers.{}.experts", l.name),
                    ExpertOwner::Task(t) => format!("layers.{}.task_experts.{}", l.name, self.tasks[t.0].name),
                };
                let d = g.d_in();
                mlp(&mut out, &format!("{prefix}.cross"), &vec![d; g.cross + 1], Some(g.count), |depth| {
                    (Role::CrossWeight { layer: li, group: gi, depth }, Role::CrossBias { layer: li, group: gi, depth })
                });
                mlp(&mut out, &prefix, &g.dims, Some(g.count), |depth| {
                    (
                        Role::ExpertWeight { layer: li, group: gi, depth },
                        Role::ExpertBias { layer: li, group: gi, depth },
                    )
                });
            }
            if !l.gates.is_empty() {
                let blocks: Vec<usize> = l.gates.iter().map(|g| g.experts).collect();
                let total = blocks.iter().sum();
                let d_in = l.input.width();
                out.push(Param {
                    name: format!("layers.{}.gates.weight", l.name),
                    shape: vec![d_in, total],
                    init: Init::Glorot { fan_in: d_in, blocks },
                    role: Role::GateWeight { layer: li },
                });
                out.push(Param {
                    name: format!("layers.{}.gates.bias", l.name),
                    shape: vec![total],
                    init: Init::Zeros,
                    role: Role::GateBias { layer: li },
                });
                if l.gating.noise {
                    // Shazeer et al. start the noise weights at zero.
                    out.push(Param {
                        name: format!("layers.{}.gates.noise", l.name),
                        shape: vec![d_in, total],
                        init: Init::Zeros,
                        role: Role::GateNoise { layer: li },
                    });
                }
            }
        }
        for (ti, t) in self.tasks.iter().enumerate() {
            let TaskOutput::Tower { dims, .. } = &t.output else { continue };
            mlp(&mut out, &format!("tasks.{}.tower", t.name), dims, None, |depth| {
                (Role::TowerWeight { task: ti, depth }, Role::TowerBias { task: ti, depth })
            });
        }
        for (ti, t) in self.tasks.iter().enumerate() {
            let (Some(tr), Some(h)) = (t.transfer, t.last_hidden()) else { continue };
            let h_from = self.tasks[tr.from.0].last_hidden().unwrap_or(h);
            let glorot = |fan_in| Init::Glorot { fan_in, blocks: vec![h] };
            let prefix = format!("tasks.{}.transfer", t.name);
            let mut push = |name: &str, shape: Vec<usize>, init: Init, part| {
                out.push(Param {
                    name: format!("{prefix}.{name}"),
                    shape,
                    init,
                    role: Role::Transfer { task: ti, part },
                });
            };
            push("info.weight", vec![h_from, h], glorot(h_from), TransferPart::InfoWeight);
            push("info.bias", vec![h], Init::Zeros, TransferPart::InfoBias);
            for (name, part) in
                [("query", TransferPart::Query), ("key", TransferPart::Key), ("value", TransferPart::Value)]
            {
                push(name, vec![h, h], glorot(h), part);
            }
        }
        if self.balance == LossBalance::Uncertainty {
            out.push(Param {
                name: "loss.log_variance".into(),
                shape: vec![self.tasks.len()],
                init: Init::Zeros,
                role: Role::LossLogVariance,
            });
        }
        out
    }
}
