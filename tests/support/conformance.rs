//! The store conformance suite: what every [`Store`] must do, as one set
//! of checks parameterised by a [`Harness`] that makes and reopens a
//! store. The memory and SQLite stores run it (`tests/store_conformance.rs`);
//! every new store runs the same checks.
//!
//! Each check builds its data through batches, as an engine would, and
//! compares the store's answers with a plain model (a list of records and
//! a map of grants) filtered the obvious way.
//!
//! Include it with `#[path = "support/conformance.rs"] mod conformance;`
//! next to `common`.

#![allow(dead_code, reason = "each test binary uses a part of it")]

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use grantwheel::requests::{
    Cursor, EndedBy, FailureKind, HistoryQuery, HistoryRecord, RequestId, RequestKind,
    RequestStatus, RuleId, Source, SourceKind, StatusKind,
};
use grantwheel::store::{Batch, Change, EndCause, GrantFilter, Store, StoreReader};
use grantwheel::{EntityId, Grant, GrantId, Level};

use crate::common::{by_serial, context, entity, start, user};

/// Makes stores for the suite.
pub trait Harness {
    /// The store under test.
    type S: Store + 'static;
    /// A new, empty store.
    fn fresh(&mut self) -> Self::S;
    /// Close `store` and open it again over the same data (a restart).
    fn reopen(&mut self, store: Self::S) -> Self::S;
}

/// Run every check against stores made by `h`.
pub fn run_all<H: Harness>(h: &mut H) {
    batches_apply_in_order_and_replays_are_ignored(h);
    changes_are_idempotent(h);
    records_are_found_by_id_and_key_and_keep_their_place(h);
    ends_reach_the_share_record(h);
    every_filter_pages_as_the_model(h);
    access_at_matches_the_model(h);
    processing_and_open_shares_of_a_rule(h);
    pruning_goes_in_bounded_steps_and_forgets_everywhere(h);
    live_grants_by_each_filter(h);
    everything_survives_a_restart(h);
    paging_returns_each_record_once_under_concurrent_inserts(h);
}

/// Writes batches with increasing sequence numbers.
pub struct Writer<S> {
    pub store: S,
    pub seq: u64,
}

impl<S: Store> Writer<S> {
    pub fn new(store: S) -> Self {
        Writer { store, seq: 0 }
    }

    pub fn apply(&mut self, changes: Vec<Change>) {
        self.seq += 1;
        self.store
            .apply(&Batch {
                seq: self.seq,
                next_serial: self.seq * 100,
                clock: at(self.seq as i64),
                changes: &changes,
            })
            .unwrap();
    }

    pub fn reader(&self) -> Arc<dyn StoreReader> {
        self.store.reader().unwrap()
    }
}

/// `start()` plus `m` minutes.
pub fn at(m: i64) -> DateTime<Utc> {
    start() + Duration::minutes(m)
}

/// A share record of request number `i` (ids differ per call).
pub fn share_record(i: usize, e: usize, u: usize, status: RequestStatus) -> HistoryRecord {
    let completed = status != RequestStatus::Processing;
    let grant = (status == RequestStatus::Completed).then(|| GrantId {
        user: user(u),
        entity: entity(e),
        context: context(i % 3),
        serial: 1000 + i as u64,
    });
    HistoryRecord {
        request: RequestId::random(),
        kind: RequestKind::Share,
        entity: entity(e),
        user: user(u),
        context: context(i % 3),
        level: if i.is_multiple_of(2) {
            Level::Read
        } else {
            Level::Edit
        },
        duration: Some(Duration::minutes(60 + i as i64)),
        expires_at: grant.map(|_| at(i as i64 + 60)),
        source: match i % 4 {
            0 => Source::Api,
            1 => Source::Automation { rule: RuleId(1) },
            2 => Source::Automation { rule: RuleId(2) },
            _ => Source::Direct,
        },
        status,
        grant,
        created_at: at(i as i64),
        completed_at: completed.then(|| at(i as i64)),
        revoked: None,
        expired_at: None,
        idempotency_key: i.is_multiple_of(5).then(|| format!("key-{i}")),
        starts_at: None,
        granted_by: None,
        approval: None,
        end_reason: None,
    }
}

