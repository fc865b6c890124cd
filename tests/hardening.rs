//! The red-team pass (issue 8), pinned: every item it found, the real binary against the
//! emulator or a canned HTTP answer. Each test names the item it covers.

mod support;

use std::time::Duration;

use metering_emulator::{StatusBody, StatusFault};
use serde_json::{json, Value};
use support::*;

/// A deadline long enough for a loaded machine, short enough that a hang shows.
const DEADLINE: &str = "5s";

fn json_lines(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
        .collect()
}

// ---- 2. verify binds the handoff to the workload ---------------------------------------------

fn handoff_made_in(emulator: &RunningEmulator, workload: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    Gate::check(emulator)
        .env("ENTITLEMENT_GATE_WORKLOAD_ID", workload)
        .arg("--handoff-dir")
        .arg(dir.path())
        .run()
        .expect_code(0);
    dir
}

#[test]
fn item_2_verify_refuses_a_genuine_handoff_copied_from_another_workload() {
    let emulator = emulator();
    let handoff = handoff_made_in(&emulator, "pod-a");
    Gate::subcommand(&emulator, "verify")
        .env("ENTITLEMENT_GATE_WORKLOAD_ID", "pod-a")
        .env("ENTITLEMENT_GATE_HANDOFF_DIR", handoff.path())
        .run()
        .expect_code(0);
    let copied = Gate::subcommand(&emulator, "verify")
        .env("ENTITLEMENT_GATE_WORKLOAD_ID", "pod-b")
        .env("ENTITLEMENT_GATE_HANDOFF_DIR", handoff.path())
        .args(["--log-format", "json"])
        .run();
    copied.expect_code(4);
    let reason = copied.reason();
    assert!(
        reason.contains("another workload") && reason.contains("ENTITLEMENT_GATE_WORKLOAD_ID"),
        "{reason}"
    );
    assert_eq!(
        json_lines(&copied.stderr).last().unwrap()["reason"],
        "other_workload"
    );
}

#[test]
fn item_2_verify_refuses_a_token_whose_nonce_is_not_workload_bound() {
    let emulator = emulator();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({ "productCode": PAID, "nonce": "n", "publicKeyVersion": 1, "iat": now });
    let token = shared_2048().sign_jwt(&json!({ "alg": "PS256" }), &claims);
    let run = Gate::subcommand(&emulator, "verify")
        .args(["--nonce", "n", "--token", &token])
        .run();
    run.expect_code(4);
    assert!(
        run.reason().contains("not bound to a workload"),
        "{}",
        run.reason()
    );
}

#[test]
fn item_2_on_ecs_the_nonce_is_bound_to_the_task_arn() {
    let emulator = emulator();
    let task = |arn: &str| {
        CannedServer::start(
            "200 OK",
            "application/json",
            &json!({ "Cluster": "c", "TaskARN": arn }).to_string(),
        )
    };
    let this_task = task("arn:aws:ecs:us-east-1:111122223333:task/c/aaaa");
    let other_task = task("arn:aws:ecs:us-east-1:111122223333:task/c/bbbb");
    let on_ecs = |gate: Gate, metadata: &CannedServer| {
        gate.env_remove("ENTITLEMENT_GATE_WORKLOAD_ID")
            .env("ECS_CONTAINER_METADATA_URI_V4", metadata.url())
    };
    let handoff = tempfile::tempdir().unwrap();
    let run = on_ecs(Gate::check(&emulator), &this_task)
        .arg("--handoff-dir")
        .arg(handoff.path())
        .run();
    run.expect_code(0);
    assert!(run.stderr.contains("the ECS task ARN"), "{}", run.stderr);
    assert_eq!(
        run.handoff_in(handoff.path()).unwrap()["workloadIdSource"],
        "ecs-task-arn"
    );
    on_ecs(Gate::subcommand(&emulator, "verify"), &this_task)
        .env("ENTITLEMENT_GATE_HANDOFF_DIR", handoff.path())
        .run()
        .expect_code(0);
    on_ecs(Gate::subcommand(&emulator, "verify"), &other_task)
        .env("ENTITLEMENT_GATE_HANDOFF_DIR", handoff.path())
        .run()
        .expect_code(4);
}

