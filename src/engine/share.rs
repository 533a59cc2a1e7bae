//! What makes and changes grants: shares one by one or many in one
//! batch, expiry and start changes, confirmed starts, and the repeat-share
//! rule that decides what a share of a pair already held does.

use crate::clock::{from_millis, words};
use crate::error::{ChangeError, InvalidArgument, ShareError};
use crate::events::{Event, RevokeReason};
use crate::ids::{Context, EntityId, GrantId, Level, UserId};
use crate::index::PairKey;
use crate::model::grant::{Expiry, Grant, RepeatShare, ShareSpec, Start};
use crate::store::{Change, EndCause};

use super::batch::Changes;
use super::record::{GrantIx, MAX_GRANTS, MAX_SERIAL};
use super::state::State;
use super::Engine;

impl Engine {
    /// Give `user` access to `entity` at `level` until `expiry`, through
    /// `context`. Returns the grant as it now stands.
    ///
    /// A duration that is zero or negative, longer than the maximum (unless
    /// configured to clamp), or that overflows is refused with
    /// [`ShareError::Invalid`] naming `duration` or `expires_at`. When the (user,
    /// entity, context) already has a live grant, the [`RepeatShare`] rule
    /// decides. Grants through other contexts are untouched.
    ///
    /// With a store, the grant is written before any check sees it and
    /// before this returns; if the store fails the call returns
    /// [`ShareError::Store`] and nothing changed.
    ///
    /// ```
    /// use grantwheel::{Context, Engine, EntityId, Expiry, Level, UserId};
    /// use chrono::Duration;
    /// use uuid::Uuid;
    ///
    /// let engine = Engine::new();
    /// let user: UserId = "0203f172-8642-11e7-9bed-069b743e848f".parse().unwrap();
    /// let activity = Context::Activity("f2dbf1d5-bbab-418b-bddc-4c92ecdef214".parse::<Uuid>().unwrap());
    /// let grant = engine
    ///     .share(user, EntityId::lead(869196), activity, Level::Edit, Expiry::After(Duration::minutes(30)))
    ///     .unwrap();
    /// assert!(engine.can_edit(&user, &EntityId::lead(869196)));
    /// assert_eq!(grant.level, Level::Edit);
    /// ```
    pub fn share(
        &self,
        user: UserId,
        entity: EntityId,
        context: Context,
        level: Level,
        expiry: Expiry,
    ) -> Result<Grant, ShareError> {
        let spec = ShareSpec {
            user,
            entity,
            context,
            level,
            expiry,
            start: Start::Now,
        };
        self.share_spec(spec)
    }

    /// One share as a [`ShareSpec`]: [`share`](Self::share) with a start.
    ///
    /// A share whose start is ahead makes a *scheduled* grant: it is held
    /// (listed by [`scheduled_of`](Self::scheduled_of) and the like, and it
    /// can be revoked, moved with [`set_start`](Self::set_start) or
    /// extended), but no check says yes for it until the wheel reaches its
    /// start, when [`Event::Started`] is raised. A start in the past is
    /// now. Durations count from the start; an `expires_at` must be after
    /// it. A start that cannot be represented is refused naming
    /// `starts_in`.
    ///
    /// When the (user, entity, context) already holds a grant, live or
    /// scheduled, the [`RepeatShare`] rule decides; `KeepLater` keeps one
    /// grant covering both: the earlier start, the later expiry, the higher
    /// level.
    ///
    /// ```
    /// use grantwheel::{Engine, EntityId, Event, Expiry, Level, ManualClock, ShareSpec, Start, UserId};
    /// use chrono::{Duration, TimeZone, Utc};
    /// let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap());
    /// let engine = Engine::builder().clock(clock.clone()).build().unwrap();
    /// let (u, e) = (UserId::from_u128(1), EntityId::opportunity(42));
    /// let monday = Utc.with_ymd_and_hms(2026, 3, 9, 9, 0, 0).unwrap();
    /// let grant = engine
    ///     .share_spec(ShareSpec::new(u, e, Level::Read).start(Start::At(monday)).expiry(Expiry::After(Duration::days(5))))
    ///     .unwrap();
    /// assert_eq!(grant.starts_at, Some(monday));
    /// assert!(!engine.can_read(&u, &e));
    /// clock.set(monday);
    /// engine.advance();
    /// assert!(engine.can_read(&u, &e), "from its start");
    /// assert_eq!(engine.user_grants(&u)[0].expires_at, monday + Duration::days(5));
    /// ```
    pub fn share_spec(&self, spec: ShareSpec) -> Result<Grant, ShareError> {
        self.run(move |st, ch, now| share_op(st, ch, now, &spec))
    }

