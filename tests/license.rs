//! Contract pricing as processes against the emulator: `license check` at start-up (every exit
//! path), `license watch` (extension before expiry, check-in on SIGTERM, the loss policy and its
//! grace), the Anywhere credential chain, and floating seats shared by more pods than seats.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use metering_emulator::{CheckoutState, Faults, LicenseSpec, Operation};
use serde_json::Value;
use support::license::*;
use support::*;

#[test]
fn a_checkout_writes_license_json_and_holds_its_seat() {
    let emulator = license_emulator(Duration::from_secs(3600), |_| {});
    let finished = license(&emulator, "check", SEATS, "Seats=1:Count").run();
    finished.expect_code(0);
    let license = license_json(finished.dir.path());
    assert_eq!(license["state"], "held");
    assert_eq!(license["productId"], SEATS);
    assert_eq!(license["checkoutType"], "PROVISIONAL");
    assert_eq!(license["entitlementsAllowed"][0]["name"], "Seats");
    assert_eq!(license["nodeId"], WORKLOAD, "the workload is the NodeId");
    assert!(license["signedToken"]
        .as_str()
        .is_some_and(|t| t.len() >= 4096));
    assert!(license["expiration"].as_u64() > license["issuedAt"].as_u64());
    assert_eq!(seats_in_use(&emulator), 1);
}

