//! The emulated services as pure logic: a request and the current time in, an answer out. Nothing
//! here does I/O or reads the clock; the HTTP plumbing (`server.rs`) does both.

mod batch_meter_usage;
mod injection;
mod ledger;
mod license_manager;
mod meter_usage;
mod register_usage;
mod resolve_customer;
mod sts;
mod usage;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::{Config, Faults, Operation, ResponseFault, StatusBody, StatusFault};
use injection::{FaultPlan, Injection, Refusal};
use ledger::Ledger;
pub use ledger::{LedgerSnapshot, MeteringRecord};
use license_manager::LicenseManagerState;
pub use usage::{Allocation, Quantity};

/// The parts of an HTTP request the services look at.
pub(crate) struct Request<'a> {
    pub target: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub authorization: Option<&'a str>,
    pub body: &'a [u8],
}

/// The emulated services, each with its own protocol flavour and error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// AWS Marketplace Metering: awsJson1_1, `AWSMPMeteringService.<Op>`.
    Metering,
    /// AWS License Manager: awsJson1_1, `AWSLicenseManager.<Op>`.
    LicenseManager,
    /// AWS STS: the awsQuery protocol, form-encoded requests and XML answers.
    Sts,
}

impl Family {
    /// The SigV4 signing name, and the IAM service prefix.
    fn signing_name(self) -> &'static str {
        match self {
            Family::Metering => "aws-marketplace",
            Family::LicenseManager => "license-manager",
            Family::Sts => "sts",
        }
    }

    fn target_prefix(self) -> Option<&'static str> {
        match self {
            Family::Metering => Some("AWSMPMeteringService."),
            Family::LicenseManager => Some("AWSLicenseManager."),
            Family::Sts => None,
        }
    }

    fn throttling(self) -> ServiceError {
        match self {
            Family::Metering => ServiceError::client("ThrottlingException", "Rate exceeded"),
            Family::LicenseManager => {
                ServiceError::client("RateLimitExceededException", "Rate exceeded")
            }
            Family::Sts => ServiceError::client("Throttling", "Rate exceeded"),
        }
    }

    fn internal_error(self) -> ServiceError {
        let code = match self {
            Family::Metering => "InternalServiceErrorException",
            Family::LicenseManager => "ServerInternalException",
            Family::Sts => "InternalFailure",
        };
        ServiceError::new(500, code, "Internal error")
    }

    fn validation(self, message: impl Into<String>) -> ServiceError {
        let code = match self {
            Family::Metering | Family::LicenseManager => "ValidationException",
            Family::Sts => "ValidationError",
        };
        ServiceError::client(code, message)
    }
}

impl Operation {
    pub(crate) fn family(self) -> Family {
        match self {
            Operation::RegisterUsage
            | Operation::MeterUsage
            | Operation::BatchMeterUsage
            | Operation::ResolveCustomer => Family::Metering,
            Operation::CheckoutLicense
            | Operation::CheckInLicense
            | Operation::ExtendLicenseConsumption
            | Operation::GetLicense
            | Operation::GetAccessToken => Family::LicenseManager,
            Operation::AssumeRoleWithWebIdentity => Family::Sts,
        }
    }

    /// Operations callers make without signing: the Anywhere credential flow's first two steps,
    /// which run before the caller has any credentials.
    fn allows_anonymous(self) -> bool {
        matches!(
            self,
            Operation::GetAccessToken | Operation::AssumeRoleWithWebIdentity
        )
    }
}

