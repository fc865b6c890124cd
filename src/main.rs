//! `entitlement-gate`: supervise, parse, log, run the command, report. The logic lives in the
//! library; this binary owns the command line and the process.

mod cli;

use std::ffi::OsString;
use std::future::Future;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use entitlement_gate::aws::endpoint::{self, Service};
use entitlement_gate::aws::workload;
use entitlement_gate::doctor;
use entitlement_gate::domain::handoff;
use entitlement_gate::domain::license as license_file;
use entitlement_gate::domain::quantity::Micros;
use entitlement_gate::domain::time::SystemClock;
use entitlement_gate::gate::check::{self, Phase, Progress};
use entitlement_gate::gate::verify::{Evidence, Requirements, VerifyError};
use entitlement_gate::license;
use entitlement_gate::meter;
use entitlement_gate::outcome::{self, GateError};

use cli::args::{ExecArgs, LicenseWatchArgs, MeterArgs, ReportFormat, VerifyArgs};
use cli::supervisor::{SignalPolicy, Supervisor};
use cli::{
    exec, logging, usage, Cli, Command, LicenseCommand, LogFormat, ANCHORS, DEFAULT_TERMINATION_LOG,
};

/// How long the ECS task metadata endpoint may take when `verify` resolves the workload.
const TASK_METADATA_TIMEOUT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    // First: until this runs, SIGTERM kills the process without a word.
    let supervisor = Supervisor::install();
    let args: Vec<OsString> = std::env::args_os().collect();
    let env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    let termination_log = usage::flag_value(&args, "--termination-log")
        .map(PathBuf::from)
        .or_else(|| env("ENTITLEMENT_GATE_TERMINATION_LOG").map(PathBuf::from));
    supervisor.set_termination_log(termination_log_path(termination_log));
    let stale_proof = match usage::subcommand(&args) {
        Some("check" | "exec") => Some(handoff::FILE_NAME),
        Some("license check") => Some(license_file::FILE_NAME),
        _ => None,
    };
    if let Some(name) = stale_proof {
        // As early as the directory is known, so that no failure, not even a usage error, leaves
        // an earlier run's proof for the app to accept. The run reports what cannot be removed.
        let dir = usage::flag_value(&args, "--handoff-dir")
            .map(PathBuf::from)
            .or_else(|| env("ENTITLEMENT_GATE_HANDOFF_DIR").map(PathBuf::from));
        if let Some(dir) = dir {
            let _ = handoff::remove_in(&dir, name);
        }
    }
    // Before parsing, so that a usage error is logged in the format the operator chose.
    let log_format = usage::flag_value(&args, "--log-format")
        .and_then(|value| value.into_string().ok())
        .or_else(|| env("ENTITLEMENT_GATE_LOG_FORMAT"));
    logging::init(match log_format.as_deref() {
        Some("json") => LogFormat::Json,
        _ => LogFormat::Text,
    });

    let cli = match Cli::try_parse_args(&args) {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => {
            // --help and --version; a closed stdout is not a reason to fail.
            let _ = error.print();
            return ExitCode::from(error.exit_code() as u8);
        }
        Err(error) => {
            let usage = usage::describe(&error, &args, env);
            let error = GateError::Usage {
                detail: usage.detail,
                help: usage.help,
            };
            return ExitCode::from(supervisor.conclude(&error));
        }
    };
    ExitCode::from(run(&supervisor, cli.command))
}

