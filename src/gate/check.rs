//! The gate: one `check` run, from a validated configuration to a verified entitlement.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::aws::endpoint::{self, EndpointOverride, Pinning, Service};
use crate::aws::identity::{self, CredentialSource, IdentityError, RegionSource};
use crate::aws::metering::{self, MeteringError, RegisterUsageAnswer, RegisterUsageCall};
use crate::aws::retry::RetryPolicy;
use crate::aws::workload::{self, WorkloadError};
use crate::domain::handoff::{self, Handoff, HandoffError};
use crate::domain::key::VerifyingKey;
use crate::domain::nonce::Nonce;
use crate::domain::product_code::ProductCode;
use crate::domain::time::{epoch_seconds, rfc3339};
use crate::domain::token::{self, Binding, TokenError, VerifiedToken};
use crate::domain::workload::WorkloadId;

/// How long the ECS task metadata endpoint (on the agent, in the same task) may take.
const TASK_METADATA_TIMEOUT: Duration = Duration::from_secs(2);

/// A validated configuration for one `check` run.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    pub product_code: ProductCode,
    pub key: VerifyingKey,
    /// Bound on the whole run.
    pub deadline: Duration,
    pub retry: RetryPolicy,
    /// Where `entitlement.json` goes (a volume the app container also mounts).
    pub handoff_dir: Option<PathBuf>,
    /// For local testing only: on ECS and EKS the platform sets the Region.
    pub region_override: Option<String>,
    /// Whether RegisterUsage may go elsewhere than AWS (an open build's emulator).
    pub pinning: Pinning,
}

/// What `check` proved.
#[derive(Debug, Clone)]
pub struct Entitlement {
    pub token: VerifiedToken,
    /// The JWT as AWS sent it.
    pub signature: String,
    pub region: String,
    pub region_source: RegionSource,
    pub credential_source: CredentialSource,
    /// The workload the token's nonce is bound to.
    pub workload: WorkloadId,
    pub public_key_rotation_timestamp: Option<i64>,
    pub verified_at: SystemTime,
    pub handoff_path: Option<PathBuf>,
}

/// Why a `check` run did not prove an entitlement.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A locked build is being pointed at another endpoint than AWS's.
    #[error("{0}, and this locked build calls AWS's own endpoints only")]
    EndpointOverridden(EndpointOverride),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    #[error(transparent)]
    Handoff(#[from] HandoffError),
    #[error(transparent)]
    Metering(#[from] MeteringError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the {deadline:?} deadline passed while {phase}")]
    DeadlineExceeded { phase: Phase, deadline: Duration },
    #[error("the OS random number generator failed: {0}")]
    Randomness(String),
}

/// Where a run is, for the sentence when its deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Configuration,
    Region,
    Credentials,
    Workload,
    RegisterUsage,
    Handoff,
}

impl Phase {
    const ALL: [Phase; 6] = [
        Phase::Configuration,
        Phase::Region,
        Phase::Credentials,
        Phase::Workload,
        Phase::RegisterUsage,
        Phase::Handoff,
    ];
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Configuration => "reading the configuration",
            Phase::Region => "resolving the AWS Region",
            Phase::Credentials => "resolving AWS credentials",
            Phase::Workload => "resolving the workload identity",
            Phase::RegisterUsage => "calling RegisterUsage",
            Phase::Handoff => "writing the handoff",
        })
    }
}

/// The phase a run is in, shared with whoever must describe a run that stopped making progress
/// (the binary's watchdog, which does not depend on the async runtime).
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<AtomicU8>);

impl Progress {
    pub fn enter(&self, phase: Phase) {
        self.0.store(phase as u8, Ordering::SeqCst);
    }

    pub fn current(&self) -> Phase {
        let value = self.0.load(Ordering::SeqCst);
        Phase::ALL
            .into_iter()
            .find(|phase| *phase as u8 == value)
            .unwrap_or(Phase::Configuration)
    }
}

/// Who the run is: Region, credentials and workload, each with its source.
struct Identity {
    region: identity::ResolvedRegion,
    credentials: identity::ResolvedCredentials,
    workload: WorkloadId,
}

/// Proves the handoff directory, resolves Region, credentials and the workload identity, calls
/// RegisterUsage with a fresh workload-bound nonce, verifies the token and writes the handoff,
/// all within `config.deadline`; `progress` follows the phases.
pub async fn run(config: &CheckConfig, progress: &Progress) -> Result<Entitlement, CheckError> {
    let deadline = Deadline {
        at: Instant::now() + config.deadline,
        budget: config.deadline,
        progress,
    };
    progress.enter(Phase::Configuration);
    identity::check_aws_files(|name| std::env::var(name).ok())?;
    endpoint::refuse_overrides(config.pinning)
        .await
        .map_err(CheckError::EndpointOverridden)?;
    if let Some(dir) = &config.handoff_dir {
        handoff::prepare(dir, handoff::FILE_NAME)?;
    }
    let who = resolve_identity(config, &deadline).await?;
    let binding = Binding {
        product_code: config.product_code.clone(),
        public_key_version: config.key.version,
        nonce: Nonce::generate(&who.workload)
            .map_err(|e| CheckError::Randomness(e.to_string()))?
            .as_str()
            .to_owned(),
    };
    let answer = call_register_usage(config, &who, &binding, &deadline).await?;
    let verified_at = SystemTime::now();
    let token = token::verify(
        &answer.signature,
        &config.key,
        &binding,
        epoch_seconds(verified_at),
    )?;
    let handoff_path = match &config.handoff_dir {
        Some(dir) => {
            progress.enter(Phase::Handoff);
            Some(write_handoff(dir, &token, &answer, &who, verified_at)?)
        }
        None => None,
    };
    tracing::info!(product_code = %token.product_code, public_key_version = token.public_key_version,
        iat = token.issued_at, region = %who.region.region, exit_code = 0, reason = "entitled",
        request_id = answer.request_id.as_deref(), "entitled: RegisterUsage token verified");
    Ok(Entitlement {
        token,
        signature: answer.signature,
        region: who.region.region.to_string(),
        region_source: who.region.source,
        credential_source: who.credentials.source,
        workload: who.workload,
        public_key_rotation_timestamp: answer.public_key_rotation_timestamp,
        verified_at,
        handoff_path,
    })
}

