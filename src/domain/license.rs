//! Contract pricing through AWS License Manager: what a checkout asks for, and the license it
//! obtained as the app sees it (`license.json` in the handoff directory).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::files::{self, FileError};
use super::handoff;
use super::lease::Lapsed;

/// The issuer every AWS Marketplace license carries: `KeyFingerprint` of CheckoutLicense. Not a
/// placeholder (AWS's seller guide): it selects licenses issued by AWS Marketplace.
pub const MARKETPLACE_KEY_FINGERPRINT: &str = "aws:294406891311:AWS/Marketplace:issuer-fingerprint";

/// The license handed to the app, next to `entitlement.json`.
pub const FILE_NAME: &str = "license.json";

/// The largest `license.json` read back (a SignedToken is a few KiB).
pub const MAX_LICENSE_FILE_BYTES: usize = 64 * 1024;

/// The units of License Manager's model (`EntitlementDataUnit`).
pub const UNITS: &[&str] = &[
    "Count",
    "None",
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
];

/// One entitlement to check out: `NAME[=VALUE][:UNIT]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntitlementRequest {
    pub name: String,
    /// One of [`UNITS`].
    pub unit: String,
    pub value: Option<String>,
}

impl std::str::FromStr for EntitlementRequest {
    type Err = String;

    /// `Tier2` (a tier: Unit None, no value), `ReadOnlyUsers=3` (Count 3) or
    /// `DataConsumption=10:Gigabytes`. The unit defaults to None without a value and to Count
    /// with one.
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (rest, unit) = match text.rsplit_once(':') {
            Some((rest, unit)) => (rest, Some(unit.trim())),
            None => (text, None),
        };
        let (name, value) = match rest.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim())),
            None => (rest.trim(), None),
        };
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err(format!(
                "{text:?} has no entitlement name (NAME[=VALUE][:UNIT], e.g. ReadOnlyUsers=1:Count)"
            ));
        }
        let unit = match unit {
            Some(unit) => UNITS
                .iter()
                .find(|known| known.eq_ignore_ascii_case(unit))
                .copied()
                .ok_or_else(|| {
                    format!("{text:?}: {unit:?} is not a License Manager unit (Count, None, Gigabytes, ...)")
                })?,
            None if value.is_some() => "Count",
            None => "None",
        };
        let value = match value {
            Some("") => return Err(format!("{text:?} has an empty value")),
            Some(value) if unit == "None" => {
                return Err(format!(
                    "{text:?}: an entitlement with unit None (a tier or a feature) takes no value, \
                     here {value:?}"
                ))
            }
            Some(value) if decimal(value).is_none() => {
                return Err(format!(
                    "{text:?}: the value {value:?} is not a number of units (digits, with a \
                     decimal point if need be)"
                ))
            }
            value => value.map(str::to_owned),
        };
        Ok(EntitlementRequest {
            name: name.to_owned(),
            unit: unit.to_owned(),
            value,
        })
    }
}

impl fmt::Display for EntitlementRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(value) = &self.value {
            write!(f, "={value}")?;
        }
        write!(f, ":{}", self.unit)
    }
}

/// How a checkout consumes the license.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CheckoutType {
    /// Floating seats and tiers: held until checked in, or until they expire (an hour) unless
    /// extended.
    Provisional,
    /// Drawdown: consumed for good.
    Perpetual,
}

impl CheckoutType {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckoutType::Provisional => "PROVISIONAL",
            CheckoutType::Perpetual => "PERPETUAL",
        }
    }
}

/// An entitlement the checkout was granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntitlementAllowed {
    pub name: String,
    pub unit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// Whether the checkout is held, and if not why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum LicenseState {
    /// Checked out and current.
    Held,
    /// Checked out, but not confirmed since `since` (epoch seconds): AWS could not be reached.
    Stale { since: u64, reason: String },
    /// No longer licensed: the contract ended, was cancelled, or the seat could not be kept.
    Lost { at: u64, reason: String },
    /// Checked in: the workload stopped.
    Released { at: u64 },
}

/// `license.json`: the checkout as AWS License Manager answered it, for the app.
///
/// Trust comes from the TLS connection to AWS and the SigV4-signed request, not from
/// `signedToken`: AWS publishes no key to verify a Marketplace license's token offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct License {
    pub product_id: String,
    pub license_arn: String,
    pub checkout_type: CheckoutType,
    pub entitlements_allowed: Vec<EntitlementAllowed>,
    /// Epoch seconds, as AWS gave them (`IssuedAt`, `Expiration`).
    pub issued_at: Option<u64>,
    pub expiration: Option<u64>,
    pub consumption_token: String,
    /// Opaque: kept for the app and for support, not verifiable offline.
    pub signed_token: Option<String>,
    pub node_id: Option<String>,
    /// The Region whose License Manager answered.
    pub region: String,
    /// When this process last confirmed the license with AWS (epoch seconds).
    pub confirmed_at: u64,
    #[serde(flatten)]
    pub state: LicenseState,
}

