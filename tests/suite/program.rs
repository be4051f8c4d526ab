//! The op program (`program/`, `lower/program.rs`) and its native interpreter
//! (`backend/native/`): every spec in `models/` lowers to a program whose text is
//! snapshotted; the native backend running that program computes what candle's graph
//! computes (heads and gate weights) on every model and on the layer kinds, gates,
//! poolings and heads those do not cover; and the backward program derived from the
//! ops' VJPs gives autograd's per-task losses and gradients (dense and looked-up rows).

use candle_core::{Device, Tensor};
use multigate::backend::candle::{Batch, CandleModel};
use multigate::backend::native::{Feed, Native, Run};
use multigate::data::Dataset;
use multigate::lower::{lower_program, Compiled};
use multigate::program::{derive_backward, fuse, BufKind, Input, Mode, Op, ParamGrad, Program, Unary};
use multigate::rng::Rng;

use super::infer::{scrambled_batches, small, LAYER_CASES};
use super::{compile_path, model_and_rows, model_files, with_product_and_multiclass, TWO_BINARY_TASKS};

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// A batch's columns on the host, as a [`Feed`] borrows them.
pub(super) struct HostBatch {
    size: usize,
    ids: Vec<Vec<u32>>,
    bags: Vec<Option<Vec<f32>>>,
    dense: Option<Vec<f32>>,
    labels: Vec<Option<Vec<f32>>>,
    masks: Vec<Option<Vec<f32>>>,
}

impl HostBatch {
    pub(super) fn of(b: &Batch) -> HostBatch {
        let opt = |t: &Option<Tensor>| t.as_ref().map(values);
        HostBatch {
            size: b.size,
            ids: b.cat.iter().map(|t| t.flatten_all().unwrap().to_vec1::<u32>().unwrap()).collect(),
            bags: b.bags.iter().map(opt).collect(),
            dense: opt(&b.dense),
            labels: b.labels.iter().map(opt).collect(),
            masks: b.masks.iter().map(opt).collect(),
        }
    }

    pub(super) fn feed(&self) -> Feed<'_> {
        Feed {
            batch: self.size,
            ids: self.ids.iter().map(Vec::as_slice).collect(),
            bags: self.bags.iter().map(|b| b.as_deref()).collect(),
            dense: self.dense.as_deref(),
            labels: self.labels.iter().map(|b| b.as_deref()).collect(),
            masks: self.masks.iter().map(|b| b.as_deref()).collect(),
        }
    }
}

/// Every parameter's current value, by the program's buffer ids.
pub(super) fn param_values(p: &Program, model: &CandleModel) -> Vec<Option<Vec<f32>>> {
    let mut v = vec![None; p.bufs.len()];
    for (id, b) in p.params() {
        let var = model.vars().iter().find(|(n, _)| *n == b.name).unwrap_or_else(|| panic!("no variable {}", b.name));
        v[id.0] = Some(values(var.1.as_tensor()));
    }
    v
}

pub(super) fn borrowed(v: &[Option<Vec<f32>>]) -> Vec<Option<&[f32]>> {
    v.iter().map(|x| x.as_deref()).collect()
}

/// The largest difference between two value lists, relative above 1.
fn worst(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths");
    a.iter().zip(b).map(|(x, y)| (x - y).abs() / y.abs().max(1.0)).fold(0.0, f32::max)
}

/// The native run of the evaluation program against the graph on `batch`: heads and
/// gate weights within `tol`.
fn check_forward(c: &Compiled, model: &CandleModel, batch: &Batch, tol: f32, what: &str) {
    let program = lower_program(&c.model, Mode::Eval).unwrap();
    let native = Native::new(program, None);
    let params = param_values(&native.program, model);
    let host = HostBatch::of(batch);
    let run = native.forward(&borrowed(&params), &host.feed(), None).unwrap();
    let graph = model.forward_graph(batch).unwrap();
    for (t, (o, h)) in native.program.outputs.iter().zip(&graph.heads).enumerate() {
        let d = worst(run.value(o.raw), &values(h));
        assert!(d <= tol, "{what}: task {t} differs from the graph by {d}");
    }
    assert_eq!(native.program.gates.len(), graph.gates.len(), "{what}: gated layers");
    for (l, (g, mixes)) in native.program.gates.iter().zip(&graph.gates).enumerate() {
        let probs = run.value(g.probs);
        let width: usize = g.widths.iter().sum();
        let mut at = 0;
        for (m, (w, t)) in g.widths.iter().zip(mixes).enumerate() {
            let mine: Vec<f32> = probs.chunks_exact(width).flat_map(|r| &r[at..at + w]).copied().collect();
            let d = worst(&mine, &values(t));
            assert!(d <= tol, "{what}: layer {l} mix {m}'s gate weights differ by {d}");
            at += w;
        }
    }
}