fn status_of(i: usize) -> RequestStatus {
    match i % 7 {
        0 => RequestStatus::Processing,
        1 | 4 => RequestStatus::Failed {
            kind: FailureKind::ContextRefused,
            reason: format!("refused {i}"),
        },
        _ => RequestStatus::Completed,
    }
}

fn grant(serial: u64, u: usize, e: usize, c: usize, expires: i64) -> Grant {
    Grant {
        id: GrantId {
            user: user(u),
            entity: entity(e),
            context: context(c),
            serial,
        },
        level: if serial.is_multiple_of(2) {
            Level::Read
        } else {
            Level::Edit
        },
        expires_at: at(expires),
        starts_at: None,
    }
}

/// Every page of `entity` under `q`, following cursors.
pub fn all_pages(r: &dyn StoreReader, e: &EntityId, q: &HistoryQuery) -> Vec<HistoryRecord> {
    let mut out = Vec::new();
    let mut q = q.clone();
    for _ in 0..10_000 {
        let page = r.history(e, &q).unwrap();
        assert!(page.records.len() <= q.limit);
        out.extend(page.records);
        match page.next {
            Some(c) => q.after = Some(c),
            None => return out,
        }
    }
    panic!("paging never ended");
}

fn batches_apply_in_order_and_replays_are_ignored<H: Harness>(h: &mut H) {
    let mut s = h.fresh();
    let meta = s.meta().unwrap();
    assert_eq!(meta.last_seq, 0, "an empty store");
    let g1 = grant(1, 1, 1, 0, 100);
    let g2 = grant(2, 2, 1, 1, 200);
    let b = |seq, next_serial, clock, changes: &[Change]| {
        let changes = changes.to_vec();
        (seq, next_serial, clock, changes)
    };
    for (seq, next_serial, clock, changes) in [
        b(1, 10, at(5), &[Change::Put(g1)]),
        b(3, 20, at(2), &[Change::Put(g2)]),
        // Replays and stale batches change nothing.
        b(
            3,
            99,
            at(50),
            &[Change::End {
                grant: by_serial(2),
                at: at(3),
                cause: EndCause::Revoked,
            }],
        ),
        b(
            2,
            99,
            at(50),
            &[Change::End {
                grant: by_serial(1),
                at: at(3),
                cause: EndCause::Revoked,
            }],
        ),
    ] {
        s.apply(&Batch {
            seq,
            next_serial,
            clock,
            changes: &changes,
        })
        .unwrap();
    }
    let meta = s.meta().unwrap();
    assert_eq!(meta.last_seq, 3);
    assert_eq!(meta.next_serial, 20);
    assert_eq!(meta.clock, Some(at(5)), "the latest clock, not the last");
    let mut grants = Vec::new();
    s.grants(&mut |g| grants.push(g)).unwrap();
    grants.sort_by_key(|g| g.id.serial);
    assert_eq!(grants, vec![g1, g2]);
}

