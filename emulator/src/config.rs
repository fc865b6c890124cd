//! What the emulator serves: the Region, keys, products and customers, and the faults to inject.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::{keys, Faults, LicenseSpec, RefreshToken};

/// Who is entitled, what may be metered, and which faults to inject.
#[derive(Debug, Clone)]
pub struct Config {
    /// Region the emulated endpoint lives in; RegisterUsage and MeterUsage calls signed for
    /// another get InvalidRegionException and InvalidEndpointRegionException.
    pub region: String,
    /// Public key versions the service knows; others get InvalidPublicKeyVersionException.
    pub key_versions: BTreeSet<u32>,
    pub signing_key: Arc<keys::RsaKey>,
    /// Product codes with an active subscription.
    pub entitled: BTreeSet<String>,
    /// Known product codes without a subscription (CustomerNotEntitledException); any code in
    /// neither list gets InvalidProductCodeException.
    pub not_entitled: BTreeSet<String>,
    /// Answer with `PublicKeyRotationTimestamp` (epoch seconds), as when a key version expires:
    /// any JSON number, sent as written (`1900000000`, or a hostile `9.3e18` or `1e400`).
    pub rotation_timestamp: Option<JsonNumber>,
    /// Serve the IMDSv2 credential and Region paths, as an EC2 node would.
    pub imds: bool,
    /// The per-account RegisterUsage quota (AWS: 5 per second): a token bucket holding one
    /// second's worth; calls beyond it get ThrottlingException. Off by default; when set it
    /// wins over `quotas[RegisterUsage]`.
    pub quota_per_second: Option<u32>,
    /// Per-operation quotas in calls per second, each a token bucket holding one second's worth
    /// (0 or absent: none). Defaults to AWS's: MeterUsage and BatchMeterUsage 10 per second.
    pub quotas: BTreeMap<Operation, u32>,
    /// The metering period (AWS: one hour): MeterUsage timestamps round down to it, and the
    /// accepted window counts in it. Tests use seconds.
    pub period: Duration,
    /// The product's usage dimensions; MeterUsage for any other gets
    /// InvalidUsageDimensionException. Empty: any name is accepted.
    pub dimensions: BTreeSet<String>,
    /// SaaS customers subscribed to the product, for BatchMeterUsage; records for anyone else
    /// get `CustomerNotSubscribed`. The customers of `registration_tokens` count too.
    pub customers: Vec<Customer>,
    /// What ResolveCustomer resolves; unknown tokens get InvalidTokenException.
    pub registration_tokens: Vec<RegistrationToken>,
    /// The buyer's License Manager licenses (contract pricing).
    pub licenses: Vec<LicenseSpec>,
    /// Refresh tokens GetAccessToken accepts (the Anywhere `license_token`).
    pub refresh_tokens: Vec<RefreshToken>,
    /// How long GetAccessToken's access tokens live (AWS: an hour).
    pub access_token_ttl: Duration,
    /// Role ARNs AssumeRoleWithWebIdentity may assume with such an access token (the Anywhere
    /// `iam_role`); others get AccessDenied.
    pub buyer_roles: BTreeSet<String>,
    /// How long AssumeRoleWithWebIdentity's credentials live when the call names no
    /// DurationSeconds (AWS: an hour).
    pub session_ttl: Duration,
    /// Operations the caller's role may not call: AccessDeniedException (or, for a DryRun,
    /// UnauthorizedException).
    pub denied: BTreeSet<Operation>,
    /// Seconds the service's clock runs ahead of the host's (negative: behind), as when the
    /// caller's clock is off: every time it answers (`IssuedAt`, `Expiration`, token claims)
    /// and every expiry it keeps follows its own clock.
    pub clock_offset_seconds: i64,
    pub faults: Faults,
}

