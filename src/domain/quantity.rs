//! Exact usage quantities: decimal numbers with at most six places (AWS's decimal precision for
//! `UsageQuantityAsDecimal`), held as integer micro-units so that no floating point ever touches
//! money: `0.1 + 0.2` is exactly `0.3`.
//!
//! A quantity is parsed from the text of a JSON number, never from a parsed `f64`.

use std::fmt;

/// Micro-units in one unit: six decimal places.
pub const MICROS_PER_UNIT: u64 = 1_000_000;
/// The decimal places a quantity may carry.
pub const DECIMAL_PLACES: u32 = 6;
/// The longest number text looked at: a longer one is refused before any arithmetic.
const MAX_TEXT_BYTES: usize = 64;

/// A non-negative quantity in micro-units (millionths of a unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Quantity(u64);

/// Why a number is not a quantity; the text says what to send instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("must be a JSON number, not {0}")]
    NotANumber(&'static str),
    #[error("must not be negative")]
    Negative,
    #[error("has more than {DECIMAL_PLACES} decimal places (AWS's precision); round it first")]
    TooPrecise,
    #[error("is over the maximum of {max}")]
    TooLarge { max: Quantity },
    #[error("is not a number this sidecar reads ({0})")]
    Malformed(&'static str),
}

impl Quantity {
    pub const ZERO: Quantity = Quantity(0);

    /// `units` whole units.
    pub const fn from_units(units: u64) -> Quantity {
        Quantity(units * MICROS_PER_UNIT)
    }

    pub const fn from_micros(micros: u64) -> Quantity {
        Quantity(micros)
    }

    pub const fn micros(self) -> u64 {
        self.0
    }

    /// The whole units, rounded down.
    pub const fn whole_units(self) -> u64 {
        self.0 / MICROS_PER_UNIT
    }

    /// What is left after the whole units, in micro-units (below one unit).
    pub const fn fraction_micros(self) -> u64 {
        self.0 % MICROS_PER_UNIT
    }

    pub fn checked_add(self, other: Quantity) -> Option<Quantity> {
        self.0.checked_add(other.0).map(Quantity)
    }

    /// Parses the text of a JSON number (`3`, `0.25`, `2.5e-3`, `1E2`) no larger than `max`.
    /// Exact: the value must be a whole number of micro-units; trailing zeros are fine
    /// (`0.2500000` is `0.25`), a seventh significant decimal place is refused, whatever
    /// exponent spells it. Negative numbers (`-0` included) are refused.
    pub fn parse_json_number(text: &str, max: Quantity) -> Result<Quantity, QuantityError> {
        match text.as_bytes().first() {
            None => return Err(QuantityError::Malformed("empty")),
            Some(b'"') => return Err(QuantityError::NotANumber("a string")),
            Some(b't' | b'f') => return Err(QuantityError::NotANumber("a boolean")),
            Some(b'n') => return Err(QuantityError::NotANumber("null")),
            Some(b'[') => return Err(QuantityError::NotANumber("an array")),
            Some(b'{') => return Err(QuantityError::NotANumber("an object")),
            Some(b'-') => return Err(QuantityError::Negative),
            Some(_) => {}
        }
        if text.len() > MAX_TEXT_BYTES {
            return Err(QuantityError::Malformed("over 64 characters"));
        }
        let (mantissa, exponent) = match text.find(['e', 'E']) {
            Some(at) => (&text[..at], parse_exponent(&text[at + 1..], max)?),
            None => (text, 0),
        };
        let (integer, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let well_formed = !integer.is_empty()
            && integer.bytes().all(|b| b.is_ascii_digit())
            && (integer == "0" || !integer.starts_with('0'))
            && (!mantissa.contains('.') || !fraction.is_empty())
            && fraction.bytes().all(|b| b.is_ascii_digit());
        if !well_formed {
            return Err(QuantityError::Malformed("not JSON number syntax"));
        }
        // The value is digits * 10^-(scale), digits without leading or trailing zeros.
        let digits = format!("{integer}{fraction}");
        let significant = digits.trim_start_matches('0');
        let trimmed = significant.trim_end_matches('0');
        if trimmed.is_empty() {
            return Ok(Quantity::ZERO);
        }
        let scale = fraction.len() as i64 - exponent - (significant.len() - trimmed.len()) as i64;
        let places_over = scale - i64::from(DECIMAL_PLACES);
        if places_over > 0 {
            return Err(QuantityError::TooPrecise);
        }
        let too_large = QuantityError::TooLarge { max };
        // At most 20 digits fit a u64 of micro-units; anything longer is over every maximum.
        if trimmed.len() as i64 - places_over > 20 {
            return Err(too_large);
        }
        let mut micros: u128 = trimmed.parse().map_err(|_| too_large.clone())?;
        for _ in 0..-places_over {
            micros *= 10;
        }
        u64::try_from(micros)
            .ok()
            .map(Quantity)
            .filter(|quantity| *quantity <= max)
            .ok_or(too_large)
    }
}

/// The exponent of a JSON number, bounded: a quantity needs no more than a few dozen.
fn parse_exponent(text: &str, max: Quantity) -> Result<i64, QuantityError> {
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(QuantityError::Malformed("not JSON number syntax"));
    }
    let magnitude: i64 = match digits.trim_start_matches('0') {
        "" => 0,
        significant if significant.len() <= 3 => significant.parse().unwrap_or(i64::MAX),
        _ => i64::MAX,
    };
    if magnitude > 40 {
        return Err(if text.starts_with('-') {
            QuantityError::TooPrecise
        } else {
            QuantityError::TooLarge { max }
        });
    }
    Ok(if text.starts_with('-') {
        -magnitude
    } else {
        magnitude
    })
}

impl fmt::Display for Quantity {
    /// The shortest exact decimal: `3`, `0.25`, `1.000001`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_micros(f, u128::from(self.0), false)
    }
}

