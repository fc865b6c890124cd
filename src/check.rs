//! The gate: one `check` run from validated configuration to a verified entitlement.

use std::future::Future;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::aws_identity::{self, CredentialSource, RegionSource};
use crate::config::{CheckConfig, ConfigError};
use crate::handoff::{self, Handoff};
use crate::metering::{self, RegisterUsageCall};
use crate::nonce::Nonce;
use crate::outcome::{CallContext, GateError, Phase, Progress};
use crate::token::{self, Expected, VerifiedToken};
use crate::workload::{self, WorkloadId, WORKLOAD_ID_VARIABLE};

/// A verified entitlement: what `check` proved.
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

/// Runs the check until it is decided or `stop` resolves (to the name of the signal that stops
/// it, e.g. `"SIGTERM"`): whoever owns the process decides what stops it.
pub async fn run_until(
    config: &CheckConfig,
    progress: &Progress,
    stop: impl Future<Output = &'static str>,
) -> Result<Entitlement, GateError> {
    tokio::select! {
        result = run(config, progress) => result,
        signal = stop => Err(GateError::Interrupted { signal }),
    }
}

/// How long the ECS task metadata endpoint (on the agent, in the same task) may take.
const TASK_METADATA_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Resolves Region, credentials and the workload identity, calls RegisterUsage with a fresh
/// workload-bound nonce, verifies the token and writes the handoff, all within
/// `config.deadline`; `progress` follows the phases.
pub async fn run(config: &CheckConfig, progress: &Progress) -> Result<Entitlement, GateError> {
    let deadline = Deadline {
        at: Instant::now() + config.deadline,
        budget: config.deadline,
        progress,
    };
    progress.enter(Phase::Configuration);
    aws_identity::check_aws_files(|name| std::env::var(name).ok())?;
    if let Some(dir) = &config.handoff_dir {
        handoff::remove_stale(dir).map_err(|e| {
            GateError::Internal(format!(
                "cannot remove the old handoff in {}: {e}",
                dir.display()
            ))
        })?;
    }

    let region = deadline
        .bound(
            Phase::Region,
            aws_identity::resolve_region(config.region_override.as_deref()),
        )
        .await?
        .ok_or(ConfigError::NoRegion)?;
    if region.source == RegionSource::Override {
        tracing::warn!(region = %region.region, "using the --region override; on ECS and EKS leave the Region to the platform");
    } else {
        tracing::info!(region = %region.region, source = %region.source, "resolved AWS Region");
    }

    let credentials = deadline
        .bound(
            Phase::Credentials,
            aws_identity::resolve_credentials(&region.region),
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
        .await?
        .map_err(|e| GateError::Internal(format!("{e}; the gate binds its proof to this workload, so set {WORKLOAD_ID_VARIABLE} in the gate and the app container (the Helm chart sets it to the pod UID)")))?;
    tracing::info!(source = %workload.source, "resolved the workload identity");

    let context = CallContext {
        product_code: config.product_code.to_string(),
        public_key_version: config.key.version,
        region: region.region.to_string(),
    };
    let nonce = Nonce::generate(&workload)
        .map_err(|e| GateError::Internal(format!("the OS random number generator failed: {e}")))?;
    let call = RegisterUsageCall {
        context: &context,
        nonce: nonce.as_str(),
        credentials_from: credentials.source,
        endpoint: metering::endpoint_for(&context.region).await,
        attempt_timeout: config.attempt_timeout,
        backoff: config.backoff,
    };
    tracing::info!(endpoint = %call.endpoint, product_code = %context.product_code,
        public_key_version = context.public_key_version, "calling RegisterUsage");
    let answer = deadline
        .bound(Phase::RegisterUsage, async {
            let client = metering::client(
                region.region.clone(),
                credentials.credentials,
                config.attempt_timeout,
            )
            .await;
            metering::register_usage(&client, &call, deadline.at).await
        })
        .await??;

    if let Some(rotation) = answer.public_key_rotation_timestamp {
        let when =
            handoff::rfc3339(UNIX_EPOCH + std::time::Duration::from_secs(rotation.max(0) as u64));
        tracing::warn!(public_key_rotation_timestamp = %when, public_key_version = context.public_key_version,
            "AWS reports that this public key version expired at {when}; the seller must roll to the next key version");
    }

    let verified_at = SystemTime::now();
    let expected = Expected {
        product_code: &context.product_code,
        nonce: nonce.as_str(),
        public_key_version: context.public_key_version,
    };
    let token = token::verify(
        &answer.signature,
        &config.key,
        &expected,
        epoch_seconds(verified_at),
    )?;

    let handoff_path = match &config.handoff_dir {
        None => None,
        Some(dir) => {
            progress.enter(Phase::Handoff);
            let handoff = Handoff {
                product_code: token.product_code.clone(),
                public_key_version: token.public_key_version,
                nonce: token.nonce.clone(),
                signature: answer.signature.clone(),
                issued_at: token.issued_at,
                verified_at: handoff::rfc3339(verified_at),
                region: context.region.clone(),
                gate_version: env!("CARGO_PKG_VERSION").to_owned(),
                public_key_rotation_timestamp: answer.public_key_rotation_timestamp,
                workload_id_source: Some(workload.source.key().to_owned()),
            };
            let path = handoff::write(dir, &handoff).map_err(|e| {
                GateError::Internal(format!(
                    "cannot write the handoff in {}: {e}",
                    dir.display()
                ))
            })?;
            Some(path)
        }
    };

    tracing::info!(product_code = %token.product_code, public_key_version = token.public_key_version,
        iat = token.issued_at, region = %context.region, exit_code = 0, reason = "entitled",
        request_id = answer.request_id.as_deref(), "entitled: RegisterUsage token verified");
    Ok(Entitlement {
        token,
        signature: answer.signature,
        region: context.region,
        region_source: region.source,
        credential_source: credentials.source,
        workload,
        public_key_rotation_timestamp: answer.public_key_rotation_timestamp,
        verified_at,
        handoff_path,
    })
}

/// Seconds since the Unix epoch (0 for a clock before it).
pub fn epoch_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The instant the whole run must be decided by, and where the run is.
#[derive(Debug, Clone, Copy)]
struct Deadline<'a> {
    at: Instant,
    budget: std::time::Duration,
    progress: &'a Progress,
}

impl Deadline<'_> {
    /// Runs `future` as `phase` unless the deadline passes first.
    async fn bound<T>(
        &self,
        phase: Phase,
        future: impl Future<Output = T>,
    ) -> Result<T, GateError> {
        self.progress.enter(phase);
        tokio::time::timeout_at(self.at, future)
            .await
            .map_err(|_| GateError::DeadlineExceeded {
                phase,
                deadline: self.budget,
            })
    }
}
