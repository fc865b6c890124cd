//! What contract pricing takes on trust, and what it refuses: a checkout is held only once its
//! answer matches what was asked (entitlements, units, counts), is current by AWS's own clock,
//! and names this product's license; a license.json left in the handoff directory is adopted
//! only once AWS confirms it; a clock that disagrees with AWS's does not turn the watch into an
//! ExtendLicenseConsumption storm; and SIGTERM is acted on even while AWS is slow to answer.

mod support;

use std::time::Duration;

use metering_emulator::{CheckoutState, Faults, LicenseFault, LicenseSpec, Operation};
use serde_json::json;
use support::license::*;
use support::*;

const DRAWDOWN: &str = "prod-drawdown";

fn with_fault(fault: LicenseFault) -> RunningEmulator {
    license_emulator(Duration::from_secs(3600), |config| {
        config.faults.license_fault = Some(fault);
    })
}

/// `license check` of one seat against `emulator`, which must refuse with exit 4 and no
/// license.json; the reason.
#[track_caller]
fn refused_as_unverified(emulator: &RunningEmulator, entitlements: &str) -> String {
    let finished = license(emulator, "check", SEATS, entitlements).run();
    finished.expect_code(4);
    assert!(
        !finished.dir.path().join("handoff/license.json").exists(),
        "nothing for the app to trust"
    );
    let reason = finished.reason();
    assert!(
        reason
            .starts_with("AWS License Manager's answer for product prod-seats failed verification"),
        "{reason}"
    );
    assert!(
        reason.contains("AWS_ENDPOINT_URL_LICENSE_MANAGER"),
        "says what to check: {reason}"
    );
    reason
}

#[test]
fn a_checkout_that_expired_before_it_was_answered_is_refused_with_exit_4() {
    let emulator = with_fault(LicenseFault::ExpirationPassed);
    let reason = refused_as_unverified(&emulator, "Seats=1:Count");
    assert!(reason.contains("Expiration"), "{reason}");
    assert!(reason.contains("IssuedAt"), "{reason}");
}

#[test]
fn fewer_or_negative_units_than_asked_are_refused_with_exit_4_and_the_seat_returned() {
    let fewer = with_fault(LicenseFault::FewerUnits);
    let reason = refused_as_unverified(&fewer, "Seats=2:Count");
    assert!(
        reason.contains("it granted 1 Count of Seats, fewer than the 2 asked for"),
        "{reason}"
    );
    assert_eq!(seats_in_use(&fewer), 0, "the seat it did get is checked in");
    assert_eq!(fewer.calls_to(Operation::CheckInLicense), 1);

    let negative = with_fault(LicenseFault::NegativeUnits);
    let reason = refused_as_unverified(&negative, "Seats=1:Count");
    assert!(
        reason.contains("it granted -1 Count of Seats, fewer than the 1 asked for"),
        "{reason}"
    );
}

#[test]
fn a_license_of_another_product_is_refused_by_the_check_and_lost_by_the_watch() {
    let emulator = with_fault(LicenseFault::OtherProductSku);
    let reason = refused_as_unverified(&emulator, "Seats=1:Count");
    assert!(
        reason.contains("product prod-seats-other, not prod-seats"),
        "{reason}"
    );
    assert_eq!(seats_in_use(&emulator), 0, "the seat is checked in");

    // A watch that holds the license, until GetLicense describes another product's.
    let emulator = license_emulator(Duration::from_secs(3600), |_| {});
    let watch = Sidecar::ready(
        license(&emulator, "watch", SEATS, "Seats=1:Count")
            .env("ENTITLEMENT_GATE_LICENSE_INTERVAL", "1s"),
    );
    emulator.set_faults(Faults {
        license_fault: Some(LicenseFault::OtherProductSku),
        ..Faults::default()
    });
    let ended = exits_within(watch, Duration::from_secs(60));
    ended.expect_code(4);
    assert!(
        ended.reason().contains("prod-seats-other, not prod-seats"),
        "{}",
        ended.log
    );
    let text = std::fs::read_to_string(ended.dir.path().join("handoff/license.json")).unwrap();
    assert!(text.contains("\"state\": \"lost\""), "{text}");
}

