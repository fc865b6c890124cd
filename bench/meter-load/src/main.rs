//! `meter-load`: load for the metering sidecar's `POST /v1/usage` (driven by `bench/meter.py`).
//!
//! ```text
//! meter-load throughput --addr 127.0.0.1:8478 [--connections 64] [--duration 10]
//! meter-load latency    --addr 127.0.0.1:8478 [--rate 1000] [--duration 10] [--connections 64]
//! meter-load count      --addr 127.0.0.1:8478 [--reports 1000000] [--connections 64]
//!   --threads N   the runtime's worker threads (default: one per core)
//!   --no-ids      reports without an `id` (by default each has a unique one)
//!   --batch N     records per request (default 1: one report per request)
//! ```
//!
//! Every request carries `--batch` records (one by default) over a keep-alive HTTP/1.1
//! connection, and its records count as acknowledged only when answered 200; rates and counts
//! are in records. `throughput` runs a closed loop on each connection for
//! the duration. `latency` is an open loop: requests are scheduled at the rate whatever the
//! answers do, and each latency is measured from its scheduled send time, so a stall delays
//! every request scheduled behind it (no coordinated omission). `count` sends exactly N reports
//! (resending a failed one, same id) as fast as the connections allow. Prints one JSON object.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{header, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::sync::{mpsc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Throughput,
    Latency,
    Count,
}

#[derive(Debug, Clone)]
struct Options {
    mode: Mode,
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    rate: u64,
    reports: u64,
    threads: Option<usize>,
    ids: bool,
    batch: u64,
}

fn usage(problem: &str) -> String {
    format!(
        "{problem}\nusage: meter-load throughput|latency|count --addr HOST:PORT [--connections C] \
         [--duration SECONDS] [--rate PER_SECOND] [--reports N] [--threads N] [--no-ids] \
         [--batch N]"
    )
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mode = match args.next().as_deref() {
        Some("throughput") => Mode::Throughput,
        Some("latency") => Mode::Latency,
        Some("count") => Mode::Count,
        other => return Err(usage(&format!("unknown mode {other:?}"))),
    };
    let mut options = Options {
        mode,
        addr: SocketAddr::from(([127, 0, 0, 1], 8478)),
        connections: 64,
        duration: Duration::from_secs(10),
        rate: 1000,
        reports: 1_000_000,
        threads: None,
        ids: true,
        batch: 1,
    };
    while let Some(flag) = args.next() {
        if flag == "--no-ids" {
            options.ids = false;
            continue;
        }
        let value = args
            .next()
            .ok_or_else(|| usage(&format!("{flag} needs a value")))?;
        let bad = |_| usage(&format!("{flag} {value:?} is not valid"));
        match flag.as_str() {
            "--addr" => options.addr = value.parse().map_err(|_| bad(()))?,
            "--connections" => options.connections = value.parse().map_err(|_| bad(()))?,
            "--duration" => {
                options.duration = Duration::from_secs_f64(value.parse().map_err(|_| bad(()))?)
            }
            "--rate" => options.rate = value.parse().map_err(|_| bad(()))?,
            "--reports" => options.reports = value.parse().map_err(|_| bad(()))?,
            "--threads" => options.threads = Some(value.parse().map_err(|_| bad(()))?),
            "--batch" => options.batch = value.parse().map_err(|_| bad(()))?,
            _ => return Err(usage(&format!("unknown flag {flag}"))),
        }
    }
    if options.connections == 0 || options.rate == 0 || options.batch == 0 {
        return Err(usage(
            "--connections, --rate and --batch must be at least 1",
        ));
    }
    Ok(options)
}

/// Makes request bodies: `batch` records (an array when more than one), alternating two
/// dimensions, each with a unique id.
struct Reports {
    prefix: String,
    next: AtomicU64,
    ids: bool,
    batch: u64,
}

impl Reports {
    fn new(options: &Options) -> Reports {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        Reports {
            prefix: format!("load-{}-{nanos}", std::process::id()),
            next: AtomicU64::new(0),
            ids: options.ids,
            batch: options.batch,
        }
    }

