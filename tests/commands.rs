//! `exec`, `verify` and `doctor`, the real binary against the in-process emulator.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;

// ---- exec ------------------------------------------------------------------------------------

#[test]
fn exec_runs_the_program_with_its_args_env_and_the_same_pid() {
    let emulator = emulator();
    let gate = Gate::subcommand(&emulator, "exec").env("APP_SETTING", "from-the-pod-spec");
    let out = gate.path("program-output");
    let running = gate
        .args([
            "--",
            "sh",
            "-c",
            r#"echo "$0|$1|$APP_SETTING|$ENTITLEMENT_GATE_PRODUCT_CODE|$$" > "$2""#,
            "arg-zero",
            "arg-one",
        ])
        .arg(&out)
        .spawn();
    let pid = running.child.id();
    let run = running.wait();
    run.expect_code(0);
    let written = std::fs::read_to_string(&out).expect("the program ran");
    assert_eq!(
        written.trim(),
        format!("arg-zero|arg-one|from-the-pod-spec|{PAID}|{pid}"),
        "execve keeps the PID and env"
    );
}

#[test]
fn exec_never_starts_the_program_when_not_entitled() {
    let emulator = emulator();
    let gate = Gate::subcommand(&emulator, "exec").product(UNPAID);
    let marker = gate.path("program-ran");
    let run = gate.args(["--", "touch"]).arg(&marker).run();
    run.expect_code(3);
    assert!(
        !marker.exists(),
        "the program started for an unentitled buyer"
    );
    assert!(run.reason().contains("subscribe"));
}

#[test]
fn exec_passes_the_program_exit_code_through() {
    let emulator = emulator();
    Gate::subcommand(&emulator, "exec")
        .args(["--", "sh", "-c", "exit 42"])
        .run()
        .expect_code(42);
}

#[test]
fn exec_delivers_signals_to_the_program_itself() {
    let emulator = emulator();
    let gate = Gate::subcommand(&emulator, "exec");
    let ready = gate.path("ready");
    let got = gate.path("got-sigterm");
    let script =
        r#"trap 'echo term > "$1"; exit 0' TERM; touch "$0"; while :; do sleep 0.05; done"#;
    let running = gate
        .args(["--", "sh", "-c", script])
        .arg(&ready)
        .arg(&got)
        .spawn();
    assert!(
        wait_until(Duration::from_secs(10), || ready.exists()),
        "the program never started"
    );
    running.signal(libc::SIGTERM);
    let run = running.wait();
    run.expect_code(0);
    assert_eq!(std::fs::read_to_string(&got).unwrap().trim(), "term");
}

#[test]
fn exec_of_a_missing_program_exits_2() {
    let emulator = emulator();
    let run = Gate::subcommand(&emulator, "exec")
        .args(["--", "/nonexistent/app"])
        .run();
    run.expect_code(2);
    assert!(run.reason().contains("/nonexistent/app"));
}

// ---- verify ----------------------------------------------------------------------------------

/// Runs `check` with a handoff and returns the directory holding entitlement.json.
fn handoff_from_check(emulator: &RunningEmulator) -> tempfile::TempDir {
    let gate = Gate::check(emulator);
    let handoff_dir = tempfile::tempdir().unwrap();
    gate.arg("--handoff-dir")
        .arg(handoff_dir.path())
        .run()
        .expect_code(0);
    handoff_dir
}

fn edit_handoff(dir: &std::path::Path, edit: impl FnOnce(&mut Value)) {
    let path = dir.join("entitlement.json");
    let mut handoff: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut handoff);
    std::fs::write(&path, handoff.to_string()).unwrap();
}

#[test]
fn verify_accepts_the_handoff_check_wrote() {
    let emulator = emulator();
    let handoff = handoff_from_check(&emulator);
    let by_flag = Gate::subcommand(&emulator, "verify")
        .arg("--handoff")
        .arg(handoff.path().join("entitlement.json"))
        .run();
    by_flag.expect_code(0);
    assert!(by_flag.stderr.contains("valid: the token verifies"));
    // The app container gets the same variable the gate wrote with.
    Gate::subcommand(&emulator, "verify")
        .env("ENTITLEMENT_GATE_HANDOFF_DIR", handoff.path())
        .run()
        .expect_code(0);
    assert_eq!(emulator.calls(), 1, "verify never calls AWS");
}

#[test]
fn verify_refuses_a_tampered_handoff() {
    let emulator = emulator();
    let handoff = handoff_from_check(&emulator);
    edit_handoff(handoff.path(), |h| {
        let token = h["signature"].as_str().unwrap().to_owned();
        let parts: Vec<&str> = token.split('.').collect();
        let mut claims = jwt_claims(&token);
        claims["iat"] = json!(claims["iat"].as_u64().unwrap() + 1);
        let payload = metering_emulator::keys::b64_json(&claims);
        h["signature"] = json!(format!("{}.{payload}.{}", parts[0], parts[2]));
    });
    let run = Gate::subcommand(&emulator, "verify")
        .env("ENTITLEMENT_GATE_HANDOFF_DIR", handoff.path())
        .run();
    run.expect_code(4);
    assert!(
        run.reason().contains("signature does not verify"),
        "{}",
        run.reason()
    );
}

