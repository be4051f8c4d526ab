//! `multigate serve`: an HTTP prediction server over a bundle.
//!
//! | endpoint                              | what                                            |
//! |---------------------------------------|-------------------------------------------------|
//! | `POST /v1/models/NAME:predict`        | TF-Serving REST predict: `{"instances": [{column: raw value}]}` -> `{"predictions": [{task: value}]}`, or columnar `{"inputs": {column: [values]}}` -> `{"outputs": {task: [values]}}`; `"gates": true` adds gate weights |
//! | `GET /v1/models/NAME`                 | TF-Serving model status                          |
//! | `GET /v2/health/live`, `/v2/health/ready` | KServe v2 health                             |
//! | `GET /v2/models/NAME`                 | KServe v2 metadata: inputs, outputs, versions    |
//! | `GET /metrics`                        | Prometheus text: requests, rows, errors, batches, latency histogram, reloads |
//!
//! Raw values are hashed, looked up and transformed exactly as in training (the
//! bundle's [`Predictor`]). Requests are micro-batched on one worker thread
//! (`batcher.rs`). Limits answer 4xx with what is wrong: body size (413), rows per
//! request, unknown or missing columns (named), values of the wrong type, non-finite
//! numbers. SIGTERM or Ctrl-C stops accepting, drains in-flight requests and exits.
//! The server watches the bundle's `manifest.json` and, when training commits a new
//! bundle there, loads and verifies it beside the old one and swaps it in at once; a
//! bundle that fails to load is reported and the old one keeps serving.

mod batcher;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Map, Value};

use crate::backend::Device;
use crate::run::Predictor;
use batcher::Job;

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub bundle: PathBuf,
    pub addr: SocketAddr,
    /// Longest a request waits for others to batch with (zero: batches are what queued
    /// while the previous batch ran).
    pub max_wait: Duration,
    /// Rows one forward pass takes at most (a batch closes early when reached).
    pub max_batch_rows: usize,
    /// Rows one request may carry.
    pub max_request_rows: usize,
    /// Request body limit in bytes.
    pub max_body: usize,
    /// How often the bundle is checked for a new version.
    pub poll: Duration,
}

