//! What the metering sidecar takes as proof that AWS holds an hour: a MeterUsage answer with its
//! `MeteringRecordId`, which AWS always returns, and nothing less.

mod support;

use std::time::Duration;

use metering_emulator::{Faults, ResponseFault};
use serde_json::Value;
use support::meter::*;
use support::*;

#[test]
fn an_answer_without_a_metering_record_id_is_resent_then_left_in_doubt_never_taken_as_sent() {
    let period = Duration::from_secs(2);
    let emulator = metering_emulator(period);
    let state = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::ready(meter(&emulator, state.path(), period));
    // AWS records every call, but answers `200 {}`.
    emulator.set_faults(faults_on_meter_usage(|f| {
        f.response = Some(ResponseFault::EmptyObject);
    }));
    sidecar.accept(r#"{"dimension": "requests", "quantity": 5}"#);
    let hour_of_five = |status: &Value, list: &str| {
        status["dimensions"]["requests"][list]
            .as_array()
            .and_then(|entries| entries.iter().find(|e| e["quantity"] == "5").cloned())
    };
    // Resent under its token while unsent, each answer named as undocumented ...
    assert!(
        wait_until(Duration::from_secs(60), || {
            hour_of_five(&sidecar.status(), "unsentHours").is_some_and(|hour| {
                hour["attempts"].as_u64() >= Some(2)
                    && hour["inDoubt"] == true
                    && hour["lastError"]
                        .as_str()
                        .is_some_and(|e| e.contains("without a MeteringRecordId"))
            })
        }),
        "the hour was not resent as unconfirmed:\n{}",
        sidecar.log()
    );
    // ... and left in doubt at its carry time: AWS may hold it (it does), so it is not carried.
    assert!(
        wait_until(Duration::from_secs(120), || {
            hour_of_five(&sidecar.status(), "duplicatesAndCarried")
                .is_some_and(|hour| hour["state"] == "inDoubt")
        }),
        "the hour was not left in doubt:\n{}",
        sidecar.log()
    );
    assert_eq!(
        sidecar.status()["dimensions"]["requests"]["lastSent"],
        Value::Null,
        "an answer without a record is never a receipt"
    );
    // The ledger holds the in-doubt units with the record, in the same transaction.
    assert_eq!(
        sidecar.metric("entitlement_gate_meter_in_doubt_units_total{dimension=\"requests\"}"),
        5.0
    );
    balanced(&sidecar);
    emulator.set_faults(Faults::default());
    // Everything was sent, but 5 units are in doubt: the stop says so (exit 9).
    let ended = sidecar.stop();
    ended.expect_code(9);
    stopped_balanced(&ended);
    let ledger = emulator.ledger();
    one_record_per_dimension_and_hour(&ledger);
    assert_eq!(ledger_totals(&ledger)["requests"], 5, "billed once");
    assert!(
        ledger.idempotent_replays >= 1,
        "resent under the same token"
    );
}
