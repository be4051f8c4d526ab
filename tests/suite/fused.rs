//! The fused forward pass against a naive per-expert reference that lives only here.

use candle_core::{Device, Tensor, D};
use multigate::backend::candle::{Batch, CandleModel};
use multigate::data::{self, synthetic};
use multigate::ir::{Activation, ExpertOwner, GateOwner, Layer, LayerKind, TaskId};

use super::{central_difference, compile_ok, small_spec, smooth_tasks, with_product_and_multiclass, TWO_BINARY_TASKS};

fn var(model: &CandleModel, name: &str) -> Tensor {
    model.vars().iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no var {name}")).1.as_tensor().clone()
}

fn act(x: &Tensor, a: Activation) -> Tensor {
    match a {
        Activation::Relu => x.relu().unwrap(),
        Activation::Tanh => x.tanh().unwrap(),
        Activation::Linear => x.clone(),
        other => panic!("reference does not cover {other:?}"),
    }
}

/// The parameter prefix of group `g` of a layer, spelled out by hand.
fn group_prefix(model: &CandleModel, l: &Layer, g: usize) -> String {
    match l.groups[g].owner {
        ExpertOwner::Shared => format!("layers.{}.experts", l.name),
        ExpertOwner::Task(t) => format!("layers.{}.task_experts.{}", l.name, model.ir().tasks[t.0].name),
    }
}

/// Expert `e` of group `g` of a layer as a plain MLP on `x: [N, d]`.
fn naive_expert(model: &CandleModel, l: &Layer, g: usize, e: usize, x: &Tensor) -> Tensor {
    let group = &l.groups[g];
    let prefix = group_prefix(model, l, g);
    let mut h = x.clone();
    // DCN-v2 cross layers first: x_{i+1} = x_0 * (x_i W_i + b_i) + x_i.
    for i in 0..group.cross {
        let w = var(model, &format!("{prefix}.cross.{i}.weight")).get(e).unwrap();
        let b = var(model, &format!("{prefix}.cross.{i}.bias")).get(e).unwrap();
        let z = h.matmul(&w).unwrap().broadcast_add(&b).unwrap();
        h = ((x * z).unwrap() + &h).unwrap();
    }
    for i in 0..group.dims.len() - 1 {
        let w = var(model, &format!("{prefix}.{i}.weight")).get(e).unwrap();
        let b = var(model, &format!("{prefix}.{i}.bias")).get(e).unwrap();
        h = act(&h.matmul(&w).unwrap().broadcast_add(&b).unwrap(), group.activation);
    }
    h
}

/// Gate `g` of a layer on `x: [N, d]`: softmax weights `[N, E_g]`. The layer's gates sit
/// side by side in one weight, in gate order.
fn naive_gate(model: &CandleModel, l: &Layer, g: usize, x: &Tensor) -> Tensor {
    let offset: usize = l.gates[..g].iter().map(|g| g.experts).sum();
    let width = l.gates[g].experts;
    let w = var(model, &format!("layers.{}.gates.weight", l.name)).narrow(1, offset, width).unwrap();
    let b = var(model, &format!("layers.{}.gates.bias", l.name)).narrow(0, offset, width).unwrap();
    let logits = (x.matmul(&w).unwrap().broadcast_add(&b).unwrap() / l.gating.temperature as f64).unwrap();
    // Top-k, row by row on the host: every logit below the k-th largest is dropped.
    let logits = match l.gating.top_k {
        None => logits,
        Some(k) => {
            let rows: Vec<Vec<f32>> = logits.to_vec2().unwrap();
            let kept: Vec<Vec<f32>> = rows
                .into_iter()
                .map(|r| {
                    let mut sorted = r.clone();
                    sorted.sort_by(|a, b| b.total_cmp(a));
                    r.iter().map(|&v| if v >= sorted[k - 1] { v } else { f32::NEG_INFINITY }).collect()
                })
                .collect();
            Tensor::new(kept, x.device()).unwrap()
        }
    };
    candle_nn::ops::softmax(&logits, D::Minus1).unwrap()
}