impl Config {
    /// Region `us-east-1`, key version 1, signing with `key`, nothing entitled, hourly periods,
    /// any dimension, everything allowed, no faults.
    pub fn new(key: Arc<keys::RsaKey>) -> Self {
        Self {
            region: "us-east-1".to_owned(),
            key_versions: BTreeSet::from([1]),
            signing_key: key,
            entitled: BTreeSet::new(),
            not_entitled: BTreeSet::new(),
            rotation_timestamp: None,
            imds: false,
            quota_per_second: None,
            quotas: BTreeMap::from([
                (Operation::MeterUsage, 10),
                (Operation::BatchMeterUsage, 10),
            ]),
            period: Duration::from_secs(3600),
            dimensions: BTreeSet::new(),
            customers: Vec::new(),
            registration_tokens: Vec::new(),
            licenses: Vec::new(),
            refresh_tokens: Vec::new(),
            access_token_ttl: Duration::from_secs(3600),
            buyer_roles: BTreeSet::new(),
            session_ttl: Duration::from_secs(3600),
            denied: BTreeSet::new(),
            clock_offset_seconds: 0,
            faults: Faults::default(),
        }
    }

    pub fn entitle(mut self, product_code: &str) -> Self {
        self.entitled.insert(product_code.to_owned());
        self
    }

    pub fn refuse(mut self, product_code: &str) -> Self {
        self.not_entitled.insert(product_code.to_owned());
        self
    }

    pub fn dimension(mut self, name: &str) -> Self {
        self.dimensions.insert(name.to_owned());
        self
    }

    pub fn customer(mut self, customer: Customer) -> Self {
        self.customers.push(customer);
        self
    }

    pub fn registration_token(mut self, token: RegistrationToken) -> Self {
        self.registration_tokens.push(token);
        self
    }

    /// Every subscribed SaaS customer: the configured ones and those of registration tokens.
    pub fn subscribed_customers(&self) -> impl Iterator<Item = &Customer> {
        self.customers.iter().chain(
            self.registration_tokens
                .iter()
                .map(|registration| &registration.customer),
        )
    }

    pub fn license(mut self, license: LicenseSpec) -> Self {
        self.licenses.push(license);
        self
    }

    pub fn refresh_token(mut self, token: RefreshToken) -> Self {
        self.refresh_tokens.push(token);
        self
    }

    pub fn buyer_role(mut self, role_arn: &str) -> Self {
        self.buyer_roles.insert(role_arn.to_owned());
        self
    }

    pub fn deny(mut self, operation: Operation) -> Self {
        self.denied.insert(operation);
        self
    }

    /// The service's clock when the host's reads `host_now`.
    pub fn service_time(&self, host_now: SystemTime) -> SystemTime {
        let offset = Duration::from_secs(self.clock_offset_seconds.unsigned_abs());
        if self.clock_offset_seconds >= 0 {
            host_now + offset
        } else {
            host_now
                .checked_sub(offset)
                .unwrap_or(SystemTime::UNIX_EPOCH)
        }
    }

    /// The quota of `operation` in calls per second, if it has one.
    pub fn quota(&self, operation: Operation) -> Option<u32> {
        let configured = self.quotas.get(&operation).copied();
        match operation {
            Operation::RegisterUsage => self.quota_per_second.or(configured),
            _ => configured,
        }
        .filter(|rate| *rate > 0)
    }
}

/// The operations the emulator serves, as named on the command line (`register-usage`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    RegisterUsage,
    MeterUsage,
    BatchMeterUsage,
    ResolveCustomer,
    CheckoutLicense,
    CheckInLicense,
    ExtendLicenseConsumption,
    GetLicense,
    GetAccessToken,
    AssumeRoleWithWebIdentity,
}

impl Operation {
    pub const ALL: [Operation; 10] = [
        Operation::RegisterUsage,
        Operation::MeterUsage,
        Operation::BatchMeterUsage,
        Operation::ResolveCustomer,
        Operation::CheckoutLicense,
        Operation::CheckInLicense,
        Operation::ExtendLicenseConsumption,
        Operation::GetLicense,
        Operation::GetAccessToken,
        Operation::AssumeRoleWithWebIdentity,
    ];

