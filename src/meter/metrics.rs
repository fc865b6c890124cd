//! The sidecar's counters, and `GET /metrics` in the Prometheus text format (version 0.0.4),
//! written by hand: a dozen fixed series need no library.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use super::period::Period;
use super::store::{Ledger, Unsent};
use super::writer::Settled;
use crate::aws::metering::{MeterUsageAnswer, MeteringError};
use crate::domain::quantity::Micros;
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

/// Every counter of the sidecar; the ledger's figures come from the state when rendered.
#[derive(Debug)]
pub struct Metrics {
    /// Reports acknowledged by this process, by dimension (duplicates of earlier reports
    /// excluded).
    reports: BTreeMap<String, AtomicU64>,
    rejected: AtomicU64,
    calls: [AtomicU64; CallOutcome::ALL.len()],
    carried: AtomicU64,
    in_doubt_hours: AtomicU64,
}

/// What `/metrics` shows besides the counters, read from the state as of a scrape.
pub struct Snapshot<'a> {
    /// The sidecar accepts usage.
    pub ready: bool,
    /// The state can be written.
    pub writable: bool,
    pub unsent: &'a [Unsent],
    pub settled: &'a Settled,
    pub ledger: &'a BTreeMap<String, Ledger>,
    pub period: Period,
    pub now: SystemTime,
    /// The state budget (`--state-budget`), in bytes.
    pub state_budget: u64,
}

