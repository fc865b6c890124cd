//! Contract licenses as AWS License Manager holds them for a Marketplace buyer, the tokens of the
//! Anywhere credential flow, and the usage the emulator reports back.
//!
//! `--licenses FILE` reads [`parse_licenses`]'s JSON:
//!
//! ```json
//! {"licenses": [{
//!   "productSku": "prod-abc123",
//!   "licenseArn": "arn:aws:license-manager::294406891311:license:l-0123", "licenseName": "...",
//!   "productName": "...", "keyFingerprint": "aws:294406891311:AWS/Marketplace:issuer-fingerprint",
//!   "begin": "2026-01-01T00:00:00Z", "end": "2027-01-01T00:00:00Z", "homeRegion": "us-east-1",
//!   "floatingTtlSeconds": 3600,
//!   "entitlements": [
//!     {"name": "Seats", "unit": "Count", "maxCount": 3, "overage": false, "allowCheckIn": true},
//!     {"name": "Enterprise", "unit": "None", "value": "Enabled"}
//!   ]
//! }]}
//! ```
//!
//! Only `productSku` and `entitlements` are required; the rest default as [`LicenseSpec::new`]
//! sets them (the home Region defaults to the emulator's).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The key fingerprint AWS Marketplace licenses carry, which CheckoutLicense must name.
pub const MARKETPLACE_KEY_FINGERPRINT: &str = "aws:294406891311:AWS/Marketplace:issuer-fingerprint";

/// A license granted to the buyer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenseSpec {
    /// CheckoutLicense's `ProductSKU`: for Marketplace, the product ID.
    pub product_sku: String,
    pub license_arn: String,
    pub license_name: String,
    pub product_name: String,
    pub issuer_name: String,
    pub key_fingerprint: String,
    pub begin: SystemTime,
    /// When the contract ends; `None` for no end.
    pub end: Option<SystemTime>,
    /// Where the license lives; checkouts signed for another Region get RedirectException.
    /// `None`: the emulator's own Region.
    pub home_region: Option<String>,
    pub entitlements: Vec<EntitlementSpec>,
    /// How long a PROVISIONAL checkout holds its seats unless extended (AWS: 60 minutes).
    pub floating_ttl: Duration,
}

/// One entitlement of a license.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntitlementSpec {
    pub name: String,
    pub unit: EntitlementUnit,
    /// How many units may be checked out at once (floating) or in all (drawdown); `None` for
    /// `Unit=None` entitlements, which are features or tiers rather than amounts.
    pub max_count: Option<u64>,
    /// A `Unit=None` entitlement's value, such as `Enabled`.
    pub value: Option<String>,
    /// Whether checkouts beyond `max_count` are allowed.
    pub overage: bool,
    /// Whether checked-out units may be checked in again.
    pub allow_check_in: bool,
}

impl LicenseSpec {
    /// A Marketplace license for `product_sku` with no entitlements yet: valid from 2025 with no
    /// end, homed in the emulator's Region, floating seats held 60 minutes.
    pub fn new(product_sku: &str) -> Self {
        Self {
            product_sku: product_sku.to_owned(),
            license_arn: format!(
                "arn:aws:license-manager::294406891311:license:l-{:032x}",
                fingerprint(product_sku)
            ),
            license_name: format!("{product_sku} contract"),
            product_name: product_sku.to_owned(),
            issuer_name: "AWS/Marketplace".to_owned(),
            key_fingerprint: MARKETPLACE_KEY_FINGERPRINT.to_owned(),
            begin: UNIX_EPOCH + Duration::from_secs(1_735_689_600),
            end: None,
            home_region: None,
            entitlements: Vec::new(),
            floating_ttl: Duration::from_secs(60 * 60),
        }
    }

    /// Configurable floating: `seats` units of `name`, checked out PROVISIONAL and returned by
    /// check-in or after the floating TTL.
    pub fn floating(product_sku: &str, name: &str, seats: u64) -> Self {
        Self::new(product_sku).entitlement(EntitlementSpec::counted(
            name,
            EntitlementUnit::Count,
            seats,
        ))
    }