    /// The name on the wire, as in `X-Amz-Target: AWSMPMeteringService.RegisterUsage` or STS's
    /// `Action=AssumeRoleWithWebIdentity`.
    pub fn name(self) -> &'static str {
        match self {
            Operation::RegisterUsage => "RegisterUsage",
            Operation::MeterUsage => "MeterUsage",
            Operation::BatchMeterUsage => "BatchMeterUsage",
            Operation::ResolveCustomer => "ResolveCustomer",
            Operation::CheckoutLicense => "CheckoutLicense",
            Operation::CheckInLicense => "CheckInLicense",
            Operation::ExtendLicenseConsumption => "ExtendLicenseConsumption",
            Operation::GetLicense => "GetLicense",
            Operation::GetAccessToken => "GetAccessToken",
            Operation::AssumeRoleWithWebIdentity => "AssumeRoleWithWebIdentity",
        }
    }
}

/// A SaaS customer subscribed to the product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    /// The `CustomerIdentifier` ResolveCustomer hands out.
    pub identifier: String,
    /// The buyer's 12-digit AWS account ID, `CustomerAWSAccountId`.
    pub account_id: Option<String>,
}

impl Customer {
    pub fn new(identifier: &str) -> Self {
        Self {
            identifier: identifier.to_owned(),
            account_id: None,
        }
    }

    pub fn account(mut self, account_id: &str) -> Self {
        self.account_id = Some(account_id.to_owned());
        self
    }
}

impl std::str::FromStr for Customer {
    type Err = String;

    /// `ID` or `ID:ACCOUNT_ID`.
    fn from_str(text: &str) -> Result<Self, String> {
        let (identifier, account) = match text.split_once(':') {
            Some((identifier, account)) => (identifier, Some(account)),
            None => (text, None),
        };
        if identifier.is_empty() {
            return Err("a customer needs an identifier".to_owned());
        }
        if let Some(account) =
            account.filter(|a| a.is_empty() || !a.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(format!("{account:?} is not an AWS account ID (digits)"));
        }
        Ok(Self {
            identifier: identifier.to_owned(),
            account_id: account.map(str::to_owned),
        })
    }
}

/// A SaaS registration token, as the buyer's browser posts it to the seller's site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationToken {
    pub token: String,
    pub customer: Customer,
    pub product_code: String,
    pub license_arn: Option<String>,
    /// Resolving it answers ExpiredTokenException.
    pub expired: bool,
}

impl RegistrationToken {
    /// A live token resolving to `customer` and `product_code`.
    pub fn new(token: &str, customer: Customer, product_code: &str) -> Self {
        Self {
            token: token.to_owned(),
            customer,
            product_code: product_code.to_owned(),
            license_arn: None,
            expired: false,
        }
    }

    pub fn license(mut self, license_arn: &str) -> Self {
        self.license_arn = Some(license_arn.to_owned());
        self
    }

    pub fn expired(mut self) -> Self {
        self.expired = true;
        self
    }
}

impl std::str::FromStr for RegistrationToken {
    type Err = String;

    /// `TOKEN=CUSTOMER_ID:ACCOUNT_ID:PRODUCT_CODE[:LICENSE_ARN]` (the token without `=`, the
    /// other fields without `:`; the license ARN may have its own colons).
    fn from_str(text: &str) -> Result<Self, String> {
        let usage = "expected TOKEN=CUSTOMER_ID:ACCOUNT_ID:PRODUCT_CODE[:LICENSE_ARN]";
        let (token, resolved) = text.split_once('=').ok_or(usage)?;
        let mut fields = resolved.splitn(4, ':');
        let (Some(customer), Some(account), Some(product_code)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(usage.to_owned());
        };
        if token.is_empty() || product_code.is_empty() {
            return Err(usage.to_owned());
        }
        Ok(Self {
            token: token.to_owned(),
            customer: format!("{customer}:{account}").parse()?,
            product_code: product_code.to_owned(),
            license_arn: fields.next().map(str::to_owned),
            expired: false,
        })
    }
}

/// A JSON number as the emulator sends it, digit for digit: the grammar of RFC 8259, whatever
/// its size (a value no `f64` or `i64` holds is exactly what a client must survive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonNumber(String);