/// [`check_forward`] with parameters redrawn (so a wrong slot, column or bias shows),
/// on rows `0..n` and on a shard cut from their middle.
fn check(c: &Compiled, ds: &Dataset, what: &str) {
    let (model, whole, shard) = scrambled_batches(c, ds);
    check_forward(c, &model, &whole, 1e-5, &format!("{what}, whole batch"));
    check_forward(c, &model, &shard, 1e-5, &format!("{what}, shard"));
}

#[test]
fn every_model_lowers_to_a_stable_program() {
    let files = model_files("toml");
    assert!(files.len() >= 10);
    for path in files {
        let c = compile_path(&path);
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let p = lower_program(&c.model, Mode::Eval).unwrap();
        insta::assert_snapshot!(format!("program_{name}"), p.to_string());
        // No program op names a model kind: the words exist only above the program.
        let text = p.to_string().to_lowercase();
        for word in ["mmoe", "cgc", "ple ", "esmm", "shared_bottom", "product"] {
            let ops: String = text.lines().filter(|l| l.contains(" = ")).collect();
            assert!(!ops.contains(&format!(" {word}")), "{name}: an op line names `{word}`");
        }
    }
}

#[test]
fn training_programs_and_their_backward_are_stable() {
    for name in ["synthetic_mmoe", "aliccp_esmm", "census_ple"] {
        let c = compile_path(&super::repo().join(format!("models/{name}.toml")));
        let p = lower_program(&c.model, Mode::Train).unwrap();
        let b = derive_backward(&p).unwrap();
        let text = format!("{p}\n{}", multigate::program::grad::Show(&p, &b));
        insta::assert_snapshot!(format!("backward_{name}"), text);
    }
}

#[test]
fn every_model_runs_natively_as_the_graph_does() {
    for path in model_files("toml") {
        let (c, ds) = model_and_rows(&path, 203);
        check(&c, &ds, &path.display().to_string());
        // As initialised (no redraw): the release's outputs to 1e-6 absolute.
        let model = CandleModel::new(&c.model, 5, &Device::Cpu).unwrap();
        let batch = Batch::gather(&ds, &(0..ds.rows.min(203)).collect::<Vec<_>>(), &Device::Cpu).unwrap();
        check_forward(&c, &model, &batch, 1e-6, &format!("{}, as initialised", path.display()));
    }
}

/// The cases beside `models/`: every layer stack of `LAYER_CASES`, `CROSS_CASES` and
/// `extra` under two binary tasks; towers on an inner PLE level with an ESMM product and
/// a multiclass head; bags of each pooling.
fn cases(extra: &[&str]) -> Vec<(Compiled, Dataset, String)> {
    let mut out = Vec::new();
    for &layers in LAYER_CASES.iter().chain(CROSS_CASES).chain(extra) {
        let (c, ds) = small(layers, TWO_BINARY_TASKS, 150);
        out.push((c, ds, layers.to_string()));
    }
    let tasks = with_product_and_multiclass(&TWO_BINARY_TASKS.replace("tower = [4]", "tower = [4]\ninput = \"l1\""));
    let (c, ds) = small(
        "[[layers]]\nname = \"l1\"\nkind = \"cgc\"\nexperts = 2\ntask_experts = 1\nunits = [6]\n\n\
         [[layers]]\nname = \"l2\"\nkind = \"cgc\"\nexperts = 2\ntask_experts = 1\nunits = [5]\n",
        &tasks,
        150,
    );
    out.push((c, ds, "towers on an inner level, a product and a multiclass head".into()));
    let (c, ds) = super::bags::encoded(super::bags::SPEC, super::bags::ROWS);
    out.push((c, ds, "bags".into()));
    out
}

