//! Sends every closed hour with MeterUsage, oldest first: one record per dimension, with the
//! hour's total and its allocations by tag set, under a `ClientToken` derived from the
//! instance, the dimension and the hour, so that a resend after a crash or a lost answer gets
//! the same record instead of a second one.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_marketplacemetering::Client;
use tokio::time::Instant;

use super::metrics::{CallOutcome, Metrics};
use super::period::Period;
use super::store::{HourRecord, Reader, StoreError, Unsent};
use super::writer::{Refused, Writer};
use crate::aws::endpoint::{self, Pinning, Service};
use crate::aws::identity::{CredentialSource, ResolvedCredentials};
use crate::aws::metering::{self, MeterUsageCall, MeteringError};
use crate::aws::retry::{Backoff, RetryPolicy};
use crate::domain::product_code::ProductCode;
use crate::domain::quantity::Quantity;
use crate::domain::text;
use crate::domain::time::{epoch_seconds, Clock};

/// Separates this token derivation from any other SHA-256 use.
const CLIENT_TOKEN_DOMAIN: &[u8] = b"entitlement-gate meter client token v1\0";

/// The `ClientToken` of one (instance, dimension, hour): 64 hex characters (MeterUsage allows
/// 64), the same for every resend.
pub fn client_token(instance_id: &str, dimension: &str, hour_start: SystemTime) -> String {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    context.update(CLIENT_TOKEN_DOMAIN);
    for part in [
        instance_id.as_bytes(),
        dimension.as_bytes(),
        &epoch_seconds(hour_start).to_be_bytes(),
    ] {
        context.update(&(part.len() as u64).to_be_bytes());
        context.update(part);
    }
    context
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where and as whom MeterUsage is called.
#[derive(Clone)]
pub struct Destination {
    pub client: Client,
    pub product_code: ProductCode,
    pub region: String,
    pub endpoint: String,
    pub credentials_from: CredentialSource,
    pub retry: RetryPolicy,
}

impl Destination {
    /// MeterUsage for `product_code` in `region`, as the resolved identity.
    pub async fn resolve(
        product_code: ProductCode,
        region: &aws_config::Region,
        credentials: &ResolvedCredentials,
        retry: RetryPolicy,
        pinning: Pinning,
    ) -> Destination {
        let region_name = region.to_string();
        Destination {
            client: metering::client(
                region.clone(),
                credentials.provider.clone(),
                retry.attempt_timeout,
                pinning,
            )
            .await,
            product_code,
            endpoint: endpoint::resolve(Service::MarketplaceMetering, &region_name, pinning).await,
            region: region_name,
            credentials_from: credentials.source,
            retry,
        }
    }
}

/// The sender's loop.
pub struct Sender {
    pub destination: Destination,
    pub reader: Reader,
    pub writer: Writer,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub period: Period,
    pub instance_id: String,
}

/// How long a pass may retry transient failures.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    /// While running: each hour gets this long, so that every hour gets its turn, and an hour
    /// at its carry time is carried into the open hour.
    EachHour(Duration),
    /// At shutdown: everything must be done by then (the shutdown grace). Nothing is carried,
    /// as the hour it would go into is closed; an hour that cannot be sent stays in the state,
    /// and the sidecar restarted on it carries it.
    All(Instant),
}

/// How a pass over the unsent hours went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pass {
    /// Hours settled (sent, refused as duplicates, or carried).
    pub settled: usize,
    /// Hours left unsent (to try again).
    pub left: usize,
}

impl Sender {
    /// Sends until `stop` resolves (at once, even mid-send: an hour left unsent is resent
    /// under the same token). Each pass gives an hour a quarter period of retries before moving
    /// on; between passes that left something unsent, waits a jittered backoff growing up to a
    /// quarter period.
    pub async fn run(&self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let quarter = self.period.duration() / 4;
        let backoff = Backoff {
            base: self.destination.retry.backoff.base,
            cap: quarter,
        };
        let budget = quarter.max(self.destination.retry.attempt_timeout * 2);
        let mut failed_passes = 0u32;
        loop {
            // While the state cannot be written no outcome could be recorded: wait for it.
            tokio::select! {
                _ = &mut stop => return,
                _ = self.writer.writable() => {}
            }
            let pass = tokio::select! {
                _ = &mut stop => return,
                pass = self.pass(Limit::EachHour(budget)) => pass,
            };
            let wait = if pass.left == 0 {
                failed_passes = 0;
                None
            } else {
                failed_passes += 1;
                Some(backoff.delay(failed_passes - 1))
            };
            tokio::select! {
                _ = &mut stop => return,
                _ = self.writer.closed.notified() => {}
                _ = sleep_for(wait) => {}
            }
        }
    }

