//! `license check`: check the entitlements out at start-up, and hand the license to the app as
//! `license.json`. A provisional checkout (floating seats, tiers) stays held: the `watch`
//! sidecar adopts it from `license.json`, extends it and checks it in at the end.

use std::time::SystemTime;

use tokio::time::Instant;

use super::{client_token, connect, LicenseConfig, LicenseError};
use crate::aws::license_manager::{
    self, Checkout, CheckoutRequest, LicenseManager, LicenseManagerError,
};
use crate::domain::handoff::{self, HandoffError};
use crate::domain::license::{self, License, LicenseState, MARKETPLACE_KEY_FINGERPRINT};
use crate::domain::time::{epoch_seconds, Clock};

/// Checks the configured entitlements out and writes `license.json` (if a handoff directory is
/// configured); everything within `config.deadline`.
pub async fn run(config: &LicenseConfig, clock: &dyn Clock) -> Result<License, LicenseError> {
    let deadline = Instant::now() + config.deadline;
    if let Some(dir) = &config.handoff_dir {
        handoff::prepare(dir, license::FILE_NAME)?;
    }
    let mut lm = connect(config, deadline).await?;
    let checkout = checkout(config, &mut lm, deadline).await?;
    let license = held(config, &lm, checkout, clock);
    if let Some(dir) = &config.handoff_dir {
        license::write(dir, &license).map_err(|source| HandoffError::Write {
            dir: dir.clone(),
            source,
        })?;
    }
    tracing::info!(product_id = %config.product_id, license_arn = %license.license_arn,
        granted = %granted(&license), expiration = license.expiration,
        "licensed: AWS License Manager granted the checkout");
    Ok(license)
}

/// One checkout under a fresh `ClientToken`, following a RedirectException once to the Region
/// it names; refused unless every counted entitlement asked for was granted.
pub async fn checkout(
    config: &LicenseConfig,
    lm: &mut LicenseManager,
    deadline: Instant,
) -> Result<Checkout, LicenseError> {
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
    let missing: Vec<&str> = config
        .entitlements
        .iter()
        .filter(|wanted| wanted.unit != "None")
        .filter(|wanted| {
            !checkout
                .entitlements_allowed
                .iter()
                .any(|allowed| allowed.name == wanted.name)
        })
        .map(|wanted| wanted.name.as_str())
        .collect();
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
    Ok(checkout)
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
pub(super) fn granted(license: &License) -> String {
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

/// Whether a held checkout is still current at `now` (for a sidecar adopting it).
pub(super) fn current(license: &License, now: SystemTime) -> bool {
    matches!(
        license.state,
        LicenseState::Held | LicenseState::Stale { .. }
    ) && license_manager::remaining(license.expiration, now).is_none_or(|left| !left.is_zero())
}
