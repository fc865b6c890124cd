//! entitlement-gate: lets a paid AWS Marketplace container start only for entitled buyers.
//!
//! The `entitlement-gate` binary wires these layers together; a seller's Rust application can
//! call the same library in-process, e.g. [`gate::check::run`] at start-up or
//! [`gate::verify::Requirements`] in the main container. Dependencies point one way:
//! `outcome -> gate, meter, doctor -> aws -> domain` (and the binary's `cli` above them all).
//!
//! - [`domain`]: product code, keys, trust anchors, workload-bound nonce, token verification,
//!   handoff, time; no AWS, no command line
//! - [`aws`]: Region, credentials and workload identity; endpoint; retries; the API clients
//! - [`gate`]: the use cases `check` and `verify`, each with its own error type
//! - [`meter`]: the metering sidecar (MeterUsage for custom dimensions)
//! - [`doctor`]: a read-only diagnosis of the setup of all of them
//! - [`outcome`]: every error to an exit code, a reason and one operator sentence

pub mod aws;
pub mod doctor;
pub mod domain;
pub mod gate;
pub mod license;
pub mod local_http;
pub mod meter;
pub mod outcome;

/// The README's Rust examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
