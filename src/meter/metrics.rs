//! The sidecar's counters, and `GET /metrics` in the Prometheus text format (version 0.0.4),
//! written by hand: a dozen fixed series need no library.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use super::period::Period;
use super::store::Unsent;
use super::writer::Settled;
use crate::aws::metering::{MeterUsageAnswer, MeteringError};
use crate::domain::time::epoch_seconds;

/// How one MeterUsage call ended, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    Sent,
    Duplicate,
    Throttled,
    ServerError,
    Unreachable,
    Refused,
}

impl CallOutcome {
    const ALL: [CallOutcome; 6] = [
        CallOutcome::Sent,
        CallOutcome::Duplicate,
        CallOutcome::Throttled,
        CallOutcome::ServerError,
        CallOutcome::Unreachable,
        CallOutcome::Refused,
    ];

    fn label(self) -> &'static str {
        match self {
            CallOutcome::Sent => "sent",
            CallOutcome::Duplicate => "duplicate",
            CallOutcome::Throttled => "throttled",
            CallOutcome::ServerError => "server_error",
            CallOutcome::Unreachable => "unreachable",
            CallOutcome::Refused => "refused",
        }
    }

    pub fn of(result: &Result<MeterUsageAnswer, MeteringError>) -> CallOutcome {
        match result {
            Ok(_) => CallOutcome::Sent,
            Err(MeteringError::DuplicateRequest { .. }) => CallOutcome::Duplicate,
            Err(MeteringError::Throttled(_)) => CallOutcome::Throttled,
            Err(MeteringError::ServiceUnavailable(_)) => CallOutcome::ServerError,
            Err(MeteringError::Unreachable(_)) => CallOutcome::Unreachable,
            Err(_) => CallOutcome::Refused,
        }
    }
}

/// What the gauges show, read when the metrics are asked for.
#[derive(Debug, Clone, Copy)]
pub struct Readings<'a> {
    /// The sidecar accepts usage.
    pub ready: bool,
    /// The state can be written.
    pub writable: bool,
    pub unsent: &'a [Unsent],
    pub settled: &'a Settled,
}

/// Reports and quantity accepted for one dimension.
#[derive(Debug, Default)]
struct Accepted {
    reports: AtomicU64,
    quantity: AtomicU64,
}

/// Every counter of the sidecar.
#[derive(Debug)]
pub struct Metrics {
    accepted: BTreeMap<String, Accepted>,
    rejected: AtomicU64,
    calls: [AtomicU64; CallOutcome::ALL.len()],
    carried: AtomicU64,
    in_doubt_hours: AtomicU64,
    in_doubt_quantity: AtomicU64,
}

