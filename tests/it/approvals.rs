//! Shares that wait for an approver: held `Processing` (stage "awaiting
//! approval") with no access until approved, approved or denied once,
//! failed when nobody acts in time, the duration counted from the
//! approval, the decision kept in the record, and the audit queries.
//! Each behaviour runs over memory, SQLite and (when a server is given)
//! PostgreSQL.

#[cfg(feature = "postgres")]
use crate::pg;

use chrono::{DateTime, Duration, TimeZone, Utc};
use grantwheel::requests::{
    ApprovalError, ApprovalRules, Command, ContextResolver, FailureKind, RequestStatus,
    ShareRequest, Sharing, Source, SourceKind, Submission,
};
use grantwheel::store::MemoryStore;
#[cfg(feature = "sqlite")]
use grantwheel::store::SqliteStore;
use grantwheel::{Context, Engine, EntityId, EntityKind, Level, ManualClock, Start, UserId};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 7, 9, 0, 0).unwrap()
}

const BOSS: UserId = UserId::from_u128(0xb055);

fn user(i: u128) -> UserId {
    UserId::from_u128(0xa000 + i)
}

/// Edit access, and shares longer than 30 days, need an approver; one
/// that nobody acts on within two days fails.
fn rules() -> ApprovalRules {
    ApprovalRules {
        edit: true,
        longer_than: Some(Duration::days(30)),
        ..ApprovalRules::default()
    }
}

/// A context resolver the test can turn against every share.
#[derive(Clone, Default)]
struct Switch(Arc<AtomicBool>);

impl ContextResolver for Switch {
    fn check(&self, _: &UserId, _: &EntityId, _: &Context) -> Result<(), String> {
        if self.0.load(Ordering::SeqCst) {
            Err("the grantee left the team".into())
        } else {
            Ok(())
        }
    }
}

/// How to open an engine over one store, again and again (a restart).
type Opener = Box<dyn Fn(&ManualClock) -> Engine>;

fn layer(engine: Engine, resolver: &Switch) -> Sharing {
    Sharing::builder(engine)
        .approvals(rules(), Duration::days(2))
        .resolver(resolver.clone())
        .build()
        .unwrap()
}

