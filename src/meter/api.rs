//! The sidecar's local HTTP API (loopback or a Unix socket): `POST /v1/usage`, `GET /v1/status`,
//! `/healthz`, `/readyz`, `/metrics`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::metrics::{Metrics, Snapshot};
use super::period::Period;
use super::report;
use super::store::{HourRecord, Ledger, Reader};
use super::writer::{Refused, Writer};
use crate::domain::quantity::{Micros, Quantity};
use crate::domain::time::Clock;
use crate::local_http::server::{error, respond, text, Body};

/// When a client refused for the state budget should try again: room comes back as report ids
/// age out of their window.
const OVER_BUDGET_RETRY_AFTER_SECS: u64 = 60;

/// `response` with a `Retry-After` header.
fn retry_after(mut response: Response<Body>, seconds: u64) -> Response<Body> {
    response.headers_mut().insert(
        hyper::header::RETRY_AFTER,
        hyper::header::HeaderValue::from(seconds),
    );
    response
}

/// The largest request body accepted (a batch of about 10,000 records).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

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
        (&Method::GET, "/readyz") if api.readiness.is_ready() => {
            text(StatusCode::OK, "text/plain", "ready\n".to_owned())
        }
        (&Method::GET, "/readyz") => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready\n".to_owned(),
        ),
        (&Method::GET, "/metrics") => {
            let unsent = api.reader.unsent().unwrap_or_default();
            let ledger = api.reader.ledger().unwrap_or_default();
            let body = api.metrics.render(&Snapshot {
                ready: api.readiness.is_ready(),
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
    let body = match Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is over {MAX_BODY_BYTES} bytes; send fewer records per request"),
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
        Err(refused @ Refused::OverBudget { .. }) => retry_after(
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{refused}: nothing of this request was recorded; send it again later (report \
                     ids are forgotten after the id window, which frees room), or aggregate usage \
                     into fewer reports"
                ),
            ),
            OVER_BUDGET_RETRY_AFTER_SECS,
        ),
        Err(refused @ Refused::Storage(_)) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, refused.to_string())
        }
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
    json!({
        "instanceId": api.instance_id,
        "productCode": api.product_code,
        "period": api.period.to_string(),
        "ready": api.readiness.is_ready(),
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