#[test]
fn verify_refuses_a_nonce_that_is_not_the_tokens() {
    let emulator = emulator();
    let handoff = handoff_from_check(&emulator);
    edit_handoff(handoff.path(), |h| {
        h["nonce"] = json!("a-nonce-from-another-pod")
    });
    let run = Gate::subcommand(&emulator, "verify")
        .env("ENTITLEMENT_GATE_HANDOFF_DIR", handoff.path())
        .run();
    run.expect_code(4);
    assert!(run.reason().contains("nonce"));
}

#[test]
fn verify_refuses_another_products_handoff() {
    let emulator = emulator_with(|c| {
        c.entitled.insert("prod-other".into());
    });
    let handoff = handoff_from_check(&emulator);
    let run = Gate::subcommand(&emulator, "verify")
        .product("prod-other")
        .env("ENTITLEMENT_GATE_HANDOFF_DIR", handoff.path())
        .run();
    run.expect_code(4);
    assert!(run.reason().contains("productCode"));
}

#[test]
fn verify_refuses_expired_and_too_old_tokens() {
    let emulator = emulator();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sign = |claims: Value| shared_2048().sign_jwt(&json!({ "alg": "PS256" }), &claims);
    let nonce = bound_nonce(WORKLOAD);
    let expired = sign(
        json!({ "productCode": PAID, "nonce": nonce, "publicKeyVersion": 1, "iat": now - 100, "exp": now - 10 }),
    );
    let run = Gate::subcommand(&emulator, "verify")
        .args(["--nonce", &nonce, "--token", &expired])
        .run();
    run.expect_code(4);
    assert!(run.reason().contains("expired"));

    let old = sign(
        json!({ "productCode": PAID, "nonce": nonce, "publicKeyVersion": 1, "iat": now - 7200 }),
    );
    Gate::subcommand(&emulator, "verify")
        .args(["--nonce", &nonce, "--token", &old])
        .run()
        .expect_code(0);
    let run = Gate::subcommand(&emulator, "verify")
        .args(["--nonce", &nonce, "--max-age", "1h", "--token", &old])
        .run();
    run.expect_code(4);
    assert!(run.reason().contains("--max-age"));
}

#[test]
fn verify_reads_a_token_from_stdin_and_needs_its_nonce() {
    let emulator = emulator();
    let handoff = handoff_from_check(&emulator);
    let recorded: Value = serde_json::from_str(
        &std::fs::read_to_string(handoff.path().join("entitlement.json")).unwrap(),
    )
    .unwrap();
    let token = recorded["signature"].as_str().unwrap();
    let nonce = recorded["nonce"].as_str().unwrap();
    Gate::subcommand(&emulator, "verify")
        .args(["--nonce", nonce])
        .run_with_stdin(token)
        .expect_code(0);
    Gate::subcommand(&emulator, "verify")
        .run_with_stdin(token)
        .expect_code(2);
}

#[test]
fn verify_without_a_handoff_says_the_gate_has_not_run() {
    let emulator = emulator();
    let empty = tempfile::tempdir().unwrap();
    let run = Gate::subcommand(&emulator, "verify")
        .env("ENTITLEMENT_GATE_HANDOFF_DIR", empty.path())
        .run();
    run.expect_code(4);
    assert!(run.reason().contains("has not verified an entitlement"));
}

#[test]
fn the_library_example_verifies_the_handoff_in_process() {
    let emulator = emulator();
    let handoff = handoff_from_check(&emulator);
    let example = std::path::Path::new(env!("CARGO_BIN_EXE_entitlement-gate"))
        .parent()
        .unwrap()
        .join("examples/verify_handoff");
    let key = handoff.path().join("key.pem");
    std::fs::write(&key, emulator.public_key_pem()).unwrap();
    let run = |product: &str| {
        std::process::Command::new(&example)
            .env_clear()
            .env("ENTITLEMENT_GATE_HANDOFF_DIR", handoff.path())
            .env("ENTITLEMENT_GATE_WORKLOAD_ID", WORKLOAD)
            .env("ENTITLEMENT_GATE_PRODUCT_CODE", product)
            .env("ENTITLEMENT_GATE_PUBLIC_KEY_FILE", &key)
            .output()
            .expect("run the example (cargo test builds examples)")
    };
    let ok = run(PAID);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("is entitled"));
    assert_eq!(run("prod-other").status.code(), Some(4));
}

// ---- doctor ----------------------------------------------------------------------------------

fn findings(run: &Finished) -> Vec<Value> {
    let report: Value =
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout));
    report["checks"].as_array().unwrap().clone()
}

fn finding<'a>(findings: &'a [Value], check: &str) -> &'a Value {
    findings
        .iter()
        .find(|f| f["check"] == check)
        .unwrap_or_else(|| panic!("no {check} in {findings:?}"))
}

fn doctor(emulator: &RunningEmulator) -> Gate {
    Gate::subcommand(emulator, "doctor").args(["--format", "json"])
}