fn failure(status: &RequestStatus) -> (FailureKind, String) {
    match status {
        RequestStatus::Failed { kind, reason } => (*kind, reason.clone()),
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// Every behaviour, on engines `open` makes over one store.
fn behaviours(open: &Opener) {
    let clock = ManualClock::new(t0());
    let resolver = Switch::default();
    let sharing = layer(open(&clock), &resolver);
    let lead = |i| EntityId::lead(i);

    // A read share for a week is not picked: done at once.
    let read =
        sharing.share(ShareRequest::new(user(1), lead(1), Level::Read).duration(Duration::days(7)));
    assert_eq!(read.status, RequestStatus::Completed);

    // An edit share waits: Processing, stage AwaitingApproval, no access.
    let asked = sharing
        .share(ShareRequest::new(user(2), lead(2), Level::Edit).duration(Duration::hours(10)));
    assert_eq!(asked.status, RequestStatus::Processing);
    assert!(asked.grant.is_none());
    assert!(!sharing.engine().can_read(&user(2), &lead(2)));
    let status = sharing.status_response(&asked.request);
    assert_eq!(status.stage.as_deref(), Some("AwaitingApproval"));
    let record = sharing.request(&asked.request).unwrap().unwrap();
    assert!(record.awaiting_approval());
    let approval = record.approval.clone().unwrap();
    assert!(approval.why.contains("edit"), "{}", approval.why);
    assert_eq!(approval.deadline, t0() + Duration::days(2));
    let queue = sharing.awaiting_approval(10).unwrap();
    assert_eq!(queue.len(), 1);
    assert_eq!(queue[0].request, asked.request);

    // The grantee may not approve their own share; a long reason is
    // refused by name; neither changes anything.
    assert_eq!(
        sharing.approve(&asked.request, user(2), None).unwrap_err(),
        ApprovalError::OwnShare { approver: user(2) }
    );
    let long = "x".repeat(grantwheel::requests::MAX_REASON_BYTES + 1);
    let e = sharing
        .approve(&asked.request, BOSS, Some(&long))
        .unwrap_err();
    assert_eq!(e.field(), Some("reason"));
    assert!(sharing
        .request(&asked.request)
        .unwrap()
        .unwrap()
        .awaiting_approval());

    // Approved three hours later: ten hours from the approval.
    clock.advance(Duration::hours(3));
    let done = sharing
        .approve(&asked.request, BOSS, Some("covering for Ana"))
        .unwrap();
    assert_eq!(done.status, RequestStatus::Completed);
    let grant = done.grant.unwrap();
    assert_eq!(grant.expires_at, t0() + Duration::hours(13));
    assert!(sharing.engine().can_edit(&user(2), &lead(2)));
    let record = sharing.request(&asked.request).unwrap().unwrap();
    let decision = record.approval.as_ref().unwrap().decision.clone().unwrap();
    assert_eq!(decision.approver, BOSS);
    assert!(decision.approved);
    assert_eq!(decision.at, t0() + Duration::hours(3));
    assert_eq!(decision.reason.as_deref(), Some("covering for Ana"));
    assert_eq!(record.expires_at, Some(t0() + Duration::hours(13)));
    assert!(sharing.status_response(&asked.request).stage.is_none());
    assert!(sharing.awaiting_approval(10).unwrap().is_empty());
    // Decided once.
    match sharing.approve(&asked.request, BOSS, None) {
        Err(ApprovalError::NotAwaiting { status, .. }) => assert_eq!(status, "Completed"),
        other => panic!("expected NotAwaiting, got {other:?}"),
    }

    // The audit: who had access to the lead at an instant, and what a user
    // held then, with who approved it.
    let at = t0() + Duration::hours(4);
    let who = sharing.access_at(&lead(2), at).unwrap();
    assert_eq!(who.len(), 1);
    assert_eq!(who[0].request, asked.request);
    assert_eq!(
        who[0]
            .approval
            .as_ref()
            .unwrap()
            .decision
            .as_ref()
            .unwrap()
            .approver,
        BOSS
    );
    let held = sharing.held_at(&user(2), at).unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].request, asked.request);
    assert!(
        sharing
            .held_at(&user(2), t0() + Duration::hours(1))
            .unwrap()
            .is_empty(),
        "not before the approval"
    );
    assert!(
        sharing
            .held_at(&user(2), t0() + Duration::hours(13))
            .unwrap()
            .is_empty(),
        "not after its end"
    );
    let read_held = sharing.held_at(&user(1), at).unwrap();
    assert_eq!(read_held.len(), 1);
    assert!(read_held[0].approval.is_none());

    // Denied: fails, no access, the decision kept.
    let denied = sharing.share(ShareRequest::new(user(3), lead(3), Level::Edit));
    let out = sharing
        .deny(&denied.request, BOSS, Some("not this quarter"))
        .unwrap();
    let (kind, reason) = failure(&out.status);
    assert_eq!(kind, FailureKind::Denied);
    assert!(reason.contains("not this quarter"), "{reason}");
    assert!(!sharing.engine().can_read(&user(3), &lead(3)));
    let record = sharing.request(&denied.request).unwrap().unwrap();
    let decision = record.approval.unwrap().decision.unwrap();
    assert!(!decision.approved);
    assert_eq!(decision.approver, BOSS);
    assert!(matches!(
        sharing.approve(&denied.request, BOSS, None),
        Err(ApprovalError::NotAwaiting {
            status: "Failed",
            ..
        })
    ));

    // Approved after the requested start: from the approval. Approved
    // before it: from the start.
    let late = sharing.share(
        ShareRequest::new(user(4), lead(4), Level::Edit)
            .start(Start::After(Duration::hours(1)))
            .duration(Duration::hours(5)),
    );
    let early = sharing.share(
        ShareRequest::new(user(5), lead(5), Level::Edit)
            .start(Start::After(Duration::days(1)))
            .duration(Duration::hours(5)),
    );
    clock.advance(Duration::hours(2));
    let now = sharing.engine().now();
    let g = sharing
        .approve(&late.request, BOSS, None)
        .unwrap()
        .grant
        .unwrap();
    assert_eq!(g.expires_at, now + Duration::hours(5));
    assert!(sharing.engine().can_edit(&user(4), &lead(4)));
    let g = sharing
        .approve(&early.request, BOSS, None)
        .unwrap()
        .grant
        .unwrap();
    let start = now - Duration::hours(2) + Duration::days(1);
    assert_eq!(g.starts_at, Some(start));
    assert_eq!(g.expires_at, start + Duration::hours(5));
    assert!(
        !sharing.engine().can_read(&user(5), &lead(5)),
        "not before its start"
    );

    // The hooks are asked again at approval: a grantee who lost their
    // standing is refused, and the approval is kept with the refusal.
    let stale = sharing.share(ShareRequest::new(user(6), lead(6), Level::Edit));
    resolver.0.store(true, Ordering::SeqCst);
    let out = sharing.approve(&stale.request, BOSS, None).unwrap();
    assert_eq!(failure(&out.status).0, FailureKind::ContextRefused);
    assert!(!sharing.engine().can_read(&user(6), &lead(6)));
    let record = sharing.request(&stale.request).unwrap().unwrap();
    assert!(record.approval.unwrap().decision.unwrap().approved);
    resolver.0.store(false, Ordering::SeqCst);

    // Held requests survive a restart (never failed as interrupted) and
    // are approved after it.
    let kept = sharing.share(ShareRequest::new(user(7), lead(7), Level::Edit));
    let timing_out = sharing
        .share(ShareRequest::new(user(8), lead(8), Level::Read).duration(Duration::days(60)));
    assert_eq!(
        timing_out.status,
        RequestStatus::Processing,
        "longer than 30 days"
    );
    drop(sharing);
    let sharing = layer(open(&clock), &resolver);
    let record = sharing.request(&kept.request).unwrap().unwrap();
    assert!(record.awaiting_approval(), "{record:?}");
    let out = sharing.approve(&kept.request, BOSS, None).unwrap();
    assert_eq!(out.status, RequestStatus::Completed);
    assert!(sharing.engine().can_edit(&user(7), &lead(7)));

    // Nobody acts in time: the status reads failed at once, the sweep
    // writes it, and a late approval is refused.
    clock.advance(Duration::days(2));
    let (kind, _) = failure(&sharing.status(&timing_out.request).unwrap().unwrap());
    assert_eq!(kind, FailureKind::ApprovalTimedOut);
    assert!(sharing.awaiting_approval(10).unwrap().is_empty());
    assert_eq!(sharing.expire_approvals().unwrap(), 1);
    assert_eq!(sharing.expire_approvals().unwrap(), 0);
    assert!(matches!(
        sharing.approve(&timing_out.request, BOSS, None),
        Err(ApprovalError::NotAwaiting {
            status: "Failed",
            ..
        })
    ));
    assert!(!sharing.engine().can_read(&user(8), &lead(8)));

    // Unknown ids are said to be unknown.
    let nobody = grantwheel::requests::RequestId::random();
    assert_eq!(
        sharing.approve(&nobody, BOSS, None).unwrap_err(),
        ApprovalError::NotFound(nobody)
    );
}

