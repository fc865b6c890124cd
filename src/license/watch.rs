//! `license watch`: the sidecar that keeps the license while the workload runs.
//!
//! It adopts the checkout `license check` left in `license.json` (or checks out itself), and:
//! - extends a provisional checkout at half its lifetime, so a floating seat never lapses;
//! - re-validates every interval: tiers and features (unit None, nothing counted) are checked
//!   out anew, which also picks up an upgrade; a counted seat is extended instead (checking out
//!   a second seat could fail only because this pod holds the first) and a drawdown is never
//!   drawn again; both then ask GetLicense whether the contract is still available;
//! - keeps the last good license through AWS outages for the loss grace, then applies the loss
//!   policy: exit (the pod restarts into the start-up gate) or report (status and metrics);
//! - checks a provisional checkout in on SIGTERM, so the seat is back at once instead of in an
//!   hour.
//!
//! `license.json` is rewritten atomically on every change of state.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::api::{lock, Api, Shared};
use super::check::{self, held};
use super::{connect, LicenseConfig, LicenseError, OnLoss};
use crate::aws::license_manager::{self, LicenseManager, LicenseManagerError, Operation};
use crate::domain::handoff::HandoffError;
use crate::domain::license::{self, CheckoutType, License, LicenseState};
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

/// The shortest wait before trying again after a failure.
const RETRY_SOON: Duration = Duration::from_secs(60);

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
}

