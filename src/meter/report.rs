//! What a local client reports (`POST /v1/usage`), checked against MeterUsage's rules before
//! anything is stored, so nothing invalid is ever recorded, even in part. Quantities are read
//! exactly from the JSON number's text (six decimal places at most), never through `f64`.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::domain::quantity::{Quantity, DECIMAL_PLACES};

/// The largest `UsageQuantity` (and total per dimension and hour) MeterUsage accepts, in whole
/// units.
pub const MAX_QUANTITY: u64 = i32::MAX as u64;
/// The largest quantity one report or one hour of a dimension may hold.
pub const MAX_REPORT_QUANTITY: Quantity = Quantity::from_units(MAX_QUANTITY);
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
    pub quantity: Quantity,
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
    let not_json = |e: serde_json::Error| Invalid(format!("the body is not JSON ({e})"));
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let records: Vec<&RawValue> = match first {
        Some(b'[') => serde_json::from_slice(body).map_err(not_json)?,
        Some(b'{') => vec![serde_json::from_slice(body).map_err(not_json)?],
        _ => {
            serde_json::from_slice::<IgnoredAny>(body).map_err(not_json)?;
            return Err(Invalid(
                "send a record object, or an array of record objects".to_owned(),
            ));
        }
    };
    if records.is_empty() {
        return Err(Invalid("the array holds no records".to_owned()));
    }
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

fn parse_record(record: &RawValue, dimensions: &BTreeSet<String>) -> Result<Report, Invalid> {
    let fields: Fields = serde_json::from_str(record.get())
        .map_err(|_| Invalid("a record must be a JSON object".to_owned()))?;
    if let Some(unknown) = fields.unknown {
        return Err(Invalid(format!(
            "unknown field {unknown:?} (known: dimension, quantity, tags, id)"
        )));
    }
    if let Some(twice) = fields.repeated {
        return Err(Invalid(format!("the field {twice:?} is given twice")));
    }
    let dimension = match fields.dimension.map(string) {
        Some(Some(name)) if dimensions.contains(name.as_ref()) => name.into_owned(),
        Some(Some(name)) => {
            return Err(Invalid(format!(
                "unknown dimension {name:?}; this sidecar meters {}",
                dimensions.iter().cloned().collect::<Vec<_>>().join(", ")
            )))
        }
        _ => return Err(Invalid("\"dimension\" must be a string".to_owned())),
    };
    let quantity = match fields.quantity {
        Some(raw) => Quantity::parse_json_number(raw.get(), MAX_REPORT_QUANTITY)
            .map_err(|e| Invalid(format!("\"quantity\" {e}")))?,
        None => {
            return Err(Invalid(format!(
                "\"quantity\" is missing: send a number >= 0 with at most {DECIMAL_PLACES} decimal \
                 places"
            )))
        }
    };
    let tags = match fields.tags {
        None => Tags::new(),
        Some(raw) if raw.get() == "null" => Tags::new(),
        Some(raw) => {
            let tags: BTreeMap<String, &RawValue> = serde_json::from_str(raw.get())
                .map_err(|_| Invalid("\"tags\" must be an object of string values".to_owned()))?;
            parse_tags(&tags)?
        }
    };
    let id = match fields.id {
        None => None,
        Some(raw) if raw.get() == "null" => None,
        Some(raw) => match string(raw) {
            Some(id) if !id.is_empty() && id.chars().count() <= MAX_ID_CHARS => {
                Some(id.into_owned())
            }
            _ => {
                return Err(Invalid(format!(
                    "\"id\" must be a string of 1 to {MAX_ID_CHARS} characters"
                )))
            }
        },
    };
    Ok(Report {
        dimension,
        quantity,
        tags,
        id,
    })
}

/// A JSON string's text, borrowed when it has no escapes; `None` for anything but a string.
fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) if !inner.contains(['\\', '"']) => Some(Cow::Borrowed(inner)),
        Some(_) => serde_json::from_str::<String>(text).ok().map(Cow::Owned),
        None => None,
    }
}

/// A record's fields, kept as raw JSON until each is checked by its own rule; an unknown or
/// repeated field is noted rather than failing the parse, so the refusal can name it.
#[derive(Default)]
struct Fields<'a> {
    dimension: Option<&'a RawValue>,
    quantity: Option<&'a RawValue>,
    tags: Option<&'a RawValue>,
    id: Option<&'a RawValue>,
    unknown: Option<String>,
    repeated: Option<&'static str>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a record object")
            }

            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Fields<'de>, M::Error> {
                let mut fields = Fields::default();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    let (name, slot) = match key.as_ref() {
                        "dimension" => ("dimension", &mut fields.dimension),
                        "quantity" => ("quantity", &mut fields.quantity),
                        "tags" => ("tags", &mut fields.tags),
                        "id" => ("id", &mut fields.id),
                        other => {
                            fields.unknown.get_or_insert_with(|| other.to_owned());
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    if slot.is_some() {
                        fields.repeated.get_or_insert(name);
                    }
                    *slot = Some(map.next_value()?);
                }
                Ok(fields)
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

fn parse_tags(tags: &BTreeMap<String, &RawValue>) -> Result<Tags, Invalid> {
    if tags.len() > MAX_TAGS {
        return Err(Invalid(format!(
            "{} tags, over MeterUsage's maximum of {MAX_TAGS} per allocation",
            tags.len()
        )));
    }
    let mut checked = Tags::new();
    for (key, value) in tags {
        let Some(value) = string(value) else {
            return Err(Invalid(format!("tag {key:?} must have a string value")));
        };
        check_tag_text("key", key, MAX_TAG_KEY_CHARS)?;
        check_tag_text("value", &value, MAX_TAG_VALUE_CHARS)?;
        checked.insert(key.clone(), value.into_owned());
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
                quantity: Quantity::from_units(3),
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
            (
                r#"{"dimension": "users", "quantity": 0.0000001}"#,
                "more than 6 decimal places",
            ),
            (
                r#"{"dimension": "users", "quantity": 1e-7}"#,
                "more than 6 decimal places",
            ),
            (
                r#"{"dimension": "users", "quantity": -0}"#,
                "must not be negative",
            ),
            (
                r#"{"dimension": "users", "quantity": 1e400}"#,
                "over the maximum",
            ),
            (
                r#"{"dimension": "users", "quantity": "3"}"#,
                "must be a JSON number, not a string",
            ),
            (r#"{"dimension": "users"}"#, "\"quantity\" is missing"),
            (
                r#"{"dimension": "users", "quantity": 1, "quantity": 2}"#,
                "\"quantity\" is given twice",
            ),
            (
                r#"{"dimension": "users", "quantity": 2147483648}"#,
                "over the maximum of 2147483647",
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