/// Gate `g` read on `gate_in`, mixing the experts of `sources` (group, its input), in order,
/// one expert at a time.
fn naive_mix(model: &CandleModel, l: &Layer, g: usize, gate_in: &Tensor, sources: &[(usize, &Tensor)]) -> Tensor {
    let weights = naive_gate(model, l, g, gate_in);
    let mut out: Option<Tensor> = None;
    let mut k = 0;
    for &(group, x) in sources {
        for e in 0..l.groups[group].count {
            let y = naive_expert(model, l, group, e, x);
            let term = y.broadcast_mul(&weights.narrow(1, k, 1).unwrap()).unwrap();
            k += 1;
            out = Some(match out {
                Some(o) => (o + term).unwrap(),
                None => term,
            });
        }
    }
    out.unwrap()
}

/// A stream as the reference keeps it: per-task slots and a shared slot.
#[derive(Clone)]
struct Slots {
    tasks: Option<Vec<Tensor>>,
    shared: Option<Tensor>,
}

/// One layer, written out per kind from the papers' definitions.
fn naive_layer(model: &CandleModel, l: &Layer, input: &Slots) -> Slots {
    let n_tasks = model.ir().tasks.len();
    let task_of_gate = |g: usize| match l.gates[g].owner {
        GateOwner::Task(t) => Some(t.0),
        _ => None,
    };
    let task_group = |t: usize| l.groups.iter().position(|g| g.owner == ExpertOwner::Task(TaskId(t)));
    match (l.kind, &input.tasks) {
        (LayerKind::SharedBottom, Some(ts)) => {
            Slots { tasks: Some(ts.iter().map(|x| naive_expert(model, l, 0, 0, x)).collect()), shared: None }
        }
        (LayerKind::SharedBottom, None) => {
            Slots { tasks: None, shared: Some(naive_expert(model, l, 0, 0, input.shared.as_ref().unwrap())) }
        }
        (LayerKind::Moe, Some(ts)) => {
            Slots { tasks: Some(ts.iter().map(|x| naive_mix(model, l, 0, x, &[(0, x)])).collect()), shared: None }
        }
        (LayerKind::Moe, None) => {
            let x = input.shared.as_ref().unwrap();
            Slots { tasks: None, shared: Some(naive_mix(model, l, 0, x, &[(0, x)])) }
        }
        (LayerKind::Mmoe, Some(ts)) => Slots {
            tasks: Some((0..n_tasks).map(|t| naive_mix(model, l, t, &ts[t], &[(0, &ts[t])])).collect()),
            shared: None,
        },
        (LayerKind::Mmoe, None) => {
            let x = input.shared.as_ref().unwrap();
            Slots { tasks: Some((0..n_tasks).map(|t| naive_mix(model, l, t, x, &[(0, x)])).collect()), shared: None }
        }
        (LayerKind::Cgc, _) => {
            // PLE (Tang et al. 2020): task t's gate reads task t's input and mixes task t's
            // experts (on that input) then the shared experts (on the shared input); the
            // shared gate reads the shared input and mixes the shared experts, then every
            // task's experts on its own input.
            let shared_in = input.shared.as_ref().unwrap();
            let task_in = |t: usize| input.tasks.as_ref().map_or(shared_in, |ts| &ts[t]);
            let mut tasks = Vec::new();
            let mut shared = None;
            for g in 0..l.gates.len() {
                match task_of_gate(g) {
                    Some(t) => {
                        let mut sources: Vec<(usize, &Tensor)> =
                            task_group(t).map(|tg| (tg, task_in(t))).into_iter().collect();
                        sources.push((0, shared_in));
                        tasks.push(naive_mix(model, l, g, task_in(t), &sources));
                    }
                    None => {
                        let mut sources = vec![(0, shared_in)];
                        sources.extend((0..n_tasks).filter_map(|t| task_group(t).map(|tg| (tg, task_in(t)))));
                        shared = Some(naive_mix(model, l, g, shared_in, &sources));
                    }
                }
            }
            Slots { tasks: Some(tasks), shared }
        }
    }
}

