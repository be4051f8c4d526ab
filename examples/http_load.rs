//! A small HTTP load generator for `multigate serve` (used by scripts/load_test.sh):
//! keep-alive connections, one thread per client, fixed-size requests built from rows
//! of a CSV, latency per request.
//!
//! ```text
//! cargo run --release --example http_load -- ADDR MODEL ROWS.csv CLIENTS ROWS_PER_REQUEST SECONDS
//! ```
//! Prints one table row: clients, rows/request, requests/s, rows/s, p50 and p99 latency
//! (ms), errors.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn request(stream: &mut BufReader<TcpStream>, head: &str, body: &str) -> std::io::Result<u16> {
    stream.get_mut().write_all(format!("{head}Content-Length: {}\r\n\r\n{body}", body.len()).as_bytes())?;
    let mut status = String::new();
    stream.read_line(&mut status)?;
    let code = status.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        stream.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut buf = vec![0u8; length];
    stream.read_exact(&mut buf)?;
    Ok(code)
}

fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("server reachable");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 7 {
        eprintln!("usage: http_load ADDR MODEL ROWS.csv CLIENTS ROWS_PER_REQUEST SECONDS");
        std::process::exit(2);
    }
    let (addr, model, csv_path) = (args[1].clone(), args[2].clone(), &args[3]);
    let clients: usize = args[4].parse().expect("clients");
    let per: usize = args[5].parse().expect("rows per request");
    let seconds: f64 = args[6].parse().expect("seconds");
    // The inputs the model reads (KServe v2 metadata), then instances of those columns.
    let meta: serde_json::Value = serde_json::from_str(&get(&addr, &format!("/v2/models/{model}"))).expect("metadata");
    let inputs: Vec<String> =
        meta["inputs"].as_array().expect("inputs").iter().map(|i| i["name"].as_str().unwrap().to_string()).collect();
    let mut rdr = csv::Reader::from_path(csv_path).expect("rows");
    let header: Vec<String> = rdr.headers().unwrap().iter().map(str::to_string).collect();
    let rows: Vec<serde_json::Value> = rdr
        .records()
        .map(|r| {
            let r = r.unwrap();
            let m: serde_json::Map<String, serde_json::Value> = inputs
                .iter()
                .map(|c| (c.clone(), serde_json::json!(r.get(header.iter().position(|h| h == c).unwrap()).unwrap())))
                .collect();
            serde_json::Value::Object(m)
        })
        .collect();
    let bodies: Vec<String> = (0..64)
        .map(|k| {
            let inst: Vec<&serde_json::Value> = (0..per).map(|i| &rows[(k * per + i) % rows.len()]).collect();
            serde_json::json!({ "instances": inst }).to_string()
        })
        .collect();
    let head =
        format!("POST /v1/models/{model}:predict HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n");
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let (addr, head, bodies) = (addr.clone(), head.clone(), bodies.clone());
            std::thread::spawn(move || {
                let mut stream = BufReader::new(TcpStream::connect(&addr).expect("connect"));
                stream.get_ref().set_nodelay(true).ok();
                let (mut lat, mut errors, mut k) = (Vec::new(), 0usize, c);
                while Instant::now() < until {
                    let t = Instant::now();
                    match request(&mut stream, &head, &bodies[k % bodies.len()]) {
                        Ok(200) => lat.push(t.elapsed().as_secs_f64()),
                        _ => errors += 1,
                    }
                    k += 1;
                }
                (lat, errors)
            })
        })
        .collect();
    let (mut lat, mut errors) = (Vec::new(), 0);
    for h in handles {
        let (l, e) = h.join().expect("client");
        lat.extend(l);
        errors += e;
    }
    let took = started.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.total_cmp(b));
    let q =
        |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0.0);
    println!(
        "| {clients} | {per} | {:.0} | {:.0} | {:.3} | {:.3} | {errors} |",
        lat.len() as f64 / took,
        (lat.len() * per) as f64 / took,
        q(0.5) * 1e3,
        q(0.99) * 1e3
    );
}
