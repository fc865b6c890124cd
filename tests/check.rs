//! `entitlement-gate check`, the real binary, against the in-process metering emulator:
//! every exit code, retries, deadlines, signals, the rotation warning and the handoff.

mod support;

use std::time::Duration;

use support::*;

#[test]
fn entitled_buyer_exits_0_and_gets_a_handoff_bound_to_this_run() {
    let emulator = emulator();
    let gate = Gate::check(&emulator);
    let handoff_dir = gate.dir.path().to_owned();
    let run = gate.arg("--handoff-dir").arg(&handoff_dir).run();
    run.expect_code(0);
    assert!(
        run.stderr
            .contains("entitled: RegisterUsage token verified"),
        "{}",
        run.stderr
    );
    assert!(run
        .stderr
        .contains("product_code=prod-paid public_key_version=1 iat="));
    assert!(
        run.termination_log().is_none(),
        "success must not write a failure reason"
    );

    let handoff = run.handoff_in(&handoff_dir).expect("handoff written");
    assert_eq!(handoff["productCode"], PAID);
    assert_eq!(handoff["publicKeyVersion"], 1);
    assert_eq!(handoff["region"], "us-east-1");
    assert_eq!(handoff["gateVersion"], env!("CARGO_PKG_VERSION"));
    assert!(handoff.get("publicKeyRotationTimestamp").is_none());
    let claims = jwt_claims(handoff["signature"].as_str().unwrap());
    assert_eq!(
        claims["nonce"], handoff["nonce"],
        "the token is bound to the recorded nonce"
    );
    assert_eq!(claims["iat"], handoff["issuedAt"]);
    let nonce = handoff["nonce"].as_str().unwrap();
    assert!(nonce.len() >= 22 && nonce.len() <= 255, "{nonce}");
    let verified_at = handoff["verifiedAt"].as_str().unwrap();
    assert!(
        verified_at.len() >= 20 && verified_at.ends_with('Z') && verified_at.contains('T'),
        "{verified_at}"
    );
    // Nothing but the handoff, the key and the (absent) logs: no temporary files left.
    let names: Vec<String> = std::fs::read_dir(&handoff_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}

#[test]
fn every_run_sends_a_fresh_nonce() {
    let emulator = emulator();
    let nonces: Vec<String> = (0..3)
        .map(|_| {
            let gate = Gate::check(&emulator);
            let dir = gate.dir.path().to_owned();
            let run = gate.arg("--handoff-dir").arg(&dir).run();
            run.expect_code(0);
            run.handoff_in(&dir).unwrap()["nonce"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_ne!(nonces[0], nonces[1]);
    assert_ne!(nonces[1], nonces[2]);
}

#[test]
fn flags_override_environment_variables() {
    let emulator = emulator();
    let run = Gate::check(&emulator)
        .product(UNPAID)
        .args(["--product-code", PAID])
        .run();
    run.expect_code(0);
}

#[test]
fn configuration_errors_exit_2_before_any_call() {
    let emulator = emulator();
    let cases: Vec<(&str, Gate, &str)> = vec![
        (
            "no product code",
            Gate::check(&emulator).env_remove("ENTITLEMENT_GATE_PRODUCT_CODE"),
            "ENTITLEMENT_GATE_PRODUCT_CODE",
        ),
        (
            "invalid product code",
            Gate::check(&emulator).product("not valid!"),
            "only letters, digits",
        ),
        (
            "no key",
            Gate::check(&emulator).env_remove("ENTITLEMENT_GATE_PUBLIC_KEY_FILE"),
            "ENTITLEMENT_GATE_PUBLIC_KEY_FILE",
        ),
        (
            "missing key file",
            Gate::check(&emulator).env("ENTITLEMENT_GATE_PUBLIC_KEY_FILE", "/nonexistent/key.pem"),
            "/nonexistent/key.pem",
        ),
        (
            "weak key",
            Gate::check(&emulator)
                .env_remove("ENTITLEMENT_GATE_PUBLIC_KEY_FILE")
                .env(
                    "ENTITLEMENT_GATE_PUBLIC_KEY",
                    AWS_JAVA_SAMPLE_1024_BIT_PUBLIC_KEY,
                ),
            "RSA-1024",
        ),
        (
            "private key",
            Gate::check(&emulator)
                .env_remove("ENTITLEMENT_GATE_PUBLIC_KEY_FILE")
                .env(
                    "ENTITLEMENT_GATE_PUBLIC_KEY",
                    &shared_2048().private_pkcs8_pem,
                ),
            "never the private one",
        ),
        (
            "bad deadline",
            Gate::check(&emulator).args(["--deadline", "soon"]),
            "--deadline",
        ),
        (
            "key version 0 from the environment",
            Gate::check(&emulator).env("ENTITLEMENT_GATE_PUBLIC_KEY_VERSION", "0"),
            "ENTITLEMENT_GATE_PUBLIC_KEY_VERSION (Helm value entitlementGate.publicKeyVersion) is \"0\"",
        ),
        (
            "unknown flag",
            Gate::check(&emulator).arg("--product"),
            "--product",
        ),
        (
            "missing handoff dir",
            Gate::check(&emulator).args(["--handoff-dir", "/nonexistent/handoff"]),
            "emptyDir",
        ),
        (
            "no region",
            Gate::check(&emulator).env_remove("AWS_REGION"),
            "AWS_REGION",
        ),
        {
            let gate = Gate::check(&emulator);
            let file = gate.path("public-key.pem");
            (
                "a handoff dir that is a regular file",
                gate.arg("--handoff-dir").arg(file),
                "it is not a directory; mount a writable volume",
            )
        },
        {
            let gate = Gate::subcommand(&emulator, "exec");
            let file = gate.path("public-key.pem");
            (
                "exec with a handoff dir that is a regular file",
                gate.arg("--handoff-dir").arg(file).args(["--", "true"]),
                "it is not a directory; mount a writable volume",
            )
        },
    ];
    for (name, gate, mention) in cases {
        let run = gate.run();
        assert_eq!(run.code, Some(2), "{name}: {}", run.stderr);
        // The same sentence on stderr and in the termination log, clap's errors included.
        let reason = run.reason();
        assert!(
            reason.starts_with("Configuration error"),
            "{name}: {reason}"
        );
        assert!(
            reason.contains(mention),
            "{name}: {reason:?} lacks {mention:?}"
        );
    }
    assert_eq!(
        emulator.calls(),
        0,
        "no configuration error may reach RegisterUsage"
    );
}

#[test]
fn unsubscribed_buyer_exits_3_and_is_told_to_subscribe() {
    let emulator = emulator();
    let run = Gate::check(&emulator).product(UNPAID).run();
    run.expect_code(3);
    let reason = run.reason();
    assert!(
        reason.contains("prod-unpaid") && reason.contains("subscribe"),
        "{reason}"
    );
    assert_eq!(emulator.calls(), 1, "not-entitled must not be retried");
}

#[test]
fn tokens_that_fail_verification_exit_4() {
    for (fault, mention) in [
        (TokenFault::BadSignature, "signature does not verify"),
        (TokenFault::Tampered, "signature does not verify"),
        (TokenFault::AlgNone, "\"none\""),
        (TokenFault::AlgHs256, "\"HS256\""),
        (TokenFault::AlgRs256, "\"RS256\""),
        (TokenFault::WrongNonce, "nonce"),
        (TokenFault::WrongProductCode, "productCode"),
        (TokenFault::WrongKeyVersion, "publicKeyVersion"),
        (TokenFault::KeyVersionAsString, "publicKeyVersion"),
        (TokenFault::MissingIat, "iat"),
        (TokenFault::FutureIat, "issued at"),
        (TokenFault::Expired, "expired"),
        (TokenFault::MissingSignature, "without a Signature"),
        (TokenFault::NotAJwt, "malformed"),
        (TokenFault::Oversized, "over the 16384-byte limit"),
    ] {
        let emulator = emulator_with(|c| c.faults.token = Some(fault));
        let gate = Gate::check(&emulator);
        let handoff_dir = gate.dir.path().to_owned();
        let run = gate.arg("--handoff-dir").arg(&handoff_dir).run();
        assert_eq!(run.code, Some(4), "{fault:?}: {}", run.stderr);
        let reason = run.reason();
        assert!(
            reason.contains(mention),
            "{fault:?}: {reason:?} lacks {mention:?}"
        );
        assert!(
            run.handoff_in(&handoff_dir).is_none(),
            "{fault:?} left a handoff"
        );
    }
}

#[test]
fn a_token_signed_by_another_key_than_the_configured_one_exits_4() {
    let emulator = emulator();
    let other = metering_emulator::keys::shared_other_2048();
    let run = Gate::check(&emulator)
        .env_remove("ENTITLEMENT_GATE_PUBLIC_KEY_FILE")
        .env("ENTITLEMENT_GATE_PUBLIC_KEY", &other.public_spki_pem)
        .run();
    run.expect_code(4);
}

#[test]
fn setup_refusals_exit_5_with_the_aws_code() {
    let platform =
        emulator_with(|c| c.faults.error = Some("PlatformNotSupportedException".parse().unwrap()));
    let disabled =
        emulator_with(|c| c.faults.error = Some("DisabledApiException".parse().unwrap()));
    let other_region = emulator_with(|c| c.region = "eu-west-1".into());
    let v2_unknown = emulator();
    let cases = [
        (
            "PlatformNotSupportedException",
            Gate::check(&platform),
            "Amazon ECS",
        ),
        (
            "DisabledApiException",
            Gate::check(&disabled),
            "Seller Operations",
        ),
        (
            "InvalidRegionException",
            Gate::check(&other_region),
            "us-east-1",
        ),
        (
            "InvalidProductCodeException",
            Gate::check(&v2_unknown).product("prod-unknown"),
            "prod-unknown",
        ),
        (
            "InvalidPublicKeyVersionException",
            Gate::check(&v2_unknown).env("ENTITLEMENT_GATE_PUBLIC_KEY_VERSION", "2"),
            "version 2",
        ),
    ];
    for (code, gate, mention) in cases {
        let run = gate.run();
        assert_eq!(run.code, Some(5), "{code}: {}", run.stderr);
        let reason = run.reason();
        assert!(
            reason.contains(code) && reason.contains(mention),
            "{reason}"
        );
    }
    assert_eq!(
        platform.calls() + disabled.calls() + other_region.calls(),
        3,
        "refusals are not retried"
    );
}

#[test]
fn credential_problems_exit_6() {
    let emulator = emulator();
    let no_credentials = Gate::check(&emulator)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .run();
    no_credentials.expect_code(6);
    assert!(no_credentials.reason().contains("IRSA"));
    assert_eq!(emulator.calls(), 0, "no call without credentials");

    for code in [
        "AccessDeniedException",
        "UnrecognizedClientException",
        "ExpiredTokenException",
    ] {
        let denied = emulator_with(|c| c.faults.error = Some(code.parse().unwrap()));
        let run = Gate::check(&denied).run();
        assert_eq!(run.code, Some(6), "{code}: {}", run.stderr);
        let reason = run.reason();
        assert!(
            reason.contains(code) && reason.contains("aws-marketplace:RegisterUsage"),
            "{reason}"
        );
        assert!(
            reason.contains("environment variables"),
            "names the credential source: {reason}"
        );
    }
}

#[test]
fn a_service_that_keeps_failing_exits_7_at_the_deadline() {
    let throttled = emulator_with(|c| c.faults.throttle_first = u32::MAX);
    let run = Gate::check(&throttled).args(["--deadline", "2s"]).run();
    run.expect_code(7);
    let reason = run.reason();
    // Throttling is the account's quota, not the network: the sentence says so.
    assert!(
        reason.contains("ThrottlingException")
            && reason.contains("5 RegisterUsage calls per second")
            && reason.contains("--deadline")
            && !reason.contains("egress"),
        "{reason}"
    );
    assert!(
        run.elapsed < Duration::from_secs(3),
        "took {:?}",
        run.elapsed
    );
    assert!(
        throttled.calls() >= 3,
        "retried only {} times",
        throttled.calls()
    );

    let failing = emulator_with(|c| c.faults.fail_first = u32::MAX);
    let run = Gate::check(&failing).args(["--deadline", "1s"]).run();
    run.expect_code(7);
    assert!(run.reason().contains("InternalServiceErrorException"));
}

#[test]
fn an_unreachable_endpoint_exits_7() {
    // Bind and drop a listener: nothing listens on that port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let run = Gate::against(&endpoint, &shared_2048().public_spki_pem, &["check"])
        .args(["--deadline", "1s"])
        .run();
    run.expect_code(7);
    assert!(run.reason().contains(&endpoint), "names the endpoint");
}

#[test]
fn out_of_reach_in_a_mesh_the_sentence_names_the_meshs_proxy() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let run = Gate::against(&endpoint, &shared_2048().public_spki_pem, &["check"])
        .args(["--deadline", "1s"])
        // As the downward API passes the injector's annotation in.
        .env(
            "ENTITLEMENT_GATE_ISTIO_SIDECAR_STATUS",
            r#"{"initContainers":["istio-init"],"containers":["istio-proxy"]}"#,
        )
        .run();
    run.expect_code(7);
    assert!(
        run.reason().contains("injected Istio sidecar"),
        "{}",
        run.reason()
    );
    assert!(run.reason().contains("mesh.type to istio"));
}

#[test]
fn a_hung_service_is_cut_off_by_the_deadline_with_exit_7() {
    let hung = emulator_with(|c| c.faults.delay = Duration::from_secs(30));
    let run = Gate::check(&hung).args(["--deadline", "1500ms"]).run();
    run.expect_code(7);
    assert!(
        run.elapsed < Duration::from_millis(2500),
        "took {:?}",
        run.elapsed
    );
    assert!(
        run.reason().contains("no answer within"),
        "{}",
        run.reason()
    );
}

#[test]
fn a_slow_attempt_is_abandoned_and_retried_within_the_deadline() {
    let slow = emulator_with(|c| c.faults.delay = Duration::from_secs(30));
    let run = Gate::check(&slow)
        .args(["--deadline", "3s", "--attempt-timeout", "500ms"])
        .run();
    run.expect_code(7);
    assert!(slow.calls() >= 2, "only {} attempts", slow.calls());
}

#[test]
fn sigterm_and_sigint_exit_8_promptly() {
    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let hung = emulator_with(|c| c.faults.delay = Duration::from_secs(30));
        let running = Gate::check(&hung).spawn();
        assert!(
            wait_until(Duration::from_secs(10), || hung.calls() >= 1),
            "gate never called"
        );
        running.signal(signal);
        let run = running.wait();
        run.expect_code(8);
        assert!(
            run.elapsed < Duration::from_secs(1),
            "{name} took {:?}",
            run.elapsed
        );
        assert!(run.reason().contains(name));
    }
}

#[test]
fn transient_failures_are_retried_until_success() {
    let flaky = emulator_with(|c| {
        c.faults.drop_first = 1;
        c.faults.throttle_first = 2;
        c.faults.fail_first = 1;
    });
    let run = Gate::check(&flaky).run();
    run.expect_code(0);
    assert_eq!(flaky.calls(), 5);
    assert_eq!(
        run.stderr
            .matches("RegisterUsage attempt failed; retrying")
            .count(),
        4,
        "{}",
        run.stderr
    );
}

#[test]
fn an_expired_key_version_warns_but_still_decides_by_verification() {
    let rotation = 1_900_000_000;
    let emulator = emulator_with(|c| c.rotation_timestamp = Some(rotation.into()));
    let gate = Gate::check(&emulator);
    let dir = gate.dir.path().to_owned();
    let run = gate.arg("--handoff-dir").arg(&dir).run();
    run.expect_code(0);
    assert!(run.stderr.contains("WARN"), "{}", run.stderr);
    assert!(
        run.stderr.contains("2030-03-17T17:46:40Z"),
        "names the time: {}",
        run.stderr
    );
    assert!(run.stderr.contains("must roll to the next key version"));
    assert_eq!(
        run.handoff_in(&dir).unwrap()["publicKeyRotationTimestamp"],
        rotation
    );

    let spoiled = emulator_with(|c| {
        c.rotation_timestamp = Some(rotation.into());
        c.faults.token = Some(TokenFault::BadSignature);
    });
    Gate::check(&spoiled).run().expect_code(4);
}

#[test]
fn a_rotation_timestamp_no_clock_can_hold_is_named_and_never_ends_the_run() {
    for (sent, named) in [
        ("9.3e18", "epoch second 9223372036854775807"),
        ("1e400", "epoch second 9223372036854775807"),
        ("-1e400", "epoch second -9223372036854775808"),
        ("253402300800", "epoch second 253402300800"),
    ] {
        let emulator = emulator_with(|c| c.rotation_timestamp = Some(sent.parse().unwrap()));
        let gate = Gate::check(&emulator);
        let dir = gate.dir.path().to_owned();
        let run = gate.arg("--handoff-dir").arg(&dir).run();
        run.expect_code(0);
        assert!(
            run.stderr.contains(&format!("expired at {named}")),
            "{sent}: {}",
            run.stderr
        );
        assert!(
            run.handoff_in(&dir).unwrap()["publicKeyRotationTimestamp"].is_i64(),
            "{sent}"
        );
    }
}

#[test]
fn a_failed_run_removes_an_earlier_handoff() {
    let emulator = emulator();
    let gate = Gate::check(&emulator).product(UNPAID);
    let dir = gate.dir.path().to_owned();
    std::fs::write(
        dir.join("entitlement.json"),
        "{\"from\": \"an earlier run\"}",
    )
    .unwrap();
    let run = gate.arg("--handoff-dir").arg(&dir).run();
    run.expect_code(3);
    assert!(!dir.join("entitlement.json").exists());
}

#[test]
fn credentials_from_the_node_role_work_but_are_warned_about() {
    let emulator = emulator_with(|c| c.imds = true);
    let run = Gate::check(&emulator)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_EC2_METADATA_DISABLED")
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", emulator.endpoint_url())
        .run();
    run.expect_code(0);
    assert!(
        run.stderr
            .contains("EC2 instance metadata (the node's instance role)"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("WARN") && run.stderr.contains("does not support these credentials")
    );
}

#[test]
fn the_region_override_works_and_warns() {
    let emulator = emulator_with(|c| c.region = "ap-southeast-2".into());
    let run = Gate::check(&emulator)
        .env_remove("AWS_REGION")
        .args(["--region", "ap-southeast-2"])
        .run();
    run.expect_code(0);
    assert!(
        run.stderr.contains("WARN") && run.stderr.contains("--region override"),
        "{}",
        run.stderr
    );
}

#[test]
fn json_logs_are_one_object_per_line_with_the_exit_code() {
    let emulator = emulator();
    let run = Gate::check(&emulator)
        .product(UNPAID)
        .args(["--log-format", "json"])
        .run();
    run.expect_code(3);
    let lines: Vec<serde_json::Value> = run
        .stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
        .collect();
    let last = lines.last().unwrap();
    assert_eq!(last["level"], "ERROR");
    assert_eq!(last["exit_code"], 3);
    assert_eq!(last["message"].as_str(), run.termination_log().as_deref());
}

#[test]
fn version_and_help_exit_0() {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_entitlement-gate"));
    let output = command.arg("--version").output().unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("open build"));
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_entitlement-gate"))
        .args(["check", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    for env in [
        "ENTITLEMENT_GATE_PRODUCT_CODE",
        "ENTITLEMENT_GATE_DEADLINE",
        "ENTITLEMENT_GATE_HANDOFF_DIR",
    ] {
        assert!(help.contains(env), "help lacks {env}");
    }
}
