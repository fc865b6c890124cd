//! The sidecar's local HTTP API (loopback or a Unix socket): `POST /v1/usage`, `GET /v1/status`,
//! `/healthz`, `/readyz`, `/metrics`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::metrics::{Metrics, Snapshot};
use super::period::Period;
use super::report;
use super::store::{HourRecord, Ledger, Reader};
use super::writer::{retry_seconds, Refused, Writer};
use crate::domain::quantity::{Micros, Quantity};
use crate::domain::time::Clock;
use crate::local_http::server::{error, respond, text, Body};

/// When a client refused for the state budget should try again: room comes back as report ids
/// age out of their window.
const OVER_BUDGET_RETRY_AFTER_SECS: u64 = 60;

/// The largest request body accepted (a batch of about 10,000 records).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// How long a request body may take to arrive once its headers have.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether the sidecar takes usage.
#[derive(Debug, Default)]
pub struct Readiness {
    ready: AtomicBool,
    stopping: AtomicBool,
}

impl Readiness {
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.stopping.load(Ordering::SeqCst)
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// Everything the handlers need.
pub struct Api {
    pub writer: Writer,
    pub reader: Reader,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub dimensions: BTreeSet<String>,
    pub period: Period,
    pub clock: Arc<dyn Clock>,
    pub instance_id: String,
    pub product_code: String,
    /// Bytes (`--state-budget`).
    pub state_budget: u64,
}

/// Answers one request.
pub async fn handle(api: &Api, request: Request<Incoming>) -> Response<Body> {
    match (request.method(), request.uri().path()) {
        (&Method::POST, "/v1/usage") => usage(api, request).await,
        (&Method::GET, "/v1/status") => respond(StatusCode::OK, &status(api)),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (&Method::GET, "/readyz") => readyz(api),
        (&Method::GET, "/metrics") => {
            let unsent = api.reader.unsent().unwrap_or_default();
            let ledger = api.reader.ledger().unwrap_or_default();
            let health = api.writer.health();
            let writable = health.unwritable(Instant::now()).is_none();
            let body = api.metrics.render(&Snapshot {
                ready: api.readiness.is_ready() && writable,
                writable,
                unsent: &unsent,
                settled: &api.writer.settled(),
                ledger: &ledger,
                period: api.period,
                now: api.clock.now(),
                state_budget: api.state_budget,
            });
            text(StatusCode::OK, "text/plain; version=0.0.4", body)
        }
        (_, "/v1/usage" | "/v1/status" | "/healthz" | "/readyz" | "/metrics") => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed".to_owned(),
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            "no such path; the API is POST /v1/usage, GET /v1/status, /healthz, /readyz, /metrics"
                .to_owned(),
        ),
    }
}

/// `GET /readyz`: 200 once started, while the state can be written and until stopping.
fn readyz(api: &Api) -> Response<Body> {
    let health = api.writer.health();
    let body = match health.unwritable(Instant::now()) {
        _ if !api.readiness.is_ready() => "not ready\n".to_owned(),
        Some((reason, _)) => {
            format!("not ready: {reason}; reports get 503 until it is writable again\n")
        }
        None => return text(StatusCode::OK, "text/plain", "ready\n".to_owned()),
    };
    text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", body)
}

/// 503 for a report the unwritable state cannot take now.
fn unwritable(reason: &str, seconds: u64) -> Response<Body> {
    unavailable(
        format!("{reason}; nothing of this request was recorded: send it again in {seconds} s"),
        seconds,
    )
}

/// 503 for a report the state cannot take now, with when to send it again (`Retry-After`).
fn unavailable(message: String, retry_after: u64) -> Response<Body> {
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, message);
    response
        .headers_mut()
        .insert(hyper::header::RETRY_AFTER, retry_after.into());
    response
}

