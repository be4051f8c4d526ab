//! `multigate serve` end to end: a real server process on loopback, answered over HTTP.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::repo;

/// Gated layers, dense and categorical inputs, binary, multiclass and regression heads.
const SPEC: &str = "tests/inputs/onnx/every_op.toml";
const TASKS: [&str; 3] = ["ctr", "genre", "watch"];

use super::mg_ok as mg;

struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(bundle: &str, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_multigate"))
            .args([&["serve", bundle, "--port", "0"][..], extra].concat())
            .current_dir(repo())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line.trim().rsplit("http://").next().unwrap().to_string();
        Server { child, addr }
    }

    /// One request on a fresh connection: (status, body).
    fn call(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (code, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
    }

    fn predict(&self, body: &Value) -> (u16, Value) {
        let (code, text) = self.call("POST", "/v1/models/every_op:predict", &body.to_string());
        (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    /// A failed assertion must not leave the server running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The rows of a CSV as instances of the given input columns (raw text values).
fn instances(csv: &str, inputs: &[String]) -> Vec<Value> {
    let mut rdr = csv::Reader::from_path(csv).unwrap();
    let header: Vec<String> = rdr.headers().unwrap().iter().map(str::to_string).collect();
    rdr.records()
        .map(|r| {
            let r = r.unwrap();
            let m: serde_json::Map<String, Value> = inputs
                .iter()
                .map(|c| (c.clone(), json!(r.get(header.iter().position(|h| h == c).unwrap()).unwrap())))
                .collect();
            Value::Object(m)
        })
        .collect()
}

#[test]
fn serve_answers_like_predict_refuses_bad_requests_swaps_bundles_and_drains_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |s: &str| tmp.path().join(s).to_string_lossy().to_string();
    mg(&["compile-and-train", SPEC, "--rows", "2000", "--epochs", "1", "--out", &p("b")]);
    mg(&["synth", SPEC, "--rows", "30", "--out", &p("rows.csv")]);
    mg(&["predict", &p("b"), &p("rows.csv"), "--out", &p("preds.csv")]);
    let server = Server::start(&p("b"), &["--max-rows", "100", "--max-body", "200000"]);

    // Health and metadata.
    assert_eq!(server.call("GET", "/v2/health/live", "").0, 200);
    assert_eq!(server.call("GET", "/v2/health/ready", "").0, 200);
    let (code, meta) = server.call("GET", "/v2/models/every_op", "");
    assert_eq!(code, 200, "{meta}");
    let meta: Value = serde_json::from_str(&meta).unwrap();
    let inputs: Vec<String> =
        meta["inputs"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap().into()).collect();
    let outputs: Vec<&str> = meta["outputs"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(outputs, TASKS);
    assert_eq!(server.call("GET", "/v1/models/every_op", "").0, 200);
    assert_eq!(server.call("GET", "/v2/models/other", "").0, 404);

    // Row form: the same numbers as `predict` (which prints f32 in shortest form).
    let rows = instances(&p("rows.csv"), &inputs);
    let (code, got) = server.predict(&json!({ "instances": rows }));
    assert_eq!(code, 200, "{got}");
    let mut rdr = csv::Reader::from_path(p("preds.csv")).unwrap();
    let expected: Vec<Vec<f32>> =
        rdr.records().map(|r| r.unwrap().iter().map(|v| v.parse().unwrap()).collect()).collect();
    let preds = got["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 30);
    // Served rows flattened in task order (a multiclass task is a list): predict's columns.
    let flat = |row: &Value| -> Vec<f32> {
        TASKS
            .iter()
            .flat_map(|t| match &row[t] {
                Value::Array(a) => a.iter().map(|v| v.as_f64().unwrap() as f32).collect(),
                v => vec![v.as_f64().unwrap() as f32],
            })
            .collect()
    };
    for (row, want) in preds.iter().zip(&expected) {
        assert_eq!(&flat(row), want);
    }
    // Columnar form, with gate weights.
    let mut cols = serde_json::Map::new();
    for c in &inputs {
        cols.insert(c.clone(), Value::Array(rows.iter().take(3).map(|r| r[c].clone()).collect()));
    }
    let (code, got) = server.predict(&json!({ "inputs": cols, "gates": true }));
    assert_eq!(code, 200, "{got}");
    let out = got["outputs"].as_object().unwrap();
    assert_eq!(out["ctr"].as_array().unwrap().len(), 3);
    assert_eq!(out["ctr"][1].as_f64().unwrap() as f32, expected[1][0]);
    let gate_cols: Vec<&String> = out.keys().filter(|k| k.contains(".gate.")).collect();
    assert!(!gate_cols.is_empty(), "{got}");

    // Bad requests: 4xx naming what is wrong.
    let one = rows[0].clone();
    let with = |k: &str, v: Value| {
        let mut r = one.clone();
        r.as_object_mut().unwrap().insert(k.into(), v);
        json!({ "instances": [r] })
    };
    let without = {
        let mut r = one.clone();
        r.as_object_mut().unwrap().remove(&inputs[0]);
        json!({ "instances": [r] })
    };
    let cases = vec![
        (with("nonsense", json!("1")), 400, "unknown input `nonsense`".to_string()),
        (without, 400, format!("lacks input `{}`", inputs[0])),
        (with(&inputs[0], json!(true)), 400, "a boolean is not a value".to_string()),
        (json!({ "instances": vec![one.clone(); 101] }), 400, "at most 100 per request".to_string()),
        (json!({ "rows": [] }), 400, "needs `instances`".to_string()),
        (with("price", json!("NaN")), 400, "not a finite number".to_string()),
        (with("price", json!("1e39")), 400, "beyond the range".to_string()),
    ];
    for (body, code, needle) in cases {
        let (c, got) = server.predict(&body);
        assert_eq!(c, code, "{needle}: {got}");
        assert!(got["error"].as_str().unwrap_or("").contains(&needle), "{needle}: {got}");
    }
    let (c, text) = server.call("POST", "/v1/models/every_op:predict", "{not json");
    assert!(c == 400 && text.contains("not JSON"), "{c} {text}");
    let (c, _) = server.call("POST", "/v1/models/other:predict", &json!({ "instances": [one] }).to_string());
    assert_eq!(c, 404);
    let big = "x".repeat(300_000);
    assert_eq!(server.call("POST", "/v1/models/every_op:predict", &big).0, 413);

    // A new bundle committed to the folder is swapped in.
    mg(&["compile-and-train", SPEC, "--rows", "2000", "--epochs", "2", "--out", &p("b"), "--force"]);
    mg(&["predict", &p("b"), &p("rows.csv"), "--out", &p("preds2.csv")]);
    let first2: f32 = std::fs::read_to_string(p("preds2.csv"))
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(first2, expected[0][0]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, got) = server.predict(&json!({ "instances": [rows[0].clone()] }));
        if got["predictions"][0]["ctr"].as_f64().unwrap() as f32 == first2 {
            break;
        }
        assert!(Instant::now() < deadline, "the new bundle was not swapped in: {got}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, metrics) = server.call("GET", "/metrics", "");
    assert!(metrics.contains("multigate_model_reloads_total{model=\"every_op\"} 1"), "{metrics}");
    // Eight bad bodies and the unknown model; the 413 is refused before the handler.
    assert!(metrics.contains("multigate_request_errors_total{model=\"every_op\"} 9"), "{metrics}");
    assert!(metrics.contains("multigate_request_seconds_bucket"), "{metrics}");

    // SIGTERM: a clean exit.
    let status = server.stop();
    assert!(status.success(), "{status:?}");
}