/// Which operation a request calls, by `X-Amz-Target` for the awsJson1_1 services and by the
/// form's `Action` for STS; or the error for an unknown one, in the protocol it was asked in.
fn route(request: &Request) -> Result<Operation, (Family, ServiceError)> {
    let (family, name) = match request.target {
        Some(target) => {
            let found = [Family::Metering, Family::LicenseManager]
                .into_iter()
                .find_map(|family| Some((family, target.strip_prefix(family.target_prefix()?)?)));
            found.unwrap_or((Family::Metering, ""))
        }
        None if sts::is_query(request.content_type) => {
            let action = sts::action(request.body);
            let known = Operation::ALL
                .into_iter()
                .find(|operation| operation.family() == Family::Sts && operation.name() == action);
            return known.ok_or_else(|| {
                (
                    Family::Sts,
                    ServiceError::client(
                        "InvalidAction",
                        format!("Could not find operation {action:?} for version 2011-06-15"),
                    ),
                )
            });
        }
        None => (Family::Metering, ""),
    };
    Operation::ALL
        .into_iter()
        .find(|operation| operation.family() == family && operation.name() == name)
        .ok_or_else(|| {
            (
                family,
                ServiceError::client(
                    "UnknownOperationException",
                    "X-Amz-Target must name an operation, as AWSMPMeteringService.RegisterUsage \
                     or AWSLicenseManager.CheckoutLicense",
                ),
            )
        })
}

/// What to send back, and when.
#[derive(Debug)]
pub(crate) struct Reply {
    pub answer: Answer,
    /// Wait this long before sending (injected slowness).
    pub delay: Duration,
    pub request_id: String,
}

/// What the server should do with one request.
#[derive(Debug, PartialEq)]
pub(crate) enum Answer {
    /// Close the connection without answering.
    Drop,
    Json {
        status: u16,
        body: Value,
    },
    /// An error named only by the `X-Amzn-ErrorType` header.
    ErrorHeader {
        status: u16,
        code: String,
    },
    Raw {
        status: u16,
        content_type: Option<&'static str>,
        body: Vec<u8>,
    },
    /// Headers announce `declared` bytes, `sent` arrive, then the connection closes.
    Truncated {
        content_type: &'static str,
        sent: Vec<u8>,
        declared: usize,
    },
}

impl Answer {
    fn ok(body: Value) -> Self {
        Answer::Json { status: 200, body }
    }

    /// A bare HTTP status, as something in front of the service would send it.
    fn status_only(fault: &StatusFault) -> Self {
        let reason = hyper::StatusCode::from_u16(fault.status)
            .ok()
            .and_then(|status| status.canonical_reason())
            .unwrap_or("Error");
        let (content_type, body) = match fault.body {
            StatusBody::Empty => (None, String::new()),
            StatusBody::Html => (
                Some("text/html; charset=utf-8"),
                format!(
                    "<html><head><title>{0} {reason}</title></head>\
                     <body><h1>{0} {reason}</h1></body></html>",
                    fault.status
                ),
            ),
            StatusBody::Message => (
                Some("application/x-amz-json-1.1"),
                json!({ "message": reason }).to_string(),
            ),
            StatusBody::Text => (Some("text/plain; charset=utf-8"), reason.to_owned()),
        };
        Answer::Raw {
            status: fault.status,
            content_type,
            body: body.into_bytes(),
        }
    }

    /// A successful answer spoiled at the HTTP level, whatever its protocol.
    fn spoiled(self, fault: ResponseFault) -> Self {
        let (content_type, body) = match self {
            Answer::Json { status: 200, body } => {
                ("application/x-amz-json-1.1", body.to_string().into_bytes())
            }
            Answer::Raw {
                status: 200,
                content_type: Some(content_type),
                body,
            } => (content_type, body),
            other => return other,
        };
        let raw = |body: Vec<u8>| Answer::Raw {
            status: 200,
            content_type: Some(content_type),
            body,
        };
        let half = body.len() / 2;
        match fault {
            ResponseFault::TruncatedBody => Answer::Truncated {
                content_type,
                declared: body.len(),
                sent: body[..half].to_vec(),
            },
            // Cut short but delivered whole: the document never closes.
            ResponseFault::MalformedJson => raw(body[..half].to_vec()),
            ResponseFault::EmptyBody => raw(Vec::new()),
            ResponseFault::EmptyObject if content_type.contains("json") => raw(b"{}".to_vec()),
            ResponseFault::EmptyObject => raw(body),
            // Trailing whitespace keeps the document well-formed: only its size is wrong.
            ResponseFault::HugeBody => {
                let mut huge = body;
                huge.resize(8 * 1024 * 1024, b' ');
                raw(huge)
            }
            ResponseFault::HtmlPage => Answer::Raw {
                status: 200,
                content_type: Some("text/html; charset=utf-8"),
                body: b"<html><body><h1>Network login required</h1></body></html>".to_vec(),
            },
        }
    }
}

