//! Pictures of a run, drawn with plotters from `metrics.json` (so that a finished run
//! and `multigate plot` use one path): learning curves (per task, the loss on training
//! and validation rows and the validation metric, per epoch) and a gate heatmap (per
//! layer, each gate's mean weight on each expert). Several runs overlay in the curves.
//!
//! Text is drawn with the bundled DejaVu Sans Mono (assets/fonts), so no system font
//! library is needed.

use plotters::prelude::*;
use serde_json::Value;

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSansMono.ttf");

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The bundled font is valid; a failure would only cost the labels.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// One run's curves, read from its `metrics.json`.
pub struct RunCurves {
    pub label: String,
    pub tasks: Vec<String>,
    /// Per epoch: (epoch, per task (train loss, validation loss, validation metric)).
    pub epochs: Vec<(f64, Vec<(f64, f64, f64)>)>,
    /// The metric plotted per task (`auc`, `mse`, ...).
    pub metric_names: Vec<String>,
    /// Per layer: (layer, gate names, expert names, weights per gate).
    pub gates: Vec<(String, Vec<String>, Vec<String>, Vec<Vec<f64>>)>,
}

/// A task's loss on a split from its metrics object: logloss, or the squared error in
/// the trained space.
fn task_loss(m: &Value) -> f64 {
    m.get("logloss")
        .and_then(Value::as_f64)
        .or_else(|| m.get("transformed").and_then(|t| t.get(0)).and_then(Value::as_f64))
        .or_else(|| m.get("mse").and_then(Value::as_f64))
        .unwrap_or(f64::NAN)
}

fn task_metric(m: &Value) -> (String, f64) {
    for k in ["auc", "macro_auc", "mse"] {
        if let Some(v) = m.get(k).and_then(Value::as_f64) {
            return (k.to_string(), v);
        }
    }
    (String::new(), f64::NAN)
}

