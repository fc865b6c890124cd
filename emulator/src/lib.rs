//! `metering-emulator`: a local stand-in for AWS Marketplace Metering, AWS License Manager and
//! STS web identity, on one port.
//!
//! - Metering (awsJson1_1, `AWSMPMeteringService.*`): RegisterUsage with real PS256 tokens
//!   signed by a local RSA key; MeterUsage and BatchMeterUsage with a [ledger](LedgerSnapshot)
//!   that applies AWS's idempotency rules per metering [period](Config::period);
//!   ResolveCustomer for SaaS registration tokens.
//! - License Manager (awsJson1_1, `AWSLicenseManager.*`): CheckoutLicense,
//!   ExtendLicenseConsumption, CheckInLicense, GetLicense for the [licenses](LicenseSpec) you
//!   configure, and GetAccessToken for the Anywhere flow.
//! - STS (awsQuery): AssumeRoleWithWebIdentity with GetAccessToken's access tokens.
//!
//! It checks each request the way the service does (target, body shape, SigV4 scope), answers
//! the documented errors, and injects the [faults](Faults) clients must survive: counted,
//! random (seeded, for chaos tests) and replaceable while running. The service logic is pure:
//! the clock is an argument, so expiry and windows are tested without sleeping. Tests start
//! the emulator in-process with [`spawn`]; sellers and the README demo run the
//! `metering-emulator` binary.

mod config;
mod faults;
pub mod keys;
mod license;
mod server;
mod service;

pub use config::{Config, Customer, JsonNumber, Operation, RegistrationToken};
pub use faults::{
    Faults, InjectedError, LicenseFault, RandomFaults, ResponseFault, StatusBody, StatusFault,
    TokenFault,
};
pub use license::{
    parse_licenses, CheckoutRecord, CheckoutState, CheckoutType, EntitlementSpec, EntitlementUnit,
    EntitlementUsage, LicenseSpec, LicenseUsage, RefreshToken, MARKETPLACE_KEY_FINGERPRINT,
};
pub use server::{serve, spawn, RunningEmulator};
pub use service::{Allocation, LedgerSnapshot, MeteringRecord, Quantity};
