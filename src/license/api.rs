//! The watch's local API: `GET /v1/license`, `/healthz`, `/readyz`, `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tokio::time::Instant;

use super::OnLoss;
use crate::domain::license::{License, LicenseState};
use crate::domain::time::{epoch_seconds, Clock};
use crate::local_http::server::{error, respond, text, Body};

/// What the watch shares with the API.
pub struct Shared {
    pub(super) license: Mutex<Option<License>>,
    pub(super) last_error: Mutex<Option<String>>,
    pub(super) timing: Mutex<Timing>,
    ready: AtomicBool,
    stopping: AtomicBool,
    on_loss: OnLoss,
}

/// The held checkout's time, by AWS's clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timing {
    /// When the checkout lapses unless extended, on the monotonic clock.
    pub expires: Option<Instant>,
    /// The local clock minus AWS License Manager's, in seconds.
    pub clock_skew: Option<i64>,
}

impl Shared {
    pub(super) fn new(on_loss: OnLoss) -> Shared {
        Shared {
            license: Mutex::new(None),
            last_error: Mutex::new(None),
            timing: Mutex::new(Timing::default()),
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            on_loss,
        }
    }

    pub(super) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub(super) fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.stopping.load(Ordering::SeqCst)
    }
}

/// Everything the handlers need.
pub struct Api {
    pub shared: Arc<Shared>,
    pub clock: Arc<dyn Clock>,
}

/// Answers one request.
pub async fn handle(api: &Api, request: Request<Incoming>) -> Response<Body> {
    let shared = &api.shared;
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/v1/license") => match lock(&shared.license).clone() {
            Some(license) => {
                let mut body = serde_json::to_value(&license).expect("serialisable");
                body["ready"] = json!(shared.is_ready());
                body["lastError"] = json!(lock(&shared.last_error).clone());
                body["onLoss"] = json!(match shared.on_loss {
                    OnLoss::Exit => "exit",
                    OnLoss::Report => "report",
                });
                body["clockSkewSeconds"] = json!(lock(&shared.timing).clock_skew);
                respond(StatusCode::OK, &body)
            }
            None => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no license yet: the sidecar is starting".to_owned(),
            ),
        },
        (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (&Method::GET, "/readyz") if shared.is_ready() => {
            text(StatusCode::OK, "text/plain", "ready\n".to_owned())
        }
        (&Method::GET, "/readyz") => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready\n".to_owned(),
        ),
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics(
                lock(&shared.license).as_ref(),
                shared.is_ready(),
                epoch_seconds(api.clock.now()),
                &Seen::at(*lock(&shared.timing), Instant::now()),
            ),
        ),
        (_, "/v1/license" | "/healthz" | "/readyz" | "/metrics") => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed".to_owned(),
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            "no such path; the API is GET /v1/license, /healthz, /readyz, /metrics".to_owned(),
        ),
    }
}

/// The timing as a scrape sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Seen {
    expires_in: Option<Duration>,
    clock_skew: Option<i64>,
}

impl Seen {
    fn at(timing: Timing, now: Instant) -> Seen {
        Seen {
            expires_in: timing
                .expires
                .map(|expires| expires.saturating_duration_since(now)),
            clock_skew: timing.clock_skew,
        }
    }
}

/// Prometheus text, written by hand as the meter's is (a handful of gauges needs no library).
fn metrics(license: Option<&License>, ready: bool, now: u64, seen: &Seen) -> String {
    let mut out = String::new();
    let state = license.map(|license| match license.state {
        LicenseState::Held => "held",
        LicenseState::Stale { .. } => "stale",
        LicenseState::Lost { .. } => "lost",
        LicenseState::Released { .. } => "released",
    });
    let _ = writeln!(
        out,
        "# HELP entitlement_gate_license_state 1 for the license's current state.\n\
         # TYPE entitlement_gate_license_state gauge"
    );
    for name in ["held", "stale", "lost", "released"] {
        let _ = writeln!(
            out,
            "entitlement_gate_license_state{{state=\"{name}\"}} {}",
            u8::from(state == Some(name))
        );
    }
    let expires_in = seen.expires_in.map_or(0, |left| left.as_secs());
    let confirmed_age = license.map_or(0, |license| now.saturating_sub(license.confirmed_at));
    let _ = writeln!(
        out,
        "# HELP entitlement_gate_license_expires_in_seconds Seconds until the checkout lapses unless extended (0 when unknown).\n\
         # TYPE entitlement_gate_license_expires_in_seconds gauge\n\
         entitlement_gate_license_expires_in_seconds {expires_in}\n\
         # HELP entitlement_gate_license_confirmed_age_seconds Seconds since AWS License Manager last confirmed the license.\n\
         # TYPE entitlement_gate_license_confirmed_age_seconds gauge\n\
         entitlement_gate_license_confirmed_age_seconds {confirmed_age}\n\
         # HELP entitlement_gate_license_ready 1 when the license is held (or stale within the grace).\n\
         # TYPE entitlement_gate_license_ready gauge\n\
         entitlement_gate_license_ready {}\n\
         # HELP entitlement_gate_license_clock_skew_seconds The local clock minus AWS License Manager's (0 when unknown); the license's timing follows AWS's.\n\
         # TYPE entitlement_gate_license_clock_skew_seconds gauge\n\
         entitlement_gate_license_clock_skew_seconds {}",
        u8::from(ready),
        seen.clock_skew.unwrap_or(0)
    );
    out
}

/// The shared state behind a poisoned lock is still consistent: every writer replaces whole values.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::license::{CheckoutType, EntitlementAllowed};

    #[test]
    fn metrics_show_the_state_and_the_ages() {
        let license = License {
            product_id: "p".into(),
            license_arn: "arn".into(),
            checkout_type: CheckoutType::Provisional,
            entitlements_allowed: vec![EntitlementAllowed {
                name: "Seats".into(),
                unit: "Count".into(),
                value: Some("1".into()),
            }],
            issued_at: Some(100),
            expiration: Some(3700),
            consumption_token: "t".into(),
            signed_token: None,
            node_id: None,
            region: "us-east-1".into(),
            confirmed_at: 100,
            state: LicenseState::Stale {
                since: 100,
                reason: "x".into(),
            },
        };
        let now = Instant::now();
        let timing = Timing {
            expires: Some(now + Duration::from_secs(3000)),
            clock_skew: Some(-2400),
        };
        let text = metrics(Some(&license), true, 700, &Seen::at(timing, now));
        assert!(text.contains("entitlement_gate_license_state{state=\"stale\"} 1"));
        assert!(text.contains("entitlement_gate_license_state{state=\"held\"} 0"));
        assert!(text.contains("entitlement_gate_license_expires_in_seconds 3000"));
        assert!(text.contains("entitlement_gate_license_confirmed_age_seconds 600"));
        assert!(text.contains("entitlement_gate_license_ready 1"));
        assert!(text.contains("entitlement_gate_license_clock_skew_seconds -2400"));
        let lapsed = Seen::at(timing, now + Duration::from_secs(4000));
        assert!(metrics(Some(&license), true, 700, &lapsed)
            .contains("entitlement_gate_license_expires_in_seconds 0"));
        let none = metrics(None, false, 0, &Seen::default());
        assert!(none.contains("entitlement_gate_license_ready 0"));
        assert!(none.contains("entitlement_gate_license_clock_skew_seconds 0"));
    }
}
