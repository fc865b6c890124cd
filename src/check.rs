//! The gate: one `check` run from validated configuration to a verified entitlement.

use std::future::Future;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;

use crate::aws_identity::{self, CredentialSource, RegionSource};
use crate::config::{CheckArgs, CheckConfig, ConfigError};
use crate::handoff::{self, Handoff};
use crate::metering::{self, RegisterUsageCall};
use crate::nonce::Nonce;
use crate::outcome::{CallContext, GateError};
use crate::token::{self, Expected, VerifiedToken};
use crate::trust::TrustAnchors;

/// A verified entitlement: what `check` proved.
#[derive(Debug, Clone)]
pub struct Entitlement {
    pub token: VerifiedToken,
    /// The JWT as AWS sent it.
    pub signature: String,
    pub region: String,
    pub region_source: RegionSource,
    pub credential_source: CredentialSource,
    pub public_key_rotation_timestamp: Option<i64>,
    pub verified_at: SystemTime,
    pub handoff_path: Option<PathBuf>,
}

/// `entitlement-gate check` (and the check before `exec`): validate, then run until decided or
/// interrupted.
pub async fn command(args: &CheckArgs, anchors: &TrustAnchors) -> Result<Entitlement, GateError> {
    let config = args.validate(anchors)?;
    run_until_interrupted(&config).await
}

/// Runs the check, ending with [`GateError::Interrupted`] as soon as SIGTERM or SIGINT arrives.
pub async fn run_until_interrupted(config: &CheckConfig) -> Result<Entitlement, GateError> {
    let listen = |kind| {
        signal(kind).map_err(|e| GateError::Internal(format!("cannot listen for signals: {e}")))
    };
    let mut terminate = listen(SignalKind::terminate())?;
    let mut interrupt = listen(SignalKind::interrupt())?;
    tokio::select! {
        result = run(config) => result,
        _ = terminate.recv() => Err(GateError::Interrupted { signal: "SIGTERM" }),
        _ = interrupt.recv() => Err(GateError::Interrupted { signal: "SIGINT" }),
    }
}

/// Resolves Region and credentials, calls RegisterUsage with a fresh nonce, verifies the token
/// and writes the handoff, all within `config.deadline`.
pub async fn run(config: &CheckConfig) -> Result<Entitlement, GateError> {
    let deadline = Deadline {
        at: Instant::now() + config.deadline,
        budget: config.deadline,
    };
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
            "resolving the AWS Region",
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
            "resolving AWS credentials",
            aws_identity::resolve_credentials(&region.region),
        )
        .await??;
    tracing::info!(source = %credentials.source, "resolved AWS credentials");
    if credentials.source.unsupported_for_metering() {
        tracing::warn!(source = %credentials.source,
            "AWS Marketplace does not support these credentials for metering; give the workload its own role with IRSA or the ECS task role");
    }

    let context = CallContext {
        product_code: config.product_code.to_string(),
        public_key_version: config.key.version,
        region: region.region.to_string(),
    };
    let nonce = Nonce::generate()
        .map_err(|e| GateError::Internal(format!("the OS random number generator failed: {e}")))?;
    let call = RegisterUsageCall {
        context: &context,
        nonce: nonce.as_str(),
        credentials_from: credentials.source.to_string(),
        endpoint: metering::endpoint_for(&context.region).await,
        attempt_timeout: config.attempt_timeout,
        backoff: config.backoff,
    };
    tracing::info!(endpoint = %call.endpoint, product_code = %context.product_code,
        public_key_version = context.public_key_version, "calling RegisterUsage");
    let answer = deadline
        .bound("calling RegisterUsage", async {
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
    let now = verified_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let expected = Expected {
        product_code: &context.product_code,
        nonce: nonce.as_str(),
        public_key_version: context.public_key_version,
    };
    let token = token::verify(&answer.signature, &config.key, &expected, now)?;

    let handoff_path = match &config.handoff_dir {
        None => None,
        Some(dir) => {
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
        iat = token.issued_at, region = %context.region, "entitled: RegisterUsage token verified");
    Ok(Entitlement {
        token,
        signature: answer.signature,
        region: context.region,
        region_source: region.source,
        credential_source: credentials.source,
        public_key_rotation_timestamp: answer.public_key_rotation_timestamp,
        verified_at,
        handoff_path,
    })
}

/// The instant the whole run must be decided by.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: Instant,
    budget: std::time::Duration,
}

impl Deadline {
    /// Runs `future` unless the deadline passes first.
    async fn bound<T>(
        &self,
        phase: &'static str,
        future: impl Future<Output = T>,
    ) -> Result<T, GateError> {
        tokio::time::timeout_at(self.at, future)
            .await
            .map_err(|_| GateError::DeadlineExceeded {
                phase,
                deadline: self.budget,
            })
    }
}