async fn resolve_identity(
    config: &CheckConfig,
    deadline: &Deadline<'_>,
) -> Result<Identity, CheckError> {
    let region = deadline
        .bound(
            Phase::Region,
            identity::resolve_region(config.region_override.as_deref()),
        )
        .await?
        .ok_or(IdentityError::NoRegion)?;
    if region.source == RegionSource::Override {
        tracing::warn!(region = %region.region, "using the --region override; on ECS and EKS leave the Region to the platform");
    } else {
        tracing::info!(region = %region.region, source = %region.source, "resolved AWS Region");
    }
    let credentials = deadline
        .bound(
            Phase::Credentials,
            identity::resolve_credentials(&region.region),
        )
        .await??;
    tracing::info!(source = %credentials.source, "resolved AWS credentials");
    if credentials.source.unsupported_for_metering() {
        tracing::warn!(source = %credentials.source,
            "AWS Marketplace does not support these credentials for metering; give the workload its own role with IRSA or the ECS task role");
    }
    let workload = deadline
        .bound(
            Phase::Workload,
            workload::resolve(
                |name| std::env::var(name).ok(),
                TASK_METADATA_TIMEOUT.min(config.deadline),
            ),
        )
        .await??;
    tracing::info!(source = %workload.source, "resolved the workload identity");
    Ok(Identity {
        region,
        credentials,
        workload,
    })
}

async fn call_register_usage(
    config: &CheckConfig,
    who: &Identity,
    binding: &Binding,
    deadline: &Deadline<'_>,
) -> Result<RegisterUsageAnswer, CheckError> {
    let region = who.region.region.to_string();
    let call = RegisterUsageCall {
        binding,
        region: &region,
        credentials_from: who.credentials.source,
        endpoint: endpoint::resolve(Service::MarketplaceMetering, &region, config.pinning).await,
        retry: config.retry,
    };
    tracing::info!(endpoint = %call.endpoint, product_code = %binding.product_code,
        public_key_version = binding.public_key_version, "calling RegisterUsage");
    let answer = deadline
        .bound(Phase::RegisterUsage, async {
            let client = metering::client(
                who.region.region.clone(),
                who.credentials.credentials.clone(),
                config.retry.attempt_timeout,
                config.pinning,
            )
            .await;
            metering::register_usage(&client, &call, deadline.at).await
        })
        .await??;
    if let Some(when) = answer.key_expired_at() {
        tracing::warn!(public_key_rotation_timestamp = %when, public_key_version = binding.public_key_version,
            "AWS reports that this public key version expired at {when}; the seller must roll to the next key version");
    }
    Ok(answer)
}

fn write_handoff(
    dir: &std::path::Path,
    token: &VerifiedToken,
    answer: &RegisterUsageAnswer,
    who: &Identity,
    verified_at: SystemTime,
) -> Result<PathBuf, HandoffError> {
    let handoff = Handoff {
        product_code: token.product_code.clone(),
        public_key_version: token.public_key_version,
        nonce: token.nonce.clone(),
        signature: answer.signature.clone(),
        issued_at: token.issued_at,
        verified_at: rfc3339(verified_at),
        region: who.region.region.to_string(),
        gate_version: env!("CARGO_PKG_VERSION").to_owned(),
        public_key_rotation_timestamp: answer.public_key_rotation_timestamp,
        workload_id_source: Some(who.workload.source.key().to_owned()),
    };
    handoff::write(dir, &handoff).map_err(|source| HandoffError::Write {
        dir: dir.to_owned(),
        source,
    })
}

/// The instant the whole run must be decided by, and where the run is.
#[derive(Debug, Clone, Copy)]
struct Deadline<'a> {
    at: Instant,
    budget: Duration,
    progress: &'a Progress,
}

impl Deadline<'_> {
    /// Runs `future` as `phase` unless the deadline passes first.
    async fn bound<T>(
        &self,
        phase: Phase,
        future: impl Future<Output = T>,
    ) -> Result<T, CheckError> {
        self.progress.enter(phase);
        tokio::time::timeout_at(self.at, future)
            .await
            .map_err(|_| CheckError::DeadlineExceeded {
                phase,
                deadline: self.budget,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reports_the_phase_last_entered() {
        let progress = Progress::default();
        assert_eq!(progress.current(), Phase::Configuration);
        for phase in Phase::ALL {
            progress.clone().enter(phase);
            assert_eq!(progress.current(), phase);
        }
    }
}
