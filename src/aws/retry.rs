//! Retrying an AWS call until it answers, fails for good, or no useful attempt fits before the
//! run's deadline. The SDK's own retries are off: this loop knows the deadline, and which
//! failures are worth another attempt.

use std::future::Future;
use std::time::Duration;

use rand::rngs::OsRng;
use rand::{Rng as _, TryRngCore as _};
use tokio::time::Instant;

/// How long to wait between attempts: exponential backoff with full jitter, i.e. a uniform draw
/// from `[0, min(cap, base * 2^attempt)]`, which spreads a crowd of gates over the quota window
/// instead of retrying in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The ceiling of the jitter window before retry number `retry` (0 for the first retry).
    pub fn ceiling(&self, retry: u32) -> Duration {
        self.base
            .checked_mul(1u32 << retry.min(20))
            .map_or(self.cap, |window| window.min(self.cap))
    }

    /// A random delay in `[0, ceiling(retry)]`.
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry).as_micros() as u64;
        Duration::from_micros(OsRng.unwrap_err().random_range(0..=ceiling))
    }
}

/// What kind of failure is worth another attempt; the final sentence depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransientKind {
    /// A throttling code or HTTP 429: the account's call quota.
    Throttled,
    /// HTTP 500, 502, 503, 504 or the service's internal error code.
    ServerError,
    /// Connection refused or reset, DNS, TLS, a body cut off mid-way.
    Network,
    /// No answer within the attempt timeout.
    Timeout,
}

/// One failed attempt that may be retried, described for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransientFailure {
    pub kind: TransientKind,
    pub detail: String,
}

/// How one attempt ended.
#[derive(Debug)]
pub enum Attempt<T, E> {
    Answered(T),
    /// Worth another attempt, if time allows; `request_id` names the answer, if there was one.
    Retry {
        failure: TransientFailure,
        request_id: Option<String>,
    },
    /// Ends the call.
    Failed(E),
}

/// The time budget of one call's attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Bound on one attempt; a slower one is abandoned and retried.
    pub attempt_timeout: Duration,
    pub backoff: Backoff,
}

/// Every attempt failed in a way worth retrying, until no useful attempt fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaveUp {
    pub attempts: u32,
    pub elapsed: Duration,
    /// The most telling failure: the last one, unless it was a timeout after the service had
    /// already said something more precise.
    pub last: TransientFailure,
    pub request_id: Option<String>,
}

/// Calls of `operation` that kept failing in a way worth retrying, until the deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persisting<Operation> {
    pub operation: Operation,
    pub gave_up: GaveUp,
    pub endpoint: String,
}

/// Why a retried call did not answer.
#[derive(Debug)]
pub enum RetryError<E> {
    Failed(E),
    GaveUp(GaveUp),
}

/// The smallest share of the attempt timeout worth starting an attempt with: one cut short by
/// the deadline mostly reports its own timeout instead of the service's answer.
const MIN_ATTEMPT_SHARE: u32 = 2;