/// An error as the service states it, before the protocol puts it on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceError {
    pub status: u16,
    pub code: String,
    pub message: String,
    /// RedirectException's `Location`: the endpoint to call instead.
    pub location: Option<String>,
}

impl ServiceError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_owned(),
            message: message.into(),
            location: None,
        }
    }

    /// A client error (HTTP 400), the status awsJson1_1 services use for most codes.
    pub fn client(code: &str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }

    /// A DryRun that would have succeeded. MeterUsage documents the code but not its status;
    /// 412 is what EC2 answers for its DryRun convention, which this follows.
    fn dry_run_operation() -> Self {
        Self::new(
            412,
            "DryRunOperation",
            "Request would have succeeded, but DryRun flag is set",
        )
    }

    /// On the wire: awsJson1_1's `{"__type": "...", "message": "..."}` (License Manager's
    /// shapes spell it `Message`), or STS's XML `ErrorResponse`.
    fn render(&self, family: Family, request_id: &str) -> Answer {
        let mut body = match family {
            Family::Metering => json!({ "__type": self.code, "message": self.message }),
            Family::LicenseManager => json!({ "__type": self.code, "Message": self.message }),
            Family::Sts => return sts::error(self, request_id),
        };
        if let Some(location) = &self.location {
            body["Location"] = json!(location);
        }
        Answer::Json {
            status: self.status,
            body,
        }
    }
}

/// A token bucket: `capacity` tokens, refilled at `per_second`.
struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    refilled: Option<SystemTime>,
}

impl TokenBucket {
    fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second.max(1));
        Self {
            capacity: rate,
            per_second: rate,
            tokens: rate,
            refilled: None,
        }
    }

    fn take(&mut self, now: SystemTime) -> bool {
        let elapsed = self
            .refilled
            .and_then(|refilled| now.duration_since(refilled).ok())
            .unwrap_or_default();
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.per_second).min(self.capacity);
        // A clock that steps back earns nothing but keeps the later mark.
        self.refilled = Some(self.refilled.map_or(now, |refilled| refilled.max(now)));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Per-operation counters, for `GET /_emulator/stats`.
#[derive(Default)]
struct Counters {
    /// Calls received, faulted and throttled ones included.
    calls: AtomicU64,
    /// Calls refused by the quota.
    throttled: AtomicU64,
}

/// Who signed a call, from the SigV4 Credential scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caller {
    pub access_key: String,
    pub region: String,
}

/// One call on its way through an operation.
pub(crate) struct Call<'a> {
    pub operation: Operation,
    /// Who signed it; `None` for the operations callers may make unsigned.
    pub caller: Option<Caller>,
    pub body: &'a [u8],
    pub now: SystemTime,
    pub faults: &'a FaultPlan,
    pub request_id: &'a str,
}

pub(crate) struct Service {
    pub config: Config,
    injection: Mutex<Injection>,
    quotas: BTreeMap<Operation, Mutex<TokenBucket>>,
    counters: BTreeMap<Operation, Counters>,
    /// RegisterUsage tokens issued.
    tokens_issued: AtomicU64,
    requests: AtomicU64,
    ledger: Mutex<Ledger>,
    licenses: Mutex<LicenseManagerState>,
}

impl Service {
    pub fn new(config: Config) -> Self {
        let quotas = Operation::ALL
            .into_iter()
            .filter_map(|operation| {
                let rate = config.quota(operation)?;
                Some((operation, Mutex::new(TokenBucket::new(rate))))
            })
            .collect();
        Self {
            injection: Mutex::new(Injection::new(config.faults.clone())),
            quotas,
            counters: Operation::ALL
                .into_iter()
                .map(|operation| (operation, Counters::default()))
                .collect(),
            config,
            tokens_issued: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            ledger: Mutex::new(Ledger::default()),
            licenses: Mutex::new(LicenseManagerState::default()),
        }
    }

    /// Calls received for `operation`, faulted ones included.
    pub fn calls(&self, operation: Operation) -> u64 {
        self.counters[&operation].calls.load(Ordering::SeqCst)
    }

