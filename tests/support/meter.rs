//! The metering sidecar's test fixtures: an emulator that knows its dimensions, the sidecar
//! against it, its API, and checks of the emulator's ledger.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metering_emulator::{Faults, LedgerSnapshot, Operation};
use serde_json::Value;

use super::*;

pub const DAY: Duration = Duration::from_secs(86_400);
pub const DIMENSIONS: &str = "requests,users";

pub fn metering_emulator(period: Duration) -> RunningEmulator {
    emulator_with(|config| {
        config.period = period;
        config.dimensions = BTreeSet::from(["requests".to_owned(), "users".to_owned()]);
    })
}

/// Waits until the current period has at least two minutes left, so that a test's reports all
/// land in one period.
pub fn away_from_a_boundary(period: Duration) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let left = period.as_secs() - now.as_secs() % period.as_secs();
    if left < 120 {
        std::thread::sleep(Duration::from_secs(left + 1));
    }
}

/// `entitlement-gate meter` against `emulator`, listening on a Unix socket in its own directory.
pub fn meter(emulator: &RunningEmulator, state: &Path, period: Duration) -> Gate {
    let gate = Gate::against(
        &emulator.endpoint_url(),
        emulator.public_key_pem(),
        &["meter"],
    );
    let socket = Sidecar::socket_of(&gate);
    gate.env("ENTITLEMENT_GATE_DIMENSIONS", DIMENSIONS)
        .env("ENTITLEMENT_GATE_STATE_DIR", state)
        .env(
            "ENTITLEMENT_GATE_METER_LISTEN",
            format!("unix:{}", socket.display()),
        )
        .env(
            "ENTITLEMENT_GATE_METER_PERIOD",
            humantime::format_duration(period).to_string(),
        )
        .env("ENTITLEMENT_GATE_SHUTDOWN_GRACE", "60s")
}

/// The meter's API.
pub trait MeterClient {
    fn post(&self, body: &str) -> (u16, Value);
    fn accept(&self, body: &str) -> Value;
    fn status(&self) -> Value;
}

impl MeterClient for Sidecar {
    /// `POST /v1/usage`: the status and the JSON answer.
    fn post(&self, body: &str) -> (u16, Value) {
        self.json("POST", "/v1/usage", body)
    }

    #[track_caller]
    fn accept(&self, body: &str) -> Value {
        let (status, answer) = self.post(body);
        assert_eq!(status, 200, "{body} -> {answer}");
        answer
    }

    fn status(&self) -> Value {
        let (status, answer) = self.json("GET", "/v1/status", "");
        assert_eq!(status, 200);
        answer
    }
}

/// Asserts the sidecar's ledger balances for every dimension: acknowledged = billed + refused
/// + in doubt + unsent + carried fraction. Called after every scenario.
#[track_caller]
pub fn balanced(sidecar: &Sidecar) -> Value {
    let status = sidecar.status();
    for (dimension, state) in status["dimensions"].as_object().unwrap() {
        assert_eq!(
            state["ledger"]["balances"], true,
            "{dimension}: {}",
            state["ledger"]
        );
    }
    status
}

/// Asserts the stop logged a balanced ledger for every dimension.
#[track_caller]
pub fn stopped_balanced(ended: &Ended) {
    let lines: Vec<&str> = ended
        .log
        .lines()
        .filter(|line| line.contains("ledger: acknowledged = billed"))
        .collect();
    assert!(
        !lines.is_empty(),
        "no ledger in the stop log:\n{}",
        ended.log
    );
    for line in lines {
        assert!(line.contains("balances=true"), "{line}");
    }
}

/// Whole units per dimension in the ledger's MeterUsage records.
pub fn ledger_totals(ledger: &LedgerSnapshot) -> BTreeMap<String, u64> {
    let mut totals = BTreeMap::new();
    for record in &ledger.records {
        *totals.entry(record.dimension.clone()).or_default() +=
            record.quantity.whole_units().expect("whole units");
    }
    totals
}

/// Asserts that no (resource, dimension, hour) has two records.
#[track_caller]
pub fn one_record_per_dimension_and_hour(ledger: &LedgerSnapshot) {
    let mut seen = BTreeSet::new();
    for record in &ledger.records {
        assert!(
            seen.insert((&record.resource, &record.dimension, record.timestamp)),
            "two records for {} at {}",
            record.dimension,
            record.timestamp
        );
    }
}

pub fn faults_on_meter_usage(edit: impl FnOnce(&mut Faults)) -> Faults {
    let mut faults = Faults {
        operations: Some(BTreeSet::from([Operation::MeterUsage])),
        ..Faults::default()
    };
    edit(&mut faults);
    faults
}
