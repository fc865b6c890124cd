//! `license watch`: the sidecar that keeps the license while the workload runs.
//!
//! It adopts the checkout `license check` left in `license.json` only once AWS confirms it
//! (GetLicense describes the license as this product's, available, listing what the file says
//! was granted, and a provisional checkout is extended); otherwise it checks out itself, with
//! every check of [`check::checkout`]. Then it:
//! - extends a provisional checkout at half its lifetime, by AWS's own clock ([`Lease`]), so a
//!   floating seat never lapses whatever the node's clock says (the skew is logged when over a
//!   minute, and shown in status and metrics);
//! - re-validates every interval: tiers and features (unit None, nothing counted) are checked
//!   out anew, which also picks up an upgrade; a counted seat is extended instead (checking out
//!   a second seat could fail only because this pod holds the first) and a drawdown is never
//!   drawn again; both then ask GetLicense whether the license is still this product's and
//!   available;
//! - keeps the last good license through AWS outages for the loss grace, then applies the loss
//!   policy: exit (the pod restarts into the start-up gate) or report (status and metrics). AWS
//!   saying no (no entitlement; GetLicense's ValidationException or ResourceNotFoundException)
//!   and an answer that fails verification are losses at once, not outages;
//! - leaves at least the floor (a minute, or the interval if shorter) between any two calls it
//!   schedules, whatever AWS answers;
//! - on SIGTERM abandons any call in flight and checks a provisional checkout in within the
//!   shutdown grace, so the seat is back at once instead of in an hour.
//!
//! `license.json` is rewritten atomically on every change of state.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::api::{lock, Api, Shared, Timing};
use super::check::{self, held};
use super::{connect, report_skew, LicenseConfig, LicenseError, OnLoss};
use crate::aws::license_manager::{self, LicenseManager, LicenseManagerError, Operation};
use crate::domain::handoff::HandoffError;
use crate::domain::lease::{Lease, SKEW_TOLERANCE};
use crate::domain::license::{
    self, missing_counted, unavailable, verify_grant, verify_license, CheckoutType, License,
    LicenseState, Unverified,
};
use crate::domain::time::{epoch_seconds, Clock};
use crate::local_http::server::{Listen, Listener};

/// The sidecar's configuration.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub license: LicenseConfig,
    /// How often the license is re-validated.
    pub interval: Duration,
    pub on_loss: OnLoss,
    /// How long the last good license is kept while AWS cannot confirm it.
    pub loss_grace: Duration,
    pub listen: Listen,
    /// After SIGTERM, how long checking the seat in may take.
    pub shutdown_grace: Duration,
}

impl WatchConfig {
    /// The shortest time between two calls the watch schedules (a retry, an extension, a
    /// re-validation): a minute, or the interval when that is shorter (an endpoint override
    /// allows it, for tests).
    pub fn floor(&self) -> Duration {
        floor(self.interval)
    }
}

fn floor(interval: Duration) -> Duration {
    FLOOR.min(interval)
}

/// The floor under every wait the watch schedules, against AWS.
const FLOOR: Duration = Duration::from_secs(60);

/// How the sidecar ended after a stop request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    pub signal: &'static str,
    /// Whether a seat was checked in.
    pub checked_in: bool,
}

/// A started watch: holding the license, serving the API.
pub struct Watch {
    config: WatchConfig,
    clock: Arc<dyn Clock>,
    lm: LicenseManager,
    shared: Arc<Shared>,
    serving: tokio::task::JoinHandle<()>,
    next_revalidation: Instant,
    next_extension: Option<Instant>,
    /// The held provisional checkout's lease, and when its answer arrived.
    lease: Option<(Lease, Instant)>,
    /// The clock skew last logged, so that it is logged when it appears or changes.
    skew_reported: Option<i64>,
}

/// A license AWS confirmed, with the lease of a provisional checkout and when its answer came.
struct Confirmed {
    license: License,
    lease: Option<(Lease, Instant)>,
}

