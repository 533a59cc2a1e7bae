//! Time: the injectable clock and the integer instants used inside.
//!
//! At the public API time is `chrono::DateTime<Utc>`. Inside, an instant is
//! a count of milliseconds since the Unix epoch (`u64`, saturating at both
//! ends), so a check compares two integers.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};

/// A source of the current wall-clock time.
///
/// The engine asks its clock for the time on every check and every change.
/// Implement it to drive time from the host (for example from a simulation);
/// the crate ships [`SystemClock`] and [`ManualClock`].
///
/// A clock may go backwards (an NTP step, a test): the engine never lets its
/// own notion of time go back, so an expired grant is never revived.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;

    /// The current instant in milliseconds since the Unix epoch.
    ///
    /// Override it when the clock can answer without building a `DateTime`;
    /// it is called on every check.
    fn now_millis(&self) -> i64 {
        self.now().timestamp_millis()
    }
}

/// The operating system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn now_millis(&self) -> i64 {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => millis_of(d),
            Err(_) => 0,
        }
    }
}

/// Whole milliseconds of `d`, saturating: the value of `as_millis`
/// without its 128-bit division (the system clock is read on every check
/// that finds access).
fn millis_of(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs())
        .ok()
        .and_then(|s| s.checked_mul(1000))
        .and_then(|ms| ms.checked_add(i64::from(d.subsec_millis())))
        .unwrap_or(i64::MAX)
}

/// A clock that only moves when told to: for tests, simulations and
/// examples. Cloning it gives another handle on the same time.
///
/// ```
/// use grantwheel::{Clock, ManualClock};
/// use chrono::{Duration, TimeZone, Utc};
///
/// let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
/// let clock = ManualClock::new(start);
/// clock.advance(Duration::minutes(30));
/// assert_eq!(clock.now(), start + Duration::minutes(30));
/// clock.set(start); // going backwards is allowed
/// assert_eq!(clock.now(), start);
/// ```
#[derive(Clone, Debug)]
pub struct ManualClock {
    millis: std::sync::Arc<AtomicI64>,
}

impl ManualClock {
    /// A clock showing `start` (to the millisecond).
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock {
            millis: std::sync::Arc::new(AtomicI64::new(start.timestamp_millis())),
        }
    }

    /// Set the time, forwards or backwards.
    pub fn set(&self, to: DateTime<Utc>) {
        self.millis.store(to.timestamp_millis(), Ordering::SeqCst);
    }

    /// Move the time by `by` (negative moves it back). Saturates.
    pub fn advance(&self, by: chrono::Duration) {
        let by = by.num_milliseconds();
        let mut cur = self.millis.load(Ordering::SeqCst);
        loop {
            let next = cur.saturating_add(by);
            match self
                .millis
                .compare_exchange(cur, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return,
                Err(seen) => cur = seen,
            }
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        from_millis(to_millis_i64(self.millis.load(Ordering::SeqCst)))
    }

    #[inline]
    fn now_millis(&self) -> i64 {
        self.millis.load(Ordering::Relaxed)
    }
}

/// The latest instant representable at the API (chrono's maximum).
pub(crate) fn max_millis() -> u64 {
    to_millis(DateTime::<Utc>::MAX_UTC)
}

/// Milliseconds since the epoch, clamped to `0..`.
pub(crate) fn to_millis_i64(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0)
}

/// An API instant as internal milliseconds (instants before 1970 become 0).
pub(crate) fn to_millis(t: DateTime<Utc>) -> u64 {
    to_millis_i64(t.timestamp_millis())
}

