//! The driver thread: advances the wheel and writes what waits.

use std::sync::mpsc;
use std::thread::JoinHandle;

use super::Engine;

impl Engine {
    /// Whether the driver should write: changes wait, or the time moved on
    /// by a second since it was last written (so that after a crash and a
    /// clock set back, the engine's time runs at most a second behind).
    pub(super) fn flush_due(&self) -> bool {
        if !self.inner.durable {
            return false;
        }
        let now = self.now_ms();
        let st = self.inner.state.lock();
        if self.inner.follow.is_some() {
            // Over a shared store the time is not written on its own.
            return st.lazy.iter().any(|c| !super::commit::is_expiry(c));
        }
        !st.lazy.is_empty() || now >= st.clock_written.saturating_add(1000)
    }

    /// Start a thread that calls [`advance`](Self::advance) whenever
    /// something is due, and at least every `max_sleep` (so a clock that
    /// jumps is noticed). It stops when the returned [`Driver`] is stopped
    /// or dropped.
    ///
    /// # Errors
    ///
    /// The operating system's error when the thread cannot be started.
    ///
    /// ```
    /// use grantwheel::Engine;
    /// let engine = Engine::new();
    /// let driver = engine.start_driver(std::time::Duration::from_millis(50))?;
    /// driver.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn start_driver(&self, max_sleep: std::time::Duration) -> std::io::Result<Driver> {
        let (tx, rx) = mpsc::channel::<()>();
        let engine = self.clone();
        let max_sleep = max_sleep.max(std::time::Duration::from_millis(1));
        let handle = std::thread::Builder::new()
            .name("grantwheel-driver".into())
            .spawn(move || loop {
                engine.advance();
                if engine.flush_due() {
                    // Expirations and history updates, and the time: written
                    // now rather than with the next change. A failure is
                    // retried on the next round.
                    let _ = engine.flush();
                }
                let wait = engine
                    .next_wakeup()
                    .map(|t| (t - engine.now()).to_std().unwrap_or_default())
                    .unwrap_or(max_sleep)
                    .clamp(std::time::Duration::from_millis(1), max_sleep);
                match rx.recv_timeout(wait) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            })?;
        Ok(Driver {
            stop: Some(tx),
            handle: Some(handle),
        })
    }
}

/// The background thread started by [`Engine::start_driver`]. Dropping it
/// stops the thread, so keep it for as long as the engine should run by
/// itself.
///
/// Dropping it at once is a warning (an error under
/// `#![deny(unused_must_use)]`):
///
/// ```compile_fail
/// #![deny(unused_must_use)]
/// let engine = grantwheel::Engine::new();
/// engine.start_driver(std::time::Duration::from_millis(10)).unwrap(); // stops at once
/// ```
#[derive(Debug)]
#[must_use = "the driver stops when this handle is dropped; keep it (`let _driver = ...`) for as long as the engine should run"]
pub struct Driver {
    stop: Option<mpsc::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl Driver {
    /// Stop the thread and wait for it to finish.
    pub fn stop(mut self) {
        self.shutdown();
    }

    pub(super) fn shutdown(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.shutdown();
    }
}
