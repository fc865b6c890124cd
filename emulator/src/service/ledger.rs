//! The metering records the service has accepted, and the idempotency rules that decide whether
//! a record is new, a replay, a duplicate or a conflict.

use std::collections::HashMap;

use serde_json::Value;

use super::opaque_id;
use super::usage::{Allocation, Quantity};
use crate::Operation;

/// One accepted metering record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeteringRecord {
    pub metering_record_id: String,
    pub operation: Operation,
    /// Who used it: the caller's access key ID for MeterUsage, the customer for BatchMeterUsage.
    pub resource: String,
    pub product_code: Option<String>,
    pub license_arn: Option<String>,
    pub dimension: String,
    /// The start of the metering period, in epoch seconds.
    pub timestamp: u64,
    pub quantity: Quantity,
    pub allocations: Vec<Allocation>,
    pub client_token: Option<String>,
    /// When the service accepted it, in epoch seconds.
    pub received_at: u64,
}

/// The ledger as tests and `GET /_emulator/ledger` see it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerSnapshot {
    pub records: Vec<MeteringRecord>,
    /// Requests answered with an existing record's ID (identical usage, or a reused ClientToken
    /// with the same parameters).
    pub idempotent_replays: u64,
    /// Usage for a (resource, product, dimension, period) already recorded with another
    /// quantity or other allocations.
    pub duplicates_refused: u64,
    /// ClientTokens reused with other parameters.
    pub conflicts: u64,
}

/// What identifies a record: one per resource, product, dimension and period.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct UsageKey {
    pub resource: String,
    /// The product code, or the license ARN for licence-based SaaS records.
    pub product: String,
    pub dimension: String,
    pub period_start: u64,
}

/// A record to accept.
pub(super) struct Usage {
    pub operation: Operation,
    pub key: UsageKey,
    pub product_code: Option<String>,
    pub license_arn: Option<String>,
    pub quantity: Quantity,
    pub allocations: Vec<Allocation>,
}

/// A `ClientToken` and the parameters it was sent with.
pub(super) struct ClientToken<'a> {
    pub token: &'a str,
    pub parameters: Value,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Recorded {
    New(String),
    /// The same usage again: the existing record's ID.
    Replayed(String),
    /// The same key with another quantity or other allocations: the quantity on record.
    Duplicate(Quantity),
    /// The ClientToken was used before with other parameters.
    Conflict,
}

#[derive(Default)]
pub(crate) struct Ledger {
    snapshot: LedgerSnapshot,
    by_key: HashMap<UsageKey, usize>,
    /// (resource, ClientToken) to the parameters sent and the record.
    by_token: HashMap<(String, String), (Value, usize)>,
}

impl Ledger {
    pub fn snapshot(&self) -> LedgerSnapshot {
        self.snapshot.clone()
    }

    pub(super) fn record(
        &mut self,
        usage: Usage,
        client_token: Option<ClientToken>,
        received_at: u64,
    ) -> Recorded {
        let token_key = client_token
            .as_ref()
            .map(|token| (usage.key.resource.clone(), token.token.to_owned()));
        if let (Some(key), Some(token)) = (&token_key, &client_token) {
            if let Some((parameters, index)) = self.by_token.get(key) {
                return if *parameters == token.parameters {
                    self.snapshot.idempotent_replays += 1;
                    Recorded::Replayed(self.id_of(*index))
                } else {
                    self.snapshot.conflicts += 1;
                    Recorded::Conflict
                };
            }
        }
        let (index, outcome) = match self.by_key.get(&usage.key) {
            Some(&index) => {
                let existing = &self.snapshot.records[index];
                if existing.quantity != usage.quantity || existing.allocations != usage.allocations
                {
                    self.snapshot.duplicates_refused += 1;
                    return Recorded::Duplicate(existing.quantity);
                }
                self.snapshot.idempotent_replays += 1;
                (index, Recorded::Replayed(self.id_of(index)))
            }
            None => {
                let index = self.snapshot.records.len();
                let id = opaque_id(index as u64);
                self.snapshot.records.push(MeteringRecord {
                    metering_record_id: id.clone(),
                    operation: usage.operation,
                    resource: usage.key.resource.clone(),
                    product_code: usage.product_code,
                    license_arn: usage.license_arn,
                    dimension: usage.key.dimension.clone(),
                    timestamp: usage.key.period_start,
                    quantity: usage.quantity,
                    allocations: usage.allocations,
                    client_token: client_token.as_ref().map(|token| token.token.to_owned()),
                    received_at,
                });
                self.by_key.insert(usage.key, index);
                (index, Recorded::New(id))
            }
        };
        if let (Some(key), Some(token)) = (token_key, client_token) {
            self.by_token.insert(key, (token.parameters, index));
        }
        outcome
    }