/// Starts the watch: listens at once (503 until ready), connects, adopts the checkout in
/// `license.json` or checks out anew, and becomes ready; within the start-up deadline.
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
    let license = match adoptable(config, clock.now()) {
        Some(license) => {
            tracing::info!(license_arn = %license.license_arn, "adopting the checkout the start-up gate made");
            match confirm(&lm, license.clone(), deadline, clock.as_ref()).await {
                Ok(license) => license,
                // Expired, checked in, or unknown: check out anew.
                Err(LicenseManagerError::NotFound { .. }) => {
                    fresh(&config.license, &mut lm, deadline, clock.as_ref()).await?
                }
                Err(error) => return Err(error.into()),
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
    };
    watch.hold(license)?;
    watch.shared.set_ready(true);
    tracing::info!(listen = %config.listen, interval = ?config.interval, on_loss = ?config.on_loss,
        "ready: watching the license");
    Ok(watch)
}

/// The checkout in `license.json`, if it is this product's and still current.
fn adoptable(config: &WatchConfig, now: SystemTime) -> Option<License> {
    let dir = config.license.handoff_dir.as_ref()?;
    let license = license::read(dir).ok()?;
    (license.product_id == config.license.product_id.as_str()
        && license.checkout_type == config.license.checkout_type
        && check::current(&license, now))
    .then_some(license)
}

/// A new checkout, as the start-up gate makes it.
async fn fresh(
    config: &LicenseConfig,
    lm: &mut LicenseManager,
    deadline: Instant,
    clock: &dyn Clock,
) -> Result<License, LicenseError> {
    let checkout = check::checkout(config, lm, deadline).await?;
    Ok(held(config, lm, checkout, clock))
}

/// Confirms a held checkout with AWS without taking more: a provisional one is extended (which
/// fails once it has lapsed), a drawdown's license is read.
async fn confirm(
    lm: &LicenseManager,
    mut license: License,
    deadline: Instant,
    clock: &dyn Clock,
) -> Result<License, LicenseManagerError> {
    match license.checkout_type {
        CheckoutType::Provisional => {
            let (token, expiration) =
                license_manager::extend(lm, &license.consumption_token, deadline).await?;
            license.consumption_token = token;
            license.expiration = expiration.or(license.expiration);
        }
        CheckoutType::Perpetual => {}
    }
    license.confirmed_at = epoch_seconds(clock.now());
    license.state = LicenseState::Held;
    Ok(license)
}

impl Watch {
    /// Keeps the license until `stop` resolves, then checks a provisional seat in within the
    /// shutdown grace. Returns early with [`LicenseError::Lost`] when the license is lost and
    /// the policy is to exit.
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
            let due_extension = self.next_extension.is_some_and(|at| at <= Instant::now());
            let step = if Instant::now() >= self.next_revalidation {
                self.revalidate().await
            } else if due_extension {
                self.extend().await
            } else {
                Ok(())
            };
            if let Err(error) = step {
                break Err(error);
            }
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
    async fn renew(&mut self, old: License, deadline: Instant) -> Result<License, Failure> {
        let config = self.config.license.clone();
        let renewed = fresh(&config, &mut self.lm, deadline, self.clock.as_ref()).await?;
        if renewed.consumption_token != old.consumption_token {
            if let Err(error) =
                license_manager::check_in(&self.lm, &old.consumption_token, deadline).await
            {
                tracing::debug!(error = %error, "the replaced checkout was not checked in; it lapses by itself");
            }
        }
        Ok(renewed)
    }

    /// Extends (provisional) and reads the license's status.
    async fn confirm_and_read(
        &mut self,
        license: License,
        deadline: Instant,
    ) -> Result<License, Failure> {
        let license = self.extend_or_check_out(license, deadline).await?;
        let status = license_manager::get_license(&self.lm, &license.license_arn, deadline).await?;
        let now = epoch_seconds(self.clock.now());
        if status.status != "AVAILABLE" {
            return Err(Failure::Lost(format!("{} (GetLicense)", status.status)));
        }
        if let Some(ends) = status.ends.filter(|ends| *ends <= now) {
            return Err(Failure::Lost(format!(
                "past the end of its contract ({})",
                crate::domain::time::epoch_text(ends)
            )));
        }
        Ok(license)
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
        license: License,
        deadline: Instant,
    ) -> Result<License, Failure> {
        match confirm(&self.lm, license, deadline, self.clock.as_ref()).await {
            Ok(license) => Ok(license),
            Err(LicenseManagerError::NotFound { .. }) => {
                let config = self.config.license.clone();
                Ok(fresh(&config, &mut self.lm, deadline, self.clock.as_ref()).await?)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Applies the outcome of a call: a held license, a stale one, or a lost one.
    fn settle(&mut self, result: Result<License, Failure>) -> Result<(), LicenseError> {
        match result {
            Ok(license) => self.hold(license),
            Err(Failure::Transient(error)) => self.stale(error.to_string()),
            Err(Failure::Lost(reason)) => self.lose(reason),
            Err(Failure::NotEntitled(error)) => self.lose(error.to_string()),
        }
    }

    /// Records a confirmed license and schedules its extension.
    fn hold(&mut self, license: License) -> Result<(), LicenseError> {
        self.next_extension = match license.checkout_type {
            CheckoutType::Provisional => {
                license_manager::remaining(license.expiration, self.clock.now()).map(|left| {
                    let lifetime = license
                        .expiration
                        .zip(license.issued_at)
                        .map(|(expires, issued)| {
                            Duration::from_secs(expires.saturating_sub(issued))
                        })
                        .filter(|lifetime| !lifetime.is_zero())
                        .unwrap_or(left);
                    // Half its lifetime before it lapses, so one failed extension still has time.
                    Instant::now() + left.saturating_sub(lifetime / 2)
                })
            }
            CheckoutType::Perpetual => None,
        };
        let was_lost = matches!(
            self.shared.license().map(|license| license.state),
            Some(LicenseState::Lost { .. } | LicenseState::Stale { .. })
        );
        if was_lost {
            tracing::info!(license_arn = %license.license_arn, "the license is confirmed again");
        }
        self.shared.set_error(None);
        // Published before it is ready: a probe that sees ready reads the held license.
        self.publish(license)?;
        self.shared.set_ready(true);
        Ok(())
    }

    /// AWS could not confirm the license: keep it through the grace, then lose it.
    fn stale(&mut self, reason: String) -> Result<(), LicenseError> {
        let Some(mut license) = self.shared.license() else {
            return self.lose(reason);
        };
        let now = epoch_seconds(self.clock.now());
        let unconfirmed = Duration::from_secs(now.saturating_sub(license.confirmed_at));
        self.shared.set_error(Some(reason.clone()));
        self.next_revalidation = self.next_revalidation.min(Instant::now() + RETRY_SOON);
        if let Some(extension) = self.next_extension.as_mut() {
            *extension = Instant::now() + RETRY_SOON.min(self.config.interval);
        }
        if unconfirmed >= self.config.loss_grace {
            return self.lose(format!(
                "not confirmed for {} s, past the {} s loss grace; last: {reason}",
                unconfirmed.as_secs(),
                self.config.loss_grace.as_secs()
            ));
        }
        tracing::warn!(error = %reason, unconfirmed_s = unconfirmed.as_secs(), grace_s = self.config.loss_grace.as_secs(),
            "AWS License Manager could not confirm the license; the last good one is kept through the loss grace");
        license.state = LicenseState::Stale {
            since: license.confirmed_at,
            reason,
        };
        self.publish(license)
    }

    /// The license is gone: record it, then apply the loss policy.
    fn lose(&mut self, reason: String) -> Result<(), LicenseError> {
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
        match self.config.on_loss {
            OnLoss::Exit => Err(LicenseError::Lost {
                license_arn,
                reason,
            }),
            OnLoss::Report => {
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

    /// Checks a held provisional checkout in, within the shutdown grace.
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
