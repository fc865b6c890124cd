//! AWS License Manager as a Marketplace buyer's software meets it: checking out, extending and
//! checking in a contract license's entitlements, reading the license, and (for Anywhere) the
//! access token that STS exchanges for role credentials.
//!
//! Choices the model leaves open, made here:
//! - A checkout grants each requested entitlement the license has (same name and unit) and has
//!   room for; the others are left out of `EntitlementsAllowed`, as tiered licenses need (the
//!   caller lists every tier, the license has one). Nothing granted: NoEntitlementsAllowed, the
//!   same answer for "no such license" and "every seat taken", as AWS gives.
//! - A contract outside its validity (ended, or not begun) is NoEntitlementsAllowedException as
//!   well, with a message that says so: the model's meaning of the code ("no entitlements
//!   found for this license") covers it, and GetLicense shows the status EXPIRED.
//! - A reused ClientToken with other parameters is a ValidationException (the model has no
//!   idempotency error for CheckoutLicense).
//! - CheckInLicense on a PERPETUAL checkout, or on entitlements that do not allow check-in, is
//!   ConflictException: drawn-down units are consumed for good.
//! - GetLicense for an unknown ARN is InvalidParameterValueException, the model having no
//!   ResourceNotFoundException for it.
//! - ExtendLicenseConsumption with DryRun answers DryRunOperation (412) when it would succeed.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::{
    dry_run, epoch_seconds, iso8601, opaque_id, parse_input, valid_arn, Answer, Call, Family,
    Service, ServiceError,
};
use crate::{
    CheckoutRecord, CheckoutState, CheckoutType, EntitlementUnit, EntitlementUsage, LicenseFault,
    LicenseSpec, LicenseUsage,
};

/// Where consumption tokens and access-token IDs are drawn from, apart from other opaque IDs.
const CONSUMPTION_TOKENS: u64 = 1 << 40;
const ACCESS_TOKENS: u64 = 2 << 40;
/// The model's minimum length of a SignedToken.
const SIGNED_TOKEN_MIN_CHARS: usize = 4096;

/// An entitlement a checkout was granted.
struct Granted {
    name: String,
    unit: EntitlementUnit,
    /// Units held or drawn down; 0 for `Unit=None`.
    units: u64,
    /// `EntitlementsAllowed[].Value`: the units, or a `Unit=None` entitlement's value.
    value: String,
}

struct Checkout {
    /// Index into `Config::licenses`.
    license: usize,
    token: String,
    checkout_type: CheckoutType,
    granted: Vec<Granted>,
    node_id: Option<String>,
    issued_at: SystemTime,
    expires_at: SystemTime,
    checked_in: bool,
}

impl Checkout {
    fn state(&self, now: SystemTime) -> CheckoutState {
        match self.checkout_type {
            CheckoutType::Perpetual => CheckoutState::DrawnDown,
            CheckoutType::Provisional if self.checked_in => CheckoutState::CheckedIn,
            CheckoutType::Provisional if now < self.expires_at => CheckoutState::Held,
            CheckoutType::Provisional => CheckoutState::Expired,
        }
    }
}

/// An access token GetAccessToken issued.
pub(super) struct AccessToken {
    pub subject: String,
    pub expires: SystemTime,
}

/// What License Manager remembers between calls.
#[derive(Default)]
pub(crate) struct LicenseManagerState {
    checkouts: Vec<Checkout>,
    /// (caller, ClientToken) to the checkout's parameters and its answer.
    client_tokens: HashMap<(String, String), (Value, Value)>,
    access_tokens: HashMap<String, AccessToken>,
    issued: u64,
}

impl LicenseManagerState {
    /// A fresh number for an identifier.
    pub(super) fn next_id(&mut self) -> u64 {
        self.issued += 1;
        self.issued
    }

    pub(super) fn access_token(&self, token: &str) -> Option<&AccessToken> {
        self.access_tokens.get(token)
    }

    /// Units of `license`'s entitlement `name` held or drawn down at `now`.
    fn in_use(&self, license: usize, name: &str, now: SystemTime) -> u64 {
        self.checkouts
            .iter()
            .filter(|checkout| checkout.license == license)
            .filter(|checkout| {
                matches!(
                    checkout.state(now),
                    CheckoutState::Held | CheckoutState::DrawnDown
                )
            })
            .flat_map(|checkout| &checkout.granted)
            .filter(|granted| granted.name == name)
            .map(|granted| granted.units)
            .sum()
    }

    /// Every license's seats in use and its checkouts, at `now`.
    pub(crate) fn usage(&self, licenses: &[LicenseSpec], now: SystemTime) -> Vec<LicenseUsage> {
        licenses
            .iter()
            .enumerate()
            .map(|(index, license)| LicenseUsage {
                license_arn: license.license_arn.clone(),
                product_sku: license.product_sku.clone(),
                entitlements: license
                    .entitlements
                    .iter()
                    .map(|entitlement| EntitlementUsage {
                        name: entitlement.name.clone(),
                        unit: entitlement.unit,
                        max_count: entitlement.max_count,
                        in_use: self.in_use(index, &entitlement.name, now),
                    })
                    .collect(),
                checkouts: self
                    .checkouts
                    .iter()
                    .filter(|checkout| checkout.license == index)
                    .map(|checkout| CheckoutRecord {
                        license_consumption_token: checkout.token.clone(),
                        checkout_type: checkout.checkout_type,
                        node_id: checkout.node_id.clone(),
                        entitlements: checkout
                            .granted
                            .iter()
                            .map(|granted| (granted.name.clone(), granted.units))
                            .collect(),
                        issued_at: epoch_seconds(checkout.issued_at),
                        expiration: epoch_seconds(checkout.expires_at),
                        state: checkout.state(now),
                    })
                    .collect(),
            })
            .collect()
    }
}