fn changes_are_idempotent<H: Harness>(h: &mut H) {
    let mut w = Writer::new(h.fresh());
    let g = grant(7, 1, 1, 0, 100);
    let r = share_record(1, 1, 1, RequestStatus::Completed);
    let rule = grantwheel::requests::automation::Rule::new(
        "share new opportunities",
        grantwheel::requests::automation::Trigger::EntityCreated,
        grantwheel::EntityKind::OPPORTUNITY,
        grantwheel::requests::automation::ShareAction {
            with: grantwheel::requests::automation::ShareWith::User(user(1)),
            level: Level::Read,
            duration_minutes: Some(30),
        },
    );
    for _ in 0..2 {
        w.apply(vec![
            Change::Put(g),
            Change::Put(g),
            Change::Record(Box::new(r.clone())),
            Change::Record(Box::new(r.clone())),
            Change::End {
                grant: by_serial(999),
                at: at(1),
                cause: EndCause::Expired,
            },
            Change::EndedBy {
                serial: 999,
                request: RequestId::random(),
            },
            Change::Forget(RequestId::random()),
            Change::Rule {
                id: RuleId(3),
                rule: Box::new(rule.clone()),
            },
            Change::RemoveRule(RuleId(4)),
        ]);
    }
    let mut grants = Vec::new();
    w.store.grants(&mut |g| grants.push(g)).unwrap();
    assert_eq!(grants, vec![g]);
    let page = w
        .reader()
        .history(&r.entity, &HistoryQuery::default())
        .unwrap();
    assert_eq!(page.records, vec![r.clone()], "one record, written twice");
    assert_eq!(w.store.rules().unwrap(), vec![(RuleId(3), rule)]);
    w.apply(vec![
        Change::RemoveRule(RuleId(3)),
        Change::RemoveRule(RuleId(3)),
    ]);
    assert!(w.store.rules().unwrap().is_empty());
}

fn records_are_found_by_id_and_key_and_keep_their_place<H: Harness>(h: &mut H) {
    let mut w = Writer::new(h.fresh());
    let a = share_record(0, 1, 1, RequestStatus::Processing);
    let b = share_record(1, 1, 2, RequestStatus::Completed);
    w.apply(vec![Change::Record(Box::new(a.clone()))]);
    w.apply(vec![Change::Record(Box::new(b.clone()))]);
    let r = w.reader();
    assert_eq!(r.request(&a.request).unwrap(), Some(a.clone()));
    assert_eq!(r.request(&RequestId::random()).unwrap(), None);
    assert_eq!(r.request_by_key("key-0").unwrap(), Some(a.clone()));
    assert_eq!(r.request_by_key("key-1").unwrap(), None);
    // `a` finishes after `b` was written: it keeps its place (older).
    let mut done = a.clone();
    done.status = RequestStatus::Completed;
    done.completed_at = Some(at(3));
    done.grant = Some(GrantId {
        user: a.user,
        entity: a.entity,
        context: a.context,
        serial: 55,
    });
    done.expires_at = Some(at(90));
    w.apply(vec![Change::Record(Box::new(done.clone()))]);
    let page = w
        .reader()
        .history(&a.entity, &HistoryQuery::default())
        .unwrap();
    assert_eq!(
        page.records,
        vec![b, done.clone()],
        "newest first, by first write"
    );
    assert_eq!(
        w.reader().processing(10).unwrap(),
        Vec::<HistoryRecord>::new(),
        "no longer processing"
    );
    assert_eq!(w.reader().request_by_key("key-0").unwrap(), Some(done));
}