impl ServeOptions {
    pub fn new(bundle: PathBuf, addr: SocketAddr) -> ServeOptions {
        ServeOptions {
            bundle,
            addr,
            max_wait: Duration::ZERO,
            max_batch_rows: 4096,
            max_request_rows: 10_000,
            max_body: 16 << 20,
            poll: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Load(#[from] crate::export::ExportError),
    #[error("{addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// The model being served, swapped whole when the bundle changes.
pub struct Shared {
    predictor: RwLock<Arc<Predictor>>,
    /// The manifest the loaded bundle had, to notice a new commit.
    manifest: RwLock<Vec<u8>>,
}

impl Shared {
    fn current(&self) -> Arc<Predictor> {
        self.predictor.read().map(|p| p.clone()).unwrap_or_else(|e| e.into_inner().clone())
    }
}

/// Latency histogram bucket bounds, seconds.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    requests: AtomicU64,
    errors: AtomicU64,
    rows: AtomicU64,
    batches: AtomicU64,
    batch_rows: AtomicU64,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
    latency_count: [AtomicU64; BUCKETS.len() + 1],
    latency_sum_us: AtomicU64,
}

impl Metrics {
    fn batch(&self, rows: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.batch_rows.fetch_add(rows as u64, Ordering::Relaxed);
    }

    fn observe(&self, took: Duration, ok: bool, rows: usize) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if ok {
            self.rows.fetch_add(rows as u64, Ordering::Relaxed);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let s = took.as_secs_f64();
        let i = BUCKETS.iter().position(|b| s <= *b).unwrap_or(BUCKETS.len());
        self.latency_count[i].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    fn text(&self, model: &str) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: u64| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n{name}{{model=\"{model}\"}} {v}\n"));
        };
        counter("multigate_requests_total", "Predict requests answered.", g(&self.requests));
        counter("multigate_request_errors_total", "Predict requests answered with an error.", g(&self.errors));
        counter("multigate_rows_total", "Rows scored.", g(&self.rows));
        counter("multigate_batches_total", "Forward passes (micro-batches).", g(&self.batches));
        counter("multigate_batch_rows_total", "Rows over all forward passes.", g(&self.batch_rows));
        counter("multigate_model_reloads_total", "New bundle versions swapped in.", g(&self.reloads));
        counter(
            "multigate_model_reload_failures_total",
            "New bundle versions that failed to load.",
            g(&self.reload_failures),
        );
        out.push_str(
            "# HELP multigate_request_seconds Predict request latency.\n# TYPE multigate_request_seconds histogram\n",
        );
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += g(&self.latency_count[i]);
            out.push_str(&format!("multigate_request_seconds_bucket{{model=\"{model}\",le=\"{b}\"}} {cumulative}\n"));
        }
        cumulative += g(&self.latency_count[BUCKETS.len()]);
        out.push_str(&format!("multigate_request_seconds_bucket{{model=\"{model}\",le=\"+Inf\"}} {cumulative}\n"));
        out.push_str(&format!(
            "multigate_request_seconds_sum{{model=\"{model}\"}} {}\nmultigate_request_seconds_count{{model=\"{model}\"}} {cumulative}\n",
            g(&self.latency_sum_us) as f64 / 1e6
        ));
        out
    }
}

struct App {
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    jobs: std::sync::mpsc::Sender<Job>,
    opts: ServeOptions,
}

/// A 4xx/5xx answer in TF-Serving's shape: `{"error": "..."}`.
fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// Loads the bundle, binds, and serves until SIGTERM or Ctrl-C; `ready` is called with
/// the bound address (port 0 picks a free one).
pub fn serve(opts: ServeOptions, ready: impl FnOnce(SocketAddr)) -> Result<(), ServeError> {
    let predictor = Predictor::load(&opts.bundle, Device::Cpu)?;
    let manifest = std::fs::read(opts.bundle.join("manifest.json")).unwrap_or_default();
    let shared = Arc::new(Shared { predictor: RwLock::new(Arc::new(predictor)), manifest: RwLock::new(manifest) });
    let metrics = Arc::new(Metrics::default());
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    let worker = {
        let (shared, metrics) = (shared.clone(), metrics.clone());
        let (wait, rows) = (opts.max_wait, opts.max_batch_rows);
        std::thread::Builder::new()
            .name("multigate-batcher".into())
            .spawn(move || batcher::run(rx, shared, metrics, wait, rows))?
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let app = Arc::new(App { shared: shared.clone(), metrics: metrics.clone(), jobs: tx, opts: opts.clone() });
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(opts.addr)
            .await
            .map_err(|source| ServeError::Bind { addr: opts.addr, source })?;
        ready(listener.local_addr()?);
        tokio::spawn(watch(app.clone()));
        let router = Router::new()
            .route("/v1/models/{*rest}", post(tf_predict).get(tf_status))
            .route("/v2/health/live", get(|| async { "live" }))
            .route("/v2/health/ready", get(|| async { "ready" }))
            .route("/v2/models/{name}", get(v2_metadata))
            .route("/metrics", get(prometheus))
            .layer(DefaultBodyLimit::max(opts.max_body))
            .with_state(app);
        axum::serve(listener, router).with_graceful_shutdown(shutdown()).await?;
        Ok::<_, ServeError>(())
    })?;
    // Every handler is done: the batcher's queue closes with the last sender.
    drop(rt);
    let _ = worker.join();
    Ok(())
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    eprintln!("multigate serve: stopping; finishing requests in flight");
}

