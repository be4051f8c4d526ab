//! The library API end to end: train a spec with an observer that watches every step,
//! then load the bundle once with `Predictor` and score raw rows, as a server would.
//!
//! ```sh
//! cargo run --release --example train_and_predict
//! ```

use multigate::pipeline::compile_source;
use multigate::run::{self, Event, Observer, Predictor, TrainOptions};
use multigate::source::SourceFile;

const SPEC: &str = r#"
model tiny_ple {
  synthetic categorical(rows = 20000, cardinality = 50)
  feature user: categorical(hash = 1000) embed 8
  feature item: categorical(hash = 1000) embed 8
  feature price: dense(transform = log1p)
  layer cgc { experts 2 x [16] task_experts 1 }
  layer cgc { experts 2 x [8] task_experts 1 }
  task ctr: binary(label = click) tower [8]
  task cvr: binary(label = buy) tower [8]
  train { adam(lr = 3e-3) batch 256 epochs 3 seed 1 }
}
"#;

/// Counts steps and prints one line per epoch.
struct Progress {
    steps: u64,
}

impl Observer for Progress {
    fn on(&mut self, event: &Event<'_>) {
        match event {
            Event::Step { .. } => self.steps += 1,
            Event::Epoch(e) => {
                println!("epoch {}: {} steps so far, train loss {:?}", e.epoch, self.steps, e.train_loss)
            }
            Event::Finished { out, .. } => println!("bundle in {}", out.display()),
            _ => {}
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let src = SourceFile::from_text("tiny_ple.mg", SPEC);
    let compiled = match compile_source(&src) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}", e.render(Some(&src), false));
            std::process::exit(2);
        }
    };
    let dir = std::env::temp_dir().join("multigate-example-tiny-ple");
    let opts = TrainOptions { out: Some(dir.clone()), fresh: true, force: true, ..Default::default() };
    let done = run::train_spec(&src, compiled, &opts, &mut Progress { steps: 0 })?;
    for (task, m) in done.compiled.model.tasks.iter().zip(&done.report.validation) {
        println!("validation {}: {m}", task.name);
    }

    // Raw values, as a request would carry them: hashing and transforms happen inside.
    let predictor = Predictor::load(&dir, multigate::backend::Device::Cpu)?;
    let columns = vec![
        ("user".to_string(), vec!["u17".to_string(), "u3".to_string()]),
        ("item".to_string(), vec!["i5".to_string(), "i42".to_string()]),
        ("price".to_string(), vec!["12.5".to_string(), "".to_string()]),
    ];
    let p = predictor.predict_columns(&columns)?;
    for (task, values) in predictor.compiled().model.tasks.iter().zip(&p.values) {
        println!("{}: {values:?}", task.name);
    }
    Ok(())
}
