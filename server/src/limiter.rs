//! The seed's rate limit, "25 calls in 5 seconds", as a sliding log.
//!
//! Each access key keeps the instants of its last `max` admitted calls. A
//! call is admitted when fewer than `max` of them fall in the window that
//! ends now; otherwise it is refused until the oldest leaves the window.
//! So no window of `window` ever holds more than `max` admitted calls,
//! which a token bucket with a burst of `max` does not promise (it admits
//! nearly twice as many in the first window).
//!
//! The log is per process: N instances behind a balancer admit up to
//! N x `max` per key. Calls are counted after their key is verified, so
//! calls with a wrong secret cannot spend a key's budget.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hashbrown::HashMap;
use parking_lot::Mutex;

/// A sliding-log limiter over access keys.
#[derive(Debug)]
pub struct Limiter {
    max: usize,
    window: Duration,
    logs: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl Limiter {
    /// At most `max` calls per key in any `window`. `max` of zero refuses
    /// nothing (the limiter is off).
    pub fn new(max: usize, window: Duration) -> Self {
        Limiter {
            max,
            window,
            logs: Mutex::new(HashMap::new()),
        }
    }

    /// The limit: calls, and the window.
    pub fn limit(&self) -> (usize, Duration) {
        (self.max, self.window)
    }

    /// Admit a call of `key` at `now`, or say how long until one would be.
    pub fn admit(&self, key: &str, now: Instant) -> Result<(), Duration> {
        if self.max == 0 {
            return Ok(());
        }
        let mut logs = self.logs.lock();
        let log = match logs.get_mut(key) {
            Some(log) => log,
            None => logs
                .entry(key.to_string())
                .or_insert_with(|| VecDeque::with_capacity(self.max)),
        };
        // INVARIANT: the log holds at most `max` instants, oldest first.
        while log
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.window)
        {
            log.pop_front();
        }
        if log.len() < self.max {
            log.push_back(now);
            return Ok(());
        }
        let oldest = log.front().copied().unwrap_or(now);
        Err(self
            .window
            .saturating_sub(now.saturating_duration_since(oldest)))
    }

    /// Forget keys whose log has left the window entirely (memory stays
    /// bounded by the keys active in the last window).
    pub fn sweep(&self, now: Instant) {
        self.logs.lock().retain(|_, log| {
            log.back()
                .is_some_and(|t| now.saturating_duration_since(*t) < self.window)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_26th_call_in_5_s_waits_for_the_oldest() {
        let l = Limiter::new(25, Duration::from_secs(5));
        let t0 = Instant::now();
        for i in 0..25 {
            assert!(l.admit("a", t0 + Duration::from_millis(i * 10)).is_ok());
        }
        let wait = l.admit("a", t0 + Duration::from_millis(250)).unwrap_err();
        assert_eq!(wait, Duration::from_millis(4750));
        assert!(l.admit("b", t0).is_ok(), "keys do not share a budget");
        assert!(l.admit("a", t0 + Duration::from_secs(5)).is_ok());
        assert!(l.admit("a", t0 + Duration::from_millis(5005)).is_err());
        assert!(Limiter::new(0, Duration::from_secs(5))
            .admit("a", t0)
            .is_ok());
    }

    proptest! {
        /// Against the definition: no window holds more than `max`
        /// admitted calls, and a call is refused only when the window
        /// ending at it already holds `max`.
        #[test]
        fn no_window_holds_more_than_max(gaps in proptest::collection::vec(0u64..400, 1..300), max in 1usize..30) {
            let window = Duration::from_millis(1000);
            let l = Limiter::new(max, window);
            let t0 = Instant::now();
            let mut at = t0;
            let mut admitted: Vec<Instant> = Vec::new();
            for g in gaps {
                at += Duration::from_millis(g);
                let in_window = admitted.iter().filter(|t| at.duration_since(**t) < window).count();
                match l.admit("k", at) {
                    Ok(()) => {
                        prop_assert!(in_window < max);
                        admitted.push(at);
                    }
                    Err(wait) => {
                        prop_assert_eq!(in_window, max);
                        prop_assert!(wait > Duration::ZERO && wait <= window);
                    }
                }
            }
        }
    }
}
