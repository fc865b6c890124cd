//! `entitlement-gate`: parse, log, run, report. The logic lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use entitlement_gate::cli::{Cli, Command};
use entitlement_gate::config::ConfigError;
use entitlement_gate::outcome::{self, GateError};
use entitlement_gate::trust::TrustAnchors;
use entitlement_gate::{check, logging};

fn main() -> ExitCode {
    let cli = match Cli::try_parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => error.exit(), // --help, --version
        Err(error) => return usage_error(&error),
    };
    logging::init(cli.log_format);
    let termination_log = Cli::termination_log_path(cli.termination_log);
    let result = match cli.command {
        Command::Check(args) => args
            .validate(&TrustAnchors::EMBEDDED)
            .map_err(GateError::from)
            .and_then(|config| runtime()?.block_on(check::run_until_interrupted(&config))),
    };
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => ExitCode::from(outcome::conclude(&error, termination_log.as_deref())),
    }
}

/// The gate makes one call at a time: a single-threaded runtime is all it needs.
fn runtime() -> Result<tokio::runtime::Runtime, GateError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| GateError::Internal(format!("cannot start the async runtime: {e}")))
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
    let configured = std::env::var_os("ENTITLEMENT_GATE_TERMINATION_LOG").map(PathBuf::from);
    if let Some(path) = Cli::termination_log_path(configured) {
        let _ = outcome::write_termination_log(&path, &report.message);
    }
    ExitCode::from(report.exit_code)
}
