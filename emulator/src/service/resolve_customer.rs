//! ResolveCustomer: a SaaS registration token to the customer and product it stands for.

use serde_json::json;

use super::{parse_input, Answer, Call, Service, ServiceError};

pub(super) fn handle(service: &Service, call: &Call) -> Result<Answer, ServiceError> {
    let input = parse_input(call.body)?;
    service.check_permission(call.operation, false)?;
    let token = input["RegistrationToken"]
        .as_str()
        .filter(|token| !token.is_empty())
        .ok_or_else(|| {
            ServiceError::client("ValidationException", "RegistrationToken is required")
        })?;
    let registration = service
        .config
        .registration_tokens
        .iter()
        .find(|registration| registration.token == token)
        .ok_or_else(|| {
            ServiceError::client("InvalidTokenException", "Registration token is invalid")
        })?;
    if registration.expired {
        return Err(ServiceError::client(
            "ExpiredTokenException",
            "Registration token has expired",
        ));
    }
    let mut body = json!({
        "CustomerIdentifier": registration.customer.identifier,
        "ProductCode": registration.product_code,
    });
    if let Some(account) = &registration.customer.account_id {
        body["CustomerAWSAccountId"] = json!(account);
    }
    if let Some(license_arn) = &registration.license_arn {
        body["LicenseArn"] = json!(license_arn);
    }
    Ok(Answer::ok(body))
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::super::tests::{call_at, code_of, config, noon};
    use super::*;
    use crate::{Customer, Operation, RegistrationToken};

    const LICENSE: &str = "arn:aws:license-manager::294406891311:license:l-0123456789abcdef";

    fn service() -> Service {
        let buyer = Customer::new("cust-1").account("111122223333");
        Service::new(
            config()
                .registration_token(
                    RegistrationToken::new("live", buyer.clone(), "saas").license(LICENSE),
                )
                .registration_token(RegistrationToken::new("old", buyer, "saas").expired()),
        )
    }

    fn resolve(service: &Service, token: Value) -> Answer {
        call_at(
            service,
            Operation::ResolveCustomer,
            &json!({ "RegistrationToken": token }),
            noon(),
        )
    }

    #[test]
    fn a_live_token_resolves_to_its_customer_product_and_license() {
        let Answer::Json { status: 200, body } = resolve(&service(), json!("live")) else {
            panic!("expected a customer");
        };
        assert_eq!(
            body,
            json!({
                "CustomerIdentifier": "cust-1",
                "CustomerAWSAccountId": "111122223333",
                "ProductCode": "saas",
                "LicenseArn": LICENSE,
            })
        );
    }

    #[test]
    fn unknown_expired_and_missing_tokens_are_refused() {
        let service = service();
        assert_eq!(
            code_of(&resolve(&service, json!("forged"))).1,
            "InvalidTokenException"
        );
        assert_eq!(
            code_of(&resolve(&service, json!("old"))).1,
            "ExpiredTokenException"
        );
        assert_eq!(
            code_of(&resolve(&service, json!(""))).1,
            "ValidationException"
        );
        assert_eq!(
            code_of(&resolve(&service, Value::Null)).1,
            "ValidationException"
        );
        let denied = Service::new(config().deny(Operation::ResolveCustomer));
        assert_eq!(
            code_of(&resolve(&denied, json!("live"))),
            (403, "AccessDeniedException".into())
        );
    }

    #[test]
    fn a_resolved_customer_is_subscribed_for_batch_metering() {
        let answer = call_at(
            &service(),
            Operation::BatchMeterUsage,
            &json!({
                "ProductCode": "paid",
                "UsageRecords": [{
                    "Timestamp": crate::service::epoch_seconds(noon()),
                    "CustomerAWSAccountId": "111122223333",
                    "Dimension": "requests",
                }],
            }),
            noon(),
        );
        let Answer::Json { body, .. } = answer else {
            panic!("expected results");
        };
        assert_eq!(body["Results"][0]["Status"], "Success");
    }
}
