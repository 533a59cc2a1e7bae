//! Decisions of the request layer made in the engine's batch, under its
//! lock: the checks a request makes beyond the engine's own (an
//! idempotency key seen before, a grantor's delegation limits) are decided
//! on the same state as the share they guard. Over a shared store that is
//! the state caught up with every write committed before the batch, so two
//! instances deciding at once decide as one engine would in feed order.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;

use crate::clock::from_millis;
use crate::error::ShareError;
use crate::ids::{Context, EntityId, UserId};
use crate::model::grant::{Access, Grant, ShareSpec};
use crate::store::{Change, StoreError};

use super::batch::Changes;
use super::revoke::revoke_context_op;
use super::share::share_op;
use super::state::State;
use super::Engine;

/// What a decision sees and does, in the batch that carries it.
pub(crate) struct Transaction<'a, 'b> {
    st: &'a mut State,
    ch: &'a mut Changes<'b>,
    now: u64,
}

impl Transaction<'_, '_> {
    /// The engine's time for this batch.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        from_millis(self.now)
    }

    /// A pair's access now, as this batch finds it (what earlier items of
    /// the batch wrote is still hidden, so it is never counted).
    pub(crate) fn access(&self, user: &UserId, entity: &EntityId) -> Option<Access> {
        super::access_at(self.ch.reader, user, entity, self.now)
    }

    /// The duration of a share that names none.
    pub(crate) fn default_duration(&self) -> chrono::Duration {
        chrono::Duration::milliseconds(i64::try_from(self.ch.cfg.default_ms).unwrap_or(i64::MAX))
    }

    /// A new automation rule id, unique among every engine on the store
    /// (numbered after every rule written before the batch).
    pub(crate) fn next_rule_id(&mut self) -> u64 {
        self.st.max_rule += 1;
        self.st.max_rule
    }

    /// Make a share in this batch.
    pub(crate) fn share(&mut self, spec: &ShareSpec) -> Result<Grant, ShareError> {
        share_op(self.st, self.ch, self.now, spec)
    }

    /// Revoke the held grant `id` (live, scheduled or due), if it is still
    /// held. The revoke stands even if the batch fails.
    pub(crate) fn revoke_id(&mut self, id: &crate::ids::GrantId) -> Option<Grant> {
        let g = self.st.find_id(id, self.now)?;
        self.st.revoke_all(self.ch, self.now, vec![g]).pop()
    }

    /// Revoke the grant of (user, entity) through `context`, if live. The
    /// revoke stands even if the batch fails (it is written with a later
    /// one).
    pub(crate) fn revoke_via(
        &mut self,
        user: &UserId,
        entity: &EntityId,
        context: &Context,
    ) -> Option<Grant> {
        revoke_context_op(self.st, self.ch, self.now, user, entity, context)
    }

    /// Writes undone if the batch fails.
    pub(crate) fn write(&mut self, changes: Vec<Change>) {
        if self.ch.durable {
            self.ch.writes.extend(changes);
        }
    }

    /// Writes that stand even if the batch fails.
    pub(crate) fn keep(&mut self, changes: Vec<Change>) {
        if self.ch.durable {
            self.ch.kept.extend(changes);
        }
    }
}

impl Engine {
    /// Run `op` in the next batch, under the lock: at once on a
    /// memory-only engine. Returns what it decided, and the store's error
    /// if the batch failed (then its `write`s and shares were undone; its
    /// `keep`s and revokes stand).
    pub(crate) fn transact<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Transaction<'_, '_>) -> T + Send + 'static,
    ) -> (Option<T>, Result<(), StoreError>) {
        let slot: Arc<Mutex<Option<T>>> = Arc::default();
        let out = slot.clone();
        let result = self.run(move |st, ch, now| {
            *out.lock() = Some(op(&mut Transaction { st, ch, now }));
            Ok::<(), ShareError>(())
        });
        // Always `Some`: `run` returns only once its job has run, in the
        // batch it led or one it waited for.
        let decided = slot.lock().take();
        let result = result.map_err(|e| match e {
            ShareError::Store(e) => e,
            other => StoreError::Io(other.to_string()),
        });
        (decided, result)
    }
}
