//! What ends grants before their expiry: one by id, through a context,
//! or all of a pair, a user, an entity or a context.

use crate::error::{NotDurable, RevokeError};
use crate::ids::{Context, EntityId, GrantId, UserId};
use crate::index::PairKey;
use crate::model::grant::Grant;
use crate::store::GrantFilter;

use super::batch::Changes;
use super::state::State;
use super::Engine;

impl Engine {
    /// Revoke one held grant (live, or scheduled to start) by id. Returns it as it was.
    ///
    /// Every check says no from the moment the revoke is decided. With a
    /// store, if the revoke cannot be written the call returns
    /// [`RevokeError::NotDurable`]: the grant stays revoked, and the revoke is
    /// written with the next batch that succeeds.
    ///
    /// ```
    /// use grantwheel::{Context, Engine, EntityId, Expiry, Level, RevokeError, UserId};
    /// let engine = Engine::new();
    /// let (u, e) = (UserId::from_u128(1), EntityId::lead(1));
    /// let g = engine.share(u, e, Context::Direct, Level::Read, Expiry::Default).unwrap();
    /// engine.revoke(&g.id).unwrap();
    /// assert!(!engine.can_read(&u, &e));
    /// assert!(matches!(engine.revoke(&g.id), Err(RevokeError::NotLive(_))));
    /// ```
    pub fn revoke(&self, id: &GrantId) -> Result<Grant, RevokeError> {
        let id = *id;
        self.run(move |st, ch, now| {
            let g = st.find_id(&id, now).ok_or(RevokeError::NotLive(id))?;
            Ok(st.revoke_all(ch, now, vec![g]).remove(0))
        })
    }

    /// Revoke the held grant (live or scheduled) of (user, entity) through `context`, if any.
    /// Grants through other contexts stay. Store failures as for
    /// [`revoke`](Self::revoke).
    pub fn revoke_via(
        &self,
        user: &UserId,
        entity: &EntityId,
        context: &Context,
    ) -> Result<Option<Grant>, NotDurable> {
        let (user, entity, context) = (*user, *entity, *context);
        self.run(move |st, ch, now| {
            Ok::<_, NotDurable>(revoke_context_op(st, ch, now, &user, &entity, &context))
        })
    }

    /// Revoke every held grant (live or scheduled) of (user, entity), whatever the context.
    pub fn revoke_pair(&self, user: &UserId, entity: &EntityId) -> Result<Vec<Grant>, NotDurable> {
        let (user, entity) = (*user, *entity);
        self.run(move |st, ch, now| {
            let gs = st.held_in_pair(&user, &entity, now);
            Ok::<_, NotDurable>(st.revoke_all(ch, now, gs))
        })
    }

    /// Revoke every held grant (live or scheduled) of `user`. With a store, the grants are
    /// found through the store's index of users (cost proportional to
    /// them); without one (or if the store cannot be read) by scanning the
    /// index, O(pairs). See [`user_grants`](Self::user_grants) for what is
    /// found.
    pub fn revoke_user(&self, user: &UserId) -> Result<Vec<Grant>, NotDurable> {
        self.revoke_listed(GrantFilter::User(*user))
    }

    /// Revoke every held grant (live or scheduled) on `entity`: through the store's index of
    /// entities, or by scanning as [`revoke_user`](Self::revoke_user).
    pub fn revoke_entity(&self, entity: &EntityId) -> Result<Vec<Grant>, NotDurable> {
        self.revoke_listed(GrantFilter::Entity(*entity))
    }

    /// Revoke every held grant (live or scheduled) given through `context` (for example all
    /// that one activity shared): through the store's index of contexts,
    /// or by scanning the grants, O(grants).
    pub fn revoke_all_via(&self, context: &Context) -> Result<Vec<Grant>, NotDurable> {
        self.revoke_listed(GrantFilter::Context(*context))
    }

    /// Revoke what `filter` lists: the store's answer, each grant checked
    /// live in memory under the lock; else what a scan finds.
    fn revoke_listed(&self, filter: GrantFilter) -> Result<Vec<Grant>, NotDurable> {
        let listed = self.store_listing(filter);
        self.run(move |st, ch, now| {
            let gs = match listed {
                Some(ids) => ids.iter().filter_map(|id| st.find_id(id, now)).collect(),
                None => st.held_scan(&filter, now),
            };
            Ok::<_, NotDurable>(st.revoke_all(ch, now, gs))
        })
    }
}

/// Revoke the held grant of (user, entity) through `context` inside a
/// batch, if there is one (a transaction's revoke).
pub(super) fn revoke_context_op(
    st: &mut State,
    ch: &mut Changes<'_>,
    now: u64,
    user: &UserId,
    entity: &EntityId,
    context: &Context,
) -> Option<Grant> {
    let key = PairKey::new(user, entity);
    let loc = st.index.find(&key, st.index.hash(&key))?;
    let g = st.find_context(loc, context.pack())?;
    if st.grants[g].expires <= now {
        return None;
    }
    st.revoke_all(ch, now, vec![g]).pop()
}