    /// Configurable drawdown: `max` units of `name`, checked out PERPETUAL and consumed for good.
    pub fn drawdown(product_sku: &str, name: &str, unit: EntitlementUnit, max: u64) -> Self {
        let mut entitlement = EntitlementSpec::counted(name, unit, max);
        entitlement.allow_check_in = false;
        Self::new(product_sku).entitlement(entitlement)
    }

    /// Tiered: the buyer's tier as a `Unit=None` entitlement named `tier`.
    pub fn tiered(product_sku: &str, tier: &str) -> Self {
        Self::new(product_sku).entitlement(EntitlementSpec::feature(tier))
    }

    pub fn entitlement(mut self, entitlement: EntitlementSpec) -> Self {
        self.entitlements.push(entitlement);
        self
    }

    pub fn arn(mut self, license_arn: &str) -> Self {
        self.license_arn = license_arn.to_owned();
        self
    }

    pub fn valid(mut self, begin: SystemTime, end: Option<SystemTime>) -> Self {
        self.begin = begin;
        self.end = end;
        self
    }

    pub fn home_region(mut self, region: &str) -> Self {
        self.home_region = Some(region.to_owned());
        self
    }

    pub fn floating_ttl(mut self, ttl: Duration) -> Self {
        self.floating_ttl = ttl;
        self
    }

    /// Whether the contract is in force at `now`.
    pub fn valid_at(&self, now: SystemTime) -> bool {
        self.begin <= now && self.end.is_none_or(|end| now < end)
    }
}

impl EntitlementSpec {
    /// An amount: at most `max` units, no overage, check-in allowed.
    pub fn counted(name: &str, unit: EntitlementUnit, max: u64) -> Self {
        Self {
            name: name.to_owned(),
            unit,
            max_count: Some(max),
            value: None,
            overage: false,
            allow_check_in: true,
        }
    }

    /// A feature or tier: `Unit=None`, value `Enabled`.
    pub fn feature(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            unit: EntitlementUnit::None,
            max_count: None,
            value: Some("Enabled".to_owned()),
            overage: false,
            allow_check_in: true,
        }
    }
}

/// A stable 128-bit value for naming a license after its SKU (FNV-1a).
fn fingerprint(text: &str) -> u128 {
    text.bytes()
        .fold(0x6c62_272e_07bb_0142_62b8_2175_6295_c58d, |hash, byte| {
            (hash ^ u128::from(byte)).wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b)
        })
}

/// The model's entitlement units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntitlementUnit {
    Count,
    None,
    Seconds,
    Microseconds,
    Milliseconds,
    Bytes,
    Kilobytes,
    Megabytes,
    Gigabytes,
    Terabytes,
    Bits,
    Kilobits,
    Megabits,
    Gigabits,
    Terabits,
    Percent,
    #[serde(rename = "Bytes/Second")]
    BytesPerSecond,
    #[serde(rename = "Kilobytes/Second")]
    KilobytesPerSecond,
    #[serde(rename = "Megabytes/Second")]
    MegabytesPerSecond,
    #[serde(rename = "Gigabytes/Second")]
    GigabytesPerSecond,
    #[serde(rename = "Terabytes/Second")]
    TerabytesPerSecond,
    #[serde(rename = "Bits/Second")]
    BitsPerSecond,
    #[serde(rename = "Kilobits/Second")]
    KilobitsPerSecond,
    #[serde(rename = "Megabits/Second")]
    MegabitsPerSecond,
    #[serde(rename = "Gigabits/Second")]
    GigabitsPerSecond,
    #[serde(rename = "Terabits/Second")]
    TerabitsPerSecond,
    #[serde(rename = "Count/Second")]
    CountPerSecond,
}

impl EntitlementUnit {
    /// The name on the wire, as `Count` or `Bytes/Second`.
    pub fn name(self) -> String {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::String(name)) => name,
            _ => unreachable!("units serialize as strings"),
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(name.to_owned())).ok()
    }
}

/// How a checkout consumes its entitlements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CheckoutType {
    /// Floating: held until checked in or until the floating TTL passes.
    Provisional,
    /// Drawdown: consumed for good.
    Perpetual,
}