impl Metrics {
    pub fn new<'a>(dimensions: impl IntoIterator<Item = &'a String>) -> Metrics {
        Metrics {
            reports: dimensions
                .into_iter()
                .map(|name| (name.clone(), AtomicU64::new(0)))
                .collect(),
            rejected: AtomicU64::new(0),
            calls: Default::default(),
            carried: AtomicU64::new(0),
            in_doubt_hours: AtomicU64::new(0),
        }
    }

    /// Counts reports acknowledged for `dimension` (duplicates of earlier reports excluded).
    pub fn accepted(&self, dimension: &str, reports: u64) {
        if let Some(counter) = self.reports.get(dimension) {
            counter.fetch_add(reports, Ordering::Relaxed);
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

    /// Counts an hour left in doubt (its units are in the ledger).
    pub fn in_doubt(&self) {
        self.in_doubt_hours.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text of every series.
    pub fn render(&self, snapshot: &Snapshot<'_>) -> String {
        let mut text = String::new();
        let mut series = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
            let _ = writeln!(text, "# HELP {name} {help}");
            let _ = writeln!(text, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(text, "{name}{labels} {value}");
            }
        };
        let one = |value: u64| vec![(String::new(), value.to_string())];
        let by_dimension = |value: &dyn Fn(&str) -> String| {
            self.reports
                .keys()
                .map(|name| {
                    (
                        format!("{{dimension=\"{}\"}}", label_value(name)),
                        value(name),
                    )
                })
                .collect::<Vec<_>>()
        };
        series(
            "entitlement_gate_meter_reports_total",
            "counter",
            "Usage records acknowledged (durable) by this process, by dimension.",
            by_dimension(&|name| self.reports[name].load(Ordering::Relaxed).to_string()),
        );
        let ledger = |name: &str| snapshot.ledger.get(name).copied().unwrap_or_default();
        for (name, kind, help, part) in [
            (
                "entitlement_gate_meter_acknowledged_units_total",
                "counter",
                "Units acknowledged since the state was created, by dimension (exact decimals).",
                (|l: &Ledger| Micros(l.acknowledged as i128)) as fn(&Ledger) -> Micros,
            ),
            (
                "entitlement_gate_meter_billed_units_total",
                "counter",
                "Units AWS recorded (MeterUsage answered with a record ID), by dimension.",
                |l| Micros(l.billed as i128),
            ),
            (
                "entitlement_gate_meter_refused_units_total",
                "counter",
                "Units AWS refused as a duplicate of another quantity for the hour: not billed.",
                |l| Micros(l.refused as i128),
            ),
            (
                "entitlement_gate_meter_in_doubt_units_total",
                "counter",
                "Units in hours that left MeterUsage's window after an attempt without an answer: AWS may hold them; reconcile with AWS Marketplace's reports.",
                |l| Micros(l.in_doubt as i128),
            ),
            (
                "entitlement_gate_meter_unsent_units",
                "gauge",
                "Units acknowledged and not sent yet (open hours and closed unsent hours), by dimension.",
                |l| Micros(l.unsent as i128),
            ),
            (
                "entitlement_gate_meter_carried_fraction_units",
                "gauge",
                "The fraction under one unit carried into the dimension's next hour (negative: a credit after rounding up).",
                |l| Micros(l.carried_fraction),
            ),
        ] {
            series(name, kind, help, by_dimension(&|dimension| part(&ledger(dimension)).to_string()));
        }
        series(
            "entitlement_gate_meter_rejected_requests_total",
            "counter",
            "POST /v1/usage requests refused as invalid (HTTP 400).",
            one(self.rejected.load(Ordering::Relaxed)),
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
                        count.load(Ordering::Relaxed).to_string(),
                    )
                })
                .collect(),
        );
        series(
            "entitlement_gate_meter_carried_hours_total",
            "counter",
            "Hours whose usage was carried into a later hour before leaving MeterUsage's window.",
            one(self.carried.load(Ordering::Relaxed)),
        );
        series(
            "entitlement_gate_meter_in_doubt_hours_total",
            "counter",
            "Hours that left MeterUsage's window after an attempt without an answer: AWS may hold them; neither carried nor resent.",
            one(self.in_doubt_hours.load(Ordering::Relaxed)),
        );
        series(
            "entitlement_gate_meter_unsent_hours",
            "gauge",
            "Closed (hour, dimension) records not yet sent.",
            one(snapshot.unsent.len() as u64),
        );
        let now = epoch_seconds(snapshot.now);
        let oldest = snapshot
            .unsent
            .iter()
            .map(|u| now.saturating_sub(epoch_seconds(snapshot.period.start(u.hour))))
            .max()
            .unwrap_or(0);
        series(
            "entitlement_gate_meter_oldest_unsent_hour_age_seconds",
            "gauge",
            "Seconds since the start of the oldest unsent hour (0 when none).",
            one(oldest),
        );
        series(
            "entitlement_gate_meter_commits_total",
            "counter",
            "State transactions committed, each with one sync.",
            one(snapshot.settled.commits),
        );
        series(
            "entitlement_gate_meter_committed_changes_total",
            "counter",
            "Changes those transactions carried (group commit: many per sync under load).",
            one(snapshot.settled.changes),
        );
        series(
            "entitlement_gate_meter_state_bytes",
            "gauge",
            "The size of the state file (what the volume holds).",
            one(snapshot.settled.state_bytes),
        );
        series(
            "entitlement_gate_meter_state_budget_bytes",
            "gauge",
            "The state budget: past it, new reports are refused with HTTP 503 (--state-budget).",
            one(snapshot.state_budget),
        );
        series(
            "entitlement_gate_meter_over_budget_refusals_total",
            "counter",
            "POST /v1/usage requests refused because the state was at its budget.",
            one(snapshot.settled.over_budget_refusals),
        );
        series(
            "entitlement_gate_meter_state_write_failures_total",
            "counter",
            "Writes of the state that failed (a full or failing disk); each is retried.",
            one(snapshot.settled.write_failures),
        );
        series(
            "entitlement_gate_meter_state_writable",
            "gauge",
            "1 when the state can be written; 0 while writes fail and reports get 503.",
            one(u64::from(snapshot.writable)),
        );
        series(
            "entitlement_gate_meter_ready",
            "gauge",
            "1 when the sidecar accepts usage.",
            one(u64::from(snapshot.ready)),
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
        metrics.accepted("requests", 2);
        metrics.accepted("unknown", 1);
        metrics.rejected();
        metrics.call(CallOutcome::Sent);
        metrics.call(CallOutcome::Throttled);
        metrics.carried();
        metrics.in_doubt();
        let unsent = vec![Unsent {
            hour: 500_000,
            dimension: "requests".into(),
            quantity: 7_000_000,
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
        let ledger = BTreeMap::from([(
            "requests".to_owned(),
            Ledger {
                acknowledged: 7_250_000,
                billed: 0,
                refused: 0,
                in_doubt: 0,
                unsent: 7_000_000,
                carried_fraction: 250_000,
            },
        )]);
        let text = metrics.render(&Snapshot {
            ready: false,
            writable: false,
            unsent: &unsent,
            settled: &settled,
            ledger: &ledger,
            period: Period::HOUR,
            now,
            state_budget: 256 << 20,
        });
        for line in [
            "entitlement_gate_meter_reports_total{dimension=\"requests\"} 2",
            "entitlement_gate_meter_acknowledged_units_total{dimension=\"requests\"} 7.25",
            "entitlement_gate_meter_unsent_units{dimension=\"requests\"} 7",
            "entitlement_gate_meter_carried_fraction_units{dimension=\"requests\"} 0.25",
            "entitlement_gate_meter_billed_units_total{dimension=\"odd \\\"dim\\\"\\n\"} 0",
            "entitlement_gate_meter_reports_total{dimension=\"odd \\\"dim\\\"\\n\"} 0",
            "entitlement_gate_meter_rejected_requests_total 1",
            "entitlement_gate_meter_calls_total{outcome=\"sent\"} 1",
            "entitlement_gate_meter_calls_total{outcome=\"throttled\"} 1",
            "entitlement_gate_meter_carried_hours_total 1",
            "entitlement_gate_meter_in_doubt_hours_total 1",
            "entitlement_gate_meter_unsent_hours 1",
            "entitlement_gate_meter_oldest_unsent_hour_age_seconds 4000",
            "entitlement_gate_meter_commits_total 3",
            "entitlement_gate_meter_committed_changes_total 9",
            "entitlement_gate_meter_state_write_failures_total 2",
            "entitlement_gate_meter_state_writable 0",
            "entitlement_gate_meter_ready 0",
            "entitlement_gate_meter_state_budget_bytes 268435456",
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
