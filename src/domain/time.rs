//! Time as the gate writes and compares it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where time comes from: the system clock in production, a controlled one in tests.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Seconds since the Unix epoch (0 for a clock before it).
pub fn epoch_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The last second RFC 3339 can write (9999-12-31T23:59:59Z).
pub const MAX_RFC3339_SECONDS: u64 = 253_402_300_799;

/// RFC 3339 in UTC: `2026-11-23T10:00:00Z`, with microseconds when there are any; a time RFC
/// 3339 cannot write (before 1970, after 9999) as `epoch second N`. Never fails: times come from
/// the network.
pub fn rfc3339(time: SystemTime) -> String {
    let since = match time.duration_since(UNIX_EPOCH) {
        Ok(since) if since.as_secs() <= MAX_RFC3339_SECONDS => since,
        Ok(since) => return epoch_second(since.as_secs()),
        Err(before) => return epoch_second(-i128::from(before.duration().as_secs())),
    };
    if since.subsec_nanos() == 0 {
        humantime::format_rfc3339_seconds(time).to_string()
    } else {
        humantime::format_rfc3339_micros(time).to_string()
    }
}

/// A number of seconds since the epoch as the network sent it (any size, any sign), as text:
/// RFC 3339 when it is a time RFC 3339 can write, else `epoch second N`.
pub fn epoch_text(secs: impl Into<i128>) -> String {
    let secs = secs.into();
    match u64::try_from(secs) {
        Ok(secs) if secs <= MAX_RFC3339_SECONDS => rfc3339(UNIX_EPOCH + Duration::from_secs(secs)),
        _ => epoch_second(secs),
    }
}

fn epoch_second(secs: impl Into<i128>) -> String {
    format!("epoch second {}", secs.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_whole_seconds_and_microseconds() {
        let second = UNIX_EPOCH + Duration::from_secs(1_800_000_001);
        assert_eq!(rfc3339(second), "2027-01-15T08:00:01Z");
        assert_eq!(
            rfc3339(second + Duration::from_micros(292_528)),
            "2027-01-15T08:00:01.292528Z"
        );
        assert_eq!(epoch_seconds(second), 1_800_000_001);
        assert_eq!(epoch_seconds(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }

    #[test]
    fn times_rfc3339_cannot_write_are_written_as_epoch_seconds() {
        assert_eq!(epoch_text(1_900_000_000_i64), "2030-03-17T17:46:40Z");
        assert_eq!(epoch_text(MAX_RFC3339_SECONDS), "9999-12-31T23:59:59Z");
        assert_eq!(
            epoch_text(MAX_RFC3339_SECONDS + 1),
            "epoch second 253402300800"
        );
        // What a JSON number of 9.3e18 or 1e400 becomes in the SDK, and its negatives.
        assert_eq!(epoch_text(i64::MAX), "epoch second 9223372036854775807");
        assert_eq!(epoch_text(i64::MIN), "epoch second -9223372036854775808");
        assert_eq!(epoch_text(u64::MAX), "epoch second 18446744073709551615");
        assert_eq!(epoch_text(-1_i64), "epoch second -1");
        // The largest SystemTime this platform holds, and one before the epoch.
        let far = UNIX_EPOCH + Duration::from_secs(i64::MAX as u64);
        assert_eq!(rfc3339(far), "epoch second 9223372036854775807");
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(5)),
            "epoch second -5"
        );
    }
}