// ---- 3. transient HTTP failures without an AWS error code ------------------------------------

#[test]
fn item_3_a_bare_5xx_or_429_is_retried_until_the_deadline_and_named() {
    for (status, body) in [
        (500, StatusBody::Empty),
        (500, StatusBody::Text),
        (502, StatusBody::Html),
        (503, StatusBody::Message),
        (504, StatusBody::Empty),
        (429, StatusBody::Empty),
    ] {
        let emulator = emulator_with(|c| c.faults.status = Some(StatusFault { status, body }));
        let run = Gate::check(&emulator).args(["--deadline", "2s"]).run();
        let label = format!("{status} {body:?}");
        assert_eq!(run.code, Some(7), "{label}: {}", run.stderr);
        let reason = run.reason();
        assert!(
            reason.contains(&format!("HTTP {status}")),
            "{label}: {reason}"
        );
        assert!(!reason.contains("public key"), "{label}: {reason}");
        assert!(emulator.calls() >= 2, "{label}: not retried");
    }
}

#[test]
fn item_3_a_redirect_or_an_undocumented_4xx_is_exit_1_not_a_token_failure() {
    let redirect = CannedServer::start("302 Found", "text/html", "<a href=\"/login\">login</a>");
    let not_found = CannedServer::start("404 Not Found", "text/html", "<h1>no such page</h1>");
    for server in [&redirect, &not_found] {
        let run = Gate::against(&server.url(), &shared_2048().public_spki_pem, &["check"]).run();
        run.expect_code(1);
        let reason = run.reason();
        assert!(reason.contains("does not document"), "{reason}");
        assert!(!reason.contains("public key"), "{reason}");
        assert_eq!(server.hits(), 1, "an undocumented answer is not retried");
    }
    let bad_request = emulator_with(|c| {
        c.faults.status = Some(StatusFault {
            status: 400,
            body: StatusBody::Message,
        })
    });
    Gate::check(&bad_request).run().expect_code(1);
}

// ---- 4. the last attempt is not starved ------------------------------------------------------

#[test]
fn item_4_the_last_attempt_gets_its_share_and_the_services_error_is_kept() {
    let emulator = emulator_with(|c| {
        c.faults.fail_first = u32::MAX;
        c.faults.delay = Duration::from_millis(300);
    });
    let run = Gate::check(&emulator).args(["--deadline", "1s"]).run();
    run.expect_code(7);
    let reason = run.reason();
    assert!(reason.contains("InternalServiceErrorException"), "{reason}");
    assert!(!reason.contains("no answer within"), "{reason}");
    let retries = run.stderr.matches("retrying").count() as u64;
    assert_eq!(
        retries + 1,
        emulator.calls(),
        "every logged retry happened, and no other: {}",
        run.stderr
    );
}

// ---- 6. nothing named by the configuration can hang the run ----------------------------------

#[test]
fn item_6_fifos_named_by_the_configuration_are_refused_without_blocking() {
    let emulator = emulator();
    let fifo_dir = tempfile::tempdir().unwrap();
    let fifo = fifo_dir.path().join("fifo");
    mkfifo(&fifo);
    // Each would block forever on open or read; each must end as a configuration error instead
    // of running into the deadline (exit 7).
    let cases = [
        (
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            Gate::check(&emulator)
                .env_remove("AWS_ACCESS_KEY_ID")
                .env_remove("AWS_SECRET_ACCESS_KEY")
                .env("AWS_ROLE_ARN", "arn:aws:iam::111122223333:role/gate")
                .env("AWS_WEB_IDENTITY_TOKEN_FILE", &fifo),
        ),
        (
            "AWS_CONFIG_FILE",
            Gate::check(&emulator).env("AWS_CONFIG_FILE", &fifo),
        ),
        (
            "ENTITLEMENT_GATE_PUBLIC_KEY_FILE",
            Gate::check(&emulator).env("ENTITLEMENT_GATE_PUBLIC_KEY_FILE", &fifo),
        ),
    ];
    for (variable, gate) in cases {
        let run = gate.args(["--deadline", DEADLINE]).run();
        assert_eq!(run.code, Some(2), "{variable}: {}", run.stderr);
        let reason = run.reason();
        assert!(reason.contains("FIFO"), "{variable}: {reason}");
    }
    let verify = Gate::subcommand(&emulator, "verify")
        .arg("--handoff")
        .arg(&fifo)
        .run();
    verify.expect_code(4);
    assert!(verify.reason().contains("FIFO"), "{}", verify.reason());
    assert_eq!(emulator.calls(), 0);
}

