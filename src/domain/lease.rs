//! How long a License Manager checkout is good for, and when to extend it, by AWS's own clock.
//!
//! A lifetime comes from AWS's own pair of timestamps (`Expiration - IssuedAt` of the checkout)
//! and is measured on the local monotonic clock from when the answer arrived. The node's wall
//! clock is compared with AWS's (the skew is reported) but never mixed in: a node 40 minutes
//! ahead would otherwise see each new checkout as 40 minutes closer to lapsing, and extend it
//! without pause. Every wait these functions compute has a floor.

use super::time::epoch_text;
use std::time::Duration;

/// AWS's lifetime of a provisional checkout (60 minutes), for an answer that gives none.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(60 * 60);

/// How far the local clock may disagree with AWS's before it is reported.
pub const SKEW_TOLERANCE: Duration = Duration::from_secs(60);

/// The longest wait computed for an extension: the watch re-validates at least daily anyway,
/// and a later instant could overflow.
pub const MAX_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

/// A checkout's time as AWS answered it, seen from the moment its answer arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// AWS's lifetime of the checkout: `Expiration - IssuedAt`; never zero.
    pub lifetime: Duration,
    /// How long it had left when the answer arrived; never zero.
    pub remaining: Duration,
    /// AWS's clock (epoch seconds) when the answer arrived, when known.
    pub aws_time: Option<u64>,
    /// The local clock minus AWS's (seconds; positive: the node is ahead), when known.
    pub clock_skew: Option<i64>,
}

/// Why a checkout's time is not accepted: it has lapsed by AWS's own clock.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Lapsed {
    #[error("its Expiration ({}) is not after its IssuedAt ({})", epoch_text(*expiration), epoch_text(*issued_at))]
    BeforeIssued { issued_at: u64, expiration: u64 },
    /// An answer without `IssuedAt`, judged by the local clock.
    #[error("its Expiration ({}) has passed by the local clock ({}), and it gave no IssuedAt to judge by", epoch_text(*expiration), epoch_text(*now))]
    Passed { expiration: u64, now: u64 },
    /// An extension that ends before AWS's clock, as measured since its checkout.
    #[error("ExtendLicenseConsumption answered an Expiration ({}) that AWS's clock had passed (about {})", epoch_text(*expiration), epoch_text(*aws_time))]
    ExtensionPassed { expiration: u64, aws_time: u64 },
}

impl Lease {
    /// A checkout's lease from its `IssuedAt` and `Expiration` (epoch seconds), `local_now`
    /// being the local wall clock when the answer arrived.
    pub fn of_checkout(
        issued_at: Option<u64>,
        expiration: Option<u64>,
        local_now: u64,
    ) -> Result<Lease, Lapsed> {
        match (issued_at, expiration) {
            (Some(issued_at), Some(expiration)) if expiration <= issued_at => {
                Err(Lapsed::BeforeIssued {
                    issued_at,
                    expiration,
                })
            }
            (Some(issued_at), Some(expiration)) => {
                let lifetime = Duration::from_secs(expiration - issued_at);
                Ok(Lease {
                    lifetime,
                    remaining: lifetime,
                    aws_time: Some(issued_at),
                    clock_skew: Some(skew(local_now, issued_at)),
                })
            }
            (None, Some(expiration)) if expiration <= local_now => Err(Lapsed::Passed {
                expiration,
                now: local_now,
            }),
            (None, Some(expiration)) => {
                let lifetime = Duration::from_secs(expiration - local_now);
                Ok(Lease {
                    lifetime,
                    remaining: lifetime,
                    aws_time: None,
                    clock_skew: None,
                })
            }
            (issued_at, None) => Ok(Lease {
                lifetime: DEFAULT_LIFETIME,
                remaining: DEFAULT_LIFETIME,
                aws_time: issued_at,
                clock_skew: issued_at.map(|issued_at| skew(local_now, issued_at)),
            }),
        }
    }

    /// A checkout made by another process (the start-up gate's, from `license.json`), just
    /// extended: its lifetime from the file's pair (AWS's 60 minutes if that makes none), AWS's
    /// clock from the extension's `Expiration` less that lifetime.
    pub fn adopted(
        issued_at: Option<u64>,
        expiration: Option<u64>,
        extended_to: Option<u64>,
        local_now: u64,
    ) -> Lease {
        let lifetime = issued_at
            .zip(expiration)
            .and_then(|(issued_at, expiration)| expiration.checked_sub(issued_at))
            .filter(|seconds| *seconds > 0)
            .map_or(DEFAULT_LIFETIME, Duration::from_secs);
        let aws_time = extended_to.and_then(|to| to.checked_sub(lifetime.as_secs()));
        Lease {
            lifetime,
            remaining: lifetime,
            aws_time,
            clock_skew: aws_time.map(|aws_time| skew(local_now, aws_time)),
        }
    }