/// A license as GetLicense describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenseStatus {
    /// `ProductSKU`: for AWS Marketplace, the product ID.
    pub product_sku: Option<String>,
    /// AVAILABLE, EXPIRED, DEACTIVATED, SUSPENDED, ...
    pub status: String,
    /// Epoch seconds when the contract ends, if it does.
    pub ends: Option<u64>,
    /// The license's entitlements: name, unit, and `Value` or `MaxCount` if any.
    pub entitlements: Vec<EntitlementAllowed>,
}

/// Why an answer of License Manager is not taken for a grant: it does not match what was asked,
/// has lapsed by AWS's own clock, or names another product's license. AWS never answers so; a
/// proxy, an endpoint that is not AWS's, or a fault does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unverified {
    #[error("it granted no entitlement at all")]
    NothingGranted,
    #[error("it granted {name}, which was not asked for")]
    NotAsked { name: String },
    #[error("it granted {name} in {granted}, not in {asked} as asked")]
    OtherUnit {
        name: String,
        asked: String,
        granted: String,
    },
    #[error("it granted {granted} {unit} of {name}, {}", match asked {
        Some(asked) => format!("fewer than the {asked} asked for"),
        None => "not a positive amount".to_owned(),
    })]
    TooFew {
        name: String,
        unit: String,
        asked: Option<String>,
        granted: String,
    },
    #[error("the checkout had lapsed when it arrived: {0}")]
    Lapsed(#[from] Lapsed),
    #[error("GetLicense describes {license_arn} as a license of product {product_sku}, not {product_id}")]
    OtherProduct {
        license_arn: String,
        product_sku: String,
        product_id: String,
    },
    #[error("GetLicense lists no entitlement {name} in {unit} for {license_arn}")]
    NotInLicense {
        license_arn: String,
        name: String,
        unit: String,
    },
    #[error("GetLicense does not know {license_arn}, the license its checkout named ({error})")]
    UnknownLicense { license_arn: String, error: String },
}

/// Checks a grant against the request: each entitlement granted was asked for, in the unit
/// asked, and a counted one with at least the units asked (a positive amount when none were
/// named). Which asked-for entitlements are missing is [`License::missing`]'s question.
pub fn verify_grant(
    requested: &[EntitlementRequest],
    granted: &[EntitlementAllowed],
) -> Result<(), Unverified> {
    if granted.is_empty() {
        return Err(Unverified::NothingGranted);
    }
    for allowed in granted {
        let wanted = requested
            .iter()
            .find(|wanted| wanted.name == allowed.name)
            .ok_or_else(|| Unverified::NotAsked {
                name: allowed.name.clone(),
            })?;
        if wanted.unit != allowed.unit {
            return Err(Unverified::OtherUnit {
                name: allowed.name.clone(),
                asked: wanted.unit.clone(),
                granted: allowed.unit.clone(),
            });
        }
        if wanted.unit == "None" {
            continue;
        }
        let granted_value = allowed.value.as_deref().unwrap_or("");
        let enough = match &wanted.value {
            Some(asked) => at_least(granted_value, asked),
            None => decimal(granted_value)
                .is_some_and(|(whole, fraction)| !whole.is_empty() || !fraction.is_empty()),
        };
        if !enough {
            return Err(Unverified::TooFew {
                name: allowed.name.clone(),
                unit: allowed.unit.clone(),
                asked: wanted.value.clone(),
                granted: allowed
                    .value
                    .clone()
                    .unwrap_or_else(|| "no value".to_owned()),
            });
        }
    }
    Ok(())
}

/// Checks GetLicense's description of the license a checkout named: this product's, and listing
/// every entitlement granted, in its unit.
pub fn verify_license(
    product_id: &str,
    license_arn: &str,
    status: &LicenseStatus,
    granted: &[EntitlementAllowed],
) -> Result<(), Unverified> {
    if status.product_sku.as_deref() != Some(product_id) {
        return Err(Unverified::OtherProduct {
            license_arn: license_arn.to_owned(),
            product_sku: status
                .product_sku
                .clone()
                .unwrap_or_else(|| "(none named)".to_owned()),
            product_id: product_id.to_owned(),
        });
    }
    for allowed in granted {
        let listed = status.entitlements.iter().any(|entitlement| {
            entitlement.name == allowed.name && entitlement.unit == allowed.unit
        });
        if !listed {
            return Err(Unverified::NotInLicense {
                license_arn: license_arn.to_owned(),
                name: allowed.name.clone(),
                unit: allowed.unit.clone(),
            });
        }
    }
    Ok(())
}

