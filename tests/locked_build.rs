//! A locked build calls AWS's own endpoints only: every way the AWS SDK can be given another
//! Marketplace Metering, License Manager or STS endpoint (variables, the AWS config and
//! credentials files, the active profile and the services section it names) is refused by every
//! command that calls AWS, before any call, while an open build follows each of them.
//!
//! The commands run in-process with a locked build's trust anchors passed in (the test binary
//! is an open build), against the in-process emulator whose counters prove that nothing reached
//! it. The SDK reads the process environment, so the runs here take turns with it. The locked
//! static binary runs the same refusals in `.ci/static-check.sh`.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use entitlement_gate::aws::endpoint::Pinning;
use entitlement_gate::aws::retry::{Backoff, RetryPolicy};
use entitlement_gate::doctor::{self, DoctorRequest, Status};
use entitlement_gate::domain::key::KeyRequest;
use entitlement_gate::domain::license::CheckoutType;
use entitlement_gate::domain::time::SystemClock;
use entitlement_gate::domain::trust::TrustAnchors;
use entitlement_gate::gate::check::{self, CheckConfig, Progress};
use entitlement_gate::license::watch::{self, WatchConfig};
use entitlement_gate::license::{self, LicenseConfig, OnLoss};
use entitlement_gate::meter::billing::Rounding;
use entitlement_gate::meter::period::Period;
use entitlement_gate::meter::{self, MeterConfig};
use entitlement_gate::outcome::{self, GateError};
use metering_emulator::{LicenseSpec, Operation, RefreshToken};
use support::*;

const SEATS: &str = "prod-seats";
const ROLE: &str = "arn:aws:iam::111122223333:role/buyer-license";
const REFRESH_TOKEN: &str = "buyer-license-token";

/// The SDK reads the process environment: one run at a time sets it.
static ENVIRONMENT: Mutex<()> = Mutex::new(());

/// The process environment of one run: no AWS or gate variable but these, the AWS files in a
/// directory of its own; the next run waits until this one is dropped.
struct Environment {
    dir: tempfile::TempDir,
    _turn: MutexGuard<'static, ()>,
}