#[test]
fn a_tier_is_granted_from_the_list_of_all_tiers() {
    let emulator = license_emulator(Duration::from_secs(3600), |_| {});
    let finished = license(&emulator, "check", TIERS, "Tier1,Tier2,Tier3").run();
    finished.expect_code(0);
    let license = license_json(finished.dir.path());
    let granted: Vec<&str> = license["entitlementsAllowed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(granted, ["Tier2"]);
}

#[test]
fn no_seat_left_no_contract_and_missing_entitlements_exit_3() {
    let emulator = license_emulator(Duration::from_secs(3600), |config| {
        let ended = std::time::SystemTime::now() - Duration::from_secs(60);
        config.licenses.push(
            LicenseSpec::floating("prod-ended", "Seats", 5)
                .valid(std::time::UNIX_EPOCH, Some(ended)),
        );
    });
    for _ in 0..2 {
        license(&emulator, "check", SEATS, "Seats=1:Count")
            .run()
            .expect_code(0);
    }
    let full = license(&emulator, "check", SEATS, "Seats=1:Count").run();
    full.expect_code(3);
    let reason = full.reason();
    assert!(
        reason.starts_with("Not entitled: AWS License Manager"),
        "{reason}"
    );
    assert!(reason.contains("every floating seat is in use"), "{reason}");
    assert!(!full.dir.path().join("handoff/license.json").exists());

    let ended = license(&emulator, "check", "prod-ended", "Seats=1:Count").run();
    ended.expect_code(3);
    assert!(ended.reason().contains("no active contract"));

    let unknown = license(&emulator, "check", "prod-nobody-sells", "Seats=1:Count").run();
    unknown.expect_code(3);

    let partial = license(&emulator, "check", TIERS, "Tier2,Admins=1:Count").run();
    partial.expect_code(3);
    let reason = partial.reason();
    assert!(reason.contains("granted Tier2 but not Admins"), "{reason}");
}

#[test]
fn refusals_map_to_the_gates_exit_codes() {
    let denied = license_emulator(Duration::from_secs(3600), |config| {
        config.denied.insert(Operation::CheckoutLicense);
    });
    let finished = license(&denied, "check", SEATS, "Seats=1:Count").run();
    finished.expect_code(6);
    let reason = finished.reason();
    assert!(
        reason.contains("license-manager:CheckoutLicense"),
        "{reason}"
    );
    assert!(
        reason.contains("AWSLicenseManagerConsumptionPolicy"),
        "{reason}"
    );

    let emulator = license_emulator(Duration::from_secs(3600), |_| {});
    // Throttling and 5xx are retried; a service that keeps failing ends at the deadline.
    emulator.set_faults(Faults {
        operations: Some([Operation::CheckoutLicense].into()),
        throttle_first: 2,
        fail_first: 1,
        ..Faults::default()
    });
    license(&emulator, "check", SEATS, "Seats=1:Count")
        .run()
        .expect_code(0);
    emulator.set_faults(fail_on(
        &[Operation::CheckoutLicense],
        "ServerInternalException:500",
    ));
    let failing = license(&emulator, "check", SEATS, "Seats=1:Count")
        .env("ENTITLEMENT_GATE_DEADLINE", "3s")
        .run();
    failing.expect_code(7);
    assert!(failing.reason().contains("kept failing"));

    // A malformed entitlement never reaches AWS.
    let calls = emulator.calls_to(Operation::CheckoutLicense);
    let bad = license(&emulator, "check", SEATS, "Seats=1:Potatoes").run();
    bad.expect_code(2);
    assert!(
        bad.reason().contains("ENTITLEMENT_GATE_ENTITLEMENTS"),
        "{}",
        bad.reason()
    );
    assert_eq!(emulator.calls_to(Operation::CheckoutLicense), calls);
}

#[test]
fn a_handoff_directory_that_is_a_regular_file_is_refused_before_any_call() {
    let emulator = license_emulator(Duration::from_secs(3600), |_| {});
    let gate = license(&emulator, "check", SEATS, "Seats=1:Count");
    let file = gate.path("public-key.pem");
    let finished = gate.env("ENTITLEMENT_GATE_HANDOFF_DIR", file).run();
    finished.expect_code(2);
    let reason = finished.reason();
    assert!(
        reason.starts_with("Configuration error") && reason.contains("it is not a directory"),
        "{reason}"
    );
    assert_eq!(emulator.calls(), 0);
}

#[test]
fn a_redirect_to_the_licenses_home_region_is_followed() {
    let emulator = license_emulator(Duration::from_secs(3600), |config| {
        config.licenses = vec![LicenseSpec::floating(SEATS, "Seats", 1).home_region("us-west-2")];
    });
    let finished = license(&emulator, "check", SEATS, "Seats=1:Count").run();
    finished.expect_code(0);
    assert_eq!(license_json(finished.dir.path())["region"], "us-west-2");
}

#[test]
fn the_watch_extends_the_seat_before_it_lapses_and_checks_it_in_on_sigterm() {
    // A 6 s seat, extended at half-life: held well past its first expiry.
    let emulator = license_emulator(Duration::from_secs(6), |_| {});
    let gate = license(&emulator, "check", SEATS, "Seats=1:Count");
    let handoff = gate.path("handoff");
    let check = gate.run();
    check.expect_code(0);
    let adopted = license_json(check.dir.path())["consumptionToken"].clone();

    let watch = Sidecar::ready(
        license(&emulator, "watch", SEATS, "Seats=1:Count")
            .env("ENTITLEMENT_GATE_HANDOFF_DIR", &handoff)
            .env("ENTITLEMENT_GATE_LICENSE_INTERVAL", "2s"),
    );
    let first_expiry = license_json(check.dir.path())["expiration"]
        .as_u64()
        .unwrap();
    // Wait until the seat outlived its first expiry several times over.
    assert!(
        wait_until(Duration::from_secs(60), || {
            let license = watch.json("GET", "/v1/license", "").1;
            license["expiration"].as_u64() > Some(first_expiry + 12)
        }),
        "{}",
        watch.log()
    );
    let (status, license) = watch.json("GET", "/v1/license", "");
    assert_eq!(status, 200);
    assert_eq!(license["state"], "held");
    assert_eq!(
        license["consumptionToken"], adopted,
        "the gate's checkout was adopted"
    );
    assert_eq!(seats_in_use(&emulator), 1, "one seat, kept alive");
    assert!(emulator.calls_to(Operation::ExtendLicenseConsumption) >= 2);
    assert_eq!(
        watch.metric("entitlement_gate_license_state{state=\"held\"}"),
        1.0
    );

    let ended = watch.stop();
    ended.expect_code(0);
    assert_eq!(
        seats_in_use(&emulator),
        0,
        "checked in at once, not in an hour"
    );
    let states: Vec<CheckoutState> = emulator.licenses()[0]
        .checkouts
        .iter()
        .map(|checkout| checkout.state)
        .collect();
    assert_eq!(states, [CheckoutState::CheckedIn]);
    let text = std::fs::read_to_string(handoff.join("license.json")).unwrap();
    assert!(text.contains("\"state\": \"released\""), "{text}");
    drop(check);
}

#[test]
fn sighup_stops_the_watch_as_sigterm_does_and_checks_the_seat_in() {
    let emulator = license_emulator(Duration::from_secs(3600), |_| {});
    let watch = Sidecar::ready(license(&emulator, "watch", SEATS, "Seats=1:Count"));
    assert_eq!(seats_in_use(&emulator), 1);
    watch.running.signal(libc::SIGHUP);
    let ended = watch.wait();
    ended.expect_code(0);
    assert!(ended.log.contains("signal=\"SIGHUP\""), "{}", ended.log);
    assert_eq!(seats_in_use(&emulator), 0, "checked in at once");
}

#[test]
fn a_lost_license_ends_the_watch_or_is_reported_as_the_seller_chose() {
    let emulator = license_emulator(Duration::from_secs(3600), |_| {});
    let gone = |emulator: &RunningEmulator| {
        // The license is gone (the contract ended): its checkout is not found, and neither is
        // the license a new checkout asks for.
        emulator.set_faults(Faults {
            operations: Some(
                [
                    Operation::ExtendLicenseConsumption,
                    Operation::CheckoutLicense,
                ]
                .into(),
            ),
            error: Some("ResourceNotFoundException".parse().unwrap()),
            ..Faults::default()
        });
    };

    let exiting = Sidecar::ready(
        license(&emulator, "watch", SEATS, "Seats=1:Count")
            .env("ENTITLEMENT_GATE_LICENSE_INTERVAL", "1s"),
    );
    gone(&emulator);
    let ended = exiting.wait();
    ended.expect_code(3);
    assert!(ended.reason().contains("was lost"), "{}", ended.log);
    let text = std::fs::read_to_string(ended.dir.path().join("handoff/license.json")).unwrap();
    assert!(text.contains("\"state\": \"lost\""), "{text}");

    // A fresh emulator: the injected faults left the first watch's seat taken there.
    let emulator = license_emulator(Duration::from_secs(3600), |_| {});
    let reporting = Sidecar::ready(
        license(&emulator, "watch", SEATS, "Seats=1:Count")
            .env("ENTITLEMENT_GATE_LICENSE_INTERVAL", "1s")
            .env("ENTITLEMENT_GATE_ON_LOSS", "report"),
    );
    gone(&emulator);
    assert!(
        wait_until(Duration::from_secs(60), || reporting
            .request("GET", "/readyz", "")
            .0
            == 503),
        "{}",
        reporting.log()
    );
    assert_eq!(reporting.json("GET", "/v1/license", "").1["state"], "lost");
    // Won back once AWS grants it again.
    emulator.set_faults(Faults::default());
    assert!(
        wait_until(Duration::from_secs(60), || reporting
            .request("GET", "/readyz", "")
            .0
            == 200),
        "{}",
        reporting.log()
    );
    assert_eq!(reporting.json("GET", "/v1/license", "").1["state"], "held");
    reporting.stop().expect_code(0);
}

#[test]
fn an_outage_keeps_the_license_through_the_grace_then_loses_it() {
    let emulator = license_emulator(Duration::from_secs(3600), |_| {});
    let outage = fail_on(
        &[Operation::ExtendLicenseConsumption, Operation::GetLicense],
        "ServerInternalException:500",
    );

    let patient = Sidecar::ready(
        license(&emulator, "watch", SEATS, "Seats=1:Count")
            .env("ENTITLEMENT_GATE_LICENSE_INTERVAL", "1s")
            .env("ENTITLEMENT_GATE_ATTEMPT_TIMEOUT", "1s"),
    );
    emulator.set_faults(outage.clone());
    assert!(
        wait_until(Duration::from_secs(60), || patient
            .json("GET", "/v1/license", "")
            .1["state"]
            == "stale"),
        "{}",
        patient.log()
    );
    // Within the 30 minute default grace the workload keeps running.
    assert_eq!(patient.request("GET", "/readyz", "").0, 200);
    assert!(patient.json("GET", "/v1/license", "").1["lastError"].is_string());
    emulator.set_faults(Faults::default());
    assert!(wait_until(Duration::from_secs(60), || patient
        .json("GET", "/v1/license", "")
        .1["state"]
        == "held"));
    patient.stop().expect_code(0);

    let impatient = Sidecar::ready(
        license(&emulator, "watch", SEATS, "Seats=1:Count")
            .env("ENTITLEMENT_GATE_LICENSE_INTERVAL", "1s")
            .env("ENTITLEMENT_GATE_ATTEMPT_TIMEOUT", "1s")
            .env("ENTITLEMENT_GATE_LOSS_GRACE", "3s"),
    );
    emulator.set_faults(outage);
    let ended = impatient.wait();
    ended.expect_code(3);
    assert!(ended.reason().contains("loss grace"), "{}", ended.log);
}

#[test]
fn anywhere_credentials_come_from_the_buyers_license_token() {
    let emulator = license_emulator(Duration::from_secs(3600), |_| {});
    let anywhere = |token: &str, role: &str| {
        let gate = license(&emulator, "check", SEATS, "Seats=1:Count");
        let secret = gate.path("product-license");
        std::fs::create_dir(&secret).unwrap();
        // As AWS's instructions leave it: with the JSON quotes.
        std::fs::write(secret.join("license_token"), format!("\"{token}\"\n")).unwrap();
        std::fs::write(secret.join("iam_role"), role).unwrap();
        gate.env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_REGION")
            .env("AWS_LICENSE_ACCESS_FILE", secret.join("license_token"))
            .run()
    };
    let finished = anywhere(REFRESH_TOKEN, ROLE);
    finished.expect_code(0);
    assert_eq!(license_json(finished.dir.path())["region"], "us-east-1");
    assert!(finished.stderr.contains("using the buyer's license token"));
    assert_eq!(emulator.calls_to(Operation::GetAccessToken), 1);
    assert_eq!(emulator.calls_to(Operation::AssumeRoleWithWebIdentity), 1);

    let bad_token = anywhere("revoked-token", ROLE);
    bad_token.expect_code(6);
    assert!(
        bad_token
            .reason()
            .contains("refused the buyer's license token"),
        "{}",
        bad_token.reason()
    );

    let bad_role = anywhere(REFRESH_TOKEN, "arn:aws:iam::111122223333:role/someone-else");
    bad_role.expect_code(6);
    assert!(
        bad_role
            .reason()
            .contains("openid-license-manager.amazonaws.com"),
        "{}",
        bad_role.reason()
    );

    let conflicting = license(&emulator, "check", SEATS, "Seats=1:Count")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_LICENSE_ACCESS_FILE", "/a/license_token")
        .env("AWS_WEB_IDENTITY_REFRESH_TOKEN_FILE", "/b/license_token")
        .env("AWS_ROLE_ARN", ROLE)
        .run();
    conflicting.expect_code(2);
}

#[test]
fn more_pods_than_seats_the_rest_wait_and_a_stopped_pods_seat_is_back_at_once() {
    // Three pods, two seats: each pod is a watch (its start-up checkout included).
    let emulator = license_emulator(Duration::from_secs(3600), |_| {});
    let pod = || {
        Sidecar::spawn(
            license(&emulator, "watch", SEATS, "Seats=1:Count")
                .env("ENTITLEMENT_GATE_LICENSE_INTERVAL", "1s"),
        )
    };
    let mut first = pod();
    first.wait_ready();
    let mut second = pod();
    second.wait_ready();
    let third = pod().wait();
    third.expect_code(3);
    assert!(third.reason().contains("every floating seat is in use"));
    assert_eq!(seats_in_use(&emulator), 2);

    // A pod stops: its seat is checked in, and a new pod starts at once.
    first.stop().expect_code(0);
    assert_eq!(seats_in_use(&emulator), 1);
    let mut replacement = pod();
    replacement.wait_ready();
    assert_eq!(seats_in_use(&emulator), 2);
    second.stop().expect_code(0);
    replacement.stop().expect_code(0);
    assert_eq!(seats_in_use(&emulator), 0);
}

#[test]
fn doctor_follows_the_anywhere_path_and_checks_a_seat_out_and_in_again() {
    let emulator = license_emulator(Duration::from_secs(3600), |_| {});
    let doctor = |role: &str| {
        let gate = Gate::against(
            &emulator.endpoint_url(),
            emulator.public_key_pem(),
            &["doctor", "--call", "--format", "json"],
        );
        let secret = gate.path("product-license");
        std::fs::create_dir(&secret).unwrap();
        std::fs::write(secret.join("license_token"), REFRESH_TOKEN).unwrap();
        std::fs::write(secret.join("iam_role"), role).unwrap();
        let finished = gate
            .env_remove("ENTITLEMENT_GATE_PRODUCT_CODE")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_REGION")
            .env("AWS_ENDPOINT_URL_LICENSE_MANAGER", emulator.endpoint_url())
            .env("AWS_ENDPOINT_URL_STS", emulator.endpoint_url())
            .env("ENTITLEMENT_GATE_PRODUCT_ID", SEATS)
            .env("ENTITLEMENT_GATE_ENTITLEMENTS", "Seats=1:Count")
            .env(
                "AWS_WEB_IDENTITY_REFRESH_TOKEN_FILE",
                secret.join("license_token"),
            )
            .run();
        let report: Value = serde_json::from_str(&finished.stdout).expect("a JSON report");
        let checks: BTreeMap<String, (String, String)> = report["checks"]
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
        (finished.code, checks)
    };

    let (code, checks) = doctor(ROLE);
    assert_eq!(code, Some(0), "{checks:?}");
    assert!(
        checks["region"].1.contains("the Anywhere default"),
        "{checks:?}"
    );
    assert_eq!(checks["anywhere"].0, "ok", "{checks:?}");
    assert!(
        checks["license-identity"]
            .1
            .contains("License Manager token"),
        "{checks:?}"
    );
    assert!(
        checks["license-checkout"].1.contains("checked in again"),
        "{checks:?}"
    );
    assert!(!checks.contains_key("product-code"), "{checks:?}");
    // The seat it took is back.
    assert_eq!(seats_in_use(&emulator), 0);
    assert_eq!(emulator.calls_to(Operation::CheckInLicense), 1);

    let (code, checks) = doctor("arn:aws:iam::111122223333:role/someone-else");
    assert_ne!(code, Some(0));
    assert_eq!(checks["license-identity"].0, "fail", "{checks:?}");
    assert!(
        checks["license-identity"]
            .1
            .contains("openid-license-manager.amazonaws.com"),
        "{checks:?}"
    );
    assert!(!checks.contains_key("license-checkout"), "{checks:?}");
}
