//! `license check`: check the entitlements out at start-up, and hand the license to the app as
//! `license.json`. A provisional checkout (floating seats, tiers) stays held: the `watch`
//! sidecar adopts it from `license.json`, extends it and checks it in at the end.
//!
//! Nothing is handed over before the answer is checked ([`checkout`]): each entitlement granted
//! was asked for, in the unit asked, with at least the units asked; each counted one asked for
//! was granted; the checkout is current by AWS's own clock (its `Expiration` after its
//! `IssuedAt`); and GetLicense describes the license it named as this product's, available, and
//! listing what was granted. A checkout refused after AWS granted it is checked in at once.

use std::time::Duration;

use tokio::time::Instant;

use super::{client_token, connect, report_skew, LicenseConfig, LicenseError};
use crate::aws::license_manager::{
    self, Checkout, CheckoutRequest, LicenseManager, LicenseManagerError,
};
use crate::domain::handoff::{self, HandoffError};
use crate::domain::lease::Lease;
use crate::domain::license::{
    self, missing_counted, unavailable, verify_grant, verify_license, CheckoutType, License,
    LicenseState, Unverified, MARKETPLACE_KEY_FINGERPRINT,
};
use crate::domain::time::{epoch_seconds, Clock};

/// How long checking in a refused checkout may take: it is returned within the hour anyway.
const RELEASE_WITHIN: Duration = Duration::from_secs(5);

/// Checks the configured entitlements out and writes `license.json` (if a handoff directory is
/// configured); everything within `config.deadline`.
pub async fn run(config: &LicenseConfig, clock: &dyn Clock) -> Result<License, LicenseError> {
    let deadline = Instant::now() + config.deadline;
    if let Some(dir) = &config.handoff_dir {
        handoff::prepare(dir, license::FILE_NAME)?;
    }
    let mut lm = connect(config, deadline).await?;
    let granted = checkout(config, &mut lm, deadline, clock).await?;
    report_skew(&granted.lease);
    let license = held(config, &lm, granted.checkout, clock);
    if let Some(dir) = &config.handoff_dir {
        license::write(dir, &license).map_err(|source| HandoffError::Write {
            dir: dir.clone(),
            source,
        })?;
    }
    tracing::info!(product_id = %config.product_id, license_arn = %license.license_arn,
        granted = %granted_text(&license), expiration = license.expiration,
        "licensed: AWS License Manager granted the checkout");
    Ok(license)
}

/// A checkout that passed every check, with its lease by AWS's clock.
#[derive(Debug, Clone)]
pub struct Granted {
    pub checkout: Checkout,
    pub lease: Lease,
    /// When its answer arrived, on the monotonic clock the lease is measured on.
    pub arrived: Instant,
}

/// One checkout under a fresh `ClientToken`, following a RedirectException once to the Region
/// it names, then checked (see the module comment); one refused after AWS granted it is checked
/// in again.
pub async fn checkout(
    config: &LicenseConfig,
    lm: &mut LicenseManager,
    deadline: Instant,
    clock: &dyn Clock,
) -> Result<Granted, LicenseError> {
    let token = client_token();
    let request = CheckoutRequest {
        product_id: config.product_id.as_str(),
        checkout_type: config.checkout_type,
        key_fingerprint: MARKETPLACE_KEY_FINGERPRINT,
        entitlements: &config.entitlements,
        client_token: &token,
        node_id: config.node_id.as_deref(),
    };
    let answer = match license_manager::checkout(lm, &request, deadline).await {
        Err(LicenseManagerError::Redirect { location, .. }) => {
            let location = location.unwrap_or_default();
            let region = license_manager::redirect_region(&location)
                .ok_or(LicenseError::Redirect { location })?;
            tracing::info!(region = %region, "License Manager redirected the checkout to the license's home Region");
            *lm = lm.in_region(aws_config::Region::new(region)).await;
            license_manager::checkout(lm, &request, deadline).await
        }
        answer => answer,
    };
    let checkout = answer.map_err(|error| match error {
        error @ LicenseManagerError::NoEntitlements { .. } => LicenseError::NotEntitled {
            product_id: config.product_id.to_string(),
            requested: requested(config),
            region: lm.region.clone(),
            source: Box::new(error),
        },
        error => LicenseError::LicenseManager(error),
    })?;
    let arrived = Instant::now();
    match verify(config, lm, &checkout, epoch_seconds(clock.now()), deadline).await {
        Ok(lease) => Ok(Granted {
            checkout,
            lease,
            arrived,
        }),
        Err(error) => {
            release(lm, &checkout, deadline).await;
            Err(error)
        }
    }
}