fn validation(message: impl Into<String>) -> ServiceError {
    Family::LicenseManager.validation(message)
}

fn required_str<'a>(input: &'a Value, name: &str) -> Result<&'a str, ServiceError> {
    input[name]
        .as_str()
        .filter(|value| !value.is_empty())
        .ok_or_else(|| validation(format!("{name} is required")))
}

fn optional_str<'a>(input: &'a Value, name: &str) -> Result<Option<&'a str>, ServiceError> {
    match &input[name] {
        Value::Null => Ok(None),
        Value::String(value) => Ok(Some(value)),
        _ => Err(validation(format!("{name} must be a string"))),
    }
}

/// An entitlement CheckoutLicense asks for.
struct Requested<'a> {
    name: &'a str,
    unit: EntitlementUnit,
    units: u64,
}

fn requested_entitlements(list: &Value) -> Result<Vec<Requested<'_>>, ServiceError> {
    let list = list
        .as_array()
        .ok_or_else(|| validation("Entitlements is required"))?;
    list.iter()
        .enumerate()
        .map(|(index, entitlement)| {
            let at = format!("Entitlements[{index}]");
            let name = required_str(entitlement, "Name")
                .map_err(|_| validation(format!("{at}.Name is required")))?;
            let unit = entitlement["Unit"]
                .as_str()
                .and_then(EntitlementUnit::parse)
                .ok_or_else(|| validation(format!("{at}.Unit must be one of the model's units")))?;
            // A feature (Unit=None) has no amount; an amount defaults to one unit.
            let units = match (&entitlement["Value"], unit) {
                (_, EntitlementUnit::None) => 0,
                (Value::Null, _) => 1,
                (Value::String(value), _) => value.parse().map_err(|_| {
                    validation(format!(
                        "{at}.Value must be a whole number of {}",
                        unit.name()
                    ))
                })?,
                _ => return Err(validation(format!("{at}.Value must be a string"))),
            };
            Ok(Requested { name, unit, units })
        })
        .collect()
}

/// The requested entitlements the license has room for, at `now`.
fn grant(
    state: &LicenseManagerState,
    index: usize,
    license: &LicenseSpec,
    requested: &[Requested],
    now: SystemTime,
) -> Vec<Granted> {
    let mut granted: Vec<Granted> = Vec::new();
    for request in requested {
        let Some(entitlement) = license.entitlements.iter().find(|entitlement| {
            entitlement.name == request.name && entitlement.unit == request.unit
        }) else {
            continue;
        };
        if let Some(max) = entitlement.max_count {
            let granted_here: u64 = granted
                .iter()
                .filter(|earlier| earlier.name == entitlement.name)
                .map(|earlier| earlier.units)
                .sum();
            let taken = state.in_use(index, &entitlement.name, now) + granted_here;
            if !entitlement.overage && taken + request.units > max {
                continue;
            }
        }
        granted.push(Granted {
            name: entitlement.name.clone(),
            unit: entitlement.unit,
            units: request.units,
            value: match &entitlement.value {
                Some(value) if entitlement.max_count.is_none() => value.clone(),
                _ => request.units.to_string(),
            },
        });
    }
    granted
}