/// `POST /v1/usage`: 200 only once every record is durable; nothing of a refused body counts.
async fn usage(api: &Api, request: Request<Incoming>) -> Response<Body> {
    if !api.readiness.is_ready() {
        let why = if api.readiness.is_stopping() {
            "the sidecar is shutting down; report to the next one"
        } else {
            "the sidecar is not ready yet"
        };
        return error(StatusCode::SERVICE_UNAVAILABLE, why.to_owned());
    }
    if let Some((reason, seconds)) = api.writer.health().unwritable(Instant::now()) {
        return unwritable(reason, seconds);
    }
    let body = match read_body(request.into_body(), MAX_BODY_BYTES, BODY_READ_TIMEOUT).await {
        Ok(body) => body,
        Err(BodyRefused::TooLarge) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is over {MAX_BODY_BYTES} bytes; send fewer records per request"),
            )
        }
        Err(BodyRefused::TooSlow) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {} s; nothing was recorded",
                    BODY_READ_TIMEOUT.as_secs()
                ),
            )
        }
    };
    let reports = match report::parse(&body, &api.dimensions) {
        Ok(reports) => reports,
        Err(invalid) => {
            api.metrics.rejected();
            return error(StatusCode::BAD_REQUEST, invalid.0);
        }
    };
    match api.writer.submit(reports).await {
        Ok(Ok(accepted)) => {
            for (dimension, (reports, _)) in &accepted.counted {
                api.metrics.accepted(dimension, *reports);
            }
            respond(
                StatusCode::OK,
                &json!({ "accepted": accepted.records, "duplicates": accepted.duplicates }),
            )
        }
        Ok(Err(invalid)) => {
            api.metrics.rejected();
            error(StatusCode::BAD_REQUEST, invalid.0)
        }
        Err(Refused::ShuttingDown) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the sidecar is shutting down; report to the next one".to_owned(),
        ),
        Err(Refused::Unwritable {
            reason,
            retry_after,
        }) => unwritable(&reason, retry_seconds(retry_after)),
        Err(refused @ Refused::OverBudget { .. }) => unavailable(
            format!(
                "{refused}: nothing of this request was recorded; send it again later (report ids \
                 are forgotten after the id window, which frees room), or aggregate usage into \
                 fewer reports"
            ),
            OVER_BUDGET_RETRY_AFTER_SECS,
        ),
        Err(refused @ Refused::Storage(_)) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, refused.to_string())
        }
    }
}

/// Why a request body was not read.
#[derive(Debug, PartialEq, Eq)]
enum BodyRefused {
    TooLarge,
    TooSlow,
}

/// The whole of `body`, if it is at most `limit` bytes and arrives `within` (a client that
/// stalls mid-body must not hold its connection's slot for good).
async fn read_body<B>(body: B, limit: usize, within: Duration) -> Result<Bytes, BodyRefused>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match tokio::time::timeout(within, Limited::new(body, limit).collect()).await {
        Ok(Ok(body)) => Ok(body.to_bytes()),
        Ok(Err(_)) => Err(BodyRefused::TooLarge),
        Err(_) => Err(BodyRefused::TooSlow),
    }
}