/// Engines over one memory store (`confirm`: they confirm starts).
fn over_memory(confirm: bool) -> Opener {
    let store = MemoryStore::new();
    Box::new(move |clock: &ManualClock| {
        Engine::builder()
            .clock(clock.clone())
            .confirm_starts(confirm)
            .store(store.clone())
            .build()
            .unwrap()
    })
}

/// Engines over one SQLite file in `dir`.
#[cfg(feature = "sqlite")]
fn over_sqlite(dir: &tempfile::TempDir, confirm: bool) -> Opener {
    let path = dir.path().join("approvals.db");
    Box::new(move |clock: &ManualClock| {
        Engine::builder()
            .clock(clock.clone())
            .confirm_starts(confirm)
            .store(SqliteStore::open(&path).unwrap())
            .build()
            .unwrap()
    })
}

/// Engines over a fresh PostgreSQL database, or `None` (the test skips).
#[cfg(feature = "postgres")]
fn over_postgres(test: &str, confirm: bool) -> Option<Opener> {
    use grantwheel::store::PostgresStore;
    let url = pg::fresh_database(&pg::url(test)?);
    Some(Box::new(move |clock: &ManualClock| {
        // The manual clock is far from the server's: the skew guard off.
        let far = Duration::days(36_500);
        Engine::builder()
            .clock(clock.clone())
            .clock_skew(far, far)
            .confirm_starts(confirm)
            .store(PostgresStore::connect(&url).unwrap())
            .build()
            .unwrap()
    }))
}