    /// Tries every unsent hour once, each with retries of transient failures within `limit`
    /// and before its carry time.
    pub async fn pass(&self, limit: Limit) -> Pass {
        let unsent = match self.reader.unsent() {
            Ok(unsent) => unsent,
            Err(error) => {
                tracing::error!(error = %error, "cannot read the unsent hours");
                return Pass {
                    settled: 0,
                    left: 1,
                };
            }
        };
        let mut pass = Pass::default();
        for hour in unsent {
            let until = match limit {
                Limit::EachHour(budget) => Instant::now() + budget,
                Limit::All(until) => until,
            };
            let may_carry = matches!(limit, Limit::EachHour(_));
            match self.send(&hour, until, may_carry).await {
                Ok(true) => pass.settled += 1,
                Ok(false) => pass.left += 1,
                Err(error) => {
                    tracing::error!(error = %error, "cannot record a MeterUsage outcome");
                    pass.left += 1;
                }
            }
        }
        pass
    }

    /// Sends, carries (if `may_carry`) or settles one unsent hour; `Ok(true)` when it is
    /// settled.
    async fn send(
        &self,
        unsent: &Unsent,
        until: Instant,
        may_carry: bool,
    ) -> Result<bool, Failure> {
        let now = self.clock.now();
        let label = self.period.label(unsent.hour);
        let carry_after = self.period.carry_after(unsent.hour);
        if may_carry && now >= carry_after {
            self.carry_or_leave_in_doubt(
                unsent,
                &label,
                "it is about to leave MeterUsage's 6-hour window",
            )
            .await?;
            return Ok(true);
        }
        let allocations: Vec<(Vec<(String, String)>, Quantity)> = self
            .reader
            .allocations(unsent.hour, &unsent.dimension)?
            .into_iter()
            .map(|(tags, micros)| (tags.into_iter().collect(), Quantity::from_micros(micros)))
            .collect();
        let quantity = Quantity::from_micros(unsent.quantity);
        let hour_start = self.period.start(unsent.hour);
        let token = client_token(&self.instance_id, &unsent.dimension, hour_start);
        let destination = &self.destination;
        let call = MeterUsageCall {
            product_code: &destination.product_code,
            dimension: &unsent.dimension,
            timestamp: hour_start,
            quantity,
            allocations: &allocations,
            client_token: &token,
            region: &destination.region,
            credentials_from: destination.credentials_from,
            endpoint: &destination.endpoint,
            retry: destination.retry,
        };
        // While hours can be carried, retries stop at the carry time.
        let deadline = if may_carry {
            until.min(Instant::now() + carry_after.duration_since(now).unwrap_or(Duration::ZERO))
        } else {
            until
        };
        if !unsent.in_doubt {
            // Durably before the request leaves: a crash while it is out must not let the
            // hour be carried later as though AWS surely had nothing.
            self.writer
                .settle(
                    unsent.hour,
                    &unsent.dimension,
                    HourRecord::Unsent {
                        quantity: unsent.quantity,
                        attempts: unsent.attempts,
                        last_error: unsent.last_error.clone(),
                        in_doubt: true,
                    },
                )
                .await?;
        }
        let result = metering::meter_usage(&destination.client, &call, deadline).await;
        let in_doubt = unsent.in_doubt
            || result
                .as_ref()
                .is_err_and(|failure| failure.may_be_recorded);
        let result = result.map_err(|failure| failure.error);
        let outcome = CallOutcome::of(&result);
        self.metrics.call(outcome);
        match result {
            Ok(answer) => {
                tracing::info!(dimension = %unsent.dimension, hour = %label, %quantity,
                    metering_record_id = %answer.metering_record_id,
                    request_id = answer.request_id.as_deref(), "usage sent with MeterUsage");
                self.writer
                    .settle(
                        unsent.hour,
                        &unsent.dimension,
                        HourRecord::Sent {
                            quantity: unsent.quantity,
                            record_id: answer.metering_record_id,
                            sent_at: epoch_seconds(self.clock.now()),
                        },
                    )
                    .await?;
                Ok(true)
            }
            Err(MeteringError::DuplicateRequest { aws_message, .. }) => {
                tracing::error!(dimension = %unsent.dimension, hour = %label, %quantity,
                    aws_message = %aws_message,
                    "AWS already holds a record for this pod or task, dimension and hour with another quantity than this instance's {quantity} units ({aws_message}); it is not resent, and the difference is not billed");
                self.writer
                    .settle(
                        unsent.hour,
                        &unsent.dimension,
                        HourRecord::Duplicate {
                            quantity: unsent.quantity,
                            message: aws_message,
                            at: epoch_seconds(self.clock.now()),
                        },
                    )
                    .await?;
                Ok(true)
            }
            Err(MeteringError::TimestampOutOfBounds { .. }) if may_carry => {
                let unsent = Unsent {
                    in_doubt,
                    ..unsent.clone()
                };
                self.carry_or_leave_in_doubt(
                    &unsent,
                    &label,
                    "MeterUsage no longer accepts its hour",
                )
                .await?;
                Ok(true)
            }
            Err(error) => {
                let detail = text::quoted(&error.to_string());
                tracing::warn!(dimension = %unsent.dimension, hour = %label, %quantity, error = %detail,
                    "MeterUsage did not take the hour's usage; it stays in the state and is sent again");
                self.writer
                    .settle(
                        unsent.hour,
                        &unsent.dimension,
                        HourRecord::Unsent {
                            quantity: unsent.quantity,
                            attempts: unsent.attempts + 1,
                            last_error: Some(detail),
                            in_doubt,
                        },
                    )
                    .await?;
                Ok(false)
            }
        }
    }