    /// What a client may check before relying on this emulator, for `GET /_emulator/status`:
    /// the metering period (a meter with another period would have its hours refused as
    /// duplicates) and the Region.
    pub fn status(&self) -> Value {
        json!({
            "emulator": "metering-emulator",
            "periodSeconds": self.config.period.as_secs(),
            "region": self.config.region,
        })
    }

    /// Counters, for `GET /_emulator/stats`: RegisterUsage's at the top level, as the bench
    /// scripts read them, and every operation's under `operations`.
    pub fn stats(&self) -> Value {
        let count = |operation: Operation| {
            let counters = &self.counters[&operation];
            (
                counters.calls.load(Ordering::SeqCst),
                counters.throttled.load(Ordering::SeqCst),
            )
        };
        let (calls, throttled) = count(Operation::RegisterUsage);
        let operations: serde_json::Map<String, Value> = Operation::ALL
            .into_iter()
            .map(|operation| {
                let (calls, throttled) = count(operation);
                let counts = json!({ "calls": calls, "throttled": throttled });
                (operation.name().to_owned(), counts)
            })
            .collect();
        json!({
            "calls": calls,
            "throttled": throttled,
            "entitled": self.tokens_issued.load(Ordering::SeqCst),
            "operations": operations,
        })
    }

    /// Replaces the faults; counted faults start counting again, random ones from their seed.
    pub fn set_faults(&self, faults: Faults) {
        *self.injection.lock().expect("injection lock") = Injection::new(faults);
    }

    /// Answers `request` arriving when the host's clock reads `host_now`.
    pub fn handle(&self, request: &Request, host_now: SystemTime) -> Reply {
        let now = self.config.service_time(host_now);
        let request_id = format!(
            "emulated-{}",
            self.requests.fetch_add(1, Ordering::SeqCst) + 1
        );
        let operation = match route(request) {
            Ok(operation) => operation,
            Err((family, error)) => {
                return Reply {
                    answer: error.render(family, &request_id),
                    delay: Duration::ZERO,
                    request_id,
                }
            }
        };
        let family = operation.family();
        self.counters[&operation]
            .calls
            .fetch_add(1, Ordering::SeqCst);
        let plan = self
            .injection
            .lock()
            .expect("injection lock")
            .plan(operation);
        let answer = match self.admit(operation, request, &plan, now, &request_id) {
            Err(answer) => answer,
            Ok(caller) => {
                let call = Call {
                    operation,
                    caller,
                    body: request.body,
                    now,
                    faults: &plan,
                    request_id: &request_id,
                };
                let answer = match self.run(&call) {
                    Ok(answer) => match plan.response {
                        Some(fault) => answer.spoiled(fault),
                        None => answer,
                    },
                    Err(error) => error.render(family, &request_id),
                };
                if plan.lose_response {
                    Answer::Drop
                } else {
                    answer
                }
            }
        };
        Reply {
            answer,
            delay: plan.delay,
            request_id,
        }
    }

    /// Everything before the operation itself: injected drops, the envelope, the quota and the
    /// injected refusals, in the order the service front end applies them.
    fn admit(
        &self,
        operation: Operation,
        request: &Request,
        faults: &FaultPlan,
        now: SystemTime,
        request_id: &str,
    ) -> Result<Option<Caller>, Answer> {
        let family = operation.family();
        let render = |error: ServiceError| error.render(family, request_id);
        if faults.drop {
            return Err(Answer::Drop);
        }
        let caller = self.check_envelope(operation, request).map_err(render)?;
        let over_quota = self
            .quotas
            .get(&operation)
            .is_some_and(|bucket| !bucket.lock().expect("quota lock").take(now));
        if over_quota {
            self.counters[&operation]
                .throttled
                .fetch_add(1, Ordering::SeqCst);
            return Err(render(family.throttling()));
        }
        match &faults.refusal {
            None => Ok(caller),
            Some(Refusal::Throttle) => Err(render(family.throttling())),
            Some(Refusal::Fail) => Err(render(family.internal_error())),
            Some(Refusal::Error {
                error,
                header_only: true,
            }) => Err(Answer::ErrorHeader {
                status: error.status,
                code: error.code.clone(),
            }),
            Some(Refusal::Error { error, .. }) => Err(render(ServiceError::new(
                error.status,
                &error.code,
                "injected by metering-emulator",
            ))),
            Some(Refusal::Status(fault)) => Err(Answer::status_only(fault)),
        }
    }

