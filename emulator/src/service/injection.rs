//! When the configured faults fire: counted per operation, so faults on one operation do not
//! consume another's, and drawn from a seeded generator for the random ones.

use std::collections::BTreeMap;
use std::time::Duration;

use super::mix64;
use crate::{
    Faults, InjectedError, LicenseFault, Operation, ResponseFault, StatusFault, TokenFault,
};

/// The live faults, how many calls each operation has had since they were set, and the
/// generator the random faults draw from.
pub(super) struct Injection {
    faults: Faults,
    calls: BTreeMap<Operation, u64>,
    /// Batch records left unprocessed so far by `unprocessed_first`.
    unprocessed: u64,
    draws: u64,
}

/// What the faults do to one call.
#[derive(Debug, Default)]
pub(crate) struct FaultPlan {
    /// Close the connection before processing.
    pub drop: bool,
    /// Refuse after the envelope and quota checks.
    pub refusal: Option<Refusal>,
    pub token: Option<TokenFault>,
    pub response: Option<ResponseFault>,
    /// Process the call, then close the connection instead of answering.
    pub lose_response: bool,
    pub delay: Duration,
    pub license: Option<LicenseFault>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Refusal {
    Throttle,
    /// A 500.
    Fail,
    Error {
        error: InjectedError,
        header_only: bool,
    },
    Status(StatusFault),
}

impl Injection {
    pub fn new(faults: Faults) -> Self {
        Self {
            faults,
            calls: BTreeMap::new(),
            unprocessed: 0,
            draws: 0,
        }
    }

    pub fn plan(&mut self, operation: Operation) -> FaultPlan {
        if !self.faults.apply_to(operation) {
            return FaultPlan::default();
        }
        let calls = self.calls.entry(operation).or_default();
        let call = *calls;
        *calls += 1;
        let faults = &self.faults;
        let dropped = u64::from(faults.drop_first);
        let throttled = dropped + u64::from(faults.throttle_first);
        let failed = throttled + u64::from(faults.fail_first);
        let mut plan = FaultPlan {
            drop: call < dropped,
            refusal: if call < dropped {
                None
            } else if call < throttled {
                Some(Refusal::Throttle)
            } else if call < failed {
                Some(Refusal::Fail)
            } else {
                None
            },
            token: faults.token,
            response: faults.response,
            lose_response: false,
            delay: faults.delay,
            license: faults.license_fault,
        };
        if call >= failed {
            self.draw_random(&mut plan);
        }
        let faults = &self.faults;
        if !plan.drop && !plan.lose_response && plan.refusal.is_none() {
            plan.refusal = match &faults.error {
                Some(error) => Some(Refusal::Error {
                    error: error.clone(),
                    header_only: faults.error_in_header_only,
                }),
                None => faults.status.map(Refusal::Status),
            };
        }
        plan
    }

    fn draw_random(&mut self, plan: &mut FaultPlan) {
        let Some(random) = self.faults.random.clone() else {
            return;
        };
        if self.chance(random.seed, random.drop) {
            plan.drop = true;
        } else if self.chance(random.seed, random.throttle) {
            plan.refusal = Some(Refusal::Throttle);
        } else if self.chance(random.seed, random.fail) {
            plan.refusal = Some(Refusal::Fail);
        } else if self.chance(random.seed, random.lose_response) {
            plan.lose_response = true;
        }
        if self.chance(random.seed, random.slow) {
            plan.delay += random.slow_delay;
        }
    }

    /// For each of `count` batch records, whether to leave it unprocessed.
    pub fn unprocessed_records(&mut self, operation: Operation, count: usize) -> Vec<bool> {
        if !self.faults.apply_to(operation) {
            return vec![false; count];
        }
        let random = self.faults.random.clone().unwrap_or_default();
        (0..count)
            .map(|_| {
                if self.unprocessed < u64::from(self.faults.unprocessed_first) {
                    self.unprocessed += 1;
                    true
                } else {
                    self.chance(random.seed, random.unprocessed)
                }
            })
            .collect()
    }

