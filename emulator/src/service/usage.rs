//! The usage rules MeterUsage and BatchMeterUsage share: quantities compared by value, usage
//! allocations with their tags, and the timestamp window counted in metering periods.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::{epoch_seconds, ServiceError};

/// How far in the future a timestamp may lie before it is out of bounds: AWS documents no
/// limit, so this allows only ordinary clock skew between the caller and the service.
pub(super) const FUTURE_SKEW: Duration = Duration::from_secs(5 * 60);

/// A usage quantity by value, in millionths (the model's decimals have at most six places), so
/// 17, 17.0 and "17.000000" are the same quantity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity(u64);

impl Quantity {
    const MILLIONTHS: u64 = 1_000_000;

    /// A whole number of units.
    pub fn whole(units: u32) -> Self {
        Self(u64::from(units) * Self::MILLIONTHS)
    }

    /// The quantity in whole units, or `None` when it has a fraction (for ledger checks).
    pub fn whole_units(self) -> Option<u64> {
        (self.0 % Self::MILLIONTHS == 0).then_some(self.0 / Self::MILLIONTHS)
    }

    /// A decimal string as the model allows it: `^(0|[1-9][0-9]{0,9})(\.[0-9]{1,6})?$`.
    pub fn parse_decimal(text: &str) -> Option<Self> {
        let (units, fraction) = text.split_once('.').unwrap_or((text, ""));
        let digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
        let units_ok = units == "0"
            || (!units.starts_with('0') && (1..=10).contains(&units.len()) && digits(units));
        let fraction_ok =
            !text.contains('.') || ((1..=6).contains(&fraction.len()) && digits(fraction));
        if !(units_ok && fraction_ok) {
            return None;
        }
        let millionths: u64 = format!("{fraction:0<6}").parse().ok()?;
        Some(Self(
            units.parse::<u64>().ok()? * Self::MILLIONTHS + millionths,
        ))
    }
}

impl std::fmt::Display for Quantity {
    /// The shortest decimal: `17`, `17.5`, `0.000001`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (units, millionths) = (self.0 / Self::MILLIONTHS, self.0 % Self::MILLIONTHS);
        if millionths == 0 {
            return write!(f, "{units}");
        }
        let fraction = format!("{millionths:06}");
        write!(f, "{units}.{}", fraction.trim_end_matches('0'))
    }
}

impl serde::Serialize for Quantity {
    /// As a decimal string: a JSON number could not carry ten digits and six places exactly.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Whether a quantity came as a whole number or as a decimal string: allocations must use the
/// same kind as the quantity they split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Whole,
    Decimal,
}

/// The members that carry a quantity, whole or decimal.
pub(super) struct QuantityFields {
    pub whole: &'static str,
    pub decimal: &'static str,
}

/// `UsageQuantity` / `UsageQuantityAsDecimal` in MeterUsage.
pub(super) const USAGE_QUANTITY: QuantityFields = QuantityFields {
    whole: "UsageQuantity",
    decimal: "UsageQuantityAsDecimal",
};

const ALLOCATED_QUANTITY: QuantityFields = QuantityFields {
    whole: "AllocatedUsageQuantity",
    decimal: "AllocatedUsageQuantityAsDecimal",
};

fn validation(message: String) -> ServiceError {
    ServiceError::client("ValidationException", message)
}

/// The quantity in `input`, from exactly one of the two fields; absent means 0.
pub(super) fn quantity(
    input: &Value,
    fields: &QuantityFields,
    at: &str,
) -> Result<Option<(Quantity, Kind)>, ServiceError> {
    match (&input[fields.whole], &input[fields.decimal]) {
        (Value::Null, Value::Null) => Ok(None),
        (whole, Value::Null) => whole
            .as_u64()
            .and_then(|units| u32::try_from(units).ok())
            .filter(|units| i32::try_from(*units).is_ok())
            .map(|units| Some((Quantity::whole(units), Kind::Whole)))
            .ok_or_else(|| {
                validation(format!(
                    "{at}{} must be an integer from 0 to 2147483647",
                    fields.whole
                ))
            }),
        (Value::Null, decimal) => decimal
            .as_str()
            .and_then(Quantity::parse_decimal)
            .map(|quantity| Some((quantity, Kind::Decimal)))
            .ok_or_else(|| {
                validation(format!(
                    "{at}{} must be a decimal string such as 17.42 (up to 10 digits and 6 places)",
                    fields.decimal
                ))
            }),
        _ => Err(validation(format!(
            "{at}{} and {} cannot both be set",
            fields.whole, fields.decimal
        ))),
    }
}

