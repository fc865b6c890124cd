//! `entitlement-gate exec -- PROGRAM [ARGS...]`: check, then become the program.

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;

use clap::Args;

use crate::config::{CheckArgs, ConfigError};

/// Flags of `entitlement-gate exec`: those of `check`, then the program after `--`.
#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub check: CheckArgs,

    /// The program to run once the buyer is entitled, and its arguments.
    #[arg(last = true, required = true, value_name = "PROGRAM")]
    pub program: Vec<OsString>,
}

/// Replaces this process with `program` (execve, searching PATH): it keeps the PID, the
/// environment and the signals, and its exit code becomes the container's. Returns only on
/// failure.
pub fn replace_process(program: &[OsString]) -> ConfigError {
    let Some((name, args)) = program.split_first() else {
        return ConfigError::InvalidArgument("no program given after --".to_owned());
    };
    tracing::info!(program = %name.to_string_lossy(), "entitled: starting the program");
    let error = std::process::Command::new(name).args(args).exec();
    ConfigError::ProgramNotStarted {
        program: name.to_string_lossy().into_owned(),
        reason: error.to_string(),
    }
}