#[test]
fn approvals_over_memory() {
    behaviours(&over_memory(false));
}

#[cfg(feature = "sqlite")]
#[test]
fn approvals_over_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    behaviours(&over_sqlite(&dir, false));
}

#[cfg(feature = "postgres")]
#[test]
fn approvals_over_postgres() {
    if let Some(open) = over_postgres("approvals_over_postgres", false) {
        behaviours(&open);
    }
}

/// The policy sees the source and the record kind.
#[test]
fn rules_pick_by_source_and_kind() {
    let clock = ManualClock::new(t0());
    let engine = Engine::builder().clock(clock.clone()).build().unwrap();
    let sharing = Sharing::builder(engine)
        .approvals(
            ApprovalRules {
                sources: vec![SourceKind::Api],
                kinds: vec![EntityKind::OPPORTUNITY],
                ..ApprovalRules::default()
            },
            Duration::hours(1),
        )
        .build()
        .unwrap();
    let share = |e: EntityId| Command::Share(ShareRequest::new(user(1), e, Level::Read));
    let direct = sharing.run(Submission::direct(share(EntityId::lead(1))));
    assert_eq!(direct.status, RequestStatus::Completed);
    let api = sharing.run(Submission::api(share(EntityId::lead(2))));
    assert_eq!(api.status, RequestStatus::Processing);
    let opp = sharing.run(Submission::direct(share(EntityId::opportunity(3))));
    assert_eq!(opp.status, RequestStatus::Processing);
    let record = sharing.request(&api.request).unwrap().unwrap();
    assert_eq!(record.source, Source::Api);
    assert!(record.approval.unwrap().why.contains("the API"));
    // A grantee may deny their own share (they decline it).
    let out = sharing.deny(&opp.request, user(1), None).unwrap();
    assert_eq!(failure(&out.status).0, FailureKind::Denied);
}

/// The grantor a share was asked on the authority of may not approve it.
#[test]
fn a_grantor_may_not_approve_their_own_delegation() {
    let clock = ManualClock::new(t0());
    let engine = Engine::builder().clock(clock.clone()).build().unwrap();
    let sharing = Sharing::builder(engine)
        .approvals(rules(), Duration::hours(1))
        .build()
        .unwrap();
    let grantor = user(9);
    let lead = EntityId::lead(9);
    sharing.share(ShareRequest::new(grantor, lead, Level::Edit).duration(Duration::days(30)));
    let asked = sharing.run(
        Submission::direct(Command::Share(
            ShareRequest::new(user(10), lead, Level::Edit).duration(Duration::days(1)),
        ))
        .granted_by(grantor),
    );
    // The grantor's own share was held too (edit): approve it first.
    let own = sharing.awaiting_approval(10).unwrap();
    assert_eq!(own.len(), 2);
    for r in &own {
        if r.request != asked.request {
            sharing.approve(&r.request, BOSS, None).unwrap();
        }
    }
    assert_eq!(
        sharing.approve(&asked.request, grantor, None).unwrap_err(),
        ApprovalError::OwnShare { approver: grantor }
    );
    let out = sharing.approve(&asked.request, BOSS, None).unwrap();
    assert_eq!(out.status, RequestStatus::Completed, "{out:?}");
    let record = sharing.request(&asked.request).unwrap().unwrap();
    assert_eq!(record.granted_by, Some(grantor));
}