/// Polls the bundle's manifest; a new one means a new commit: load it (verified) off
/// the async threads and swap it in.
async fn watch(app: Arc<App>) {
    loop {
        tokio::time::sleep(app.opts.poll).await;
        let dir = app.opts.bundle.clone();
        let Ok(now) = std::fs::read(dir.join("manifest.json")) else { continue };
        let same = app.shared.manifest.read().map(|m| *m == now).unwrap_or(true);
        if same {
            continue;
        }
        let loaded = tokio::task::spawn_blocking(move || Predictor::load(&dir, Device::Cpu)).await;
        match loaded {
            Ok(Ok(p)) => {
                if let Ok(mut slot) = app.shared.predictor.write() {
                    *slot = Arc::new(p);
                }
                if let Ok(mut m) = app.shared.manifest.write() {
                    *m = now;
                }
                app.metrics.reloads.fetch_add(1, Ordering::Relaxed);
                eprintln!("multigate serve: swapped in the new bundle at {}", app.opts.bundle.display());
            }
            Ok(Err(e)) => {
                // Remember it, so that a broken version is reported once, not every poll.
                if let Ok(mut m) = app.shared.manifest.write() {
                    *m = now;
                }
                app.metrics.reload_failures.fetch_add(1, Ordering::Relaxed);
                eprintln!("multigate serve: the new bundle does not load, still serving the old one: {e}");
            }
            Err(e) => eprintln!("multigate serve: reload: {e}"),
        }
    }
}

async fn tf_status(State(app): State<Arc<App>>, Path(rest): Path<String>) -> Response {
    let p = app.shared.current();
    let name = &p.compiled().model.name;
    if rest != *name {
        return error(StatusCode::NOT_FOUND, format!("no model `{rest}`; this server serves `{name}`"));
    }
    axum::Json(
        json!({ "model_version_status": [{ "version": "1", "state": "AVAILABLE", "status": { "error_code": "OK" } }] }),
    )
    .into_response()
}

async fn v2_metadata(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    let p = app.shared.current();
    let model = &p.compiled().model;
    if name != model.name {
        return error(StatusCode::NOT_FOUND, format!("no model `{name}`; this server serves `{}`", model.name));
    }
    let inputs: Vec<Value> = p
        .needs()
        .iter()
        .filter(|n| !n.is_label)
        .map(|n| {
            json!({
                "name": n.column,
                "datatype": match n.kind { crate::data::ColumnKind::Num => "FP32", crate::data::ColumnKind::Cat => "BYTES" },
                "shape": [-1],
            })
        })
        .collect();
    let outputs: Vec<Value> = model
        .tasks
        .iter()
        .map(|t| {
            let shape = match t.head.width() {
                1 => json!([-1]),
                k => json!([-1, k]),
            };
            json!({ "name": t.name, "datatype": "FP32", "shape": shape })
        })
        .collect();
    axum::Json(
        json!({ "name": model.name, "versions": ["1"], "platform": "multigate", "inputs": inputs, "outputs": outputs }),
    )
    .into_response()
}

async fn prometheus(State(app): State<Arc<App>>) -> Response {
    let name = app.shared.current().compiled().model.name.clone();
    ([("content-type", "text/plain; version=0.0.4")], app.metrics.text(&name)).into_response()
}

async fn tf_predict(State(app): State<Arc<App>>, Path(rest): Path<String>, body: Bytes) -> Response {
    let start = Instant::now();
    let (response, rows) = predict(&app, &rest, &body).await;
    let ok = response.status().is_success();
    app.metrics.observe(start.elapsed(), ok, rows);
    response
}

/// A request's rows as raw text per column, and how it wants the answer.
struct Request {
    columns: Vec<(String, Vec<String>)>,
    rows: usize,
    row_form: bool,
    gates: bool,
}

/// A JSON value as the raw text a CSV field would hold. A bag's column (`join`: its
/// separator) also takes a list of values, joined.
fn raw_text(v: &Value, column: &str, row: usize, join: Option<&str>) -> Result<String, String> {
    match (v, join) {
        (Value::String(s), _) => Ok(s.clone()),
        (Value::Number(n), _) => Ok(n.to_string()),
        (Value::Null, _) => Ok(String::new()),
        (Value::Array(items), Some(sep)) => {
            let values = items.iter().map(|x| raw_text(x, column, row, None)).collect::<Result<Vec<_>, _>>()?;
            Ok(values.join(sep))
        }
        (other, _) => Err(format!(
            "input `{column}` of instance {row}: {} is not a value (a string, a number or null)",
            match other {
                Value::Bool(_) => "a boolean",
                Value::Array(_) => "a list",
                _ => "an object",
            }
        )),
    }
}

