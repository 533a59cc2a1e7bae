//! The synchronisation the lock-free index is built from, in one place so
//! a model checker can stand in for it: normally the standard atomics and
//! `parking_lot`'s mutex; built with `--cfg grantwheel_loom`, loom's, whose models
//! (`index::loom_models`) explore every interleaving of the index's protocols.

#[cfg(not(grantwheel_loom))]
pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};

#[cfg(grantwheel_loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};

/// A mutex whose `lock` returns the guard.
#[cfg(not(grantwheel_loom))]
pub(crate) use parking_lot::Mutex;

/// A mutex whose `lock` returns the guard (loom's, which returns a
/// `LockResult`, unwrapped: a model's panic fails the model anyway).
#[cfg(grantwheel_loom)]
#[derive(Debug)]
pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

#[cfg(grantwheel_loom)]
impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Mutex(loom::sync::Mutex::new(value))
    }

    #[expect(
        clippy::unwrap_used,
        reason = "a poisoned lock only follows a failed model"
    )]
    pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
        self.0.lock().unwrap()
    }
}

/// A reader waiting for the writer to finish: a hint to the processor, or
/// under loom a yield (so the model lets the writer run).
#[inline(always)]
pub(crate) fn spin_loop() {
    #[cfg(not(grantwheel_loom))]
    std::hint::spin_loop();
    #[cfg(grantwheel_loom)]
    loom::thread::yield_now();
}
