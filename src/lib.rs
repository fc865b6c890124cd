//! entitlement-gate: lets a paid AWS Marketplace container start only for entitled buyers.
//!
//! The `entitlement-gate` binary wires these modules together; a seller's Rust application can
//! call the same library in-process, e.g. [`check::run`] at start-up.
//!
//! - [`config`]: flags and env vars into a validated [`config::CheckConfig`]
//! - [`trust`]: product codes and keys embedded in a locked build
//! - [`aws_identity`]: Region and credentials, and where each came from
//! - [`nonce`]: the fresh random nonce that binds a token to one run
//! - [`metering`]: the RegisterUsage call, its failure classes and retry
//! - [`token`]: PS256 token verification
//! - [`handoff`]: `entitlement.json` for the main container
//! - [`outcome`]: errors, exit codes and operator messages
//! - [`check`]: the whole run
//! - [`exec`]: becoming the paid program once entitled
//! - [`verify`]: offline re-verification of a handoff or token, for the main container
//! - [`doctor`]: a read-only diagnosis of the setup

mod anchor_rules;
pub mod aws_identity;
pub mod check;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod exec;
pub mod files;
pub mod handoff;
pub mod logging;
pub mod metering;
pub mod nonce;
pub mod outcome;
pub mod sources;
pub mod text;
pub mod token;
pub mod trust;
pub mod verify;
pub mod workload;

/// The README's Rust examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
