//! Logging on stderr, as text for people or JSON for log pipelines.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

use super::LogFormat;

/// The filter when none is configured: this crate at `info`; the AWS SDK's own crates (all
/// named `aws*`) and its HTTP stack only at `error`, as their warnings dump long debug
/// structures that say nothing to an operator. `ENTITLEMENT_GATE_LOG` can raise them, e.g.
/// `info,aws=debug`.
const DEFAULT_FILTER: &str = "info,aws=error,hyper=error,hyper_util=error,rustls=error,h2=error";

/// Filter from `ENTITLEMENT_GATE_LOG`, else `RUST_LOG`, else [`DEFAULT_FILTER`].
pub fn init(format: LogFormat) {
    let filter = ["ENTITLEMENT_GATE_LOG", "RUST_LOG"]
        .iter()
        .find_map(|name| EnvFilter::try_from_env(name).ok())
        .unwrap_or_else(|| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        // Its default reports a failed write with eprintln!, which panics on a full or closed
        // stderr: logging must never decide the exit code.
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
