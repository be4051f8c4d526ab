//! The command line: the only place that prints and exits.

mod bench;
mod watch;

/// The global allocator (mimalloc) with a count of allocations, for `bench`.
pub struct CountingAlloc(pub mimalloc::MiMalloc);

/// Allocations made so far (a relaxed counter: one uncontended add per allocation).
pub static ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to mimalloc; the counter does not touch memory.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.0.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        self.0.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.0.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.0.realloc(ptr, layout, new_size)
    }
}

/// Peak resident memory of this process (Linux `VmHWM`), in bytes.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use multigate::backend::Device;
use multigate::data::{self, Need, NeedOwner};
use multigate::ir::DataSource;
use multigate::lower::Compiled;
use multigate::source::SourceFile;
use multigate::train::TrainReport;
use multigate::{pipeline, run};

#[derive(Parser)]
#[command(
    name = "multigate",
    version,
    about = "Compile, train and export multi-task recommendation models (shared-bottom, MoE, MMoE, CGC/PLE, ESMM)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `--threads`, on the commands that run a model.
#[derive(clap::Args, Clone, Copy, Debug)]
struct Threads {
    /// CPU worker threads: each batch is cut into one shard per thread (default: all
    /// cores).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a spec; print its IR, or every error (exit 2).
    Check {
        /// The spec (.toml or .mg).
        spec: PathBuf,
        /// Also load the data as training would (labels parse, positive values occur);
        /// with a path, check that CSV instead of the spec's training files. Without
        /// it, the columns are still looked up in each file's header when the files exist.
        #[arg(long, num_args = 0..=1, value_name = "CSV")]
        data: Option<Option<PathBuf>>,
    },
    /// Compile a spec and print one of its levels: the model IR, the op program
    /// (evaluation or training) or the training program's derived backward.
    Compile {
        /// The spec (.toml or .mg).
        spec: PathBuf,
        /// ir, program (evaluation), train (the training program) or backward.
        #[arg(long, value_enum, default_value = "program")]
        emit: EmitArg,
    },
    /// Compile a spec, train it, report per-task metrics and write a bundle.
    CompileAndTrain {
        #[command(flatten)]
        threads: Threads,
        /// The spec (.toml or .mg).
        spec: PathBuf,
        /// Train on this CSV instead of the spec's data.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Bundle folder (default: runs/<model name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Override the spec's epoch count.
        #[arg(long)]
        epochs: Option<usize>,
        /// Override the synthetic generator's row count.
        #[arg(long)]
        rows: Option<usize>,
        /// Override the last training day of the spec's date window ([data] cur_date).
        #[arg(long, value_name = "YYYY-MM-DD")]
        cur_date: Option<String>,
        /// Override the days of training partitions of the date window ([data] days).
        #[arg(long)]
        days: Option<u32>,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: Device,
        /// Continue an interrupted run from its checkpoint (`<out>.checkpoint`).
        #[arg(long, conflicts_with = "fresh")]
        resume: bool,
        /// Discard the checkpoint of an interrupted run and start over.
        #[arg(long)]
        fresh: bool,
        /// Replace the bundle already at --out (without it, that is refused before training).
        #[arg(long)]
        force: bool,
        /// Do not write TensorBoard event files (default: <out>.tensorboard/).
        #[arg(long)]
        no_tensorboard: bool,
        /// Print nothing while training (no progress, no per-epoch lines): only the
        /// bundle's place at the end, and errors.
        #[arg(long)]
        quiet: bool,
        /// text (default) or json: one JSON object per event on stdout.
        #[arg(long, value_enum, default_value = "text")]
        log_format: FormatArg,
    },
    /// Predict with a bundle: one column per task (probabilities for binary tasks).
    Predict {
        #[command(flatten)]
        threads: Threads,
        /// The bundle folder (what compile-and-train wrote).
        bundle: PathBuf,
        /// CSV rows to score, in the spec's format (a synthetic model's: CSV with a header).
        data: PathBuf,
        /// Output CSV (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: Device,
        /// Also write every row's gate weights (a column per gate and expert).
        #[arg(long)]
        gates: bool,
        /// Copy this input column (an id, say) to the output, first; repeatable.
        #[arg(long, value_name = "COLUMN")]
        keep: Vec<String>,
        /// Also read the label columns and print each task's metrics (to stderr);
        /// without it label columns are not read.
        #[arg(long)]
        evaluate: bool,
    },
    /// Look at a spec's training data before training: label rates or distributions,
    /// label correlations between tasks, feature cardinalities and missing rates.
    Analyze {
        /// The spec (.toml or .mg).
        spec: PathBuf,
        /// Analyse this CSV instead of the spec's training data.
        #[arg(long)]
        data: Option<PathBuf>,
        /// text (default) or json.
        #[arg(long, value_enum, default_value = "text")]
        format: FormatArg,
    },
    /// Fit the statistics a spec leaves open (zscore means and standard deviations,
    /// vocabularies, quantile bucket boundaries, label classes and statistics) on its
    /// training data; print the spec with them pinned, comments kept.
    Fit {
        /// The spec (.toml or .mg).
        spec: PathBuf,
        /// Fit on this CSV instead of the spec's training data.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Rewrite the spec in place instead of printing it.
        #[arg(long)]
        write: bool,
    },
    /// Train a grid over spec fields, every combination with every seed; write every
    /// run (sweep.csv) and mean ± sd per combination, best first (sweep.md).
    Sweep {
        #[command(flatten)]
        threads: Threads,
        /// The spec (.toml or .mg).
        spec: PathBuf,
        /// A field and its values, e.g. `train.lr=0.001,0.01` or `layers.0.experts=4,8`
        /// (a layer, task or feature by index or name); repeatable: the grid is every
        /// combination.
        #[arg(long = "set", value_name = "KEY=V1,V2,...", required = true)]
        set: Vec<multigate::sweep::Axis>,
        /// Seeds for every combination: `0-4` or `1,2,3`.
        #[arg(long, default_value = "0")]
        seeds: String,
        /// Runs trained at once (each on one CPU thread).
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Folder for the runs and the results (default: sweeps/<model name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Override the synthetic generator's row count in every run.
        #[arg(long)]
        rows: Option<usize>,
        /// Override the epoch count in every run.
        #[arg(long)]
        epochs: Option<usize>,
    },
    /// Redraw a run's learning curves and gate heatmap, or overlay several runs' curves.
    Plot {
        /// Bundle folders (their metrics.json); the first one's gates are drawn.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Folder for curves.png and gates.png (default: plots).
        #[arg(long, default_value = "plots")]
        out: PathBuf,
    },
    /// Metrics of a trained bundle on labelled data, per task, without training: the
    /// task's metrics, calibration (mean prediction vs positive rate, ECE over 10 bins)
    /// and, with --group, GAUC.
    Evaluate {
        #[command(flatten)]
        threads: Threads,
        /// The bundle folder (what compile-and-train wrote).
        bundle: PathBuf,
        /// Labelled CSV rows, in the spec's format.
        data: PathBuf,
        /// Column whose values group rows (users, say) for group AUC.
        #[arg(long, value_name = "COLUMN")]
        group: Option<String>,
        /// text (default) or json (keyed by task name).
        #[arg(long, value_enum, default_value = "text")]
        format: FormatArg,
    },
    /// Export a bundle for other runtimes: ONNX (opset 17) with the encoding in its metadata.
    Export {
        /// The bundle folder (what compile-and-train wrote).
        bundle: PathBuf,
        /// The format to write (onnx).
        #[arg(long, value_enum, default_value = "onnx")]
        format: ExportArg,
        /// The file to write (e.g. model.onnx).
        #[arg(long)]
        out: PathBuf,
    },
    /// Write the encoded model inputs of DATA (table rows, transformed dense values), as
    /// the exported ONNX graph takes them: one column per categorical feature, then one
    /// per dense column.
    Encode {
        #[command(flatten)]
        threads: Threads,
        /// The bundle folder (what compile-and-train wrote).
        bundle: PathBuf,
        /// CSV rows to encode, in the spec's format.
        data: PathBuf,
        /// Output CSV (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Serve a bundle over HTTP: TF-Serving REST predict, KServe v2 health and metadata,
    /// Prometheus metrics; micro-batched; follows new bundles committed to the folder.
    Serve {
        #[command(flatten)]
        threads: Threads,
        /// The bundle folder to serve (swapped when a new bundle is committed there).
        bundle: PathBuf,
        /// TCP port (0 picks a free one and prints it).
        #[arg(long, default_value_t = 8501)]
        port: u16,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        /// Longest a request waits to be batched with others, in microseconds (default 0:
        /// a batch is whatever queued while the previous one ran).
        #[arg(long, default_value_t = 0)]
        batch_wait_us: u64,
        /// Rows one request may carry.
        #[arg(long, default_value_t = 10_000)]
        max_rows: usize,
        /// Request body limit, in bytes.
        #[arg(long, default_value_t = 16 << 20)]
        max_body: usize,
    },
    /// Write the spec's synthetic data to a CSV file.
    Synth {
        /// A spec with [data] source = "synthetic".
        spec: PathBuf,
        /// Rows to write.
        #[arg(long)]
        rows: usize,
        /// The CSV file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a spec in canonical form, or convert it between TOML and the DSL.
    Fmt {
        /// The spec to format (.toml or .mg).
        file: PathBuf,
        /// Output syntax (default: the input's).
        #[arg(long, value_enum)]
        to: Option<SyntaxArg>,
        /// Exit 1 if the file is not in canonical form; write nothing.
        #[arg(long)]
        check: bool,
        /// Rewrite the file in place (comments kept).
        #[arg(long, conflicts_with = "check")]
        write: bool,
    },
    /// Write a starting spec from a data file: numeric columns become dense features,
    /// the rest hashed categoricals, the label columns tasks, with an MMoE layer.
    Init {
        /// The training CSV (optionally .gz).
        data: PathBuf,
        /// A label column, one task each: `COL`, or `COL=VALUE` for a binary task whose
        /// positive value is VALUE; repeatable.
        #[arg(long = "label", required = true, value_name = "COL[=VALUE]")]
        labels: Vec<String>,
        /// Columns that are not inputs (ids, weights, leaks), comma-separated; repeatable.
        #[arg(long, value_delimiter = ',')]
        ignore: Vec<String>,
        /// Column names for a file without a header, comma-separated.
        #[arg(long, value_delimiter = ',')]
        columns: Vec<String>,
        /// Field delimiter (default `,`).
        #[arg(long, default_value = ",")]
        delimiter: char,
        /// A validation file for the spec.
        #[arg(long)]
        validation: Option<PathBuf>,
        /// A test file for the spec.
        #[arg(long)]
        test: Option<PathBuf>,
        /// The model's name (default: the data file's stem).
        #[arg(long)]
        name: Option<String>,
        /// Write the spec here (.toml or .mg) instead of printing TOML.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace an existing --out file.
        #[arg(long)]
        force: bool,
    },
    /// Draw the model: features, embeddings, experts, gates, towers, with shapes.
    Graph {
        /// The spec (.toml or .mg).
        spec: PathBuf,
        /// dot (Graphviz) or mermaid.
        #[arg(long, value_enum, default_value = "dot")]
        format: GraphArg,
        /// Draw the evaluation op program (one box per primitive op) instead of the model.
        #[arg(long)]
        program: bool,
    },
    /// Measure training and inference throughput of a spec at a batch size, and the forward
    /// pass beside its ceiling: its FLOPs at the f32 FMA peak measured on the same workers.
    Bench {
        #[command(flatten)]
        threads: Threads,
        /// The spec (.toml or .mg); its synthetic data, or random rows, feed the steps.
        spec: PathBuf,
        /// Rows per step.
        #[arg(long, default_value_t = 512)]
        batch: usize,
        /// Timed steps per measurement.
        #[arg(long, default_value_t = 200)]
        steps: usize,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: Device,
        /// Override the spec's optimizer: adam or lazy_adam.
        #[arg(long)]
        optimizer: Option<String>,
        /// Train through candle's autograd even where the native interpreter applies
        /// (the reference it replaced, for side-by-side figures).
        #[arg(long)]
        autograd: bool,
    },
    /// Single-row latency of a bundle's predictor (text in, as a server calls it).
    BenchPredict {
        /// The bundle folder (from `compile-and-train`).
        bundle: PathBuf,
        /// Timed calls, one row each.
        #[arg(long, default_value_t = 10_000)]
        calls: usize,
    },
    /// Ingest throughput: rows per second from the spec's training files (CSV, gzip,
    /// Parquet) through parsing, hashing and encoding.
    BenchIngest {
        /// The spec (.toml or .mg).
        spec: PathBuf,
        /// Read this path instead of the spec's training data.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Measurements; the best is reported.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Files read at once (each on its own thread).
        #[arg(long, default_value_t = 1)]
        readers: usize,
    },
    /// Write the spec's data files (training, validation, test) as Parquet: the
    /// columns it reads, typed as it reads them.
    Convert {
        /// The spec (.toml or .mg).
        spec: PathBuf,
        /// Convert this path instead of the spec's data files.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Folder for the .parquet files.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a shell completion script (e.g. `multigate completions bash >
    /// ~/.local/share/bash-completion/completions/multigate`).
    Completions {
        /// bash, zsh or fish.
        #[arg(value_enum)]
        shell: ShellArg,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ShellArg {
    Bash,
    Zsh,
    Fish,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SyntaxArg {
    Toml,
    Mg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    Text,
    Json,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum EmitArg {
    Ir,
    Program,
    Train,
    Backward,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportArg {
    Onnx,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum GraphArg {
    Dot,
    Mermaid,
}

/// A failure: its message and exit code.
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Failure { message: message.into(), code }
    }
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::new(1, format!("error: {e}"))
    }
}

pub fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    let threads = match &cli.command {
        Command::CompileAndTrain { threads, .. }
        | Command::Predict { threads, .. }
        | Command::Evaluate { threads, .. }
        | Command::Encode { threads, .. }
        | Command::Serve { threads, .. }
        | Command::Sweep { threads, .. }
        | Command::Bench { threads, .. } => threads.threads,
        _ => None,
    };
    if let Some(n) = threads {
        // Read by `auto_threads`, which sets the worker count from it.
        std::env::set_var("RAYON_NUM_THREADS", n.max(1).to_string());
    }
    let result = match cli.command {
        Command::Check { spec, data } => check(&spec, data),
        Command::Compile { spec, emit } => emit_level(&spec, emit),
        Command::CompileAndTrain {
            spec,
            data,
            out,
            epochs,
            rows,
            cur_date,
            days,
            device,
            resume,
            fresh,
            force,
            no_tensorboard,
            quiet,
            log_format,
            ..
        } => {
            let command = std::env::args().collect();
            let opts =
                run::TrainOptions { data, out, epochs, rows, cur_date, days, device, resume, fresh, force, command };
            compile_and_train(&spec, opts, !no_tensorboard, quiet, log_format)
        }
        Command::Predict { bundle, data, out, device, gates, keep, evaluate, .. } => {
            predict(&bundle, &data, out.as_deref(), device, gates, &keep, evaluate)
        }
        Command::Synth { spec, rows, out } => synth(&spec, rows, &out),
        Command::Export { bundle, format: ExportArg::Onnx, out } => export_onnx(&bundle, &out),
        Command::Evaluate { bundle, data, group, format, .. } => evaluate(&bundle, &data, group.as_deref(), format),
        Command::Analyze { spec, data, format } => analyze(&spec, data.as_deref(), format),
        Command::BenchPredict { bundle, calls } => bench::bench_predict(&bundle, calls),
        Command::BenchIngest { spec, data, repeat, readers } => {
            bench::bench_ingest(&spec, data.as_deref(), repeat, readers)
        }
        Command::Convert { spec, data, out } => bench::convert(&spec, data.as_deref(), &out),
        Command::Fit { spec, data, write } => fit(&spec, data.as_deref(), write),
        Command::Plot { runs, out } => plot(&runs, &out),
        Command::Sweep { spec, set, seeds, jobs, out, rows, epochs, .. } => {
            sweep(&spec, set, &seeds, jobs, out, rows, epochs)
        }
        Command::Serve { bundle, port, host, batch_wait_us, max_rows, max_body, .. } => {
            let mut opts = multigate::serve::ServeOptions::new(bundle, std::net::SocketAddr::new(host, port));
            opts.max_wait = std::time::Duration::from_micros(batch_wait_us);
            opts.max_request_rows = max_rows;
            opts.max_body = max_body;
            serve(opts)
        }
        Command::Encode { bundle, data, out, .. } => encode(&bundle, &data, out.as_deref()),
        Command::Bench { spec, batch, steps, device, optimizer, autograd, .. } => {
            bench::bench(&spec, batch, steps, device, optimizer.as_deref(), autograd)
        }
        Command::Fmt { file, to, check, write } => fmt(&file, to, check, write),
        Command::Init { data, labels, ignore, columns, delimiter, validation, test, name, out, force } => {
            init(data, labels, ignore, columns, delimiter, validation, test, name, out, force)
        }
        Command::Graph { spec, format, program } => graph(&spec, format, program),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let shell = match shell {
                ShellArg::Bash => clap_complete::Shell::Bash,
                ShellArg::Zsh => clap_complete::Shell::Zsh,
                ShellArg::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(shell, &mut Cli::command(), "multigate", &mut std::io::stdout());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("{}", f.message.trim_end());
            ExitCode::from(f.code)
        }
    }
}

fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Picks the worker-thread count once per process: `--threads` or
/// `RAYON_NUM_THREADS` when given, else every core. Batches are cut into one shard per
/// worker ([`multigate::train::shard`]; even the 15k-parameter synthetic MMoE trains
/// 1.27x faster on two cores than on one), so candle's own kernels are set to one
/// thread. Returns the count.
pub(crate) fn auto_threads() -> usize {
    let chosen = multigate::train::shard::threads();
    if chosen > 0 {
        return chosen;
    }
    let given = std::env::var("RAYON_NUM_THREADS").ok().and_then(|s| s.parse::<usize>().ok()).filter(|&n| n > 0);
    let n = match given {
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    multigate::train::shard::set_threads(n);
    std::env::set_var("RAYON_NUM_THREADS", "1");
    n
}

/// Reads and compiles a spec; spec errors exit 2 with every message rendered.
pub(crate) fn compile(path: &Path) -> Result<(SourceFile, Compiled), Failure> {
    let (src, compiled) = pipeline::compile_file(path).map_err(|e| Failure::new(2, format!("error: {e}")))?;
    match compiled {
        Ok(c) => {
            for w in &c.warnings {
                eprint!("{}", multigate::diag::render(&src, w, colour()));
            }
            Ok((src, c))
        }
        Err(e) => {
            let n = e.count();
            Err(Failure::new(2, format!("{}\n{} error(s) in {}", e.render(Some(&src), colour()), n, src.name)))
        }
    }
}

/// `compile --emit`: one level of the compiled spec on standard output.
fn emit_level(path: &Path, emit: EmitArg) -> Result<(), Failure> {
    use multigate::program::{derive_backward, grad::Show, Mode};
    let (_, c) = compile(path)?;
    let lowered = |mode| {
        multigate::lower::lower_program(&c.model, mode)
            .map_err(|e| Failure::new(1, format!("error: {} does not lower to an op program: {e}", path.display())))
    };
    match emit {
        EmitArg::Ir => print!("{}", *c.model),
        EmitArg::Program => print!("{}", lowered(Mode::Eval)?),
        EmitArg::Train => print!("{}", lowered(Mode::Train)?),
        EmitArg::Backward => {
            let p = lowered(Mode::Train)?;
            let b = derive_backward(&p).map_err(|e| Failure::new(1, format!("error: no backward program: {e}")))?;
            print!("{}", Show(&p, &b));
        }
    }
    Ok(())
}

fn check(path: &Path, data_arg: Option<Option<PathBuf>>) -> Result<(), Failure> {
    let (src, c) = compile(path)?;
    print!("{}", *c.model);
    let over = data_arg.as_ref().and_then(|d| d.as_deref());
    let files = data::check::files(&c.data, over);
    let absent_files: Vec<String> =
        files.iter().filter(|(p, _)| data::source::expand(p).is_err()).map(|(p, _)| p.display().to_string()).collect();
    if !absent_files.is_empty() {
        let what = format!("not found: {}", absent_files.join(", "));
        if data_arg.is_some() {
            return Err(Failure::new(1, format!("error: cannot check the data: {what}")));
        }
        eprintln!("note: the data was not checked ({what})");
        return Ok(());
    }
    let absent = data::check::absent_columns(&c.model, &c.data, over)?;
    if !absent.is_empty() {
        let spec = multigate::spec::parse(&src).ok();
        let text: Vec<String> = absent
            .iter()
            .map(|a| {
                let d = AbsentColumn {
                    message: format!(
                        "column `{}` is not in {}",
                        a.need.column,
                        a.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
                    ),
                    span: spec.as_ref().and_then(|s| run::need_span(s, &a.need)).map(Into::into),
                    reader: format!("{} reads it", a.need.reader),
                    help: a.suggestion.clone(),
                };
                multigate::diag::render(&src, &d, colour())
            })
            .collect();
        return Err(Failure::new(
            2,
            format!("{}\n{} column(s) missing from the data of {}", text.join("\n"), absent.len(), src.name),
        ));
    }
    if !files.is_empty() {
        eprintln!("data: every column found in the header of {} file(s)", files.len());
    }
    if data_arg.is_some() {
        let locate = run::spec_locator(&src);
        let fitted = data::fit::fit(&c.model, &c.data, over, &locate)?;
        let (_, c) = run::pin_fitted(&src, c, fitted, &mut Said)?;
        let (splits, _) = data::load_splits(&c.model, &c.data, over, &locate)?;
        eprintln!(
            "data: {} training, {} validation and {} test rows load and encode as training would",
            splits.train.rows,
            splits.validation_data().rows(),
            splits.test_data().map_or(0, |t| t.rows())
        );
    }
    Ok(())
}

/// A column the spec reads that a data file lacks, pointed at in the spec.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("{message}")]
#[diagnostic(code(multigate::data::absent_column))]
struct AbsentColumn {
    message: String,
    #[label("{reader}")]
    span: Option<miette::SourceSpan>,
    reader: String,
    #[help]
    help: Option<String>,
}

fn compile_and_train(
    path: &Path,
    opts: run::TrainOptions,
    tensorboard: bool,
    quiet: bool,
    log: FormatArg,
) -> Result<(), Failure> {
    let (src, c) = compile(path)?;
    let select = c.train.select.clone();
    let mut printer = watch::Printer::new(quiet);
    let mut json = watch::JsonLog::default();
    let shown: &mut dyn run::Observer = match log {
        FormatArg::Text => &mut printer,
        FormatArg::Json => &mut json,
    };
    let out = opts.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(&c.model.name));
    let tb_dir = multigate::report::tensorboard::tensorboard_dir(&out);
    let mut tb = multigate::report::tensorboard::TensorBoard::new(tb_dir.clone());
    let done = if tensorboard {
        run::train_spec(&src, c, &opts, &mut run::Both(shown, &mut tb))?
    } else {
        run::train_spec(&src, c, &opts, shown)?
    };
    if let Some(e) = &tb.error {
        eprintln!("warning: TensorBoard events not written: {e}");
    }
    if matches!(log, FormatArg::Json) {
        return Ok(());
    }
    if !quiet {
        print_report(&printer.names, &select, &done.report);
    }
    println!("bundle written to {}", done.out.display());
    if tensorboard && tb.error.is_none() && !quiet {
        println!("TensorBoard events in {} (tensorboard --logdir {})", tb_dir.display(), tb_dir.display());
    }
    Ok(())
}

fn print_report(names: &[String], select: &multigate::ir::Selection, r: &TrainReport) {
    let criterion = match select {
        multigate::ir::Selection::Loss => "lowest validation loss".to_string(),
        multigate::ir::Selection::Metric { task, metric } => format!(
            "{} validation {} {}",
            if metric.higher_is_better() { "highest" } else { "lowest" },
            names.get(*task).map_or("?", |s| s.as_str()),
            metric.as_str()
        ),
    };
    if r.stopped_early {
        println!("stopped early after epoch {}: no better epoch within `patience`", r.epochs.len());
    }
    println!("best epoch {} ({criterion})", r.best_epoch);
    for (n, m) in names.iter().zip(&r.validation) {
        println!("validation {n}: {m}");
    }
    if let Some(test) = &r.test {
        for (n, m) in names.iter().zip(test) {
            println!("test {n}: {m}");
        }
    }
    for g in &r.gate_usage {
        println!("gate usage, layer {} (mean weight per expert on validation):", g.layer);
        for (i, (name, w)) in g.gates.iter().enumerate() {
            let ws: Vec<String> = w.iter().map(|x| format!("{x:.3}")).collect();
            let eff = g.effective_experts.get(i).map_or(String::new(), |e| format!("  mixes {e:.1} of {}", w.len()));
            println!("  {name}: [{}]{eff}", ws.join(" "));
        }
        let sims: Vec<String> = g.similarity().iter().map(|(a, b, c)| format!("{a} ~ {b} {c:.2}")).collect();
        if !sims.is_empty() {
            println!("  task gate similarity (cosine of mean weights): {}", sims.join(", "));
        }
        for alarm in g.alarms() {
            println!("  warning: {alarm}");
        }
    }
}

fn predict(
    bundle: &Path,
    data_path: &Path,
    out: Option<&Path>,
    device: Device,
    gates: bool,
    keep: &[String],
    evaluate: bool,
) -> Result<(), Failure> {
    let predictor = run::Predictor::load(bundle, device)?;
    let compiled = predictor.compiled();
    auto_threads();
    let keep_needs = keep.iter().map(|k| caller_need(k, "`--keep`")).collect();
    // Label columns are read only to evaluate: a bad label is then an error.
    let frame = read_inputs(&predictor, data_path, keep_needs, evaluate)?;
    let ds = if evaluate { predictor.encode_labelled(&frame)? } else { predictor.encode(&frame)? };
    for w in predictor.far_outside(&ds) {
        eprintln!("warning: {w}");
    }
    let p = predictor.predict_dataset(&ds, gates)?;
    let kept: Vec<&data::Column> =
        keep.iter().map(|k| frame.column_as(k, false)).collect::<Option<_>>().unwrap_or_default();
    let mut names: Vec<String> = keep.to_vec();
    names.extend(compiled.model.tasks.iter().flat_map(|t| t.output_columns()));
    names.extend(p.gate_columns.iter().map(|(n, _)| n.clone()));
    // Every output column as (values, stride, offset): a task's values are [rows, width].
    let mut columns: Vec<(&Vec<f32>, usize, usize)> = Vec::new();
    for (t, v) in compiled.model.tasks.iter().zip(&p.values) {
        let k = t.head.width();
        columns.extend((0..k).map(|j| (v, k, j)));
    }
    columns.extend(p.gate_columns.iter().map(|(_, v)| (v, 1, 0)));
    let rows = frame.rows;
    let mut w = csv::Writer::from_writer(Vec::with_capacity(rows * 12 * names.len()));
    w.write_record(&names)?;
    for i in 0..rows {
        let mut row: Vec<String> = kept.iter().map(|c| c.text(i)).collect();
        row.extend(columns.iter().map(|(c, k, j)| format!("{}", c[i * k + j])));
        w.write_record(&row)?;
    }
    let text = w.into_inner().map_err(|e| Failure::new(1, format!("error: {e}")))?;
    match out {
        Some(p) => write_atomic(p, &text)?,
        None => {
            use std::io::Write;
            std::io::stdout().write_all(&text)?;
        }
    }
    if evaluate {
        if !ds.has_labels() {
            eprintln!("no task has a label to evaluate");
            return Ok(());
        }
        // The predictions just written, scored: one forward pass for both.
        let e = predictor.evaluation(&frame, &ds, &p, None)?;
        for name in &e.order {
            eprintln!("{name}: {}", e.tasks[name].metrics);
        }
    }
    Ok(())
}

/// Reads a data file's columns for a loaded bundle: the features, the label columns
/// too when `labels` (then each one the model reads must be there), and `extra`.
fn read_inputs(
    predictor: &run::Predictor,
    data_path: &Path,
    extra: Vec<Need>,
    labels: bool,
) -> Result<data::Frame, Failure> {
    let mut needs: Vec<Need> = predictor.needs().iter().filter(|n| labels || !n.is_label).cloned().collect();
    needs.extend(extra);
    let format = input_format(predictor);
    Ok(data::source::read_path(data_path, &format, &needs, labels, &run::spec_locator(predictor.source()))?)
}

/// A column the command line asks for (`--keep`, `--group`), read as text.
fn caller_need(column: &str, reader: &str) -> Need {
    Need {
        column: column.to_string(),
        kind: data::ColumnKind::Cat,
        reader: reader.into(),
        owner: NeedOwner::Caller,
        is_label: false,
        separator: None,
    }
}

/// The CSV format a bundle's inputs come in: its spec's, or plain CSV with a header for
/// a model trained on synthetic data.
fn input_format(predictor: &run::Predictor) -> multigate::ir::CsvFormat {
    match &predictor.compiled().data.source {
        DataSource::Csv(c) => c.format.clone(),
        DataSource::Synthetic(_) => multigate::ir::CsvFormat::default_csv(),
    }
}

fn serve(opts: multigate::serve::ServeOptions) -> Result<(), Failure> {
    let bundle = opts.bundle.clone();
    // Candle's kernels on one thread unless told otherwise: the HTTP side has the other
    // core, and a micro-batch is small.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    multigate::serve::serve(opts, |addr| {
        // One line on stdout with the address, for scripts (port 0 picks a free one).
        println!("serving {} on http://{addr}", bundle.display());
        use std::io::Write;
        let _ = std::io::stdout().flush();
    })?;
    Ok(())
}

fn plot(runs: &[PathBuf], out: &Path) -> Result<(), Failure> {
    use multigate::report::plots;
    let mut curves = Vec::new();
    for r in runs {
        let path = r.join("metrics.json");
        let text =
            std::fs::read_to_string(&path).map_err(|e| Failure::new(1, format!("error: {}: {e}", path.display())))?;
        let metrics: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Failure::new(1, format!("error: {}: {e}", path.display())))?;
        let label = r.file_name().map_or_else(|| r.display().to_string(), |n| n.to_string_lossy().to_string());
        curves.push(
            plots::RunCurves::from_metrics(&label, &metrics)
                .map_err(|e| Failure::new(1, format!("error: {}: {e}", path.display())))?,
        );
    }
    std::fs::create_dir_all(out).map_err(|e| Failure::new(1, format!("error: {}: {e}", out.display())))?;
    let png = plots::curves_png(&curves).map_err(|e| Failure::new(1, format!("error: drawing curves: {e}")))?;
    write_atomic(&out.join("curves.png"), &png)?;
    println!("wrote {}", out.join("curves.png").display());
    if let Some(g) = plots::gates_png(&curves[0]).map_err(|e| Failure::new(1, format!("error: drawing gates: {e}")))? {
        write_atomic(&out.join("gates.png"), &g)?;
        println!("wrote {}", out.join("gates.png").display());
    }
    Ok(())
}

/// `0-4` or `1,2,3`.
fn parse_seeds(s: &str) -> Result<Vec<u64>, Failure> {
    let bad = || Failure::new(2, format!("error: --seeds {s:?}: expected a range like 0-4 or a list like 1,2,3"));
    if let Some((a, b)) = s.split_once('-') {
        let (a, b): (u64, u64) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
        if a > b {
            return Err(bad());
        }
        return Ok((a..=b).collect());
    }
    s.split(',').map(|x| x.trim().parse().map_err(|_| bad())).collect()
}

fn sweep(
    path: &Path,
    axes: Vec<multigate::sweep::Axis>,
    seeds: &str,
    jobs: usize,
    out: Option<PathBuf>,
    rows: Option<usize>,
    epochs: Option<usize>,
) -> Result<(), Failure> {
    let (src, c) = compile(path)?;
    let seeds = parse_seeds(seeds)?;
    if jobs > 1 || std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    let out = out.unwrap_or_else(|| PathBuf::from("sweeps").join(&c.model.name));
    let (criterion, higher) = match &c.train.select {
        multigate::ir::Selection::Loss => ("validation loss".to_string(), false),
        multigate::ir::Selection::Metric { task, metric } => {
            (format!("validation {}.{}", c.model.tasks[*task].name, metric.as_str()), metric.higher_is_better())
        }
    };
    let n = multigate::sweep::combinations(&axes).len() * seeds.len();
    println!(
        "{n} runs ({} combination(s) x {} seed(s)), {jobs} at a time, into {}",
        n / seeds.len().max(1),
        seeds.len(),
        out.display()
    );
    let plan = multigate::sweep::SweepPlan { axes: axes.clone(), seeds, out: out.clone(), rows, epochs, jobs };
    let done = std::sync::atomic::AtomicUsize::new(0);
    let runs = multigate::sweep::sweep(&src, &plan, &|r| {
        let k = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let combo: Vec<String> = r.combo.iter().map(|(a, b)| format!("{a}={b}")).collect();
        println!("[{k}/{n}] {} seed {}: {criterion} {:.4}", combo.join(" "), r.seed, r.selection);
    })?;
    let csv_text = multigate::sweep::runs_csv(&axes, &runs);
    let md = multigate::sweep::summary_markdown(&axes, &runs, higher, &criterion);
    multigate::sweep::write_results(&out, &csv_text, &md)?;
    print!("{md}");
    println!("every run: {}; this table: {}", out.join("sweep.csv").display(), out.join("sweep.md").display());
    Ok(())
}

fn fit(path: &Path, data_path: Option<&Path>, write: bool) -> Result<(), Failure> {
    let (src, c) = compile(path)?;
    let locate = run::spec_locator(&src);
    let fitted = data::fit::fit(&c.model, &c.data, data_path, &locate)?;
    let nothing = fitted.is_empty();
    let (spec, _) = run::pin_fitted(&src, c, fitted, &mut Said)?;
    if nothing {
        eprintln!("{}: nothing to fit (every statistic is pinned)", src.name);
    }
    let syntax = multigate::spec::Syntax::of(&src.name);
    let text = multigate::spec::format(&spec, Some((&src.text, syntax)), syntax);
    if write {
        return write_atomic(path, text.as_bytes());
    }
    print!("{text}");
    Ok(())
}

/// Prints what was fitted to stderr (stdout carries the spec).
struct Said;

impl run::Observer for Said {
    fn on(&mut self, e: &run::Event) {
        if let run::Event::Fitted { of, what } = e {
            eprintln!("fitted on the training rows, {of}: {what}");
        }
    }
}

fn analyze(path: &Path, data_path: Option<&Path>, format: FormatArg) -> Result<(), Failure> {
    let (src, c) = compile(path)?;
    let locate = run::spec_locator(&src);
    let needs = data::needs(&c.model);
    let frames = data::fit::training_frames(&c.model, &c.data, data_path, &needs, &locate)?;
    // Open label statistics (classes, say) are fitted first, as training does.
    let fitted = data::fit::fit_on_frames(&c.model, &frames)?;
    let (_, c) = run::pin_fitted(&src, c, fitted, &mut run::Silent)?;
    let mut labels = data::Dataset::default();
    for f in &frames {
        labels.extend(data::encode(&c.model, f, true)?);
    }
    let a = data::analyze::analyze(&c.model, &frames, &labels);
    match format {
        FormatArg::Json => println!("{}", serde_json::to_string_pretty(&a)?),
        FormatArg::Text => print!("{a}"),
    }
    Ok(())
}

fn evaluate(bundle: &Path, data_path: &Path, group: Option<&str>, format: FormatArg) -> Result<(), Failure> {
    let predictor = run::Predictor::load(bundle, Device::Cpu)?;
    auto_threads();
    let extra = group.map(|g| caller_need(g, "`--group`")).into_iter().collect();
    let frame = read_inputs(&predictor, data_path, extra, true)?;
    let e = predictor.evaluate(&frame, group)?;
    match format {
        FormatArg::Json => println!("{}", serde_json::to_string_pretty(&e)?),
        FormatArg::Text => {
            println!("{} rows of {}", e.rows, data_path.display());
            for name in &e.order {
                let t = &e.tasks[name];
                println!("{name} ({} labelled rows): {}", t.rows, t.metrics);
                if let Some(c) = &t.calibration {
                    println!(
                        "  calibration: mean prediction {:.4}, positive rate {:.4}, ECE {:.4} ({} bins)",
                        c.mean_prediction, c.positive_rate, c.ece, c.bins
                    );
                }
                if let (Some(g), Some(n), Some(col)) = (t.gauc, t.gauc_groups, group) {
                    println!("  GAUC by `{col}`: {g:.4} over {n} groups with both classes");
                }
            }
        }
    }
    Ok(())
}

fn export_onnx(bundle: &Path, out: &Path) -> Result<(), Failure> {
    let predictor = run::Predictor::load(bundle, Device::Cpu)?;
    let bytes = multigate::export::onnx::to_onnx(predictor.model())?;
    write_atomic(out, &bytes)?;
    let bags = if predictor.compiled().model.features.iter().any(|f| f.bag().is_some()) {
        " and `bag_weights` float [batch, slots]"
    } else {
        ""
    };
    println!(
        "wrote {} (ONNX opset {}, {} bytes): inputs `categorical` int64 [batch, n_cat] and `dense` float [batch, width]{bags}, one output per task",
        out.display(),
        multigate::export::onnx::OPSET,
        bytes.len()
    );
    Ok(())
}

fn encode(bundle: &Path, data_path: &Path, out: Option<&Path>) -> Result<(), Failure> {
    let predictor = run::Predictor::load(bundle, Device::Cpu)?;
    let frame = read_inputs(&predictor, data_path, Vec::new(), false)?;
    let ds = predictor.encode(&frame)?;
    let model = &predictor.compiled().model;
    // Categorical table rows (a bag's max_len columns `name.k`), dense values, then the
    // bags' slot weights (`name.wk`): the graph's inputs `categorical`, `dense` and
    // `bag_weights`, in that order.
    let mut header: Vec<String> = Vec::new();
    for f in &model.features {
        match (&f.kind, f.bag()) {
            (multigate::ir::FeatureKind::Categorical { .. }, None) => header.push(f.name.clone()),
            (_, Some(b)) => header.extend((0..b.max_len).map(|k| format!("{}.{k}", f.name))),
            _ => {}
        }
    }
    for f in &model.features {
        if let multigate::ir::FeatureKind::Dense { width, .. } = f.kind {
            header.extend(data::dense_columns(&f.column, width));
        }
    }
    for f in &model.features {
        if let Some(b) = f.bag() {
            header.extend((0..b.max_len).map(|k| format!("{}.w{k}", f.name)));
        }
    }
    let mut w = csv::Writer::from_writer(Vec::with_capacity(ds.rows * 8 * header.len().max(1)));
    w.write_record(&header)?;
    let mut row = Vec::with_capacity(header.len());
    for i in 0..ds.rows {
        row.clear();
        for (k, c) in ds.cat.iter().enumerate() {
            let l = ds.cat_len(k);
            row.extend(c[i * l..(i + 1) * l].iter().map(|x| x.to_string()));
        }
        row.extend(ds.dense[i * ds.dense_width..(i + 1) * ds.dense_width].iter().map(|x| format!("{x}")));
        for b in ds.bags.iter().flatten() {
            row.extend(b.weights[i * b.len..(i + 1) * b.len].iter().map(|x| format!("{x}")));
        }
        w.write_record(&row)?;
    }
    let text = w.into_inner().map_err(|e| Failure::new(1, format!("error: {e}")))?;
    match out {
        Some(p) => write_atomic(p, &text),
        None => {
            use std::io::Write;
            Ok(std::io::stdout().write_all(&text)?)
        }
    }
}

/// Writes a file crash-safely (see `export::write_file`).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    Ok(multigate::export::write_file(path, bytes)?)
}

fn synth(path: &Path, rows: usize, out: &Path) -> Result<(), Failure> {
    let (_, c) = compile(path)?;
    let DataSource::Synthetic(s) = &c.data.source else {
        return Err(Failure::new(
            2,
            format!("error: {} reads CSV files; `synth` needs [data] source = \"synthetic\"", path.display()),
        ));
    };
    let frame = data::synthetic::generate(&c.model, s, rows);
    let mut buf = Vec::new();
    frame.write_csv(&mut buf)?;
    write_atomic(out, &buf)?;
    println!("wrote {} rows to {}", rows, out.display());
    Ok(())
}

fn fmt(path: &Path, to: Option<SyntaxArg>, check: bool, write: bool) -> Result<(), Failure> {
    use multigate::spec::{self, Syntax};
    let src = SourceFile::read(path).map_err(|e| Failure::new(2, format!("error: {}: {e}", path.display())))?;
    let parsed = spec::parse(&src).map_err(|es| {
        let text: Vec<String> = es.iter().map(|e| multigate::diag::render(&src, e, colour())).collect();
        Failure::new(2, format!("{}\n{} error(s) in {}", text.join("\n"), es.len(), src.name))
    })?;
    let from = Syntax::of(&src.name);
    let target = match to {
        Some(SyntaxArg::Toml) => Syntax::Toml,
        Some(SyntaxArg::Mg) => Syntax::Dsl,
        None => from,
    };
    let text = spec::format(&parsed, Some((&src.text, from)), target);
    // What fmt writes must read back: a name the DSL cannot spell (non-ASCII, say) is
    // refused here, before anything is written.
    if target != from {
        let back = SourceFile::from_text(
            format!("{}.{}", src.name, if target == Syntax::Dsl { "mg" } else { "toml" }),
            text.clone(),
        );
        if let Err(es) = spec::parse(&back) {
            let first = es.first().map(|e| multigate::diag::render(&back, e, false)).unwrap_or_default();
            return Err(Failure::new(
                1,
                format!(
                    "error: {} cannot be written in the other syntax without changing it (the DSL's names are ASCII letters, digits, `_` and `-`); nothing written:\n{first}",
                    src.name
                ),
            ));
        }
    }
    if check {
        if target != from {
            return Err(Failure::new(2, "error: --check compares a file with its own canonical form; drop --to"));
        }
        if *src.text != *text {
            return Err(Failure::new(
                1,
                format!("{} is not in canonical form (run `multigate fmt --write {}`)", src.name, src.name),
            ));
        }
        return Ok(());
    }
    if write {
        if target != from {
            return Err(Failure::new(
                2,
                "error: --write rewrites the file in its own syntax; drop --to, or redirect the output",
            ));
        }
        return write_atomic(path, text.as_bytes());
    }
    print!("{text}");
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn init(
    data: PathBuf,
    labels: Vec<String>,
    ignore: Vec<String>,
    columns: Vec<String>,
    delimiter: char,
    validation: Option<PathBuf>,
    test: Option<PathBuf>,
    name: Option<String>,
    out: Option<PathBuf>,
    force: bool,
) -> Result<(), Failure> {
    use multigate::spec::{self, Syntax};
    if !delimiter.is_ascii() {
        return Err(Failure::new(2, "error: --delimiter must be one ASCII character"));
    }
    if let Some(o) = &out {
        if o.exists() && !force {
            return Err(Failure::new(1, format!("error: {} exists; pass --force to replace it", o.display())));
        }
    }
    let stem = data.file_name().map_or("model".to_string(), |s| s.to_string_lossy().to_string());
    let stem = stem.split('.').next().unwrap_or("model").to_string();
    let spec_dir = out
        .as_ref()
        .and_then(|o| o.parent())
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let opts = multigate::init::InitOptions {
        data,
        labels: labels
            .iter()
            .map(|l| match l.split_once('=') {
                Some((c, v)) => (c.to_string(), Some(v.to_string())),
                None => (l.clone(), None),
            })
            .collect(),
        ignore,
        columns,
        delimiter: delimiter as u8,
        validation,
        test,
        spec_dir,
        name: name.unwrap_or_else(|| multigate::init::spec_name(&stem)),
    };
    let (text, inferred) = multigate::init::init(&opts)?;
    let width = inferred.iter().map(|i| i.column.len()).max().unwrap_or(0);
    for i in &inferred {
        eprintln!("  {:width$}  {}", i.column, i.role);
    }
    // What init wrote must compile; then it is put in canonical form, in the syntax asked.
    let target = out.as_deref().map_or(Syntax::Toml, |o| Syntax::of(&o.display().to_string()));
    let src = SourceFile::from_text("init.toml", text.clone());
    let parsed = spec::parse(&src).map_err(|es| {
        Failure::new(1, format!("error: init wrote a spec that does not parse ({} error(s)):\n{text}", es.len()))
    })?;
    if let Err(e) = multigate::pipeline::compile_source(&src) {
        return Err(Failure::new(
            1,
            format!("error: init wrote a spec that does not compile:\n{}", e.render(Some(&src), false)),
        ));
    }
    let canonical = spec::format(&parsed, Some((&text, Syntax::Toml)), target);
    match out {
        Some(o) => {
            write_atomic(&o, canonical.as_bytes())?;
            eprintln!("wrote {}; next: multigate compile-and-train {}", o.display(), o.display());
        }
        None => print!("{canonical}"),
    }
    Ok(())
}

fn graph(path: &Path, format: GraphArg, program: bool) -> Result<(), Failure> {
    let (_, c) = compile(path)?;
    if program {
        if !matches!(format, GraphArg::Dot) {
            return Err(Failure::new(2, "error: the op program is drawn as dot only (--format dot)"));
        }
        let p = multigate::lower::lower_program(&c.model, multigate::program::Mode::Eval)
            .map_err(|e| Failure::new(1, format!("error: {} does not lower to an op program: {e}", path.display())))?;
        print!("{}", multigate::program::render_dot(&p));
        return Ok(());
    }
    let format = match format {
        GraphArg::Dot => multigate::ir::GraphFormat::Dot,
        GraphArg::Mermaid => multigate::ir::GraphFormat::Mermaid,
    };
    print!("{}", multigate::ir::render_graph(&c.model, format));
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_command_and_argument_has_a_help_line() {
        let cmd = super::Cli::command();
        for sub in cmd.get_subcommands() {
            assert!(sub.get_about().is_some(), "`{}` has no help", sub.get_name());
            for arg in sub.get_arguments().filter(|a| a.get_id() != "help") {
                assert!(arg.get_help().is_some(), "`{} {}` has no help", sub.get_name(), arg.get_id());
            }
        }
    }

    #[test]
    fn completions_cover_every_command() {
        let mut out = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut super::Cli::command(), "multigate", &mut out);
        let text = String::from_utf8(out).unwrap();
        for sub in super::Cli::command().get_subcommands() {
            assert!(text.contains(sub.get_name()), "{}", sub.get_name());
        }
    }
}