/// Runs `command` to its exit code.
fn run(supervisor: &Supervisor, command: Command) -> u8 {
    let progress = Progress::default();
    let result = match command {
        Command::Check(args) => {
            supervisor.arm_watchdog(args.deadline, progress.clone());
            args.to_config(&ANCHORS).and_then(|config| {
                block_on(supervisor.until_stopped(check::run(&config, &progress))).map(drop)
            })
        }
        Command::Exec(args) => {
            supervisor.arm_watchdog(args.check.deadline, progress.clone());
            return exec_command(supervisor, &args, &progress);
        }
        Command::Verify(args) => {
            supervisor.arm_watchdog(args.deadline, progress.clone());
            block_on(supervisor.until_stopped(verify(&args)))
        }
        Command::Meter(args) => return meter(supervisor, &args, &progress),
        Command::License(LicenseCommand::Check(args)) => {
            supervisor.arm_watchdog(args.deadline, progress.clone());
            block_on(async {
                let config = args.to_config(&ANCHORS, workload_id().await)?;
                supervisor
                    .until_stopped(license::check::run(&config, &SystemClock))
                    .await
                    .map(drop)
            })
        }
        Command::License(LicenseCommand::Watch(args)) => {
            return license_watch(supervisor, &args, &progress)
        }
        Command::Health(args) => {
            // A probe runs beside the container's own process: the termination log is theirs.
            supervisor.set_termination_log(None);
            block_on(async { Ok(meter::health(&args.listen, args.timeout).await?) })
        }
        Command::Doctor(args) => {
            supervisor.arm_watchdog(args.check.deadline, progress.clone());
            let diagnosis = block_on(async {
                doctor::run(&args.to_request(), &ANCHORS)
                    .await
                    .map_err(GateError::EndpointOverridden)
            });
            return match diagnosis {
                Ok(mut diagnosis) => match supervisor.conclude_success() {
                    Ok(()) => {
                        diagnosis.explain(|failure| {
                            outcome::for_the_seller(
                                &outcome::report(&GateError::from(failure)).message,
                            )
                        });
                        let report = match args.format {
                            ReportFormat::Text => diagnosis.to_text(),
                            ReportFormat::Json => diagnosis.to_json(),
                        };
                        let _ = std::io::stdout().write_all(report.as_bytes());
                        outcome::doctor_exit_code(&diagnosis)
                    }
                    Err(code) => code,
                },
                Err(error) => supervisor.conclude(&error),
            };
        }
    };
    match result {
        Ok(()) => supervisor.conclude_success().err().unwrap_or(0),
        Err(error) => supervisor.conclude(&error),
    }
}

/// `meter`: the metering sidecar, until a signal stops it and it has sent what it holds.
fn meter(supervisor: &Supervisor, args: &MeterArgs, progress: &Progress) -> u8 {
    let watchdog = supervisor.arm_watchdog(args.deadline, progress.clone());
    let endpoint_overridden = endpoint::override_variable(Service::MarketplaceMetering, |name| {
        std::env::var(name).ok()
    })
    .is_some();
    let config = match args.to_config(&ANCHORS, endpoint_overridden) {
        Ok(config) => config,
        Err(error) => return supervisor.conclude(&error),
    };
    // The sidecar flushes on SIGTERM; only a flush that overruns its grace is cut short.
    supervisor.set_signal_policy(SignalPolicy {
        grace: config.drain + config.shutdown_grace + Duration::from_secs(5),
        overrun: |signal| GateError::StopOverran { signal },
    });
    let running = async {
        // A signal during start-up stops at once (exit 8): nothing was accepted yet.
        let sidecar = supervisor
            .until_stopped(meter::start(&config, Arc::new(SystemClock)))
            .await?;
        watchdog.disarm();
        Ok(sidecar.run_until(supervisor.stopped()).await?)
    };
    match block_on_threads(running) {
        Ok(stopped) => {
            let fraction: i128 = stopped.ledger.values().map(|l| l.carried_fraction).sum();
            tracing::info!(
                signal = stopped.signal,
                flushed = stopped.flushed,
                exit_code = 0,
                reason = "stopped",
                "stopped: every acknowledged unit was billed, except a carried fraction of {} (the ledger lines above, per dimension)",
                Micros(fraction)
            );
            supervisor.conclude_success().err().unwrap_or(0)
        }
        Err(error) => supervisor.conclude(&error),
    }
}

/// `license watch`: the sidecar that keeps the license, until a signal stops it and it has
/// checked the seat in.
fn license_watch(supervisor: &Supervisor, args: &LicenseWatchArgs, progress: &Progress) -> u8 {
    let watchdog = supervisor.arm_watchdog(args.license.deadline, progress.clone());
    let endpoint_overridden =
        endpoint::override_variable(Service::LicenseManager, |name| std::env::var(name).ok())
            .is_some();
    // The watch checks the seat in on SIGTERM; only a check-in that overruns its grace is cut
    // short.
    supervisor.set_signal_policy(SignalPolicy {
        grace: args.shutdown_grace + Duration::from_secs(5),
        overrun: |signal| license::LicenseError::StopOverran { signal }.into(),
    });
    let running = async {
        let config = args.to_config(&ANCHORS, workload_id().await, endpoint_overridden)?;
        // A signal during start-up stops at once (exit 8).
        let watch = supervisor
            .until_stopped(license::watch::start(&config, Arc::new(SystemClock)))
            .await?;
        watchdog.disarm();
        Ok(watch.run_until(supervisor.stopped()).await?)
    };
    match block_on_threads(running) {
        Ok(stopped) => {
            tracing::info!(
                signal = stopped.signal,
                checked_in = stopped.checked_in,
                exit_code = 0,
                reason = "stopped",
                "stopped: the license was released"
            );
            supervisor.conclude_success().err().unwrap_or(0)
        }
        Err(error) => supervisor.conclude(&error),
    }
}