#[test]
fn a_planted_license_json_is_adopted_only_once_aws_confirms_it() {
    let emulator = license_emulator(Duration::from_secs(3600), |config| {
        config.licenses.push(LicenseSpec::drawdown(
            DRAWDOWN,
            "Storage",
            metering_emulator::EntitlementUnit::Gigabytes,
            100,
        ));
    });
    let watch = license(&emulator, "watch", DRAWDOWN, "Storage=10:Gigabytes")
        .env("ENTITLEMENT_GATE_CHECKOUT_TYPE", "perpetual");
    // A perpetual checkout no License Manager ever made, for a license the account lacks.
    let planted = json!({
        "productId": DRAWDOWN,
        "licenseArn": "arn:aws:license-manager::294406891311:license:l-planted",
        "checkoutType": "PERPETUAL",
        "entitlementsAllowed": [{ "name": "Storage", "unit": "Gigabytes", "value": "1000000" }],
        "issuedAt": 1,
        "expiration": null,
        "consumptionToken": "planted",
        "signedToken": null,
        "nodeId": null,
        "region": "us-east-1",
        "confirmedAt": 1,
        "state": "held",
    });
    std::fs::write(
        watch.path("handoff/license.json"),
        serde_json::to_vec(&planted).unwrap(),
    )
    .unwrap();
    let watch = Sidecar::ready(watch);
    assert!(
        emulator.calls_to(Operation::GetLicense) >= 1,
        "asked AWS about it"
    );
    assert_eq!(
        emulator.calls_to(Operation::CheckoutLicense),
        1,
        "not adopted: checked out anew"
    );
    let (_, held) = watch.json("GET", "/v1/license", "");
    assert_ne!(held["consumptionToken"], "planted");
    assert_eq!(
        held["licenseArn"],
        LicenseSpec::new(DRAWDOWN).license_arn.as_str()
    );
    assert!(
        watch.log().contains("not adopted"),
        "says why: {}",
        watch.log()
    );
    watch.stop().expect_code(0);
}

#[test]
fn a_license_aws_calls_invalid_or_unknown_is_lost_at_once_not_after_the_grace() {
    for code in ["ValidationException", "ResourceNotFoundException"] {
        let emulator = license_emulator(Duration::from_secs(3600), |_| {});
        // The default loss grace (30 minutes) applies to outages only.
        let watch = Sidecar::ready(
            license(&emulator, "watch", SEATS, "Seats=1:Count")
                .env("ENTITLEMENT_GATE_LICENSE_INTERVAL", "1s"),
        );
        emulator.set_faults(fail_on(&[Operation::GetLicense], code));
        let ended = exits_within(watch, Duration::from_secs(60));
        ended.expect_code(3);
        let reason = ended.reason();
        assert!(reason.contains("was lost"), "{reason}");
        assert!(reason.contains(code), "{reason}");
    }
}

/// Extend calls the watch makes in a fixed span once ready, adopting `license check`'s seat
/// from `emulator`; the watch, and the check's run that holds the handoff directory.
fn extends_in_span(emulator: &RunningEmulator, span: Duration) -> (u64, Sidecar, Finished) {
    let check = license(emulator, "check", SEATS, "Seats=1:Count");
    let handoff = check.path("handoff");
    let checked = check.run();
    checked.expect_code(0);
    let watch = Sidecar::ready(
        license(emulator, "watch", SEATS, "Seats=1:Count")
            .env("ENTITLEMENT_GATE_HANDOFF_DIR", &handoff)
            .env("ENTITLEMENT_GATE_LICENSE_INTERVAL", "1m"),
    );
    let before = emulator.calls_to(Operation::ExtendLicenseConsumption);
    // A fixed span to count in: the bound below holds however slowly the machine runs.
    std::thread::sleep(span);
    let extends = emulator.calls_to(Operation::ExtendLicenseConsumption) - before;
    (extends, watch, checked)
}