    fn run(&self, call: &Call) -> Result<Answer, ServiceError> {
        match call.operation {
            Operation::RegisterUsage => register_usage::handle(self, call),
            Operation::MeterUsage => meter_usage::handle(self, call),
            Operation::BatchMeterUsage => batch_meter_usage::handle(self, call),
            Operation::ResolveCustomer => resolve_customer::handle(self, call),
            Operation::CheckoutLicense => license_manager::checkout(self, call),
            Operation::CheckInLicense => license_manager::check_in(self, call),
            Operation::ExtendLicenseConsumption => license_manager::extend(self, call),
            Operation::GetLicense => license_manager::get_license(self, call),
            Operation::GetAccessToken => license_manager::get_access_token(self, call),
            Operation::AssumeRoleWithWebIdentity => sts::assume_role_with_web_identity(self, call),
        }
    }

    fn count_token_issued(&self) {
        self.tokens_issued.fetch_add(1, Ordering::SeqCst);
    }

    /// For each of `count` batch records, whether a fault leaves it unprocessed.
    fn unprocessed_records(&self, operation: Operation, count: usize) -> Vec<bool> {
        self.injection
            .lock()
            .expect("injection lock")
            .unprocessed_records(operation, count)
    }

    pub fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().expect("ledger lock")
    }

    fn licenses(&self) -> MutexGuard<'_, LicenseManagerState> {
        self.licenses.lock().expect("licenses lock")
    }

    /// Every license's seats in use and its checkouts, when the host's clock reads `host_now`.
    pub fn license_usage(&self, host_now: SystemTime) -> Vec<crate::LicenseUsage> {
        let now = self.config.service_time(host_now);
        self.licenses().usage(&self.config.licenses, now)
    }

    /// IAM, as far as the emulator plays it: the operations `Config::denied` lists are refused.
    /// A denied Metering DryRun is UnauthorizedException, as MeterUsage documents.
    fn check_permission(&self, operation: Operation, dry_run: bool) -> Result<(), ServiceError> {
        if !self.config.denied.contains(&operation) {
            return Ok(());
        }
        let family = operation.family();
        let code = match family {
            Family::Metering if dry_run => "UnauthorizedException",
            Family::Metering | Family::LicenseManager => "AccessDeniedException",
            Family::Sts => "AccessDenied",
        };
        Err(ServiceError::new(
            403,
            code,
            format!(
                "not authorized to perform {}:{}",
                family.signing_name(),
                operation.name()
            ),
        ))
    }

    fn check_dimension(&self, dimension: &str) -> Result<(), ServiceError> {
        let dimensions = &self.config.dimensions;
        if dimensions.is_empty() || dimensions.contains(dimension) {
            return Ok(());
        }
        Err(ServiceError::client(
            "InvalidUsageDimensionException",
            format!(
                "{dimension:?} is not one of the product's dimensions ({})",
                dimensions.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        ))
    }

    /// SigV4 scope, checked before the body as the service front end does. Anonymous calls
    /// have no caller.
    fn check_envelope(
        &self,
        operation: Operation,
        request: &Request,
    ) -> Result<Option<Caller>, ServiceError> {
        let family = operation.family();
        let Some(authorization) = request.authorization else {
            if operation.allows_anonymous() {
                return Ok(None);
            }
            return Err(ServiceError::new(
                403,
                "MissingAuthenticationTokenException",
                "Missing Authentication Token",
            ));
        };
        let scope = sigv4_scope(authorization).ok_or_else(|| {
            ServiceError::new(
                403,
                "IncompleteSignatureException",
                "Authorization header is not AWS4-HMAC-SHA256 with a Credential scope",
            )
        })?;
        let signing_name = family.signing_name();
        if scope.service != signing_name {
            return Err(ServiceError::new(
                403,
                "InvalidSignatureException",
                format!("Credential should be scoped to correct service: '{signing_name}'"),
            ));
        }
        // Metering serves one Region; License Manager and STS serve any, and License Manager
        // redirects to a license's home Region itself.
        if family == Family::Metering && scope.region != self.config.region {
            let message = format!(
                "{} must be called in the Region the task runs in ({}), not {}",
                operation.name(),
                self.config.region,
                scope.region
            );
            return Err(match operation {
                Operation::RegisterUsage => ServiceError::client("InvalidRegionException", message),
                Operation::MeterUsage => {
                    ServiceError::client("InvalidEndpointRegionException", message)
                }
                // SaaS calls come from the seller's own account: another Region's scope is
                // simply a signature that does not match this endpoint.
                _ => ServiceError::new(
                    403,
                    "InvalidSignatureException",
                    format!(
                        "Credential should be scoped to a valid region, not '{}'",
                        scope.region
                    ),
                ),
            });
        }
        Ok(Some(Caller {
            access_key: scope.access_key.to_owned(),
            region: scope.region.to_owned(),
        }))
    }
}