#[test]
fn item_6_a_fifo_as_termination_log_does_not_hold_the_run() {
    let emulator = emulator();
    let gate = Gate::check(&emulator).product(UNPAID);
    let fifo = gate.path("termination-fifo");
    mkfifo(&fifo);
    let run = gate
        .env("ENTITLEMENT_GATE_TERMINATION_LOG", &fifo)
        .args(["--deadline", DEADLINE])
        .run();
    run.expect_code(3);
    assert!(
        run.stderr.contains("cannot write the termination log"),
        "{}",
        run.stderr
    );
}

#[test]
fn item_6_the_watchdog_ends_a_run_stuck_in_a_blocking_read() {
    // verify with nothing to check reads a token from stdin: a pipe that never closes blocks
    // that read, and with it the async runtime, so only the runtime-free watchdog can end it.
    let emulator = emulator();
    let (running, stdin) = Gate::subcommand(&emulator, "verify")
        .args(["--nonce", "n", "--deadline", "1s"])
        .spawn_with_open_stdin();
    let run = running.wait();
    drop(stdin);
    run.expect_code(7);
    let reason = run.reason();
    assert!(
        reason.contains("1 s deadline passed while reading the configuration"),
        "{reason}"
    );
}

#[test]
fn item_6_sigterm_is_honoured_within_a_second_while_a_read_blocks() {
    let emulator = emulator();
    let (running, stdin) = Gate::subcommand(&emulator, "verify")
        .args(["--nonce", "n", "--deadline", "60s"])
        .spawn_with_open_stdin();
    let log = running.dir.path().join("termination-log");
    running.wait_for_signal_handlers();
    running.signal(libc::SIGTERM);
    let run = running.wait();
    drop(stdin);
    run.expect_code(8);
    assert!(
        run.elapsed < Duration::from_secs(1),
        "took {:?}",
        run.elapsed
    );
    assert!(std::fs::read_to_string(log).unwrap().contains("SIGTERM"));
}

// ---- 7. every read is bounded ----------------------------------------------------------------

/// A sparse file of `size` bytes: huge on paper, free on disk.
fn sparse_file(dir: &std::path::Path, name: &str, size: u64) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path).unwrap().set_len(size).unwrap();
    path
}

#[test]
fn item_7_endless_and_huge_files_are_refused_without_reading_them() {
    let emulator = emulator();
    let scratch = tempfile::tempdir().unwrap();
    let huge_key = sparse_file(scratch.path(), "key.pem", 200 << 20);
    for (key, mention) in [
        (std::path::PathBuf::from("/dev/zero"), "character device"),
        (huge_key, "larger than 65536 bytes"),
    ] {
        let run = Gate::check(&emulator)
            .env("ENTITLEMENT_GATE_PUBLIC_KEY_FILE", &key)
            .run();
        run.expect_code(2);
        assert!(run.reason().contains(mention), "{}", run.reason());
    }
    let huge_handoff = sparse_file(scratch.path(), "entitlement.json", 200 << 20);
    for (handoff, mention) in [
        (std::path::PathBuf::from("/dev/zero"), "character device"),
        (huge_handoff, "larger than 65536 bytes"),
    ] {
        let run = Gate::subcommand(&emulator, "verify")
            .arg("--handoff")
            .arg(&handoff)
            .run();
        run.expect_code(4);
        assert!(run.reason().contains(mention), "{}", run.reason());
    }
    assert_eq!(emulator.calls(), 0);
}

// ---- 8. durations have a ceiling -------------------------------------------------------------