#[test]
fn layer_kinds_gates_heads_and_bags_run_natively_as_the_graph_does() {
    let balanced =
        "[[layers]]\nkind = \"mmoe\"\nexperts = 4\nunits = [6]\ntemperature = 0.5\ntop_k = 2\nbalance = 0.01\n";
    for (c, ds, what) in cases(&[balanced]) {
        check(&c, &ds, &what);
    }
}

/// The derived backward against autograd of the same loss on `batch`, run in `run`
/// (whose buffers an earlier batch, of another size, may have left: they are reused).
fn check_gradients(c: &Compiled, model: &CandleModel, batch: &Batch, run: &mut Run, what: &str) {
    let program = lower_program(&c.model, Mode::Train).unwrap();
    let backward = derive_backward(&program).unwrap();
    let native = Native::new(program, Some(backward));
    let p = &native.program;
    let params = param_values(p, model);
    let host = HostBatch::of(batch);
    let feed = host.feed();
    native.forward_into(&borrowed(&params), &feed, Some(&mut Rng::new(1)), run).unwrap();
    let seeds: Vec<f32> = p.losses.iter().map(|l| c.model.tasks[l.task].loss_weight).collect();
    native.backward(&borrowed(&params), &feed, run, &seeds).unwrap();
    let loss = multigate::train::batch_loss_weighted(model, batch, &mut Rng::new(1), None).unwrap();
    let grads = loss.total.backward().unwrap();
    for l in &p.losses {
        let (a, b) = (run.value(l.loss)[0], loss.per_task[l.task].to_scalar::<f32>().unwrap());
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{what}: task {}'s loss {a} against {b}", l.task);
    }
    // A gradient far smaller than the step's others carries their rounding: the floor
    // of the scale is 1e-3 of the step's largest (see `backprop::assert_close`).
    let largest = |t: &Tensor| values(t).iter().fold(0f32, |m, x| m.max(x.abs()));
    let leaves = loss.lookups.iter().map(|l| l.leaf.as_tensor());
    let all = model.vars().iter().map(|(_, v)| v.as_tensor()).chain(leaves);
    let floor = 1e-3 * all.filter_map(|t| grads.get(t)).map(largest).fold(1.0, f32::max);
    let close = |a: &[f32], b: &[f32], name: &str| {
        assert_eq!(a.len(), b.len(), "{what}: {name}'s gradient length");
        let scale = b.iter().fold(floor, |m, x| m.max(x.abs()));
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 1e-4 * scale, "{what}: {name}[{i}]: {x} against autograd's {y} (largest {scale})");
        }
    };
    let bw = native.backward.as_ref().unwrap();
    let mut dense = 0;
    for g in &bw.params {
        match g {
            ParamGrad::Dense { param, grad } => {
                let name = &p.buf(*param).name;
                let var = &model.vars().iter().find(|(n, _)| n == name).unwrap().1;
                let reference = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{what}: autograd has no {name}"));
                close(run.grad(*grad), &values(reference), name);
                dense += 1;
            }
            ParamGrad::Rows { ids, rows, .. } => {
                let BufKind::Input(Input::Ids(cat)) = p.buf(*ids).kind else { panic!("{what}: rows without ids") };
                let lookup = &loss.lookups[cat];
                let reference = grads.get(lookup.leaf.as_tensor()).expect("autograd lookup gradient");
                close(run.grad(*rows), &values(reference), &format!("lookup {cat}"));
            }
        }
    }
    // Every dense parameter autograd reaches, the derived backward reaches too.
    let reached = model.vars().iter().filter(|(_, v)| grads.get(v.as_tensor()).is_some()).count();
    assert_eq!(dense, reached, "{what}: parameters with a gradient");
}

/// The whole batch, a shard, then the whole batch again, through one reused [`Run`].
fn check_grad(c: &Compiled, ds: &Dataset, what: &str) {
    let (model, whole, shard) = scrambled_batches(c, ds);
    let mut run = Run::default();
    check_gradients(c, &model, &whole, &mut run, &format!("{what}, whole batch"));
    check_gradients(c, &model, &shard, &mut run, &format!("{what}, shard after it"));
    check_gradients(c, &model, &whole, &mut run, &format!("{what}, whole batch after a shard"));
}

