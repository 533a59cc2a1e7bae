//! A store that keeps everything in memory.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Batch, Change, Meta, Records, Store, StoreError};
use crate::model::grant::Grant;
use crate::model::history::{HistoryRecord, RequestId, RuleId};
use crate::model::rule::Rule;

#[derive(Debug, Default)]
struct State {
    meta: Meta,
    grants: BTreeMap<u64, Grant>,
    history: BTreeMap<RequestId, (u64, HistoryRecord)>,
    rules: BTreeMap<RuleId, Rule>,
    batches: u64,
}

/// A store in memory: no durability across processes, but an engine built
/// again over a clone starts from the state the last one left, which is
/// what tests of restarts need. Clones share the state.
///
/// ```
/// use grantwheel::store::MemoryStore;
/// use grantwheel::{Context, Engine, EntityId, Expiry, Level, UserId};
///
/// let store = MemoryStore::new();
/// let (u, e) = (UserId::from_u128(1), EntityId::lead(7));
/// let engine = Engine::builder().store(store.clone()).build().unwrap();
/// engine.share(u, e, Context::Direct, Level::Read, Expiry::Default).unwrap();
/// drop(engine);
///
/// let again = Engine::builder().store(store).build().unwrap();
/// assert!(again.can_read(&u, &e));
/// ```
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// The live grants stored, by serial.
    pub fn stored_grants(&self) -> Vec<Grant> {
        self.state.lock().grants.values().copied().collect()
    }

    /// How many batches were applied (replays not counted).
    pub fn batches(&self) -> u64 {
        self.state.lock().batches
    }
}

impl Store for MemoryStore {
    fn meta(&mut self) -> Result<Meta, StoreError> {
        Ok(self.state.lock().meta)
    }

    fn grants(&mut self, each: &mut dyn FnMut(Grant)) -> Result<(), StoreError> {
        let grants: Vec<Grant> = self.stored_grants();
        grants.into_iter().for_each(each);
        Ok(())
    }

    fn records(&mut self) -> Result<Records, StoreError> {
        let st = self.state.lock();
        let mut history: Vec<(u64, HistoryRecord)> = st.history.values().cloned().collect();
        history.sort_by_key(|(seq, _)| *seq);
        Ok(Records {
            history,
            rules: st.rules.iter().map(|(id, r)| (*id, r.clone())).collect(),
        })
    }

    fn apply(&mut self, batch: &Batch<'_>) -> Result<(), StoreError> {
        let mut st = self.state.lock();
        if batch.seq <= st.meta.last_seq {
            return Ok(());
        }
        for change in batch.changes {
            match change {
                Change::Put(g) => {
                    st.grants.insert(g.id.serial, *g);
                }
                Change::End { serial, .. } => {
                    st.grants.remove(serial);
                }
                Change::Record { seq, record } => {
                    st.history
                        .insert(record.request, (*seq, (**record).clone()));
                }
                Change::Forget(request) => {
                    st.history.remove(request);
                }
                Change::Rule { id, rule } => {
                    st.rules.insert(*id, (**rule).clone());
                }
                Change::RemoveRule(id) => {
                    st.rules.remove(id);
                }
            }
        }
        st.meta.last_seq = batch.seq;
        st.meta.next_serial = st.meta.next_serial.max(batch.next_serial);
        st.meta.clock = st.meta.clock.max(Some(batch.clock));
        st.batches += 1;
        Ok(())
    }
}
