//! The emulator over HTTP: the real AWS SDK against it, and its control endpoints.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;

use aws_sdk_marketplacemetering::primitives::DateTime;
use metering_emulator::keys::shared_2048;
use metering_emulator::{Config, Customer, Faults, LicenseSpec, Operation, RunningEmulator};

fn emulator() -> RunningEmulator {
    metering_emulator::spawn(
        Config::new(shared_2048())
            .entitle("paid")
            .dimension("requests")
            .customer(Customer::new("cust-1").account("111122223333"))
            .license(LicenseSpec::floating("prod-seats", "Seats", 3)),
    )
}

async fn sdk_config(emulator: &RunningEmulator) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region("us-east-1")
        .endpoint_url(emulator.endpoint_url())
        .credentials_provider(aws_sdk_marketplacemetering::config::Credentials::new(
            "AKIDTASKONE",
            "secret",
            None,
            None,
            "test",
        ))
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .load()
        .await
}

/// A raw HTTP/1.1 exchange: (status, body).
fn http(emulator: &RunningEmulator, method: &str, path: &str, body: &str) -> (u16, String) {
    let addr = emulator.endpoint_url().replace("http://", "");
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: emulator\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("receive");
    let status = response[9..12].parse().expect("status code");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sdk_meters_usage_idempotently() {
    let emulator = emulator();
    let client = aws_sdk_marketplacemetering::Client::new(&sdk_config(&emulator).await);
    let now = DateTime::from(std::time::SystemTime::now());
    let meter = |quantity| {
        client
            .meter_usage()
            .product_code("paid")
            .timestamp(now)
            .usage_dimension("requests")
            .usage_quantity(quantity)
            .client_token("sidecar-1")
            .send()
    };
    let first = meter(5).await.expect("metered");
    let again = meter(5).await.expect("replayed");
    assert_eq!(first.metering_record_id(), again.metering_record_id());
    let conflict = meter(6).await.expect_err("another quantity, same token");
    assert_eq!(
        conflict.into_service_error().meta().code(),
        Some("IdempotencyConflictException")
    );
    let ledger = emulator.ledger();
    assert_eq!(ledger.records.len(), 1);
    assert_eq!(ledger.records[0].resource, "AKIDTASKONE");
    assert_eq!(ledger.records[0].client_token.as_deref(), Some("sidecar-1"));
    assert_eq!((ledger.idempotent_replays, ledger.conflicts), (1, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sdk_reads_batch_results() {
    use aws_sdk_marketplacemetering::types::{UsageRecord, UsageRecordResultStatus};
    let emulator = emulator();
    let client = aws_sdk_marketplacemetering::Client::new(&sdk_config(&emulator).await);
    let record = |account: &str| {
        UsageRecord::builder()
            .timestamp(DateTime::from(std::time::SystemTime::now()))
            .customer_aws_account_id(account)
            .dimension("requests")
            .quantity(3)
            .build()
            .expect("a usage record")
    };
    let answer = client
        .batch_meter_usage()
        .product_code("paid")
        .usage_records(record("111122223333"))
        .usage_records(record("999999999999"))
        .send()
        .await
        .expect("batch");
    let statuses: Vec<_> = answer
        .results()
        .iter()
        .map(|r| r.status().cloned())
        .collect();
    assert_eq!(
        statuses,
        [
            Some(UsageRecordResultStatus::Success),
            Some(UsageRecordResultStatus::CustomerNotSubscribed)
        ]
    );
    assert!(answer.results()[0].metering_record_id().is_some());
    assert!(answer.unprocessed_records().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_can_be_replaced_while_running() {
    let emulator = emulator();
    let client = aws_sdk_marketplacemetering::Client::new(&sdk_config(&emulator).await);
    let register = || {
        client
            .register_usage()
            .product_code("paid")
            .public_key_version(1)
            .send()
    };
    let scoped = r#"{"operations": ["register-usage"], "status": "503:text"}"#;
    assert_eq!(http(&emulator, "POST", "/_emulator/faults", scoped).0, 204);
    let refused = register().await.expect_err("a bare 503");
    assert_eq!(
        refused.raw_response().map(|r| r.status().as_u16()),
        Some(503)
    );
    client
        .meter_usage()
        .product_code("paid")
        .timestamp(DateTime::from(std::time::SystemTime::now()))
        .usage_dimension("requests")
        .send()
        .await
        .expect("MeterUsage is not in the faults' scope");

    let (status, body) = http(
        &emulator,
        "POST",
        "/_emulator/faults",
        r#"{"dropFrist": 1}"#,
    );
    assert_eq!(status, 400);
    assert!(body.contains("dropFrist"), "{body}");
    emulator.set_faults(Faults::default());
    register().await.expect("faults cleared");

    assert_eq!(emulator.calls_to(Operation::RegisterUsage), 2);
    assert_eq!(emulator.calls_to(Operation::MeterUsage), 1);
    let (status, stats) = http(&emulator, "GET", "/_emulator/stats", "");
    assert_eq!(status, 200);
    assert!(stats.contains(r#""MeterUsage":{"calls":1"#), "{stats}");
    let (status, ledger) = http(&emulator, "GET", "/_emulator/ledger", "");
    assert_eq!(status, 200);
    assert!(ledger.contains(r#""dimension":"requests""#), "{ledger}");
    let (status, licenses) = http(&emulator, "GET", "/_emulator/licenses", "");
    assert_eq!(status, 200);
    assert!(
        licenses.contains(r#"{"inUse":0,"maxCount":3,"name":"Seats","unit":"Count"}"#),
        "{licenses}"
    );
}
