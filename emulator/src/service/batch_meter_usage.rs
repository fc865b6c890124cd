//! BatchMeterUsage: a SaaS seller's usage records for its customers, up to 25 at a time.

use serde_json::{json, Value};

use super::ledger::{Recorded, Usage, UsageKey};
use super::meter_usage::dimension;
use super::usage::{self, Kind, Quantity, QuantityFields};
use super::{
    epoch_seconds, parse_input, product_code, valid_arn, Answer, Call, Service, ServiceError,
};

/// How many periods back BatchMeterUsage accepts (AWS: 24 hours).
const PERIODS_BACK: u32 = 24;
const MAX_RECORDS: usize = 25;

const RECORD_QUANTITY: QuantityFields = QuantityFields {
    whole: "Quantity",
    decimal: "QuantityAsDecimal",
};

/// A record that passed validation, waiting to be processed.
struct Record<'a> {
    input: &'a Value,
    customer: Customer<'a>,
    dimension: &'a str,
    period_start: u64,
    quantity: Quantity,
    allocations: Vec<usage::Allocation>,
    license_arn: Option<&'a str>,
}

/// How a record names its customer: exactly one of the two.
enum Customer<'a> {
    Identifier(&'a str),
    AccountId(&'a str),
}

pub(super) fn handle(service: &Service, call: &Call) -> Result<Answer, ServiceError> {
    let input = parse_input(call.body)?;
    service.check_permission(call.operation, false)?;
    let records = match &input["UsageRecords"] {
        Value::Array(records) if records.len() <= MAX_RECORDS => records,
        Value::Array(_) => {
            return Err(validation(format!(
                "UsageRecords holds at most {MAX_RECORDS} records"
            )))
        }
        _ => return Err(validation("UsageRecords is required".to_owned())),
    };
    let product_code = match &input["ProductCode"] {
        Value::Null => None,
        _ => Some(product_code(&input)?),
    };
    let records = records
        .iter()
        .enumerate()
        .map(|(index, record)| validate(service, call, record, &format!("UsageRecords[{index}].")))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(code) = product_code {
        let config = &service.config;
        if !config.entitled.contains(code) && !config.not_entitled.contains(code) {
            return Err(ServiceError::client(
                "InvalidProductCodeException",
                "Product code is not valid",
            ));
        }
    } else if records.iter().any(|record| record.license_arn.is_none()) {
        return Err(validation(
            "ProductCode is required unless every record names its LicenseArn".to_owned(),
        ));
    }
    let unprocessed = service.unprocessed_records(call.operation, records.len());
    let mut results = Vec::new();
    let mut unprocessed_records = Vec::new();
    for (record, unprocessed) in records.into_iter().zip(unprocessed) {
        if unprocessed {
            unprocessed_records.push(record.input.clone());
            continue;
        }
        results.push(process(service, call, product_code, record));
    }
    Ok(Answer::ok(json!({
        "Results": results,
        "UnprocessedRecords": unprocessed_records,
    })))
}

fn validation(message: String) -> ServiceError {
    ServiceError::client("ValidationException", message)
}

/// Checks one record; any failure fails the whole batch, as AWS documents.
fn validate<'a>(
    service: &Service,
    call: &Call,
    record: &'a Value,
    at: &str,
) -> Result<Record<'a>, ServiceError> {
    if !record.is_object() {
        return Err(validation(format!("{at} must be a usage record")));
    }
    // The model allows an empty CustomerIdentifier, and SDKs whose model still marks it
    // required (Rust's 1.124) send "" beside CustomerAWSAccountId: empty means absent.
    let identifier = match &record["CustomerIdentifier"] {
        Value::String(id) if id.is_empty() => &Value::Null,
        other => other,
    };
    let customer = match (identifier, &record["CustomerAWSAccountId"]) {
        (Value::String(id), Value::Null) if id.chars().count() <= 255 => Customer::Identifier(id),
        (Value::Null, Value::String(account))
            if (1..=255).contains(&account.len())
                && account.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Customer::AccountId(account)
        }
        (Value::Null, Value::Null) | (Value::String(_), Value::String(_)) => {
            return Err(validation(format!(
                "{at}CustomerIdentifier or {at}CustomerAWSAccountId is required, not both"
            )))
        }
        _ => {
            return Err(validation(format!(
                "{at}CustomerIdentifier must be at most 255 characters and \
                 {at}CustomerAWSAccountId 1-255 digits"
            )))
        }
    };
    let dimension = dimension(&record["Dimension"], &format!("{at}Dimension"))?;
    let (quantity, kind) =
        usage::quantity(record, &RECORD_QUANTITY, at)?.unwrap_or((Quantity::whole(0), Kind::Whole));
    let license_arn = match &record["LicenseArn"] {
        Value::Null => None,
        Value::String(arn) if valid_arn(arn) => Some(arn.as_str()),
        _ => return Err(validation(format!("{at}LicenseArn is not a license ARN"))),
    };
    service.check_dimension(dimension)?;
    let period_start = usage::period_start(
        &record["Timestamp"],
        at,
        call.now,
        service.config.period,
        PERIODS_BACK,
    )?;
    let allocations = usage::allocations(record, quantity, kind, at)?;
    Ok(Record {
        input: record,
        customer,
        dimension,
        period_start,
        quantity,
        allocations,
        license_arn,
    })
}