/// Starts the watch: listens at once (503 until ready), connects, adopts the checkout in
/// `license.json` once AWS confirms it or checks out anew, and becomes ready; within the
/// start-up deadline.
pub async fn start(config: &WatchConfig, clock: Arc<dyn Clock>) -> Result<Watch, LicenseError> {
    let deadline = Instant::now() + config.license.deadline;
    let shared = Arc::new(Shared::new(config.on_loss));
    let listener = Listener::bind(&config.listen)
        .await
        .map_err(|e| LicenseError::Listen {
            listen: config.listen.to_string(),
            reason: e.to_string(),
        })?;
    let api = Arc::new(Api {
        shared: shared.clone(),
        clock: clock.clone(),
    });
    let serving = tokio::spawn(listener.serve(Arc::new(move |request| {
        let api = api.clone();
        async move { super::api::handle(&api, request).await }
    })));
    let mut lm = connect(&config.license, deadline).await?;
    let confirmed = match adoptable(config) {
        Some(license) => {
            tracing::info!(license_arn = %license.license_arn,
                "confirming the checkout in license.json with AWS License Manager before adopting it");
            match adopt(&config.license, &lm, license, deadline, clock.as_ref()).await {
                Ok(confirmed) => confirmed,
                Err(Adoption::NotConfirmed(reason)) => {
                    tracing::warn!(reason = %reason,
                        "the checkout in license.json is not adopted: AWS License Manager does not confirm it; checking out anew");
                    fresh(&config.license, &mut lm, deadline, clock.as_ref()).await?
                }
                Err(Adoption::Failed(error)) => return Err(error),
            }
        }
        None => fresh(&config.license, &mut lm, deadline, clock.as_ref()).await?,
    };
    let mut watch = Watch {
        config: config.clone(),
        clock,
        lm,
        shared,
        serving,
        next_revalidation: Instant::now() + config.interval,
        next_extension: None,
        lease: None,
        skew_reported: None,
    };
    watch.hold(confirmed)?;
    watch.shared.set_ready(true);
    tracing::info!(listen = %config.listen, interval = ?config.interval, on_loss = ?config.on_loss,
        floor = ?config.floor(), "ready: watching the license");
    Ok(watch)
}

/// The checkout in `license.json`, if it claims to be this product's, of this type, and held:
/// a candidate only, until AWS confirms it.
fn adoptable(config: &WatchConfig) -> Option<License> {
    let dir = config.license.handoff_dir.as_ref()?;
    let license = license::read(dir).ok()?;
    (license.product_id == config.license.product_id.as_str()
        && license.checkout_type == config.license.checkout_type
        && matches!(
            license.state,
            LicenseState::Held | LicenseState::Stale { .. }
        ))
    .then_some(license)
}

/// Why a checkout in `license.json` was not adopted.
enum Adoption {
    /// AWS does not confirm it (or it does not match what is asked for now): check out anew.
    NotConfirmed(String),
    /// AWS could not be asked: start-up fails as a checkout would.
    Failed(LicenseError),
}

/// Adopts `license` (from `license.json`) once AWS confirms it: what it says was granted is what
/// is asked for now; GetLicense describes its license as this product's, available, listing
/// those entitlements; and a provisional checkout extends. A drawdown's consumption itself
/// cannot be confirmed after the fact (no API does), only its license.
async fn adopt(
    config: &LicenseConfig,
    lm: &LicenseManager,
    mut license: License,
    deadline: Instant,
    clock: &dyn Clock,
) -> Result<Confirmed, Adoption> {
    let not_confirmed = |reason: String| Adoption::NotConfirmed(reason);
    verify_grant(&config.entitlements, &license.entitlements_allowed)
        .map_err(|problem| not_confirmed(problem.to_string()))?;
    let missing = missing_counted(&config.entitlements, &license.entitlements_allowed);
    if !missing.is_empty() {
        return Err(not_confirmed(format!(
            "it lacks {} asked for now",
            missing.join(", ")
        )));
    }
    let status =
        license_manager::get_license(lm, &license.license_arn, deadline)
            .await
            .map_err(|error| match error {
                error @ (LicenseManagerError::NotFound { .. }
                | LicenseManagerError::Invalid { .. }) => not_confirmed(error.to_string()),
                error => Adoption::Failed(error.into()),
            })?;
    verify_license(
        config.product_id.as_str(),
        &license.license_arn,
        &status,
        &license.entitlements_allowed,
    )
    .map_err(|problem| not_confirmed(problem.to_string()))?;
    let lease = match license.checkout_type {
        CheckoutType::Provisional => {
            let (token, expiration) =
                license_manager::extend(lm, &license.consumption_token, deadline)
                    .await
                    .map_err(|error| match error {
                        error @ LicenseManagerError::NotFound { .. } => {
                            not_confirmed(error.to_string())
                        }
                        error => Adoption::Failed(error.into()),
                    })?;
            let arrived = Instant::now();
            let lease = Lease::adopted(
                license.issued_at,
                license.expiration,
                expiration,
                epoch_seconds(clock.now()),
            );
            license.consumption_token = token;
            license.expiration = expiration.or(license.expiration);
            Some((lease, arrived))
        }
        CheckoutType::Perpetual => None,
    };
    // Judged by AWS's clock when the extension tells it.
    let now = lease
        .and_then(|(lease, _)| lease.aws_time)
        .unwrap_or_else(|| epoch_seconds(clock.now()));
    if let Some(reason) = unavailable(&status, now) {
        return Err(not_confirmed(format!("the license is {reason}")));
    }
    license.confirmed_at = epoch_seconds(clock.now());
    license.state = LicenseState::Held;
    Ok(Confirmed { license, lease })
}