    fn record(&self, n: u64) -> String {
        let dimension = if n % 2 == 0 { "requests" } else { "users" };
        if self.ids {
            format!(
                r#"{{"dimension":"{dimension}","quantity":1,"id":"{}-{n}"}}"#,
                self.prefix
            )
        } else {
            format!(r#"{{"dimension":"{dimension}","quantity":1}}"#)
        }
    }

    fn body(&self) -> Bytes {
        let first = self.next.fetch_add(self.batch, Ordering::Relaxed);
        if self.batch == 1 {
            return Bytes::from(self.record(first));
        }
        let records: Vec<String> = (first..first + self.batch)
            .map(|n| self.record(n))
            .collect();
        Bytes::from(format!("[{}]", records.join(",")))
    }
}

/// One keep-alive connection, reopened after an error.
struct Connection {
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Connection {
    fn new(addr: SocketAddr) -> Connection {
        Connection { addr, sender: None }
    }

    /// Posts one body; `true` when answered 200.
    async fn post(&mut self, body: Bytes) -> bool {
        if self.sender.is_none() {
            let Ok(stream) = tokio::net::TcpStream::connect(self.addr).await else {
                // Nothing listens (yet): do not spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                return false;
            };
            let _ = stream.set_nodelay(true);
            let Ok((sender, connection)) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
            else {
                return false;
            };
            tokio::spawn(connection);
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().expect("connected above");
        let request = Request::post("/v1/usage")
            .header(header::HOST, "meter")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .expect("a valid request");
        let answered = match sender.ready().await {
            Ok(()) => sender.send_request(request).await,
            Err(error) => Err(error),
        };
        match answered {
            Ok(response) => {
                let status = response.status();
                let body = response.into_body().collect().await;
                status == StatusCode::OK && body.is_ok()
            }
            Err(_) => {
                self.sender = None;
                false
            }
        }
    }
}

/// Acknowledged records and failed requests.
struct Counts {
    batch: u64,
    acknowledged: AtomicU64,
    errors: AtomicU64,
}

impl Counts {
    fn new(options: &Options) -> Counts {
        Counts {
            batch: options.batch,
            acknowledged: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    fn count(&self, ok: bool) {
        if ok {
            self.acknowledged.fetch_add(self.batch, Ordering::Relaxed);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn throughput(options: &Options) -> serde_json::Value {
    let reports = Arc::new(Reports::new(options));
    let counts = Arc::new(Counts::new(options));
    let started = Instant::now();
    let until = started + options.duration;
    let tasks: Vec<_> = (0..options.connections)
        .map(|_| {
            let (reports, counts, addr) = (reports.clone(), counts.clone(), options.addr);
            tokio::spawn(async move {
                let mut connection = Connection::new(addr);
                while Instant::now() < until {
                    counts.count(connection.post(reports.body()).await);
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let acknowledged = counts.acknowledged.load(Ordering::Relaxed);
    json!({
        "mode": "throughput",
        "connections": options.connections,
        "records_per_request": options.batch,
        "seconds": elapsed,
        "acknowledged": acknowledged,
        "errors": counts.errors.load(Ordering::Relaxed),
        "acknowledged_per_second": acknowledged as f64 / elapsed,
    })
}

async fn latency(options: &Options) -> serde_json::Value {
    let reports = Arc::new(Reports::new(options));
    let counts = Arc::new(Counts::new(options));
    let (schedule, scheduled) = mpsc::unbounded_channel::<Instant>();
    let scheduled = Arc::new(Mutex::new(scheduled));
    let workers: Vec<_> = (0..options.connections)
        .map(|_| {
            let (reports, counts, scheduled, addr) = (
                reports.clone(),
                counts.clone(),
                scheduled.clone(),
                options.addr,
            );
            tokio::spawn(async move {
                let mut connection = Connection::new(addr);
                let mut latencies_us = Vec::new();
                loop {
                    let Some(due) = scheduled.lock().await.recv().await else {
                        return latencies_us;
                    };
                    let ok = connection.post(reports.body()).await;
                    counts.count(ok);
                    if ok {
                        latencies_us.push(due.elapsed().as_micros() as u64);
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    let requests_per_second = options.rate as f64 / options.batch as f64;
    let total = (options.duration.as_secs_f64() * requests_per_second) as u64;
    for n in 0..total {
        // Behind schedule, this sends at once, still stamped with the time it was due.
        let due = started + Duration::from_secs_f64(n as f64 / requests_per_second);
        tokio::time::sleep_until(due.into()).await;
        let _ = schedule.send(due);
    }
    drop(schedule);
    let mut latencies_us = Vec::with_capacity(total as usize);
    for worker in workers {
        latencies_us.extend(worker.await.unwrap_or_default());
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies_us.sort_unstable();
    let percentile = |q: f64| {
        let rank = ((q * latencies_us.len() as f64).ceil() as usize).max(1);
        latencies_us
            .get(rank.min(latencies_us.len()) - 1)
            .map_or(0.0, |us| *us as f64 / 1000.0)
    };
    json!({
        "mode": "latency",
        "connections": options.connections,
        "rate": options.rate,
        "records_per_request": options.batch,
        "scheduled": total * options.batch,
        "seconds": elapsed,
        "acknowledged": counts.acknowledged.load(Ordering::Relaxed),
        "errors": counts.errors.load(Ordering::Relaxed),
        "latency_ms": {
            "p50": percentile(0.50),
            "p90": percentile(0.90),
            "p99": percentile(0.99),
            "p999": percentile(0.999),
            "max": percentile(1.0),
        },
    })
}

async fn count(options: &Options) -> serde_json::Value {
    let reports = Arc::new(Reports::new(options));
    let counts = Arc::new(Counts::new(options));
    let claimed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..options.connections)
        .map(|_| {
            let (reports, counts, claimed, addr, total) = (
                reports.clone(),
                counts.clone(),
                claimed.clone(),
                options.addr,
                options.reports,
            );
            tokio::spawn(async move {
                let mut connection = Connection::new(addr);
                while claimed.fetch_add(reports.batch, Ordering::Relaxed) < total {
                    let body = reports.body();
                    // Resent until acknowledged: exactly N reports count.
                    while !connection.post(body.clone()).await {
                        counts.count(false);
                    }
                    counts.count(true);
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let acknowledged = counts.acknowledged.load(Ordering::Relaxed);
    json!({
        "mode": "count",
        "connections": options.connections,
        "seconds": elapsed,
        "acknowledged": acknowledged,
        "errors": counts.errors.load(Ordering::Relaxed),
        "acknowledged_per_second": acknowledged as f64 / elapsed,
    })
}

fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(problem) => {
            eprintln!("{problem}");
            return ExitCode::from(2);
        }
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = options.threads {
        runtime.worker_threads(threads);
    }
    let runtime = runtime.enable_all().build().expect("a tokio runtime");
    let result = runtime.block_on(async {
        match options.mode {
            Mode::Throughput => throughput(&options).await,
            Mode::Latency => latency(&options).await,
            Mode::Count => count(&options).await,
        }
    });
    println!("{result}");
    ExitCode::SUCCESS
}