#[test]
fn item_8_a_huge_deadline_is_a_configuration_error() {
    let emulator = emulator();
    let by_flag = Gate::check(&emulator)
        .args(["--deadline", "18446744073709551615s"])
        .run();
    by_flag.expect_code(2);
    assert!(
        by_flag.reason().contains("24h maximum"),
        "{}",
        by_flag.reason()
    );
    let by_env = Gate::check(&emulator)
        .env("ENTITLEMENT_GATE_DEADLINE", "25h")
        .run();
    by_env.expect_code(2);
    assert!(by_env.reason().contains("ENTITLEMENT_GATE_DEADLINE"));
    assert_eq!(emulator.calls(), 0);
}

// ---- 9. a broken stderr never decides the exit code ------------------------------------------

#[test]
fn item_9_a_full_stderr_never_decides_the_exit_code() {
    let emulator = emulator();
    let full = || std::fs::File::create("/dev/full").expect("/dev/full");
    Gate::check(&emulator)
        .stderr_to(full())
        .run()
        .expect_code(0);
    let refused = Gate::check(&emulator)
        .product(UNPAID)
        .stderr_to(full())
        .run();
    refused.expect_code(3);
    assert!(refused.termination_log().unwrap().contains("subscribe"));
    Gate::check(&emulator)
        .arg("--bogus")
        .stderr_to(full())
        .run()
        .expect_code(2);
}

// ---- 10, 11, 12, 13. the handoff and the termination log -------------------------------------

#[test]
fn item_10_a_symlink_planted_at_the_handoff_is_replaced_and_its_target_left_alone() {
    let emulator = emulator();
    let gate = Gate::check(&emulator);
    let dir = gate.dir.path().to_owned();
    let precious = dir.join("precious");
    std::fs::write(&precious, "keep me").unwrap();
    std::os::unix::fs::symlink(&precious, dir.join("entitlement.json")).unwrap();
    let run = gate.arg("--handoff-dir").arg(&dir).run();
    run.expect_code(0);
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
    let handoff = std::fs::symlink_metadata(dir.join("entitlement.json")).unwrap();
    assert!(
        handoff.file_type().is_file(),
        "the handoff is a regular file"
    );
}

#[test]
fn item_11_the_termination_log_is_never_written_through_a_symlink() {
    let emulator = emulator();
    let gate = Gate::check(&emulator).product(UNPAID);
    let precious = gate.path("precious");
    std::fs::write(&precious, "keep me").unwrap();
    let link = gate.path("planted-log");
    std::os::unix::fs::symlink(&precious, &link).unwrap();
    let run = gate.env("ENTITLEMENT_GATE_TERMINATION_LOG", &link).run();
    run.expect_code(3);
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
    assert!(run.stderr.contains("symbolic link"), "{}", run.stderr);
}

#[test]
fn item_12_usage_and_configuration_errors_remove_a_stale_handoff_but_verify_never_does() {
    let emulator = emulator();
    let stale = |gate: &Gate| {
        let path = gate.path("entitlement.json");
        std::fs::write(&path, "{\"from\": \"an earlier run\"}").unwrap();
        path
    };
    let cases: Vec<(&str, Gate)> = vec![
        (
            "usage error",
            Gate::check(&emulator).args(["--deadline", "soon"]),
        ),
        (
            "configuration error",
            Gate::check(&emulator).env_remove("ENTITLEMENT_GATE_PRODUCT_CODE"),
        ),
        (
            "exec usage error",
            Gate::subcommand(&emulator, "exec").arg("--bogus"),
        ),
    ];
    for (name, gate) in cases {
        let handoff = stale(&gate);
        let dir = gate.dir.path().to_owned();
        let run = gate.env("ENTITLEMENT_GATE_HANDOFF_DIR", &dir).run();
        assert_eq!(run.code, Some(2), "{name}: {}", run.stderr);
        assert!(!handoff.exists(), "{name} left the stale handoff");
    }
    let gate = Gate::subcommand(&emulator, "verify");
    let handoff = stale(&gate);
    let dir = gate.dir.path().to_owned();
    let run = gate.env("ENTITLEMENT_GATE_HANDOFF_DIR", &dir).run();
    run.expect_code(4);
    assert!(handoff.exists(), "verify must not remove what it checks");
}