#[test]
fn every_model_differentiates_natively_as_autograd_does() {
    for path in model_files("toml") {
        let (c, ds) = model_and_rows(&path, 203);
        check_grad(&c, &ds, &path.display().to_string());
    }
}

/// DCN-v2 cross layers below experts: gated, on task slots (k > 1 copies), shared-bottom.
const CROSS_CASES: &[&str] = &[
    "[[layers]]\nkind = \"mmoe\"\nexperts = 3\nunits = [5]\ncross_layers = 2\n",
    "[[layers]]\nkind = \"cgc\"\nexperts = 2\ntask_experts = 1\nunits = [6]\ncross_layers = 1\n\n\
     [[layers]]\nkind = \"mmoe\"\nexperts = 2\nunits = [4, 3]\ncross_layers = 2\ndropout = 0.2\n",
    "[[layers]]\nkind = \"shared_bottom\"\nunits = [4]\ncross_layers = 3\n",
];

#[test]
fn layer_kinds_heads_and_bags_differentiate_natively_as_autograd_does() {
    for (c, ds, what) in cases(&[]) {
        check_grad(&c, &ds, &what);
    }
}

/// Training's random ops draw what the graph draws, in its order: dropout after the
/// first expert depth and in a tower, and noisy top-k gates; and the load-balancing
/// losses (importance, and load with noise) add what the graph adds.
#[test]
fn dropout_gate_noise_and_balance_differentiate_natively_as_autograd_does() {
    let tasks = TWO_BINARY_TASKS.replace("tower = [4]", "tower = [4]\ndropout = 0.3");
    for layers in [
        "[[layers]]\nkind = \"mmoe\"\nexperts = 3\nunits = [6]\ndropout = 0.25\n",
        "[[layers]]\nkind = \"mmoe\"\nexperts = 4\nunits = [6]\ntop_k = 2\nnoise = true\n",
        "[[layers]]\nkind = \"cgc\"\nexperts = 2\ntask_experts = 1\nunits = [5]\ndropout = 0.2\ntop_k = 2\nnoise = true\n",
        "[[layers]]\nkind = \"mmoe\"\nexperts = 4\nunits = [6]\ntop_k = 2\nbalance = 0.1\n",
        "[[layers]]\nkind = \"mmoe\"\nexperts = 3\nunits = [6]\nbalance = 0.2\n",
        "[[layers]]\nkind = \"cgc\"\nexperts = 2\ntask_experts = 1\nunits = [5]\ntop_k = 1\nbalance = 0.05\n",
    ] {
        let (c, ds) = small(layers, &tasks, 150);
        check_grad(&c, &ds, layers);
    }
}

/// The op names of a program, in order (shapes and attributes left out).
fn op_names(c: &Compiled) -> Vec<&'static str> {
    lower_program(&c.model, Mode::Train).unwrap().nodes.iter().map(|n| n.op.name()).collect()
}

/// Experts of a layer are one op per depth, never a loop: the programs of models that
/// differ only in their expert counts have the same ops, in the same order.
#[test]
fn the_op_list_does_not_grow_with_the_expert_count() {
    for (few, many) in [
        ("kind = \"mmoe\"\nexperts = 2\nunits = [6, 4]", "kind = \"mmoe\"\nexperts = 9\nunits = [6, 4]"),
        ("kind = \"moe\"\nexperts = 2\nunits = [5]", "kind = \"moe\"\nexperts = 7\nunits = [5]"),
        (
            "kind = \"cgc\"\nexperts = 1\ntask_experts = 1\nunits = [5]\ntop_k = 1",
            "kind = \"cgc\"\nexperts = 6\ntask_experts = 4\nunits = [5]\ntop_k = 3",
        ),
    ] {
        let spec = |layer: &str| super::small_spec(&format!("[[layers]]\n{layer}\ndropout = 0.1\n"), TWO_BINARY_TASKS);
        let (a, b) = (super::compile_ok("a.toml", &spec(few)), super::compile_ok("b.toml", &spec(many)));
        assert_eq!(op_names(&a), op_names(&b), "{few} against {many}");
        let experts = op_names(&a).iter().filter(|n| n.ends_with("linear") && n.contains("expert")).count();
        assert!(experts >= 1, "{few}: no expert op");
    }
}