    /// An hour that can no longer be sent: carried into the current hour when AWS surely does
    /// not hold it, else left in doubt, since carrying it could bill it twice.
    async fn carry_or_leave_in_doubt(
        &self,
        unsent: &Unsent,
        label: &str,
        why: &str,
    ) -> Result<(), Failure> {
        if unsent.in_doubt {
            self.writer
                .settle(
                    unsent.hour,
                    &unsent.dimension,
                    HourRecord::InDoubt {
                        quantity: unsent.quantity,
                        at: epoch_seconds(self.clock.now()),
                    },
                )
                .await?;
            self.metrics.in_doubt();
            tracing::error!(dimension = %unsent.dimension, hour = %label, quantity = %Quantity::from_micros(unsent.quantity),
                "the hour's usage was not confirmed and {why}; an earlier attempt got no answer, so AWS may hold it: it is neither carried (that could bill it twice) nor resent; compare it with the product's metering records in AWS Marketplace's reports");
            return Ok(());
        }
        self.writer.carry(unsent.hour, &unsent.dimension).await?;
        self.metrics.carried();
        tracing::warn!(dimension = %unsent.dimension, hour = %label, quantity = %Quantity::from_micros(unsent.quantity),
            "the hour's usage was not sent and {why}: it is carried into the current hour, as AWS allows reporting missed usage in a later hour");
        Ok(())
    }
}

/// Why an outcome could not be recorded.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Writer(#[from] Refused),
}

async fn sleep_for(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn client_tokens_are_stable_distinct_and_fit_meter_usage() {
        let hour = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let token = client_token("instance-a", "requests", hour);
        assert_eq!(token.len(), 64);
        assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(token, client_token("instance-a", "requests", hour));
        for other in [
            client_token("instance-b", "requests", hour),
            client_token("instance-a", "users", hour),
            client_token("instance-a", "requests", hour + Duration::from_secs(3600)),
            // Lengths are part of the input: no two splits of the same bytes collide.
            client_token("instance-ar", "equests", hour),
        ] {
            assert_ne!(token, other);
        }
    }
}
