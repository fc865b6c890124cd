//! `metering-emulator`: a local stand-in for the AWS Marketplace Metering Service.
//!
//! It serves the awsJson1_1 `RegisterUsage` operation the AWS SDKs call, checks the request the
//! way the service does (target header, body shape, SigV4 scope), signs real PS256 tokens with a
//! local RSA key, and injects the faults the gate must survive. Tests start it in-process with
//! [`spawn`]; sellers and the README demo run the `metering-emulator` binary.

mod config;
mod faults;
pub mod keys;
mod license;
mod server;
mod service;

pub use config::{Config, Customer, Operation, RegistrationToken};
pub use faults::{
    Faults, InjectedError, RandomFaults, ResponseFault, StatusBody, StatusFault, TokenFault,
};
pub use license::{
    parse_licenses, CheckoutRecord, CheckoutState, CheckoutType, EntitlementSpec, EntitlementUnit,
    EntitlementUsage, LicenseSpec, LicenseUsage, RefreshToken, MARKETPLACE_KEY_FINGERPRINT,
};
pub use server::{serve, spawn, RunningEmulator};
pub use service::{Allocation, LedgerSnapshot, MeteringRecord, Quantity};