    /// Share several grants as one batch: one lock, and with a store one
    /// transaction. Each item succeeds or fails on its own, as
    /// [`share`](Self::share) would; if the store fails, every item fails
    /// with [`ShareError::Store`].
    ///
    /// ```
    /// use grantwheel::{Context, Engine, EntityId, Expiry, Level, ShareSpec, UserId};
    /// let engine = Engine::new();
    /// let items: Vec<ShareSpec> = (0..3)
    ///     .map(|i| ShareSpec::new(UserId::from_u128(i), EntityId::lead(7), Level::Read))
    ///     .collect();
    /// let results = engine.share_many(items);
    /// assert!(results.iter().all(|r| r.is_ok()));
    /// assert_eq!(engine.len(), 3);
    /// ```
    pub fn share_many(&self, items: Vec<ShareSpec>) -> Vec<Result<Grant, ShareError>> {
        let n = items.len();
        if n == 0 {
            return Vec::new();
        }
        let out = self.run(move |st, ch, now| {
            Ok::<_, ShareError>(
                items
                    .iter()
                    .map(|spec| share_op(st, ch, now, spec))
                    .collect::<Vec<_>>(),
            )
        });
        match out {
            Ok(results) => results,
            Err(e) => vec![Err(e); n],
        }
    }

    /// Set a live grant's expiry (extend or shorten it), atomically: no
    /// check ever sees the grant missing. The new expiry must be after now
    /// and within the maximum duration from now. With a store, a later
    /// expiry shows only once written; an earlier one shows at once.
    ///
    /// ```
    /// use grantwheel::{Context, Engine, EntityId, Expiry, Level, UserId};
    /// use chrono::Duration;
    /// let engine = Engine::new();
    /// let g = engine.share(UserId::from_u128(1), EntityId::lead(1), Context::Direct, Level::Read, Expiry::After(Duration::hours(1))).unwrap();
    /// let longer = engine.set_expiry(&g.id, Expiry::After(Duration::days(2))).unwrap();
    /// assert!(longer.expires_at > g.expires_at);
    /// ```
    pub fn set_expiry(&self, id: &GrantId, expiry: Expiry) -> Result<Grant, ChangeError> {
        let id = *id;
        self.run(move |st, ch, now| {
            let g = st.find_id(&id, now).ok_or(ChangeError::NotLive(id))?;
            let expires = match st.waiting_start(g, now) {
                Some(start) => ch.cfg.resolve_from(start, "the start", expiry)?,
                None => ch.cfg.resolve(now, expiry)?,
            };
            Ok(change_expiry(st, ch, g, expires, now))
        })
    }