/// Why GetLicense's license cannot be used at `now` (AWS's clock when known), if it cannot: not
/// AVAILABLE, or past the end of its contract.
pub fn unavailable(status: &LicenseStatus, now: u64) -> Option<String> {
    if status.status != "AVAILABLE" {
        return Some(format!("{} (GetLicense)", status.status));
    }
    status.ends.filter(|ends| *ends <= now).map(|ends| {
        format!(
            "past the end of its contract ({})",
            super::time::epoch_text(ends)
        )
    })
}

/// A non-negative decimal as its significant digits: `007.50` is `("7", "5")`.
fn decimal(text: &str) -> Option<(&str, &str)> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    ((!whole.is_empty() || !fraction.is_empty()) && digits(whole) && digits(fraction)).then(|| {
        (
            whole.trim_start_matches('0'),
            fraction.trim_end_matches('0'),
        )
    })
}

/// Whether the decimal `granted` is at least the decimal `asked`, exactly (no floating point).
fn at_least(granted: &str, asked: &str) -> bool {
    match (decimal(granted), decimal(asked)) {
        // Whole parts by length, then digit by digit; fractions digit by digit.
        (Some((granted_whole, granted_fraction)), Some((asked_whole, asked_fraction))) => {
            (granted_whole.len(), granted_whole, granted_fraction)
                >= (asked_whole.len(), asked_whole, asked_fraction)
        }
        _ => false,
    }
}

/// The counted entitlements asked for that were not granted. Tiers and features (unit None) are
/// all listed in one checkout, of which the license grants the one it has.
pub fn missing_counted<'a>(
    requested: &'a [EntitlementRequest],
    granted: &[EntitlementAllowed],
) -> Vec<&'a str> {
    requested
        .iter()
        .filter(|wanted| wanted.unit != "None")
        .filter(|wanted| !granted.iter().any(|allowed| allowed.name == wanted.name))
        .map(|wanted| wanted.name.as_str())
        .collect()
}

/// `license.json` in `dir`.
pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Writes `license.json` into `dir` atomically, readable by the app.
pub fn write(dir: &Path, license: &License) -> io::Result<PathBuf> {
    handoff::write_json(dir, FILE_NAME, license)
}