/// A signed amount of micro-units, as the ledger reports it: `-0.4`, `12.000001`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Micros(pub i128);

impl fmt::Display for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_micros(f, self.0.unsigned_abs(), self.0 < 0)
    }
}

fn write_micros(f: &mut fmt::Formatter<'_>, micros: u128, negative: bool) -> fmt::Result {
    let per_unit = u128::from(MICROS_PER_UNIT);
    let (units, fraction) = (micros / per_unit, micros % per_unit);
    let sign = if negative { "-" } else { "" };
    if fraction == 0 {
        return write!(f, "{sign}{units}");
    }
    let places = format!("{fraction:06}");
    write!(f, "{sign}{units}.{}", places.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: Quantity = Quantity::from_units(2_147_483_647);

    fn parse(text: &str) -> Result<Quantity, QuantityError> {
        Quantity::parse_json_number(text, MAX)
    }

    #[test]
    fn decimals_are_exact_micro_units() {
        for (text, micros) in [
            ("0", 0),
            ("3", 3_000_000),
            ("0.25", 250_000),
            ("0.1", 100_000),
            ("0.000001", 1),
            ("1.000001", 1_000_001),
            ("0.2500000", 250_000),
            ("2.5e-3", 2_500),
            ("25E-4", 2_500),
            ("1e2", 100_000_000),
            ("1E+2", 100_000_000),
            ("0.0e5", 0),
            ("10.50e1", 105_000_000),
            ("2147483647", 2_147_483_647_000_000),
            ("2147483647.000000", 2_147_483_647_000_000),
        ] {
            assert_eq!(parse(text), Ok(Quantity(micros)), "{text}");
        }
        let sum = parse("0.1").unwrap().micros() + parse("0.2").unwrap().micros();
        assert_eq!(
            Quantity(sum),
            parse("0.3").unwrap(),
            "0.1 + 0.2 is exactly 0.3"
        );
    }

    #[test]
    fn what_would_lose_money_or_hide_precision_is_refused() {
        for (text, expected) in [
            ("0.0000001", QuantityError::TooPrecise),
            ("1.0000005", QuantityError::TooPrecise),
            ("1e-7", QuantityError::TooPrecise),
            ("1.5e-6", QuantityError::TooPrecise),
            ("1e-400", QuantityError::TooPrecise),
            ("-0", QuantityError::Negative),
            ("-0.0", QuantityError::Negative),
            ("-1", QuantityError::Negative),
            ("-1e-9", QuantityError::Negative),
            ("2147483647.000001", QuantityError::TooLarge { max: MAX }),
            ("2147483648", QuantityError::TooLarge { max: MAX }),
            ("1e10", QuantityError::TooLarge { max: MAX }),
            (
                "99999999999999999999999999",
                QuantityError::TooLarge { max: MAX },
            ),
            ("\"3\"", QuantityError::NotANumber("a string")),
            ("true", QuantityError::NotANumber("a boolean")),
            ("null", QuantityError::NotANumber("null")),
            ("[1]", QuantityError::NotANumber("an array")),
        ] {
            assert_eq!(parse(text), Err(expected), "{text}");
        }
        assert!(matches!(
            parse("1e400"),
            Err(QuantityError::TooLarge { .. })
        ));
        for malformed in [
            "", "01", "1.", ".5", "1e", "1e+", "0x10", "1_000", "NaN", "Infinity",
        ] {
            assert!(parse(malformed).is_err(), "{malformed:?}");
        }
        assert!(matches!(
            parse(&format!("1{}", "0".repeat(70))),
            Err(QuantityError::Malformed(_))
        ));
    }

    #[test]
    fn quantities_print_as_the_shortest_exact_decimal() {
        for (micros, text) in [
            (0, "0"),
            (3_000_000, "3"),
            (250_000, "0.25"),
            (1, "0.000001"),
            (1_000_001, "1.000001"),
        ] {
            assert_eq!(Quantity(micros).to_string(), text);
        }
        assert_eq!(Micros(-400_000).to_string(), "-0.4");
        assert_eq!(Micros(12_000_001).to_string(), "12.000001");
        assert_eq!(Quantity(2_500).whole_units(), 0);
        assert_eq!(Quantity(1_250_000).fraction_micros(), 250_000);
    }

    proptest! {
        #[test]
        fn printing_then_parsing_gives_the_same_quantity(micros in 0u64..=MAX.micros()) {
            let quantity = Quantity(micros);
            prop_assert_eq!(parse(&quantity.to_string()), Ok(quantity));
        }

        #[test]
        fn any_spelling_with_an_exponent_means_the_same_value(
            micros in 0u64..=MAX.micros(),
            shift in 0u32..=12,
        ) {
            // micros * 10^shift * 10^-(6 + shift): the same value, written with an exponent.
            let scaled = u128::from(micros) * 10u128.pow(shift);
            let text = format!("{scaled}e-{}", 6 + shift);
            prop_assert_eq!(parse(&text), Ok(Quantity(micros)));
        }
    }
}
