//! Contract pricing fixtures: an emulator with floating seats and a tier, and `license check` or
//! `license watch` against it with a handoff directory and a Unix socket.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use metering_emulator::{Config, Faults, InjectedError, LicenseSpec, Operation, RefreshToken};
use serde_json::Value;

use super::{emulator_with, wait_until, Ended, Gate, RunningEmulator, Sidecar};

pub const SEATS: &str = "prod-seats";
pub const TIERS: &str = "prod-tiers";
pub const ROLE: &str = "arn:aws:iam::111122223333:role/buyer-license";
pub const REFRESH_TOKEN: &str = "buyer-license-token";

/// Two floating seats (short-lived unless extended), and a tiered product.
pub fn license_emulator(ttl: Duration, edit: impl FnOnce(&mut Config)) -> RunningEmulator {
    emulator_with(|config| {
        config.licenses = vec![
            LicenseSpec::floating(SEATS, "Seats", 2).floating_ttl(ttl),
            LicenseSpec::tiered(TIERS, "Tier2"),
        ];
        config.refresh_tokens = vec![RefreshToken::new(REFRESH_TOKEN)];
        config.buyer_roles = BTreeSet::from([ROLE.to_owned()]);
        edit(config);
    })
}

/// `entitlement-gate license <command>` for `product` against `emulator`, with a handoff
/// directory and (for the watch) a Unix socket.
pub fn license(
    emulator: &RunningEmulator,
    command: &str,
    product: &str,
    entitlements: &str,
) -> Gate {
    let gate = Gate::against(
        &emulator.endpoint_url(),
        emulator.public_key_pem(),
        &["license", command],
    );
    let handoff = gate.path("handoff");
    std::fs::create_dir(&handoff).expect("handoff dir");
    let socket = Sidecar::socket_of(&gate);
    gate.env("AWS_ENDPOINT_URL_LICENSE_MANAGER", emulator.endpoint_url())
        .env("AWS_ENDPOINT_URL_STS", emulator.endpoint_url())
        .env("ENTITLEMENT_GATE_PRODUCT_ID", product)
        .env("ENTITLEMENT_GATE_ENTITLEMENTS", entitlements)
        .env("ENTITLEMENT_GATE_HANDOFF_DIR", &handoff)
        .env(
            "ENTITLEMENT_GATE_LICENSE_LISTEN",
            format!("unix:{}", socket.display()),
        )
        .env("ENTITLEMENT_GATE_DEADLINE", "20s")
}

/// `license.json` in the handoff directory under `dir`.
pub fn license_json(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("handoff/license.json")).expect("license.json");
    serde_json::from_str(&text).expect("JSON")
}

/// Seats of `SEATS` in use, per the emulator.
pub fn seats_in_use(emulator: &RunningEmulator) -> u64 {
    emulator
        .licenses()
        .iter()
        .find(|license| license.product_sku == SEATS)
        .map_or(0, |license| license.entitlements[0].in_use)
}

/// Every call to `operations` answers `error` (`CODE[:STATUS]`).
pub fn fail_on(operations: &[Operation], error: &str) -> Faults {
    Faults {
        operations: Some(operations.iter().copied().collect()),
        error: Some(error.parse::<InjectedError>().unwrap()),
        ..Faults::default()
    }
}

/// Waits up to `limit` for the sidecar to exit by itself; one still running is killed and the
/// test fails with its log.
#[track_caller]
pub fn exits_within(mut sidecar: Sidecar, limit: Duration) -> Ended {
    let exited = wait_until(limit, || {
        sidecar
            .running
            .child
            .try_wait()
            .expect("child status")
            .is_some()
    });
    if !exited {
        let _ = sidecar.running.child.kill();
        let ended = sidecar.wait();
        panic!("still running after {limit:?}:\n{}", ended.log);
    }
    sidecar.wait()
}