fn ends_reach_the_share_record<H: Harness>(h: &mut H) {
    let mut w = Writer::new(h.fresh());
    let mut records = Vec::new();
    for i in 0..5 {
        let r = share_record(7 * i + 2, 1, i, RequestStatus::Completed);
        records.push(r.clone());
        w.apply(vec![Change::Record(Box::new(r))]);
    }
    let serial = |i: usize| records[i].grant.unwrap().serial;
    let by = RequestId::random();
    let other = RequestId::random();
    w.apply(vec![
        Change::End {
            grant: by_serial(serial(0)),
            at: at(10),
            cause: EndCause::Expired,
        },
        Change::End {
            grant: by_serial(serial(1)),
            at: at(11),
            cause: EndCause::Replaced,
        },
        Change::End {
            grant: by_serial(serial(2)),
            at: at(12),
            cause: EndCause::Revoked,
        },
        // The request is named after the end (the order within a batch).
        Change::EndedBy {
            serial: serial(2),
            request: by,
        },
        // ... or before it.
        Change::EndedBy {
            serial: serial(3),
            request: other,
        },
        Change::End {
            grant: by_serial(serial(3)),
            at: at(13),
            cause: EndCause::Revoked,
        },
        // A second end changes nothing.
        Change::End {
            grant: by_serial(serial(1)),
            at: at(20),
            cause: EndCause::Revoked,
        },
    ]);
    let r = w.reader();
    let get = |i: usize| r.request(&records[i].request).unwrap().unwrap();
    // An expiry is not recorded: `expires_at` says it, for readers to
    // compare with their time.
    assert_eq!(get(0).ended_at(), None);
    assert_eq!(get(0).expires_at, records[0].expires_at);
    assert_eq!(get(1).revoked, Some((at(11), EndedBy::Replaced)));
    assert_eq!(get(2).revoked, Some((at(12), EndedBy::Request(by))));
    assert_eq!(get(3).revoked, Some((at(13), EndedBy::Request(other))));
    assert_eq!(get(4).ended_at(), None);
    // A record rewritten without an end keeps the end the store recorded.
    let rewritten = records[1].clone();
    w.apply(vec![Change::Record(Box::new(rewritten))]);
    assert_eq!(
        w.reader()
            .request(&records[1].request)
            .unwrap()
            .unwrap()
            .revoked,
        Some((at(11), EndedBy::Replaced))
    );
    // An end written as part of a record (an expiry, say) is kept.
    let mut expired = records[4].clone();
    expired.expired_at = expired.expires_at;
    w.apply(vec![Change::Record(Box::new(expired.clone()))]);
    assert_eq!(w.reader().request(&expired.request).unwrap(), Some(expired));
}

/// A corpus over two entities with every kind of status and source.
fn corpus<S: Store>(w: &mut Writer<S>, n: usize) -> Vec<HistoryRecord> {
    let mut all = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(17) {
        let mut changes = Vec::new();
        for &i in chunk {
            let r = share_record(i, i % 2, i % 5, status_of(i));
            changes.push(Change::Record(Box::new(r.clone())));
            all.push(r);
        }
        w.apply(changes);
    }
    all
}