pub(super) fn checkout(service: &Service, call: &Call) -> Result<Answer, ServiceError> {
    let input = parse_input(call.body)?;
    service.check_permission(call.operation, false)?;
    let sku = required_str(&input, "ProductSKU")?;
    let checkout_type = serde_json::from_value::<CheckoutType>(input["CheckoutType"].clone())
        .map_err(|_| validation("CheckoutType must be PROVISIONAL or PERPETUAL"))?;
    let fingerprint = required_str(&input, "KeyFingerprint")?;
    let requested = requested_entitlements(&input["Entitlements"])?;
    let client_token = required_str(&input, "ClientToken")?;
    if client_token.chars().count() > 2048 || client_token.contains(char::is_whitespace) {
        return Err(validation(
            "ClientToken must be at most 2048 characters, none of them spaces",
        ));
    }
    let node_id = optional_str(&input, "NodeId")?;
    optional_str(&input, "Beneficiary")?;
    let caller = call.caller.as_ref().expect("CheckoutLicense is signed");
    let now = call.now;

    let mut state = service.licenses();
    let token_key = (caller.access_key.clone(), client_token.to_owned());
    let mut parameters = input.clone();
    parameters
        .as_object_mut()
        .expect("an object")
        .remove("ClientToken");
    if let Some((earlier, answer)) = state.client_tokens.get(&token_key) {
        return if *earlier == parameters {
            Ok(Answer::ok(answer.clone()))
        } else {
            Err(validation(
                "ClientToken was already used with other parameters",
            ))
        };
    }
    let no_entitlements = || {
        ServiceError::client(
            "NoEntitlementsAllowedException",
            "No entitlements are allowed for the requested license",
        )
    };
    let config = &service.config;
    let (index, license) = config
        .licenses
        .iter()
        .enumerate()
        .find(|(_, license)| license.product_sku == sku && license.key_fingerprint == fingerprint)
        .ok_or_else(no_entitlements)?;
    let home = license.home_region.as_deref().unwrap_or(&config.region);
    if home != caller.region {
        return Err(ServiceError {
            location: Some(format!("https://license-manager.{home}.amazonaws.com")),
            ..ServiceError::client(
                "RedirectException",
                format!("The license's home Region is {home}; call License Manager there"),
            )
        });
    }
    if !license.valid_at(now) {
        return Err(ServiceError::client(
            "NoEntitlementsAllowedException",
            "No entitlements are allowed: the license is not valid at this time (the contract \
             has ended or not begun)",
        ));
    }
    let mut granted = grant(&state, index, license, &requested, now);
    if granted.is_empty() {
        return Err(no_entitlements());
    }
    let fault = call.faults.license;
    for counted in granted
        .iter_mut()
        .filter(|granted| granted.unit != EntitlementUnit::None)
    {
        match fault {
            Some(LicenseFault::FewerUnits) => {
                counted.units = counted.units.saturating_sub(1);
                counted.value = counted.units.to_string();
            }
            Some(LicenseFault::NegativeUnits) => {
                counted.value = format!("-{}", counted.units);
                counted.units = 0;
            }
            _ => {}
        }
    }
    let token = opaque_id(CONSUMPTION_TOKENS + state.next_id()).replace('-', "");
    let expires_at = match fault {
        Some(LicenseFault::ExpirationPassed) => now
            .checked_sub(Duration::from_secs(60))
            .unwrap_or(SystemTime::UNIX_EPOCH),
        _ => now + license.floating_ttl,
    };
    let allowed: Vec<Value> = granted
        .iter()
        .map(
            |granted| json!({ "Name": granted.name, "Unit": granted.unit, "Value": granted.value }),
        )
        .collect();
    let mut body = json!({
        "CheckoutType": checkout_type,
        "LicenseConsumptionToken": token,
        "EntitlementsAllowed": allowed,
        "IssuedAt": iso8601(now),
        "Expiration": iso8601(expires_at),
        "LicenseArn": license.license_arn,
    });
    if let Some(node_id) = node_id {
        body["NodeId"] = json!(node_id);
    }
    body["SignedToken"] = json!(signed_token(service, license, &body, now, expires_at));
    state.checkouts.push(Checkout {
        license: index,
        token,
        checkout_type,
        granted,
        node_id: node_id.map(str::to_owned),
        issued_at: now,
        expires_at,
        checked_in: false,
    });
    state
        .client_tokens
        .insert(token_key, (parameters, body.clone()));
    Ok(Answer::ok(body))
}

/// A PS256 JWS, signed with the emulator's key, of the license and the checkout: what a seller's
/// software verifies offline. AWS's tokens are KMS-signed and at least 4096 characters (the
/// model's minimum); a small license comes out shorter, so a `padding` claim makes up the length
/// for clients that size buffers by real tokens.
fn signed_token(
    service: &Service,
    license: &LicenseSpec,
    checkout: &Value,
    now: SystemTime,
    expires_at: SystemTime,
) -> String {
    let key = &service.config.signing_key;
    let header = json!({ "alg": "PS256", "typ": "JWT", "kid": license.key_fingerprint });
    let mut claims = json!({
        "iss": license.issuer_name,
        "iat": epoch_seconds(now),
        "exp": epoch_seconds(expires_at),
        "license": license_json(license, &service.config.region, now),
        "checkout": checkout,
    });
    let token = key.sign_jwt(&header, &claims);
    let Some(shortfall) = SIGNED_TOKEN_MIN_CHARS.checked_sub(token.len()) else {
        return token;
    };
    // Base64 makes each padding byte at least one character.
    claims["padding"] = json!("0".repeat(shortfall));
    key.sign_jwt(&header, &claims)
}

/// GetLicense's `License`.
fn license_json(license: &LicenseSpec, default_region: &str, now: SystemTime) -> Value {
    let home = license.home_region.as_deref().unwrap_or(default_region);
    let status = if now < license.begin {
        "PENDING_AVAILABLE"
    } else if license.valid_at(now) {
        "AVAILABLE"
    } else {
        "EXPIRED"
    };
    let entitlements: Vec<Value> = license
        .entitlements
        .iter()
        .map(|entitlement| {
            let mut json = json!({
                "Name": entitlement.name,
                "Unit": entitlement.unit,
                "Overage": entitlement.overage,
                "AllowCheckIn": entitlement.allow_check_in,
            });
            if let Some(max) = entitlement.max_count {
                json["MaxCount"] = json!(max);
            }
            if let Some(value) = &entitlement.value {
                json["Value"] = json!(value);
            }
            json
        })
        .collect();
    let mut validity = json!({ "Begin": iso8601(license.begin) });
    if let Some(end) = license.end {
        validity["End"] = json!(iso8601(end));
    }
    json!({
        "LicenseArn": license.license_arn,
        "LicenseName": license.license_name,
        "ProductName": license.product_name,
        "ProductSKU": license.product_sku,
        "Issuer": {
            "Name": license.issuer_name,
            "SignKey": format!("arn:aws:kms:{home}:294406891311:key/emulated-marketplace-signing-key"),
            "KeyFingerprint": license.key_fingerprint,
        },
        "HomeRegion": home,
        "Status": status,
        "Validity": validity,
        "Entitlements": entitlements,
        "ConsumptionConfiguration": {
            "RenewType": "None",
            "ProvisionalConfiguration": {
                "MaxTimeToLiveInMinutes": license.floating_ttl.as_secs().div_ceil(60),
            },
        },
        "LicenseMetadata": [],
        "CreateTime": iso8601(license.begin),
        "Version": "1",
    })
}