/// The checks of the module comment, `local_now` being the local clock when the answer
/// arrived; the checkout's lease if it passed them.
async fn verify(
    config: &LicenseConfig,
    lm: &LicenseManager,
    checkout: &Checkout,
    local_now: u64,
    deadline: Instant,
) -> Result<Lease, LicenseError> {
    let unverified = |problem| LicenseError::Unverified {
        product_id: config.product_id.to_string(),
        problem,
    };
    verify_grant(&config.entitlements, &checkout.entitlements_allowed).map_err(unverified)?;
    let missing = missing_counted(&config.entitlements, &checkout.entitlements_allowed);
    if !missing.is_empty() {
        return Err(LicenseError::Partial {
            product_id: config.product_id.to_string(),
            granted: checkout
                .entitlements_allowed
                .iter()
                .map(|allowed| allowed.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            missing: missing.join(", "),
        });
    }
    let lease = Lease::of_checkout(checkout.issued_at, checkout.expiration, local_now)
        .map_err(|lapsed| unverified(lapsed.into()))?;
    let status =
        license_manager::get_license(lm, &checkout.license_arn, deadline)
            .await
            .map_err(|error| match error {
                error @ (LicenseManagerError::NotFound { .. }
                | LicenseManagerError::Invalid { .. }) => unverified(Unverified::UnknownLicense {
                    license_arn: checkout.license_arn.clone(),
                    error: error.to_string(),
                }),
                error => LicenseError::LicenseManager(error),
            })?;
    verify_license(
        config.product_id.as_str(),
        &checkout.license_arn,
        &status,
        &checkout.entitlements_allowed,
    )
    .map_err(unverified)?;
    if let Some(reason) = unavailable(&status, lease.aws_time.unwrap_or(local_now)) {
        return Err(LicenseError::Unavailable {
            license_arn: checkout.license_arn.clone(),
            reason,
        });
    }
    Ok(lease)
}

/// Checks a refused provisional checkout in, so its seat is not held for an hour; a drawdown
/// cannot be returned.
async fn release(lm: &LicenseManager, checkout: &Checkout, deadline: Instant) {
    if checkout.checkout_type != CheckoutType::Provisional {
        return;
    }
    let within = deadline.min(Instant::now() + RELEASE_WITHIN);
    match license_manager::check_in(lm, &checkout.consumption_token, within).await {
        Ok(()) => {
            tracing::info!(license_arn = %checkout.license_arn, "the refused checkout was checked in")
        }
        Err(error) => tracing::warn!(license_arn = %checkout.license_arn, error = %error,
            "the refused checkout was not checked in; it lapses by itself"),
    }
}

/// The license as held now.
pub(super) fn held(
    config: &LicenseConfig,
    lm: &LicenseManager,
    checkout: Checkout,
    clock: &dyn Clock,
) -> License {
    License {
        product_id: config.product_id.to_string(),
        license_arn: checkout.license_arn,
        checkout_type: checkout.checkout_type,
        entitlements_allowed: checkout.entitlements_allowed,
        issued_at: checkout.issued_at,
        expiration: checkout.expiration,
        consumption_token: checkout.consumption_token,
        signed_token: checkout.signed_token,
        node_id: checkout.node_id,
        region: lm.region.clone(),
        confirmed_at: epoch_seconds(clock.now()),
        state: LicenseState::Held,
    }
}

/// `Seats=1:Count, Tier2:None`, for messages.
pub(super) fn requested(config: &LicenseConfig) -> String {
    config
        .entitlements
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `Seats (Count 1)`, for logs.
pub(super) fn granted_text(license: &License) -> String {
    license
        .entitlements_allowed
        .iter()
        .map(|allowed| match &allowed.value {
            Some(value) => format!("{} ({} {value})", allowed.name, allowed.unit),
            None => format!("{} ({})", allowed.name, allowed.unit),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