/// A new checkout, as the start-up gate makes it (and checks it).
async fn fresh(
    config: &LicenseConfig,
    lm: &mut LicenseManager,
    deadline: Instant,
    clock: &dyn Clock,
) -> Result<Confirmed, LicenseError> {
    let granted = check::checkout(config, lm, deadline, clock).await?;
    let lease = (granted.checkout.checkout_type == CheckoutType::Provisional)
        .then_some((granted.lease, granted.arrived));
    Ok(Confirmed {
        license: held(config, lm, granted.checkout, clock),
        lease,
    })
}

impl Watch {
    /// Keeps the license until `stop` resolves, then checks a provisional seat in within the
    /// shutdown grace. Returns early with [`LicenseError::Lost`] (or
    /// [`LicenseError::Unverified`]) when the license is lost and the policy is to exit.
    pub async fn run_until(
        mut self,
        stop: impl Future<Output = &'static str>,
    ) -> Result<Stopped, LicenseError> {
        tokio::pin!(stop);
        let outcome = loop {
            let next = self
                .next_extension
                .map_or(self.next_revalidation, |extension| {
                    extension.min(self.next_revalidation)
                });
            tokio::select! {
                signal = &mut stop => break Ok(signal),
                _ = tokio::time::sleep_until(next) => {}
            }
            // The stop signal abandons a call in flight: a slow (throttled) extension must not
            // hold up the check-in past the shutdown grace.
            let step = tokio::select! {
                signal = &mut stop => break Ok(signal),
                step = self.step() => step,
            };
            if let Err(error) = step {
                break Err(error);
            }
            self.keep_the_floor();
        };
        self.shared.set_ready(false);
        let signal = match outcome {
            Ok(signal) => signal,
            Err(error) => {
                self.serving.abort();
                return Err(error);
            }
        };
        self.shared.set_stopping();
        let checked_in = self.check_in(signal).await;
        self.serving.abort();
        checked_in.map(|checked_in| Stopped { signal, checked_in })
    }

    /// Whatever is due: a re-validation, else an extension.
    async fn step(&mut self) -> Result<(), LicenseError> {
        if Instant::now() >= self.next_revalidation {
            self.revalidate().await
        } else if self.next_extension.is_some_and(|at| at <= Instant::now()) {
            self.extend().await
        } else {
            Ok(())
        }
    }

    /// No call is scheduled sooner than the floor from now, whatever the answers were.
    fn keep_the_floor(&mut self) {
        let earliest = Instant::now() + self.config.floor();
        self.next_revalidation = self.next_revalidation.max(earliest);
        if let Some(extension) = self.next_extension.as_mut() {
            *extension = (*extension).max(earliest);
        }
    }

    /// Re-validates the license (see the module comment), or tries to win it back once lost.
    async fn revalidate(&mut self) -> Result<(), LicenseError> {
        let deadline = self.call_deadline();
        let current = self.shared.license();
        let config = self.config.license.clone();
        let tiers_only = config
            .entitlements
            .iter()
            .all(|wanted| wanted.unit == "None")
            && config.checkout_type == CheckoutType::Provisional;
        let result = match current {
            Some(license) if !matches!(license.state, LicenseState::Lost { .. }) => {
                if tiers_only {
                    self.renew(license, deadline).await
                } else {
                    self.confirm_and_read(license, deadline).await
                }
            }
            // Lost (reporting) or never held: try to win it back.
            _ => fresh(&config, &mut self.lm, deadline, self.clock.as_ref())
                .await
                .map_err(Failure::from),
        };
        self.next_revalidation = Instant::now() + self.config.interval;
        self.settle(result)
    }

