//! Contract pricing: AWS License Manager entitlements checked out at start-up ([`check`]) and
//! kept while the workload runs ([`watch`], a sidecar with a local API, [`api`]).
//!
//! The identity is the SDK's default chain (IRSA, the ECS task role); outside AWS, when that
//! finds nothing and the buyer's license token is mounted, the Anywhere provider. License
//! Manager's answers are trusted through TLS to AWS (no offline-verifiable signature exists for
//! AWS Marketplace licenses), so a locked build refuses endpoint overrides and pins AWS's
//! certificate roots.

pub mod api;
pub mod check;
pub mod watch;

use std::path::PathBuf;
use std::time::Duration;

use aws_config::Region;
use aws_credential_types::provider::SharedCredentialsProvider;
use tokio::time::Instant;

use crate::aws::anywhere::{self, AnywhereError, AnywhereProvider, AnywhereSettings};
use crate::aws::endpoint::{self, EndpointOverride, Pinning};
use crate::aws::identity::{self, CredentialSource, IdentityError, RegionSource};
use crate::aws::license_manager::{LicenseManager, LicenseManagerError};
use crate::aws::retry::RetryPolicy;
use crate::domain::handoff::HandoffError;
use crate::domain::lease::{describe_skew, Lease};
use crate::domain::license::{CheckoutType, EntitlementRequest, Unverified};
use crate::domain::product_code::ProductCode;

/// What to check out, and how patiently.
#[derive(Debug, Clone)]
pub struct LicenseConfig {
    /// The AWS Marketplace product ID, sent as `ProductSKU` (checked against a locked build's
    /// trusted list like a product code).
    pub product_id: ProductCode,
    pub entitlements: Vec<EntitlementRequest>,
    pub checkout_type: CheckoutType,
    /// Sent as `NodeId`: the workload (pod UID, task ARN), for the buyer's License Manager
    /// console.
    pub node_id: Option<String>,
    pub handoff_dir: Option<PathBuf>,
    /// Bound on start-up: identity and the checkout with its retries.
    pub deadline: Duration,
    pub retry: RetryPolicy,
    pub region_override: Option<String>,
    /// Whether License Manager and STS may be elsewhere than AWS (an open build's emulator).
    pub pinning: Pinning,
}

/// What to do when the license is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLoss {
    /// End this process (exit 3); on ECS an essential container ends the task.
    Exit,
    /// Keep running: not ready, `state: lost` in `license.json`, status and metrics.
    Report,
}

