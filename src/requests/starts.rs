//! Re-validation at start: a grant made to start later is held at its
//! start by an engine that confirms starts
//! ([`EngineBuilder::confirm_starts`](crate::EngineBuilder::confirm_starts));
//! the request layer asks the host's hooks again and confirms it, or ends
//! it with the reason recorded in its share record.
//!
//! # Ground rules
//!
//! - The hooks are the host's code: they are asked outside the engine's
//!   lock. What they answer is acted on under the lock, on the grant they
//!   were asked about (by id: a grant that was replaced or revoked
//!   meanwhile is left alone).
//! - Nothing is seen before it is confirmed: a held grant answers no to
//!   every check, whatever the hooks take.
//! - A refusal revokes the grant and writes its share record's end, with
//!   the reason, in the same batch; both stand even if the batch fails
//!   (written with the next one), as a revoke does.

use crate::engine::Grant;
use crate::error::{ChangeError, QueryError};
use crate::ids::Level;
use crate::model::history::{EndedBy, HistoryRecord};
use crate::store::Change;

use super::Sharing;

impl Sharing {
    /// Ask the host's hooks again for every grant held at its start
    /// (context resolver; for a share asked on a grantor's authority, the
    /// grantor policy and the grantor's own access, which must still cover
    /// the grant), then confirm each one they accept and end each one they
    /// refuse, recording why in its share record (`end_reason`). Returns
    /// how many were confirmed or ended. The worker
    /// ([`start_worker`](Self::start_worker)) runs this about every 100 ms
    /// when the engine confirms starts.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    /// use chrono::{Duration, TimeZone, Utc};
    /// use grantwheel::requests::{ContextResolver, ShareRequest, Sharing};
    /// use grantwheel::{Context, Engine, EntityId, Level, ManualClock, Start, UserId};
    /// /// Says no to user 2 once they left the team.
    /// struct Team(Arc<AtomicBool>);
    /// impl ContextResolver for Team {
    ///     fn check(&self, user: &UserId, _: &EntityId, _: &Context) -> Result<(), String> {
    ///         if *user == UserId::from_u128(2) && self.0.load(Ordering::SeqCst) {
    ///             Err("left the team".into())
    ///         } else {
    ///             Ok(())
    ///         }
    ///     }
    /// }
    /// let left = Arc::new(AtomicBool::new(false));
    /// let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 12, 7, 9, 0, 0).unwrap());
    /// let engine = Engine::builder().clock(clock.clone()).confirm_starts(true).build().unwrap();
    /// let sharing = Sharing::builder(engine.clone()).resolver(Team(left.clone())).build().unwrap();
    /// let (stays, leaves, lead) = (UserId::from_u128(1), UserId::from_u128(2), EntityId::lead(1));
    /// let next_week = Start::After(Duration::days(7));
    /// sharing.share(ShareRequest::new(stays, lead, Level::Read).start(next_week));
    /// let later = sharing.share(ShareRequest::new(leaves, lead, Level::Read).start(next_week));
    ///
    /// left.store(true, Ordering::SeqCst);
    /// clock.advance(Duration::days(7));
    /// engine.advance();
    /// assert!(!engine.can_read(&stays, &lead), "held until checked");
    /// assert_eq!(sharing.check_starts().unwrap(), 2);
    /// assert!(engine.can_read(&stays, &lead));
    /// assert!(!engine.can_read(&leaves, &lead));
    /// let record = sharing.request(&later.request).unwrap().unwrap();
    /// assert!(record.end_reason.unwrap().contains("left the team"));
    /// ```
    ///
    /// # Errors
    ///
    /// [`QueryError::Store`] when the store cannot be read or a
    /// confirmation cannot be written; those done before stay done, and
    /// the rest wait for the next call.
    pub fn check_starts(&self) -> Result<usize, QueryError> {
        let engine = &self.inner.engine;
        if !engine.confirms_starts() {
            return Ok(0);
        }
        let mut done = 0;
        for grant in engine.due_starts() {
            let record = self
                .inner
                .backend
                .reader()
                .share_of_grant(grant.id.serial)
                .map_err(QueryError::Store)?;
            match self.recheck(&grant, record.as_ref()) {
                Ok(()) => match engine.confirm_start(&grant.id) {
                    Ok(_) => done += 1,
                    // Revoked, replaced, ended or confirmed meanwhile.
                    Err(ChangeError::NotLive(_) | ChangeError::NotDue(_)) => {}
                    Err(ChangeError::Store(e)) => return Err(QueryError::Store(e)),
                    Err(ChangeError::Invalid(a)) => return Err(QueryError::Invalid(a)),
                },
                Err(reason) => {
                    if self.refuse(grant, record, reason) {
                        done += 1;
                    }
                }
            }
        }
        Ok(done)
    }

    /// What the host's hooks say now of a held grant and its share record.
    fn recheck(&self, grant: &Grant, record: Option<&HistoryRecord>) -> Result<(), String> {
        let id = &grant.id;
        // The grantor first: a look at this engine, before the host's
        // resolver (which may ask the CRM).
        if let Some(grantor) = record.and_then(|r| r.granted_by) {
            self.grantor_holds(grant, grantor)?;
        }
        if let Some(resolver) = &self.inner.resolver {
            resolver
                .check(&id.user, &id.entity, &id.context)
                .map_err(|reason| format!("refused at its start: context refused: {reason}"))?;
        }
        Ok(())
    }

    /// Whether `grantor` may still give `grant`: privileged, or holding
    /// the access itself until the grant's end.
    fn grantor_holds(&self, grant: &Grant, grantor: crate::ids::UserId) -> Result<(), String> {
        let id = &grant.id;
        let privileged = self
            .inner
            .grantor_policy
            .as_ref()
            .is_some_and(|p| p.is_privileged(&grantor, &id.entity));
        if privileged {
            return Ok(());
        }
        let held = self.inner.engine.access(&grantor, &id.entity);
        let until = held.map(|a| match grant.level {
            Level::Edit if a.level == Level::Edit => Some(a.until),
            Level::Edit => None,
            Level::Read => Some(a.read_until),
        });
        match until.flatten() {
            Some(until) if until >= grant.expires_at => Ok(()),
            _ => Err(format!(
                "refused at its start: grantor `{grantor}` no longer holds this access to `{}` until {}",
                id.entity, grant.expires_at
            )),
        }
    }

    /// End a held grant the hooks refused, with its record's end and the
    /// reason in the same batch. Returns whether it was still held.
    fn refuse(&self, grant: Grant, record: Option<HistoryRecord>, reason: String) -> bool {
        let backend = self.inner.backend.clone();
        let (ended, _batch) = self.inner.engine.transact(move |d| {
            d.revoke_id(&grant.id)?;
            if let Some(mut r) = record {
                r.revoked = Some((d.now(), EndedBy::Engine));
                r.end_reason = Some(reason);
                // It stands even if the batch fails, as the revoke does.
                d.keep(backend.in_batch(vec![Change::Record(Box::new(r))]));
            }
            Some(())
        });
        // A failed batch is written with the next one: the grant is ended
        // in memory either way.
        ended.flatten().is_some()
    }
}
