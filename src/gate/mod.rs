//! The gate's use cases, one module each, each with its own error type.
//!
//! - [`check`]: RegisterUsage, verification and the handoff, within a deadline
//! - [`verify`]: the app's offline re-check of a handoff or token, bound to its workload

pub mod check;
pub mod verify;