/// The reference forward: slots as a Vec, experts in a loop.
fn naive_forward(model: &CandleModel, x: &Tensor) -> Vec<Tensor> {
    let mut slots = Slots { tasks: None, shared: Some(x.clone()) };
    let mut history: Vec<Slots> = Vec::new();
    for l in &model.ir().layers {
        slots = naive_layer(model, l, &slots);
        history.push(slots.clone());
    }
    let mut heads: Vec<Option<Tensor>> = model
        .ir()
        .tasks
        .iter()
        .enumerate()
        .map(|(t, task)| {
            let multigate::ir::TaskOutput::Tower { dims, activation, .. } = &task.output else { return None };
            let src = task.input.map_or(&slots, |i| &history[i]);
            let mut h = match &src.tasks {
                Some(ts) => ts[t].clone(),
                None => src.shared.clone().unwrap(),
            };
            for i in 0..dims.len() - 1 {
                let w = var(model, &format!("tasks.{}.tower.{i}.weight", task.name));
                let b = var(model, &format!("tasks.{}.tower.{i}.bias", task.name));
                h = h.matmul(&w).unwrap().broadcast_add(&b).unwrap();
                if i + 2 < dims.len() {
                    h = act(&h, *activation);
                }
            }
            Some(if h.dim(1).unwrap() == 1 { h.squeeze(1).unwrap() } else { h })
        })
        .collect();
    // ESMM products: ln(sigmoid(a) * sigmoid(b)), computed the plain way.
    for (t, task) in model.ir().tasks.iter().enumerate() {
        if let multigate::ir::TaskOutput::Product { factors: [a, b] } = task.output {
            let p = |x: &Tensor| candle_nn::ops::sigmoid(x).unwrap();
            let (pa, pb) = (p(heads[a.0].as_ref().unwrap()), p(heads[b.0].as_ref().unwrap()));
            heads[t] = Some((pa * pb).unwrap().log().unwrap());
        }
    }
    heads.into_iter().map(Option::unwrap).collect()
}

/// The concatenated input, rebuilt by hand from the embedding tables.
fn naive_inputs(model: &CandleModel, ds: &data::Dataset, idx: &[usize]) -> Tensor {
    let dev = Device::Cpu;
    let ids =
        |f: usize| Tensor::from_vec(idx.iter().map(|&i| ds.cat[f][i]).collect::<Vec<u32>>(), idx.len(), &dev).unwrap();
    let ea = var(model, "features.a.embedding").index_select(&ids(0), 0).unwrap();
    let eb = var(model, "features.b.embedding").index_select(&ids(1), 0).unwrap();
    let dense = Tensor::from_vec(
        idx.iter().flat_map(|&i| ds.dense[i * 2..i * 2 + 2].to_vec()).collect::<Vec<f32>>(),
        (idx.len(), 2),
        &dev,
    )
    .unwrap();
    let cross = (&ea * &eb).unwrap();
    Tensor::cat(&[ea, eb, dense, cross], 1).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn check_layers(layers: &str) {
    check_layers_tasks(layers, TWO_BINARY_TASKS);
}

fn check_layers_tasks(layers: &str, tasks: &str) {
    let c = compile_ok("fused.toml", &small_spec(layers, tasks));
    let model = CandleModel::new(&c.model, 3, &Device::Cpu).unwrap();
    let frame = synthetic::categorical_frame(&c.model, 40, 97, 5);
    let ds = data::encode(&c.model, &frame, true).unwrap();
    let idx: Vec<usize> = (0..97).collect();
    let batch = Batch::gather(&ds, &idx, &Device::Cpu).unwrap();
    let fused = model.forward(&batch).unwrap();
    let naive = naive_forward(&model, &naive_inputs(&model, &ds, &idx));
    for (f, n) in fused.heads.iter().zip(&naive) {
        let d = max_abs_diff(f, n);
        assert!(d < 1e-5, "fused and naive differ by {d} for\n{layers}");
    }
    // Gate weights are distributions over experts.
    for g in fused.gates.iter().flatten() {
        let sums = g.sum(D::Minus1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5));
    }
}

#[test]
fn mmoe_matches_naive() {
    check_layers("[[layers]]\nkind = \"mmoe\"\nexperts = 5\nunits = [6]\n");
}

#[test]
fn deep_experts_match_naive() {
    check_layers("[[layers]]\nkind = \"mmoe\"\nexperts = 3\nunits = [7, 5, 4]\nactivation = \"tanh\"\n");
}