impl Environment {
    fn new(vars: &[(&str, String)], files: &[(&str, &str)]) -> Environment {
        let turn = ENVIRONMENT.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("AWS_") || name.starts_with("ENTITLEMENT_GATE_") {
                std::env::remove_var(&*name);
            }
        }
        for name in ["config", "credentials"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let base = [
            (
                "AWS_CONFIG_FILE",
                dir.path().join("config").display().to_string(),
            ),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                dir.path().join("credentials").display().to_string(),
            ),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG".to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("ENTITLEMENT_GATE_WORKLOAD_ID", WORKLOAD.to_owned()),
        ];
        for (name, value) in base
            .iter()
            .map(|(n, v)| (*n, v))
            .chain(vars.iter().map(|(n, v)| (*n, v)))
        {
            std::env::set_var(name, value);
        }
        Environment { dir, _turn: turn }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// One way of pointing the SDK elsewhere, and what the refusal must name.
struct Way {
    what: &'static str,
    vars: Vec<(&'static str, String)>,
    files: Vec<(&'static str, String)>,
    named: &'static str,
    /// The operation an open build then sends to the emulator.
    reaches: Operation,
}

/// Every way the SDK takes another endpoint for a service the gate calls, pointing at `url`.
fn ways(url: &str) -> Vec<Way> {
    let var = |what, name, reaches| Way {
        what,
        vars: vec![(name, url.to_owned())],
        files: Vec::new(),
        named: name,
        reaches,
    };
    let services = |what, key, reaches| Way {
        what,
        vars: Vec::new(),
        files: vec![(
            "config",
            format!(
                "[default]\nservices = local\n[services local]\n{key} =\n  endpoint_url = {url}\n"
            ),
        )],
        named: "services section \"local\"",
        reaches,
    };
    vec![
        var(
            "Metering's variable",
            "AWS_ENDPOINT_URL_MARKETPLACE_METERING",
            Operation::RegisterUsage,
        ),
        var(
            "License Manager's variable",
            "AWS_ENDPOINT_URL_LICENSE_MANAGER",
            Operation::CheckoutLicense,
        ),
        var(
            "STS's variable",
            "AWS_ENDPOINT_URL_STS",
            Operation::AssumeRoleWithWebIdentity,
        ),
        var(
            "the global variable",
            "AWS_ENDPOINT_URL",
            Operation::RegisterUsage,
        ),
        Way {
            what: "endpoint_url in the config file's default profile",
            vars: Vec::new(),
            files: vec![("config", format!("[default]\nendpoint_url = {url}\n"))],
            named: "sets endpoint_url in profile \"default\"",
            reaches: Operation::RegisterUsage,
        },
        Way {
            what: "endpoint_url in the profile AWS_PROFILE names",
            vars: vec![("AWS_PROFILE", "buyer".to_owned())],
            files: vec![(
                "config",
                format!("[default]\n[profile buyer]\nendpoint_url = {url}\n"),
            )],
            named: "profile \"buyer\"",
            reaches: Operation::RegisterUsage,
        },
        Way {
            what: "endpoint_url in the credentials file",
            vars: Vec::new(),
            files: vec![("credentials", format!("[default]\nendpoint_url = {url}\n"))],
            named: "the AWS credentials file",
            reaches: Operation::RegisterUsage,
        },
        services(
            "Metering in a services section",
            "marketplace-metering",
            Operation::RegisterUsage,
        ),
        services(
            "License Manager in a services section",
            "license-manager",
            Operation::CheckoutLicense,
        ),
        services(
            "STS in a services section",
            "sts",
            Operation::AssumeRoleWithWebIdentity,
        ),
    ]
}

/// A locked build's anchors: the emulator's key embedded, the test products trusted.
fn locked(emulator: &RunningEmulator) -> TrustAnchors {
    let pem: &'static str = emulator.public_key_pem().to_owned().leak();
    TrustAnchors {
        product_codes: Some(&[PAID, SEATS]),
        keys: Box::leak(Box::new([(1, pem)])),
    }
}

const RETRY: RetryPolicy = RetryPolicy {
    attempt_timeout: Duration::from_secs(5),
    backoff: Backoff {
        base: Duration::from_millis(100),
        cap: Duration::from_millis(400),
    },
};
const DEADLINE: Duration = Duration::from_secs(20);

/// The commands that call AWS, as the binary runs them (`exec` is `check`, then the program).
#[derive(Debug, Clone, Copy)]
enum Command {
    Check,
    Meter,
    LicenseCheck,
    LicenseWatch,
    DoctorCall,
}

const COMMANDS: [Command; 5] = [
    Command::Check,
    Command::Meter,
    Command::LicenseCheck,
    Command::LicenseWatch,
    Command::DoctorCall,
];

fn check_config(anchors: &TrustAnchors, emulator: &RunningEmulator, dir: &Path) -> CheckConfig {
    let runtime_key = (!anchors.is_locked()).then(|| emulator.public_key_pem().to_owned());
    CheckConfig {
        product_code: anchors.product_code(Some(PAID)).unwrap(),
        key: anchors
            .verifying_key(&KeyRequest {
                version: 1,
                file: None,
                pem: runtime_key,
            })
            .unwrap(),
        deadline: DEADLINE,
        retry: RETRY,
        handoff_dir: Some(dir.to_owned()),
        region_override: None,
        pinning: Pinning::of(anchors),
    }
}

fn license_config(anchors: &TrustAnchors, dir: &Path) -> LicenseConfig {
    LicenseConfig {
        product_id: anchors.product_code(Some(SEATS)).unwrap(),
        entitlements: vec!["Seats=1:Count".parse().unwrap()],
        checkout_type: CheckoutType::Provisional,
        node_id: Some(WORKLOAD.to_owned()),
        handoff_dir: Some(dir.to_owned()),
        deadline: DEADLINE,
        retry: RETRY,
        region_override: None,
        pinning: Pinning::of(anchors),
    }
}

/// Runs `command` to its end (a sidecar is stopped as soon as it is ready).
async fn run(
    command: Command,
    anchors: &TrustAnchors,
    emulator: &RunningEmulator,
    env: &Environment,
) -> Result<(), GateError> {
    let handoff = env.path("handoff");
    std::fs::create_dir_all(&handoff).unwrap();
    let socket = |name: &str| {
        format!("unix:{}", env.path(name).display())
            .parse()
            .unwrap()
    };
    match command {
        Command::Check => {
            check::run(
                &check_config(anchors, emulator, &handoff),
                &Progress::default(),
            )
            .await?;
        }
        Command::Meter => {
            let config = MeterConfig {
                product_code: anchors.product_code(Some(PAID)).unwrap(),
                dimensions: ["requests".to_owned()].into(),
                listen: socket("meter.sock"),
                state_dir: env.path("state"),
                period: Period::HOUR,
                send_zero: false,
                id_window: Duration::from_secs(3600),
                final_fraction: Rounding::Down,
                state_budget: 1 << 30,
                shutdown_grace: DEADLINE,
                drain: Duration::ZERO,
                deadline: DEADLINE,
                retry: RETRY,
                region_override: None,
                pinning: Pinning::of(anchors),
            };
            std::fs::create_dir_all(&config.state_dir).unwrap();
            let sidecar = meter::start(&config, Arc::new(SystemClock)).await?;
            sidecar.run_until(std::future::ready("SIGTERM")).await?;
        }
        Command::LicenseCheck => {
            license::check::run(&license_config(anchors, &handoff), &SystemClock).await?;
        }
        Command::LicenseWatch => {
            let config = WatchConfig {
                license: license_config(anchors, &handoff),
                interval: Duration::from_secs(900),
                on_loss: OnLoss::Exit,
                loss_grace: Duration::from_secs(60),
                listen: socket("watch.sock"),
                shutdown_grace: DEADLINE,
            };
            let watch = watch::start(&config, Arc::new(SystemClock)).await?;
            watch.run_until(std::future::ready("SIGTERM")).await?;
        }
        Command::DoctorCall => {
            doctor::run(&doctor_request(emulator, anchors, true), anchors)
                .await
                .map_err(GateError::EndpointOverridden)?;
        }
    }
    Ok(())
}

fn doctor_request(emulator: &RunningEmulator, anchors: &TrustAnchors, call: bool) -> DoctorRequest {
    DoctorRequest {
        product_code: Some(PAID.to_owned()),
        key: KeyRequest {
            version: 1,
            file: None,
            pem: (!anchors.is_locked()).then(|| emulator.public_key_pem().to_owned()),
        },
        region_override: None,
        deadline: DEADLINE,
        retry: RETRY,
        handoff_dir: None,
        probe_timeout: Duration::from_secs(2),
        call,
        meter: None,
        license: None,
    }
}

fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

fn license_emulator() -> RunningEmulator {
    emulator_with(|config| {
        config.licenses = vec![LicenseSpec::floating(SEATS, "Seats", 10)];
        config.refresh_tokens = vec![RefreshToken::new(REFRESH_TOKEN)];
        config.buyer_roles = [ROLE.to_owned()].into();
    })
}

#[test]
fn a_locked_build_refuses_every_endpoint_override_in_every_command_before_any_call() {
    let emulator = license_emulator();
    let anchors = locked(&emulator);
    for way in ways(&emulator.endpoint_url()) {
        for command in COMMANDS {
            let files: Vec<(&str, &str)> =
                way.files.iter().map(|(n, t)| (*n, t.as_str())).collect();
            let env = Environment::new(&way.vars, &files);
            let error = block_on(run(command, &anchors, &emulator, &env))
                .expect_err(&format!("{command:?} with {}", way.what));
            let report = outcome::report(&error);
            assert_eq!(
                (report.exit_code, report.reason),
                (2, "endpoint_overridden"),
                "{command:?} with {}: {}",
                way.what,
                report.message
            );
            assert!(
                report.message.starts_with("Configuration error: ")
                    && report.message.contains(way.named)
                    && report.message.contains("locked build"),
                "{command:?} with {}: {}",
                way.what,
                report.message
            );
            assert_eq!(emulator.calls(), 0, "{command:?} with {} called", way.what);
        }
    }
}

#[test]
fn a_locked_doctor_without_call_reports_an_override_as_a_failed_check_and_calls_nothing() {
    let emulator = emulator();
    let anchors = locked(&emulator);
    let env = Environment::new(&[("AWS_ENDPOINT_URL_STS", emulator.endpoint_url())], &[]);
    let mut diagnosis = block_on(doctor::run(
        &doctor_request(&emulator, &anchors, false),
        &anchors,
    ))
    .unwrap();
    diagnosis.explain(|failure| outcome::report(&GateError::from(failure)).message);
    let finding = |name: &str| {
        diagnosis
            .checks
            .iter()
            .find(|finding| finding.check == name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", diagnosis.checks))
    };
    assert_eq!(finding("endpoints").status, Status::Fail);
    assert!(
        finding("endpoints")
            .detail
            .contains("AWS_ENDPOINT_URL_STS is set"),
        "{:?}",
        finding("endpoints")
    );
    // Resolving credentials could call STS there (IRSA's web identity exchange): not done.
    assert_eq!(finding("credentials").status, Status::Fail);
    assert_eq!(outcome::doctor_exit_code(&diagnosis), 1);
    assert_eq!(emulator.calls(), 0);
    drop(env);

    // Without an override the locked build says where its calls go.
    let _env = Environment::new(&[], &[]);
    let diagnosis = block_on(doctor::run(
        &doctor_request(&emulator, &anchors, false),
        &anchors,
    ))
    .unwrap();
    let endpoints = diagnosis
        .checks
        .iter()
        .find(|f| f.check == "endpoints")
        .unwrap();
    assert_eq!(endpoints.status, Status::Ok);
    assert!(endpoints.detail.contains("locked build"), "{endpoints:?}");
}

#[test]
fn an_open_build_follows_every_override_the_refusal_names() {
    for way in ways("EMULATOR") {
        let emulator = license_emulator();
        let url = emulator.endpoint_url();
        let mut vars: Vec<(&str, String)> = way
            .vars
            .iter()
            .map(|(name, value)| (*name, value.replace("EMULATOR", &url)))
            .collect();
        let files: Vec<(&str, String)> = way
            .files
            .iter()
            .map(|(name, text)| (*name, text.replace("EMULATOR", &url)))
            .collect();
        let anywhere = way.reaches == Operation::AssumeRoleWithWebIdentity;
        let command = match way.reaches {
            Operation::RegisterUsage => Command::Check,
            // STS is called on the Anywhere path, after License Manager's GetAccessToken: its
            // variable (which the SDK takes over any file) points at the emulator too.
            _ => {
                if anywhere {
                    vars.push(("AWS_ENDPOINT_URL_LICENSE_MANAGER", url.clone()));
                }
                Command::LicenseCheck
            }
        };
        let file_refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
        let env = Environment::new(&vars, &file_refs);
        if anywhere {
            std::env::remove_var("AWS_ACCESS_KEY_ID");
            std::env::remove_var("AWS_SECRET_ACCESS_KEY");
            let token = env.path("license_token");
            std::fs::write(&token, REFRESH_TOKEN).unwrap();
            std::fs::write(env.path("iam_role"), ROLE).unwrap();
            std::env::set_var("AWS_LICENSE_ACCESS_FILE", &token);
        }
        let result = block_on(run(command, &TrustAnchors::OPEN, &emulator, &env));
        assert!(
            result.is_ok(),
            "{} ({command:?}): {}",
            way.what,
            result.map_or_else(|e| outcome::report(&e).message, |()| String::new())
        );
        assert_eq!(emulator.calls_to(way.reaches), 1, "{}", way.what);
    }
}