/// A buyer's License Manager refresh token (`CreateToken`), as the Anywhere secret holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshToken {
    pub token: String,
    /// GetAccessToken with it answers AuthorizationException.
    pub expired: bool,
}

impl RefreshToken {
    pub fn new(token: &str) -> Self {
        Self {
            token: token.to_owned(),
            expired: false,
        }
    }

    pub fn expired(mut self) -> Self {
        self.expired = true;
        self
    }
}

/// A license's seats in use and its checkouts, as `GET /_emulator/licenses` reports them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LicenseUsage {
    pub license_arn: String,
    pub product_sku: String,
    pub entitlements: Vec<EntitlementUsage>,
    pub checkouts: Vec<CheckoutRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntitlementUsage {
    pub name: String,
    pub unit: EntitlementUnit,
    pub max_count: Option<u64>,
    /// Units held by live PROVISIONAL checkouts and drawn down by PERPETUAL ones.
    pub in_use: u64,
}

/// One CheckoutLicense that was granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckoutRecord {
    pub license_consumption_token: String,
    pub checkout_type: CheckoutType,
    pub node_id: Option<String>,
    /// (entitlement name, units) granted; 0 for `Unit=None` entitlements.
    pub entitlements: Vec<(String, u64)>,
    /// Epoch seconds.
    pub issued_at: u64,
    /// Epoch seconds.
    pub expiration: u64,
    pub state: CheckoutState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckoutState {
    /// A PROVISIONAL checkout holding its seats.
    Held,
    /// A PROVISIONAL checkout whose TTL passed: its seats are free again.
    Expired,
    /// A PROVISIONAL checkout returned with CheckInLicense.
    CheckedIn,
    /// A PERPETUAL checkout: its units are consumed for good.
    DrawnDown,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LicenseFile {
    licenses: Vec<LicenseEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LicenseEntry {
    product_sku: String,
    license_arn: Option<String>,
    license_name: Option<String>,
    product_name: Option<String>,
    key_fingerprint: Option<String>,
    begin: Option<String>,
    end: Option<String>,
    home_region: Option<String>,
    floating_ttl_seconds: Option<u64>,
    entitlements: Vec<EntitlementEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EntitlementEntry {
    name: String,
    unit: EntitlementUnit,
    max_count: Option<u64>,
    value: Option<String>,
    #[serde(default)]
    overage: bool,
    #[serde(default = "allowed")]
    allow_check_in: bool,
}

fn allowed() -> bool {
    true
}

/// The licenses of a `--licenses` file (see the module documentation for its form).
pub fn parse_licenses(json: &str) -> Result<Vec<LicenseSpec>, String> {
    let file: LicenseFile =
        serde_json::from_str(json).map_err(|e| format!("the licenses file is not valid: {e}"))?;
    file.licenses
        .into_iter()
        .map(LicenseSpec::try_from)
        .collect()
}

impl TryFrom<LicenseEntry> for LicenseSpec {
    type Error = String;

    fn try_from(entry: LicenseEntry) -> Result<Self, String> {
        let sku = entry.product_sku;
        let mut license = LicenseSpec::new(&sku);
        let time = |text: String| {
            aws_smithy_types::DateTime::from_str(
                &text,
                aws_smithy_types::date_time::Format::DateTime,
            )
            .ok()
            .and_then(|time| SystemTime::try_from(time).ok())
            .ok_or_else(|| {
                format!(
                    "license {sku}: {text:?} is not an ISO 8601 time such as 2026-01-01T00:00:00Z"
                )
            })
        };
        if let Some(begin) = entry.begin {
            license.begin = time(begin)?;
        }
        license.end = entry.end.map(time).transpose()?;
        license.license_arn = entry.license_arn.unwrap_or(license.license_arn);
        license.license_name = entry.license_name.unwrap_or(license.license_name);
        license.product_name = entry.product_name.unwrap_or(license.product_name);
        license.key_fingerprint = entry.key_fingerprint.unwrap_or(license.key_fingerprint);
        license.home_region = entry.home_region;
        if let Some(seconds) = entry.floating_ttl_seconds {
            license.floating_ttl = Duration::from_secs(seconds);
        }
        for entitlement in entry.entitlements {
            let counted = entitlement.unit != EntitlementUnit::None;
            if counted && entitlement.max_count.is_none() {
                return Err(format!(
                    "license {sku}: entitlement {} counts {} and needs a maxCount",
                    entitlement.name,
                    entitlement.unit.name()
                ));
            }
            license.entitlements.push(EntitlementSpec {
                name: entitlement.name,
                unit: entitlement.unit,
                max_count: entitlement.max_count,
                value: entitlement
                    .value
                    .or_else(|| (!counted).then(|| "Enabled".to_owned())),
                overage: entitlement.overage,
                allow_check_in: entitlement.allow_check_in,
            });
        }
        Ok(license)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_use_the_models_names() {
        assert_eq!(EntitlementUnit::Count.name(), "Count");
        assert_eq!(EntitlementUnit::BytesPerSecond.name(), "Bytes/Second");
        assert_eq!(
            EntitlementUnit::parse("Count/Second"),
            Some(EntitlementUnit::CountPerSecond)
        );
        assert_eq!(EntitlementUnit::parse("count"), None);
    }

    #[test]
    fn builders_describe_the_three_marketplace_models() {
        let floating = LicenseSpec::floating("sku", "Seats", 3);
        assert_eq!(floating.entitlements[0].max_count, Some(3));
        assert!(floating.entitlements[0].allow_check_in);
        let drawdown = LicenseSpec::drawdown("sku", "GB", EntitlementUnit::Gigabytes, 100);
        assert!(!drawdown.entitlements[0].allow_check_in);
        let tiered = LicenseSpec::tiered("sku", "Enterprise");
        assert_eq!(tiered.entitlements[0].unit, EntitlementUnit::None);
        assert_eq!(
            tiered.license_arn,
            LicenseSpec::new("sku").license_arn,
            "named after the SKU"
        );
        assert_ne!(tiered.license_arn, LicenseSpec::new("other").license_arn);
        let ended = floating.valid(UNIX_EPOCH, Some(UNIX_EPOCH + Duration::from_secs(10)));
        assert!(ended.valid_at(UNIX_EPOCH + Duration::from_secs(9)));
        assert!(!ended.valid_at(UNIX_EPOCH + Duration::from_secs(10)));
    }

    #[test]
    fn license_files_fill_in_defaults_and_refuse_mistakes() {
        let licenses = parse_licenses(
            r#"{"licenses": [{
                "productSku": "prod-1", "end": "2027-01-01T00:00:00Z", "homeRegion": "eu-west-1",
                "floatingTtlSeconds": 90,
                "entitlements": [
                    {"name": "Seats", "unit": "Count", "maxCount": 3},
                    {"name": "Enterprise", "unit": "None"}
                ]
            }]}"#,
        )
        .unwrap();
        let license = &licenses[0];
        assert_eq!(license.key_fingerprint, MARKETPLACE_KEY_FINGERPRINT);
        assert_eq!(license.home_region.as_deref(), Some("eu-west-1"));
        assert_eq!(license.floating_ttl, Duration::from_secs(90));
        assert_eq!(
            license.end,
            Some(UNIX_EPOCH + Duration::from_secs(1_798_761_600))
        );
        assert!(license.entitlements[0].allow_check_in);
        assert_eq!(license.entitlements[1].value.as_deref(), Some("Enabled"));
        for bad in [
            r#"{"licenses": [{"productSku": "p", "entitlements": [{"name": "S", "unit": "Count"}]}]}"#,
            r#"{"licenses": [{"productSku": "p", "entitlements": [{"name": "S", "unit": "Seats"}]}]}"#,
            r#"{"licenses": [{"productSku": "p", "end": "tomorrow", "entitlements": []}]}"#,
            r#"{"licenses": [{"productSku": "p", "entitlements": [], "colour": "red"}]}"#,
        ] {
            assert!(parse_licenses(bad).is_err(), "{bad}");
        }
    }
}
