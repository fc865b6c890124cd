//! What a local client reports (`POST /v1/usage`), checked against MeterUsage's rules before
//! anything is stored, so nothing invalid is ever recorded, even in part.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// The largest `UsageQuantity` (and total per dimension and hour) MeterUsage accepts.
pub const MAX_QUANTITY: u64 = i32::MAX as u64;
/// The most `UsageAllocations` one MeterUsage record may carry.
pub const MAX_ALLOCATIONS: usize = 2500;
/// The most tags one allocation may carry.
pub const MAX_TAGS: usize = 5;
/// Tag keys and values: 1-100 and 1-256 characters of the model's pattern.
const MAX_TAG_KEY_CHARS: usize = 100;
const MAX_TAG_VALUE_CHARS: usize = 256;
/// The longest idempotency key a client may attach to a report.
pub const MAX_ID_CHARS: usize = 128;

/// A tag set in canonical form: sorted by key. The empty set is untagged usage.
pub type Tags = BTreeMap<String, String>;

/// One checked report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub dimension: String,
    pub quantity: u64,
    pub tags: Tags,
    /// The client's idempotency key: the same report sent again (after a lost answer) is not
    /// counted twice.
    pub id: Option<String>,
}

/// Why a report was refused; the message names the record and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// Parses a body holding one report object or an array of them (all or none), against the
/// configured `dimensions`.
pub fn parse(body: &[u8], dimensions: &BTreeSet<String>) -> Result<Vec<Report>, Invalid> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| Invalid(format!("the body is not JSON ({e})")))?;
    let records = match value {
        Value::Array(records) if records.is_empty() => {
            return Err(Invalid("the array holds no records".to_owned()))
        }
        Value::Array(records) => records,
        record @ Value::Object(_) => vec![record],
        _ => {
            return Err(Invalid(
                "send a record object, or an array of record objects".to_owned(),
            ))
        }
    };
    let many = records.len() > 1;
    records
        .iter()
        .enumerate()
        .map(|(index, record)| {
            parse_record(record, dimensions).map_err(|Invalid(why)| {
                Invalid(if many {
                    format!("record {index}: {why}")
                } else {
                    why
                })
            })
        })
        .collect()
}

fn parse_record(record: &Value, dimensions: &BTreeSet<String>) -> Result<Report, Invalid> {
    let Value::Object(fields) = record else {
        return Err(Invalid("a record must be a JSON object".to_owned()));
    };
    if let Some(unknown) = fields
        .keys()
        .find(|name| !matches!(name.as_str(), "dimension" | "quantity" | "tags" | "id"))
    {
        return Err(Invalid(format!(
            "unknown field {unknown:?} (known: dimension, quantity, tags, id)"
        )));
    }
    let dimension = match fields.get("dimension") {
        Some(Value::String(name)) if dimensions.contains(name) => name.clone(),
        Some(Value::String(name)) => {
            return Err(Invalid(format!(
                "unknown dimension {name:?}; this sidecar meters {}",
                dimensions.iter().cloned().collect::<Vec<_>>().join(", ")
            )))
        }
        _ => return Err(Invalid("\"dimension\" must be a string".to_owned())),
    };
    let quantity = match fields.get("quantity") {
        Some(Value::Number(number)) => match number.as_u64() {
            Some(quantity) if quantity <= MAX_QUANTITY => quantity,
            Some(_) => {
                return Err(Invalid(format!(
                    "\"quantity\" is over MeterUsage's maximum of {MAX_QUANTITY}"
                )))
            }
            None if number.as_f64().is_some_and(|q| q >= 0.0) => {
                return Err(Invalid(
                    "\"quantity\" must be a whole number: the AWS SDK for Rust cannot send \
                     fractional quantities (UsageQuantityAsDecimal) yet"
                        .to_owned(),
                ))
            }
            None => return Err(Invalid("\"quantity\" must not be negative".to_owned())),
        },
        _ => {
            return Err(Invalid(
                "\"quantity\" must be a whole number >= 0".to_owned(),
            ))
        }
    };
    let tags = match fields.get("tags") {
        None | Some(Value::Null) => Tags::new(),
        Some(Value::Object(tags)) => parse_tags(tags)?,
        Some(_) => {
            return Err(Invalid(
                "\"tags\" must be an object of string values".to_owned(),
            ))
        }
    };
    let id = match fields.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if !id.is_empty() && id.chars().count() <= MAX_ID_CHARS => {
            Some(id.clone())
        }
        Some(_) => {
            return Err(Invalid(format!(
                "\"id\" must be a string of 1 to {MAX_ID_CHARS} characters"
            )))
        }
    };
    Ok(Report {
        dimension,
        quantity,
        tags,
        id,
    })
}