/// `GET /v1/status`: per dimension the open hours, unsent hours, the last record sent, the last
/// error, duplicates and carried hours; and the instance ID.
fn status(api: &Api) -> Value {
    let settled = api.writer.settled();
    let records = api.reader.records().unwrap_or_default();
    let ledgers = api.reader.ledger().unwrap_or_default();
    let units = |micros: u64| Quantity::from_micros(micros).to_string();
    let label = |hour: u64| api.period.label(hour);
    let dimensions: serde_json::Map<String, Value> = api
        .dimensions
        .iter()
        .map(|dimension| {
            let open: Vec<Value> = settled
                .open
                .iter()
                .filter(|(_, name, _)| name == dimension)
                .map(|(hour, _, quantity)| json!({ "hour": label(*hour), "quantity": units(*quantity) }))
                .collect();
            let mine = records.iter().filter(|(_, name, _)| name == dimension);
            let mut unsent = Vec::new();
            let mut settled_problems = Vec::new();
            let mut last_sent = Value::Null;
            let mut last_error = Value::Null;
            for (hour, _, record) in mine {
                match record {
                    HourRecord::Unsent {
                        quantity,
                        attempts,
                        last_error: error,
                        in_doubt,
                    } => {
                        unsent.push(json!({ "hour": label(*hour), "quantity": units(*quantity), "attempts": attempts, "lastError": error, "inDoubt": in_doubt }));
                        if error.is_some() {
                            last_error = json!(error);
                        }
                    }
                    HourRecord::Sent {
                        quantity,
                        record_id,
                        ..
                    } => {
                        last_sent = json!({ "hour": label(*hour), "quantity": units(*quantity), "meteringRecordId": record_id });
                    }
                    HourRecord::Duplicate {
                        quantity, message, ..
                    } => {
                        last_error = json!(format!("DuplicateRequestException for {}: {message}", label(*hour)));
                        settled_problems.push(json!({ "hour": label(*hour), "state": "duplicate", "quantity": units(*quantity), "message": message }));
                    }
                    HourRecord::Carried { quantity, into, .. } => {
                        settled_problems.push(json!({ "hour": label(*hour), "state": "carried", "quantity": units(*quantity), "into": label(*into) }));
                    }
                    HourRecord::InDoubt { quantity, .. } => {
                        settled_problems.push(json!({ "hour": label(*hour), "state": "inDoubt", "quantity": units(*quantity) }));
                    }
                }
            }
            (
                dimension.clone(),
                json!({
                    "openHours": open,
                    "unsentHours": unsent,
                    "lastSent": last_sent,
                    "lastError": last_error,
                    "duplicatesAndCarried": settled_problems,
                    "ledger": ledger_json(&ledgers.get(dimension).copied().unwrap_or_default()),
                }),
            )
        })
        .collect();
    let health = api.writer.health();
    let unwritable = health.unwritable(Instant::now());
    json!({
        "instanceId": api.instance_id,
        "productCode": api.product_code,
        "period": api.period.to_string(),
        "ready": api.readiness.is_ready() && unwritable.is_none(),
        "stateError": unwritable.map(|(reason, _)| reason),
        "acceptingHour": label(settled.accepting_hour),
        "dimensions": dimensions,
    })
}

/// A dimension's ledger as exact decimal strings: where every acknowledged unit is.
pub fn ledger_json(ledger: &Ledger) -> Value {
    let units = |micros: u128| Micros(micros as i128).to_string();
    json!({
        "acknowledged": units(ledger.acknowledged),
        "billed": units(ledger.billed),
        "refused": units(ledger.refused),
        "inDoubt": units(ledger.in_doubt),
        "unsent": units(ledger.unsent),
        "carriedFraction": Micros(ledger.carried_fraction).to_string(),
        "balances": ledger.balances(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A body whose client stopped sending.
    struct Stalled;

    impl hyper::body::Body for Stalled {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_is_read_whole_within_its_size_and_time_or_refused() {
        let within = Duration::from_secs(30);
        let small = Full::new(Bytes::from_static(b"[]"));
        assert_eq!(
            read_body(small, 16, within).await,
            Ok(Bytes::from_static(b"[]"))
        );
        let large = Full::new(Bytes::from(vec![b' '; 17]));
        assert_eq!(
            read_body(large, 16, within).await,
            Err(BodyRefused::TooLarge)
        );
        let started = tokio::time::Instant::now();
        let stalled = tokio::time::timeout(within * 100, read_body(Stalled, 16, within)).await;
        assert_eq!(
            stalled,
            Ok(Err(BodyRefused::TooSlow)),
            "a stalled body is cut off"
        );
        assert_eq!(started.elapsed(), within);
    }
}