impl RunCurves {
    /// Reads what the plots need from `metrics.json`'s content.
    pub fn from_metrics(label: &str, metrics: &Value) -> Result<RunCurves, String> {
        let tasks: Vec<String> = metrics["task_order"]
            .as_array()
            .ok_or("metrics.json has no `task_order` (written by an older multigate)")?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        let report = &metrics["report"];
        let mut metric_names = vec![String::new(); tasks.len()];
        let epochs = report["epochs"]
            .as_array()
            .ok_or("metrics.json has no per-epoch report")?
            .iter()
            .map(|e| {
                let per_task = (0..tasks.len())
                    .map(|t| {
                        let val = &e["validation"][t];
                        let (name, metric) = task_metric(val);
                        if !name.is_empty() {
                            metric_names[t] = name;
                        }
                        (e["train_loss"][t].as_f64().unwrap_or(f64::NAN), task_loss(val), metric)
                    })
                    .collect();
                (e["epoch"].as_f64().unwrap_or(0.0), per_task)
            })
            .collect();
        let gates = report["gate_usage"]
            .as_array()
            .map(|layers| {
                layers
                    .iter()
                    .map(|l| {
                        let gs = l["gates"].as_array().cloned().unwrap_or_default();
                        let names = gs.iter().map(|g| g[0].as_str().unwrap_or("?").to_string()).collect();
                        let layer = l["layer"].as_str().unwrap_or("?");
                        let experts: Vec<String> = l["experts"]
                            .as_array()
                            .map(|e| {
                                e.iter()
                                    .map(|x| {
                                        let n = x.as_str().unwrap_or("?");
                                        let n = n.strip_prefix(&format!("{layer}.")).unwrap_or(n);
                                        n.strip_prefix("experts.").unwrap_or(n).to_string()
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        // Each weight goes under the expert it weighs (`mixes`); a gate
                        // that does not weigh an expert leaves its cell empty (NaN).
                        let weights = gs
                            .iter()
                            .enumerate()
                            .map(|(gi, g)| {
                                let w: Vec<f64> = g[1]
                                    .as_array()
                                    .map(|w| w.iter().filter_map(Value::as_f64).collect())
                                    .unwrap_or_default();
                                let mix: Vec<usize> = l["mixes"][gi]
                                    .as_array()
                                    .map(|m| m.iter().filter_map(|x| x.as_u64().map(|k| k as usize)).collect())
                                    .unwrap_or_else(|| (0..w.len()).collect());
                                let mut row = vec![f64::NAN; experts.len().max(w.len())];
                                for (v, k) in w.iter().zip(mix) {
                                    if let Some(cell) = row.get_mut(k) {
                                        *cell = if cell.is_nan() { *v } else { *cell + v };
                                    }
                                }
                                row
                            })
                            .collect::<Vec<Vec<f64>>>();
                        let width = weights.iter().map(Vec::len).max().unwrap_or(0);
                        let experts = if experts.len() == width {
                            experts
                        } else {
                            (0..width).map(|k| format!("e{k}")).collect()
                        };
                        (l["layer"].as_str().unwrap_or("?").to_string(), names, experts, weights)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(RunCurves { label: label.to_string(), tasks, epochs, metric_names, gates })
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Learning curves of one or more runs as a PNG: a row per task (of the first run),
/// loss on the left (solid: training, dashed: validation), the validation metric on
/// the right; one colour per run.
pub fn curves_png(runs: &[RunCurves]) -> Result<Vec<u8>, String> {
    register_font();
    let first = runs.first().ok_or("no runs to plot")?;
    let rows = first.tasks.len().max(1);
    let (w, h) = (1200u32, 300 * rows as u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let cells = root.split_evenly((rows, 2));
        for (t, task) in first.tasks.iter().enumerate() {
            for (side, area) in [(0usize, &cells[2 * t]), (1, &cells[2 * t + 1])] {
                let series: Vec<(usize, Vec<(f64, f64)>, Vec<(f64, f64)>)> = runs
                    .iter()
                    .enumerate()
                    .filter_map(|(r, run)| {
                        let ti = run.tasks.iter().position(|x| x == task)?;
                        let a: Vec<(f64, f64)> =
                            run.epochs.iter().map(|(e, v)| (*e, if side == 0 { v[ti].0 } else { v[ti].2 })).collect();
                        let b: Vec<(f64, f64)> = run.epochs.iter().map(|(e, v)| (*e, v[ti].1)).collect();
                        Some((r, a, b))
                    })
                    .collect();
                let ys: Vec<f64> = series
                    .iter()
                    .flat_map(|(_, a, b)| a.iter().chain(if side == 0 { b.iter() } else { [].iter() }).map(|p| p.1))
                    .filter(|y| y.is_finite())
                    .collect();
                let (lo, hi) = ys.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &y| (l.min(y), h.max(y)));
                let (lo, hi) = if lo.is_finite() { (lo, if hi > lo { hi } else { lo + 1.0 }) } else { (0.0, 1.0) };
                let pad = (hi - lo) * 0.05;
                let max_epoch = series.iter().flat_map(|(_, a, _)| a.iter().map(|p| p.0)).fold(1.0f64, f64::max);
                let title = if side == 0 {
                    format!("{task}: loss (solid train, dashed validation)")
                } else {
                    format!("{task}: validation {}", first.metric_names.get(t).map_or("", |s| s.as_str()))
                };
                let mut chart = ChartBuilder::on(area)
                    .caption(title, ("sans-serif", 16))
                    .margin(8)
                    .x_label_area_size(28)
                    .y_label_area_size(60)
                    .build_cartesian_2d(1f64..max_epoch.max(2.0), (lo - pad)..(hi + pad))
                    .map_err(err)?;
                chart.configure_mesh().x_desc("epoch").label_style(("sans-serif", 12)).draw().map_err(err)?;
                for (r, a, b) in &series {
                    let colour = Palette99::pick(*r).to_rgba();
                    let s = chart
                        .draw_series(LineSeries::new(
                            a.iter().copied().filter(|p| p.1.is_finite()),
                            colour.stroke_width(2),
                        ))
                        .map_err(err)?;
                    if side == 0 || runs.len() > 1 {
                        let label = runs[*r].label.clone();
                        s.label(label)
                            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2)));
                    }
                    if side == 0 {
                        chart
                            .draw_series(DashedLineSeries::new(
                                b.iter().copied().filter(|p| p.1.is_finite()),
                                6,
                                4,
                                colour.stroke_width(2),
                            ))
                            .map_err(err)?;
                    }
                }
                if side == 0 || runs.len() > 1 {
                    chart
                        .configure_series_labels()
                        .background_style(WHITE.mix(0.8))
                        .border_style(BLACK)
                        .label_font(("sans-serif", 12))
                        .draw()
                        .map_err(err)?;
                }
            }
        }
        root.present().map_err(err)?;
    }
    encode_png(&buf, w, h)
}

/// Each layer's gates x experts mean weights as a PNG heatmap, values written in.
pub fn gates_png(run: &RunCurves) -> Result<Option<Vec<u8>>, String> {
    register_font();
    if run.gates.is_empty() {
        return Ok(None);
    }
    // Wide enough for the longest expert name (10 px font, ~6 px a character).
    let longest = run.gates.iter().flat_map(|(_, _, e, _)| e.iter().map(|x| x.chars().count())).max().unwrap_or(0);
    let cell = (longest as u32 * 6 + 10).max(70);
    let width = run.gates.iter().map(|(_, _, e, _)| e.len()).max().unwrap_or(1) as u32;
    let per_layer: Vec<u32> = run.gates.iter().map(|(_, g, _, _)| g.len() as u32 * cell + 110).collect();
    let (w, h) = (width * cell + 260, per_layer.iter().sum::<u32>());
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut top = 0i32;
        for ((layer, gates, experts, weights), lh) in run.gates.iter().zip(&per_layer) {
            let area = root.clone().shrink((0, top), (w, *lh));
            area.draw(&Text::new(format!("layer {layer}: mean gate weight per expert"), (10, 8), ("sans-serif", 16)))
                .map_err(err)?;
            for (k, e) in experts.iter().enumerate() {
                let x = 240 + k as i32 * cell as i32;
                area.draw(&Text::new(e.clone(), (x + 2, 40), ("sans-serif", 10))).map_err(err)?;
            }
            for (g, (name, row)) in gates.iter().zip(weights).enumerate() {
                let y = 60 + g as i32 * cell as i32;
                area.draw(&Text::new(name.clone(), (10, y + cell as i32 / 2 - 6), ("sans-serif", 12))).map_err(err)?;
                for (k, &v) in row.iter().enumerate().filter(|(_, v)| v.is_finite()) {
                    let x = 240 + k as i32 * cell as i32;
                    let shade = (255.0 * (1.0 - v.clamp(0.0, 1.0))) as u8;
                    area.draw(&Rectangle::new(
                        [(x, y), (x + cell as i32 - 2, y + cell as i32 - 2)],
                        RGBColor(shade, shade, 255).filled(),
                    ))
                    .map_err(err)?;
                    let ink = if v > 0.5 { WHITE } else { BLACK };
                    area.draw(&Text::new(
                        format!("{v:.2}"),
                        (x + 16, y + cell as i32 / 2 - 6),
                        ("sans-serif", 13).into_font().color(&ink),
                    ))
                    .map_err(err)?;
                }
            }
            top += *lh as i32;
        }
        root.present().map_err(err)?;
    }
    encode_png(&buf, w, h).map(Some)
}

fn encode_png(rgb: &[u8], w: u32, h: u32) -> Result<Vec<u8>, String> {
    let img = image::RgbImage::from_raw(w, h, rgb.to_vec()).ok_or("bad image buffer")?;
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).map_err(err)?;
    Ok(out.into_inner())
}