/// DCN-v2 cross layers below the experts (the graph runs them: the fast CPU passes do
/// not know them), in MMoE, shared-bottom and a CGC level under an MMoE on task slots.
#[test]
fn cross_layer_experts_match_naive() {
    check_layers("[[layers]]\nkind = \"mmoe\"\nexperts = 3\nunits = [6]\ncross_layers = 2\n");
    check_layers("[[layers]]\nkind = \"shared_bottom\"\nunits = [5]\ncross_layers = 1\n");
    check_layers(
        "[[layers]]\nkind = \"cgc\"\nexperts = 2\ntask_experts = 1\nunits = [6]\ncross_layers = 1\n\n\
         [[layers]]\nkind = \"mmoe\"\nexperts = 2\nunits = [4]\ncross_layers = 2\nactivation = \"tanh\"\n",
    );
}

#[test]
fn moe_matches_naive() {
    check_layers("[[layers]]\nkind = \"moe\"\nexperts = 4\nunits = [6]\n");
}

#[test]
fn shared_bottom_matches_naive() {
    check_layers("[[layers]]\nkind = \"shared_bottom\"\nunits = [9, 5]\n");
}

#[test]
fn stacked_layers_on_per_task_streams_match_naive() {
    check_layers(
        "[[layers]]\nkind = \"mmoe\"\nexperts = 3\nunits = [6]\n\n[[layers]]\nkind = \"mmoe\"\nexperts = 2\nunits = [5]\n\n\
         [[layers]]\nkind = \"moe\"\nexperts = 2\nunits = [4]\n\n[[layers]]\nkind = \"shared_bottom\"\nunits = [3]\n",
    );
}

#[test]
fn towers_reading_earlier_layers_match_naive() {
    check_layers_tasks(
        "[[layers]]\nname = \"bottom\"\nkind = \"shared_bottom\"\nunits = [7]\n\n[[layers]]\nname = \"mix\"\nkind = \"mmoe\"\nexperts = 3\nunits = [5]\n\n[[layers]]\nname = \"top\"\nkind = \"moe\"\nexperts = 2\nunits = [4]\n",
        &TWO_BINARY_TASKS.replace("tower = [4]", "tower = [4]\ninput = \"bottom\"").replace("tower = [3]", "tower = [3]\ninput = \"mix\""),
    );
}

#[test]
fn cgc_matches_naive() {
    check_layers("[[layers]]\nkind = \"cgc\"\nexperts = 3\ntask_experts = 2\nunits = [6]\n");
}

#[test]
fn cgc_with_unequal_task_experts_matches_naive() {
    // t1 gets 3 experts of its own, t2 none: their gates weigh 5 and 2 experts.
    check_layers(
        "[[layers]]\nkind = \"cgc\"\nexperts = 2\ntask_experts = { t1 = 3 }\nunits = [6, 4]\nactivation = \"tanh\"\n",
    );
}

#[test]
fn ple_levels_match_naive() {
    // Three levels: the first two have a shared gate feeding the next level's shared
    // experts; the last has none. Then a slotwise MMoE on the per-task stream.
    check_layers(
        "[[layers]]\nkind = \"cgc\"\nexperts = 2\ntask_experts = 1\nunits = [6]\n\n\
         [[layers]]\nkind = \"cgc\"\nexperts = 3\ntask_experts = { t2 = 2 }\nunits = [5]\n\n\
         [[layers]]\nkind = \"cgc\"\nexperts = 1\ntask_experts = 2\nunits = [4]\n\n\
         [[layers]]\nkind = \"mmoe\"\nexperts = 2\nunits = [3]\n",
    );
}

#[test]
fn towers_reading_an_inner_ple_level_match_naive() {
    check_layers_tasks(
        "[[layers]]\nname = \"l1\"\nkind = \"cgc\"\nexperts = 2\ntask_experts = 1\nunits = [6]\n\n\
         [[layers]]\nname = \"l2\"\nkind = \"cgc\"\nexperts = 2\ntask_experts = 1\nunits = [5]\n",
        &TWO_BINARY_TASKS.replace("tower = [4]", "tower = [4]\ninput = \"l1\""),
    );
}