fn parse_request(
    body: &[u8],
    columns: &[String],
    join: &dyn Fn(&str) -> Option<String>,
    max_rows: usize,
) -> Result<Request, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let Value::Object(top) = v else { return Err("the body must be a JSON object".into()) };
    let gates = match top.get("gates") {
        None | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(_) => return Err("`gates` must be true or false".into()),
    };
    let known: HashSet<&str> = columns.iter().map(String::as_str).collect();
    let unknown = |k: &str| {
        let shown: Vec<&str> = columns.iter().take(20).map(String::as_str).collect();
        let more = if columns.len() > 20 { format!(", ... ({} in all)", columns.len()) } else { String::new() };
        format!("unknown input `{k}`; the model reads: {}{more}", shown.join(", "))
    };
    let (out, rows, row_form): (Vec<(String, Vec<String>)>, usize, bool) =
        match (top.get("instances"), top.get("inputs")) {
            (Some(Value::Array(instances)), None) => {
                if instances.len() > max_rows {
                    return Err(format!("{} instances; at most {max_rows} per request", instances.len()));
                }
                let mut cols: Vec<(String, Vec<String>)> =
                    columns.iter().map(|c| (c.clone(), Vec::with_capacity(instances.len()))).collect();
                for (i, inst) in instances.iter().enumerate() {
                    let Value::Object(m) = inst else {
                        return Err(format!("instance {i} must be an object of input -> value"));
                    };
                    if let Some(k) = m.keys().find(|k| !known.contains(k.as_str())) {
                        return Err(format!("instance {i}: {}", unknown(k)));
                    }
                    for (c, values) in cols.iter_mut() {
                        match m.get(c.as_str()) {
                            Some(v) => values.push(raw_text(v, c, i, join(c).as_deref())?),
                            None => return Err(format!("instance {i} lacks input `{c}`")),
                        }
                    }
                }
                (cols, instances.len(), true)
            }
            (None, Some(Value::Object(inputs))) => {
                if let Some(k) = inputs.keys().find(|k| !known.contains(k.as_str())) {
                    return Err(unknown(k));
                }
                let mut rows = None;
                let mut cols = Vec::with_capacity(columns.len());
                for c in columns {
                    let Some(v) = inputs.get(c.as_str()) else { return Err(format!("input `{c}` is missing")) };
                    let sep = join(c);
                    let values: Vec<String> = match v {
                        Value::Array(a) => a
                            .iter()
                            .enumerate()
                            .map(|(i, x)| raw_text(x, c, i, sep.as_deref()))
                            .collect::<Result<_, _>>()?,
                        x => vec![raw_text(x, c, 0, sep.as_deref())?],
                    };
                    match rows {
                        None => rows = Some(values.len()),
                        Some(n) if n != values.len() => {
                            return Err(format!("input `{c}` has {} values, the others {n}", values.len()))
                        }
                        _ => {}
                    }
                    cols.push((c.clone(), values));
                }
                let rows = rows.unwrap_or(0);
                if rows > max_rows {
                    return Err(format!("{rows} rows; at most {max_rows} per request"));
                }
                (cols, rows, false)
            }
            (Some(_), Some(_)) => return Err("give `instances` or `inputs`, not both".into()),
            _ => return Err("the body needs `instances` (a list of objects) or `inputs` (an object of columns)".into()),
        };
    if rows == 0 {
        return Err("no rows to score".into());
    }
    Ok(Request { columns: out, rows, row_form, gates })
}