/// The request body as a JSON object.
fn parse_input(body: &[u8]) -> Result<Value, ServiceError> {
    match serde_json::from_slice(body) {
        Ok(input @ Value::Object(_)) => Ok(input),
        Ok(_) => Err(ServiceError::client(
            "SerializationException",
            "the body is not a JSON object",
        )),
        Err(e) => Err(ServiceError::client(
            "SerializationException",
            format!("the body is not JSON: {e}"),
        )),
    }
}

/// `DryRun`: absent means false.
fn dry_run(input: &Value) -> Result<bool, ServiceError> {
    match &input["DryRun"] {
        Value::Null => Ok(false),
        Value::Bool(dry_run) => Ok(*dry_run),
        _ => Err(ServiceError::client(
            "ValidationException",
            "DryRun must be a boolean",
        )),
    }
}

/// `ProductCode`: 1-255 of `[-a-zA-Z0-9/=:_.@]`.
fn product_code(input: &Value) -> Result<&str, ServiceError> {
    input["ProductCode"]
        .as_str()
        .filter(|code| {
            (1..=255).contains(&code.len())
                && code
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-/=:_.@".contains(c))
        })
        .ok_or_else(|| {
            ServiceError::client(
                "ValidationException",
                "ProductCode must be 1-255 of [-a-zA-Z0-9/=:_.@]",
            )
        })
}

/// Whether the buyer may use `product_code`: entitled, known without a subscription, or unknown.
fn check_entitlement(config: &Config, product_code: &str) -> Result<(), ServiceError> {
    if config.not_entitled.contains(product_code) {
        return Err(ServiceError::client(
            "CustomerNotEntitledException",
            "Customer does not have a valid subscription for the product",
        ));
    }
    if !config.entitled.contains(product_code) {
        return Err(ServiceError::client(
            "InvalidProductCodeException",
            "Product code is not valid",
        ));
    }
    Ok(())
}

struct SigV4Scope<'a> {
    access_key: &'a str,
    region: &'a str,
    service: &'a str,
}

/// `AWS4-HMAC-SHA256 Credential=AKID/20261123/us-east-1/aws-marketplace/aws4_request, ...`
fn sigv4_scope(authorization: &str) -> Option<SigV4Scope<'_>> {
    let params = authorization.strip_prefix("AWS4-HMAC-SHA256 ")?;
    let credential = params
        .split(',')
        .map(str::trim)
        .find_map(|param| param.strip_prefix("Credential="))?;
    let mut parts = credential.split('/');
    let (access_key, _date, region, service, terminator) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    (terminator == "aws4_request" && params.contains("Signature=")).then_some(SigV4Scope {
        access_key,
        region,
        service,
    })
}

/// The model's ARN pattern: `arn:aws[a-zA-Z-]*:service:region:account:resource`.
fn valid_arn(arn: &str) -> bool {
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(partition), Some(service), Some(region), Some(account), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let word = |part: &str, max: usize| {
        part.len() <= max
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_/.-".contains(c))
    };
    partition
        .strip_prefix("aws")
        .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_alphabetic() || c == '-'))
        && service.starts_with(|c: char| c.is_ascii_alphanumeric())
        && word(service, 63)
        && word(region, 63)
        && word(account, 63)
        && (1..=1024).contains(&resource.len())
        && resource.starts_with(|c: char| c.is_ascii_alphanumeric())
        && resource
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":_/+=,@.-".contains(c))
}