#[test]
fn esmm_products_and_multiclass_heads_match_naive() {
    let tasks = format!(
        "{TWO_BINARY_TASKS}\n[[tasks]]\nname = \"t3\"\nkind = \"binary\"\nlabel = \"y1\"\nproduct = [\"t1\", \"t2\"]\n\n\
         [[tasks]]\nname = \"t4\"\nkind = \"multiclass\"\nlabel = \"k\"\nclasses = [\"p\", \"q\", \"r\"]\ntower = [5]\n"
    );
    check_layers_tasks("[[layers]]\nkind = \"cgc\"\nexperts = 2\ntask_experts = 1\nunits = [6]\n", &tasks);
}

#[test]
fn tempered_top_k_gates_match_naive() {
    // Evaluation: no noise; temperature 0.5 and the 2 largest logits of each gate.
    check_layers(
        "[[layers]]\nkind = \"mmoe\"\nexperts = 4\nunits = [6]\ntemperature = 0.5\ntop_k = 2\nbalance = 0.01\n",
    );
    check_layers(
        "[[layers]]\nkind = \"cgc\"\nexperts = 2\ntask_experts = { t1 = 2 }\nunits = [6]\ntop_k = 1\nnoise = false\n\n\
         [[layers]]\nkind = \"cgc\"\nexperts = 3\ntask_experts = 1\nunits = [4]\ntemperature = 2.0\n",
    );
}

#[test]
fn noisy_top_k_trains_its_noise_and_the_balance_loss_reaches_the_gates() {
    let c = compile_ok(
        "noisy.toml",
        &small_spec(
            "[[layers]]\nkind = \"mmoe\"\nexperts = 4\nunits = [4]\ntop_k = 2\nbalance = 0.1\n",
            TWO_BINARY_TASKS,
        ),
    );
    let model = CandleModel::new(&c.model, 1, &Device::Cpu).unwrap();
    let frame = synthetic::categorical_frame(&c.model, 40, 64, 5);
    let ds = data::encode(&c.model, &frame, true).unwrap();
    let batch = Batch::gather(&ds, &(0..64).collect::<Vec<_>>(), &Device::Cpu).unwrap();
    let out = model.forward_train(&batch, &mut multigate::rng::Rng::new(1)).unwrap();
    let balance = out.balance.as_ref().expect("a balance loss").to_scalar::<f32>().unwrap();
    assert!(balance > 0.0 && balance.is_finite(), "{balance}");
    // Exactly two experts per row carry weight.
    for g in out.gates.iter().flatten() {
        for row in g.to_vec2::<f32>().unwrap() {
            assert_eq!(row.iter().filter(|&&w| w > 0.0).count(), 2, "{row:?}");
        }
    }
    // The noise weights start at zero and still get a gradient: through the load term.
    let step = multigate::train::batch_loss(&model, &batch, &mut multigate::rng::Rng::new(1)).unwrap();
    let grads = step.total.backward().unwrap();
    let noise = model.vars().iter().find(|(n, _)| n.ends_with("gates.noise")).expect("noise weights").1.clone();
    let g = grads.get(noise.as_tensor()).expect("a gradient for the noise weights");
    let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(norm > 0.0 && norm.is_finite(), "{norm}");
    // Evaluation is deterministic: no noise.
    let a = model.forward(&batch).unwrap();
    let b = model.forward(&batch).unwrap();
    assert_eq!(max_abs_diff(&a.heads[0], &b.heads[0]), 0.0);
}

#[test]
fn no_layers_matches_naive() {
    check_layers("");
}

#[test]
fn gradients_reach_every_parameter_through_the_gates() {
    // softmax_last_dim has no backward in candle 0.11; the gates must use a softmax that does.
    let c = compile_ok(
        "grad.toml",
        &small_spec("[[layers]]\nkind = \"mmoe\"\nexperts = 3\nunits = [4]\n", TWO_BINARY_TASKS),
    );
    let model = CandleModel::new(&c.model, 1, &Device::Cpu).unwrap();
    let frame = synthetic::categorical_frame(&c.model, 40, 64, 5);
    let ds = data::encode(&c.model, &frame, true).unwrap();
    let batch = Batch::gather(&ds, &(0..64).collect::<Vec<_>>(), &Device::Cpu).unwrap();
    let step = multigate::train::batch_loss(&model, &batch, &mut multigate::rng::Rng::new(1)).unwrap();
    let grads = step.total.backward().unwrap();
    for (i, (name, v)) in model.vars().iter().enumerate() {
        // Embedding tables get their gradient through the looked-up rows.
        let g = match step.lookups.iter().find(|l| l.var == i) {
            Some(l) => grads.get(l.leaf.as_tensor()),
            None => grads.get(v.as_tensor()),
        };
        let g = g.unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(norm > 0.0 && norm.is_finite(), "gradient of {name} is {norm}");
    }
}

