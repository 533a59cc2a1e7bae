//! What the engine holds, listed: by pair, user, entity or expiry, live
//! or yet to start; the store lists when it can, memory checks each.

use crate::clock::{from_millis, to_millis};
use crate::ids::{EntityId, GrantId, UserId};
use crate::model::grant::Grant;
use crate::store::GrantFilter;

use super::record::GrantIx;
use super::state::State;
use super::Engine;

impl Engine {
    /// The ids of the grants the store lists for `filter`, if the engine
    /// has a store that answers.
    pub(super) fn store_listing(&self, filter: GrantFilter) -> Option<Vec<GrantId>> {
        let reader = self.inner.store_reader.as_ref()?;
        let grants = reader.live_grants(filter, self.now()).ok()?;
        Some(grants.into_iter().map(|g| g.id).collect())
    }

    /// The grants `filter` selects, live or (with `scheduled`) yet to
    /// start: listed by the store (and each checked in memory), else found
    /// by a scan.
    fn listing(&self, filter: GrantFilter, scheduled: bool) -> Vec<Grant> {
        let listed = self.store_listing(filter);
        self.read_state(|st, now| {
            let mut gs: Vec<GrantIx> = match listed {
                Some(ids) => ids.iter().filter_map(|id| st.find_id(id, now)).collect(),
                None => st.held_scan(&filter, now),
            };
            // What checks see: a grant whose start passed is still
            // scheduled until the tick that starts it.
            gs.retain(|g| st.grants[*g].hidden() == scheduled);
            st.sorted_by_expiry(gs)
        })
    }

    /// Read the state under the lock (after reclaiming what is due).
    pub(super) fn read_state<T>(&self, f: impl FnOnce(&State, u64) -> T) -> T {
        self.with_state(|st, _, now| f(st, now))
    }

    /// The live grants of (user, entity), by expiry: those checks see (a
    /// scheduled grant from the tick that starts it, see
    /// [`live_from`](Self::live_from)).
    pub fn pair_grants(&self, user: &UserId, entity: &EntityId) -> Vec<Grant> {
        self.read_state(|st, now| {
            let mut gs = st.held_in_pair(user, entity, now);
            gs.retain(|g| !st.grants[*g].hidden());
            st.sorted_by_expiry(gs)
        })
    }

    /// The grants of `user` that have yet to start, by expiry (as
    /// [`user_grants`](Self::user_grants) lists the live ones): until the tick
    /// that starts them, when checks begin to see them.
    pub fn scheduled_of(&self, user: &UserId) -> Vec<Grant> {
        self.listing(GrantFilter::User(*user), true)
    }

    /// The grants on `entity` that have yet to start, by expiry.
    pub fn scheduled_on(&self, entity: &EntityId) -> Vec<Grant> {
        self.listing(GrantFilter::Entity(*entity), true)
    }

    /// The live grants on `entity`, by expiry.
    ///
    /// # What a listing sees
    ///
    /// With a store, the grants come from the store's index (cost
    /// proportional to the result, not to every grant): grants whose batch
    /// was written (committed state), each checked under the engine's lock
    /// to be live in memory, so a grant revoked or past its expiry is never
    /// listed even before its end is written. A share still being written
    /// is not listed until its call returns. Without a store (or if the
    /// store cannot be read), the engine scans its index: O(pairs).
    ///
    /// A listing trusts the store's indexes: damage on disk can hide a
    /// grant from it (never show one that was not given); after a disk
    /// fault, check the file (`SqliteStore::integrity_check`).
    pub fn entity_grants(&self, entity: &EntityId) -> Vec<Grant> {
        self.listing(GrantFilter::Entity(*entity), false)
    }

    /// The live grants of `user`, by expiry; see
    /// [`entity_grants`](Self::entity_grants) for what a listing sees and costs.
    pub fn user_grants(&self, user: &UserId) -> Vec<Grant> {
        self.listing(GrantFilter::User(*user), false)
    }

    /// The live grants that expire within `window` from now, by expiry;
    /// see [`entity_grants`](Self::entity_grants) for what a listing sees (without
    /// a store this scans the grants: O(grants)).
    ///
    /// ```
    /// use grantwheel::{Context, Engine, EntityId, Expiry, Level, UserId};
    /// use chrono::Duration;
    /// let engine = Engine::new();
    /// let u = UserId::from_u128(1);
    /// engine.share(u, EntityId::lead(1), Context::Direct, Level::Read, Expiry::After(Duration::days(3))).unwrap();
    /// engine.share(u, EntityId::lead(2), Context::Direct, Level::Read, Expiry::After(Duration::hours(2))).unwrap();
    /// let soon = engine.expiring_within(Duration::days(1));
    /// assert_eq!(soon.len(), 1);
    /// assert_eq!(soon[0].id.entity, EntityId::lead(2));
    /// ```
    pub fn expiring_within(&self, window: chrono::Duration) -> Vec<Grant> {
        let window_ms = u64::try_from(window.num_milliseconds()).unwrap_or(0);
        let until = from_millis(to_millis(self.now()).saturating_add(window_ms));
        self.listing(GrantFilter::ExpiringBy(until), false)
    }
}
