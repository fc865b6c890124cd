//! Contract pricing through AWS License Manager: what a checkout asks for, and the license it
//! obtained as the app sees it (`license.json` in the handoff directory).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::files::{self, FileError};
use super::handoff;

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
            Some(value) if value.parse::<f64>().is_err() => {
                return Err(format!("{text:?}: the value {value:?} is not a number"))
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

impl License {
    /// Whether every requested entitlement named in `requested` came back.
    pub fn missing<'a>(&self, requested: &'a [EntitlementRequest]) -> Vec<&'a str> {
        requested
            .iter()
            .filter(|wanted| {
                !self
                    .entitlements_allowed
                    .iter()
                    .any(|allowed| allowed.name == wanted.name)
            })
            .map(|wanted| wanted.name.as_str())
            .collect()
    }
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
        for bad in [
            "",
            "=3",
            "Seats=",
            "Seats=many",
            "Seats=1:Potatoes",
            "Tier=1:None",
        ] {
            assert!(bad.parse::<EntitlementRequest>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_license_file_round_trips_and_names_what_is_missing() {
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
        let requested = [parsed("Seats=1:Count"), parsed("Admins=1:Count")];
        assert_eq!(license.missing(&requested), vec!["Admins"]);
    }
}