    /// Move a scheduled grant (one not yet started) to start at `start`,
    /// keeping its length; a start at or before now starts it at once.
    /// A grant that has started is refused with [`ChangeError::Invalid`]
    /// naming `starts_at`. Visible changes wait for the write, as for
    /// [`set_expiry`](Self::set_expiry).
    ///
    /// ```
    /// use grantwheel::{Engine, EntityId, Level, ShareSpec, Start, UserId};
    /// use chrono::Duration;
    /// let engine = Engine::new();
    /// let (u, e) = (UserId::from_u128(1), EntityId::lead(3));
    /// let g = engine.share_spec(ShareSpec::new(u, e, Level::Read).start(Start::After(Duration::days(1)))).unwrap();
    /// assert!(!engine.can_read(&u, &e));
    /// let moved = engine.set_start(&g.id, Start::Now).unwrap();
    /// assert!(engine.can_read(&u, &e), "started at once");
    /// assert_eq!(moved.expires_at - moved.starts_at.unwrap(), g.expires_at - g.starts_at.unwrap());
    /// assert_eq!(engine.set_start(&g.id, Start::Now).unwrap_err().field(), Some("starts_at"));
    /// ```
    pub fn set_start(&self, id: &GrantId, start: Start) -> Result<Grant, ChangeError> {
        let id = *id;
        self.run(move |st, ch, now| {
            let g = st.find_id(&id, now).ok_or(ChangeError::NotLive(id))?;
            let Some(old_start) = st.waiting_start(g, now) else {
                return Err(ChangeError::Invalid(InvalidArgument::new(
                    "starts_at",
                    "the grant has started already; only a scheduled grant can be moved",
                )));
            };
            let rec = st.grants[g];
            let begins = ch.cfg.start_at(now, start)?.unwrap_or(now);
            let expires = begins
                .checked_add(rec.expires - old_start)
                .filter(|at| *at <= crate::clock::max_millis())
                .ok_or_else(|| {
                    InvalidArgument::new(
                        "starts_at",
                        "the grant would end after the latest representable instant",
                    )
                })?;
            let started = st.change_window(g, Some(begins), expires, rec.level(), now);
            let grant = st.grant(g);
            ch.write(|| Change::Put(grant));
            ch.push(|| Event::ExpiryChanged {
                grant,
                previous_expiry: from_millis(rec.expires),
            });
            if started {
                ch.push(|| Event::Started(grant));
            }
            Ok(grant)
        })
    }

    /// Move a live grant's expiry by `by` (negative shortens it). The result
    /// must stay after now and within the maximum duration from now;
    /// otherwise [`ChangeError::Invalid`] names `by`.
    ///
    /// ```
    /// use grantwheel::{Context, Engine, EntityId, Expiry, Level, UserId};
    /// use chrono::Duration;
    /// let engine = Engine::new();
    /// let g = engine.share(UserId::from_u128(1), EntityId::lead(1), Context::Direct, Level::Read, Expiry::After(Duration::hours(2))).unwrap();
    /// let shorter = engine.extend(&g.id, Duration::hours(-1)).unwrap();
    /// assert_eq!(g.expires_at - shorter.expires_at, Duration::hours(1));
    /// assert_eq!(engine.extend(&g.id, Duration::hours(-5)).unwrap_err().field(), Some("by"));
    /// ```
    pub fn extend(&self, id: &GrantId, by: chrono::Duration) -> Result<Grant, ChangeError> {
        let id = *id;
        self.run(move |st, ch, now| {
            let g = st.find_id(&id, now).ok_or(ChangeError::NotLive(id))?;
            let old = st.grants[g].expires;
            let by_ms = by.num_milliseconds();
            let target = if by_ms >= 0 {
                old.checked_add(by_ms.unsigned_abs())
            } else {
                old.checked_sub(by_ms.unsigned_abs())
            };
            // A scheduled grant's length counts from its start.
            let (from, from_name) = match st.waiting_start(g, now) {
                Some(start) => (start, "its start"),
                None => (now, "now"),
            };
            let expires = match target {
                Some(t) if t > from => ch.cfg.expiry_after(from, "by", t - from)?,
                Some(_) => {
                    return Err(ChangeError::Invalid(InvalidArgument::new(
                        "by",
                        format!(
                            "`{}` would end the grant at or before {from_name}; revoke it instead",
                            words(by)
                        ),
                    )))
                }
                None => {
                    return Err(ChangeError::Invalid(InvalidArgument::new(
                        "by",
                        format!(
                            "`{}` moves the expiry out of the representable range",
                            words(by)
                        ),
                    )))
                }
            };
            Ok(change_expiry(st, ch, g, expires, now))
        })
    }

