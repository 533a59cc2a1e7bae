//! Events: what happened to grants, delivered to the host's subscribers.
//!
//! # Ground rules
//!
//! - Events are produced under the engine's state lock and queued in that
//!   order; they are delivered after the lock is released, by whichever
//!   thread gets the delivery token first, so subscribers see one total
//!   order and never run while the index is locked.
//! - A subscriber may call back into the engine; the events its calls
//!   produce are delivered after the current one, by the same loop.
//! - A subscriber that panics is caught, disabled, and never called again;
//!   the engine and the other subscribers carry on.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::model::grant::Grant;

/// Why a grant was revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RevokeReason {
    /// A revoke call.
    Requested,
    /// A new share for the same (user, entity, context) replaced it.
    Replaced,
}

/// Something that happened to a grant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A new grant is live, or (with a `starts_at` ahead) scheduled.
    Granted(Grant),
    /// A scheduled grant reached its start: checks see it from now on.
    Started(Grant),
    /// A grant's expiry, level or start changed (extended, shortened,
    /// raised by a repeated share, or a scheduled grant moved).
    ExpiryChanged {
        /// The grant as it is now.
        grant: Grant,
        /// Its expiry before the change.
        previous_expiry: DateTime<Utc>,
    },
    /// A grant was revoked.
    Revoked {
        /// The grant as it was.
        grant: Grant,
        /// Why.
        reason: RevokeReason,
    },
    /// A grant reached its expiry and was reclaimed.
    Expired(Grant),
    /// A grant will expire soon (one of the configured warning offsets).
    ExpiringSoon {
        /// The grant.
        grant: Grant,
        /// The warning's instant: the expiry minus the warning offset.
        warned_at: DateTime<Utc>,
    },
}

impl Event {
    /// The grant this event is about.
    pub fn grant(&self) -> &Grant {
        match self {
            Event::Granted(g) | Event::Started(g) | Event::Expired(g) => g,
            Event::ExpiryChanged { grant, .. }
            | Event::Revoked { grant, .. }
            | Event::ExpiringSoon { grant, .. } => grant,
        }
    }
}

/// A subscription, returned by [`Engine::subscribe`](crate::Engine::subscribe)
/// and accepted by [`Engine::unsubscribe`](crate::Engine::unsubscribe).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SubscriptionId(u64);

type Callback = dyn Fn(&Event) + Send + Sync;

struct Subscriber {
    id: u64,
    callback: Box<Callback>,
    disabled: AtomicBool,
}

/// The queue and the subscribers.
#[derive(Default)]
pub(crate) struct Hub {
    subscribers: RwLock<Arc<Vec<Arc<Subscriber>>>>,
    any: AtomicBool,
    next_id: AtomicU64,
    queue: Mutex<VecDeque<Event>>,
    /// Whether the queue may hold events (set under the queue lock).
    pending: AtomicBool,
    /// Expiry and expiring-soon events are dropped, not queued: another
    /// engine on the shared store holds the lease on raising them.
    quiet_expiries: AtomicBool,
    delivering: Mutex<()>,
}

impl Hub {
    /// Whether anyone listens (so events need building at all).
    pub(crate) fn wanted(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    pub(crate) fn subscribe(&self, callback: Box<Callback>) -> SubscriptionId {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut subs = self.subscribers.write();
        let mut next: Vec<_> = subs.iter().cloned().collect();
        next.push(Arc::new(Subscriber {
            id,
            callback,
            disabled: AtomicBool::new(false),
        }));
        *subs = Arc::new(next);
        self.any.store(true, Ordering::Relaxed);
        SubscriptionId(id)
    }

    pub(crate) fn unsubscribe(&self, id: SubscriptionId) -> bool {
        let mut subs = self.subscribers.write();
        let next: Vec<_> = subs.iter().filter(|s| s.id != id.0).cloned().collect();
        let found = next.len() != subs.len();
        self.any.store(!next.is_empty(), Ordering::Relaxed);
        *subs = Arc::new(next);
        found
    }

    /// Queue events; call while holding the state lock so the queue keeps
    /// the order in which the state changed.
    /// Raise expiry and expiring-soon events, or drop them.
    pub(crate) fn quiet_expiries(&self, quiet: bool) {
        self.quiet_expiries.store(quiet, Ordering::Relaxed);
    }

    pub(crate) fn enqueue(&self, events: &mut Vec<Event>) {
        if self.quiet_expiries.load(Ordering::Relaxed) {
            events.retain(|e| !matches!(e, Event::Expired(_) | Event::ExpiringSoon { .. }));
        }
        if !events.is_empty() {
            let mut queue = self.queue.lock();
            queue.extend(events.drain(..));
            self.pending.store(true, Ordering::Relaxed);
        }
    }

    /// Deliver everything queued, unless another call up this thread's
    /// stack or on another thread is delivering (it will pick them up).
    pub(crate) fn deliver(&self) {
        // A change that queued nothing, with nothing left by others: done.
        if !self.pending.load(Ordering::Relaxed) {
            return;
        }
        loop {
            let Some(token) = self.delivering.try_lock() else {
                return;
            };
            loop {
                let batch: Vec<Event> = {
                    let mut queue = self.queue.lock();
                    self.pending.store(false, Ordering::Relaxed);
                    queue.drain(..).collect()
                };
                if batch.is_empty() {
                    break;
                }
                let subs = self.subscribers.read().clone();
                for event in &batch {
                    for sub in subs.iter() {
                        if sub.disabled.load(Ordering::Relaxed) {
                            continue;
                        }
                        let call = catch_unwind(AssertUnwindSafe(|| (sub.callback)(event)));
                        if call.is_err() {
                            sub.disabled.store(true, Ordering::Relaxed);
                        }
                    }
                }
            }
            drop(token);
            // Events queued while the token was being released would be
            // stranded otherwise.
            if self.queue.lock().is_empty() {
                return;
            }
        }
    }
}
