//! Fault injection: the emulator misbehaves in every way the network or the service can, and
//! each run must end with its documented exit code. None may exit 0.

mod support;

use metering_emulator::{InjectedError, ResponseFault};
use support::*;

/// The namespace AWS JSON services may put before an error code.
const NAMESPACE: &str = "com.amazonaws.awsmpmeteringservice#";

/// A short deadline: transient faults must end in exit 7 quickly.
const DEADLINE: &str = "1500ms";

fn run_with(edit: impl FnOnce(&mut Config)) -> Finished {
    let emulator = emulator_with(edit);
    Gate::check(&emulator).args(["--deadline", DEADLINE]).run()
}

#[track_caller]
fn expect(label: &str, run: &Finished, code: i32) {
    assert_ne!(
        run.code,
        Some(0),
        "{label}: a fault must never exit 0\n{}",
        run.stderr
    );
    assert_eq!(run.code, Some(code), "{label}:\n{}", run.stderr);
    assert!(
        run.termination_log().is_some(),
        "{label}: no termination log"
    );
}

#[test]
fn http_level_faults_end_with_their_documented_codes() {
    for (fault, code, mention) in [
        (ResponseFault::TruncatedBody, 7, "kept failing"),
        (ResponseFault::MalformedJson, 4, "not its JSON"),
        (ResponseFault::EmptyBody, 4, "without a Signature"),
        (ResponseFault::HugeBody, 4, "more than 65536 bytes"),
        (ResponseFault::HtmlPage, 4, "not its JSON"),
    ] {
        let run = run_with(|c| c.faults.response = Some(fault));
        expect(&format!("{fault:?}"), &run, code);
        assert!(
            run.reason().contains(mention),
            "{fault:?}: {}",
            run.reason()
        );
    }
}

#[test]
fn a_dropped_connection_and_a_slow_answer_are_retried_until_the_deadline() {
    expect(
        "dropped connection",
        &run_with(|c| c.faults.drop_first = u32::MAX),
        7,
    );
    let emulator = emulator_with(|c| c.faults.delay = std::time::Duration::from_secs(5));
    let run = Gate::check(&emulator)
        .args(["--deadline", DEADLINE, "--attempt-timeout", "400ms"])
        .run();
    expect("slower than the attempt timeout", &run, 7);
    assert!(emulator.calls() >= 2, "the slow attempt was not retried");
}

#[test]
fn a_success_without_a_signature_exits_4() {
    expect(
        "no Signature",
        &run_with(|c| c.faults.token = Some(TokenFault::MissingSignature)),
        4,
    );
}

/// Every error code from the facts file, and the credential codes, with their exit codes.
const ERROR_CODES: &[(&str, i32)] = &[
    ("CustomerNotEntitledException", 3),
    ("PlatformNotSupportedException", 5),
    ("InvalidRegionException", 5),
    ("InvalidProductCodeException", 5),
    ("InvalidPublicKeyVersionException", 5),
    ("DisabledApiException", 5),
    ("ThrottlingException", 7),
    ("InternalServiceErrorException", 7),
    ("AccessDeniedException", 6),
    ("UnrecognizedClientException", 6),
    ("ExpiredTokenException", 6),
];

fn error_runs(prefix: &str, header_only: bool) {
    for (code, exit) in ERROR_CODES {
        let injected: InjectedError = format!("{prefix}{code}").parse().unwrap();
        let run = run_with(|c| {
            c.faults.error = Some(injected);
            c.faults.error_in_header_only = header_only;
        });
        let label = format!("{prefix}{code} (header only: {header_only})");
        expect(&label, &run, *exit);
        assert!(
            run.reason().contains(code) || *exit == 3,
            "{label}: the reason does not name {code}: {}",
            run.reason()
        );
    }
}

#[test]
fn every_error_code_in_the_body() {
    error_runs("", false);
}

#[test]
fn every_error_code_in_the_body_with_a_namespace_prefix() {
    error_runs(NAMESPACE, false);
}

#[test]
fn every_error_code_in_the_x_amzn_errortype_header_only() {
    error_runs("", true);
}