/// One bucket of a usage quantity, named by its tags.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Allocation {
    pub quantity: Quantity,
    pub tags: BTreeMap<String, String>,
}

fn invalid_allocations(message: String) -> ServiceError {
    ServiceError::client("InvalidUsageAllocationsException", message)
}

fn invalid_tag(message: String) -> ServiceError {
    ServiceError::client("InvalidTagException", message)
}

/// `UsageAllocations` (absent: none), checked against the quantity they split. Sorted by tags,
/// so two requests listing the same allocations in another order compare equal.
pub(super) fn allocations(
    input: &Value,
    total: Quantity,
    kind: Kind,
    at: &str,
) -> Result<Vec<Allocation>, ServiceError> {
    let list = match &input["UsageAllocations"] {
        Value::Null => return Ok(Vec::new()),
        Value::Array(list) if (1..=2500).contains(&list.len()) => list,
        _ => {
            return Err(invalid_allocations(format!(
                "{at}UsageAllocations must list 1 to 2500 allocations"
            )))
        }
    };
    let mut allocations = Vec::with_capacity(list.len());
    let mut tag_sets = BTreeSet::new();
    for (index, allocation) in list.iter().enumerate() {
        let at = format!("{at}UsageAllocations[{index}].");
        let quantity = match quantity(allocation, &ALLOCATED_QUANTITY, &at)? {
            Some((quantity, allocated_kind)) if allocated_kind == kind => quantity,
            Some(_) => {
                return Err(invalid_allocations(format!(
                    "{at}{} must be used with a {} quantity",
                    if kind == Kind::Whole {
                        ALLOCATED_QUANTITY.whole
                    } else {
                        ALLOCATED_QUANTITY.decimal
                    },
                    if kind == Kind::Whole {
                        "whole"
                    } else {
                        "decimal"
                    },
                )))
            }
            None => {
                return Err(invalid_allocations(format!(
                    "{at}{} or {} is required",
                    ALLOCATED_QUANTITY.whole, ALLOCATED_QUANTITY.decimal
                )))
            }
        };
        let tags = tags(&allocation["Tags"], &at)?;
        if !tag_sets.insert(tags.clone()) {
            return Err(invalid_allocations(format!(
                "{at}Tags: each allocation needs its own set of tags"
            )));
        }
        allocations.push(Allocation { quantity, tags });
    }
    let sum = allocations.iter().try_fold(0u64, |sum, allocation| {
        sum.checked_add(allocation.quantity.0)
    });
    if sum != Some(total.0) {
        return Err(invalid_allocations(format!(
            "{at}UsageAllocations must add up to the usage quantity ({total})"
        )));
    }
    allocations.sort();
    Ok(allocations)
}

/// An allocation's `Tags`: absent (the untagged bucket), or 1 to 5 distinct keys.
fn tags(tags: &Value, at: &str) -> Result<BTreeMap<String, String>, ServiceError> {
    let list = match tags {
        Value::Null => return Ok(BTreeMap::new()),
        Value::Array(list) if (1..=5).contains(&list.len()) => list,
        _ => return Err(invalid_tag(format!("{at}Tags must list 1 to 5 tags"))),
    };
    let mut map = BTreeMap::new();
    for tag in list {
        let (Some(key), Some(value)) = (tag["Key"].as_str(), tag["Value"].as_str()) else {
            return Err(invalid_tag(format!(
                "{at}Tags: each tag needs a Key and a Value"
            )));
        };
        if !(1..=100).contains(&key.chars().count()) || !valid_tag_text(key) {
            return Err(invalid_tag(format!(
                "{at}Tags: key {key:?} must be 1-100 of [a-zA-Z0-9+ -=._:/@]"
            )));
        }
        if !(1..=256).contains(&value.chars().count()) || !valid_tag_text(value) {
            return Err(invalid_tag(format!(
                "{at}Tags: value {value:?} must be 1-256 of [a-zA-Z0-9+ -=._:/@]"
            )));
        }
        if map.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(invalid_tag(format!("{at}Tags: key {key:?} appears twice")));
        }
    }
    Ok(map)
}