    /// True with the given probability: the next draw of a counter-based SplitMix64 stream.
    fn chance(&mut self, seed: u64, probability: f64) -> bool {
        self.draws += 1;
        let draw = mix64(seed.wrapping_add(self.draws.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        // The top 53 bits as a uniform number in [0, 1).
        let unit = (draw >> 11) as f64 / (1u64 << 53) as f64;
        unit < probability
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RandomFaults;

    #[test]
    fn counted_faults_apply_in_order_then_clear() {
        let mut injection = Injection::new(Faults {
            drop_first: 1,
            throttle_first: 2,
            fail_first: 1,
            ..Faults::default()
        });
        let plans: Vec<FaultPlan> = (0..5)
            .map(|_| injection.plan(Operation::RegisterUsage))
            .collect();
        assert!(plans[0].drop);
        assert_eq!(plans[1].refusal, Some(Refusal::Throttle));
        assert_eq!(plans[2].refusal, Some(Refusal::Throttle));
        assert_eq!(plans[3].refusal, Some(Refusal::Fail));
        assert!(!plans[4].drop && plans[4].refusal.is_none());
    }

    #[test]
    fn operations_count_their_own_calls_and_faults_can_be_scoped() {
        let mut injection = Injection::new(Faults {
            fail_first: 1,
            ..Faults::default()
        });
        assert_eq!(
            injection.plan(Operation::RegisterUsage).refusal,
            Some(Refusal::Fail)
        );
        assert_eq!(
            injection.plan(Operation::MeterUsage).refusal,
            Some(Refusal::Fail)
        );
        assert_eq!(injection.plan(Operation::MeterUsage).refusal, None);

        let mut scoped = Injection::new(Faults {
            operations: Some([Operation::MeterUsage].into()),
            fail_first: 1,
            delay: Duration::from_secs(1),
            ..Faults::default()
        });
        let untouched = scoped.plan(Operation::RegisterUsage);
        assert_eq!((untouched.refusal, untouched.delay), (None, Duration::ZERO));
        assert_eq!(
            scoped.plan(Operation::MeterUsage).refusal,
            Some(Refusal::Fail)
        );
    }

    fn random(random: RandomFaults) -> Vec<FaultPlan> {
        let mut injection = Injection::new(Faults {
            random: Some(random),
            ..Faults::default()
        });
        (0..1000)
            .map(|_| injection.plan(Operation::MeterUsage))
            .collect()
    }

    #[test]
    fn random_faults_follow_their_probabilities_and_replay_with_the_seed() {
        let faults = RandomFaults {
            seed: 42,
            drop: 0.1,
            throttle: 0.1,
            fail: 0.1,
            lose_response: 0.1,
            slow: 0.2,
            slow_delay: Duration::from_millis(300),
            ..RandomFaults::default()
        };
        let plans = random(faults.clone());
        let count = |hit: &dyn Fn(&FaultPlan) -> bool| plans.iter().filter(|p| hit(p)).count();
        let drops = count(&|p| p.drop);
        let throttles = count(&|p| p.refusal == Some(Refusal::Throttle));
        let fails = count(&|p| p.refusal == Some(Refusal::Fail));
        let lost = count(&|p| p.lose_response);
        let slow = count(&|p| p.delay == Duration::from_millis(300));
        // Each fires for about its share (the later ones of the calls the earlier spared).
        for (name, got, expected) in [
            ("drop", drops, 100.0),
            ("throttle", throttles, 90.0),
            ("fail", fails, 81.0),
            ("lose", lost, 72.9),
            ("slow", slow, 200.0),
        ] {
            assert!(
                (got as f64 - expected).abs() < expected * 0.4,
                "{name}: {got}"
            );
        }
        let replay = random(faults.clone());
        assert!(plans.iter().zip(&replay).all(|(a, b)| a.drop == b.drop
            && a.refusal == b.refusal
            && a.lose_response == b.lose_response
            && a.delay == b.delay));
        let other_seed = random(RandomFaults { seed: 43, ..faults });
        assert!(plans.iter().zip(&other_seed).any(|(a, b)| a.drop != b.drop));
        assert!(random(RandomFaults::default())
            .iter()
            .all(|p| !p.drop && p.refusal.is_none() && !p.lose_response));
    }

    #[test]
    fn an_injected_error_comes_before_a_status_fault() {
        let mut injection = Injection::new(Faults {
            error: Some("DisabledApiException".parse().unwrap()),
            status: Some("503".parse().unwrap()),
            ..Faults::default()
        });
        assert!(matches!(
            injection.plan(Operation::RegisterUsage).refusal,
            Some(Refusal::Error { .. })
        ));
    }
}
