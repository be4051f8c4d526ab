//! `multigate bench`: training and inference throughput with a per-phase breakdown.

use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::Tensor;

use super::{compile, Failure};
use multigate::backend::candle::{candle_device, fma_peak, Batch, CandleBackend};
use multigate::backend::Backend;
use multigate::backend::Device;
use multigate::data;
use multigate::ir::DataSource;
use multigate::train::adam::{Adam, AdamConfig};
use multigate::train::shard;

pub fn bench(
    path: &Path,
    batch_size: usize,
    steps: usize,
    device: Device,
    optimizer: Option<&str>,
    autograd: bool,
) -> Result<(), Failure> {
    let (src, mut c) = compile(path)?;
    match optimizer {
        None => {}
        Some("adam") => c.train.lazy_embeddings = false,
        Some("lazy_adam") => c.train.lazy_embeddings = true,
        Some(other) => {
            return Err(Failure::new(2, format!("error: unknown optimizer `{other}`: expected adam or lazy_adam")))
        }
    }
    let dev = candle_device(device)?;
    let batch_size = batch_size.max(1);
    super::auto_threads();
    let steps = steps.max(1);
    // Enough distinct rows for 16 different batches; the categorical generator serves
    // any spec without dense inputs wider than 64, the MMoE one serves its own.
    let rows = batch_size * 16;
    let frame = match &c.data.source {
        DataSource::Synthetic(s) => data::synthetic::generate(&c.model, s, rows),
        DataSource::Csv(_) => data::synthetic::categorical_frame(&c.model, 1000, rows, 1),
    };
    // Label statistics the spec leaves open are fitted on these rows, as training would.
    let fitted = data::fit::fit_on_frames(&c.model, std::slice::from_ref(&frame))?;
    if !fitted.is_empty() {
        c = multigate::run::pin_fitted(&src, c, fitted, &mut multigate::run::Silent)?.1;
    }
    let ds = data::encode(&c.model, &frame, true)?;
    let batches: Vec<Batch> = (0..16)
        .map(|i| Batch::gather(&ds, &(i * batch_size..(i + 1) * batch_size).collect::<Vec<_>>(), &dev))
        .collect::<Result<_, _>>()?;
    let mut model = CandleBackend { device: dev.clone() }.build(&c.model, c.train.seed)?;
    model.set_graph_training(autograd);
    let vars = model.vars().to_vec();
    let mut opt = Adam::new(vars, AdamConfig::from(&c.train))?;
    let workers = shard::Workers::configured()?;
    let sync = |t: &Tensor| -> Result<(), Failure> {
        t.to_scalar::<f32>()?;
        Ok(())
    };

    let warmup = 20.min(steps);
    let mut rng = multigate::rng::Rng::new(c.train.seed);
    // Forward only (inference): the model's heads, synchronised once per step.
    for b in batches.iter().cycle().take(warmup) {
        sync(&shard::forward(&model, b, &workers)?[0].sum_all()?)?;
    }
    let t0 = Instant::now();
    for b in batches.iter().cycle().take(steps) {
        sync(&shard::forward(&model, b, &workers)?[0].sum_all()?)?;
    }
    let forward_only = t0.elapsed();
    // The f32 FMA rate of every worker at once, under the same neighbours as the pass
    // (on the CPU: a GPU's pass has no such ceiling here).
    let peak: Option<Option<f64>> = dev.is_cpu().then(|| workers.broadcast(fma_peak).into_iter().sum());

    // Full training steps, timing each phase. On a GPU the phases are the host's time
    // to queue the work; the total runs to a device sync after the last step.
    let (mut passes, mut optim) = (Duration::ZERO, Duration::ZERO);
    let mut allocations = 0u64;
    let first = model.vars().first().map(|(_, v)| v.as_tensor().clone());
    let sync_params = || -> Result<(), Failure> {
        match &first {
            Some(p) => sync(&p.flatten_all()?.get(0)?),
            None => Ok(()),
        }
    };
    let mut timed = Instant::now();
    for (i, b) in batches.iter().cycle().take(warmup + steps).enumerate() {
        if i == warmup {
            sync_params()?;
            timed = Instant::now();
        }
        let allocated = super::ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed);
        let t = Instant::now();
        let step = shard::step(&model, b, &mut rng, None, &workers)?;
        let t_p = t.elapsed();
        let t = Instant::now();
        workers.run(|| opt.step(&step.grads, &step.lookups, c.train.lr))?;
        let t_o = t.elapsed();
        if i >= warmup {
            allocations += super::ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed) - allocated;
            passes += t_p;
            optim += t_o;
        }
    }
    sync_params()?;
    let train = timed.elapsed().max(passes + optim);
    let per_sec = |d: Duration| (steps * batch_size) as f64 / d.as_secs_f64().max(1e-12);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0 / steps as f64;
    println!(
        "model {}: {} parameters, {} forward FLOPs/sample",
        c.model.name,
        c.model.param_count(),
        c.model.flops_per_sample()
    );
    println!(
        "device {device:?}, threads {}, batch {batch_size}, {}, {}, {steps} timed steps after {warmup} warm-up",
        workers.threads(),
        if c.train.lazy_embeddings { "lazy_adam" } else { "adam" },
        if model.native_training() { "native interpreter" } else { "autograd" }
    );
    println!("train:        {:>10.0} samples/s  ({:.3} ms/step)", per_sec(train), ms(train));
    // Forward and backward run together, one shard per worker.
    let share = |d: Duration| 100.0 * d.as_secs_f64() / train.as_secs_f64();
    println!("  forward+loss+backward {:>6.1}%  {:.3} ms", share(passes), ms(passes));
    println!("  optimizer             {:>6.1}%  {:.3} ms", share(optim), ms(optim));
    println!("forward only: {:>10.0} samples/s  ({:.3} ms/step)", per_sec(forward_only), ms(forward_only));
    let flops = c.model.flops_per_sample();
    match peak {
        None => {}
        Some(Some(peak)) => {
            let ceiling = peak / flops.max(1) as f64;
            println!(
                "ceiling:      {ceiling:>10.0} samples/s forward only at the f32 FMA peak ({:.1} GFLOP/s over {} \
                 thread(s), measured now; {flops} FLOPs/sample): this run is at {:.1}% of it",
                peak / 1e9,
                workers.threads(),
                100.0 * per_sec(forward_only) / ceiling
            )
        }
        Some(None) => {
            println!("ceiling:      unknown (the FMA peak is measured with AVX2 and FMA, which this CPU lacks)")
        }
    }
    println!(
        "memory:       {} allocations per training step; peak resident {}",
        allocations / steps as u64,
        super::peak_rss().map_or_else(|| "unknown".to_string(), |b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64))
    );
    Ok(())
}