fn not_found() -> ServiceError {
    ServiceError::client(
        "ResourceNotFoundException",
        "No live license consumption has this token",
    )
}

pub(super) fn extend(service: &Service, call: &Call) -> Result<Answer, ServiceError> {
    let input = parse_input(call.body)?;
    let dry_run = dry_run(&input)?;
    service.check_permission(call.operation, dry_run)?;
    let token = required_str(&input, "LicenseConsumptionToken")?;
    let mut state = service.licenses();
    let checkout = state
        .checkouts
        .iter_mut()
        .find(|checkout| checkout.token == token && checkout.state(call.now) == CheckoutState::Held)
        .ok_or_else(not_found)?;
    if dry_run {
        return Err(ServiceError::dry_run_operation());
    }
    let ttl = service.config.licenses[checkout.license].floating_ttl;
    checkout.expires_at = call.now + ttl;
    let mut body = json!({ "LicenseConsumptionToken": token });
    if call.faults.license != Some(LicenseFault::ExtendWithoutExpiration) {
        body["Expiration"] = json!(iso8601(checkout.expires_at));
    }
    Ok(Answer::ok(body))
}

pub(super) fn check_in(service: &Service, call: &Call) -> Result<Answer, ServiceError> {
    let input = parse_input(call.body)?;
    service.check_permission(call.operation, false)?;
    let token = required_str(&input, "LicenseConsumptionToken")?;
    optional_str(&input, "Beneficiary")?;
    let mut state = service.licenses();
    let checkout = state
        .checkouts
        .iter_mut()
        .find(|checkout| checkout.token == token)
        .ok_or_else(not_found)?;
    let license = &service.config.licenses[checkout.license];
    let allows_check_in = checkout.granted.iter().all(|granted| {
        license
            .entitlements
            .iter()
            .any(|entitlement| entitlement.name == granted.name && entitlement.allow_check_in)
    });
    match checkout.state(call.now) {
        CheckoutState::Held if allows_check_in => {
            checkout.checked_in = true;
            Ok(Answer::ok(json!({})))
        }
        CheckoutState::Held | CheckoutState::DrawnDown => Err(ServiceError::client(
            "ConflictException",
            "These entitlements are consumed for good and cannot be checked in",
        )),
        CheckoutState::Expired | CheckoutState::CheckedIn => Err(not_found()),
    }
}

pub(super) fn get_license(service: &Service, call: &Call) -> Result<Answer, ServiceError> {
    let input = parse_input(call.body)?;
    service.check_permission(call.operation, false)?;
    let arn = required_str(&input, "LicenseArn")?;
    if !valid_arn(arn) || arn.len() > 2048 {
        return Err(validation("LicenseArn is not an ARN"));
    }
    optional_str(&input, "Version")?;
    let config = &service.config;
    let license = config
        .licenses
        .iter()
        .find(|license| license.license_arn == arn)
        .ok_or_else(|| {
            ServiceError::client(
                "InvalidParameterValueException",
                format!("License {arn} is not available to this account"),
            )
        })?;
    let mut described = license_json(license, &config.region, call.now);
    if call.faults.license == Some(LicenseFault::OtherProductSku) {
        let other = format!("{}-other", license.product_sku);
        described["ProductSKU"] = json!(other);
        described["ProductName"] = json!(other);
    }
    Ok(Answer::ok(json!({ "License": described })))
}

