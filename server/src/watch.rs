//! Changes of the shared store's state, logged once each: stale, fresh
//! again, a failure while following (reconnecting) and its end
//! (reconnected), a resync, and the clock's skew crossing the warning and
//! the limit, each with its figure. Per-call lines say what one call met;
//! these say what the instance went through.

use std::time::Duration;

use grantwheel::FeedStatus;

/// How often the feed's state is looked at.
pub const EVERY: Duration = Duration::from_millis(250);

/// How loud a line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loud {
    /// Back to normal.
    Info,
    /// Worth a look.
    Warn,
    /// Checks say no because of it.
    Error,
}

/// The last state seen, to log only changes.
#[derive(Debug, Default)]
pub struct FeedWatch {
    seen: Option<Seen>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    fresh: bool,
    problem: Option<String>,
    resyncs: u64,
    /// 0 within the warning, 1 over it, 2 over the limit.
    skew: u8,
}

impl FeedWatch {
    /// The lines `now` calls for, given what was seen before (none the
    /// first time unless something is already wrong).
    pub fn look(&mut self, now: &FeedStatus) -> Vec<(Loud, String)> {
        let (warn, fail) = now.skew_limits_ms;
        let skew_abs = now.skew_ms.map_or(0, i64::unsigned_abs);
        let skew = match skew_abs {
            s if s > fail => 2,
            s if s > warn => 1,
            _ => 0,
        };
        let seen = Seen {
            fresh: now.fresh,
            problem: now.problem.clone(),
            resyncs: now.resyncs,
            skew,
        };
        let before = self.seen.replace(seen.clone()).unwrap_or(Seen {
            fresh: true,
            problem: None,
            resyncs: now.resyncs,
            skew: 0,
        });
        let mut lines = Vec::new();
        let at = now.position;
        let lag = now.head.map_or(String::new(), |h| {
            format!(", {} change(s) behind", h.saturating_sub(at))
        });
        if before.fresh && !seen.fresh {
            lines.push((
                Loud::Error,
                format!(
                    "stale at feed position {at}{lag}: checks say no until caught up ({})",
                    seen.problem.as_deref().unwrap_or("no catch-up in time")
                ),
            ));
        } else if !before.fresh && seen.fresh {
            lines.push((
                Loud::Info,
                format!("fresh again at feed position {at}: checks answer again"),
            ));
        }
        match (&before.problem, &seen.problem) {
            (None, Some(p)) if seen.fresh => {
                lines.push((
                    Loud::Warn,
                    format!("following the feed failed, reconnecting: {p}"),
                ));
            }
            (Some(_), None) => {
                lines.push((
                    Loud::Info,
                    format!("reconnected: following the feed at position {at}"),
                ));
            }
            _ => {}
        }
        if seen.resyncs > before.resyncs {
            lines.push((
                Loud::Warn,
                format!(
                    "resync: the feed was trimmed past this instance, which took a snapshot at position {at} ({} so far)",
                    seen.resyncs
                ),
            ));
        }
        if seen.skew != before.skew {
            let ms = now.skew_ms.unwrap_or(0);
            lines.push(match seen.skew {
                2 => (
                    Loud::Error,
                    format!("clock skew {ms} ms, over the limit of {fail} ms: checks say no until it is back within"),
                ),
                1 => (
                    Loud::Warn,
                    format!("clock skew {ms} ms, over the warning of {warn} ms (the limit is {fail} ms)"),
                ),
                _ => (Loud::Info, format!("clock skew {ms} ms, back within {warn} ms")),
            });
        }
        lines
    }
}

/// Log `lines` at their loudness.
pub fn log(lines: Vec<(Loud, String)>) {
    for (loud, line) in lines {
        match loud {
            Loud::Info => tracing::info!(target: "grantwheel::feed", "{line}"),
            Loud::Warn => tracing::warn!(target: "grantwheel::feed", "{line}"),
            Loud::Error => tracing::error!(target: "grantwheel::feed", "{line}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(fresh: bool, problem: Option<&str>, resyncs: u64, skew: Option<i64>) -> FeedStatus {
        let mut s = FeedStatus::default();
        s.position = 40;
        s.head = Some(45);
        s.fresh = fresh;
        s.problem = problem.map(str::to_string);
        s.resyncs = resyncs;
        s.skew_ms = skew;
        s.skew_limits_ms = (250, 2000);
        s
    }

    fn louds(lines: &[(Loud, String)]) -> Vec<Loud> {
        lines.iter().map(|(l, _)| *l).collect()
    }

    /// Each change is said once, with its figure; nothing is repeated while
    /// the state stays.
    #[test]
    fn each_change_is_logged_once() {
        let mut w = FeedWatch::default();
        assert!(w.look(&status(true, None, 0, Some(3))).is_empty());
        assert!(w.look(&status(true, None, 0, Some(3))).is_empty());
        let l = w.look(&status(true, Some("connection refused"), 0, Some(3)));
        assert_eq!(louds(&l), [Loud::Warn]);
        assert!(l[0].1.contains("reconnecting: connection refused"));
        assert!(w
            .look(&status(true, Some("connection refused"), 0, Some(3)))
            .is_empty());
        let l = w.look(&status(false, Some("not caught up"), 0, Some(3)));
        assert_eq!(louds(&l), [Loud::Error]);
        assert!(
            l[0].1
                .contains("stale at feed position 40, 5 change(s) behind"),
            "{l:?}"
        );
        assert!(w
            .look(&status(false, Some("not caught up"), 0, Some(3)))
            .is_empty());
        let l = w.look(&status(true, None, 1, Some(3)));
        assert_eq!(louds(&l), [Loud::Info, Loud::Info, Loud::Warn], "{l:?}");
        let l = w.look(&status(true, None, 1, Some(-900)));
        assert_eq!(louds(&l), [Loud::Warn]);
        assert!(l[0].1.contains("-900 ms"));
        let l = w.look(&status(true, None, 1, Some(2500)));
        assert_eq!(louds(&l), [Loud::Error]);
        let l = w.look(&status(true, None, 1, Some(10)));
        assert_eq!(louds(&l), [Loud::Info]);
        assert!(w.look(&status(true, None, 1, Some(12))).is_empty());
    }
}
