//! The metering sidecar (`entitlement-gate meter`) as a process against the emulator: the local
//! API, what reaches MeterUsage, the shutdown path, carry-over, duplicates and start-up refusals.
//!
//! Most tests use a one-day "hour" (the emulator and the sidecar agree on any period when the
//! endpoint is overridden) and wait out a boundary that is too close, so that no assertion
//! depends on when the test runs; the carry-over and duplicate tests need hours to pass and use
//! two seconds, with assertions that hold however the hours fall.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use metering_emulator::{Faults, InjectedError, Operation, RandomFaults};
use serde_json::{json, Value};
use support::meter::*;
use support::*;

#[test]
fn reports_become_one_record_per_dimension_and_hour_with_their_allocations() {
    away_from_a_boundary(DAY);
    let emulator = metering_emulator(DAY);
    let state = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::ready(meter(&emulator, state.path(), DAY));

    for body in [
        r#"{"dimension": "requests", "quantity": 3, "tags": {"team": "a"}}"#,
        r#"{"dimension": "requests", "quantity": 3, "tags": {"team": "a"}}"#,
        r#"{"dimension": "requests", "quantity": 4}"#,
        r#"[{"dimension": "users", "quantity": 2},
            {"dimension": "requests", "quantity": 1, "tags": {"team": "b", "env": "prod"}}]"#,
    ] {
        sidecar.accept(body);
    }
    // A report resent with its ID after a lost answer counts once.
    let with_id = r#"{"dimension": "users", "quantity": 5, "id": "report-1"}"#;
    assert_eq!(
        sidecar.accept(with_id),
        json!({"accepted": 1, "duplicates": 0})
    );
    assert_eq!(
        sidecar.accept(with_id),
        json!({"accepted": 1, "duplicates": 1})
    );

    let status = sidecar.status();
    assert_eq!(
        status["dimensions"]["requests"]["openHours"][0]["quantity"],
        "11"
    );
    assert_eq!(
        status["dimensions"]["users"]["openHours"][0]["quantity"],
        "7"
    );
    assert_eq!(status["dimensions"]["users"]["lastSent"], Value::Null);
    assert!(status["instanceId"]
        .as_str()
        .is_some_and(|id| id.len() == 32));
    assert_eq!(
        sidecar.metric("entitlement_gate_meter_acknowledged_units_total{dimension=\"requests\"}"),
        11.0
    );
    // Nothing is sent while the hour is open: a record would lock it.
    assert_eq!(emulator.ledger().records.len(), 0);
    balanced(&sidecar);

    let ended = sidecar.stop();
    ended.expect_code(0);
    stopped_balanced(&ended);
    let ledger = emulator.ledger();
    one_record_per_dimension_and_hour(&ledger);
    assert_eq!(
        ledger_totals(&ledger),
        BTreeMap::from([("requests".to_owned(), 11), ("users".to_owned(), 7)])
    );
    let requests = ledger
        .records
        .iter()
        .find(|record| record.dimension == "requests")
        .unwrap();
    let allocations: BTreeMap<String, u64> = requests
        .allocations
        .iter()
        .map(|allocation| {
            (
                serde_json::to_string(&allocation.tags).unwrap(),
                allocation.quantity.whole_units().unwrap(),
            )
        })
        .collect();
    // Untagged usage is an allocation without tags.
    assert_eq!(
        allocations,
        BTreeMap::from([
            ("{}".to_owned(), 4),
            (r#"{"env":"prod","team":"b"}"#.to_owned(), 1),
            (r#"{"team":"a"}"#.to_owned(), 6),
        ])
    );
    let users = ledger
        .records
        .iter()
        .find(|record| record.dimension == "users")
        .unwrap();
    assert!(
        users.allocations.is_empty(),
        "untagged usage: no allocations"
    );
}

#[test]
fn invalid_reports_are_refused_whole_and_never_recorded() {
    away_from_a_boundary(DAY);
    let emulator = metering_emulator(DAY);
    let state = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::ready(meter(&emulator, state.path(), DAY));

    let long_value = "v".repeat(257);
    let cases = [
        ("not json", "not JSON"),
        ("[]", "no records"),
        ("42", "record object"),
        (r#"{"quantity": 1}"#, "\"dimension\" must be a string"),
        (
            r#"{"dimension": "bytes", "quantity": 1}"#,
            "unknown dimension \"bytes\"",
        ),
        (r#"{"dimension": "requests"}"#, "\"quantity\" is missing"),
        (
            r#"{"dimension": "requests", "quantity": "3"}"#,
            "must be a JSON number, not a string",
        ),
        (
            r#"{"dimension": "requests", "quantity": -1}"#,
            "must not be negative",
        ),
        (
            r#"{"dimension": "requests", "quantity": 1.0000001}"#,
            "more than 6 decimal places",
        ),
        (
            r#"{"dimension": "requests", "quantity": 1e-7}"#,
            "more than 6 decimal places",
        ),
        (
            r#"{"dimension": "requests", "quantity": 1e400}"#,
            "over the maximum",
        ),
        (
            r#"{"dimension": "requests", "quantity": -0}"#,
            "must not be negative",
        ),
        (
            r#"{"dimension": "requests", "quantity": 2147483648}"#,
            "over the maximum of 2147483647",
        ),
        (
            r#"{"dimension": "requests", "quantity": 1, "colour": "red"}"#,
            "unknown field \"colour\"",
        ),
        (
            r#"{"dimension": "requests", "quantity": 1, "tags": ["a"]}"#,
            "\"tags\" must be an object",
        ),
        (
            r#"{"dimension": "requests", "quantity": 1, "tags": {"team": 7}}"#,
            "string value",
        ),
        (
            r#"{"dimension": "requests", "quantity": 1, "tags": {"team": "a|b"}}"#,
            "'|'",
        ),
        (
            r#"{"dimension": "requests", "quantity": 1, "tags": {"": "a"}}"#,
            "1 to 100 characters",
        ),
        (
            r#"{"dimension": "requests", "quantity": 1, "tags": {"a": "1", "b": "2", "c": "3", "d": "4", "e": "5", "f": "6"}}"#,
            "maximum of 5",
        ),
        (
            r#"{"dimension": "requests", "quantity": 1, "id": ""}"#,
            "\"id\" must be a string",
        ),
        // All or none: the valid first record is not recorded either.
        (
            r#"[{"dimension": "requests", "quantity": 1000}, {"dimension": "requests", "quantity": -1}]"#,
            "record 1: \"quantity\" must not be negative",
        ),
    ];
    let mut cases: Vec<(String, &str)> = cases
        .into_iter()
        .map(|(body, problem)| (body.to_owned(), problem))
        .collect();
    cases.push((
        format!(
            r#"{{"dimension": "requests", "quantity": 1, "tags": {{"team": "{long_value}"}}}}"#
        ),
        "1 to 256 characters",
    ));
    for (body, problem) in &cases {
        let (status, answer) = sidecar.post(body);
        assert_eq!(status, 400, "{body} -> {answer}");
        let error = answer["error"].as_str().expect("an error message");
        assert!(
            error.contains(problem),
            "{body}: {error:?} lacks {problem:?}"
        );
    }

    // The hour's total may reach MeterUsage's maximum, not pass it.
    sidecar.accept(r#"{"dimension": "users", "quantity": 2147483647}"#);
    let (status, answer) = sidecar.post(r#"{"dimension": "users", "quantity": 1}"#);
    assert_eq!(status, 400);
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains("over MeterUsage's maximum"));

    // 2,500 tag sets fit in one record; the 2,501st (an untagged report is one too) does not.
    let tag_sets: Vec<Value> = (0..2500)
        .map(|n| json!({"dimension": "requests", "quantity": 1, "tags": {"n": n.to_string()}}))
        .collect();
    sidecar.accept(&Value::Array(tag_sets).to_string());
    for body in [
        r#"{"dimension": "requests", "quantity": 1, "tags": {"n": "new"}}"#,
        r#"{"dimension": "requests", "quantity": 1}"#,
    ] {
        let (status, answer) = sidecar.post(body);
        assert_eq!(status, 400, "{body}");
        assert!(answer["error"]
            .as_str()
            .unwrap()
            .contains("2500 allocations"));
    }
    // A known tag set still takes usage.
    sidecar.accept(r#"{"dimension": "requests", "quantity": 1, "tags": {"n": "7"}}"#);

    let oversized = format!(
        r#"{{"dimension": "requests", "quantity": 1, "pad": "{}"}}"#,
        "x".repeat(1024 * 1024)
    );
    let (status, answer) = sidecar.post(&oversized);
    assert_eq!(status, 413, "{answer}");
    assert_eq!(
        sidecar.metric("entitlement_gate_meter_rejected_requests_total"),
        (cases.len() + 3) as f64
    );
    balanced(&sidecar);

    sidecar.stop().expect_code(0);
    let ledger = emulator.ledger();
    one_record_per_dimension_and_hour(&ledger);
    assert_eq!(
        ledger_totals(&ledger),
        BTreeMap::from([
            ("requests".to_owned(), 2501),
            ("users".to_owned(), 2_147_483_647)
        ])
    );
}

#[test]
fn usage_answers_503_until_the_dry_run_passes() {
    let emulator = metering_emulator(DAY);
    // The DryRun is throttled (and retried) until the test lifts the fault.
    emulator.set_faults(faults_on_meter_usage(|f| f.throttle_first = u32::MAX));
    let state = tempfile::tempdir().unwrap();
    let mut sidecar = Sidecar::spawn(meter(&emulator, state.path(), DAY));
    assert!(
        wait_until(Duration::from_secs(60), || sidecar
            .try_request("GET", "/healthz", "")
            .is_some()),
        "the sidecar never listened:\n{}",
        sidecar.log()
    );
    assert_eq!(sidecar.request("GET", "/healthz", "").0, 200);
    assert_eq!(sidecar.request("GET", "/readyz", "").0, 503);
    let (status, answer) = sidecar.post(r#"{"dimension": "requests", "quantity": 1}"#);
    assert_eq!(status, 503);
    assert!(answer["error"].as_str().unwrap().contains("not ready"));
    assert_eq!(sidecar.status()["ready"], false);
    let health = Gate::against(
        &emulator.endpoint_url(),
        emulator.public_key_pem(),
        &["health"],
    )
    .arg("--url")
    .arg(format!("unix:{}", sidecar.socket.display()))
    .run();
    health.expect_code(1);
    assert!(
        health.stderr.contains("answered HTTP 503"),
        "{}",
        health.stderr
    );

    emulator.set_faults(Faults::default());
    sidecar.wait_ready();
    assert!(emulator.calls_to(Operation::MeterUsage) >= 2);
    sidecar.stop().expect_code(0);
    // The DryRun recorded nothing; the shutdown sent zeros for the hour the sidecar ran in.
    assert_eq!(
        ledger_totals(&emulator.ledger()),
        BTreeMap::from([("requests".to_owned(), 0), ("users".to_owned(), 0)])
    );
}

#[test]
fn a_stopping_sidecar_drains_then_refuses_usage_and_sends_the_hour_it_closed_early() {
    away_from_a_boundary(DAY);
    let emulator = metering_emulator(DAY);
    let state = tempfile::tempdir().unwrap();
    // A regular container is stopped with the app: the drain takes the app's last reports.
    let sidecar = Sidecar::ready(
        meter(&emulator, state.path(), DAY).env("ENTITLEMENT_GATE_METER_DRAIN", "10s"),
    );
    sidecar.accept(r#"{"dimension": "requests", "quantity": 9}"#);
    sidecar.terminate();
    assert!(
        wait_until(Duration::from_secs(60), || sidecar
            .log()
            .contains("still accepting usage during the drain")),
        "{}",
        sidecar.log()
    );
    sidecar.accept(r#"{"dimension": "requests", "quantity": 1}"#);
    // The flush is throttled until the test has seen the stopping sidecar.
    emulator.set_faults(faults_on_meter_usage(|f| f.throttle_first = u32::MAX));
    assert!(
        wait_until(Duration::from_secs(60), || sidecar
            .request("GET", "/readyz", "")
            .0
            == 503),
        "{}",
        sidecar.log()
    );
    let (status, answer) = sidecar.post(r#"{"dimension": "requests", "quantity": 100}"#);
    assert_eq!(status, 503);
    assert!(answer["error"].as_str().unwrap().contains("shutting down"));
    emulator.set_faults(Faults::default());
    let ended = sidecar.wait();
    ended.expect_code(0);
    assert!(ended.log.contains("stopping: no more usage accepted"));
    let ledger = emulator.ledger();
    one_record_per_dimension_and_hour(&ledger);
    assert_eq!(ledger_totals(&ledger)["requests"], 10);
}

#[test]
fn sighup_stops_the_sidecar_as_sigterm_does_and_sends_what_it_holds() {
    away_from_a_boundary(DAY);
    let emulator = metering_emulator(DAY);
    let state = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::ready(meter(&emulator, state.path(), DAY));
    sidecar.accept(r#"{"dimension": "requests", "quantity": 7}"#);
    sidecar.running.signal(libc::SIGHUP);
    let ended = sidecar.wait();
    ended.expect_code(0);
    assert!(ended.log.contains("signal=\"SIGHUP\""), "{}", ended.log);
    let ledger = emulator.ledger();
    one_record_per_dimension_and_hour(&ledger);
    assert_eq!(ledger_totals(&ledger)["requests"], 7);
}

#[test]
fn usage_that_cannot_be_sent_exits_7_and_a_restart_with_the_same_state_sends_it() {
    away_from_a_boundary(DAY);
    let emulator = metering_emulator(DAY);
    let state = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::ready(
        meter(&emulator, state.path(), DAY).env("ENTITLEMENT_GATE_SHUTDOWN_GRACE", "2s"),
    );
    sidecar.accept(r#"{"dimension": "requests", "quantity": 5}"#);
    emulator.set_faults(faults_on_meter_usage(|f| {
        f.error = Some(
            "InternalServiceErrorException"
                .parse::<InjectedError>()
                .unwrap(),
        );
    }));
    let ended = sidecar.stop();
    ended.expect_code(7);
    let reason = ended.reason();
    assert!(
        reason.contains("5 acknowledged units (2 closed hour records)")
            && reason.contains(&state.path().display().to_string()),
        "{reason}"
    );
    stopped_balanced(&ended);
    assert!(
        reason.contains("ENTITLEMENT_GATE_SHUTDOWN_GRACE"),
        "{reason}"
    );
    assert!(emulator.ledger().records.is_empty());

    emulator.set_faults(Faults::default());
    let restarted = Sidecar::ready(meter(&emulator, state.path(), DAY));
    assert!(
        wait_until(Duration::from_secs(60), || emulator.ledger().records.len()
            == 2),
        "{}",
        restarted.log()
    );
    let status = balanced(&restarted);
    assert_eq!(
        status["dimensions"]["requests"]["lastSent"]["quantity"],
        "5"
    );
    assert_eq!(status["dimensions"]["requests"]["unsentHours"], json!([]));
    restarted.stop().expect_code(0);
    let ledger = emulator.ledger();
    one_record_per_dimension_and_hour(&ledger);
    assert_eq!(ledger_totals(&ledger)["requests"], 5);
}

#[test]
fn an_hour_about_to_leave_the_window_is_carried_into_a_later_hour_not_lost() {
    let period = Duration::from_secs(2);
    let emulator = metering_emulator(period);
    let state = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::ready(meter(&emulator, state.path(), period));
    emulator.set_faults(faults_on_meter_usage(|f| {
        f.error = Some(
            "InternalServiceErrorException"
                .parse::<InjectedError>()
                .unwrap(),
        );
    }));
    sidecar.accept(r#"{"dimension": "requests", "quantity": 5, "tags": {"team": "a"}}"#);
    let carried = |status: &Value| {
        status["dimensions"]["requests"]["duplicatesAndCarried"]
            .as_array()
            .is_some_and(|entries| entries.iter().any(|e| e["state"] == "carried"))
    };
    // Six periods of failures: the oldest hours reach their carry time.
    assert!(
        wait_until(Duration::from_secs(120), || carried(&sidecar.status())),
        "nothing was carried:\n{}",
        sidecar.log()
    );
    // The metric follows the settled record (the sender counts it once the record is durable).
    assert!(wait_until(Duration::from_secs(60), || sidecar
        .metric("entitlement_gate_meter_carried_hours_total")
        >= 1.0));
    balanced(&sidecar);
    emulator.set_faults(Faults::default());
    let ended = sidecar.stop();
    ended.expect_code(0);
    stopped_balanced(&ended);
    assert!(ended.log.contains("it is carried into the current hour"));
    let ledger = emulator.ledger();
    one_record_per_dimension_and_hour(&ledger);
    assert_eq!(ledger_totals(&ledger)["requests"], 5);
    assert_eq!(ledger.duplicates_refused, 0);
}

#[test]
fn an_hour_whose_answer_was_lost_is_left_in_doubt_not_carried_and_billed_once() {
    let period = Duration::from_secs(2);
    let emulator = metering_emulator(period);
    let state = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::ready(meter(&emulator, state.path(), period));
    // The calls get through and are recorded, but their answers are lost on the way back ...
    emulator.set_faults(faults_on_meter_usage(|f| {
        f.random = Some(RandomFaults {
            seed: 1,
            lose_response: 1.0,
            ..RandomFaults::default()
        });
    }));
    sidecar.accept(r#"{"dimension": "requests", "quantity": 5}"#);
    assert!(
        wait_until(Duration::from_secs(60), || ledger_totals(
            &emulator.ledger()
        )
        .get("requests")
            == Some(&5)),
        "the hour was never recorded:\n{}",
        sidecar.log()
    );
    // ... then every call fails until the hour reaches its carry time.
    emulator.set_faults(faults_on_meter_usage(|f| {
        f.error = Some(
            "InternalServiceErrorException"
                .parse::<InjectedError>()
                .unwrap(),
        );
    }));
    let in_doubt = |status: &Value| {
        status["dimensions"]["requests"]["duplicatesAndCarried"]
            .as_array()
            .is_some_and(|entries| {
                entries
                    .iter()
                    .any(|e| e["state"] == "inDoubt" && e["quantity"] == "5")
            })
    };
    assert!(
        wait_until(Duration::from_secs(120), || in_doubt(&sidecar.status())),
        "the hour was not left in doubt:\n{}",
        sidecar.log()
    );
    assert_eq!(
        sidecar.metric("entitlement_gate_meter_in_doubt_units_total{dimension=\"requests\"}"),
        5.0
    );
    balanced(&sidecar);
    emulator.set_faults(Faults::default());
    // Everything was sent, but 5 acknowledged units are in doubt: not an honest exit 0.
    let ended = sidecar.stop();
    ended.expect_code(9);
    assert!(ended.log.contains("AWS may hold it"), "{}", ended.log);
    let reason = ended.reason();
    assert!(
        reason.contains("0 acknowledged units were refused") && reason.contains("5 are in doubt"),
        "{reason}"
    );
    stopped_balanced(&ended);
    // Billed once: carrying it would have made it 10.
    let ledger = emulator.ledger();
    one_record_per_dimension_and_hour(&ledger);
    assert_eq!(ledger_totals(&ledger)["requests"], 5);
}

#[test]
fn a_duplicate_request_is_surfaced_once_and_never_retried() {
    // Two sidecars with their own state but the same AWS identity: AWS sees one workload, so
    // in every hour where their quantities differ the second record is a duplicate.
    let period = Duration::from_secs(2);
    let emulator = metering_emulator(period);
    let (state_a, state_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Sidecar::ready(meter(&emulator, state_a.path(), period));
    let b = Sidecar::ready(meter(&emulator, state_b.path(), period));
    a.accept(r#"{"dimension": "requests", "quantity": 5}"#);
    b.accept(r#"{"dimension": "requests", "quantity": 7}"#);
    assert!(
        wait_until(Duration::from_secs(60), || emulator
            .ledger()
            .duplicates_refused
            >= 1),
        "no duplicate:\n{}\n{}",
        a.log(),
        b.log()
    );
    // The status and the metrics of whoever hit one show it (once the outcome is recorded).
    let shows_a_duplicate = |sidecar: &Sidecar| {
        sidecar.status()["dimensions"]["requests"]["duplicatesAndCarried"]
            .as_array()
            .is_some_and(|entries| entries.iter().any(|e| e["state"] == "duplicate"))
    };
    assert!(wait_until(Duration::from_secs(60), || {
        shows_a_duplicate(&a) || shows_a_duplicate(&b)
    }));
    let duplicate_calls: f64 = [&a, &b]
        .iter()
        .map(|sidecar| sidecar.metric("entitlement_gate_meter_calls_total{outcome=\"duplicate\"}"))
        .sum();
    assert!(duplicate_calls >= 1.0);
    let refused = |sidecar: &Sidecar| {
        sidecar.metric("entitlement_gate_meter_refused_units_total{dimension=\"requests\"}")
    };
    let (a_refused, b_refused) = (refused(&a), refused(&b));
    assert!(a_refused + b_refused >= 5.0, "{a_refused} {b_refused}");
    balanced(&a);
    balanced(&b);
    let (a_ended, b_ended) = (a.stop(), b.stop());
    // A sidecar whose usage AWS refused says so with exit 9 and the units at stake.
    for (ended, refused) in [(&a_ended, a_refused), (&b_ended, b_refused)] {
        stopped_balanced(ended);
        if refused > 0.0 {
            ended.expect_code(9);
            assert!(
                ended
                    .reason()
                    .contains(&format!("{refused} acknowledged units were refused")),
                "{}",
                ended.log
            );
        } else {
            ended.expect_code(0);
        }
    }
    let ledger = emulator.ledger();
    one_record_per_dimension_and_hour(&ledger);
    // One error per refused record, each naming the sidecar's own quantity, and never two for
    // the same dimension and hour: a duplicate is settled, not retried.
    let mut logged = 0;
    for (ended, quantity) in [(&a_ended, 5), (&b_ended, 7)] {
        let mut hours = BTreeSet::new();
        for line in ended
            .log
            .lines()
            .filter(|line| line.contains("ERROR") && line.contains("already holds a record"))
        {
            let field = |name: &str| {
                line.split(' ')
                    .find_map(|part| part.strip_prefix(name))
                    .unwrap_or_default()
                    .to_owned()
            };
            assert!(
                hours.insert((field("dimension="), field("hour="))),
                "retried: {line}"
            );
            assert!(
                line.contains("this instance's 0 units")
                    || line.contains(&format!("this instance's {quantity} units")),
                "{line}"
            );
            logged += 1;
        }
    }
    assert_eq!(
        logged, ledger.duplicates_refused,
        "one error log per duplicate"
    );
}

#[test]
fn dry_run_refusals_end_start_up_with_the_gates_exit_codes() {
    let denied = emulator_with(|config| {
        config.period = DAY;
        config.denied.insert(Operation::MeterUsage);
    });
    let state = tempfile::tempdir().unwrap();
    let ended = Sidecar::spawn(meter(&denied, state.path(), DAY)).wait();
    ended.expect_code(6);
    let reason = ended.reason();
    assert!(reason.contains("aws-marketplace:MeterUsage"), "{reason}");
    assert!(
        reason.contains("AWSMarketplaceMeteringFullAccess"),
        "{reason}"
    );

    let one_dimension = emulator_with(|config| {
        config.period = DAY;
        config.dimensions = BTreeSet::from(["requests".to_owned()]);
    });
    let state = tempfile::tempdir().unwrap();
    let ended = Sidecar::spawn(meter(&one_dimension, state.path(), DAY)).wait();
    ended.expect_code(5);
    assert!(ended.reason().contains("ENTITLEMENT_GATE_DIMENSIONS"));

    let emulator = metering_emulator(DAY);
    let state = tempfile::tempdir().unwrap();
    let ended = Sidecar::spawn(meter(&emulator, state.path(), DAY).product(UNPAID)).wait();
    ended.expect_code(3);
    assert!(ended.reason().contains(UNPAID));

    // Nothing was recorded by any of them, and the state holds no usage.
    assert!(denied.ledger().records.is_empty());
    assert!(one_dimension.ledger().records.is_empty());
    assert!(emulator.ledger().records.is_empty());
}

#[test]
fn a_killed_sidecar_loses_no_acknowledged_report_and_sends_each_hour_once() {
    away_from_a_boundary(DAY);
    let emulator = metering_emulator(DAY);
    let state = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::ready(meter(&emulator, state.path(), DAY));
    for n in 0..100 {
        sidecar.accept(&format!(r#"{{"dimension": "requests", "quantity": {n}}}"#));
    }
    sidecar.running.signal(libc::SIGKILL);
    drop(sidecar.wait());

    let restarted = Sidecar::ready(meter(&emulator, state.path(), DAY));
    restarted.accept(r#"{"dimension": "users", "quantity": 1}"#);
    // Answers are lost at random: every resend must be recognised.
    emulator.set_faults(faults_on_meter_usage(|f| {
        f.random = Some(RandomFaults {
            seed: 3,
            lose_response: 0.5,
            ..RandomFaults::default()
        });
    }));
    balanced(&restarted);
    let ended = restarted.stop();
    ended.expect_code(0);
    stopped_balanced(&ended);
    let ledger = emulator.ledger();
    one_record_per_dimension_and_hour(&ledger);
    assert_eq!(
        ledger_totals(&ledger),
        BTreeMap::from([("requests".to_owned(), 4950), ("users".to_owned(), 1)])
    );
    assert!(
        ledger.idempotent_replays >= 1,
        "no answer was lost: pick another seed"
    );
}

#[test]
fn a_second_sidecar_on_the_same_state_is_refused() {
    let emulator = metering_emulator(DAY);
    let state = tempfile::tempdir().unwrap();
    let first = Sidecar::ready(meter(&emulator, state.path(), DAY));
    let second = Sidecar::spawn(meter(&emulator, state.path(), DAY)).wait();
    second.expect_code(2);
    assert!(second.reason().contains("its own state volume"));
    first.stop().expect_code(0);
}

#[test]
fn health_answers_for_a_tcp_listener_and_fails_when_nothing_listens() {
    let emulator = metering_emulator(DAY);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let health = || {
        Gate::against(
            &emulator.endpoint_url(),
            emulator.public_key_pem(),
            &["health"],
        )
        .arg("--url")
        .arg(&address)
        .run()
    };
    // A probe's answer is binary: nothing there is "not ready" too, and says which by URL.
    let nothing = health();
    nothing.expect_code(1);
    assert!(
        nothing.stderr.contains(&format!(
            "Not ready: nothing answered at http://{address}/readyz"
        )),
        "{}",
        nothing.stderr
    );
    // A probe runs beside the sidecar: it leaves the termination log to the sidecar.
    assert_eq!(nothing.termination_log(), None);

    let state = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::spawn(
        meter(&emulator, state.path(), DAY).env("ENTITLEMENT_GATE_METER_LISTEN", &address),
    );
    assert!(
        wait_until(Duration::from_secs(60), || health().code == Some(0)),
        "{}",
        sidecar.log()
    );
    sidecar.stop().expect_code(0);
}

#[test]
fn a_period_other_than_an_hour_needs_an_emulator() {
    let emulator = metering_emulator(DAY);
    let state = tempfile::tempdir().unwrap();
    let ended = Sidecar::spawn(
        meter(&emulator, state.path(), Duration::from_secs(2))
            .env_remove("AWS_ENDPOINT_URL_MARKETPLACE_METERING"),
    )
    .wait();
    ended.expect_code(2);
    assert!(ended.reason().contains("MeterUsage meters by the hour"));
}

#[test]
fn doctor_checks_the_meter_setup_and_dry_runs_its_dimensions() {
    let emulator = metering_emulator(DAY);
    let state = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::ready(meter(&emulator, state.path(), DAY));
    let doctor = |dimensions: &str, period: &str| {
        let finished = Gate::against(
            &emulator.endpoint_url(),
            emulator.public_key_pem(),
            &["doctor"],
        )
        .env("ENTITLEMENT_GATE_METER_PERIOD", period)
        .args(["--call", "--format", "json", "--dimension", dimensions])
        .arg("--state-dir")
        .arg(state.path())
        .arg("--listen")
        .arg(format!("unix:{}", sidecar.socket.display()))
        .run();
        let report: Value = serde_json::from_str(&finished.stdout).expect("a JSON report");
        let statuses: BTreeMap<String, (String, String)> = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|check| {
                (
                    check["check"].as_str().unwrap().to_owned(),
                    (
                        check["status"].as_str().unwrap().to_owned(),
                        check["detail"].as_str().unwrap().to_owned(),
                    ),
                )
            })
            .collect();
        (finished.code, statuses)
    };
    let (_, checks) = doctor("requests,users", "1day");
    assert_eq!(checks["dimensions"].0, "ok");
    assert!(
        checks["meter-state"].1.contains("holds meter.redb"),
        "{checks:?}"
    );
    assert_eq!(checks["meter-listen"].0, "ok", "{checks:?}");
    assert!(checks["meter-listen"].1.contains("ready"));
    assert_eq!(checks["meter-dry-run"].0, "ok", "{checks:?}");
    assert_eq!(checks["meter-period"].0, "ok", "{checks:?}");
    assert!(
        checks["meter-period"]
            .1
            .contains("the same as the metering-emulator"),
        "{checks:?}"
    );

    let (code, checks) = doctor("requests,bytes", "1day");
    assert_eq!(code, Some(1));
    assert_eq!(checks["meter-dry-run"].0, "fail");
    assert!(
        checks["meter-dry-run"]
            .1
            .contains("ENTITLEMENT_GATE_DIMENSIONS"),
        "{checks:?}"
    );
    // The doctor reads the meter's period, as the meter does, and compares it.
    let (code, checks) = doctor("requests,users", "1h");
    assert_eq!(code, Some(1));
    assert_eq!(checks["meter-period"].0, "fail");
    assert!(
        checks["meter-period"].1.contains("meters every 1day"),
        "{checks:?}"
    );
    // The DryRuns recorded nothing.
    assert!(emulator.ledger().records.is_empty());
    sidecar.stop().expect_code(0);
}

#[test]
fn fractions_are_billed_in_whole_units_and_the_rest_is_carried_then_left_unbilled() {
    away_from_a_boundary(DAY);
    let emulator = metering_emulator(DAY);
    let state = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::ready(meter(&emulator, state.path(), DAY));
    // 0.1 + 0.2 is exactly 0.3, however a float would add them; 2.5e-3 is 0.0025.
    for body in [
        r#"{"dimension": "requests", "quantity": 0.1, "tags": {"team": "a"}}"#,
        r#"{"dimension": "requests", "quantity": 0.2, "tags": {"team": "b"}}"#,
        r#"{"dimension": "requests", "quantity": 2.5e-3, "tags": {"team": "b"}}"#,
        r#"{"dimension": "requests", "quantity": 3.5, "tags": {"team": "a"}}"#,
        r#"{"dimension": "users", "quantity": 0.999999}"#,
    ] {
        sidecar.accept(body);
    }
    let status = balanced(&sidecar);
    assert_eq!(
        status["dimensions"]["requests"]["ledger"]["acknowledged"],
        "3.8025"
    );
    assert_eq!(
        status["dimensions"]["requests"]["ledger"]["unsent"],
        "3.8025"
    );
    let ended = sidecar.stop();
    ended.expect_code(0);
    stopped_balanced(&ended);
    // Billed: the whole units; not billed, and said so: the fraction under one unit.
    let ledger = emulator.ledger();
    one_record_per_dimension_and_hour(&ledger);
    assert_eq!(
        ledger_totals(&ledger),
        BTreeMap::from([("requests".to_owned(), 3), ("users".to_owned(), 0)])
    );
    let requests = ledger
        .records
        .iter()
        .find(|r| r.dimension == "requests")
        .unwrap();
    let allocated: u64 = requests
        .allocations
        .iter()
        .map(|a| a.quantity.whole_units().unwrap())
        .sum();
    assert_eq!(allocated, 3, "the allocations sum to the record's quantity");
    for (dimension, fraction) in [("requests", "0.8025"), ("users", "0.999999")] {
        assert!(
            ended.log.lines().any(
                |line| line.contains("is not billed (--final-fraction down)")
                    && line.contains(&format!("dimension={dimension}"))
                    && line.contains(&format!("fraction={fraction}"))
            ),
            "{}",
            ended.log
        );
    }

    // A restart on the same state still holds the fraction, to bill it with later usage.
    let restarted = Sidecar::ready(meter(&emulator, state.path(), DAY));
    let status = balanced(&restarted);
    let requests = &status["dimensions"]["requests"]["ledger"];
    assert_eq!(requests["carriedFraction"], "0.8025");
    assert_eq!(requests["acknowledged"], "3.8025");
    assert_eq!(requests["billed"], "3");
    restarted.stop().expect_code(0);
}

#[test]
fn rounding_the_final_fraction_up_bills_one_more_unit_and_keeps_a_credit() {
    away_from_a_boundary(DAY);
    let emulator = metering_emulator(DAY);
    let state = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::ready(
        meter(&emulator, state.path(), DAY).env("ENTITLEMENT_GATE_FINAL_FRACTION", "up"),
    );
    sidecar.accept(r#"{"dimension": "requests", "quantity": 1.25}"#);
    let ended = sidecar.stop();
    ended.expect_code(0);
    stopped_balanced(&ended);
    assert_eq!(ledger_totals(&emulator.ledger())["requests"], 2);
    let restarted = Sidecar::ready(meter(&emulator, state.path(), DAY));
    let status = balanced(&restarted);
    assert_eq!(
        status["dimensions"]["requests"]["ledger"]["carriedFraction"],
        "-0.75"
    );
    restarted.stop().expect_code(0);
}

#[test]
fn a_meter_refuses_an_emulator_with_another_period() {
    let emulator = metering_emulator(DAY);
    let state = tempfile::tempdir().unwrap();
    let ended = Sidecar::spawn(meter(&emulator, state.path(), Duration::from_secs(10))).wait();
    ended.expect_code(2);
    let reason = ended.reason();
    assert!(
        reason.contains("metering-emulator with a 1day period")
            && reason.contains("this sidecar's period is 10s")
            && reason.contains("ENTITLEMENT_GATE_METER_PERIOD=1day"),
        "{reason}"
    );
    assert_eq!(
        emulator.calls_to(Operation::MeterUsage),
        0,
        "refused before the DryRun"
    );
}

#[test]
fn a_state_at_its_budget_answers_503_with_retry_after_and_keeps_what_it_acknowledged() {
    away_from_a_boundary(DAY);
    let emulator = metering_emulator(DAY);
    let state = tempfile::tempdir().unwrap();
    // A budget the new state file already fills: every report is refused, whole.
    let sidecar = Sidecar::ready(
        meter(&emulator, state.path(), DAY).env("ENTITLEMENT_GATE_METER_STATE_BUDGET", "4Ki"),
    );
    let (status, answer) = sidecar.post(r#"{"dimension": "requests", "quantity": 1, "id": "a"}"#);
    assert_eq!(status, 503, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("at its budget") && error.contains("nothing of this request was recorded"),
        "{error}"
    );
    let answer = http_answer(
        &sidecar.socket,
        "POST",
        "/v1/usage",
        br#"{"dimension": "requests", "quantity": 1}"#,
    )
    .unwrap();
    assert_eq!(answer.status, 503);
    assert_eq!(answer.header("retry-after"), Some("60"), "{}", answer.head);
    assert!(sidecar.metric("entitlement_gate_meter_over_budget_refusals_total") >= 1.0);
    assert_eq!(
        sidecar.metric("entitlement_gate_meter_state_budget_bytes"),
        4096.0
    );
    assert!(sidecar.log().contains("the state is at its budget"));
    balanced(&sidecar);
    let ended = sidecar.stop();
    ended.expect_code(0);
    assert_eq!(ledger_totals(&emulator.ledger())["requests"], 0);
}