/// Internal milliseconds as an API instant (clamped to chrono's range).
pub(crate) fn from_millis(ms: u64) -> DateTime<Utc> {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// A duration in words for messages: `90 days`, `1 day 12 hours`,
/// `30 minutes`, `250 milliseconds` (exact: every non-zero unit is named).
pub(crate) fn words(d: chrono::Duration) -> String {
    let ms = d.num_milliseconds();
    let mut left = ms.unsigned_abs();
    let mut parts = Vec::new();
    for (unit, size) in [
        ("day", 86_400_000),
        ("hour", 3_600_000),
        ("minute", 60_000),
        ("second", 1_000),
        ("millisecond", 1),
    ] {
        let n = left / size;
        left %= size;
        if n > 0 {
            parts.push(format!("{n} {unit}{}", if n == 1 { "" } else { "s" }));
        }
    }
    match (ms < 0, parts.is_empty()) {
        (_, true) => "0 milliseconds".to_string(),
        (true, false) => format!("-{}", parts.join(" ")),
        (false, false) => parts.join(" "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_in_words() {
        use chrono::Duration;
        assert_eq!(words(Duration::days(90)), "90 days");
        assert_eq!(words(Duration::hours(36)), "1 day 12 hours");
        assert_eq!(words(Duration::minutes(1)), "1 minute");
        assert_eq!(
            words(Duration::milliseconds(61_001)),
            "1 minute 1 second 1 millisecond"
        );
        assert_eq!(words(Duration::minutes(-5)), "-5 minutes");
        assert_eq!(words(Duration::zero()), "0 milliseconds");
    }
    use chrono::TimeZone;

    #[test]
    fn millis_round_trip_and_clamp() {
        let t = Utc.with_ymd_and_hms(2026, 11, 22, 10, 30, 0).unwrap();
        assert_eq!(from_millis(to_millis(t)), t);
        let before_epoch = Utc.with_ymd_and_hms(1960, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(to_millis(before_epoch), 0);
        assert_eq!(from_millis(u64::MAX), DateTime::<Utc>::MAX_UTC);
    }

    #[test]
    fn manual_clock_moves_both_ways_and_shares_time() {
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let c = ManualClock::new(t);
        let c2 = c.clone();
        c.advance(chrono::Duration::seconds(5));
        assert_eq!(c2.now(), t + chrono::Duration::seconds(5));
        c.advance(chrono::Duration::seconds(-10));
        assert_eq!(c2.now_millis(), t.timestamp_millis() - 5000);
    }

    #[test]
    fn system_clock_millis_are_exact_and_saturate() {
        use std::time::Duration;
        for d in [
            Duration::ZERO,
            Duration::from_nanos(999_999),
            Duration::from_nanos(1_000_000),
            Duration::new(1_764_979_200, 999_999_999),
            Duration::new(i64::MAX as u64 / 1000, 807_999_999),
        ] {
            assert_eq!(millis_of(d) as u128, d.as_millis(), "{d:?}");
        }
        assert_eq!(
            millis_of(Duration::new(i64::MAX as u64 / 1000, 808_000_000)),
            i64::MAX
        );
        assert_eq!(millis_of(Duration::MAX), i64::MAX);
    }

    #[test]
    fn system_clock_agrees_with_chrono() {
        let a = SystemClock.now_millis();
        let b = Utc::now().timestamp_millis();
        assert!((a - b).abs() < 5_000);
    }
}

/// The engine's clock, with the shipped clocks called directly (no dynamic
/// dispatch on the check path).
#[derive(Clone)]
pub(crate) enum ClockSource {
    System,
    Manual(ManualClock),
    Custom(std::sync::Arc<dyn Clock>),
}

impl ClockSource {
    pub(crate) fn new<C: Clock>(clock: C) -> Self {
        let any: &dyn std::any::Any = &clock;
        if let Some(m) = any.downcast_ref::<ManualClock>() {
            ClockSource::Manual(m.clone())
        } else if any.is::<SystemClock>() {
            ClockSource::System
        } else {
            ClockSource::Custom(std::sync::Arc::new(clock))
        }
    }

    #[inline]
    pub(crate) fn now_millis(&self) -> i64 {
        match self {
            ClockSource::System => SystemClock.now_millis(),
            ClockSource::Manual(m) => m.now_millis(),
            ClockSource::Custom(c) => c.now_millis(),
        }
    }
}
