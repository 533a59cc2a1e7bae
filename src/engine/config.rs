//! The settings an engine runs with, and how a share's expiry is resolved
//! from them.

use std::time::Duration;

use crate::clock::{from_millis, max_millis, to_millis, words};
use crate::error::InvalidArgument;
use crate::model::grant::{Expiry, OverMax, RepeatShare, Start};
use crate::wheel::Tick;

pub(super) struct Config {
    pub(super) follow: FollowSettings,
    pub(super) default_ms: u64,
    pub(super) max_ms: u64,
    pub(super) over_max: OverMax,
    pub(super) repeat: RepeatShare,
    pub(super) timing: Timing,
}

/// The tick and the warning offsets: what turns a grant into its timer.
#[derive(Clone, Debug)]
pub(super) struct Timing {
    pub(super) tick_ms: u64,
    /// Warning offsets, longest first.
    pub(super) warnings: Box<[u64]>,
    /// A grant whose start comes waits to be confirmed ([`DUE`]) instead
    /// of going live.
    ///
    /// [`DUE`]: super::record::DUE
    pub(super) confirm_starts: bool,
}

impl Timing {
    /// The next timer of a grant: the first warning still ahead, else the
    /// expiry. Returns the stage (`warnings.len()` for the expiry) and its
    /// instant.
    pub(super) fn next_timer(&self, expires: u64, now: u64) -> (u8, u64) {
        for (i, w) in self.warnings.iter().enumerate() {
            let at = expires.saturating_sub(*w);
            if at > now {
                return (i as u8, at);
            }
        }
        (self.warnings.len() as u8, expires)
    }

    /// The instant of a grant's timer at `stage`.
    pub(super) fn timer_at(&self, expires: u64, stage: u8) -> u64 {
        match self.warnings.get(usize::from(stage)) {
            Some(w) => expires.saturating_sub(*w),
            None => expires,
        }
    }

    /// The first tick at or after `instant`.
    pub(super) fn tick_of(&self, instant: u64) -> Tick {
        Tick(instant.div_ceil(self.tick_ms))
    }

    /// The tick `instant` falls in (rounded down): the wheel's "now".
    pub(super) fn tick_at(&self, instant: u64) -> Tick {
        Tick(instant / self.tick_ms)
    }

    /// The first instant of tick `t`.
    pub(super) fn start_ms(&self, t: Tick) -> u64 {
        t.0.saturating_mul(self.tick_ms)
    }
}

impl Config {
    /// The start (`None`: now) and the expiry a share asks for, validated:
    /// a start in the past is now, and durations count from the start.
    pub(super) fn window(
        &self,
        now: u64,
        start: Start,
        expiry: Expiry,
    ) -> Result<(Option<u64>, u64), InvalidArgument> {
        match self.start_at(now, start)? {
            None => Ok((None, self.resolve(now, expiry)?)),
            Some(at) => Ok((Some(at), self.resolve_from(at, "the start", expiry)?)),
        }
    }

    /// The instant a start asks for, validated: `None` if it is now or
    /// past.
    pub(super) fn start_at(&self, now: u64, start: Start) -> Result<Option<u64>, InvalidArgument> {
        let (field, at) = match start {
            Start::Now => ("starts_in", Some(now)),
            Start::After(d) => {
                let ms = d.num_milliseconds();
                if ms < 0 {
                    return Err(InvalidArgument::new(
                        "starts_in",
                        format!("`{}` is negative", words(d)),
                    ));
                }
                ("starts_in", now.checked_add(ms.unsigned_abs()))
            }
            Start::At(t) => ("starts_at", Some(to_millis(t))),
        };
        match at {
            Some(at) if at < max_millis() => Ok((at > now).then_some(at)),
            _ => Err(InvalidArgument::new(
                field,
                "the start would fall after the latest representable instant",
            )),
        }
    }

    /// The expiry instant a share starting now asks for, validated.
    pub(super) fn resolve(&self, now: u64, expiry: Expiry) -> Result<u64, InvalidArgument> {
        self.resolve_from(now, "the current time", expiry)
    }

    /// The expiry instant of a window that begins at `from` (named
    /// `from_name` in messages), validated.
    pub(super) fn resolve_from(
        &self,
        now: u64,
        from_name: &str,
        expiry: Expiry,
    ) -> Result<u64, InvalidArgument> {
        let (field, ms) = match expiry {
            Expiry::Default => ("duration", self.default_ms),
            Expiry::After(d) => {
                let ms = d.num_milliseconds();
                if ms <= 0 {
                    return Err(InvalidArgument::new(
                        "duration",
                        format!("`{}` is not at least one millisecond", words(d)),
                    ));
                }
                ("duration", ms.unsigned_abs())
            }
            Expiry::At(t) => {
                let at = to_millis(t);
                if at <= now {
                    return Err(InvalidArgument::new(
                        "expires_at",
                        format!("`{t}` is not after {from_name} `{}`", from_millis(now)),
                    ));
                }
                ("expires_at", at - now)
            }
        };
        self.expiry_after(now, field, ms)
    }

    pub(super) fn expiry_after(
        &self,
        now: u64,
        field: &'static str,
        mut ms: u64,
    ) -> Result<u64, InvalidArgument> {
        if ms > self.max_ms {
            match self.over_max {
                OverMax::Clamp => ms = self.max_ms,
                OverMax::Reject => {
                    return Err(InvalidArgument::new(
                        field,
                        format!(
                            "a duration of `{}` is longer than the maximum of {}",
                            words(ms_duration(ms)),
                            words(ms_duration(self.max_ms))
                        ),
                    ))
                }
            }
        }
        match now.checked_add(ms) {
            Some(at) if at <= max_millis() => Ok(at),
            _ => Err(InvalidArgument::new(
                field,
                "the expiry would fall after the latest representable instant",
            )),
        }
    }
}

/// Milliseconds as a duration, for messages.
fn ms_duration(ms: u64) -> chrono::Duration {
    chrono::Duration::milliseconds(i64::try_from(ms).unwrap_or(i64::MAX))
}

/// How an engine over a shared store follows the feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FollowSettings {
    pub(super) poll: Duration,
    pub(super) max_staleness: Duration,
    pub(super) skew_warn: Duration,
    pub(super) skew_fail: Duration,
    /// Expiry events only while this engine holds the store's lease.
    pub(super) leased_events: bool,
}

impl Default for FollowSettings {
    fn default() -> Self {
        FollowSettings {
            poll: Duration::from_millis(250),
            max_staleness: Duration::from_secs(5),
            skew_warn: Duration::from_millis(250),
            skew_fail: Duration::from_secs(2),
            leased_events: false,
        }
    }
}