fn every_filter_pages_as_the_model<H: Harness>(h: &mut H) {
    let mut w = Writer::new(h.fresh());
    let all = corpus(&mut w, 300);
    let r = w.reader();
    let users = [None, Some(user(1)), Some(user(4))];
    let statuses = [
        None,
        Some(StatusKind::Processing),
        Some(StatusKind::Completed),
        Some(StatusKind::Failed),
    ];
    let sources = [
        None,
        Some(Source::Api),
        Some(Source::Direct),
        Some(Source::Automation { rule: RuleId(2) }),
    ];
    let kinds = [None, Some(SourceKind::Automation), Some(SourceKind::Api)];
    let ranges = [None, Some((at(40), at(200)))];
    let mut checked = 0;
    for e in [entity(0), entity(1), entity(2)] {
        for u in users {
            for st in statuses {
                for src in sources {
                    for k in kinds {
                        for range in ranges {
                            let mut q = HistoryQuery::default().limit(7);
                            q.user = u;
                            q.status = st;
                            q.source = src;
                            q.source_kind = k;
                            if let Some((f, t)) = range {
                                q = q.between(f, t);
                            }
                            let want: Vec<HistoryRecord> = all
                                .iter()
                                .rev()
                                .filter(|r| r.entity == e && q.keeps(r))
                                .cloned()
                                .collect();
                            let got = all_pages(r.as_ref(), &e, &q);
                            assert_eq!(got, want, "entity {e}, query {q:?}");
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(checked, 3 * 3 * 4 * 4 * 3 * 2);
    // A page as large as the rest has no next cursor.
    let q = HistoryQuery::default().limit(1000);
    let page = r.history(&entity(0), &q).unwrap();
    assert_eq!(page.records.len(), 150);
    assert_eq!(page.next, None);
    // A cursor below everything gives an empty page.
    let page = r
        .history(&entity(0), &q.clone().after(Cursor::before(0)))
        .unwrap();
    assert!(page.records.is_empty());
}

fn access_at_matches_the_model<H: Harness>(h: &mut H) {
    let mut w = Writer::new(h.fresh());
    let mut all = corpus(&mut w, 120);
    // End some grants: revoked early, expired, replaced.
    let mut ends = Vec::new();
    for (i, r) in all.iter_mut().enumerate() {
        let Some(g) = r.grant else { continue };
        match i % 3 {
            0 => {
                ends.push(Change::End {
                    grant: by_serial(g.serial),
                    at: at(i as i64 + 20),
                    cause: EndCause::Revoked,
                });
                r.revoked = Some((at(i as i64 + 20), EndedBy::Engine));
            }
            1 => {
                // Expiries are not recorded; the model keeps none either.
                ends.push(Change::End {
                    grant: by_serial(g.serial),
                    at: r.expires_at.unwrap(),
                    cause: EndCause::Expired,
                });
            }
            _ => {}
        }
    }
    w.apply(ends);
    let reader = w.reader();
    for e in [entity(0), entity(1)] {
        for m in (0..200).step_by(7) {
            let t = at(m);
            let want: Vec<HistoryRecord> = all
                .iter()
                .rev()
                .filter(|r| r.entity == e && r.gave_access_at(t))
                .cloned()
                .collect();
            assert_eq!(reader.access_at(&e, t).unwrap(), want, "{e} at {t}");
        }
    }
}

fn processing_and_open_shares_of_a_rule<H: Harness>(h: &mut H) {
    let mut w = Writer::new(h.fresh());
    let all = corpus(&mut w, 100);
    let processing: Vec<HistoryRecord> = all
        .iter()
        .filter(|r| r.status == RequestStatus::Processing)
        .cloned()
        .collect();
    assert!(processing.len() > 3);
    if w.store.shared().is_some() {
        // A shared store answers only for requests whose writing instance
        // is gone: while it runs, its queue is its own.
        assert_eq!(w.reader().processing(1000).unwrap(), []);
        let seq = w.seq;
        w = Writer {
            store: h.reopen(w.store),
            seq,
        };
    }
    let r = w.reader();
    assert_eq!(r.processing(1000).unwrap(), processing, "oldest first");
    assert_eq!(r.processing(3).unwrap(), processing[..3].to_vec());
    // End one of rule 1's grants: it is no longer open.
    let rule1: Vec<&HistoryRecord> = all
        .iter()
        .filter(|r| {
            r.source == (Source::Automation { rule: RuleId(1) })
                && r.status == RequestStatus::Completed
        })
        .collect();
    let ended = rule1[0].grant.unwrap().serial;
    w.apply(vec![Change::End {
        grant: by_serial(ended),
        at: at(5),
        cause: EndCause::Revoked,
    }]);
    let want: Vec<RequestId> = rule1[1..].iter().map(|r| r.request).collect();
    let got: Vec<RequestId> = w
        .reader()
        .open_shares_of_rule(RuleId(1), at(0))
        .unwrap()
        .iter()
        .map(|r| r.request)
        .collect();
    assert_eq!(got, want);
    assert!(w
        .reader()
        .open_shares_of_rule(RuleId(9), at(0))
        .unwrap()
        .is_empty());
    // Past their expiry, none is open.
    assert!(w
        .reader()
        .open_shares_of_rule(RuleId(1), at(10_000))
        .unwrap()
        .is_empty());
}

fn pruning_goes_in_bounded_steps_and_forgets_everywhere<H: Harness>(h: &mut H) {
    let mut w = Writer::new(h.fresh());
    let all = corpus(&mut w, 140);
    // Revoke every other completed share at its creation + 30 minutes;
    // the others end at their expiry.
    let revoked: HashSet<RequestId> = all
        .iter()
        .filter(|r| r.grant.is_some())
        .step_by(2)
        .map(|r| r.request)
        .collect();
    let ends = all
        .iter()
        .filter(|r| revoked.contains(&r.request))
        .filter_map(|r| r.grant.map(|g| (g, r.created_at)))
        .map(|(g, t)| Change::End {
            grant: by_serial(g.serial),
            at: t + Duration::minutes(30),
            cause: EndCause::Revoked,
        })
        .collect();
    w.apply(ends);
    let horizon = at(100);
    // Done before the horizon: failed ones finished before it, shares
    // whose grant ended (revoked, or at its expiry) before it; never those
    // still processing.
    let done = |r: &HistoryRecord| match (&r.status, r.grant) {
        (RequestStatus::Processing, _) => None,
        (RequestStatus::Completed, Some(_)) if revoked.contains(&r.request) => {
            Some(r.created_at + Duration::minutes(30))
        }
        (RequestStatus::Completed, Some(_)) => r.expires_at,
        _ => r.completed_at,
    };
    let mut want: Vec<(DateTime<Utc>, RequestId)> = all
        .iter()
        .filter_map(|r| done(r).filter(|t| *t < horizon).map(|t| (t, r.request)))
        .collect();
    want.sort_by_key(|(t, _)| *t);
    let mut pruned = Vec::new();
    loop {
        let step = w.reader().prunable(horizon, 9).unwrap();
        assert!(step.len() <= 9);
        if step.is_empty() {
            break;
        }
        pruned.extend(step.iter().copied());
        w.apply(step.into_iter().map(Change::Forget).collect());
    }
    let want_ids: HashSet<RequestId> = want.iter().map(|(_, id)| *id).collect();
    assert_eq!(pruned.len(), want_ids.len(), "each once");
    assert_eq!(pruned.iter().copied().collect::<HashSet<_>>(), want_ids);
    let r = w.reader();
    for rec in &all {
        let gone = want_ids.contains(&rec.request);
        assert_eq!(r.request(&rec.request).unwrap().is_none(), gone);
        if let Some(key) = &rec.idempotency_key {
            assert_eq!(r.request_by_key(key).unwrap().is_none(), gone);
        }
    }
    for e in [entity(0), entity(1)] {
        let left = all_pages(r.as_ref(), &e, &HistoryQuery::default());
        let want: Vec<RequestId> = all
            .iter()
            .rev()
            .filter(|x| x.entity == e && !want_ids.contains(&x.request))
            .map(|x| x.request)
            .collect();
        assert_eq!(left.iter().map(|x| x.request).collect::<Vec<_>>(), want);
    }
}

fn live_grants_by_each_filter<H: Harness>(h: &mut H) {
    let mut w = Writer::new(h.fresh());
    let mut grants = BTreeMap::new();
    let mut changes = Vec::new();
    for serial in 0..200u64 {
        let s = serial as usize;
        let g = grant(serial, s % 7, s % 5, s % 4, (s as i64 * 37) % 500);
        grants.insert(serial, g);
        changes.push(Change::Put(g));
    }
    w.apply(changes);
    // Ended grants are gone; a changed expiry is seen.
    let mut changes = Vec::new();
    for serial in (0..200u64).step_by(9) {
        grants.remove(&serial);
        changes.push(Change::End {
            grant: by_serial(serial),
            at: at(1),
            cause: EndCause::Revoked,
        });
    }
    let mut moved = grants[&10];
    moved.expires_at = at(444);
    grants.insert(10, moved);
    changes.push(Change::Put(moved));
    w.apply(changes);
    let r = w.reader();
    let now = at(100);
    let mut filters = Vec::new();
    for u in 0..8 {
        filters.push(GrantFilter::User(user(u)));
    }
    for e in 0..6 {
        filters.push(GrantFilter::Entity(entity(e)));
    }
    for c in 0..5 {
        filters.push(GrantFilter::Context(context(c)));
    }
    for m in [100, 150, 300, 1000] {
        filters.push(GrantFilter::ExpiringBy(at(m)));
    }
    for f in filters {
        let mut want: Vec<Grant> = grants
            .values()
            .filter(|g| g.expires_at > now)
            .filter(|g| match f {
                GrantFilter::User(u) => g.id.user == u,
                GrantFilter::Entity(e) => g.id.entity == e,
                GrantFilter::Context(c) => g.id.context == c,
                GrantFilter::ExpiringBy(t) => g.expires_at <= t,
            })
            .copied()
            .collect();
        want.sort_by_key(|g| (g.expires_at, g.id.serial));
        assert_eq!(r.live_grants(f, now).unwrap(), want, "{f:?}");
    }
}

fn everything_survives_a_restart<H: Harness>(h: &mut H) {
    let mut w = Writer::new(h.fresh());
    let all = corpus(&mut w, 60);
    let g = grant(5000, 1, 1, 1, 400);
    w.apply(vec![
        Change::Put(g),
        Change::End {
            grant: by_serial(all[2].grant.unwrap().serial),
            at: at(9),
            cause: EndCause::Replaced,
        },
    ]);
    let before: Vec<Vec<HistoryRecord>> = [entity(0), entity(1)]
        .iter()
        .map(|e| all_pages(w.reader().as_ref(), e, &HistoryQuery::default().limit(11)))
        .collect();
    let meta = w.store.meta().unwrap();
    let seq = w.seq;
    let store = h.reopen(w.store);
    let mut w = Writer { store, seq };
    assert_eq!(w.store.meta().unwrap(), meta);
    let after: Vec<Vec<HistoryRecord>> = [entity(0), entity(1)]
        .iter()
        .map(|e| all_pages(w.reader().as_ref(), e, &HistoryQuery::default().limit(11)))
        .collect();
    assert_eq!(before, after);
    assert_eq!(
        w.reader()
            .live_grants(GrantFilter::User(user(1)), at(0))
            .unwrap(),
        vec![g]
    );
    // Records written after the restart are newer than every one before.
    let new = share_record(999, 0, 1, RequestStatus::Completed);
    w.apply(vec![Change::Record(Box::new(new.clone()))]);
    let page = w
        .reader()
        .history(&entity(0), &HistoryQuery::default().limit(1))
        .unwrap();
    assert_eq!(page.records, vec![new]);
}

fn paging_returns_each_record_once_under_concurrent_inserts<H: Harness>(h: &mut H) {
    let mut w = Writer::new(h.fresh());
    let before = corpus(&mut w, 200);
    let reader = w.reader();
    let e = entity(0);
    let existing: HashSet<RequestId> = before
        .iter()
        .filter(|r| r.entity == e)
        .map(|r| r.request)
        .collect();
    let seen = std::thread::scope(|s| {
        let writer = s.spawn(move || {
            for i in 0..40 {
                let mut changes = Vec::new();
                for j in 0..5 {
                    let r = share_record(1000 + i * 5 + j, 0, j, status_of(i));
                    changes.push(Change::Record(Box::new(r)));
                }
                w.apply(changes);
                std::thread::yield_now();
            }
        });
        let mut seen = Vec::new();
        let mut q = HistoryQuery::default().limit(3);
        loop {
            let page = reader.history(&e, &q).unwrap();
            seen.extend(page.records.iter().map(|r| r.request));
            std::thread::yield_now();
            match page.next {
                Some(c) => q.after = Some(c),
                None => break,
            }
        }
        writer.join().unwrap();
        seen
    });
    let unique: HashSet<RequestId> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "no record twice");
    for id in &existing {
        assert!(unique.contains(id), "a record that existed was skipped");
    }
}
