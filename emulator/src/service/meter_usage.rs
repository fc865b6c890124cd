//! MeterUsage: one usage record per (caller, product, dimension, period), idempotent.

use serde_json::{json, Value};

use super::ledger::{ClientToken, Recorded, Usage, UsageKey};
use super::usage::{self, Kind, Quantity, USAGE_QUANTITY};
use super::{
    check_entitlement, dry_run, epoch_seconds, parse_input, product_code, Answer, Call, Service,
    ServiceError,
};

/// How many periods back MeterUsage accepts (AWS: six hours).
const PERIODS_BACK: u32 = 6;

pub(super) fn handle(service: &Service, call: &Call) -> Result<Answer, ServiceError> {
    let input = parse_input(call.body)?;
    let dry_run = dry_run(&input)?;
    service.check_permission(call.operation, dry_run)?;
    let product_code = product_code(&input)?;
    let dimension = dimension(&input["UsageDimension"], "UsageDimension")?;
    let (quantity, kind) =
        usage::quantity(&input, &USAGE_QUANTITY, "")?.unwrap_or((Quantity::whole(0), Kind::Whole));
    let client_token = match &input["ClientToken"] {
        Value::Null => None,
        Value::String(token) if (1..=64).contains(&token.chars().count()) => Some(token.as_str()),
        _ => return Err(validation("ClientToken must be 1-64 characters")),
    };
    let config = &service.config;
    check_entitlement(config, product_code)?;
    service.check_dimension(dimension)?;
    let period_start = usage::period_start(
        &input["Timestamp"],
        "",
        call.now,
        config.period,
        PERIODS_BACK,
    )?;
    let allocations = usage::allocations(&input, quantity, kind, "")?;
    if dry_run {
        return Err(ServiceError::dry_run_operation());
    }
    let caller = call.caller.as_ref().expect("MeterUsage is signed");
    let parameters = json!({
        "ProductCode": product_code,
        "Timestamp": input["Timestamp"],
        "UsageDimension": dimension,
        "Quantity": quantity,
        "UsageAllocations": allocations,
    });
    let usage = Usage {
        operation: call.operation,
        key: UsageKey {
            resource: caller.access_key.clone(),
            product: product_code.to_owned(),
            dimension: dimension.to_owned(),
            period_start,
        },
        product_code: Some(product_code.to_owned()),
        license_arn: None,
        quantity,
        allocations,
    };
    let client_token = client_token.map(|token| ClientToken { token, parameters });
    let recorded = service
        .ledger()
        .record(usage, client_token, epoch_seconds(call.now));
    match recorded {
        Recorded::New(id) | Recorded::Replayed(id) => {
            Ok(Answer::ok(json!({ "MeteringRecordId": id })))
        }
        Recorded::Duplicate(recorded) => Err(ServiceError::client(
            "DuplicateRequestException",
            format!(
                "usage for {dimension} in the period starting {period_start} was already \
                 recorded with quantity {recorded}, not {quantity}"
            ),
        )),
        Recorded::Conflict => Err(ServiceError::client(
            "IdempotencyConflictException",
            "the ClientToken was already used with other parameters",
        )),
    }
}

fn validation(message: &str) -> ServiceError {
    ServiceError::client("ValidationException", message)
}