#[test]
fn dropout_is_off_in_evaluation_and_on_in_training() {
    let spec =
        small_spec("[[layers]]\nkind = \"mmoe\"\nexperts = 3\nunits = [6, 5]\ndropout = 0.5\n", TWO_BINARY_TASKS)
            .replace("tower = [4]", "tower = [4]\ndropout = 0.3");
    let c = compile_ok("dropout.toml", &spec);
    let model = CandleModel::new(&c.model, 3, &Device::Cpu).unwrap();
    let frame = synthetic::categorical_frame(&c.model, 40, 64, 5);
    let ds = data::encode(&c.model, &frame, true).unwrap();
    let idx: Vec<usize> = (0..64).collect();
    let batch = Batch::gather(&ds, &idx, &Device::Cpu).unwrap();
    // Evaluation ignores dropout: it matches the reference, which has none.
    let eval = model.forward(&batch).unwrap();
    let naive = naive_forward(&model, &naive_inputs(&model, &ds, &idx));
    for (f, n) in eval.heads.iter().zip(&naive) {
        assert!(max_abs_diff(f, n) < 1e-5);
    }
    // Training draws masks: two draws differ from evaluation and from each other, and
    // the same seed gives the same masks.
    let mut rng = multigate::rng::Rng::new(1);
    let a = model.forward_train(&batch, &mut rng).unwrap();
    let b = model.forward_train(&batch, &mut rng).unwrap();
    let a2 = model.forward_train(&batch, &mut multigate::rng::Rng::new(1)).unwrap();
    assert!(max_abs_diff(&a.heads[0], &eval.heads[0]) > 1e-4);
    assert!(max_abs_diff(&a.heads[0], &b.heads[0]) > 1e-4);
    assert_eq!(max_abs_diff(&a.heads[0], &a2.heads[0]), 0.0);
}

/// Autograd against central finite differences on a few coordinates of every dense
/// parameter of a PLE model with an ESMM product and a multiclass head.
#[test]
fn ple_gradients_match_finite_differences() {
    // tanh everywhere: finite differences across a ReLU kink are not a derivative.
    let tasks = with_product_and_multiclass(&smooth_tasks());
    let layers = "[[layers]]\nkind = \"cgc\"\nexperts = 2\ntask_experts = { t1 = 2, t4 = 1 }\nunits = [6]\nactivation = \"tanh\"\n\n\
                  [[layers]]\nkind = \"cgc\"\nexperts = 2\ntask_experts = 1\nunits = [5]\nactivation = \"tanh\"\n";
    let c = compile_ok("grad.toml", &small_spec(layers, &tasks));
    let model = CandleModel::new(&c.model, 5, &Device::Cpu).unwrap();
    let frame = synthetic::categorical_frame(&c.model, 40, 64, 5);
    let ds = data::encode(&c.model, &frame, true).unwrap();
    let batch = Batch::gather(&ds, &(0..64).collect::<Vec<_>>(), &Device::Cpu).unwrap();
    let loss = || {
        let s = multigate::train::batch_loss(&model, &batch, &mut multigate::rng::Rng::new(1)).unwrap();
        s.total.to_scalar::<f32>().unwrap() as f64
    };
    let step = multigate::train::batch_loss(&model, &batch, &mut multigate::rng::Rng::new(1)).unwrap();
    let grads = step.total.backward().unwrap();
    let h = 2e-3f32;
    let mut checked = 0;
    for (name, v) in model.vars().iter().filter(|(n, _)| !n.ends_with("embedding")) {
        let g = grads.get(v.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for i in [0, g.len() / 2, g.len() - 1] {
            let numeric = central_difference(v, i, h, &loss);
            let analytic = g[i] as f64;
            assert!(
                (numeric - analytic).abs() <= 1e-3 + 0.03 * analytic.abs(),
                "{name}[{i}]: autograd {analytic}, finite differences {numeric}"
            );
            checked += 1;
        }
    }
    assert!(checked > 60, "{checked} coordinates");
}