impl JsonNumber {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<i64> for JsonNumber {
    fn from(number: i64) -> Self {
        JsonNumber(number.to_string())
    }
}

impl std::str::FromStr for JsonNumber {
    type Err = String;

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn from_str(text: &str) -> Result<Self, String> {
        let digits =
            |rest: &str| rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let mut rest = text.strip_prefix('-').unwrap_or(text);
        let integer = digits(rest);
        let valid_integer = integer == 1 || (integer > 1 && !rest.starts_with('0'));
        rest = &rest[integer..];
        let mut valid = valid_integer;
        if let Some(fraction) = rest.strip_prefix('.') {
            let count = digits(fraction);
            valid &= count > 0;
            rest = &fraction[count..];
        }
        if let Some(exponent) = rest.strip_prefix(['e', 'E']) {
            let exponent = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            let count = digits(exponent);
            valid &= count > 0;
            rest = &exponent[count..];
        }
        if valid && rest.is_empty() {
            Ok(JsonNumber(text.to_owned()))
        } else {
            Err(format!("{text:?} is not a JSON number"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_numbers_follow_the_grammar_whatever_their_size() {
        for number in ["0", "-1", "1900000000", "9.3e18", "1e400", "-1E+400", "0.5"] {
            assert_eq!(number.parse::<JsonNumber>().unwrap().as_str(), number);
        }
        for not_a_number in [
            "", "-", "01", "1.", ".5", "1e", "1e+", "0x10", "1 ", "NaN", "inf",
        ] {
            assert!(
                not_a_number.parse::<JsonNumber>().is_err(),
                "{not_a_number:?}"
            );
        }
        assert_eq!(JsonNumber::from(-5).as_str(), "-5");
    }

    #[test]
    fn customers_parse_with_an_optional_account() {
        assert_eq!("c1".parse(), Ok(Customer::new("c1")));
        assert_eq!(
            "c1:111122223333".parse(),
            Ok(Customer::new("c1").account("111122223333"))
        );
        assert!("c1:12ab".parse::<Customer>().is_err());
        assert!("c1:".parse::<Customer>().is_err());
        assert!(":1".parse::<Customer>().is_err());
    }

    #[test]
    fn registration_tokens_parse_with_an_optional_license() {
        let token: RegistrationToken = "tok-1=cust-1:111122223333:prod-saas".parse().unwrap();
        assert_eq!(
            token,
            RegistrationToken::new(
                "tok-1",
                Customer::new("cust-1").account("111122223333"),
                "prod-saas"
            )
        );
        let licensed: RegistrationToken = "tok-2=c:1:p:arn:aws:license-manager::1:license:l-1"
            .parse()
            .unwrap();
        assert_eq!(
            licensed.license_arn.as_deref(),
            Some("arn:aws:license-manager::1:license:l-1")
        );
        for bad in ["tok", "=c:1:p", "tok=c:1", "tok=c:1:", "tok=c:x:p"] {
            assert!(bad.parse::<RegistrationToken>().is_err(), "{bad}");
        }
    }

    #[test]
    fn quotas_default_to_aws_and_register_usage_keeps_its_own_field() {
        let mut config = Config::new(crate::keys::shared_2048());
        assert_eq!(config.quota(Operation::RegisterUsage), None);
        assert_eq!(config.quota(Operation::MeterUsage), Some(10));
        assert_eq!(config.quota(Operation::BatchMeterUsage), Some(10));
        config.quotas.insert(Operation::MeterUsage, 0);
        config.quotas.insert(Operation::RegisterUsage, 2);
        assert_eq!(config.quota(Operation::MeterUsage), None, "0 is off");
        assert_eq!(config.quota(Operation::RegisterUsage), Some(2));
        config.quota_per_second = Some(5);
        assert_eq!(config.quota(Operation::RegisterUsage), Some(5));
    }

    #[test]
    fn the_service_clock_runs_offset_from_the_hosts() {
        let mut config = Config::new(crate::keys::shared_2048());
        let host = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(config.service_time(host), host);
        config.clock_offset_seconds = -2400;
        assert_eq!(
            config.service_time(host),
            host - Duration::from_secs(2400),
            "40 minutes behind: a caller 40 minutes ahead"
        );
        config.clock_offset_seconds = 60;
        assert_eq!(config.service_time(host), host + Duration::from_secs(60));
    }
}
