//! When the configured faults fire: counted per operation, so faults on one operation do not
//! consume another's.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::{Faults, InjectedError, Operation, ResponseFault, StatusFault, TokenFault};

/// The live faults and how many calls each operation has had since they were set.
pub(super) struct Injection {
    faults: Faults,
    calls: BTreeMap<Operation, u64>,
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
    pub delay: Duration,
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
        }
    }

    pub fn plan(&mut self, operation: Operation) -> FaultPlan {
        let faults = &self.faults;
        let calls = self.calls.entry(operation).or_default();
        let call = *calls;
        *calls += 1;
        let dropped = u64::from(faults.drop_first);
        let throttled = dropped + u64::from(faults.throttle_first);
        let failed = throttled + u64::from(faults.fail_first);
        let refusal = if call < dropped {
            None
        } else if call < throttled {
            Some(Refusal::Throttle)
        } else if call < failed {
            Some(Refusal::Fail)
        } else if let Some(error) = &faults.error {
            Some(Refusal::Error {
                error: error.clone(),
                header_only: faults.error_in_header_only,
            })
        } else {
            faults.status.map(Refusal::Status)
        };
        FaultPlan {
            drop: call < dropped,
            refusal,
            token: faults.token,
            response: faults.response,
            delay: faults.delay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