async fn predict(app: &App, rest: &str, body: &[u8]) -> (Response, usize) {
    let p = app.shared.current();
    let model = &p.compiled().model;
    let Some(name) = rest.strip_suffix(":predict") else {
        return (error(StatusCode::NOT_FOUND, format!("POST /v1/models/{rest}: expected /v1/models/NAME:predict")), 0);
    };
    if name != model.name {
        return (error(StatusCode::NOT_FOUND, format!("no model `{name}`; this server serves `{}`", model.name)), 0);
    }
    let req = match parse_request(body, p.input_columns(), &|c| p.separator(c), app.opts.max_request_rows) {
        Ok(r) => r,
        Err(e) => return (error(StatusCode::BAD_REQUEST, e), 0),
    };
    let frame = match p.frame(&req.columns) {
        Ok(f) => f,
        Err(e) => return (error(StatusCode::BAD_REQUEST, e.to_string()), 0),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    if app.jobs.send(Job { frame, gates: req.gates, reply: tx }).is_err() {
        return (error(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping"), 0);
    }
    let scored = match rx.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return (error(StatusCode::BAD_REQUEST, e), 0),
        Err(_) => return (error(StatusCode::INTERNAL_SERVER_ERROR, "the scoring worker stopped"), 0),
    };
    let tasks = &model.tasks;
    let value = |t: usize, i: usize| -> Value {
        let k = tasks[t].head.width();
        let v = &scored.values[t];
        if k == 1 {
            json!(v[i])
        } else {
            json!(v[i * k..(i + 1) * k])
        }
    };
    let mut out = Map::new();
    if req.row_form {
        let predictions: Vec<Value> = (0..req.rows)
            .map(|i| {
                let mut m = Map::new();
                for (t, task) in tasks.iter().enumerate() {
                    m.insert(task.name.clone(), value(t, i));
                }
                for (g, v) in &scored.gate_columns {
                    m.insert(g.clone(), json!(v[i]));
                }
                Value::Object(m)
            })
            .collect();
        out.insert("predictions".into(), Value::Array(predictions));
    } else {
        let mut outputs = Map::new();
        for (t, task) in tasks.iter().enumerate() {
            outputs.insert(task.name.clone(), Value::Array((0..req.rows).map(|i| value(t, i)).collect()));
        }
        for (g, v) in &scored.gate_columns {
            outputs.insert(g.clone(), json!(v));
        }
        out.insert("outputs".into(), Value::Object(outputs));
    }
    if !scored.warnings.is_empty() {
        out.insert("warnings".into(), json!(scored.warnings));
    }
    (axum::Json(Value::Object(out)).into_response(), req.rows)
}

#[cfg(test)]
mod tests {
    use super::parse_request;

    /// A bag's column takes a list per row (joined with its separator) in both request
    /// forms, and also its text; another column's list is refused.
    #[test]
    fn a_bag_column_takes_a_list_of_values() {
        let columns = ["item".to_string(), "history".to_string()];
        let join = |c: &str| (c == "history").then(|| "|".to_string());
        let rows = |body: &str| parse_request(body.as_bytes(), &columns, &join, 10).map(|r| r.columns);
        let expected = vec![
            ("item".to_string(), vec!["a".to_string(), "b".to_string()]),
            ("history".to_string(), vec!["x|7".to_string(), "".to_string()]),
        ];
        let instances = r#"{"instances": [{"item": "a", "history": ["x", 7]}, {"item": "b", "history": []}]}"#;
        assert_eq!(rows(instances).unwrap(), expected);
        let inputs = r#"{"inputs": {"item": ["a", "b"], "history": [["x", 7], ""]}}"#;
        assert_eq!(rows(inputs).unwrap(), expected);
        let e = rows(r#"{"instances": [{"item": ["a"], "history": []}]}"#).unwrap_err();
        assert!(e.contains("input `item` of instance 0: a list is not a value"), "{e}");
        let e = rows(r#"{"instances": [{"item": "a", "history": [["x"]]}]}"#).unwrap_err();
        assert!(e.contains("a list is not a value"), "{e}");
    }
}