/// `compile --emit` prints each level; `graph --program` draws the program, an edge per
/// value an op reads.
#[test]
fn the_cli_prints_and_draws_the_program() {
    let spec = "models/synthetic_mmoe.toml";
    let program = super::mg_ok(&["compile", spec, "--emit", "program"]);
    let c = compile_path(&super::repo().join(spec));
    assert_eq!(program, lower_program(&c.model, Mode::Eval).unwrap().to_string());
    assert!(super::mg_ok(&["compile", spec, "--emit", "ir"]).starts_with("model synthetic_mmoe"));
    let backward = super::mg_ok(&["compile", spec, "--emit", "backward"]);
    assert!(
        backward.contains("vjp expert_linear") && backward.contains("grad layers.layer0.gates.weight"),
        "{backward}"
    );
    let dot = super::mg_ok(&["graph", spec, "--program"]);
    let p = lower_program(&c.model, Mode::Eval).unwrap();
    let reads = p.nodes.iter().flat_map(|n| &n.args).filter(|a| p.buf(**a).kind != BufKind::Param).count();
    assert_eq!(dot.matches(" -> ").count(), reads + p.outputs.len(), "{dot}");
    assert!(dot.starts_with("digraph") && dot.contains("mix"), "{dot}");
    let (code, _, err) = super::multigate(&["graph", spec, "--program", "--format", "mermaid"], &[]);
    assert_eq!(code, Some(2), "{err}");
}

/// The fusion patterns (`program/fuse.rs`), found once for every backend that fuses. On
/// the bench shape's evaluation program the experts' ReLU and each tower's run in their
/// linear op's kernel, and the gathers that only the input concat reads are copied
/// there directly (the two the cross product also reads are not). A GELU, whose
/// derivative needs its input, and a linear result read twice stay apart.
#[test]
fn fusion_finds_the_activation_epilogues_and_the_gathers_into_the_concat() {
    let c = compile_path(std::path::Path::new("models/bench_avazu_mmoe_64.toml"));
    let p = lower_program(&c.model, Mode::Eval).unwrap();
    let epilogues = fuse::epilogues(&p);
    let producers: Vec<&Op> = epilogues.iter().map(|e| &p.nodes[e.producer].op).collect();
    assert_eq!(producers, [&Op::ExpertLinear, &Op::Linear, &Op::Linear], "{epilogues:?}");
    assert!(epilogues
        .iter()
        .all(|e| e.unary == Unary::Relu && p.nodes[e.activation].args[0] == p.nodes[e.producer].out));
    let gathers = fuse::gathers_into_concat(&p);
    assert_eq!(gathers.len(), 9, "{gathers:?}");
    for g in gathers {
        let out = p.nodes[g].out;
        let readers: Vec<&Op> = p.nodes.iter().filter(|n| n.args.contains(&out)).map(|n| &n.op).collect();
        assert_eq!(readers, [&Op::Concat]);
    }
    let (gelu, _) =
        small("[[layers]]\nkind = \"mmoe\"\nexperts = 2\nunits = [4]\nactivation = \"gelu\"\n", TWO_BINARY_TASKS, 10);
    let p = lower_program(&gelu.model, Mode::Train).unwrap();
    assert!(fuse::epilogues(&p).iter().all(|e| p.nodes[e.producer].op != Op::ExpertLinear));
    // A linear op whose result two ops read keeps it.
    let mut two = p.clone();
    let e = fuse::epilogues(&p)[0];
    let reread = p.nodes[e.producer].out;
    two.bufs.push(p.buf(reread).clone());
    let out = multigate::program::BufId(two.bufs.len() - 1);
    two.nodes.push(multigate::program::Node { op: Op::Unary(Unary::Relu), args: vec![reread], out });
    assert!(!fuse::epilogues(&two).iter().any(|x| x.producer == e.producer));
}