    /// The lease after an ExtendLicenseConsumption answered `since` after this lease's answer
    /// arrived, with `expiration` (if it gave one). AWS's clock then is this lease's plus
    /// `since` on the monotonic clock. Without an Expiration, the lifetime is kept (AWS extends
    /// by it), never zero.
    pub fn extended(
        &self,
        since: Duration,
        expiration: Option<u64>,
        local_now: u64,
    ) -> Result<Lease, Lapsed> {
        let aws_time = self
            .aws_time
            .map(|aws_time| aws_time.saturating_add(since.as_secs()));
        let (remaining, aws_time) = match (expiration, aws_time) {
            (None, aws_time) => (self.lifetime, aws_time),
            (Some(expiration), Some(aws_time)) if expiration <= aws_time => {
                return Err(Lapsed::ExtensionPassed {
                    expiration,
                    aws_time,
                })
            }
            (Some(expiration), Some(aws_time)) => {
                (Duration::from_secs(expiration - aws_time), Some(aws_time))
            }
            (Some(expiration), None) => (
                self.lifetime,
                expiration.checked_sub(self.lifetime.as_secs()),
            ),
        };
        Ok(Lease {
            lifetime: self.lifetime,
            remaining,
            aws_time,
            clock_skew: aws_time.map(|aws_time| skew(local_now, aws_time)),
        })
    }

    /// How long after this answer arrived to extend: half a lifetime before it lapses, so that
    /// one failed extension still leaves time for another, but never sooner than `floor`, nor
    /// later than [`MAX_WAIT`].
    pub fn next_extension(&self, floor: Duration) -> Duration {
        self.remaining
            .saturating_sub(self.lifetime / 2)
            .min(MAX_WAIT)
            .max(floor)
    }

    /// What is left `since` after the answer arrived.
    pub fn left(&self, since: Duration) -> Duration {
        self.remaining.saturating_sub(since)
    }

    /// The skew, when the local clock disagrees with AWS's by more than [`SKEW_TOLERANCE`].
    pub fn notable_skew(&self) -> Option<i64> {
        self.clock_skew
            .filter(|skew| skew.unsigned_abs() > SKEW_TOLERANCE.as_secs())
    }
}

/// `local - aws` in seconds, saturating.
fn skew(local: u64, aws: u64) -> i64 {
    i64::try_from(i128::from(local) - i128::from(aws)).unwrap_or(if local > aws {
        i64::MAX
    } else {
        i64::MIN
    })
}