    /// Confirm the start of a grant held at its start
    /// ([`EngineBuilder::confirm_starts`](crate::EngineBuilder::confirm_starts)):
    /// it goes live now, until its expiry (which still counts from its
    /// start), and [`Event::Started`] is raised. Durable like a share:
    /// checks see it once the confirmation is written. To refuse it,
    /// revoke it.
    ///
    /// ```
    /// use chrono::{Duration, TimeZone, Utc};
    /// use grantwheel::{Engine, EntityId, Level, ManualClock, ShareSpec, Start, UserId};
    /// let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 12, 7, 9, 0, 0).unwrap());
    /// let engine = Engine::builder().clock(clock.clone()).confirm_starts(true).build().unwrap();
    /// let (u, e) = (UserId::from_u128(1), EntityId::lead(1));
    /// let g = engine
    ///     .share_spec(ShareSpec::new(u, e, Level::Read).start(Start::After(Duration::hours(1))))
    ///     .unwrap();
    /// clock.advance(Duration::hours(1));
    /// engine.advance();
    /// assert!(!engine.can_read(&u, &e), "held until confirmed");
    /// assert_eq!(engine.due_starts(), vec![g]);
    /// engine.confirm_start(&g.id).unwrap();
    /// assert!(engine.can_read(&u, &e));
    /// assert!(engine.due_starts().is_empty());
    /// ```
    ///
    /// # Errors
    ///
    /// [`ChangeError::NotLive`] if no grant has this id;
    /// [`ChangeError::NotDue`] if it does not wait for a confirmation;
    /// [`ChangeError::Store`] if the store failed (it stays held).
    pub fn confirm_start(&self, id: &GrantId) -> Result<Grant, ChangeError> {
        let id = *id;
        self.run(move |st, ch, now| {
            let g = st.find_id(&id, now).ok_or(ChangeError::NotLive(id))?;
            if !st.confirm(g, now) {
                return Err(ChangeError::NotDue(id));
            }
            let grant = st.grant(g);
            ch.write(|| Change::Put(grant));
            ch.push(|| Event::Started(grant));
            Ok(grant)
        })
    }

    /// The grants held at their start until confirmed
    /// ([`confirm_start`](Self::confirm_start)), by start then serial.
    /// Costs what it lists.
    pub fn due_starts(&self) -> Vec<Grant> {
        self.read_state(|st, _| {
            let mut due: Vec<Grant> = st.due.values().map(|g| st.grant(*g)).collect();
            due.sort_by_key(|g| (g.starts_at, g.id.serial));
            due
        })
    }
}

pub(super) fn change_expiry(
    st: &mut State,
    ch: &mut Changes<'_>,
    g: GrantIx,
    expires: u64,
    now: u64,
) -> Grant {
    let rec = st.grants[g];
    if rec.expires != expires {
        let started = st.change(g, expires, rec.level(), now);
        let grant = st.grant(g);
        ch.write(|| Change::Put(grant));
        ch.push(|| Event::ExpiryChanged {
            grant,
            previous_expiry: from_millis(rec.expires),
        });
        if started {
            ch.push(|| Event::Started(grant));
        }
    }
    st.grant(g)
}

/// What a repeat share of a (user, entity, context) with a live grant
/// came to.
enum Repeat {
    /// Settled on the existing grant (kept, raised, or refused).
    Done(Result<Grant, ShareError>),
    /// The old grant is gone: make the new one.
    Make,
}

/// One share: reclaim a due grant of the same key, apply the repeat-share
/// rule to a live one, else make a new grant (hidden until written when a
/// batch is under way).
#[inline(always)]
pub(super) fn share_op(
    st: &mut State,
    ch: &mut Changes<'_>,
    now: u64,
    spec: &ShareSpec,
) -> Result<Grant, ShareError> {
    let (start, expires) = ch.cfg.window(now, spec.start, spec.expiry)?;
    st.note_pair(&spec.user, &spec.entity);
    let key = PairKey::new(&spec.user, &spec.entity);
    let ctx = spec.context.pack();
    let hash = st.index.hash(&key);
    let found = st.index.find(&key, hash);
    if let Some(g) = found.and_then(|loc| st.find_context(loc, ctx)) {
        if st.grants[g].expires <= now {
            reclaim_due(st, ch, g);
        } else if let Repeat::Done(result) = repeat(st, ch, g, (spec.level, start, expires), now) {
            return result;
        }
        // The old grant is gone, and the pair with it if it was alone:
        // `place` looks the pair up again.
    }
    insert_new(st, ch, (&key, hash), spec, (start, expires), now)
}