/// `multigate bench-ingest`: rows per second from a spec's training data into encoded
/// rows, read (parse) and encode (hash, transform) timed apart, best of `repeat`.
/// Single-row scoring latency of a bundle through the library's [`Predictor`], as a
/// server calls it: raw text per column in, hashed, encoded and scored, one row a call.
/// The rows come from the categorical generator (the bundle's own feature columns).
pub fn bench_predict(bundle: &Path, calls: usize) -> Result<(), Failure> {
    let predictor = multigate::run::Predictor::load(bundle, Device::Cpu)?;
    // As `serve` runs: candle's kernels on one thread (`RAYON_NUM_THREADS` set; without
    // it, candle counts the machine's cores from /proc at every matmul).
    super::auto_threads();
    let model = &predictor.compiled().model;
    let rows = 1000;
    let frame = data::synthetic::categorical_frame(model, 1000, rows, 1);
    let text = |column: &str, r: usize| frame.column(column).map(|c| c.text(r)).unwrap_or_default();
    let requests: Vec<Vec<(String, Vec<String>)>> =
        (0..rows).map(|r| predictor.input_columns().iter().map(|c| (c.clone(), vec![text(c, r)])).collect()).collect();
    let calls = calls.max(1);
    let warmup = 200;
    let mut times = Vec::with_capacity(calls);
    for (i, request) in requests.iter().cycle().take(warmup + calls).enumerate() {
        let t = Instant::now();
        let p = predictor.predict_columns(request)?;
        let elapsed = t.elapsed();
        std::hint::black_box(&p);
        if i >= warmup {
            times.push(elapsed);
        }
    }
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6;
    let mean = times.iter().map(|d| d.as_secs_f64()).sum::<f64>() / times.len() as f64 * 1e6;
    println!(
        "model {}: {} parameters; {calls} single-row calls after {warmup} warm-up (text in: hashing, encoding, forward)",
        model.name,
        model.param_count()
    );
    println!(
        "latency us: median {:.1}, p90 {:.1}, p99 {:.1}, max {:.1}, mean {:.1}",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0),
        mean
    );
    Ok(())
}