fn parse_tags(tags: &serde_json::Map<String, Value>) -> Result<Tags, Invalid> {
    if tags.len() > MAX_TAGS {
        return Err(Invalid(format!(
            "{} tags, over MeterUsage's maximum of {MAX_TAGS} per allocation",
            tags.len()
        )));
    }
    let mut checked = Tags::new();
    for (key, value) in tags {
        let Value::String(value) = value else {
            return Err(Invalid(format!("tag {key:?} must have a string value")));
        };
        check_tag_text("key", key, MAX_TAG_KEY_CHARS)?;
        check_tag_text("value", value, MAX_TAG_VALUE_CHARS)?;
        checked.insert(key.clone(), value.clone());
    }
    Ok(checked)
}

/// MeterUsage's tag pattern, `^[a-zA-Z0-9+ -=._:\/@]+$`, in which ` -=` is the range from space
/// to `=`.
fn check_tag_text(what: &str, text: &str, max_chars: usize) -> Result<(), Invalid> {
    let allowed = |c: char| {
        c.is_ascii_alphanumeric() || ('\u{20}'..='=').contains(&c) || "+._:/@".contains(c)
    };
    let length = text.chars().count();
    if length == 0 || length > max_chars {
        return Err(Invalid(format!(
            "tag {what} {text:?} must have 1 to {max_chars} characters"
        )));
    }
    if let Some(bad) = text.chars().find(|c| !allowed(*c)) {
        return Err(Invalid(format!(
            "tag {what} {text:?} has {bad:?}; MeterUsage allows letters, digits, space and \
             +-=._:/@ and the characters from space to = (!\"#$%&'()*,;<)"
        )));
    }
    Ok(())
}

/// The canonical storage key of a tag set: `""` for untagged usage, else its sorted JSON.
pub fn tags_key(tags: &Tags) -> String {
    if tags.is_empty() {
        String::new()
    } else {
        serde_json::to_string(tags).expect("a map of strings serialises")
    }
}