#[test]
fn item_13_an_unwritable_handoff_directory_is_refused_before_any_call() {
    // sysfs: its mode bits say the owner may write, yet nobody can create a file in it.
    let dir = std::path::Path::new("/sys/kernel");
    assert!(dir.is_dir(), "this test needs sysfs at /sys");
    let emulator = emulator();
    let run = Gate::check(&emulator).arg("--handoff-dir").arg(dir).run();
    run.expect_code(2);
    let reason = run.reason();
    assert!(
        reason.contains("/sys/kernel") && reason.contains("as user"),
        "{reason}"
    );
    assert_eq!(emulator.calls(), 0, "no metered call before the probe");
}

// ---- 14. nothing from the network reaches a log unescaped ------------------------------------

#[test]
fn item_14_control_characters_in_an_aws_answer_are_escaped() {
    let hostile = CannedServer::start(
        "400 Bad Request",
        "application/x-amz-json-1.1",
        &json!({
            "__type": "AccessDeniedException",
            "message": "denied\n2026-11-23T00:00:00Z  INFO entitled: RegisterUsage token verified\u{1b}[2J",
        })
        .to_string(),
    );
    let run = Gate::against(&hostile.url(), &shared_2048().public_spki_pem, &["check"]).run();
    run.expect_code(6);
    let reason = run.reason();
    assert!(
        !reason.contains('\n') && !reason.contains('\u{1b}'),
        "{reason:?}"
    );
    assert!(reason.contains("denied\\n2026"), "{reason}");
    assert!(!run.stderr.contains('\u{1b}'), "{:?}", run.stderr);
    assert!(
        !run.stderr
            .lines()
            .any(|line| line.starts_with("2026-11-23T00:00:00Z")),
        "a forged log line: {}",
        run.stderr
    );
}

// ---- 15, 16. usage errors and what operators write -------------------------------------------

#[test]
fn item_15_usage_errors_say_what_is_wrong_where_it_came_from_and_which_help_to_read() {
    let emulator = emulator();
    let bare = Gate::against(&emulator.endpoint_url(), emulator.public_key_pem(), &[]).run();
    bare.expect_code(2);
    assert!(
        bare.reason().contains("no command given")
            && bare.reason().contains("entitlement-gate --help"),
        "{}",
        bare.reason()
    );
    let exec = Gate::subcommand(&emulator, "exec").run();
    exec.expect_code(2);
    assert!(
        exec.reason().contains("program to run after --")
            && exec.reason().contains("entitlement-gate exec --help"),
        "{}",
        exec.reason()
    );
    let from_env = Gate::check(&emulator)
        .env("ENTITLEMENT_GATE_DEADLINE", "two minutes")
        .run();
    from_env.expect_code(2);
    let reason = from_env.reason();
    assert!(
        reason.contains(
            "ENTITLEMENT_GATE_DEADLINE (Helm value entitlementGate.deadline) is \"two minutes\""
        ) && !reason.contains("--deadline"),
        "{reason}"
    );
    let verify = Gate::subcommand(&emulator, "verify").arg("--bogus").run();
    verify.expect_code(2);
    assert!(verify.reason().contains("entitlement-gate verify --help"));
    // --termination-log given as a flag is honoured even when parsing fails.
    let gate = Gate::check(&emulator).env_remove("ENTITLEMENT_GATE_TERMINATION_LOG");
    let log = gate.path("flag-log");
    let run = gate.arg("--termination-log").arg(&log).arg("--bogus").run();
    run.expect_code(2);
    assert!(std::fs::read_to_string(&log).unwrap().contains("--bogus"));
}

#[test]
fn item_16_durations_as_operators_write_them_and_pem_text_as_a_flag_value() {
    let emulator = emulator();
    Gate::check(&emulator)
        .args(["--deadline", "1m30s", "--retry-base", "1.5s"])
        .run()
        .expect_code(0);
    Gate::check(&emulator)
        .env("ENTITLEMENT_GATE_DEADLINE", "2min")
        .run()
        .expect_code(0);
    Gate::check(&emulator)
        .env_remove("ENTITLEMENT_GATE_PUBLIC_KEY_FILE")
        .args(["--public-key", emulator.public_key_pem()])
        .run()
        .expect_code(0);
}

// ---- 17, 18, 19. what the operator and the log pipeline read ---------------------------------