impl Metrics {
    pub fn new<'a>(dimensions: impl IntoIterator<Item = &'a String>) -> Metrics {
        Metrics {
            accepted: dimensions
                .into_iter()
                .map(|name| (name.clone(), Accepted::default()))
                .collect(),
            rejected: AtomicU64::new(0),
            calls: Default::default(),
            carried: AtomicU64::new(0),
            in_doubt_hours: AtomicU64::new(0),
            in_doubt_quantity: AtomicU64::new(0),
        }
    }

    /// Counts reports acknowledged for `dimension` (duplicates of earlier reports excluded).
    pub fn accepted(&self, dimension: &str, reports: u64, quantity: u64) {
        if let Some(counters) = self.accepted.get(dimension) {
            counters.reports.fetch_add(reports, Ordering::Relaxed);
            counters.quantity.fetch_add(quantity, Ordering::Relaxed);
        }
    }

    pub fn rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub fn call(&self, outcome: CallOutcome) {
        let index = CallOutcome::ALL
            .iter()
            .position(|known| *known == outcome)
            .expect("every outcome is listed");
        self.calls[index].fetch_add(1, Ordering::Relaxed);
    }

    pub fn carried(&self) {
        self.carried.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an hour left in doubt and its quantity.
    pub fn in_doubt(&self, quantity: u64) {
        self.in_doubt_hours.fetch_add(1, Ordering::Relaxed);
        self.in_doubt_quantity
            .fetch_add(quantity, Ordering::Relaxed);
    }

    /// The Prometheus text of every series, with the gauges computed from `readings` as of
    /// `now`.
    pub fn render(&self, readings: &Readings<'_>, period: Period, now: SystemTime) -> String {
        let Readings {
            ready,
            writable,
            unsent,
            settled,
        } = *readings;
        let mut text = String::new();
        let mut series = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
            let _ = writeln!(text, "# HELP {name} {help}");
            let _ = writeln!(text, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(text, "{name}{labels} {value}");
            }
        };
        let per_dimension = |value: fn(&Accepted) -> u64| {
            self.accepted
                .iter()
                .map(|(name, counters)| {
                    (
                        format!("{{dimension=\"{}\"}}", label_value(name)),
                        value(counters),
                    )
                })
                .collect()
        };
        series(
            "entitlement_gate_meter_reports_total",
            "counter",
            "Usage records acknowledged (durable), by dimension.",
            per_dimension(|c| c.reports.load(Ordering::Relaxed)),
        );
        series(
            "entitlement_gate_meter_quantity_total",
            "counter",
            "Usage quantity acknowledged, by dimension.",
            per_dimension(|c| c.quantity.load(Ordering::Relaxed)),
        );
        series(
            "entitlement_gate_meter_rejected_requests_total",
            "counter",
            "POST /v1/usage requests refused as invalid (HTTP 400).",
            vec![(String::new(), self.rejected.load(Ordering::Relaxed))],
        );
        series(
            "entitlement_gate_meter_calls_total",
            "counter",
            "MeterUsage calls (each with its retries), by outcome.",
            CallOutcome::ALL
                .iter()
                .zip(&self.calls)
                .map(|(outcome, count)| {
                    (
                        format!("{{outcome=\"{}\"}}", outcome.label()),
                        count.load(Ordering::Relaxed),
                    )
                })
                .collect(),
        );
        series(
            "entitlement_gate_meter_carried_hours_total",
            "counter",
            "Hours whose usage was carried into a later hour before leaving MeterUsage's window.",
            vec![(String::new(), self.carried.load(Ordering::Relaxed))],
        );
        series(
            "entitlement_gate_meter_in_doubt_hours_total",
            "counter",
            "Hours that left MeterUsage's window after an attempt without an answer: AWS may hold them; neither carried nor resent.",
            vec![(String::new(), self.in_doubt_hours.load(Ordering::Relaxed))],
        );
        series(
            "entitlement_gate_meter_in_doubt_quantity_total",
            "counter",
            "The usage in those hours, to reconcile with AWS Marketplace's reports.",
            vec![(
                String::new(),
                self.in_doubt_quantity.load(Ordering::Relaxed),
            )],
        );
        series(
            "entitlement_gate_meter_unsent_hours",
            "gauge",
            "Closed (hour, dimension) records not yet sent.",
            vec![(String::new(), unsent.len() as u64)],
        );
        let oldest = unsent
            .iter()
            .map(|u| epoch_seconds(now).saturating_sub(epoch_seconds(period.start(u.hour))))
            .max()
            .unwrap_or(0);
        series(
            "entitlement_gate_meter_oldest_unsent_hour_age_seconds",
            "gauge",
            "Seconds since the start of the oldest unsent hour (0 when none).",
            vec![(String::new(), oldest)],
        );
        series(
            "entitlement_gate_meter_commits_total",
            "counter",
            "State transactions committed, each with one sync.",
            vec![(String::new(), settled.commits)],
        );
        series(
            "entitlement_gate_meter_committed_changes_total",
            "counter",
            "Changes those transactions carried (group commit: many per sync under load).",
            vec![(String::new(), settled.changes)],
        );
        series(
            "entitlement_gate_meter_state_write_failures_total",
            "counter",
            "Writes of the state that failed (a full or failing disk); each is retried.",
            vec![(String::new(), settled.write_failures)],
        );
        series(
            "entitlement_gate_meter_state_writable",
            "gauge",
            "1 when the state can be written; 0 while writes fail and reports get 503.",
            vec![(String::new(), u64::from(writable))],
        );
        series(
            "entitlement_gate_meter_ready",
            "gauge",
            "1 when the sidecar accepts usage.",
            vec![(String::new(), u64::from(ready))],
        );
        text
    }
}

/// A label value as the text format wants it: backslash, quote and newline escaped.
fn label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn every_series_renders_with_help_type_and_escaped_labels() {
        let dimensions = ["requests".to_owned(), "odd \"dim\"\n".to_owned()];
        let metrics = Metrics::new(&dimensions);
        metrics.accepted("requests", 2, 7);
        metrics.accepted("unknown", 1, 1);
        metrics.rejected();
        metrics.call(CallOutcome::Sent);
        metrics.call(CallOutcome::Throttled);
        metrics.carried();
        metrics.in_doubt(5);
        let unsent = vec![Unsent {
            hour: 500_000,
            dimension: "requests".into(),
            quantity: 7,
            attempts: 1,
            last_error: None,
            in_doubt: true,
        }];
        let settled = Settled {
            commits: 3,
            changes: 9,
            write_failures: 2,
            ..Settled::default()
        };
        let now = UNIX_EPOCH + Duration::from_secs(500_000 * 3600 + 4000);
        let readings = Readings {
            ready: false,
            writable: false,
            unsent: &unsent,
            settled: &settled,
        };
        let text = metrics.render(&readings, Period::HOUR, now);
        for line in [
            "entitlement_gate_meter_reports_total{dimension=\"requests\"} 2",
            "entitlement_gate_meter_quantity_total{dimension=\"requests\"} 7",
            "entitlement_gate_meter_reports_total{dimension=\"odd \\\"dim\\\"\\n\"} 0",
            "entitlement_gate_meter_rejected_requests_total 1",
            "entitlement_gate_meter_calls_total{outcome=\"sent\"} 1",
            "entitlement_gate_meter_calls_total{outcome=\"throttled\"} 1",
            "entitlement_gate_meter_carried_hours_total 1",
            "entitlement_gate_meter_in_doubt_hours_total 1",
            "entitlement_gate_meter_in_doubt_quantity_total 5",
            "entitlement_gate_meter_unsent_hours 1",
            "entitlement_gate_meter_oldest_unsent_hour_age_seconds 4000",
            "entitlement_gate_meter_commits_total 3",
            "entitlement_gate_meter_committed_changes_total 9",
            "entitlement_gate_meter_state_write_failures_total 2",
            "entitlement_gate_meter_state_writable 0",
            "entitlement_gate_meter_ready 0",
            "# TYPE entitlement_gate_meter_unsent_hours gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("unknown"));
    }
}
