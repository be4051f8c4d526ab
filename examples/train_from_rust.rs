//! Using multigate as a library: compile a spec held in a string, train it on the
//! built-in MMoE generator, and read the gate usage and per-task metrics.
//!
//! ```sh
//! cargo run --release --example train_from_rust
//! ```

use multigate::backend::candle::CandleModel;
use multigate::pipeline::compile_source;
use multigate::source::SourceFile;
use multigate::{data, train};

const SPEC: &str = r#"
model tiny_mmoe {
  synthetic mmoe(rows = 20000, dim = 16, correlation = 0.3)
  feature x: dense(width = 16)
  layer mmoe { experts 4 x [8] relu }
  task y1: regression(label = y1) tower [4]
  task y2: regression(label = y2) tower [4]
  train { adam(lr = 3e-3) batch 256 epochs 3 seed 1 }
}
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let src = SourceFile::from_text("tiny.mg", SPEC);
    let compiled = match compile_source(&src) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}", e.render(Some(&src), false));
            std::process::exit(2);
        }
    };
    print!("{}", *compiled.model);
    let (splits, info) = data::load_splits(&compiled.model, &compiled.data, None, &|n| n.reader.clone())?;
    println!("label correlation {:.3}", info.label_correlation.unwrap_or(f64::NAN));
    let model = CandleModel::new(&compiled.model, compiled.train.seed, &candle_core::Device::Cpu)?;
    let report = train::fit(&model, &compiled.train, &splits, &mut |e| {
        println!("epoch {}: train loss {:?}", e.epoch, e.train_loss);
    })?;
    for (task, m) in compiled.model.tasks.iter().zip(&report.validation) {
        println!("{}: {m}", task.name);
    }
    for g in &report.gate_usage {
        for (name, w) in &g.gates {
            println!("{name}: {w:.3?}");
        }
    }
    Ok(())
}