/// A usage dimension's name: 1-255 characters.
pub(super) fn dimension<'a>(value: &'a Value, field: &str) -> Result<&'a str, ServiceError> {
    value
        .as_str()
        .filter(|name| (1..=255).contains(&name.chars().count()))
        .ok_or_else(|| validation(&format!("{field} must be 1-255 characters")))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{call_at, code_of, config, noon, signed_call, AUTH};
    use super::*;
    use crate::{Config, Faults, Operation, RandomFaults, ResponseFault};

    fn now_seconds() -> u64 {
        epoch_seconds(noon())
    }

    fn meter(service: &Service, body: Value) -> Answer {
        call_at(service, Operation::MeterUsage, &body, noon())
    }

    fn usage(quantity: u32) -> Value {
        json!({
            "ProductCode": "paid",
            "Timestamp": now_seconds(),
            "UsageDimension": "requests",
            "UsageQuantity": quantity,
        })
    }

    fn record_id(answer: Answer) -> String {
        match answer {
            Answer::Json { status: 200, body } => {
                body["MeteringRecordId"].as_str().unwrap().to_owned()
            }
            other => panic!("expected a record, got {other:?}"),
        }
    }

    fn period_config() -> Config {
        let mut config = config().dimension("requests").dimension("storage");
        config.period = Duration::from_secs(10);
        config
    }

    #[test]
    fn products_and_dimensions_are_checked() {
        let service = Service::new(period_config());
        assert_eq!(code_of(&meter(&service, usage(1))).0, 200);
        let mut unpaid = usage(1);
        unpaid["ProductCode"] = json!("unpaid");
        assert_eq!(
            code_of(&meter(&service, unpaid)).1,
            "CustomerNotEntitledException"
        );
        let mut unknown = usage(1);
        unknown["ProductCode"] = json!("nobody-sells-this");
        assert_eq!(
            code_of(&meter(&service, unknown)).1,
            "InvalidProductCodeException"
        );
        let mut other_dimension = usage(1);
        other_dimension["UsageDimension"] = json!("cpu");
        assert_eq!(
            code_of(&meter(&service, other_dimension.clone())).1,
            "InvalidUsageDimensionException"
        );
        let any_dimension = Service::new(config());
        assert_eq!(
            code_of(&meter(&any_dimension, other_dimension)).0,
            200,
            "no list: any name"
        );
    }

    #[test]
    fn required_fields_and_limits_are_validated() {
        let service = Service::new(period_config());
        let mut cases = Vec::new();
        for field in ["ProductCode", "Timestamp", "UsageDimension"] {
            let mut body = usage(1);
            body.as_object_mut().unwrap().remove(field);
            cases.push(body);
        }
        let mut long_token = usage(1);
        long_token["ClientToken"] = json!("t".repeat(65));
        let mut empty_token = usage(1);
        empty_token["ClientToken"] = json!("");
        let mut both = usage(1);
        both["UsageQuantityAsDecimal"] = json!("1");
        let mut dry_run = usage(1);
        dry_run["DryRun"] = json!("yes");
        cases.extend([long_token, empty_token, both, dry_run]);
        for body in cases {
            assert_eq!(
                code_of(&meter(&service, body.clone())).1,
                "ValidationException",
                "{body}"
            );
        }
        let mut absent = usage(0);
        absent.as_object_mut().unwrap().remove("UsageQuantity");
        assert_eq!(
            code_of(&meter(&service, absent)).0,
            200,
            "no quantity means 0"
        );
        let Answer::Json { body, .. } = meter(&service, json!("not an object")) else {
            panic!("expected JSON");
        };
        assert_eq!(body["__type"], "SerializationException");
    }

    #[test]
    fn the_timestamp_window_counts_periods_with_the_injected_clock() {
        let service = Service::new(period_config());
        let at = |offset: i64| {
            let mut body = usage(1);
            body["Timestamp"] = json!(now_seconds() as i64 + offset);
            code_of(&meter(&service, body)).1
        };
        assert_eq!(at(-61), "TimestampOutOfBoundsException");
        assert_eq!(at(-60), "");
        assert_eq!(at(301), "TimestampOutOfBoundsException");
        // Four minutes ahead is another period, so not a duplicate of the one above.
        assert_eq!(at(240), "");
        let later = noon() + Duration::from_secs(3600);
        let mut stale = usage(1);
        stale["Timestamp"] = json!(now_seconds());
        assert_eq!(
            code_of(&call_at(&service, Operation::MeterUsage, &stale, later)).1,
            "TimestampOutOfBoundsException",
            "an hour later the same timestamp is 360 periods back"
        );
    }

    #[test]
    fn identical_requests_in_a_period_share_a_record_others_are_duplicates() {
        let service = Service::new(period_config());
        let first = record_id(meter(&service, usage(5)));
        let mut same_period = usage(5);
        same_period["Timestamp"] = json!(now_seconds() - now_seconds() % 10);
        assert_eq!(
            record_id(meter(&service, same_period)),
            first,
            "rounded down to the period"
        );
        let mut decimal = usage(5);
        decimal.as_object_mut().unwrap().remove("UsageQuantity");
        decimal["UsageQuantityAsDecimal"] = json!("5.000");
        assert_eq!(
            record_id(meter(&service, decimal)),
            first,
            "compared by value"
        );
        assert_eq!(
            code_of(&meter(&service, usage(6))).1,
            "DuplicateRequestException"
        );
        let mut allocated = usage(5);
        allocated["UsageAllocations"] =
            json!([{ "AllocatedUsageQuantity": 5, "Tags": [{ "Key": "a", "Value": "b" }] }]);
        assert_eq!(
            code_of(&meter(&service, allocated)).1,
            "DuplicateRequestException",
            "other allocations"
        );
        let mut storage = usage(6);
        storage["UsageDimension"] = json!("storage");
        assert_ne!(
            record_id(meter(&service, storage)),
            first,
            "another dimension"
        );
        let ledger = service.ledger().snapshot();
        assert_eq!(ledger.records.len(), 2);
        assert_eq!(
            ledger.records[0].resource, "AKIDEXAMPLE",
            "the caller's access key"
        );
        assert_eq!(ledger.records[0].timestamp % 10, 0);
        assert_eq!(
            (ledger.idempotent_replays, ledger.duplicates_refused),
            (2, 2)
        );
    }

    #[test]
    fn each_caller_is_its_own_resource() {
        let service = Service::new(period_config());
        let first = record_id(meter(&service, usage(5)));
        let other_task = AUTH.replace("AKIDEXAMPLE", "ASIAOTHERTASK");
        let answer = signed_call(
            &service,
            Operation::MeterUsage,
            &usage(6),
            Some(&other_task),
            noon(),
        );
        assert_ne!(record_id(answer), first);
    }

    #[test]
    fn client_tokens_replay_or_conflict() {
        let service = Service::new(period_config());
        let mut first = usage(5);
        first["ClientToken"] = json!("token-1");
        let id = record_id(meter(&service, first.clone()));
        assert_eq!(record_id(meter(&service, first)), id);
        let mut other = usage(5);
        other["ClientToken"] = json!("token-1");
        other["UsageDimension"] = json!("storage");
        assert_eq!(
            code_of(&meter(&service, other)).1,
            "IdempotencyConflictException"
        );
        let mut fresh_token = usage(5);
        fresh_token["ClientToken"] = json!("token-2");
        assert_eq!(
            record_id(meter(&service, fresh_token)),
            id,
            "same usage, new token"
        );
        let ledger = service.ledger().snapshot();
        assert_eq!((ledger.records.len(), ledger.conflicts), (1, 1));
    }

    #[test]
    fn allocations_split_the_quantity() {
        let service = Service::new(period_config());
        let mut body = usage(5);
        body["UsageAllocations"] = json!([
            { "AllocatedUsageQuantity": 2, "Tags": [{ "Key": "team", "Value": "a" }] },
            { "AllocatedUsageQuantity": 3 },
        ]);
        record_id(meter(&service, body.clone()));
        assert_eq!(service.ledger().snapshot().records[0].allocations.len(), 2);
        body["UsageAllocations"][1]["AllocatedUsageQuantity"] = json!(4);
        body["UsageDimension"] = json!("storage");
        assert_eq!(
            code_of(&meter(&service, body.clone())).1,
            "InvalidUsageAllocationsException"
        );
        body["UsageAllocations"][1]["AllocatedUsageQuantity"] = json!(3);
        body["UsageAllocations"][0]["Tags"][0]["Key"] = json!("");
        assert_eq!(code_of(&meter(&service, body)).1, "InvalidTagException");
    }

    #[test]
    fn dry_runs_validate_and_check_permission_but_record_nothing() {
        let service = Service::new(period_config());
        let mut dry = usage(5);
        dry["DryRun"] = json!(true);
        assert_eq!(
            code_of(&meter(&service, dry.clone())),
            (412, "DryRunOperation".into())
        );
        dry["UsageDimension"] = json!("cpu");
        assert_eq!(
            code_of(&meter(&service, dry)).1,
            "InvalidUsageDimensionException"
        );
        assert!(service.ledger().snapshot().records.is_empty());

        let denied = Service::new(period_config().deny(Operation::MeterUsage));
        let mut dry = usage(5);
        dry["DryRun"] = json!(true);
        assert_eq!(
            code_of(&meter(&denied, dry)),
            (403, "UnauthorizedException".into())
        );
        assert_eq!(
            code_of(&meter(&denied, usage(5))),
            (403, "AccessDeniedException".into())
        );
        assert_eq!(
            code_of(&call_at(
                &denied,
                Operation::RegisterUsage,
                &json!({ "ProductCode": "paid", "PublicKeyVersion": 1 }),
                noon()
            ))
            .0,
            200,
            "denial is per operation"
        );
    }

    #[test]
    fn a_lost_response_was_recorded_and_the_resend_replays_it() {
        let service = Service::new(period_config());
        service.set_faults(Faults {
            random: Some(RandomFaults {
                lose_response: 1.0,
                ..RandomFaults::default()
            }),
            ..Faults::default()
        });
        assert_eq!(meter(&service, usage(5)), Answer::Drop);
        let recorded = service.ledger().snapshot().records[0]
            .metering_record_id
            .clone();
        service.set_faults(Faults::default());
        assert_eq!(record_id(meter(&service, usage(5))), recorded);
        assert_eq!(service.ledger().snapshot().idempotent_replays, 1);
    }

    #[test]
    fn an_empty_object_answer_was_recorded_and_names_no_record() {
        let service = Service::new(period_config());
        service.set_faults(Faults {
            response: Some(ResponseFault::EmptyObject),
            ..Faults::default()
        });
        let answer = meter(&service, usage(5));
        assert!(
            matches!(&answer, Answer::Raw { status: 200, body, .. } if body == b"{}"),
            "{answer:?}"
        );
        assert_eq!(service.ledger().snapshot().records.len(), 1);
        service.set_faults(Faults::default());
        record_id(meter(&service, usage(5)));
        assert_eq!(service.ledger().snapshot().idempotent_replays, 1);
    }

    #[test]
    fn meter_usage_has_aws_quota_of_ten_a_second() {
        let service = Service::new(config());
        let codes: Vec<String> = (0..11u32)
            .map(|index| {
                let mut body = usage(1);
                body["UsageDimension"] = json!(format!("d{index}"));
                code_of(&meter(&service, body)).1
            })
            .collect();
        assert!(codes[..10].iter().all(String::is_empty), "{codes:?}");
        assert_eq!(codes[10], "ThrottlingException");
        assert_eq!(service.stats()["operations"]["MeterUsage"]["throttled"], 1);
    }

    #[test]
    fn another_region_is_an_invalid_endpoint_region() {
        let service = Service::new(period_config());
        let elsewhere = AUTH.replace("us-east-1", "eu-west-1");
        let answer = signed_call(
            &service,
            Operation::MeterUsage,
            &usage(1),
            Some(&elsewhere),
            noon(),
        );
        assert_eq!(code_of(&answer).1, "InvalidEndpointRegionException");
    }
}