/// One record's result: Success, CustomerNotSubscribed or DuplicateRecord.
fn process(service: &Service, call: &Call, product_code: Option<&str>, record: Record) -> Value {
    let known = service
        .config
        .subscribed_customers()
        .find(|customer| match record.customer {
            Customer::Identifier(id) => customer.identifier == id,
            Customer::AccountId(account) => customer.account_id.as_deref() == Some(account),
        });
    let Some(customer) = known else {
        return json!({ "UsageRecord": record.input, "Status": "CustomerNotSubscribed" });
    };
    let product = record
        .license_arn
        .or(product_code)
        .expect("validated: a product code or a license ARN");
    let usage = Usage {
        operation: call.operation,
        key: UsageKey {
            resource: customer.identifier.clone(),
            product: product.to_owned(),
            dimension: record.dimension.to_owned(),
            period_start: record.period_start,
        },
        product_code: product_code.map(str::to_owned),
        license_arn: record.license_arn.map(str::to_owned),
        quantity: record.quantity,
        allocations: record.allocations,
    };
    match service
        .ledger()
        .record(usage, None, epoch_seconds(call.now))
    {
        Recorded::New(id) | Recorded::Replayed(id) => json!({
            "UsageRecord": record.input,
            "MeteringRecordId": id,
            "Status": "Success",
        }),
        Recorded::Duplicate(_) | Recorded::Conflict => {
            json!({ "UsageRecord": record.input, "Status": "DuplicateRecord" })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{call_at, code_of, config, noon, signed_call, AUTH};
    use super::*;
    use crate::{Config, Customer as KnownCustomer, Faults, Operation, RandomFaults};

    const LICENSE: &str = "arn:aws:license-manager::294406891311:license:l-0123456789abcdef";

    fn batch_config() -> Config {
        let mut config = config()
            .dimension("requests")
            .customer(KnownCustomer::new("cust-1").account("111122223333"))
            .customer(KnownCustomer::new("cust-2"));
        config.period = Duration::from_secs(60);
        config
    }

    fn record(customer: &str, quantity: u32) -> Value {
        json!({
            "Timestamp": epoch_seconds(noon()),
            "CustomerIdentifier": customer,
            "Dimension": "requests",
            "Quantity": quantity,
        })
    }

    fn batch(service: &Service, records: Value) -> Answer {
        call_at(
            service,
            Operation::BatchMeterUsage,
            &json!({ "ProductCode": "paid", "UsageRecords": records }),
            noon(),
        )
    }

    fn results(answer: Answer) -> Value {
        match answer {
            Answer::Json { status: 200, body } => body,
            other => panic!("expected results, got {other:?}"),
        }
    }

    fn statuses(body: &Value) -> Vec<&str> {
        body["Results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|result| result["Status"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn each_record_gets_a_status_and_known_customers_a_record() {
        let service = Service::new(batch_config());
        let mut by_account = record("", 2);
        by_account
            .as_object_mut()
            .unwrap()
            .remove("CustomerIdentifier");
        by_account["CustomerAWSAccountId"] = json!("111122223333");
        let body = results(batch(
            &service,
            json!([record("cust-1", 5), record("stranger", 1), by_account]),
        ));
        assert_eq!(
            statuses(&body),
            ["Success", "CustomerNotSubscribed", "DuplicateRecord"]
        );
        assert!(body["Results"][0]["MeteringRecordId"].is_string());
        assert_eq!(
            body["Results"][1]["UsageRecord"]["CustomerIdentifier"],
            "stranger"
        );
        assert_eq!(body["UnprocessedRecords"], json!([]));
        let ledger = service.ledger().snapshot();
        assert_eq!(ledger.records.len(), 1);
        assert_eq!(ledger.records[0].resource, "cust-1");
        assert_eq!(ledger.records[0].operation, Operation::BatchMeterUsage);
        assert_eq!(
            ledger.duplicates_refused, 1,
            "the account ID names cust-1 too"
        );
    }

    #[test]
    fn a_resent_batch_is_idempotent() {
        let service = Service::new(batch_config());
        let records = json!([record("cust-1", 5), record("cust-2", 7)]);
        let first = results(batch(&service, records.clone()));
        let again = results(batch(&service, records));
        assert_eq!(first["Results"], again["Results"]);
        let subset = results(batch(&service, json!([record("cust-2", 7)])));
        assert_eq!(
            subset["Results"][0], first["Results"][1],
            "a subset replays too"
        );
        assert_eq!(service.ledger().snapshot().idempotent_replays, 3);
    }

    #[test]
    fn license_records_are_apart_from_product_records() {
        let service = Service::new(batch_config());
        let mut licensed = record("cust-1", 9);
        licensed["LicenseArn"] = json!(LICENSE);
        let body = results(batch(
            &service,
            json!([record("cust-1", 5), licensed.clone()]),
        ));
        assert_eq!(statuses(&body), ["Success", "Success"]);
        let without_product = call_at(
            &service,
            Operation::BatchMeterUsage,
            &json!({ "UsageRecords": [licensed] }),
            noon(),
        );
        assert_eq!(statuses(&results(without_product)), ["Success"]);
        let unnamed = call_at(
            &service,
            Operation::BatchMeterUsage,
            &json!({ "UsageRecords": [record("cust-1", 5)] }),
            noon(),
        );
        assert_eq!(code_of(&unnamed).1, "ValidationException");
        let mut bad_arn = record("cust-1", 1);
        bad_arn["LicenseArn"] = json!("license-1");
        assert_eq!(
            code_of(&batch(&service, json!([bad_arn]))).1,
            "ValidationException"
        );
    }

    #[test]
    fn any_invalid_record_fails_the_whole_batch() {
        let service = Service::new(batch_config());
        let both = {
            let mut record = record("cust-1", 1);
            record["CustomerAWSAccountId"] = json!("111122223333");
            record
        };
        let neither = {
            let mut record = record("cust-1", 1);
            record.as_object_mut().unwrap().remove("CustomerIdentifier");
            record
        };
        let empty_identifier = record("", 1);
        let old = {
            let mut record = record("cust-1", 1);
            record["Timestamp"] = json!(epoch_seconds(noon()) - 24 * 60 - 1);
            record
        };
        let other_dimension = {
            let mut record = record("cust-1", 1);
            record["Dimension"] = json!("cpu");
            record
        };
        let unbalanced = {
            let mut record = record("cust-1", 2);
            record["UsageAllocations"] = json!([{ "AllocatedUsageQuantity": 1 }]);
            record
        };
        for (bad, code) in [
            (both, "ValidationException"),
            (neither.clone(), "ValidationException"),
            (empty_identifier, "ValidationException"),
            (old, "TimestampOutOfBoundsException"),
            (other_dimension, "InvalidUsageDimensionException"),
            (unbalanced, "InvalidUsageAllocationsException"),
        ] {
            let answer = batch(&service, json!([record("cust-2", 1), bad]));
            assert_eq!(code_of(&answer).1, code);
        }
        let Answer::Json { body, .. } = batch(&service, json!([neither])) else {
            panic!("expected an error");
        };
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("UsageRecords[0].CustomerIdentifier"),
            "the message names the record"
        );
        assert!(service.ledger().snapshot().records.is_empty());
        let recent = {
            let mut record = record("cust-1", 1);
            record["Timestamp"] = json!(epoch_seconds(noon()) - 24 * 60);
            record
        };
        assert_eq!(
            statuses(&results(batch(&service, json!([recent])))),
            ["Success"]
        );
    }

    #[test]
    fn at_most_25_records_and_a_known_product() {
        let service = Service::new(batch_config());
        let records: Vec<Value> = (0..26).map(|_| record("cust-1", 1)).collect();
        assert_eq!(
            code_of(&batch(&service, json!(records))).1,
            "ValidationException"
        );
        assert_eq!(code_of(&batch(&service, json!([]))).0, 200);
        let unknown = call_at(
            &service,
            Operation::BatchMeterUsage,
            &json!({ "ProductCode": "nobody-sells-this", "UsageRecords": [] }),
            noon(),
        );
        assert_eq!(code_of(&unknown).1, "InvalidProductCodeException");
        let missing = call_at(&service, Operation::BatchMeterUsage, &json!({}), noon());
        assert_eq!(code_of(&missing).1, "ValidationException");
    }

    #[test]
    fn faults_leave_records_unprocessed_for_the_client_to_resend() {
        let mut config = batch_config();
        config.faults = Faults {
            unprocessed_first: 2,
            ..Faults::default()
        };
        let service = Service::new(config);
        let records = json!([
            record("cust-1", 1),
            record("cust-2", 2),
            record("cust-1", 3)
        ]);
        let body = results(batch(&service, records.clone()));
        assert_eq!(body["UnprocessedRecords"], json!([records[0], records[1]]));
        assert_eq!(statuses(&body), ["Success"]);
        // Resent, cust-1's first record now meets the one recorded meanwhile.
        let resent = results(batch(&service, body["UnprocessedRecords"].clone()));
        assert_eq!(statuses(&resent), ["DuplicateRecord", "Success"]);

        service.set_faults(Faults {
            random: Some(RandomFaults {
                seed: 1,
                unprocessed: 1.0,
                ..RandomFaults::default()
            }),
            ..Faults::default()
        });
        let body = results(batch(&service, json!([record("cust-2", 2)])));
        assert_eq!(body["UnprocessedRecords"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn another_regions_signature_does_not_match_this_endpoint() {
        let service = Service::new(batch_config());
        let elsewhere = AUTH.replace("us-east-1", "eu-west-1");
        let body = json!({ "ProductCode": "paid", "UsageRecords": [] });
        let answer = signed_call(
            &service,
            Operation::BatchMeterUsage,
            &body,
            Some(&elsewhere),
            noon(),
        );
        assert_eq!(code_of(&answer), (403, "InvalidSignatureException".into()));
    }

    #[test]
    fn denied_batches_are_access_denied() {
        let service = Service::new(batch_config().deny(Operation::BatchMeterUsage));
        assert_eq!(
            code_of(&batch(&service, json!([]))),
            (403, "AccessDeniedException".into())
        );
    }
}