/// Reclaim a grant past its expiry that the wheel has not reached yet.
#[inline(always)]
fn reclaim_due(st: &mut State, ch: &mut Changes<'_>, g: GrantIx) {
    let rec = st.grants[g];
    let grant = st.grant(g);
    ch.push_kept(|| Event::Expired(grant));
    ch.end(&grant, rec.expires, EndCause::Expired);
    st.ended_for_good(grant.id.serial);
    st.detach(ch.reader, g);
}

/// Apply the repeat-share rule to the held grant `g`, given the new
/// share's level, start (`None`: now) and expiry.
#[inline(always)]
fn repeat(
    st: &mut State,
    ch: &mut Changes<'_>,
    g: GrantIx,
    (level, start, expires): (Level, Option<u64>, u64),
    now: u64,
) -> Repeat {
    let rec = st.grants[g];
    match ch.cfg.repeat {
        RepeatShare::Reject => Repeat::Done(Err(ShareError::AlreadyShared {
            existing: st.grant(g),
        })),
        RepeatShare::KeepLater => {
            let (exp, lvl) = (rec.expires.max(expires), rec.level().max(level));
            // One grant covering both: a scheduled one moves to the
            // earlier start (now, if the new share starts now).
            let waiting = st.waiting_start(g, now);
            let earlier = waiting
                .map(|old| start.map_or(now, |new| new.min(old)))
                .filter(|at| Some(*at) != waiting);
            if (exp, lvl) != (rec.expires, rec.level()) || earlier.is_some() {
                let started = st.change_window(g, earlier, exp, lvl, now);
                let grant = st.grant(g);
                ch.write(|| Change::Put(grant));
                ch.push(|| Event::ExpiryChanged {
                    grant,
                    previous_expiry: from_millis(rec.expires),
                });
                if started {
                    ch.push(|| Event::Started(grant));
                }
            }
            Repeat::Done(Ok(st.grant(g)))
        }
        RepeatShare::Replace => {
            let grant = st.grant(g);
            ch.push(|| Event::Revoked {
                grant,
                reason: RevokeReason::Replaced,
            });
            ch.end(&grant, now, EndCause::Replaced);
            st.detach(ch.reader, g);
            Repeat::Make
        }
    }
}

/// Make a new grant for `spec`, starting at `start` (`None`: now) and
/// expiring at `expires`.
#[inline(always)]
fn insert_new(
    st: &mut State,
    ch: &mut Changes<'_>,
    (key, hash): (&PairKey, u64),
    spec: &ShareSpec,
    (start, expires): (Option<u64>, u64),
    now: u64,
) -> Result<Grant, ShareError> {
    if st.grants.held() >= MAX_GRANTS || st.next_serial >= MAX_SERIAL {
        return Err(ShareError::Full { limit: MAX_GRANTS });
    }
    let serial = st.next_serial;
    st.next_serial += 1;
    let mut rec = st.record(expires, serial, spec.context.pack(), spec.level);
    if st.group.is_some() {
        // INV-5: hidden from checks until the batch is written.
        rec.set_pending(true);
    }
    let placed = st.place(ch.reader, (key, hash), rec, start, now);
    debug_assert!(placed.is_some(), "a new grant's timer is ahead of now");
    let grant = Grant {
        id: GrantId {
            user: spec.user,
            entity: spec.entity,
            context: spec.context,
            serial,
        },
        level: spec.level,
        expires_at: from_millis(expires),
        starts_at: start.map(from_millis),
    };
    ch.write(|| Change::Put(grant));
    ch.push(|| Event::Granted(grant));
    Ok(grant)
}