#[test]
fn item_17_no_credentials_says_irsa_is_not_configured() {
    let emulator = emulator();
    let run = Gate::check(&emulator)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .run();
    run.expect_code(6);
    let reason = run.reason();
    assert!(reason.contains("IRSA is not configured"), "{reason}");
    assert!(!reason.contains("trust policy"), "{reason}");
}

#[test]
fn item_18_the_sdks_own_warnings_stay_quiet_unless_asked_for() {
    let emulator = emulator();
    let gate = Gate::check(&emulator);
    let broken = gate.path("aws-config");
    std::fs::write(&broken, "[default\nregion=").unwrap();
    let quiet = gate.run();
    quiet.expect_code(0);
    assert!(!quiet.stderr.contains("profile"), "{}", quiet.stderr);
    let gate = Gate::check(&emulator).env("ENTITLEMENT_GATE_LOG", "info,aws=warn");
    std::fs::write(gate.path("aws-config"), "[default\nregion=").unwrap();
    let raised = gate.run();
    raised.expect_code(0);
    assert!(
        raised.stderr.contains("failed to parse profile"),
        "{}",
        raised.stderr
    );
}

#[test]
fn item_19_json_logs_end_with_exit_code_reason_and_request_id() {
    let emulator = emulator();
    let last_line = |gate: Gate, code: i32| {
        let run = gate.args(["--log-format", "json"]).run();
        run.expect_code(code);
        json_lines(&run.stderr).pop().unwrap()
    };
    let refused = last_line(Gate::check(&emulator).product(UNPAID), 3);
    assert_eq!(refused["exit_code"], 3);
    assert_eq!(refused["reason"], "not_entitled");
    assert!(
        refused["request_id"]
            .as_str()
            .unwrap()
            .starts_with("emulated-"),
        "{refused}"
    );
    let entitled = last_line(Gate::check(&emulator), 0);
    assert_eq!(entitled["exit_code"], 0);
    assert_eq!(entitled["reason"], "entitled");
    assert!(entitled["request_id"].is_string(), "{entitled}");
    let throttled = emulator_with(|c| c.faults.throttle_first = u32::MAX);
    let last = last_line(Gate::check(&throttled).args(["--deadline", "1s"]), 7);
    assert_eq!(last["reason"], "throttled");
    let usage = last_line(Gate::check(&emulator).arg("--bogus"), 2);
    assert_eq!(usage["reason"], "usage");
}

// ---- 20. exec finds its program first ---------------------------------------------------------

#[test]
fn item_20_exec_checks_the_program_before_any_metered_call() {
    let emulator = emulator();
    let scratch = tempfile::tempdir().unwrap();
    let not_executable = scratch.path().join("data");
    std::fs::write(&not_executable, "not a program").unwrap();
    let not_executable = not_executable.to_str().unwrap();
    for program in [
        "/nonexistent/app",
        "no-such-program-on-path",
        not_executable,
    ] {
        let run = Gate::subcommand(&emulator, "exec")
            .args(["--", program])
            .run();
        run.expect_code(2);
        assert!(run.reason().contains(program), "{}", run.reason());
    }
    assert_eq!(emulator.calls(), 0, "a typo must cost no metered call");
}

// ---- 21. doctor ------------------------------------------------------------------------------

#[test]
fn item_21_doctor_probes_through_the_proxy_the_sdk_would_use() {
    let emulator = emulator();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = format!("http://127.0.0.1:{closed}");
    let endpoint = |gate: Gate| {
        let run = gate.args(["--format", "json"]).run();
        let report: Value = serde_json::from_str(&run.stdout).unwrap();
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["check"] == "endpoint")
            .unwrap()
            .clone()
    };
    let through_proxy = endpoint(Gate::subcommand(&emulator, "doctor").env("HTTP_PROXY", &proxy));
    assert_eq!(through_proxy["status"], "fail", "{through_proxy}");
    assert!(
        through_proxy["detail"]
            .as_str()
            .unwrap()
            .contains("via proxy"),
        "{through_proxy}"
    );
    let bypassed = endpoint(
        Gate::subcommand(&emulator, "doctor")
            .env("HTTP_PROXY", &proxy)
            .env("NO_PROXY", "127.0.0.1"),
    );
    assert_eq!(bypassed["status"], "ok", "{bypassed}");
}
