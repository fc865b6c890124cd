//! `entitlement-gate`: parse, log, run the command, report. The logic lives in the library.

use std::future::Future;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use entitlement_gate::cli::{Cli, Command};
use entitlement_gate::config::ConfigError;
use entitlement_gate::outcome::{self, GateError};
use entitlement_gate::trust::TrustAnchors;
use entitlement_gate::{check, doctor, exec, logging, verify};

const ANCHORS: TrustAnchors = TrustAnchors::EMBEDDED;

fn main() -> ExitCode {
    let cli = match Cli::try_parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => error.exit(), // --help, --version
        Err(error) => return usage_error(&error),
    };
    logging::init(cli.log_format);
    let termination_log = Cli::termination_log_path(cli.termination_log);
    let result = match cli.command {
        Command::Check(args) => block_on(check::command(&args, &ANCHORS)).map(drop),
        Command::Exec(args) => block_on(check::command(&args.check, &ANCHORS))
            .and_then(|_| Err(exec::replace_process(&args.program).into())),
        Command::Verify(args) => verify::command(&args, &ANCHORS).map(drop),
        Command::Doctor(args) => {
            return match block_on(async { Ok(doctor::run(&args, &ANCHORS).await) }) {
                Ok(diagnosis) => {
                    let _ = std::io::stdout().write_all(diagnosis.render(args.format).as_bytes());
                    ExitCode::from(diagnosis.exit_code())
                }
                Err(error) => ExitCode::from(outcome::conclude(&error, None)),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => ExitCode::from(outcome::conclude(&error, termination_log.as_deref())),
    }
}

/// Runs a command's future; the gate makes one call at a time, so one thread is all it needs.
fn block_on<T>(future: impl Future<Output = Result<T, GateError>>) -> Result<T, GateError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| GateError::Internal(format!("cannot start the async runtime: {e}")))?
        .block_on(future)
}

/// Command-line errors exit 2 like every configuration error, and reach the termination log.
fn usage_error(error: &clap::Error) -> ExitCode {
    let _ = error.print();
    // clap's first line names the flag and the problem, e.g. "invalid value 'soon' for '--deadline'".
    let rendered = error.to_string();
    let detail = rendered
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_owned();
    let report = outcome::report(&GateError::Config(ConfigError::InvalidArgument(detail)));
    eprintln!("{}", report.message);
    let configured = std::env::var_os("ENTITLEMENT_GATE_TERMINATION_LOG").map(PathBuf::from);
    if let Some(path) = Cli::termination_log_path(configured) {
        let _ = outcome::write_termination_log(&path, &report.message);
    }
    ExitCode::from(report.exit_code)
}
