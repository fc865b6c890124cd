//! The command line (binary only): subcommands and the options every command shares, the
//! process around a command, logging, and becoming the paid program.
//!
//! - [`args`]: every command's flags and environment variables, into the library's configuration
//! - [`usage`]: command-line mistakes as operator sentences
//! - [`supervisor`]: signals, the watchdog, the one conclusion of a failed run
//! - [`logging`]: text or JSON on stderr
//! - [`exec`]: becoming the paid program once entitled

pub mod args;
mod epilogue;
pub mod exec;
pub mod logging;
pub mod supervisor;
pub mod usage;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand, ValueEnum};

use entitlement_gate::domain::trust::TrustAnchors;

use args::{
    CheckArgs, DoctorArgs, ExecArgs, HealthArgs, LicenseArgs, LicenseWatchArgs, MeterArgs,
    VerifyArgs,
};

/// The trust anchors compiled into this binary (see `build.rs`).
pub const ANCHORS: TrustAnchors = TrustAnchors::EMBEDDED;

/// Lets a paid AWS Marketplace container start only for entitled buyers.
#[derive(Debug, Parser)]
#[command(name = "entitlement-gate", about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format on stderr.
    #[arg(long, global = true, env = "ENTITLEMENT_GATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Where the one-sentence failure reason goes [default: /dev/termination-log, if it exists].
    #[arg(
        long,
        global = true,
        env = "ENTITLEMENT_GATE_TERMINATION_LOG",
        value_name = "PATH"
    )]
    pub termination_log: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Call RegisterUsage, verify the token, exit 0 only if the buyer is entitled.
    Check(CheckArgs),
    /// Run the same check, then replace this process with PROGRAM (only if entitled).
    Exec(ExecArgs),
    /// Re-check a handoff file or token offline, without calling AWS.
    Verify(VerifyArgs),
    /// Diagnose the setup (platform, Region, credentials, endpoint, key); read-only unless --call.
    Doctor(DoctorArgs),
    /// The metering sidecar: report custom-dimension usage with MeterUsage, hourly, durably.
    Meter(MeterArgs),
    /// Contract pricing: check out AWS License Manager entitlements, and keep them.
    #[command(subcommand)]
    License(LicenseCommand),
    /// Exit 0 when a sidecar (meter, license watch) is ready (ECS health checks, exec probes).
    Health(HealthArgs),
}

#[derive(Debug, Subcommand)]
pub enum LicenseCommand {
    /// Check the entitlements out, write license.json, exit 0 only if AWS granted what was asked,
    /// current by AWS's clock, for this product's license.
    Check(LicenseArgs),
    /// The sidecar: keep the checkout (extend, re-validate, check in on SIGTERM).
    Watch(LicenseWatchArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The termination log Kubernetes reads by default.
pub const DEFAULT_TERMINATION_LOG: &str = "/dev/termination-log";

impl Cli {
    /// Parses `args` (including the program name).
    pub fn try_parse_args(
        args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
    ) -> Result<Self, clap::Error> {
        let matches = epilogue::with_epilogues(Cli::command())
            .version(ANCHORS.version_line())
            .try_get_matches_from(args)?;
        Cli::from_arg_matches(&matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_parse_into_check_args() {
        let cli = Cli::try_parse_args([
            "entitlement-gate",
            "check",
            "--product-code",
            "abc",
            "--public-key-version",
            "2",
            "--public-key-file",
            "/k.pem",
            "--deadline",
            "90s",
            "--handoff-dir",
            "/h",
            "--log-format",
            "json",
            "--termination-log",
            "/t",
        ])
        .unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        assert_eq!(cli.termination_log, Some(PathBuf::from("/t")));
        let Command::Check(args) = cli.command else {
            panic!("expected check");
        };
        assert_eq!(args.product.product_code.as_deref(), Some("abc"));
        assert_eq!(args.product.public_key_version, 2);
        assert_eq!(args.deadline, Duration::from_secs(90));
        assert_eq!(args.retry.attempt_timeout, Duration::from_secs(10));
        assert_eq!(args.retry.retry_base, Duration::from_secs(2));
        assert_eq!(args.retry.retry_cap, Duration::from_secs(8));
        assert_eq!(args.handoff_dir, Some(PathBuf::from("/h")));
    }

    #[test]
    fn exec_takes_the_program_after_a_double_dash() {
        let cli = Cli::try_parse_args([
            "entitlement-gate",
            "exec",
            "--product-code",
            "abc",
            "--",
            "/app",
            "--port",
            "80",
        ])
        .unwrap();
        let Command::Exec(args) = cli.command else {
            panic!("expected exec");
        };
        assert_eq!(args.program, ["/app", "--port", "80"]);
        assert_eq!(args.check.product.product_code.as_deref(), Some("abc"));
        assert!(
            Cli::try_parse_args(["entitlement-gate", "exec", "--product-code", "abc"]).is_err()
        );
    }

    #[test]
    fn bad_values_are_parse_errors() {
        for args in [
            vec!["entitlement-gate", "check", "--deadline", "soon"],
            vec!["entitlement-gate", "check", "--public-key-version", "0"],
            vec!["entitlement-gate", "check", "--log-format", "xml"],
            vec!["entitlement-gate", "check", "--bogus"],
        ] {
            assert!(Cli::try_parse_args(&args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn version_says_which_kind_of_build_this_is() {
        let version = ANCHORS.version_line();
        assert!(version.contains("open build"), "{version}");
    }
}
