//! The watch's local API: `GET /v1/license`, `/healthz`, `/readyz`, `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::OnLoss;
use crate::domain::license::{License, LicenseState};
use crate::domain::time::{epoch_seconds, Clock};
use crate::local_http::server::{error, respond, text, Body};

/// What the watch shares with the API.
pub struct Shared {
    pub(super) license: Mutex<Option<License>>,
    pub(super) last_error: Mutex<Option<String>>,
    ready: AtomicBool,
    stopping: AtomicBool,
    on_loss: OnLoss,
}

impl Shared {
    pub(super) fn new(on_loss: OnLoss) -> Shared {
        Shared {
            license: Mutex::new(None),
            last_error: Mutex::new(None),
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

/// Prometheus text, written by hand as the meter's is (a handful of gauges needs no library).
fn metrics(license: Option<&License>, ready: bool, now: u64) -> String {
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
    let expires_in = license
        .and_then(|license| license.expiration)
        .map_or(0, |expires| expires.saturating_sub(now));
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
         entitlement_gate_license_ready {}",
        u8::from(ready)
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
        let text = metrics(Some(&license), true, 700);
        assert!(text.contains("entitlement_gate_license_state{state=\"stale\"} 1"));
        assert!(text.contains("entitlement_gate_license_state{state=\"held\"} 0"));
        assert!(text.contains("entitlement_gate_license_expires_in_seconds 3000"));
        assert!(text.contains("entitlement_gate_license_confirmed_age_seconds 600"));
        assert!(text.contains("entitlement_gate_license_ready 1"));
        assert!(metrics(None, false, 0).contains("entitlement_gate_license_ready 0"));
    }
}
