//! Restart: live grants loaded from the store, and the state handed to
//! the request layer.

use std::sync::{mpsc, Arc};

use crate::clock::{from_millis, to_millis};
use crate::error::BuildError;
use crate::ids::GrantId;
use crate::index::{IndexReader, PairKey};
use crate::model::grant::Grant;
use crate::model::history::RuleId;
use crate::model::rule::Rule;
use crate::store::{Change, EndCause, MemoryStore, Store};

use super::record::{MAX_GRANTS, MAX_SERIAL};
use super::state::State;
use super::Engine;

/// What loading found besides the live grants.
#[derive(Default)]
pub(super) struct Loaded {
    pub(super) expired: Vec<Grant>,
    pub(super) max_serial: u64,
    pub(super) overflow: Option<u64>,
}

/// Restored state the request layer picks up: loaded from the store at
/// start, or handed back by a request layer that was dropped. The history
/// is not here: it stays in the store (or, on an engine without one, in
/// the request layer's own memory store, handed back whole).
#[derive(Default)]
pub(crate) struct Restored {
    /// Automation rules.
    pub(crate) rules: Vec<(RuleId, Rule)>,
    /// The history of a request layer over an engine without a store.
    pub(crate) local: Option<MemoryStore>,
}

impl State {
    /// Load the grants a store holds, dropping those past their expiry.
    /// Two threads: the store decodes rows while this one indexes them.
    pub(super) fn load(
        &mut self,
        reader: &IndexReader,
        store: &mut dyn Store,
        now: u64,
    ) -> Result<Restored, BuildError> {
        const CHUNK: usize = 4096;
        let (tx, rx) = mpsc::sync_channel::<Vec<Grant>>(8);
        let (read, acc) = std::thread::scope(|s| {
            let state = &mut *self;
            let inserter = s.spawn(move || {
                let mut acc = Loaded::default();
                for chunk in rx {
                    for grant in chunk {
                        state.load_one(reader, grant, now, &mut acc);
                    }
                }
                acc
            });
            let mut buf = Vec::with_capacity(CHUNK);
            let read = store.grants(&mut |grant| {
                buf.push(grant);
                if buf.len() == CHUNK {
                    // A send fails only if the inserter died; its panic is
                    // raised by the join below.
                    let _ = tx.send(std::mem::replace(&mut buf, Vec::with_capacity(CHUNK)));
                }
            });
            if !buf.is_empty() {
                let _ = tx.send(buf);
            }
            drop(tx);
            let acc = inserter
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            (read, acc)
        });
        read?;
        if let Some(serial) = acc.overflow {
            return Err(BuildError::Load(crate::store::StoreError::Corrupt {
                what: format!("grant with serial {serial}"),
                reason: format!(
                    "beyond the engine's limits ({MAX_GRANTS} grants, serials below {MAX_SERIAL})"
                ),
            }));
        }
        let rules = store.rules()?;
        self.max_rule = rules.iter().map(|(id, _)| id.0).max().unwrap_or(0);
        self.next_serial = self.next_serial.max(acc.max_serial + 1);
        for grant in &acc.expired {
            self.lazy.push(Change::End {
                grant: grant.id,
                at: grant.expires_at,
                cause: EndCause::Expired,
            });
        }
        Ok(Restored { rules, local: None })
    }

    /// Index one loaded grant (or set it aside as expired).
    pub(super) fn load_one(
        &mut self,
        reader: &IndexReader,
        grant: Grant,
        now: u64,
        acc: &mut Loaded,
    ) {
        acc.max_serial = acc.max_serial.max(grant.id.serial);
        let expires = to_millis(grant.expires_at);
        if expires <= now {
            acc.expired.push(grant);
            return;
        }
        let key = PairKey::new(&grant.id.user, &grant.id.entity);
        let hash = self.index.hash(&key);
        let found = self.index.find(&key, hash);
        let ctx = grant.id.context.pack();
        if let Some(g) = found.and_then(|loc| self.find_context(loc, ctx)) {
            // Two live grants for one context (a damaged store): keep the
            // one that lasts longer, drop the other.
            let dropped = if self.grants[g].expires >= expires {
                grant.id
            } else {
                let old = self.grant(g);
                self.detach(reader, g);
                old.id
            };
            self.lazy.push(Change::End {
                grant: dropped,
                at: from_millis(now),
                cause: EndCause::Replaced,
            });
            if dropped.serial == grant.id.serial {
                return;
            }
        }
        if self.grants.held() >= MAX_GRANTS || grant.id.serial >= MAX_SERIAL {
            acc.overflow.get_or_insert(grant.id.serial);
            return;
        }
        // A start that passed while the process was down starts it now.
        let rec = self.record(expires, grant.id.serial, ctx, grant.level);
        self.place(
            reader,
            (&key, hash),
            rec,
            grant.starts_at.map(to_millis),
            now,
        );
    }
}

impl Engine {
    /// The request layer attached to this engine: `Err` with the living
    /// one, or `Ok` with one that `make` builds from the restored state
    /// (taken) and that is attached from now on.
    pub(crate) fn attach_layer<T: std::any::Any + Send + Sync>(
        &self,
        make: impl FnOnce(Option<Restored>) -> Arc<T>,
    ) -> Result<Arc<T>, Arc<T>> {
        let mut slot = self.inner.layer.lock();
        // Kept past the lock: dropping the last handle of a layer runs its
        // drop, which hands state back to this engine.
        let living = slot.as_ref().and_then(std::sync::Weak::upgrade);
        if let Some(Ok(existing)) = living.clone().map(|l| l.downcast::<T>()) {
            drop(slot);
            return Err(existing);
        }
        let restored = self.inner.restored.lock().take();
        let layer = make(restored);
        let any: Arc<dyn std::any::Any + Send + Sync> = layer.clone();
        *slot = Some(Arc::downgrade(&any));
        drop(slot);
        drop(living);
        Ok(layer)
    }

    /// Keep a dropped request layer's state for the next one.
    pub(crate) fn hand_back(&self, restored: Restored) {
        *self.inner.restored.lock() = Some(restored);
    }

    /// Those of `ids` the engine no longer holds. A grant past its expiry
    /// but not yet reclaimed is still held: its expiry event is to come.
    pub(crate) fn not_held(&self, ids: Vec<GrantId>) -> Vec<GrantId> {
        let st = self.inner.state.lock();
        ids.into_iter()
            .filter(|id| st.find_id(id, 0).is_none())
            .collect()
    }
}