/// The workload identity as a default NodeId for License Manager, if it can be had quickly.
async fn workload_id() -> Option<String> {
    workload::resolve(|name| std::env::var(name).ok(), TASK_METADATA_TIMEOUT)
        .await
        .ok()
        .map(|workload| workload.id)
}

/// `verify`: the evidence, checked against this workload without calling AWS.
async fn verify(args: &VerifyArgs) -> Result<(), GateError> {
    let (product_code, key) = args.product.resolve(&ANCHORS)?;
    let workload = workload::resolve(|name| std::env::var(name).ok(), TASK_METADATA_TIMEOUT)
        .await
        .map_err(VerifyError::from)?;
    tracing::debug!(source = %workload.source, "resolved the workload identity");
    let requirements = Requirements {
        product_code: &product_code,
        key: &key,
        workload: &workload,
        max_age: args.max_age,
    };
    let evidence = Evidence::choose(&args.evidence_request(), std::io::stdin().lock())?;
    requirements.verify(&evidence, SystemTime::now())?;
    Ok(())
}

/// `exec`: the program is found before any metered call, the check runs, and only an entitled
/// run that was not asked to stop becomes the program.
fn exec_command(supervisor: &Supervisor, args: &ExecArgs, progress: &Progress) -> u8 {
    let Some((name, program_args)) = args.program.split_first() else {
        return supervisor.conclude(&GateError::Usage {
            detail: "exec needs the program to run after --".to_owned(),
            help: "entitlement-gate exec --help".to_owned(),
        });
    };
    progress.enter(Phase::Configuration);
    let program = match exec::resolve_program(name, std::env::var_os("PATH").as_deref()) {
        Ok(program) => program,
        Err(error) => return supervisor.conclude(&error),
    };
    let checked = args
        .check
        .to_config(&ANCHORS)
        .and_then(|config| block_on(supervisor.until_stopped(check::run(&config, progress))));
    if let Err(error) = checked {
        return supervisor.conclude(&error);
    }
    if let Some(signal) = supervisor.stop_requested() {
        return supervisor.conclude(&GateError::Interrupted { signal });
    }
    // From here the process belongs to the program: neither the watchdog nor the signal
    // thread may end it (a signal in the instant before execve is the only one it misses).
    if let Err(code) = supervisor.hand_over() {
        return code;
    }
    let error = exec::replace_process(&program, name, program_args);
    supervisor.hand_over_failed(&error)
}

/// The termination log to write: the configured path, else the Kubernetes default if the
/// platform created it (the gate never creates files under /dev).
fn termination_log_path(configured: Option<PathBuf>) -> Option<PathBuf> {
    configured.or_else(|| {
        let default = PathBuf::from(DEFAULT_TERMINATION_LOG);
        default.exists().then_some(default)
    })
}

/// Runs a long-running command's future on two worker threads (the sidecars serve many
/// clients at once), then drops the runtime without waiting for abandoned blocking work.
fn block_on_threads<T>(future: impl Future<Output = Result<T, GateError>>) -> Result<T, GateError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| GateError::Internal(format!("cannot start the async runtime: {e}")))?;
    let result = runtime.block_on(future);
    runtime.shutdown_background();
    result
}

/// Runs a command's future on a single thread (the gate makes one call at a time), then drops
/// the runtime without waiting for blocking work a deadline already abandoned.
fn block_on<T>(future: impl Future<Output = Result<T, GateError>>) -> Result<T, GateError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| GateError::Internal(format!("cannot start the async runtime: {e}")))?;
    let result = runtime.block_on(future);
    runtime.shutdown_background();
    result
}