/// Re-validation at start, on an engine that confirms starts: the hooks
/// are asked again when a scheduled share's start comes; a refusal ends the
/// grant with the reason in its record, and nothing is seen before the
/// check.
fn revalidation(open: &Opener) {
    use grantwheel::requests::GrantorPolicy;
    struct Nobody;
    impl GrantorPolicy for Nobody {
        fn is_privileged(&self, _: &UserId, _: &EntityId) -> bool {
            false
        }
    }
    let clock = ManualClock::new(t0());
    let resolver = Switch::default();
    let layer = |engine: Engine| {
        Sharing::builder(engine)
            .approvals(rules(), Duration::days(2))
            .resolver(resolver.clone())
            .grantor_policy(Nobody)
            .build()
            .unwrap()
    };
    let sharing = layer(open(&clock));
    assert!(sharing.engine().confirms_starts());
    let lead = |i: u64| EntityId::lead(100 + i);
    let monday = t0() + Duration::days(7);
    let read = |u: u128, e: u64| {
        ShareRequest::new(user(u), lead(e), Level::Read)
            .start(Start::At(monday))
            .duration(Duration::hours(8))
    };
    // A grantor who holds the lead for the month delegates a week ahead.
    let grantor = user(20);
    let own = sharing
        .share(ShareRequest::new(grantor, lead(1), Level::Read).duration(Duration::days(30)));
    assert_eq!(own.status, RequestStatus::Completed);
    let delegated = sharing.run(
        grantwheel::requests::Submission::direct(Command::Share(read(21, 1))).granted_by(grantor),
    );
    assert_eq!(delegated.status, RequestStatus::Completed, "{delegated:?}");
    let plain = sharing.share(read(22, 2));
    sharing.share(read(23, 3));
    // Approved for next week, then the grantee loses their standing.
    let asked = sharing.share(
        ShareRequest::new(user(24), lead(4), Level::Edit)
            .start(Start::At(monday))
            .duration(Duration::hours(8)),
    );
    sharing
        .approve(&asked.request, BOSS, Some("next week"))
        .unwrap();
    // The grantor's own access ends before Monday.
    sharing.revoke(grantwheel::requests::RevokeRequest {
        user: grantor,
        entity: lead(1),
        context: Context::Direct,
        level: Level::Read,
    });

    // The start comes; nothing is seen before the check, and a restart
    // keeps them held.
    clock.set(monday);
    sharing.engine().advance();
    for u in 21..=24u64 {
        let who = user(u128::from(u));
        assert!(
            !sharing.engine().can_read(&who, &lead(u - 20)),
            "user {u} before the check"
        );
    }
    assert_eq!(sharing.engine().due_starts().len(), 4);
    drop(sharing);
    let sharing = layer(open(&clock));
    assert_eq!(
        sharing.engine().due_starts().len(),
        4,
        "held across a restart"
    );
    // The grantees lose their standing (the resolver refuses them all
    // now); the grantor's own access is gone too.
    resolver.0.store(true, Ordering::SeqCst);
    let checked = sharing.check_starts().unwrap();
    assert_eq!(checked, 4);
    for u in 21..=24u64 {
        let who = user(u128::from(u));
        assert!(
            !sharing.engine().can_read(&who, &lead(u - 20)),
            "user {u} refused"
        );
    }
    let record = sharing.request(&plain.request).unwrap().unwrap();
    assert!(record.end_reason.unwrap().contains("context refused"));
    assert!(sharing.engine().due_starts().is_empty());
    let record = sharing.request(&delegated.request).unwrap().unwrap();
    let why = record.end_reason.clone().unwrap();
    assert!(
        why.contains("grantor") && why.contains("no longer holds"),
        "{why}"
    );
    assert!(record.revoked.is_some());
    let record = sharing.request(&asked.request).unwrap().unwrap();
    assert!(record
        .end_reason
        .unwrap()
        .contains("the grantee left the team"));
    assert!(
        record.approval.unwrap().decision.unwrap().approved,
        "the approval is kept"
    );
    // Who had access on Monday: nobody.
    assert!(sharing
        .access_at(&lead(2), monday + Duration::hours(1))
        .unwrap()
        .is_empty());

    // With the hooks satisfied, a held start is confirmed: seen from then
    // until its end, counted from its start.
    resolver.0.store(false, Ordering::SeqCst);
    let tuesday = monday + Duration::days(1);
    let ok = sharing.share(
        ShareRequest::new(user(25), lead(5), Level::Read)
            .start(Start::At(tuesday))
            .duration(Duration::hours(8)),
    );
    clock.set(tuesday + Duration::minutes(5));
    sharing.engine().advance();
    assert!(!sharing.engine().can_read(&user(25), &lead(5)));
    assert_eq!(sharing.check_starts().unwrap(), 1);
    assert!(sharing.engine().can_read(&user(25), &lead(5)));
    let live = sharing.engine().pair_grants(&user(25), &lead(5));
    assert_eq!(live[0].expires_at, tuesday + Duration::hours(8));
    let record = sharing.request(&ok.request).unwrap().unwrap();
    assert!(record.end_reason.is_none() && record.revoked.is_none());
    assert_eq!(
        sharing
            .access_at(&lead(5), tuesday + Duration::hours(1))
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn revalidation_over_memory() {
    revalidation(&over_memory(true));
}

#[cfg(feature = "sqlite")]
#[test]
fn revalidation_over_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    revalidation(&over_sqlite(&dir, true));
}

#[cfg(feature = "postgres")]
#[test]
fn revalidation_over_postgres() {
    if let Some(open) = over_postgres("revalidation_over_postgres", true) {
        revalidation(&open);
    }
}

/// Fail closed (DESIGN promise 7) for approvals: a hold or an approval the
/// store fails to write grants nothing; the approval leaves the request
/// waiting, and goes through once the store heals.
#[test]
fn a_decision_the_store_fails_grants_nothing_and_leaves_the_request_waiting() {
    use grantwheel::store::{Fault, FaultyStore};
    let (store, faults) = FaultyStore::new(MemoryStore::new());
    let clock = ManualClock::new(t0());
    let engine = Engine::builder()
        .clock(clock.clone())
        .store(store)
        .build()
        .unwrap();
    let sharing = layer(engine, &Switch::default());
    let (u, e) = (user(60), EntityId::lead(60));
    // The hold itself fails: the request fails, nothing waits.
    faults.set(Fault::Once(faults.ops() + 1));
    let lost = sharing.share(ShareRequest::new(u, e, Level::Edit));
    assert_eq!(failure(&lost.status).0, FailureKind::Store);
    assert!(sharing.awaiting_approval(10).unwrap().is_empty());
    faults.set(Fault::None);
    let asked = sharing.share(ShareRequest::new(u, e, Level::Edit));
    assert_eq!(asked.status, RequestStatus::Processing);
    faults.set(Fault::From(faults.ops() + 1));
    match sharing.approve(&asked.request, BOSS, None) {
        Err(ApprovalError::Store(_)) => {}
        other => panic!("expected a store error, got {other:?}"),
    }
    assert!(
        !sharing.engine().can_read(&u, &e),
        "no grant from a failed approval"
    );
    faults.set(Fault::None);
    assert!(sharing
        .request(&asked.request)
        .unwrap()
        .unwrap()
        .awaiting_approval());
    let done = sharing.approve(&asked.request, BOSS, None).unwrap();
    assert_eq!(done.status, RequestStatus::Completed);
    assert!(sharing.engine().can_edit(&u, &e));
}
