//! What the emulator serves: the Region, keys, products and customers, and the faults to inject.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::{keys, Faults};

/// Who is entitled, what may be metered, and which faults to inject.
#[derive(Debug, Clone)]
pub struct Config {
    /// Region the emulated endpoint lives in; RegisterUsage and MeterUsage calls signed for
    /// another get InvalidRegionException and InvalidEndpointRegionException.
    pub region: String,
    /// Public key versions the service knows; others get InvalidPublicKeyVersionException.
    pub key_versions: BTreeSet<u32>,
    pub signing_key: Arc<keys::RsaKey>,
    /// Product codes with an active subscription.
    pub entitled: BTreeSet<String>,
    /// Known product codes without a subscription (CustomerNotEntitledException); any code in
    /// neither list gets InvalidProductCodeException.
    pub not_entitled: BTreeSet<String>,
    /// Answer with `PublicKeyRotationTimestamp` (epoch seconds), as when a key version expires.
    pub rotation_timestamp: Option<i64>,
    /// Serve the IMDSv2 credential and Region paths, as an EC2 node would.
    pub imds: bool,
    /// The per-account RegisterUsage quota (AWS: 5 per second): a token bucket holding one
    /// second's worth; calls beyond it get ThrottlingException. Off by default; when set it
    /// wins over `quotas[RegisterUsage]`.
    pub quota_per_second: Option<u32>,
    /// Per-operation quotas in calls per second, each a token bucket holding one second's worth
    /// (0 or absent: none). Defaults to AWS's MeterUsage quota of 10 per second.
    pub quotas: BTreeMap<Operation, u32>,
    /// The metering period (AWS: one hour): MeterUsage timestamps round down to it, and the
    /// accepted window counts in it. Tests use seconds.
    pub period: Duration,
    /// The product's usage dimensions; MeterUsage for any other gets
    /// InvalidUsageDimensionException. Empty: any name is accepted.
    pub dimensions: BTreeSet<String>,
    /// Operations the caller's role may not call: AccessDeniedException (or, for a DryRun,
    /// UnauthorizedException).
    pub denied: BTreeSet<Operation>,
    pub faults: Faults,
}

impl Config {
    /// Region `us-east-1`, key version 1, signing with `key`, nothing entitled, hourly periods,
    /// any dimension, everything allowed, no faults.
    pub fn new(key: Arc<keys::RsaKey>) -> Self {
        Self {
            region: "us-east-1".to_owned(),
            key_versions: BTreeSet::from([1]),
            signing_key: key,
            entitled: BTreeSet::new(),
            not_entitled: BTreeSet::new(),
            rotation_timestamp: None,
            imds: false,
            quota_per_second: None,
            quotas: BTreeMap::from([(Operation::MeterUsage, 10)]),
            period: Duration::from_secs(3600),
            dimensions: BTreeSet::new(),
            denied: BTreeSet::new(),
            faults: Faults::default(),
        }
    }

    pub fn entitle(mut self, product_code: &str) -> Self {
        self.entitled.insert(product_code.to_owned());
        self
    }

    pub fn refuse(mut self, product_code: &str) -> Self {
        self.not_entitled.insert(product_code.to_owned());
        self
    }

    pub fn dimension(mut self, name: &str) -> Self {
        self.dimensions.insert(name.to_owned());
        self
    }

    pub fn deny(mut self, operation: Operation) -> Self {
        self.denied.insert(operation);
        self
    }

    /// The quota of `operation` in calls per second, if it has one.
    pub fn quota(&self, operation: Operation) -> Option<u32> {
        let configured = self.quotas.get(&operation).copied();
        match operation {
            Operation::RegisterUsage => self.quota_per_second.or(configured),
            _ => configured,
        }
        .filter(|rate| *rate > 0)
    }
}

/// The operations the emulator serves, as named on the command line (`register-usage`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    RegisterUsage,
    MeterUsage,
}

impl Operation {
    pub const ALL: [Operation; 2] = [Operation::RegisterUsage, Operation::MeterUsage];

    /// The name on the wire, as in `X-Amz-Target: AWSMPMeteringService.RegisterUsage`.
    pub fn name(self) -> &'static str {
        match self {
            Operation::RegisterUsage => "RegisterUsage",
            Operation::MeterUsage => "MeterUsage",
        }
    }
}