    fn id_of(&self, index: usize) -> String {
        self.snapshot.records[index].metering_record_id.clone()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn usage(resource: &str, period_start: u64, quantity: u32) -> Usage {
        Usage {
            operation: Operation::MeterUsage,
            key: UsageKey {
                resource: resource.to_owned(),
                product: "paid".to_owned(),
                dimension: "requests".to_owned(),
                period_start,
            },
            product_code: Some("paid".to_owned()),
            license_arn: None,
            quantity: Quantity::whole(quantity),
            allocations: Vec::new(),
        }
    }

    fn token(token: &str, parameters: Value) -> Option<ClientToken<'_>> {
        Some(ClientToken { token, parameters })
    }

    #[test]
    fn one_record_per_key_identical_usage_replays_other_quantities_are_duplicates() {
        let mut ledger = Ledger::default();
        let Recorded::New(id) = ledger.record(usage("task-a", 3600, 5), None, 1) else {
            panic!("expected a new record");
        };
        assert_eq!(
            ledger.record(usage("task-a", 3600, 5), None, 2),
            Recorded::Replayed(id.clone())
        );
        assert_eq!(
            ledger.record(usage("task-a", 3600, 6), None, 3),
            Recorded::Duplicate(Quantity::whole(5))
        );
        assert!(
            matches!(ledger.record(usage("task-b", 3600, 6), None, 4), Recorded::New(other) if other != id)
        );
        assert!(matches!(
            ledger.record(usage("task-a", 7200, 6), None, 5),
            Recorded::New(_)
        ));
        let snapshot = ledger.snapshot();
        assert_eq!(snapshot.records.len(), 3);
        assert_eq!(
            (
                snapshot.idempotent_replays,
                snapshot.duplicates_refused,
                snapshot.conflicts
            ),
            (1, 1, 0)
        );
        assert_eq!(snapshot.records[0].received_at, 1);
    }

    #[test]
    fn a_client_token_replays_with_the_same_parameters_and_conflicts_with_others() {
        let mut ledger = Ledger::default();
        let first = json!({ "quantity": "5" });
        let Recorded::New(id) = ledger.record(usage("task-a", 0, 5), token("t1", first.clone()), 1)
        else {
            panic!("expected a new record");
        };
        assert_eq!(
            ledger.record(usage("task-a", 0, 5), token("t1", first), 2),
            Recorded::Replayed(id)
        );
        assert_eq!(
            ledger.record(
                usage("task-a", 3600, 7),
                token("t1", json!({ "quantity": "7" })),
                3
            ),
            Recorded::Conflict
        );
        assert!(
            matches!(
                ledger.record(
                    usage("task-b", 3600, 7),
                    token("t1", json!({ "quantity": "7" })),
                    4
                ),
                Recorded::New(_)
            ),
            "ClientTokens are scoped to the caller"
        );
        let snapshot = ledger.snapshot();
        assert_eq!(snapshot.records[0].client_token.as_deref(), Some("t1"));
        assert_eq!((snapshot.idempotent_replays, snapshot.conflicts), (1, 1));
    }
}