/// Why there is no license to run with.
#[derive(Debug, thiserror::Error)]
pub enum LicenseError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Anywhere(#[from] AnywhereError),
    /// A locked build is being pointed at another endpoint than AWS's.
    #[error("{0}, and this locked build calls AWS's own endpoints only")]
    EndpointOverridden(EndpointOverride),
    /// AWS granted nothing: no license, an ended contract, or every seat taken.
    #[error("AWS License Manager granted none of {requested} for product {product_id} in {region}: {source}")]
    NotEntitled {
        product_id: String,
        requested: String,
        region: String,
        source: Box<LicenseManagerError>,
    },
    /// AWS granted some entitlements, not every counted one asked for.
    #[error("AWS License Manager granted {granted} but not {missing} for product {product_id}")]
    Partial {
        product_id: String,
        granted: String,
        missing: String,
    },
    /// The license is not available (GetLicense), or no longer confirmed past the grace.
    #[error("the license {license_arn} is {reason}")]
    Lost { license_arn: String, reason: String },
    /// An answer that does not match the request, had lapsed by AWS's clock, or names another
    /// product's license: not trusted.
    #[error(
        "AWS License Manager's answer for product {product_id} failed verification: {problem}"
    )]
    Unverified {
        product_id: String,
        problem: Unverified,
    },
    /// AWS granted a checkout of a license GetLicense shows as unusable (not AVAILABLE, ended).
    #[error("the license {license_arn} is {reason}")]
    Unavailable { license_arn: String, reason: String },
    /// A RedirectException named nothing that is an AWS Region.
    #[error(
        "License Manager redirected to {location}, which is not an AWS Region's License Manager"
    )]
    Redirect { location: String },
    #[error(transparent)]
    LicenseManager(#[from] LicenseManagerError),
    #[error(transparent)]
    Handoff(#[from] HandoffError),
    #[error("the {deadline:?} start-up deadline passed while {phase}")]
    Deadline {
        phase: &'static str,
        deadline: Duration,
    },
    #[error("{listen}: {reason}")]
    Listen { listen: String, reason: String },
    /// SIGTERM came and the seat could not be checked in within the grace.
    #[error("the seat could not be checked in: {0}")]
    NotCheckedIn(LicenseManagerError),
    /// SIGTERM came and stopping (the check-in) overran the shutdown grace.
    #[error("stopped by {signal}, and checking the seat in overran the shutdown grace")]
    StopOverran { signal: &'static str },
}

/// License Manager as the resolved identity: the default chain, else the Anywhere token.
pub async fn connect(
    config: &LicenseConfig,
    deadline: Instant,
) -> Result<LicenseManager, LicenseError> {
    let env = |name: &str| std::env::var(name).ok();
    identity::check_aws_files(env)?;
    endpoint::refuse_overrides(config.pinning)
        .await
        .map_err(LicenseError::EndpointOverridden)?;
    let anywhere = AnywhereSettings::from_env(env)?;
    let bound = |phase: &'static str| {
        move |_| LicenseError::Deadline {
            phase,
            deadline: config.deadline,
        }
    };
    let region = match tokio::time::timeout_at(
        deadline,
        identity::resolve_region(config.region_override.as_deref()),
    )
    .await
    .map_err(bound("resolving the AWS Region"))?
    {
        Some(region) => region,
        None if anywhere.is_some() => identity::ResolvedRegion {
            region: Region::new(anywhere::DEFAULT_REGION),
            source: RegionSource::AnywhereDefault,
        },
        None => return Err(IdentityError::NoRegion.into()),
    };
    tracing::info!(region = %region.region, source = %region.source, "resolved AWS Region");
    let resolved = tokio::time::timeout_at(deadline, identity::resolve_credentials(&region.region))
        .await
        .map_err(bound("resolving AWS credentials"))?;
    let (provider, source) = match (resolved, anywhere) {
        (Ok(credentials), _) => (credentials.provider, credentials.source),
        (Err(IdentityError::NoCredentials { .. }), Some(settings)) => {
            tracing::info!(token_file = %settings.token_file.display(), variable = settings.token_variable,
                role = %settings.role_arn, "no AWS credentials in the default chain: using the buyer's license token (Anywhere)");
            let provider = AnywhereProvider::new(
                settings,
                region.region.clone(),
                config.retry,
                config.pinning,
            )
            .await;
            provider.prime(deadline).await?;
            (
                SharedCredentialsProvider::new(provider),
                CredentialSource::LicenseToken,
            )
        }
        (Err(error), _) => return Err(error.into()),
    };
    tracing::info!(source = %source, "resolved AWS credentials");
    Ok(LicenseManager::new(
        region.region,
        Some(provider),
        source,
        config.retry,
        config.pinning,
    )
    .await)
}

/// Says when the local clock disagrees with AWS License Manager's by more than a minute.
fn report_skew(lease: &Lease) {
    if let Some(skew) = lease.notable_skew() {
        tracing::warn!(clock_skew_s = skew,
            "the local clock is {} AWS License Manager's; the license's timing follows AWS's clock, \
             but fix the node's time synchronisation (NTP, chrony)", describe_skew(skew));
    }
}

/// A random `ClientToken` for one logical checkout: 32 hex characters, reused only by its
/// retries.
pub fn client_token() -> String {
    use rand::TryRngCore as _;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("OS randomness");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
