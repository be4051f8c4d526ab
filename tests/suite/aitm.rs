//! AITM (Xi et al., KDD 2021), added as a lowering only: the program of a transfer
//! computes what a naive per-row implementation of the paper's module computes, on
//! the native path and on candle's graph; its gradients (the calibration loss's
//! included) match central finite differences; and training runs end to end.

use candle_core::{Device, Tensor};
use multigate::backend::candle::{Batch, CandleModel};
use multigate::rng::Rng;

use super::central_difference;
use super::infer::{scramble, small};

/// A click task and a conversion task that attends to it, both on the input row (no
/// layers: the naive reference below starts from that row).
fn funnel(calibration: f64) -> String {
    format!(
        "[[tasks]]\nname = \"t1\"\nkind = \"binary\"\nlabel = \"y1\"\ntower = [4]\nactivation = \"tanh\"\n\n\
         [[tasks]]\nname = \"t2\"\nkind = \"binary\"\nlabel = \"y2\"\ntower = [3]\nactivation = \"tanh\"\n\
         transfer_from = \"t1\"\ncalibration = {calibration}\n"
    )
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// A parameter's values and shape, by its table name.
fn param(model: &CandleModel, name: &str) -> (Vec<f32>, Vec<usize>) {
    let v = &model.vars().iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no parameter {name}")).1;
    (values(v.as_tensor()), v.as_tensor().dims().to_vec())
}

/// `x W (+ b)` for one row `x`.
fn affine(x: &[f32], (w, shape): &(Vec<f32>, Vec<usize>), b: Option<&[f32]>) -> Vec<f32> {
    let (i, o) = (shape[0], shape[1]);
    assert_eq!(x.len(), i);
    (0..o).map(|j| (0..i).map(|k| x[k] * w[k * o + j]).sum::<f32>() + b.map_or(0.0, |b| b[j])).collect()
}

/// Both tasks' logits for every row, the paper's module written out row by row.
fn naive(model: &CandleModel, batch: &Batch) -> (Vec<f32>, Vec<f32>) {
    let x = model.input_row(batch).unwrap().to_vec2::<f32>().unwrap();
    let p = |n: &str| param(model, n);
    let tanh = |v: Vec<f32>| v.into_iter().map(f32::tanh).collect::<Vec<_>>();
    let (mut click, mut convert) = (Vec::new(), Vec::new());
    for row in &x {
        let h1 = tanh(affine(row, &p("tasks.t1.tower.0.weight"), Some(&p("tasks.t1.tower.0.bias").0)));
        click.push(affine(&h1, &p("tasks.t1.tower.1.weight"), Some(&p("tasks.t1.tower.1.bias").0))[0]);
        let q = tanh(affine(row, &p("tasks.t2.tower.0.weight"), Some(&p("tasks.t2.tower.0.bias").0)));
        let info = affine(&h1, &p("tasks.t2.transfer.info.weight"), Some(&p("tasks.t2.transfer.info.bias").0));
        let info: Vec<f32> = info.into_iter().map(|v| v.max(0.0)).collect();
        // Two items, [q, info]: scaled dot-product self-attention, each item's weight.
        let items = [q, info];
        let project = |name: &str, u: &[f32]| affine(u, &p(name), None);
        let scores: Vec<f32> = items
            .iter()
            .map(|u| {
                let (qu, ku) = (project("tasks.t2.transfer.query", u), project("tasks.t2.transfer.key", u));
                qu.iter().zip(&ku).map(|(a, b)| a * b).sum::<f32>() / (3f32).sqrt()
            })
            .collect();
        let top = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = scores.iter().map(|s| (s - top).exp()).collect();
        let weights: Vec<f32> = e.iter().map(|v| v / e.iter().sum::<f32>()).collect();
        let mut z = vec![0f32; 3];
        for (u, w) in items.iter().zip(&weights) {
            let v = project("tasks.t2.transfer.value", u);
            z.iter_mut().zip(&v).for_each(|(s, x)| *s += w * x);
        }
        convert.push(affine(&z, &p("tasks.t2.tower.1.weight"), Some(&p("tasks.t2.tower.1.bias").0))[0]);
    }
    (click, convert)
}

#[test]
fn a_transfer_computes_the_papers_module_row_by_row() {
    let (c, ds) = small("", &funnel(0.5), 60);
    let model = CandleModel::new(&c.model, 5, &Device::Cpu).unwrap();
    scramble(&model, 3);
    let batch = Batch::gather(&ds, &(0..60).collect::<Vec<_>>(), &Device::Cpu).unwrap();
    let (click, convert) = naive(&model, &batch);
    for (what, out) in [("native", model.forward(&batch).unwrap()), ("graph", model.forward_graph(&batch).unwrap())] {
        for (task, want) in [(0, &click), (1, &convert)] {
            let got = values(&out.heads[task]);
            for (r, (g, w)) in got.iter().zip(want.iter()).enumerate() {
                assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{what}: task {task} row {r}: {g} against {w}");
            }
        }
    }
    // The attention matters: the conversion logit moves with the click tower's weights.
    let before = values(&model.forward(&batch).unwrap().heads[1]);
    let w = &model.vars().iter().find(|(n, _)| n == "tasks.t1.tower.0.weight").unwrap().1;
    w.set(&(w.as_tensor() * 2.0).unwrap()).unwrap();
    let after = values(&model.forward(&batch).unwrap().heads[1]);
    assert!(before.iter().zip(&after).any(|(a, b)| (a - b).abs() > 1e-3));
}

/// The native step's gradients against central finite differences of the whole loss:
/// both tasks' cross-entropies and the calibration term, computed here from the heads.
#[test]
fn transfer_and_calibration_gradients_match_finite_differences() {
    let calibration = 0.5;
    let (c, ds) = small("", &funnel(calibration), 64);
    let model = CandleModel::new(&c.model, 5, &Device::Cpu).unwrap();
    scramble(&model, 11);
    let batch = Batch::gather(&ds, &(0..64).collect::<Vec<_>>(), &Device::Cpu).unwrap();
    assert!(model.native_training());
    let sigmoid = |z: f32| 1.0 / (1.0 + (-z as f64).exp());
    let loss = || -> f64 {
        let g = model.train_step(&batch, None, &mut Rng::new(1)).unwrap();
        let heads = model.forward(&batch).unwrap().heads;
        let (p1, p2) = (values(&heads[0]), values(&heads[1]));
        let excess: f64 = p1.iter().zip(&p2).map(|(&a, &b)| (sigmoid(b) - sigmoid(a)).max(0.0)).sum::<f64>();
        g.per_task.iter().map(|&l| l as f64).sum::<f64>() + calibration * excess / p1.len() as f64
    };
    let step = model.train_step(&batch, None, &mut Rng::new(1)).unwrap();
    let mut checked = 0;
    for (name, v) in model.vars().iter().filter(|(n, _)| n.starts_with("tasks.")) {
        let g = values(step.grads.get(v.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}")));
        let n = g.len();
        for at in [0, n / 2, n - 1] {
            let numeric = central_difference(v, at, 1e-3, loss);
            let analytic = g[at] as f64;
            assert!(
                (numeric - analytic).abs() <= 2e-3 + 0.03 * analytic.abs(),
                "{name}[{at}]: native {analytic}, finite differences {numeric}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 39, "{checked} coordinates");
    // The calibration term has a gradient of its own: without it the step differs.
    let (c0, _) = small("", &funnel(0.0), 64);
    let plain = CandleModel::new(&c0.model, 5, &Device::Cpu).unwrap();
    scramble(&plain, 11);
    let g0 = plain.train_step(&batch, None, &mut Rng::new(1)).unwrap();
    let name = |m: &CandleModel, n: &str| m.vars().iter().find(|(x, _)| x == n).unwrap().1.clone();
    let w = "tasks.t2.tower.1.bias";
    let (a, b) = (
        values(step.grads.get(name(&model, w).as_tensor()).unwrap()),
        values(g0.grads.get(name(&plain, w).as_tensor()).unwrap()),
    );
    assert!((a[0] - b[0]).abs() > 1e-6, "calibration moved nothing: {a:?} {b:?}");
}