    /// A new checkout of tiers or features, then the old one checked in.
    async fn renew(&mut self, old: License, deadline: Instant) -> Result<Confirmed, Failure> {
        let config = self.config.license.clone();
        let renewed = fresh(&config, &mut self.lm, deadline, self.clock.as_ref()).await?;
        if renewed.license.consumption_token != old.consumption_token {
            if let Err(error) =
                license_manager::check_in(&self.lm, &old.consumption_token, deadline).await
            {
                tracing::debug!(error = %error, "the replaced checkout was not checked in; it lapses by itself");
            }
        }
        Ok(renewed)
    }

    /// Extends (provisional) and reads the license: still this product's, and available.
    async fn confirm_and_read(
        &mut self,
        license: License,
        deadline: Instant,
    ) -> Result<Confirmed, Failure> {
        let confirmed = match license.checkout_type {
            CheckoutType::Provisional => self.extend_or_check_out(license, deadline).await?,
            CheckoutType::Perpetual => Confirmed {
                license: License {
                    confirmed_at: epoch_seconds(self.clock.now()),
                    state: LicenseState::Held,
                    ..license
                },
                lease: None,
            },
        };
        let license = &confirmed.license;
        let status = license_manager::get_license(&self.lm, &license.license_arn, deadline).await?;
        verify_license(
            self.config.license.product_id.as_str(),
            &license.license_arn,
            &status,
            &license.entitlements_allowed,
        )
        .map_err(Failure::Unverified)?;
        if let Some(reason) = unavailable(&status, self.aws_now(confirmed.lease)) {
            return Err(Failure::Lost(reason));
        }
        Ok(confirmed)
    }

    /// AWS's clock now, as the lease measures it; the local clock without one.
    fn aws_now(&self, lease: Option<(Lease, Instant)>) -> u64 {
        lease
            .and_then(|(lease, arrived)| {
                let since = Instant::now().saturating_duration_since(arrived);
                lease
                    .aws_time
                    .map(|aws_time| aws_time.saturating_add(since.as_secs()))
            })
            .unwrap_or_else(|| epoch_seconds(self.clock.now()))
    }

    /// Extends a provisional checkout before it lapses.
    async fn extend(&mut self) -> Result<(), LicenseError> {
        let Some(license) = self.shared.license() else {
            self.next_extension = None;
            return Ok(());
        };
        let deadline = self.call_deadline();
        let result = self.extend_or_check_out(license, deadline).await;
        self.settle(result)
    }