/// Reads `license.json` from `dir`, bounded in size.
pub fn read(dir: &Path) -> Result<License, FileError> {
    let bytes = files::read_limited(&path_in(dir), MAX_LICENSE_FILE_BYTES)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| FileError::Io(io::Error::new(io::ErrorKind::InvalidData, e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> EntitlementRequest {
        text.parse().unwrap()
    }

    #[test]
    fn entitlements_are_name_value_and_unit() {
        assert_eq!(
            parsed("Tier2"),
            EntitlementRequest {
                name: "Tier2".into(),
                unit: "None".into(),
                value: None
            }
        );
        assert_eq!(
            parsed("ReadOnlyUsers=3"),
            EntitlementRequest {
                name: "ReadOnlyUsers".into(),
                unit: "Count".into(),
                value: Some("3".into())
            }
        );
        let data = parsed(" DataConsumption = 10 : gigabytes ");
        assert_eq!(
            (data.unit.as_str(), data.value.as_deref()),
            ("Gigabytes", Some("10"))
        );
        assert_eq!(parsed("Rate=5:Bytes/Second").unit, "Bytes/Second");
        assert_eq!(parsed("Seats=1:Count").to_string(), "Seats=1:Count");
        assert_eq!(
            parsed("Storage=0.5:Gigabytes").value.as_deref(),
            Some("0.5")
        );
        for bad in [
            "",
            "=3",
            "Seats=",
            "Seats=many",
            "Seats=1:Potatoes",
            "Tier=1:None",
            "Seats=-1",
            "Seats=NaN",
            "Seats=inf",
            "Seats=1e3",
            "Seats=.",
        ] {
            assert!(bad.parse::<EntitlementRequest>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_license_file_round_trips_and_counted_entitlements_not_granted_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let license = License {
            product_id: "prod-1".into(),
            license_arn: "arn:aws:license-manager::294406891311:license:l-1".into(),
            checkout_type: CheckoutType::Provisional,
            entitlements_allowed: vec![EntitlementAllowed {
                name: "Seats".into(),
                unit: "Count".into(),
                value: Some("1".into()),
            }],
            issued_at: Some(1),
            expiration: Some(3601),
            consumption_token: "token".into(),
            signed_token: None,
            node_id: Some("pod-uid".into()),
            region: "us-east-1".into(),
            confirmed_at: 2,
            state: LicenseState::Held,
        };
        write(dir.path(), &license).unwrap();
        let text = std::fs::read_to_string(path_in(dir.path())).unwrap();
        assert!(text.contains("\"state\": \"held\""), "{text}");
        assert_eq!(read(dir.path()).unwrap(), license);
        let requested = [
            parsed("Seats=1:Count"),
            parsed("Admins=1:Count"),
            parsed("Tier2"),
        ];
        assert_eq!(
            missing_counted(&requested, &license.entitlements_allowed),
            vec!["Admins"]
        );
    }

    fn allowed(name: &str, unit: &str, value: Option<&str>) -> EntitlementAllowed {
        EntitlementAllowed {
            name: name.into(),
            unit: unit.into(),
            value: value.map(Into::into),
        }
    }

    #[test]
    fn decimals_compare_exactly() {
        for (granted, asked, enough) in [
            ("1", "1", true),
            ("2", "1", true),
            ("0", "1", false),
            ("-1", "1", false),
            ("10", "9", true),
            ("9", "10", false),
            ("0.5", "0.45", true),
            ("0.45", "0.5", false),
            ("1.50", "1.5", true),
            ("007", "7", true),
            ("100000000000000000000001", "100000000000000000000000", true),
            ("1e3", "1", false),
            ("", "1", false),
            ("NaN", "1", false),
        ] {
            assert_eq!(at_least(granted, asked), enough, "{granted} >= {asked}");
        }
    }

    #[test]
    fn a_grant_must_match_the_request_in_names_units_and_counts() {
        let requested = [
            parsed("Seats=2:Count"),
            parsed("Tier2"),
            parsed("Rate:Count"),
        ];
        let seats = |value: &str| allowed("Seats", "Count", Some(value));
        let tier = allowed("Tier2", "None", Some("Enabled"));
        assert_eq!(
            verify_grant(&requested, &[seats("2"), tier.clone()]),
            Ok(())
        );
        assert_eq!(
            verify_grant(&requested, &[seats("3")]),
            Ok(()),
            "missing is not this check's"
        );
        assert_eq!(
            verify_grant(&requested, &[]),
            Err(Unverified::NothingGranted)
        );
        let refused = |granted: &[EntitlementAllowed]| {
            verify_grant(&requested, granted).unwrap_err().to_string()
        };
        assert_eq!(
            refused(&[seats("1")]),
            "it granted 1 Count of Seats, fewer than the 2 asked for"
        );
        assert_eq!(
            refused(&[seats("-2")]),
            "it granted -2 Count of Seats, fewer than the 2 asked for"
        );
        assert_eq!(
            refused(&[allowed("Seats", "Count", None)]),
            "it granted no value Count of Seats, fewer than the 2 asked for"
        );
        assert_eq!(
            refused(&[allowed("Rate", "Count", Some("0"))]),
            "it granted 0 Count of Rate, not a positive amount"
        );
        assert_eq!(
            refused(&[allowed("Seats", "Bits", Some("2"))]),
            "it granted Seats in Bits, not in Count as asked"
        );
        assert_eq!(
            refused(&[allowed("Admins", "Count", Some("1"))]),
            "it granted Admins, which was not asked for"
        );
    }

    #[test]
    fn the_license_must_be_this_products_and_list_what_was_granted() {
        let status = LicenseStatus {
            product_sku: Some("prod-1".into()),
            status: "AVAILABLE".into(),
            ends: Some(2000),
            entitlements: vec![allowed("Seats", "Count", Some("5"))],
        };
        let granted = [allowed("Seats", "Count", Some("1"))];
        assert_eq!(verify_license("prod-1", "arn", &status, &granted), Ok(()));
        assert_eq!(
            verify_license("prod-2", "arn", &status, &granted)
                .unwrap_err()
                .to_string(),
            "GetLicense describes arn as a license of product prod-1, not prod-2"
        );
        let nameless = LicenseStatus {
            product_sku: None,
            ..status.clone()
        };
        assert!(verify_license("prod-1", "arn", &nameless, &granted).is_err());
        assert_eq!(
            verify_license("prod-1", "arn", &status, &[allowed("Seats", "Bits", None)])
                .unwrap_err()
                .to_string(),
            "GetLicense lists no entitlement Seats in Bits for arn"
        );
        assert_eq!(unavailable(&status, 1999), None);
        assert_eq!(
            unavailable(&status, 2000).as_deref(),
            Some("past the end of its contract (1970-01-01T00:33:20Z)")
        );
        let expired = LicenseStatus {
            status: "EXPIRED".into(),
            ..status
        };
        assert_eq!(
            unavailable(&expired, 0).as_deref(),
            Some("EXPIRED (GetLicense)")
        );
    }
}