#[test]
fn a_node_clock_40_minutes_ahead_of_aws_does_not_storm_extend_and_is_reported() {
    let emulator = license_emulator(Duration::from_secs(3600), |config| {
        config.clock_offset_seconds = -40 * 60;
    });
    let span = Duration::from_secs(4);
    let (extends, watch, _check) = extends_in_span(&emulator, span);
    eprintln!(
        "ExtendLicenseConsumption calls in {span:?} with the node 40 minutes ahead: {extends}"
    );
    assert!(extends <= 1, "{extends} extensions in {span:?}");
    let (_, status) = watch.json("GET", "/v1/license", "");
    assert_eq!(status["state"], "held");
    let skew = status["clockSkewSeconds"].as_i64().expect("the skew");
    assert!((2390..=2410).contains(&skew), "{skew}");
    let metric = watch.metric("entitlement_gate_license_clock_skew_seconds");
    assert!((2390.0..=2410.0).contains(&metric), "{metric}");
    assert!(
        watch.log().contains("ahead of AWS License Manager's"),
        "{}",
        watch.log()
    );
    watch.stop().expect_code(0);
    assert_eq!(seats_in_use(&emulator), 0);
}

#[test]
fn a_node_clock_ahead_of_aws_does_not_end_the_contract_early() {
    // The contract ends in ten minutes by AWS's clock, which the node's, 40 minutes ahead, has
    // passed already.
    let emulator = license_emulator(Duration::from_secs(3600), |config| {
        config.clock_offset_seconds = -40 * 60;
        let ends = std::time::SystemTime::now() - Duration::from_secs(30 * 60);
        config.licenses[0] =
            LicenseSpec::floating(SEATS, "Seats", 2).valid(std::time::UNIX_EPOCH, Some(ends));
    });
    let (_, watch, _check) = extends_in_span(&emulator, Duration::ZERO);
    assert_eq!(
        emulator.calls_to(Operation::CheckoutLicense),
        1,
        "the start-up gate's checkout was adopted:\n{}",
        watch.log()
    );
    assert_eq!(seats_in_use(&emulator), 1);
    watch.stop().expect_code(0);
}

#[test]
fn an_extend_answer_without_expiration_keeps_the_lifetime_and_does_not_storm() {
    // A 4 s seat: its half-life passes within the span.
    let emulator = license_emulator(Duration::from_secs(4), |config| {
        config.faults.license_fault = Some(LicenseFault::ExtendWithoutExpiration);
    });
    let span = Duration::from_secs(4);
    let (extends, watch, _check) = extends_in_span(&emulator, span);
    eprintln!(
        "ExtendLicenseConsumption calls in {span:?} when Extend answers no Expiration: {extends}"
    );
    assert!(extends <= 1, "{extends} extensions in {span:?}");
    watch.stop();
}

#[test]
fn sigterm_during_a_slow_extend_checks_the_seat_in_at_once() {
    // Re-validated (extended) every 20 s; a call may take that long.
    let emulator = license_emulator(Duration::from_secs(3600), |_| {});
    let watch = Sidecar::ready(
        license(&emulator, "watch", SEATS, "Seats=1:Count")
            .env("ENTITLEMENT_GATE_LICENSE_INTERVAL", "20s")
            .env("ENTITLEMENT_GATE_SHUTDOWN_GRACE", "3s")
            .env("ENTITLEMENT_GATE_ATTEMPT_TIMEOUT", "60s"),
    );
    // ExtendLicenseConsumption answers only after a minute, as when throttled at the front end.
    emulator.set_faults(Faults {
        operations: Some([Operation::ExtendLicenseConsumption].into()),
        delay: Duration::from_secs(60),
        ..Faults::default()
    });
    assert!(
        wait_until(Duration::from_secs(60), || emulator
            .calls_to(Operation::ExtendLicenseConsumption)
            > 0),
        "no extension started:\n{}",
        watch.log()
    );
    watch.terminate();
    let ended = exits_within(watch, Duration::from_secs(30));
    ended.expect_code(0);
    let states: Vec<CheckoutState> = emulator
        .licenses()
        .iter()
        .find(|license| license.product_sku == SEATS)
        .unwrap()
        .checkouts
        .iter()
        .map(|checkout| checkout.state)
        .collect();
    assert_eq!(
        states,
        [CheckoutState::CheckedIn],
        "checked in, not left to lapse"
    );
    let text = std::fs::read_to_string(ended.dir.path().join("handoff/license.json")).unwrap();
    assert!(text.contains("\"state\": \"released\""), "{text}");
}