/// A UUID-shaped identifier, distinct for every `n`: the high half is SplitMix64's finalizer,
/// a bijection, of `n`.
pub(crate) fn opaque_id(n: u64) -> String {
    let high = mix64(n);
    let low = mix64(high);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0xffff,
        low >> 48,
        low & 0xffff_ffff_ffff
    )
}

/// SplitMix64's output function: a bijection on u64 that scatters nearby inputs.
pub(crate) fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// ISO 8601 in UTC, as `2026-11-23T12:34:56Z`: License Manager's and STS's date-times.
pub(crate) fn iso8601(time: SystemTime) -> String {
    aws_smithy_types::DateTime::from(time)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .expect("a time the format can express")
}

/// Whole seconds since the Unix epoch (0 before it).
pub(crate) fn epoch_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::keys::shared_2048;

    pub const AUTH: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261123/us-east-1/aws-marketplace/aws4_request, SignedHeaders=host;x-amz-date, Signature=abc";

    /// 2026-11-23T12:34:56Z, a fixed clock.
    pub fn noon() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_795_437_296)
    }

    pub fn config() -> Config {
        Config::new(shared_2048()).entitle("paid").refuse("unpaid")
    }

    pub fn with_faults(faults: Faults) -> Service {
        let mut config = config();
        config.faults = faults;
        Service::new(config)
    }

    /// Calls an awsJson1_1 `operation` at `now` with a JSON body, signed for us-east-1.
    pub fn call_at(
        service: &Service,
        operation: Operation,
        body: &Value,
        now: SystemTime,
    ) -> Answer {
        let family = operation.family();
        let authorization = AUTH.replace("aws-marketplace", family.signing_name());
        signed_call(service, operation, body, Some(&authorization), now)
    }

    /// Calls an awsJson1_1 `operation` with this Authorization header, if any.
    pub fn signed_call(
        service: &Service,
        operation: Operation,
        body: &Value,
        authorization: Option<&str>,
        now: SystemTime,
    ) -> Answer {
        let prefix = operation
            .family()
            .target_prefix()
            .expect("an awsJson1_1 operation");
        let target = format!("{prefix}{}", operation.name());
        let body = body.to_string();
        service
            .handle(
                &Request {
                    target: Some(&target),
                    content_type: Some("application/x-amz-json-1.1"),
                    authorization,
                    body: body.as_bytes(),
                },
                now,
            )
            .answer
    }

    /// (status, error code or a word for the answer's kind).
    pub fn code_of(answer: &Answer) -> (u16, String) {
        match answer {
            Answer::Json { status, body } => {
                (*status, body["__type"].as_str().unwrap_or("").to_owned())
            }
            Answer::Raw {
                status,
                content_type: Some("text/xml"),
                body,
            } => (*status, sts::tests::error_code(body)),
            Answer::Drop => (0, "drop".to_owned()),
            Answer::ErrorHeader { status, code } => (*status, code.clone()),
            Answer::Raw { status, .. } => (*status, "raw".to_owned()),
            Answer::Truncated { .. } => (0, "truncated".to_owned()),
        }
    }

    #[test]
    fn unknown_targets_are_unknown_operations() {
        let service = Service::new(config());
        for target in [
            None,
            Some("AWSMPMeteringService.Nope"),
            Some("Other.RegisterUsage"),
        ] {
            let reply = service.handle(
                &Request {
                    target,
                    content_type: Some("application/x-amz-json-1.1"),
                    authorization: Some(AUTH),
                    body: b"{}",
                },
                noon(),
            );
            assert_eq!(code_of(&reply.answer).1, "UnknownOperationException");
        }
    }

    #[test]
    fn envelope_checks_authorization_scope_and_region() {
        let service = Service::new(config());
        let body = b"{}";
        let answer = |authorization: Option<&str>| {
            service
                .handle(
                    &Request {
                        target: Some("AWSMPMeteringService.RegisterUsage"),
                        content_type: Some("application/x-amz-json-1.1"),
                        authorization,
                        body,
                    },
                    noon(),
                )
                .answer
        };
        assert_eq!(
            code_of(&answer(None)),
            (403, "MissingAuthenticationTokenException".into())
        );
        assert_eq!(
            code_of(&answer(Some(&AUTH.replace("us-east-1", "eu-west-1")))),
            (400, "InvalidRegionException".into())
        );
        assert_eq!(
            code_of(&answer(Some(&AUTH.replace("aws-marketplace", "s3")))).1,
            "InvalidSignatureException"
        );
        assert_eq!(
            code_of(&answer(Some("Bearer x"))).1,
            "IncompleteSignatureException"
        );
    }

    #[test]
    fn license_arns_follow_the_model_pattern() {
        assert!(valid_arn(
            "arn:aws:license-manager::294406891311:license:l-0123456789abcdef"
        ));
        assert!(valid_arn(
            "arn:aws-us-gov:license-manager:us-gov-west-1:1:license:l-1"
        ));
        for bad in [
            "",
            "arn:aws",
            "arn:azure:s:r:a:x",
            "arn:aws::r:a:x",
            "arn:aws:s:r:a:",
            "arn:aws:s:r:a:-x",
        ] {
            assert!(!valid_arn(bad), "{bad}");
        }
    }

    #[test]
    fn sigv4_scope_needs_credential_and_signature() {
        assert!(sigv4_scope(AUTH).is_some());
        assert!(sigv4_scope("Bearer x").is_none());
        assert!(sigv4_scope("AWS4-HMAC-SHA256 Credential=A/d/r/s/aws4_request").is_none());
    }

    #[test]
    fn the_token_bucket_refills_with_the_injected_clock() {
        let mut bucket = TokenBucket::new(2);
        let start = noon();
        assert!(bucket.take(start));
        assert!(bucket.take(start));
        assert!(!bucket.take(start));
        assert!(
            bucket.take(start + Duration::from_millis(500)),
            "refilled at 2/s"
        );
        assert!(!bucket.take(start + Duration::from_millis(500)));
        assert!(!bucket.take(start), "a clock stepping back earns nothing");
        assert!(bucket.take(start + Duration::from_secs(10)));
        assert!(bucket.take(start + Duration::from_secs(10)));
        assert!(
            !bucket.take(start + Duration::from_secs(10)),
            "capped at one second's worth"
        );
    }

    #[test]
    fn status_faults_answer_a_bare_status_after_the_counted_faults() {
        let service = with_faults(Faults {
            throttle_first: 1,
            status: Some("503:html".parse().unwrap()),
            ..Faults::default()
        });
        let body = json!({ "ProductCode": "paid", "PublicKeyVersion": 1 });
        assert_eq!(
            code_of(&call_at(&service, Operation::RegisterUsage, &body, noon())).1,
            "ThrottlingException"
        );
        let Answer::Raw {
            status,
            content_type,
            body,
        } = call_at(&service, Operation::RegisterUsage, &body, noon())
        else {
            panic!("expected a bare status");
        };
        assert_eq!(
            (status, content_type),
            (503, Some("text/html; charset=utf-8"))
        );
        assert!(String::from_utf8(body)
            .unwrap()
            .contains("503 Service Unavailable"));
    }

    #[test]
    fn status_fault_bodies_carry_no_error_code() {
        let answer = |text: &str| Answer::status_only(&text.parse().unwrap());
        assert_eq!(
            answer("429"),
            Answer::Raw {
                status: 429,
                content_type: None,
                body: Vec::new()
            }
        );
        let Answer::Raw { body, .. } = answer("500:message") else {
            panic!("expected a bare status");
        };
        assert_eq!(
            serde_json::from_slice::<Value>(&body).unwrap(),
            json!({ "message": "Internal Server Error" })
        );
        let Answer::Raw {
            content_type, body, ..
        } = answer("502:text")
        else {
            panic!("expected a bare status");
        };
        assert_eq!(content_type, Some("text/plain; charset=utf-8"));
        assert_eq!(body, b"Bad Gateway");
    }
}
