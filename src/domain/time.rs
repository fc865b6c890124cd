//! Time as the gate writes and compares it.

use std::time::{SystemTime, UNIX_EPOCH};

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

/// RFC 3339 in UTC: `2026-11-23T10:00:00Z`, with microseconds when there are any.
pub fn rfc3339(time: SystemTime) -> String {
    let whole_second = time
        .duration_since(UNIX_EPOCH)
        .is_ok_and(|since| since.subsec_nanos() == 0);
    if whole_second {
        humantime::format_rfc3339_seconds(time).to_string()
    } else {
        humantime::format_rfc3339_micros(time).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
}
