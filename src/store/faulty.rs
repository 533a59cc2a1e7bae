//! A store wrapper that fails chosen operations.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use chrono::{DateTime, Utc};

use super::{Batch, GrantFilter, Meta, Store, StoreError, StoreReader};
use crate::ids::{EntityId, UserId};
use crate::model::grant::Grant;
use crate::model::history::{HistoryPage, HistoryQuery, HistoryRecord, RequestId, RuleId};
use crate::model::rule::Rule;

/// Which operations a [`FaultyStore`] fails. Operations are counted from 1
/// across every method of the store (loading counts too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Fault {
    /// Fail nothing.
    #[default]
    None,
    /// Fail operation `n` only.
    Once(u64),
    /// Fail operation `n` and every one after it.
    From(u64),
}

#[derive(Debug, Default)]
struct Shared {
    ops: AtomicU64,
    fault: Mutex<Fault>,
    /// Whether queries of the read side fail.
    reads_fail: AtomicBool,
}

/// Controls a [`FaultyStore`] from outside the engine that owns it.
#[derive(Clone, Debug, Default)]
pub struct FaultHandle {
    shared: Arc<Shared>,
}

impl FaultHandle {
    /// Set which operations fail from now on.
    pub fn set(&self, fault: Fault) {
        *self.shared.fault.lock() = fault;
    }

    /// Operations attempted so far (failed ones included).
    pub fn ops(&self) -> u64 {
        self.shared.ops.load(Ordering::SeqCst)
    }

    /// Fail every query of the read side from now on (`true`), or none
    /// (`false`). Queries are not counted as operations.
    pub fn fail_reads(&self, fail: bool) {
        self.shared.reads_fail.store(fail, Ordering::SeqCst);
    }
}

/// Wraps a store and fails the operations a [`Fault`] names, before they
/// reach the inner store (a failed batch leaves the inner store as it
/// was). For tests of what the engine promises when its store fails.
///
/// ```
/// use grantwheel::store::{Fault, FaultyStore, MemoryStore, StoreError};
/// use grantwheel::{Context, Engine, EntityId, Expiry, Level, ShareError, UserId};
///
/// let (store, faults) = FaultyStore::new(MemoryStore::new());
/// let engine = Engine::builder().store(store).build().unwrap();
/// faults.set(Fault::Once(faults.ops() + 1));
/// let (u, e) = (UserId::from_u128(1), EntityId::lead(7));
/// let err = engine.share(u, e, Context::Direct, Level::Read, Expiry::Default).unwrap_err();
/// assert!(matches!(err, ShareError::Store(StoreError::Injected { .. })));
/// assert!(!engine.can_read(&u, &e)); // nothing half-done
/// engine.share(u, e, Context::Direct, Level::Read, Expiry::Default).unwrap();
/// assert!(engine.can_read(&u, &e));
/// ```
#[derive(Debug)]
pub struct FaultyStore<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: Store> FaultyStore<S> {
    /// Wrap `inner`; the handle sets the faults.
    pub fn new(inner: S) -> (Self, FaultHandle) {
        let handle = FaultHandle::default();
        (
            FaultyStore {
                inner,
                shared: handle.shared.clone(),
            },
            handle,
        )
    }

    fn step(&self) -> Result<(), StoreError> {
        let op = self.shared.ops.fetch_add(1, Ordering::SeqCst) + 1;
        let fails = match *self.shared.fault.lock() {
            Fault::None => false,
            Fault::Once(n) => op == n,
            Fault::From(n) => op >= n,
        };
        if fails {
            Err(StoreError::Injected { op })
        } else {
            Ok(())
        }
    }
}

impl<S: Store> Store for FaultyStore<S> {
    fn meta(&mut self) -> Result<Meta, StoreError> {
        self.step()?;
        self.inner.meta()
    }

    fn grants(&mut self, each: &mut dyn FnMut(Grant)) -> Result<(), StoreError> {
        self.step()?;
        self.inner.grants(each)
    }

    fn rules(&mut self) -> Result<Vec<(RuleId, Rule)>, StoreError> {
        self.step()?;
        self.inner.rules()
    }

    fn apply(&mut self, batch: &Batch<'_>) -> Result<(), StoreError> {
        self.step()?;
        self.inner.apply(batch)
    }

    /// The inner store's read side, failing while
    /// [`FaultHandle::fail_reads`] says so. Queries are not counted: the
    /// faults are counted on the engine's own operations, which queries
    /// from other threads would otherwise shift.
    fn reader(&self) -> Result<Arc<dyn StoreReader>, StoreError> {
        Ok(Arc::new(FaultyReader {
            inner: self.inner.reader()?,
            shared: self.shared.clone(),
        }))
    }
}

/// The read side of a [`FaultyStore`].
struct FaultyReader {
    inner: Arc<dyn StoreReader>,
    shared: Arc<Shared>,
}

impl FaultyReader {
    fn check(&self) -> Result<&dyn StoreReader, StoreError> {
        if self.shared.reads_fail.load(Ordering::SeqCst) {
            Err(StoreError::Injected { op: 0 })
        } else {
            Ok(self.inner.as_ref())
        }
    }
}

impl StoreReader for FaultyReader {
    fn request(&self, id: &RequestId) -> Result<Option<HistoryRecord>, StoreError> {
        self.check()?.request(id)
    }
    fn request_by_key(&self, key: &str) -> Result<Option<HistoryRecord>, StoreError> {
        self.check()?.request_by_key(key)
    }
    fn history(&self, entity: &EntityId, query: &HistoryQuery) -> Result<HistoryPage, StoreError> {
        self.check()?.history(entity, query)
    }
    fn access_at(
        &self,
        entity: &EntityId,
        at: DateTime<Utc>,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        self.check()?.access_at(entity, at)
    }
    fn processing(&self, limit: usize) -> Result<Vec<HistoryRecord>, StoreError> {
        self.check()?.processing(limit)
    }
    fn share_of_grant(&self, serial: u64) -> Result<Option<HistoryRecord>, StoreError> {
        self.check()?.share_of_grant(serial)
    }
    fn awaiting_approval(&self, limit: usize) -> Result<Vec<HistoryRecord>, StoreError> {
        self.check()?.awaiting_approval(limit)
    }
    fn held_at(&self, user: &UserId, at: DateTime<Utc>) -> Result<Vec<HistoryRecord>, StoreError> {
        self.check()?.held_at(user, at)
    }
    fn open_shares_of_rule(
        &self,
        rule: RuleId,
        now: DateTime<Utc>,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        self.check()?.open_shares_of_rule(rule, now)
    }
    fn prunable(&self, horizon: DateTime<Utc>, limit: usize) -> Result<Vec<RequestId>, StoreError> {
        self.check()?.prunable(horizon, limit)
    }
    fn live_grants(
        &self,
        filter: GrantFilter,
        now: DateTime<Utc>,
    ) -> Result<Vec<Grant>, StoreError> {
        self.check()?.live_grants(filter, now)
    }
}