    /// Extends the checkout; one that lapsed (AWS unreachable for longer than its lifetime, or
    /// the license gone) is replaced by a new checkout, if the contract and a seat allow.
    async fn extend_or_check_out(
        &mut self,
        mut license: License,
        deadline: Instant,
    ) -> Result<Confirmed, Failure> {
        match license_manager::extend(&self.lm, &license.consumption_token, deadline).await {
            Ok((token, expiration)) => {
                let arrived = Instant::now();
                let local_now = epoch_seconds(self.clock.now());
                let lease = match self.lease {
                    Some((lease, at)) => lease
                        .extended(arrived.saturating_duration_since(at), expiration, local_now)
                        .map_err(|lapsed| Failure::Unverified(lapsed.into()))?,
                    None => {
                        Lease::adopted(license.issued_at, license.expiration, expiration, local_now)
                    }
                };
                license.consumption_token = token;
                license.expiration = expiration.or(license.expiration);
                license.confirmed_at = local_now;
                license.state = LicenseState::Held;
                Ok(Confirmed {
                    license,
                    lease: Some((lease, arrived)),
                })
            }
            Err(LicenseManagerError::NotFound { .. }) => {
                let config = self.config.license.clone();
                Ok(fresh(&config, &mut self.lm, deadline, self.clock.as_ref()).await?)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Applies the outcome of a call: a held license, a stale one, or a lost one.
    fn settle(&mut self, result: Result<Confirmed, Failure>) -> Result<(), LicenseError> {
        match result {
            Ok(confirmed) => self.hold(confirmed),
            Err(Failure::Transient(error)) => self.stale(error.to_string()),
            Err(Failure::Lost(reason)) => self.lose(reason, None),
            Err(Failure::NotEntitled(error)) => self.lose(error.to_string(), None),
            Err(Failure::Unverified(problem)) => self.lose(
                format!("AWS License Manager's answer failed verification: {problem}"),
                Some(problem),
            ),
        }
    }

    /// Records a confirmed license and schedules its extension by its lease.
    fn hold(&mut self, confirmed: Confirmed) -> Result<(), LicenseError> {
        let Confirmed { license, lease } = confirmed;
        self.lease = lease;
        self.next_extension =
            lease.map(|(lease, arrived)| arrived + lease.next_extension(self.config.floor()));
        let timing = Timing {
            expires: lease.and_then(|(lease, arrived)| arrived.checked_add(lease.remaining)),
            clock_skew: lease.and_then(|(lease, _)| lease.clock_skew),
        };
        *lock(&self.shared.timing) = timing;
        if let Some((lease, _)) = lease {
            let changed = match (lease.notable_skew(), self.skew_reported) {
                (Some(skew), Some(reported)) => skew.abs_diff(reported) > SKEW_TOLERANCE.as_secs(),
                (skew, reported) => skew.is_some() != reported.is_some(),
            };
            if changed {
                report_skew(&lease);
                self.skew_reported = lease.notable_skew();
            }
        }
        let was_lost = matches!(
            self.shared.license().map(|license| license.state),
            Some(LicenseState::Lost { .. } | LicenseState::Stale { .. })
        );
        if was_lost {
            tracing::info!(license_arn = %license.license_arn, "the license is confirmed again");
        }
        self.shared.set_error(None);
        // Published first: ready means /v1/license and license.json show the license.
        self.publish(license)?;
        self.shared.set_ready(true);
        Ok(())
    }

    /// AWS could not confirm the license: keep it through the grace, then lose it.
    fn stale(&mut self, reason: String) -> Result<(), LicenseError> {
        let Some(mut license) = self.shared.license() else {
            return self.lose(reason, None);
        };
        let now = epoch_seconds(self.clock.now());
        let unconfirmed = Duration::from_secs(now.saturating_sub(license.confirmed_at));
        self.shared.set_error(Some(reason.clone()));
        let retry = Instant::now() + self.config.floor();
        self.next_revalidation = self.next_revalidation.min(Instant::now() + FLOOR);
        if let Some(extension) = self.next_extension.as_mut() {
            *extension = retry;
        }
        if unconfirmed >= self.config.loss_grace {
            return self.lose(
                format!(
                    "not confirmed for {} s, past the {} s loss grace; last: {reason}",
                    unconfirmed.as_secs(),
                    self.config.loss_grace.as_secs()
                ),
                None,
            );
        }
        tracing::warn!(error = %reason, unconfirmed_s = unconfirmed.as_secs(), grace_s = self.config.loss_grace.as_secs(),
            "AWS License Manager could not confirm the license; the last good one is kept through the loss grace");
        license.state = LicenseState::Stale {
            since: license.confirmed_at,
            reason,
        };
        self.publish(license)
    }

    /// The license is gone (or its answer failed verification): record it, then apply the loss
    /// policy.
    fn lose(&mut self, reason: String, unverified: Option<Unverified>) -> Result<(), LicenseError> {
        let at = epoch_seconds(self.clock.now());
        let license_arn = self
            .shared
            .license()
            .map_or_else(|| "(none)".to_owned(), |license| license.license_arn);
        if let Some(mut license) = self.shared.license() {
            license.state = LicenseState::Lost {
                at,
                reason: reason.clone(),
            };
            self.publish(license)?;
        }
        self.shared.set_error(Some(reason.clone()));
        self.shared.set_ready(false);
        self.next_extension = None;
        self.lease = None;
        *lock(&self.shared.timing) = Timing::default();
        match (self.config.on_loss, unverified) {
            (OnLoss::Exit, Some(problem)) => Err(LicenseError::Unverified {
                product_id: self.config.license.product_id.to_string(),
                problem,
            }),
            (OnLoss::Exit, None) => Err(LicenseError::Lost {
                license_arn,
                reason,
            }),
            (OnLoss::Report, _) => {
                tracing::error!(license_arn = %license_arn, reason = %reason,
                    "the license is lost; reporting it (ENTITLEMENT_GATE_ON_LOSS=report) and trying to check out again every interval");
                Ok(())
            }
        }
    }

    /// Shares the license with the API and the app (`license.json`).
    fn publish(&mut self, license: License) -> Result<(), LicenseError> {
        if let Some(dir) = &self.config.license.handoff_dir {
            license::write(dir, &license).map_err(|source| HandoffError::Write {
                dir: dir.clone(),
                source,
            })?;
        }
        self.shared.set_license(license);
        Ok(())
    }

    /// Checks a held provisional checkout in, within its own shutdown grace from now.
    async fn check_in(&mut self, signal: &'static str) -> Result<bool, LicenseError> {
        let Some(mut license) = self.shared.license() else {
            return Ok(false);
        };
        let holding = license.checkout_type == CheckoutType::Provisional
            && !matches!(
                license.state,
                LicenseState::Lost { .. } | LicenseState::Released { .. }
            );
        if !holding {
            return Ok(false);
        }
        tracing::info!(signal, license_arn = %license.license_arn, "stopping: checking the seat in");
        let deadline = Instant::now() + self.config.shutdown_grace;
        match license_manager::check_in(&self.lm, &license.consumption_token, deadline).await {
            // Lapsed already: nothing is held.
            Ok(()) | Err(LicenseManagerError::NotFound { .. }) => {
                license.state = LicenseState::Released {
                    at: epoch_seconds(self.clock.now()),
                };
                self.publish(license)?;
                Ok(true)
            }
            Err(error) => Err(LicenseError::NotCheckedIn(error)),
        }
    }

    /// A call's deadline: within the interval, and at most a few minutes.
    fn call_deadline(&self) -> Instant {
        Instant::now() + self.config.interval.min(Duration::from_secs(300))
    }
}

/// How a re-validation failed.
#[derive(Debug)]
enum Failure {
    /// AWS could not be asked (throttling, 5xx, network, permissions): the grace applies.
    Transient(LicenseManagerError),
    /// AWS said no (no entitlements: contract ended, or no seat).
    NotEntitled(LicenseError),
    /// The license is not available any more.
    Lost(String),
    /// An answer that failed verification: not trusted, and no outage either.
    Unverified(Unverified),
}

impl From<LicenseManagerError> for Failure {
    fn from(error: LicenseManagerError) -> Self {
        match error {
            // A checkout refused, or of a license that no longer exists: AWS said no.
            error @ (LicenseManagerError::NoEntitlements { .. }
            | LicenseManagerError::NotFound {
                operation: Operation::CheckoutLicense,
                ..
            }) => Failure::NotEntitled(LicenseError::LicenseManager(error)),
            // AWS does not know the license (any more): an answer, not an outage.
            error @ (LicenseManagerError::NotFound {
                operation: Operation::GetLicense,
                ..
            }
            | LicenseManagerError::Invalid {
                operation: Operation::GetLicense,
                ..
            }) => Failure::Lost(format!("unknown to AWS License Manager ({error})")),
            error => Failure::Transient(error),
        }
    }
}

impl From<LicenseError> for Failure {
    fn from(error: LicenseError) -> Self {
        match error {
            LicenseError::LicenseManager(error) => Failure::from(error),
            error @ (LicenseError::NotEntitled { .. } | LicenseError::Partial { .. }) => {
                Failure::NotEntitled(error)
            }
            LicenseError::Unverified { problem, .. } => Failure::Unverified(problem),
            error => Failure::Lost(error.to_string()),
        }
    }
}

/// The API's view of the watch.
impl Shared {
    fn license(&self) -> Option<License> {
        lock(&self.license).clone()
    }

    fn set_license(&self, license: License) {
        *lock(&self.license) = Some(license);
    }

    fn set_error(&self, error: Option<String>) {
        *lock(&self.last_error) = error;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_is_a_minute_or_a_shorter_interval() {
        assert_eq!(floor(Duration::from_secs(15 * 60)), Duration::from_secs(60));
        assert_eq!(floor(Duration::from_secs(60)), Duration::from_secs(60));
        assert_eq!(floor(Duration::from_secs(2)), Duration::from_secs(2));
    }
}
