//! The metering period: the hour MeterUsage rounds every `Timestamp` down to (shorter only
//! against an emulator, in tests), numbered since the Unix epoch.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::domain::time::{epoch_seconds, rfc3339};

/// How many periods back MeterUsage accepts a `Timestamp`.
pub const WINDOW_PERIODS: u64 = 6;

/// The length of one metering period: an hour against AWS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period(u64);

impl Period {
    pub const HOUR: Period = Period(3600);

    /// A period of whole seconds, at least one.
    pub fn from_duration(duration: Duration) -> Option<Period> {
        (duration.as_secs() >= 1 && duration.subsec_nanos() == 0)
            .then_some(Period(duration.as_secs()))
    }

    pub fn seconds(self) -> u64 {
        self.0
    }

    pub fn duration(self) -> Duration {
        Duration::from_secs(self.0)
    }

    /// The number of the period `time` falls in.
    pub fn index_at(self, time: SystemTime) -> u64 {
        epoch_seconds(time) / self.0
    }

    /// When period `index` starts: MeterUsage's `Timestamp` for it.
    pub fn start(self, index: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(index.saturating_mul(self.0))
    }

    /// After this instant period `index` is about to leave MeterUsage's window, so its unsent
    /// usage is carried into a later period instead: the window's end, less half a period for
    /// the carried usage to be sent in time.
    pub fn carry_after(self, index: u64) -> SystemTime {
        self.start(index) + Duration::from_secs(WINDOW_PERIODS * self.0 - self.0 / 2)
    }

    /// `2026-11-23T10:00:00Z`: a period as operators read it.
    pub fn label(self, index: u64) -> String {
        rfc3339(self.start(index))
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.duration()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_numbered_from_the_epoch_and_rounded_down() {
        let hour = Period::HOUR;
        let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(hour.index_at(at(1_800_000_000)), 500_000);
        assert_eq!(hour.index_at(at(1_800_003_599)), 500_000);
        assert_eq!(hour.index_at(at(1_800_003_600)), 500_001);
        assert_eq!(hour.start(500_000), at(1_800_000_000));
        assert_eq!(hour.label(500_000), "2027-01-15T08:00:00Z");
        // Carried 5.5 hours after the hour began: half an hour before AWS would refuse it.
        assert_eq!(hour.carry_after(500_000), at(1_800_000_000 + 19_800));
    }

    #[test]
    fn only_whole_seconds_make_a_period() {
        assert_eq!(
            Period::from_duration(Duration::from_secs(2))
                .unwrap()
                .seconds(),
            2
        );
        assert!(Period::from_duration(Duration::from_millis(1500)).is_none());
        assert!(Period::from_duration(Duration::ZERO).is_none());
        assert_eq!(Period::HOUR.to_string(), "1h");
    }
}