/// Runs `attempt` (given its time budget) until it answers or fails for good, retrying
/// transient failures with jittered backoff while an attempt of at least half the attempt
/// timeout still fits before `deadline`. `operation` names the call in logs.
pub async fn until_deadline<T, E, Fut>(
    operation: &'static str,
    policy: RetryPolicy,
    deadline: Instant,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, RetryError<E>>
where
    Fut: Future<Output = Attempt<T, E>>,
{
    let started = Instant::now();
    let useful_attempt = policy.attempt_timeout / MIN_ATTEMPT_SHARE;
    let mut attempts = 0u32;
    let mut last: Option<(TransientFailure, Option<String>)> = None;
    loop {
        let budget = policy
            .attempt_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        attempts += 1;
        let (failure, request_id) = match tokio::time::timeout(budget, attempt()).await {
            Ok(Attempt::Answered(answer)) => return Ok(answer),
            Ok(Attempt::Failed(error)) => return Err(RetryError::Failed(error)),
            Ok(Attempt::Retry {
                failure,
                request_id,
            }) => (failure, request_id),
            Err(_) => (
                TransientFailure {
                    kind: TransientKind::Timeout,
                    detail: format!("no answer within {}", seconds(budget)),
                },
                None,
            ),
        };
        // A timeout says less than what an earlier attempt heard from AWS: keep that instead.
        let keeps_earlier = failure.kind == TransientKind::Timeout
            && last
                .as_ref()
                .is_some_and(|(earlier, _)| earlier.kind != TransientKind::Timeout);
        if !keeps_earlier {
            last = Some((failure, request_id));
        }
        let (failure, request_id) = last.clone().expect("set above");
        let delay = policy.backoff.delay(attempts - 1);
        if deadline.saturating_duration_since(Instant::now() + delay) < useful_attempt {
            return Err(RetryError::GaveUp(GaveUp {
                attempts,
                elapsed: started.elapsed(),
                last: failure,
                request_id,
            }));
        }
        tracing::warn!(attempt = attempts, error = %failure.detail, retry_in_ms = delay.as_millis() as u64,
            "{operation} attempt failed; retrying");
        tokio::time::sleep(delay).await;
    }
}

/// `1.5 s`, `10 s`: durations as operators read them.
fn seconds(duration: Duration) -> String {
    format!("{} s", (duration.as_secs_f64() * 1000.0).round() / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_windows_double_up_to_the_cap_and_jitter_within_them() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        let ceilings: Vec<u128> = (0..6).map(|n| backoff.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..200).map(|_| backoff.delay(3)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(800)));
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(
            distinct.len() > 150,
            "full jitter should rarely repeat: {}",
            distinct.len()
        );
        assert!(delays.iter().any(|d| *d < Duration::from_millis(400)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(400)));
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempt_timeout: Duration::from_secs(1),
            backoff: Backoff {
                base: Duration::from_millis(10),
                cap: Duration::from_millis(10),
            },
        }
    }

    fn failure(kind: TransientKind, detail: &str) -> Attempt<(), &'static str> {
        Attempt::Retry {
            failure: TransientFailure {
                kind,
                detail: detail.to_owned(),
            },
            request_id: Some(detail.to_owned()),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_never_replaces_what_the_service_said() {
        let mut answers = vec![
            failure(TransientKind::ServerError, "HTTP 503"),
            failure(TransientKind::Timeout, "slow"),
        ]
        .into_iter();
        let deadline = Instant::now() + Duration::from_secs(5);
        let result = until_deadline("Test", policy(), deadline, || {
            let answer = answers
                .next()
                .unwrap_or_else(|| failure(TransientKind::Timeout, "slow"));
            async move { answer }
        })
        .await;
        let Err(RetryError::GaveUp(gave_up)) = result else {
            panic!("expected to give up");
        };
        assert_eq!(gave_up.last.detail, "HTTP 503");
        assert_eq!(gave_up.request_id.as_deref(), Some("HTTP 503"));
        assert!(gave_up.attempts > 2);
    }

    #[tokio::test(start_paused = true)]
    async fn no_attempt_starts_without_half_the_attempt_timeout() {
        let started = Instant::now();
        let deadline = started + Duration::from_millis(1700);
        let mut starts = Vec::new();
        let result: Result<(), RetryError<&str>> =
            until_deadline("Test", policy(), deadline, || {
                starts.push(Instant::now() - started);
                async {
                    tokio::time::sleep(Duration::from_millis(600)).await;
                    failure(TransientKind::ServerError, "HTTP 500")
                }
            })
            .await;
        assert!(matches!(result, Err(RetryError::GaveUp(_))));
        // 0, ~610 ms; a third start at ~1220 ms would get under 500 ms: it never happens.
        assert_eq!(starts.len(), 2, "{starts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn answers_and_final_failures_end_the_loop_at_once() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let answered = until_deadline("Test", policy(), deadline, || async {
            Attempt::<u8, &str>::Answered(7)
        })
        .await;
        assert!(matches!(answered, Ok(7)));
        let failed = until_deadline("Test", policy(), deadline, || async {
            Attempt::<u8, &str>::Failed("no")
        })
        .await;
        assert!(matches!(failed, Err(RetryError::Failed("no"))));
    }
}