/// The tag set of a storage key made by [`tags_key`].
pub fn tags_of(key: &str) -> Tags {
    if key.is_empty() {
        Tags::new()
    } else {
        serde_json::from_str(key).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dimensions() -> BTreeSet<String> {
        ["requests".to_owned(), "users".to_owned()].into()
    }

    fn check(body: &str) -> Result<Vec<Report>, Invalid> {
        parse(body.as_bytes(), &dimensions())
    }

    fn refusal(body: &str) -> String {
        check(body).expect_err(body).0
    }

    #[test]
    fn one_record_or_an_array_all_or_none() {
        let one = check(
            r#"{"dimension": "requests", "quantity": 3, "tags": {"team": "a"}, "id": "r-1"}"#,
        )
        .unwrap();
        assert_eq!(
            one,
            vec![Report {
                dimension: "requests".into(),
                quantity: 3,
                tags: [("team".to_owned(), "a".to_owned())].into(),
                id: Some("r-1".into()),
            }]
        );
        let many = check(r#"[{"dimension": "users", "quantity": 0}, {"dimension": "requests", "quantity": 2147483647}]"#).unwrap();
        assert_eq!(many.len(), 2);
        let why = refusal(
            r#"[{"dimension": "users", "quantity": 1}, {"dimension": "clicks", "quantity": 1}]"#,
        );
        assert!(
            why.starts_with("record 1: unknown dimension \"clicks\""),
            "{why}"
        );
    }

    #[test]
    fn every_rule_of_the_model_is_a_named_refusal() {
        for (body, mention) in [
            ("not json", "not JSON"),
            ("[]", "no records"),
            ("42", "record object"),
            (
                r#"{"dimension": "clicks", "quantity": 1}"#,
                "unknown dimension \"clicks\"; this sidecar meters requests, users",
            ),
            (r#"{"quantity": 1}"#, "\"dimension\" must be a string"),
            (
                r#"{"dimension": "users", "quantity": -1}"#,
                "must not be negative",
            ),
            (r#"{"dimension": "users", "quantity": 1.5}"#, "whole number"),
            (
                r#"{"dimension": "users", "quantity": "3"}"#,
                "whole number >= 0",
            ),
            (r#"{"dimension": "users"}"#, "whole number >= 0"),
            (
                r#"{"dimension": "users", "quantity": 2147483648}"#,
                "maximum of 2147483647",
            ),
            (
                r#"{"dimension": "users", "quantity": 1, "tags": {"a":"1","b":"2","c":"3","d":"4","e":"5","f":"6"}}"#,
                "6 tags",
            ),
            (
                r#"{"dimension": "users", "quantity": 1, "tags": {"team": 7}}"#,
                "string value",
            ),
            (
                r#"{"dimension": "users", "quantity": 1, "tags": {"": "x"}}"#,
                "1 to 100 characters",
            ),
            (
                r#"{"dimension": "users", "quantity": 1, "tags": {"team": ""}}"#,
                "1 to 256 characters",
            ),
            (
                r#"{"dimension": "users", "quantity": 1, "tags": {"team": "a|b"}}"#,
                "'|'",
            ),
            (
                r#"{"dimension": "users", "quantity": 1, "tags": {"tëam": "a"}}"#,
                "'ë'",
            ),
            (
                r#"{"dimension": "users", "quantity": 1, "tags": ["a"]}"#,
                "object of string values",
            ),
            (
                r#"{"dimension": "users", "quantity": 1, "id": ""}"#,
                "\"id\"",
            ),
            (
                r#"{"dimension": "users", "quantity": 1, "extra": true}"#,
                "unknown field \"extra\"",
            ),
        ] {
            let why = refusal(body);
            assert!(why.contains(mention), "{body}: {why:?} lacks {mention:?}");
        }
        let long_key = format!(
            r#"{{"dimension": "users", "quantity": 1, "tags": {{"{}": "x"}}}}"#,
            "k".repeat(101)
        );
        assert!(refusal(&long_key).contains("1 to 100"));
        let long_value = format!(
            r#"{{"dimension": "users", "quantity": 1, "tags": {{"k": "{}"}}}}"#,
            "v".repeat(257)
        );
        assert!(refusal(&long_value).contains("1 to 256"));
    }

    #[test]
    fn the_tag_pattern_is_the_models_including_its_range() {
        for ok in [
            "a-b",
            "x=y",
            "1+2",
            "path/to:x@y.z",
            "with space",
            "#!$%&()*,;<",
            "'\"",
        ] {
            assert!(check_tag_text("value", ok, 256).is_ok(), "{ok}");
        }
        for bad in [">", "?", "[", "|", "~", "\\", "\n"] {
            assert!(check_tag_text("value", bad, 256).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tag_sets_have_one_canonical_key() {
        let tags: Tags = [
            ("b".to_owned(), "2".to_owned()),
            ("a".to_owned(), "1".to_owned()),
        ]
        .into();
        assert_eq!(tags_key(&tags), r#"{"a":"1","b":"2"}"#);
        assert_eq!(tags_of(&tags_key(&tags)), tags);
        assert_eq!(tags_key(&Tags::new()), "");
        assert!(tags_of("").is_empty());
    }
}