#[test]
fn doctor_passes_a_good_setup_without_calling_register_usage() {
    let emulator = emulator();
    let run = doctor(&emulator)
        .env("AWS_SESSION_TOKEN", "session")
        .env("AWS_EXECUTION_ENV", "AWS_ECS_FARGATE")
        .run();
    run.expect_code(0);
    let findings = findings(&run);
    for check in [
        "platform",
        "region",
        "credentials",
        "irsa-token",
        "endpoint",
        "product-code",
        "public-key",
        "clock",
    ] {
        assert_eq!(
            finding(&findings, check)["status"],
            "ok",
            "{check}: {findings:?}"
        );
    }
    assert!(finding(&findings, "platform")["detail"]
        .as_str()
        .unwrap()
        .contains("Fargate"));
    assert!(findings.iter().all(|f| f["check"] != "register-usage"));
    assert_eq!(
        emulator.calls(),
        0,
        "doctor must not start metering without --call"
    );
}

#[test]
fn doctor_calls_register_usage_only_with_call() {
    let emulator = emulator();
    let run = doctor(&emulator).arg("--call").run();
    run.expect_code(0);
    let register = finding(&findings(&run), "register-usage").clone();
    assert_eq!(register["status"], "ok");
    assert!(register["detail"].as_str().unwrap().starts_with("entitled"));
    assert_eq!(emulator.calls(), 1);

    let unpaid = doctor(&emulator).product(UNPAID).arg("--call").run();
    unpaid.expect_code(1);
    let register = finding(&findings(&unpaid), "register-usage").clone();
    assert_eq!(register["status"], "fail");
    assert!(register["detail"].as_str().unwrap().contains("subscribe"));
}

#[test]
fn doctor_fails_a_missing_or_weak_key() {
    let emulator = emulator();
    let missing = doctor(&emulator)
        .env_remove("ENTITLEMENT_GATE_PUBLIC_KEY_FILE")
        .run();
    missing.expect_code(1);
    assert_eq!(finding(&findings(&missing), "public-key")["status"], "fail");

    let weak = doctor(&emulator)
        .env_remove("ENTITLEMENT_GATE_PUBLIC_KEY_FILE")
        .env(
            "ENTITLEMENT_GATE_PUBLIC_KEY",
            AWS_JAVA_SAMPLE_1024_BIT_PUBLIC_KEY,
        )
        .run();
    weak.expect_code(1);
    let key = finding(&findings(&weak), "public-key").clone();
    assert_eq!(key["status"], "fail");
    assert!(key["detail"].as_str().unwrap().contains("RSA-1024"));
}

#[test]
fn doctor_warns_when_only_the_node_role_is_available() {
    let emulator = emulator_with(|c| c.imds = true);
    let run = doctor(&emulator)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_EC2_METADATA_DISABLED")
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", emulator.endpoint_url())
        .run();
    run.expect_code(0);
    let credentials = finding(&findings(&run), "credentials").clone();
    assert_eq!(credentials["status"], "warn");
    assert!(credentials["detail"]
        .as_str()
        .unwrap()
        .contains("instance role"));
}

#[test]
fn doctor_fails_an_unreachable_endpoint() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let run = Gate::against(
        &format!("http://127.0.0.1:{port}"),
        &shared_2048().public_spki_pem,
        &["doctor"],
    )
    .args(["--format", "json"])
    .run();
    run.expect_code(1);
    let endpoint = finding(&findings(&run), "endpoint").clone();
    assert_eq!(endpoint["status"], "fail");
    assert!(endpoint["hint"].as_str().unwrap().contains("egress"));
}

#[test]
fn doctor_checks_the_irsa_token_on_kubernetes() {
    let emulator = emulator();
    let unreadable = doctor(&emulator)
        .env("KUBERNETES_SERVICE_HOST", "10.100.0.1")
        .env("AWS_ROLE_ARN", "arn:aws:iam::111122223333:role/gate")
        .env("AWS_WEB_IDENTITY_TOKEN_FILE", "/nonexistent/token")
        .run();
    let findings = findings(&unreadable);
    assert_eq!(finding(&findings, "irsa-token")["status"], "fail");
    assert_eq!(finding(&findings, "platform")["status"], "ok");

    let no_irsa = doctor(&emulator)
        .env("KUBERNETES_SERVICE_HOST", "10.100.0.1")
        .run();
    let findings = self::findings(&no_irsa);
    assert_eq!(finding(&findings, "platform")["status"], "warn");
    assert_eq!(finding(&findings, "irsa-token")["status"], "warn");
}

#[test]
fn doctor_text_report_has_one_line_per_check() {
    let emulator = emulator();
    let run = Gate::subcommand(&emulator, "doctor")
        .product("not valid!")
        .run();
    run.expect_code(1);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines[0].starts_with("entitlement-gate doctor 0.1.0"));
    let product = lines.iter().find(|l| l.contains("product-code")).unwrap();
    assert!(product.starts_with("fail "), "{product}");
    assert!(run.stdout.contains("add --call"));
    assert!(
        lines.last().unwrap().ends_with(", 1 failure"),
        "{}",
        run.stdout
    );
}