pub(super) fn get_access_token(service: &Service, call: &Call) -> Result<Answer, ServiceError> {
    let input = parse_input(call.body)?;
    service.check_permission(call.operation, false)?;
    let refresh_token = required_str(&input, "Token")?;
    if refresh_token.chars().count() > 4096 || refresh_token.contains(char::is_whitespace) {
        return Err(validation(
            "Token must be at most 4096 characters, none of them spaces",
        ));
    }
    let properties = match &input["TokenProperties"] {
        Value::Null => Vec::new(),
        Value::Array(list) if list.len() <= 3 && list.iter().all(Value::is_string) => list.clone(),
        _ => return Err(validation("TokenProperties lists at most 3 strings")),
    };
    let config = &service.config;
    let (index, refresh) = config
        .refresh_tokens
        .iter()
        .enumerate()
        .find(|(_, known)| known.token == refresh_token)
        .ok_or_else(|| {
            ServiceError::client("AuthorizationException", "The refresh token is not valid")
        })?;
    if refresh.expired {
        return Err(ServiceError::client(
            "AuthorizationException",
            "The refresh token has expired; the buyer must create a new license token",
        ));
    }
    let mut state = service.licenses();
    let id = opaque_id(ACCESS_TOKENS + state.next_id());
    let subject = format!("license-token-{index}");
    let expires = call.now + config.access_token_ttl;
    let claims = json!({
        "iss": "https://openid-license-manager.amazonaws.com",
        "sub": subject,
        "aud": "sts.amazonaws.com",
        "amr": properties,
        "iat": epoch_seconds(call.now),
        "exp": epoch_seconds(expires),
        "jti": id,
    });
    let access_token = config
        .signing_key
        .sign_jwt(&json!({ "alg": "PS256", "typ": "JWT" }), &claims);
    state
        .access_tokens
        .insert(access_token.clone(), AccessToken { subject, expires });
    Ok(Answer::ok(json!({ "AccessToken": access_token })))
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;

    use super::super::tests::{call_at, code_of, config, noon, signed_call, AUTH};
    use super::*;
    use crate::{Config, EntitlementSpec, Operation, RefreshToken, MARKETPLACE_KEY_FINGERPRINT};

    const TTL: Duration = Duration::from_secs(30);

    fn licensed(config: Config) -> Service {
        Service::new(
            config
                .license(LicenseSpec::floating("floating-sku", "Seats", 2).floating_ttl(TTL))
                .license(LicenseSpec::drawdown(
                    "drawdown-sku",
                    "Storage",
                    EntitlementUnit::Gigabytes,
                    100,
                ))
                .license(
                    LicenseSpec::tiered("tiered-sku", "Pro").entitlement(EntitlementSpec::counted(
                        "Seats",
                        EntitlementUnit::Count,
                        1,
                    )),
                )
                .license(LicenseSpec::floating("west-sku", "Seats", 1).home_region("us-west-2"))
                .license(LicenseSpec::floating("ended-sku", "Seats", 1).valid(
                    noon() - Duration::from_secs(7200),
                    Some(noon() - Duration::from_secs(3600)),
                ))
                .refresh_token(RefreshToken::new("refresh-live"))
                .refresh_token(RefreshToken::new("refresh-old").expired()),
        )
    }

    fn service() -> Service {
        licensed(config())
    }

    fn checkout_request(sku: &str, checkout_type: &str, entitlements: Value, token: &str) -> Value {
        json!({
            "ProductSKU": sku,
            "CheckoutType": checkout_type,
            "KeyFingerprint": MARKETPLACE_KEY_FINGERPRINT,
            "Entitlements": entitlements,
            "ClientToken": token,
            "NodeId": "node-1",
        })
    }

    fn seats(count: u32) -> Value {
        json!([{ "Name": "Seats", "Unit": "Count", "Value": count.to_string() }])
    }

    fn call(service: &Service, operation: Operation, body: Value, now: SystemTime) -> Answer {
        call_at(service, operation, &body, now)
    }

    /// The checkout's answer, or the whole error answer.
    fn checkout_at(service: &Service, body: Value, now: SystemTime) -> Result<Value, Answer> {
        match call(service, Operation::CheckoutLicense, body, now) {
            Answer::Json { status: 200, body } => Ok(body),
            other => Err(other),
        }
    }

    fn floating(
        service: &Service,
        count: u32,
        token: &str,
        now: SystemTime,
    ) -> Result<Value, Answer> {
        checkout_at(
            service,
            checkout_request("floating-sku", "PROVISIONAL", seats(count), token),
            now,
        )
    }

    fn error_code(result: Result<Value, Answer>) -> String {
        code_of(&result.expect_err("expected an error")).1
    }

    fn consumption(token: &Value) -> Value {
        json!({ "LicenseConsumptionToken": token })
    }

    #[test]
    fn a_checkout_answers_the_models_fields_and_a_signed_token() {
        let service = service();
        let body = floating(&service, 1, "c1", noon()).unwrap();
        assert_eq!(body["CheckoutType"], "PROVISIONAL");
        assert_eq!(
            body["EntitlementsAllowed"],
            json!([{ "Name": "Seats", "Unit": "Count", "Value": "1" }])
        );
        assert_eq!(body["NodeId"], "node-1");
        assert_eq!(body["IssuedAt"], "2026-11-23T12:34:56Z");
        assert_eq!(body["Expiration"], "2026-11-23T12:35:26Z");
        assert_eq!(
            body["LicenseArn"],
            LicenseSpec::new("floating-sku").license_arn
        );
        let token = body["SignedToken"].as_str().unwrap();
        assert!(token.len() >= SIGNED_TOKEN_MIN_CHARS, "{}", token.len());
        let part = |index: usize| -> Value {
            serde_json::from_slice(
                &URL_SAFE_NO_PAD
                    .decode(token.split('.').nth(index).unwrap())
                    .unwrap(),
            )
            .unwrap()
        };
        assert_eq!(part(0)["alg"], "PS256");
        assert_eq!(part(0)["kid"], MARKETPLACE_KEY_FINGERPRINT);
        let claims = part(1);
        assert_eq!(claims["license"]["ProductSKU"], "floating-sku");
        assert_eq!(
            claims["checkout"]["LicenseConsumptionToken"],
            body["LicenseConsumptionToken"]
        );
        use aws_lc_rs::signature::{UnparsedPublicKey, RSA_PSS_2048_8192_SHA256};
        let pkcs1 = pem::parse(&service.config.signing_key.public_pkcs1_pem).unwrap();
        let (signed, signature) = token.rsplit_once('.').unwrap();
        UnparsedPublicKey::new(&RSA_PSS_2048_8192_SHA256, pkcs1.contents())
            .verify(
                signed.as_bytes(),
                &URL_SAFE_NO_PAD.decode(signature).unwrap(),
            )
            .expect("signed with the emulator's key");
    }

    #[test]
    fn floating_seats_are_held_until_the_ttl_or_a_check_in() {
        let service = service();
        let first = floating(&service, 1, "a", noon()).unwrap();
        floating(&service, 1, "b", noon()).unwrap();
        assert_eq!(
            error_code(floating(&service, 1, "c", noon())),
            "NoEntitlementsAllowedException"
        );
        let token = &first["LicenseConsumptionToken"];
        assert_eq!(
            code_of(&call(
                &service,
                Operation::CheckInLicense,
                consumption(token),
                noon()
            ))
            .0,
            200
        );
        floating(&service, 1, "d", noon()).expect("a checked-in seat is free at once");
        let later = noon() + TTL;
        floating(&service, 2, "e", later).expect("seats held past their TTL are free");
        let usage = service.licenses().usage(&service.config.licenses, later);
        assert_eq!(usage[0].entitlements[0].in_use, 2);
        let states: Vec<CheckoutState> = usage[0].checkouts.iter().map(|c| c.state).collect();
        assert_eq!(
            states,
            [
                CheckoutState::CheckedIn,
                CheckoutState::Expired,
                CheckoutState::Expired,
                CheckoutState::Held
            ]
        );
    }

    #[test]
    fn extending_keeps_a_seat_and_expired_or_unknown_tokens_are_not_found() {
        let service = service();
        let held = floating(&service, 2, "a", noon()).unwrap();
        let token = &held["LicenseConsumptionToken"];
        let extend = |now: SystemTime| {
            call(
                &service,
                Operation::ExtendLicenseConsumption,
                consumption(token),
                now,
            )
        };
        let almost = noon() + TTL - Duration::from_secs(1);
        let Answer::Json { status: 200, body } = extend(almost) else {
            panic!("expected a new expiration");
        };
        assert_eq!(body["Expiration"], iso8601(almost + TTL));
        assert_eq!(
            error_code(floating(&service, 1, "b", noon() + TTL)),
            "NoEntitlementsAllowedException",
            "still held"
        );
        assert_eq!(
            code_of(&extend(almost + TTL)).1,
            "ResourceNotFoundException",
            "expired"
        );
        let unknown = json!({ "LicenseConsumptionToken": "nope" });
        assert_eq!(
            code_of(&call(
                &service,
                Operation::ExtendLicenseConsumption,
                unknown.clone(),
                noon()
            ))
            .1,
            "ResourceNotFoundException"
        );
        assert_eq!(
            code_of(&call(&service, Operation::CheckInLicense, unknown, noon())).1,
            "ResourceNotFoundException"
        );
        let mut dry = consumption(token);
        dry["DryRun"] = json!(true);
        let fresh = floating(&service, 1, "c", almost + TTL).unwrap();
        dry["LicenseConsumptionToken"] = fresh["LicenseConsumptionToken"].clone();
        assert_eq!(
            code_of(&call(
                &service,
                Operation::ExtendLicenseConsumption,
                dry,
                noon()
            ))
            .1,
            "DryRunOperation"
        );
    }

    #[test]
    fn drawdown_consumes_for_good_and_cannot_be_checked_in() {
        let service = service();
        let storage = |gigabytes: u32, token: &str| {
            checkout_at(
                &service,
                checkout_request(
                    "drawdown-sku",
                    "PERPETUAL",
                    json!([{ "Name": "Storage", "Unit": "Gigabytes", "Value": gigabytes.to_string() }]),
                    token,
                ),
                noon() + Duration::from_secs(86_400),
            )
        };
        let first = storage(60, "a").unwrap();
        assert_eq!(first["CheckoutType"], "PERPETUAL");
        assert_eq!(
            error_code(storage(41, "b")),
            "NoEntitlementsAllowedException"
        );
        storage(40, "c").unwrap();
        let check_in = call(
            &service,
            Operation::CheckInLicense,
            consumption(&first["LicenseConsumptionToken"]),
            noon(),
        );
        assert_eq!(code_of(&check_in).1, "ConflictException");
        let extend = call(
            &service,
            Operation::ExtendLicenseConsumption,
            consumption(&first["LicenseConsumptionToken"]),
            noon(),
        );
        assert_eq!(code_of(&extend).1, "ResourceNotFoundException");
    }

    #[test]
    fn tiers_grant_what_the_license_has() {
        let service = service();
        let tiers = json!([
            { "Name": "Basic", "Unit": "None" },
            { "Name": "Pro", "Unit": "None" },
            { "Name": "Enterprise", "Unit": "None" },
        ]);
        let body = checkout_at(
            &service,
            checkout_request("tiered-sku", "PROVISIONAL", tiers, "t"),
            noon(),
        )
        .unwrap();
        assert_eq!(
            body["EntitlementsAllowed"],
            json!([{ "Name": "Pro", "Unit": "None", "Value": "Enabled" }])
        );
        let none = json!([{ "Name": "Enterprise", "Unit": "None" }]);
        assert_eq!(
            error_code(checkout_at(
                &service,
                checkout_request("tiered-sku", "PROVISIONAL", none, "u"),
                noon()
            )),
            "NoEntitlementsAllowedException"
        );
        let wrong_unit = json!([{ "Name": "Seats", "Unit": "Bits", "Value": "1" }]);
        assert_eq!(
            error_code(checkout_at(
                &service,
                checkout_request("tiered-sku", "PROVISIONAL", wrong_unit, "v"),
                noon()
            )),
            "NoEntitlementsAllowedException"
        );
    }

    #[test]
    fn no_license_and_no_seat_are_the_same_answer() {
        let service = service();
        floating(&service, 2, "all", noon()).unwrap();
        let full = floating(&service, 1, "one-more", noon()).unwrap_err();
        let unknown = checkout_at(
            &service,
            checkout_request("nobody", "PROVISIONAL", seats(1), "x"),
            noon(),
        )
        .unwrap_err();
        let mut other_key = checkout_request("floating-sku", "PROVISIONAL", seats(1), "y");
        other_key["KeyFingerprint"] = json!("aws:111122223333:someone:else");
        let wrong_issuer = checkout_at(&service, other_key, noon()).unwrap_err();
        assert_eq!(full, unknown, "the same code and message");
        assert_eq!(full, wrong_issuer);
    }

    #[test]
    fn another_home_region_redirects_and_an_ended_contract_is_refused() {
        let service = service();
        let Answer::Json { status, body } = call(
            &service,
            Operation::CheckoutLicense,
            checkout_request("west-sku", "PROVISIONAL", seats(1), "r"),
            noon(),
        ) else {
            panic!("expected JSON");
        };
        assert_eq!(
            (status, &body["__type"]),
            (400, &json!("RedirectException"))
        );
        assert_eq!(
            body["Location"],
            "https://license-manager.us-west-2.amazonaws.com"
        );
        let west = AUTH
            .replace("us-east-1", "us-west-2")
            .replace("aws-marketplace", "license-manager");
        let answer = signed_call(
            &service,
            Operation::CheckoutLicense,
            &checkout_request("west-sku", "PROVISIONAL", seats(1), "r"),
            Some(&west),
            noon(),
        );
        assert_eq!(code_of(&answer).0, 200, "signed for the home Region");
        let ended = checkout_at(
            &service,
            checkout_request("ended-sku", "PROVISIONAL", seats(1), "e"),
            noon(),
        );
        assert_eq!(error_code(ended), "NoEntitlementsAllowedException");
    }

    #[test]
    fn client_tokens_replay_the_checkout() {
        let service = service();
        let first = floating(&service, 1, "same", noon()).unwrap();
        let again = floating(&service, 1, "same", noon()).unwrap();
        assert_eq!(first, again);
        assert_eq!(
            service.licenses().usage(&service.config.licenses, noon())[0].entitlements[0].in_use,
            1
        );
        assert_eq!(
            error_code(floating(&service, 2, "same", noon())),
            "ValidationException"
        );
    }

    #[test]
    fn checkout_requests_are_validated_per_the_model() {
        let service = service();
        let valid = checkout_request("floating-sku", "PROVISIONAL", seats(1), "v");
        for (field, value) in [
            ("ProductSKU", Value::Null),
            ("CheckoutType", json!("BORROW")),
            ("KeyFingerprint", Value::Null),
            ("Entitlements", Value::Null),
            ("Entitlements", json!([{ "Name": "Seats" }])),
            ("Entitlements", json!([{ "Unit": "Count" }])),
            ("Entitlements", json!([{ "Name": "Seats", "Unit": "Seat" }])),
            (
                "Entitlements",
                json!([{ "Name": "Seats", "Unit": "Count", "Value": "one" }]),
            ),
            ("ClientToken", Value::Null),
            ("ClientToken", json!("has space")),
            ("NodeId", json!(7)),
        ] {
            let mut body = valid.clone();
            body[field] = value.clone();
            assert_eq!(
                error_code(checkout_at(&service, body, noon())),
                "ValidationException",
                "{field}: {value}"
            );
        }
        let unsigned = signed_call(&service, Operation::CheckoutLicense, &valid, None, noon());
        assert_eq!(code_of(&unsigned).1, "MissingAuthenticationTokenException");
        let metering_scope = signed_call(
            &service,
            Operation::CheckoutLicense,
            &valid,
            Some(AUTH),
            noon(),
        );
        assert_eq!(code_of(&metering_scope).1, "InvalidSignatureException");
    }

    #[test]
    fn get_license_shows_the_license_and_its_status() {
        let service = service();
        let arn = |sku: &str| LicenseSpec::new(sku).license_arn;
        let get = |arn: &str| {
            call(
                &service,
                Operation::GetLicense,
                json!({ "LicenseArn": arn }),
                noon(),
            )
        };
        let Answer::Json { status: 200, body } = get(&arn("floating-sku")) else {
            panic!("expected a license");
        };
        let license = &body["License"];
        assert_eq!(license["Issuer"]["Name"], "AWS/Marketplace");
        assert_eq!(
            license["Issuer"]["KeyFingerprint"],
            MARKETPLACE_KEY_FINGERPRINT
        );
        assert!(license["Issuer"]["SignKey"]
            .as_str()
            .unwrap()
            .starts_with("arn:aws:kms:us-east-1:"));
        assert_eq!(license["HomeRegion"], "us-east-1");
        assert_eq!(license["Status"], "AVAILABLE");
        assert_eq!(license["Validity"]["Begin"], "2025-01-01T00:00:00Z");
        assert_eq!(
            license["Entitlements"][0],
            json!({ "Name": "Seats", "Unit": "Count", "MaxCount": 2, "Overage": false, "AllowCheckIn": true })
        );
        assert_eq!(
            license["ConsumptionConfiguration"]["ProvisionalConfiguration"]
                ["MaxTimeToLiveInMinutes"],
            1
        );
        let Answer::Json { body, .. } = get(&arn("ended-sku")) else {
            panic!()
        };
        assert_eq!(body["License"]["Status"], "EXPIRED");
        assert_eq!(
            code_of(&get("arn:aws:license-manager::1:license:l-unknown")).1,
            "InvalidParameterValueException"
        );
        assert_eq!(code_of(&get("not-an-arn")).1, "ValidationException");
    }

    #[test]
    fn access_tokens_come_from_live_refresh_tokens_unsigned_or_signed() {
        let service = service();
        let token = |refresh: &str, authorization: Option<&str>| {
            signed_call(
                &service,
                Operation::GetAccessToken,
                &json!({ "Token": refresh }),
                authorization,
                noon(),
            )
        };
        let Answer::Json { status: 200, body } = token("refresh-live", None) else {
            panic!("expected an access token");
        };
        let access = body["AccessToken"].as_str().unwrap();
        let lifetime = service.licenses().access_token(access).map(|t| t.expires);
        assert_eq!(lifetime, Some(noon() + Duration::from_secs(3600)));
        let signed = AUTH.replace("aws-marketplace", "license-manager");
        assert_eq!(code_of(&token("refresh-live", Some(&signed))).0, 200);
        assert_eq!(
            code_of(&token("refresh-old", None)).1,
            "AuthorizationException"
        );
        assert_eq!(code_of(&token("forged", None)).1, "AuthorizationException");
        assert_eq!(code_of(&token("", None)).1, "ValidationException");
        let too_many = json!({ "Token": "refresh-live", "TokenProperties": ["a", "b", "c", "d"] });
        assert_eq!(
            code_of(&signed_call(
                &service,
                Operation::GetAccessToken,
                &too_many,
                None,
                noon()
            ))
            .1,
            "ValidationException"
        );
    }

    #[test]
    fn license_manager_faults_and_denials_use_its_codes() {
        let mut config = config().deny(Operation::CheckoutLicense);
        config.faults.throttle_first = 1;
        config.faults.fail_first = 1;
        let service = licensed(config);
        let body = checkout_request("floating-sku", "PROVISIONAL", seats(1), "f");
        let codes: Vec<(u16, String)> = (0..3)
            .map(|_| {
                code_of(&call(
                    &service,
                    Operation::CheckoutLicense,
                    body.clone(),
                    noon(),
                ))
            })
            .collect();
        assert_eq!(
            codes,
            [
                (400, "RateLimitExceededException".into()),
                (500, "ServerInternalException".into()),
                (403, "AccessDeniedException".into()),
            ]
        );
        let Answer::Json { body, .. } = call(&service, Operation::CheckoutLicense, body, noon())
        else {
            panic!()
        };
        assert!(
            body["Message"].is_string(),
            "License Manager's shapes say Message: {body}"
        );
    }

    #[test]
    fn license_faults_answer_what_a_client_must_refuse() {
        let faulty = |fault: LicenseFault| {
            let mut config = config();
            config.faults.license_fault = Some(fault);
            licensed(config)
        };
        let service = faulty(LicenseFault::ExpirationPassed);
        let body = floating(&service, 1, "x", noon()).unwrap();
        assert_eq!(body["IssuedAt"], iso8601(noon()));
        assert_eq!(
            body["Expiration"],
            iso8601(noon() - Duration::from_secs(60))
        );
        assert_eq!(
            service.licenses().usage(&service.config.licenses, noon())[0].entitlements[0].in_use,
            0,
            "a lapsed checkout holds no seat"
        );

        let service = faulty(LicenseFault::FewerUnits);
        let body = floating(&service, 2, "f", noon()).unwrap();
        assert_eq!(body["EntitlementsAllowed"][0]["Value"], "1");
        let usage = service.licenses().usage(&service.config.licenses, noon());
        assert_eq!(usage[0].entitlements[0].in_use, 1);

        let service = faulty(LicenseFault::NegativeUnits);
        let body = floating(&service, 1, "n", noon()).unwrap();
        assert_eq!(body["EntitlementsAllowed"][0]["Value"], "-1");
        let tiers = checkout_at(
            &service,
            checkout_request(
                "tiered-sku",
                "PROVISIONAL",
                json!([{ "Name": "Pro", "Unit": "None" }]),
                "t",
            ),
            noon(),
        )
        .unwrap();
        assert_eq!(
            tiers["EntitlementsAllowed"][0]["Value"], "Enabled",
            "only counted entitlements are spoiled"
        );

        let service = faulty(LicenseFault::OtherProductSku);
        let arn = LicenseSpec::new("floating-sku").license_arn;
        let Answer::Json { status: 200, body } = call(
            &service,
            Operation::GetLicense,
            json!({ "LicenseArn": arn }),
            noon(),
        ) else {
            panic!("expected a license");
        };
        assert_eq!(body["License"]["ProductSKU"], "floating-sku-other");
        assert_eq!(body["License"]["LicenseArn"], arn.as_str());

        let service = faulty(LicenseFault::ExtendWithoutExpiration);
        let held = floating(&service, 1, "e", noon()).unwrap();
        let later = noon() + Duration::from_secs(20);
        let Answer::Json { status: 200, body } = call(
            &service,
            Operation::ExtendLicenseConsumption,
            consumption(&held["LicenseConsumptionToken"]),
            later,
        ) else {
            panic!("expected an extension");
        };
        assert!(body.get("Expiration").is_none(), "{body}");
        assert_eq!(
            service.licenses().usage(
                &service.config.licenses,
                later + TTL - Duration::from_secs(1)
            )[0]
            .entitlements[0]
                .in_use,
            1,
            "extended all the same"
        );
    }

    #[test]
    fn the_service_answers_by_its_own_clock() {
        let mut config = config();
        config.clock_offset_seconds = -2400;
        let service = licensed(config);
        let body = floating(&service, 1, "s", noon()).unwrap();
        let behind = noon() - Duration::from_secs(2400);
        assert_eq!(body["IssuedAt"], iso8601(behind));
        assert_eq!(body["Expiration"], iso8601(behind + TTL));
        assert_eq!(
            service.license_usage(noon())[0].checkouts[0].state,
            CheckoutState::Held
        );
    }
}