pub fn bench_ingest(path: &Path, data_path: Option<&Path>, repeat: usize, threads: usize) -> Result<(), Failure> {
    let (src, c) = compile(path)?;
    let locate = multigate::run::spec_locator(&src);
    // Open statistics are fitted first, as training does (not timed).
    let fitted = data::fit::fit(&c.model, &c.data, data_path, &locate)?;
    let (_, c) = multigate::run::pin_fitted(&src, c, fitted, &mut multigate::run::Silent)?;
    let Some((parts, _, format)) = data::source::training_files(&c.data, data_path)? else {
        return Err(Failure::new(2, "error: bench-ingest reads files: a CSV/Parquet spec, or --data PATH"));
    };
    let needs = data::needs(&c.model);
    let threads = threads.max(1);
    let mut best: Option<(Duration, Duration, usize)> = None;
    for _ in 0..repeat.max(1) {
        let start = Instant::now();
        // Parts are read `threads` at a time; each part is encoded on its own thread too.
        let results: Vec<Result<(Duration, usize), data::DataError>> = std::thread::scope(|s| {
            let chunks: Vec<&[data::source::Part]> = parts.chunks(parts.len().div_ceil(threads)).collect();
            let handles: Vec<_> = chunks
                .into_iter()
                .map(|chunk| {
                    let (needs, format, model, locate) = (&needs, &format, &c.model, &locate);
                    s.spawn(move || -> Result<(Duration, usize), data::DataError> {
                        let (mut enc, mut rows) = (Duration::ZERO, 0);
                        for part in chunk {
                            let frame = data::source::read_part(part, format, needs, true, locate, &|_, _| {})?;
                            let t = Instant::now();
                            let ds = data::encode_training(model, &frame)?;
                            enc += t.elapsed();
                            rows += ds.rows;
                        }
                        Ok((enc, rows))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(data::DataError::Other("a reader thread panicked".into()))))
                .collect()
        });
        let total = start.elapsed();
        let (mut enc, mut rows) = (Duration::ZERO, 0);
        for r in results {
            let (e, n) = r?;
            enc = enc.max(e);
            rows += n;
        }
        if best.is_none_or(|(t, _, _)| total < t) {
            best = Some((total, enc, rows));
        }
    }
    let (total, enc, rows) = best.unwrap_or_default();
    let per_s = |d: Duration| rows as f64 / d.as_secs_f64().max(1e-9);
    println!(
        "{} rows from {} file(s), read {} at a time: {:.0} rows/s end to end ({:.3} s; encode {:.3} s of it), best of {}",
        rows,
        parts.len(),
        threads,
        per_s(total),
        total.as_secs_f64(),
        enc.as_secs_f64(),
        repeat.max(1)
    );
    Ok(())
}

/// `multigate convert`: a spec's data files as Parquet, the columns it reads, typed as
/// it reads them (numbers as FLOAT, text as UTF8).
pub fn convert(path: &Path, data_path: Option<&Path>, out: &Path) -> Result<(), Failure> {
    let (src, c) = compile(path)?;
    let locate = multigate::run::spec_locator(&src);
    let fitted = data::fit::fit(&c.model, &c.data, data_path, &locate)?;
    let (_, c) = multigate::run::pin_fitted(&src, c, fitted, &mut multigate::run::Silent)?;
    let files = data::check::files(&c.data, data_path);
    if files.is_empty() {
        return Err(Failure::new(2, "error: convert reads files: a CSV spec, or --data PATH"));
    }
    std::fs::create_dir_all(out).map_err(|e| Failure::new(1, format!("error: {}: {e}", out.display())))?;
    let needs = data::needs(&c.model);
    for (file, format) in files {
        let frame = data::source::read_path(&file, &format, &needs, true, &locate)?;
        let name = file.file_name().map_or("data".to_string(), |n| n.to_string_lossy().to_string());
        let stem = name.trim_end_matches(".gz").trim_end_matches(".csv").trim_end_matches(".data").to_string();
        let target = out.join(format!("{stem}.parquet"));
        data::parquet_source::write_parquet(&frame, &target)?;
        println!("{} -> {} ({} rows)", file.display(), target.display(), frame.rows);
    }
    Ok(())
}