/// `2400 s ahead of`, `90 s behind`: the skew for a sentence.
pub fn describe_skew(skew: i64) -> String {
    if skew >= 0 {
        format!("{skew} s ahead of")
    } else {
        format!("{} s behind", skew.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOUR: u64 = 3600;
    const NOW: u64 = 1_800_000_000;

    #[test]
    fn a_checkout_lives_by_aws_clock_whatever_the_nodes_says() {
        // The node 40 minutes ahead: AWS issued it "40 minutes ago" by the local clock.
        let skewed = Lease::of_checkout(Some(NOW - 2400), Some(NOW - 2400 + HOUR), NOW).unwrap();
        assert_eq!(skewed.lifetime, Duration::from_secs(HOUR));
        assert_eq!(skewed.remaining, Duration::from_secs(HOUR));
        assert_eq!(skewed.clock_skew, Some(2400));
        assert_eq!(skewed.notable_skew(), Some(2400));
        let floor = Duration::from_secs(60);
        assert_eq!(skewed.next_extension(floor), Duration::from_secs(HOUR / 2));
        // Two hours ahead: by the local clock it lapsed an hour ago; by AWS's it has an hour.
        let far = Lease::of_checkout(Some(NOW - 7200), Some(NOW - 3600), NOW).unwrap();
        assert_eq!(far.remaining, Duration::from_secs(HOUR));
        let behind = Lease::of_checkout(Some(NOW + 30), Some(NOW + 30 + HOUR), NOW).unwrap();
        assert_eq!(behind.clock_skew, Some(-30));
        assert_eq!(behind.notable_skew(), None, "within a minute");
        assert_eq!(describe_skew(2400), "2400 s ahead of");
        assert_eq!(describe_skew(-90), "90 s behind");
    }

    #[test]
    fn a_checkout_that_lapsed_by_aws_clock_is_refused() {
        assert_eq!(
            Lease::of_checkout(Some(NOW), Some(NOW - 60), NOW),
            Err(Lapsed::BeforeIssued {
                issued_at: NOW,
                expiration: NOW - 60
            })
        );
        assert!(Lease::of_checkout(Some(NOW), Some(NOW), NOW).is_err());
        // Without IssuedAt only the local clock can judge.
        assert!(matches!(
            Lease::of_checkout(None, Some(NOW - 1), NOW),
            Err(Lapsed::Passed { .. })
        ));
        assert_eq!(
            Lease::of_checkout(None, Some(NOW + 600), NOW)
                .unwrap()
                .remaining,
            Duration::from_secs(600)
        );
        assert_eq!(
            Lease::of_checkout(Some(NOW), None, NOW).unwrap().lifetime,
            DEFAULT_LIFETIME
        );
    }

    #[test]
    fn an_extension_keeps_aws_clock_and_without_expiration_the_lifetime() {
        let checkout = Lease::of_checkout(Some(NOW - 2400), Some(NOW - 2400 + HOUR), NOW).unwrap();
        let half = Duration::from_secs(HOUR / 2);
        // Extended at half-life to AWS's now + an hour.
        let extended = checkout
            .extended(half, Some(NOW - 2400 + HOUR / 2 + HOUR), NOW + HOUR / 2)
            .unwrap();
        assert_eq!(extended.remaining, Duration::from_secs(HOUR));
        assert_eq!(extended.aws_time, Some(NOW - 2400 + HOUR / 2));
        assert_eq!(extended.clock_skew, Some(2400));
        // No Expiration: the lifetime is kept, never zero.
        let silent = extended.extended(half, None, NOW + HOUR).unwrap();
        assert_eq!(silent.remaining, Duration::from_secs(HOUR));
        assert_eq!(silent.next_extension(Duration::ZERO), half);
        // An Expiration AWS's clock has passed.
        assert!(matches!(
            checkout.extended(half, Some(NOW - 2400), NOW + HOUR / 2),
            Err(Lapsed::ExtensionPassed { .. })
        ));
        // The node's clock stepped by an hour since: AWS's clock, measured monotonically,
        // did not.
        let stepped = checkout
            .extended(
                half,
                Some(NOW - 2400 + HOUR / 2 + HOUR),
                NOW + HOUR / 2 + HOUR,
            )
            .unwrap();
        assert_eq!(stepped.remaining, Duration::from_secs(HOUR));
        assert_eq!(stepped.clock_skew, Some(2400 + HOUR as i64));
    }

    #[test]
    fn an_adopted_checkout_takes_its_lifetime_from_the_file_and_its_clock_from_aws() {
        let adopted = Lease::adopted(
            Some(NOW - 100),
            Some(NOW - 100 + HOUR),
            Some(NOW + HOUR),
            NOW,
        );
        assert_eq!(adopted.lifetime, Duration::from_secs(HOUR));
        assert_eq!(adopted.aws_time, Some(NOW));
        assert_eq!(adopted.clock_skew, Some(0));
        let nonsense = Lease::adopted(Some(NOW), Some(NOW - 5), None, NOW);
        assert_eq!(nonsense.lifetime, DEFAULT_LIFETIME);
        assert_eq!(nonsense.clock_skew, None);
    }

    fn answer() -> impl Strategy<Value = Option<u64>> {
        prop_oneof![
            Just(None),
            (0u64..4 * HOUR).prop_map(|offset| Some(NOW - 2 * HOUR + offset)),
            any::<u64>().prop_map(Some),
        ]
    }

    proptest! {
        /// For any answers (missing Expiration, Expiration before IssuedAt, skewed or stepping
        /// clocks, absurd times), the next extension is never sooner than the floor, nor a
        /// lifetime zero.
        #[test]
        fn the_next_extension_is_never_sooner_than_the_floor(
            issued_at in answer(),
            expiration in answer(),
            local_now in prop_oneof![Just(NOW), any::<u64>()],
            extensions in proptest::collection::vec(
                (0u64..2 * HOUR, answer(), any::<u64>()), 0..6),
            floor_s in 0u64..600,
            adopted in any::<bool>(),
        ) {
            let floor = Duration::from_secs(floor_s);
            let first = if adopted {
                Some(Lease::adopted(issued_at, expiration, extensions.first().and_then(|e| e.1), local_now))
            } else {
                Lease::of_checkout(issued_at, expiration, local_now).ok()
            };
            let Some(mut lease) = first else { return Ok(()); };
            prop_assert!(!lease.lifetime.is_zero());
            prop_assert!(!lease.remaining.is_zero());
            let next = lease.next_extension(floor);
            prop_assert!(next >= floor, "{next:?} < {floor:?} for {lease:?}");
            prop_assert!(next <= MAX_WAIT.max(floor));
            for (since, expiration, local_now) in extensions {
                match lease.extended(Duration::from_secs(since), expiration, local_now) {
                    Ok(extended) => {
                        prop_assert!(!extended.lifetime.is_zero());
                        prop_assert!(!extended.remaining.is_zero());
                        prop_assert!(extended.next_extension(floor) >= floor);
                        lease = extended;
                    }
                    Err(_) => prop_assert!(expiration.is_some(), "only an Expiration can lapse it"),
                }
            }
        }
    }
}