/// The model's pattern `^[a-zA-Z0-9+ -=._:\/@]+$`. Read as a regular expression, ` -=` is the
/// range from space to `=`, which also admits `!"#$%&'()*,;<` and the digits: the emulator
/// accepts what the service's validator accepts, not what the pattern seems to say.
fn valid_tag_text(text: &str) -> bool {
    text.chars()
        .all(|c| c.is_ascii_alphanumeric() || (' '..='=').contains(&c) || "._:/@+".contains(c))
}

/// The start of the metering period `timestamp` falls in, as epoch seconds, if the timestamp
/// lies within `periods_back` periods before `now` (and not beyond the skew after it).
pub(super) fn period_start(
    timestamp: &Value,
    at: &str,
    now: SystemTime,
    period: Duration,
    periods_back: u32,
) -> Result<u64, ServiceError> {
    // awsJson1_1 sends timestamps as epoch seconds, possibly with a fraction.
    let seconds = timestamp
        .as_f64()
        .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
        .ok_or_else(|| validation(format!("{at}Timestamp must be epoch seconds")))?;
    // Whole seconds are the granularity of periods; the fraction cannot move a period start.
    let seconds = seconds.floor() as u64;
    let now = epoch_seconds(now);
    let period = period.as_secs().max(1);
    let earliest = now.saturating_sub(period * u64::from(periods_back));
    if seconds < earliest || seconds > now + FUTURE_SKEW.as_secs() {
        return Err(ServiceError::client(
            "TimestampOutOfBoundsException",
            format!(
                "{at}Timestamp {seconds} is outside the accepted window: {periods_back} metering \
                 periods of {period} s before now ({now}) and {} s after",
                FUTURE_SKEW.as_secs()
            ),
        ));
    }
    Ok(seconds - seconds % period)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::service::tests::noon;

    fn code(result: Result<impl std::fmt::Debug, ServiceError>) -> String {
        result.expect_err("expected an error").code
    }

    #[test]
    fn decimal_quantities_follow_the_model_pattern_and_compare_by_value() {
        let parse = Quantity::parse_decimal;
        assert_eq!(parse("17"), Some(Quantity::whole(17)));
        assert_eq!(parse("17.0"), Some(Quantity::whole(17)));
        assert_eq!(parse("17.000000"), Some(Quantity::whole(17)));
        assert_eq!(parse("0"), Some(Quantity::whole(0)));
        assert_eq!(
            parse("9999999999.999999").unwrap().to_string(),
            "9999999999.999999"
        );
        assert_eq!(parse("0.000001").unwrap().to_string(), "0.000001");
        assert_eq!(parse("17.50").unwrap().to_string(), "17.5");
        for bad in [
            "",
            "017",
            "1.",
            ".5",
            "1.1234567",
            "12345678901",
            "-1",
            "1e3",
            "1,5",
            " 1",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_quantity_comes_from_one_field_whole_or_decimal() {
        let read = |input: Value| quantity(&input, &USAGE_QUANTITY, "");
        assert_eq!(read(json!({})).unwrap(), None);
        assert_eq!(
            read(json!({ "UsageQuantity": 2147483647 })).unwrap(),
            Some((Quantity::whole(2147483647), Kind::Whole))
        );
        assert_eq!(
            read(json!({ "UsageQuantityAsDecimal": "17.00" })).unwrap(),
            Some((Quantity::whole(17), Kind::Decimal))
        );
        for bad in [
            json!({ "UsageQuantity": 2147483648u64 }),
            json!({ "UsageQuantity": -1 }),
            json!({ "UsageQuantity": 1.5 }),
            json!({ "UsageQuantity": "1" }),
            json!({ "UsageQuantityAsDecimal": 1 }),
            json!({ "UsageQuantity": 1, "UsageQuantityAsDecimal": "1" }),
        ] {
            assert_eq!(code(read(bad.clone())), "ValidationException", "{bad}");
        }
    }

    fn split(allocations: Value, total: u32) -> Result<Vec<Allocation>, ServiceError> {
        allocations_of(
            json!({ "UsageAllocations": allocations }),
            total,
            Kind::Whole,
        )
    }

    fn allocations_of(
        input: Value,
        total: u32,
        kind: Kind,
    ) -> Result<Vec<Allocation>, ServiceError> {
        allocations(&input, Quantity::whole(total), kind, "")
    }

    fn tag(key: &str, value: &str) -> Value {
        json!({ "Key": key, "Value": value })
    }

    #[test]
    fn allocations_must_add_up_and_use_the_quantitys_kind() {
        let ok = split(
            json!([
                { "AllocatedUsageQuantity": 3, "Tags": [tag("team", "b")] },
                { "AllocatedUsageQuantity": 2 },
                { "AllocatedUsageQuantity": 5, "Tags": [tag("team", "a")] },
            ]),
            10,
        )
        .unwrap();
        assert_eq!(ok.len(), 3);
        assert!(ok.windows(2).all(|pair| pair[0] <= pair[1]), "sorted");
        let cases = [
            (json!([{ "AllocatedUsageQuantity": 3 }]), "does not add up"),
            (json!([]), "empty list"),
            (json!([{ "Tags": [tag("a", "b")] }]), "no quantity"),
            (
                json!([{ "AllocatedUsageQuantityAsDecimal": "10" }]),
                "decimal allocation of a whole quantity",
            ),
            (
                json!([
                    { "AllocatedUsageQuantity": 5, "Tags": [tag("a", "b")] },
                    { "AllocatedUsageQuantity": 5, "Tags": [tag("a", "b")] },
                ]),
                "the same tag set twice",
            ),
            (
                json!([{ "AllocatedUsageQuantity": 5 }, { "AllocatedUsageQuantity": 5 }]),
                "two untagged buckets",
            ),
        ];
        for (allocations, why) in cases {
            assert_eq!(
                code(split(allocations, 10)),
                "InvalidUsageAllocationsException",
                "{why}"
            );
        }
        let too_many: Vec<Value> = (0..2501)
            .map(|i| json!({ "AllocatedUsageQuantity": 0, "Tags": [tag("n", &i.to_string())] }))
            .collect();
        assert_eq!(
            code(split(json!(too_many), 0)),
            "InvalidUsageAllocationsException"
        );
        let decimal = allocations_of(
            json!({ "UsageAllocations": [{ "AllocatedUsageQuantityAsDecimal": "10.0" }] }),
            10,
            Kind::Decimal,
        );
        assert_eq!(decimal.unwrap()[0].quantity, Quantity::whole(10));
    }

    #[test]
    fn tags_follow_the_model_limits_and_pattern() {
        let with_tags =
            |tags: Value| split(json!([{ "AllocatedUsageQuantity": 1, "Tags": tags }]), 1);
        let six: Vec<Value> = (0..6).map(|i| tag(&format!("k{i}"), "v")).collect();
        let bad = [
            json!([]),
            json!(six),
            json!([tag("", "v")]),
            json!([tag("k", "")]),
            json!([tag(&"k".repeat(101), "v")]),
            json!([tag("k", &"v".repeat(257))]),
            json!([tag("k", "semi;colon-is-in-range-but-brace-{")]),
            json!([tag("k^", "v")]),
            json!([tag("k", "v"), tag("k", "w")]),
            json!([{ "Key": "k" }]),
        ];
        for tags in bad {
            assert_eq!(
                code(with_tags(tags.clone())),
                "InvalidTagException",
                "{tags}"
            );
        }
        let good = with_tags(json!([
            tag(&"k".repeat(100), &"v".repeat(256)),
            tag("aws:team name", "a+b=c.d_e:f/g@h"),
            tag("range", "!\"#$%&'()*,;<"),
        ]));
        assert_eq!(good.unwrap()[0].tags.len(), 3);
    }

    #[test]
    fn timestamps_round_down_to_the_period_within_the_window() {
        let now = noon();
        let period = Duration::from_secs(10);
        let at = |seconds: f64| period_start(&json!(seconds), "", now, period, 6);
        let now_s = epoch_seconds(now) as f64;
        assert_eq!(
            at(now_s).unwrap(),
            epoch_seconds(now) - epoch_seconds(now) % 10
        );
        assert_eq!(
            at(now_s - 60.0).unwrap() % 10,
            0,
            "exactly six periods back"
        );
        assert_eq!(code(at(now_s - 61.0)), "TimestampOutOfBoundsException");
        assert!(at(now_s + 300.0).is_ok(), "clock skew");
        assert_eq!(code(at(now_s + 301.0)), "TimestampOutOfBoundsException");
        assert_eq!(
            code(period_start(&json!("now"), "", now, period, 6)),
            "ValidationException"
        );
        let hourly = period_start(
            &json!(now_s - 3.5 * 3600.0),
            "",
            now,
            Duration::from_secs(3600),
            6,
        );
        assert_eq!(hourly.unwrap() % 3600, 0);
    }
}
