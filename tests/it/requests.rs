//! The request layer end to end: the seeds' scenarios through the API's
//! JSON, request status, and the share history.

use chrono::{Duration, TimeZone, Utc};
use grantwheel::requests::wire::ItemResponse;
use grantwheel::requests::{
    EndedBy, FailureKind, HistoryQuery, RequestId, RequestKind, RequestStatus, RevokeRequest,
    ShareRequest, Sharing, Source,
};
use grantwheel::{Context, Engine, EntityId, EntityKind, EntityRef, Level, ManualClock, UserId};
use proptest::prelude::*;
use serde_json::{json, Value};

const USER: &str = "0203f172-8642-11e7-9bed-069b743e848f";
const ACTIVITY: &str = "f2dbf1d5-bbab-418b-bddc-4c92ecdef214";
const ACTIVITY_2: &str = "0b8e6f1c-2a2b-4c3d-8e9f-123456789abc";

fn setup() -> (ManualClock, Sharing) {
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0).unwrap());
    let engine = Engine::builder().clock(clock.clone()).build().unwrap();
    (clock, Sharing::new(engine))
}

fn body(items: Value) -> Vec<u8> {
    serde_json::to_vec(&items).unwrap()
}

fn lead_item(activity: &str, access: i64, minutes: Option<i64>) -> Value {
    let mut v = json!({
        "UserId": USER, "Entity": 1, "EntityType": 3, "EntityId": "869196",
        "ContextEntity": 1, "ContextEntityId": activity, "AccessType": access
    });
    if let Some(m) = minutes {
        v["DurationInMinutes"] = json!(m);
    }
    v
}

/// An error answer's type, message and request id.
fn error_of(r: &ItemResponse) -> (&str, &str, Option<&str>) {
    match r {
        ItemResponse::Error {
            exception_type,
            exception_message,
            request_id,
            ..
        } => (exception_type, exception_message, request_id.as_deref()),
        other => panic!("not an error: {other:?}"),
    }
}

fn id_of(r: &ItemResponse) -> RequestId {
    match r {
        ItemResponse::Success { message, .. } => message.id.parse().unwrap(),
        other => panic!("not a success: {other:?}"),
    }
}

#[test]
fn a_lead_shared_through_two_activities_then_revoked_in_one_then_expired() {
    let (clock, sharing) = setup();
    let user: UserId = USER.parse().unwrap();
    let lead = EntityId::lead(869196);

    // The seed's exact example: edit for 30 minutes through an activity.
    let first = sharing
        .api_share(&body(json!([lead_item(ACTIVITY, 2, Some(30))])))
        .unwrap();
    let first_id = id_of(&first[0]);
    assert_eq!(first_id.to_string().len(), 32);
    assert_eq!(
        sharing.status(&first_id).unwrap(),
        Some(RequestStatus::Completed)
    );
    assert!(sharing.engine().can_edit(&user, &lead));

    // Revoking in another activity's context fails and leaves the grant.
    let wrong = sharing
        .api_revoke(&body(json!([lead_item(ACTIVITY_2, 1, None)])))
        .unwrap();
    assert!(matches!(wrong[0], ItemResponse::Error { .. }));
    assert!(sharing.engine().can_edit(&user, &lead));

    // A second share through the second activity, read-only, default 90 days.
    let second = sharing
        .api_share(&body(json!([lead_item(ACTIVITY_2, 1, None)])))
        .unwrap();
    let second_id = id_of(&second[0]);
    let record = sharing.request(&second_id).unwrap().unwrap();
    assert_eq!(
        record.expires_at,
        Some(record.created_at + Duration::days(90))
    );

    // Revoking the first activity's grant leaves the second.
    let revoke = sharing
        .api_revoke(&body(json!([lead_item(ACTIVITY, 2, None)])))
        .unwrap();
    let revoke_id = id_of(&revoke[0]);
    assert!(!sharing.engine().can_edit(&user, &lead));
    assert!(sharing.engine().can_read(&user, &lead));
    let ended = sharing.request(&first_id).unwrap().unwrap();
    assert_eq!(
        ended.revoked.map(|(_, by)| by),
        Some(EndedBy::Request(revoke_id))
    );

    // The second grant expires.
    clock.advance(Duration::days(91));
    assert!(!sharing.engine().can_read(&user, &lead));
    sharing.engine().advance();
    assert!(sharing
        .request(&second_id)
        .unwrap()
        .unwrap()
        .expired_at
        .is_some());

    // History: newest first, filterable by user, status and source.
    let all = sharing
        .history(&lead, &HistoryQuery::default())
        .unwrap()
        .records;
    let ids: Vec<RequestId> = all.iter().map(|r| r.request).collect();
    assert_eq!(ids.len(), 4);
    assert_eq!(ids[0], revoke_id);
    assert_eq!(ids[3], first_id);
    let failed = sharing
        .history(
            &lead,
            &HistoryQuery::default().status(grantwheel::requests::StatusKind::Failed),
        )
        .unwrap()
        .records;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].kind, RequestKind::Revoke);
    let by_user = sharing
        .history(&lead, &HistoryQuery::default().user(user))
        .unwrap()
        .records;
    assert_eq!(by_user.len(), 4);
    let other = sharing
        .history(&lead, &HistoryQuery::default().user(UserId::from_u128(9)))
        .unwrap()
        .records;
    assert!(other.is_empty());
    let direct = sharing
        .history(&lead, &HistoryQuery::default().source(Source::Direct))
        .unwrap();
    assert!(direct.records.is_empty());

    // Who had access at a given instant.
    let start = sharing.request(&first_id).unwrap().unwrap().created_at;
    let then = sharing
        .access_at(&lead, start + Duration::minutes(1))
        .unwrap();
    assert_eq!(then.len(), 1);
    let later = sharing.access_at(&lead, start + Duration::days(2)).unwrap();
    assert_eq!(
        later.iter().map(|r| r.request).collect::<Vec<_>>(),
        vec![second_id]
    );
}

#[test]
fn an_opportunity_needs_no_context() {
    let (_, sharing) = setup();
    let item =
        json!({"UserId": USER, "Entity": 5, "EntityType": 3, "EntityId": 4411, "AccessType": 1});
    let r = sharing.api_share(&body(json!([item]))).unwrap();
    id_of(&r[0]);
    assert!(sharing
        .engine()
        .can_read(&USER.parse().unwrap(), &EntityId::opportunity(4411)));
}

#[test]
fn status_answers_in_the_status_api_shape() {
    let (_, sharing) = setup();
    let ok = sharing.share(ShareRequest::new(
        UserId::from_u128(1),
        EntityId::lead(1),
        Level::Read,
    ));
    let v = serde_json::to_value(sharing.status_response(&ok.request)).unwrap();
    assert_eq!(
        v,
        json!({"Status": "Success", "Message": {"ResponseText": "Request processed successfully."},
            "ShareStatus": 6, "ErrorMessage": null, "State": "Completed"})
    );
    let failed = sharing.share(
        ShareRequest::new(UserId::from_u128(1), EntityId::lead(2), Level::Read)
            .duration(Duration::days(100_000)),
    );
    let v = serde_json::to_value(sharing.status_response(&failed.request)).unwrap();
    assert_eq!(v["ShareStatus"], json!(7));
    assert_eq!(v["State"], json!("Failed"));
    assert!(v["ErrorMessage"].as_str().unwrap().contains("duration"));
    let v = serde_json::to_value(sharing.status_response(&RequestId::random())).unwrap();
    assert_eq!(v["Status"], json!("Error"));
    assert_eq!(
        (&v["ShareStatus"], &v["State"]),
        (&json!(null), &json!("NotFound"))
    );
}

#[test]
fn history_pages_with_a_cursor_and_prunes_after_retention() {
    let (clock, sharing) = setup();
    let lead = EntityId::lead(5);
    for u in 0..25u128 {
        sharing.share(
            ShareRequest::new(UserId::from_u128(u), lead, Level::Read).duration(Duration::hours(1)),
        );
    }
    let mut seen = Vec::new();
    let mut query = HistoryQuery::default().limit(10);
    loop {
        let page = sharing.history(&lead, &query).unwrap();
        seen.extend(page.records.iter().map(|r| r.user));
        match page.next {
            Some(c) => query = HistoryQuery::default().limit(10).after(c),
            None => break,
        }
    }
    let expected: Vec<UserId> = (0..25u128).rev().map(UserId::from_u128).collect();
    assert_eq!(seen, expected, "every record once, newest first");
    assert_eq!(
        sharing
            .history(&lead, &HistoryQuery::default().limit(0))
            .unwrap_err()
            .field(),
        Some("limit")
    );
    // Live grants' records stay; ended ones go after the retention period.
    clock.advance(Duration::hours(2));
    sharing.engine().advance();
    assert_eq!(sharing.prune().unwrap(), 0, "ended, but within retention");
    clock.advance(Duration::days(91));
    assert_eq!(sharing.prune().unwrap(), 25);
    assert!(sharing
        .history(&lead, &HistoryQuery::default())
        .unwrap()
        .records
        .is_empty());
}

#[test]
fn direct_revoke_names_its_request() {
    let (_, sharing) = setup();
    let (u, e) = (UserId::from_u128(3), EntityId::lead(3));
    let share = sharing.share(ShareRequest::new(u, e, Level::Edit));
    let revoke = sharing.revoke(RevokeRequest {
        user: u,
        entity: e,
        context: Context::Direct,
        level: Level::Edit,
    });
    assert_eq!(revoke.status, RequestStatus::Completed);
    let record = sharing.request(&share.request).unwrap().unwrap();
    assert_eq!(
        record.revoked.map(|(_, by)| by),
        Some(EndedBy::Request(revoke.request))
    );
    // A revoke with nothing to revoke fails and says why.
    let again = sharing.revoke(RevokeRequest {
        user: u,
        entity: e,
        context: Context::Direct,
        level: Level::Edit,
    });
    assert!(matches!(again.status, RequestStatus::Failed { .. }));
}

fn arbitrary_item() -> impl Strategy<Value = Value> {
    let user = prop_oneof![
        Just(json!(USER)),
        Just(json!("")),
        Just(json!("not-a-uuid")),
        Just(json!(7)),
        Just(Value::Null)
    ];
    let entity = prop_oneof![
        Just(json!(1)),
        Just(json!(5)),
        Just(json!(9)),
        Just(json!("1"))
    ];
    let etype = prop_oneof![Just(json!(3)), Just(json!(2))];
    let eid = prop_oneof![
        Just(json!("869196")),
        Just(json!(12)),
        Just(json!("")),
        Just(json!(-1))
    ];
    let access = prop_oneof![
        Just(json!(1)),
        Just(json!(2)),
        Just(json!(0)),
        Just(Value::Null)
    ];
    let minutes = prop_oneof![
        Just(Value::Null),
        Just(json!(30)),
        Just(json!(0)),
        Just(json!(-5)),
        Just(json!(1e12)),
        Just(json!(i64::MAX)),
        Just(json!(6_000_000))
    ];
    let ctx = prop_oneof![Just(json!(ACTIVITY)), Just(Value::Null), Just(json!("x"))];
    (user, entity, etype, eid, access, minutes, ctx).prop_map(|(u, e, t, i, a, m, c)| {
        let mut v = json!({"UserId": u, "Entity": e, "EntityType": t, "EntityId": i, "AccessType": a, "DurationInMinutes": m});
        if !c.is_null() {
            v["ContextEntity"] = json!(1);
            v["ContextEntityId"] = c;
        }
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    /// Random batches never panic, a bad item never creates a grant, and
    /// every item that got an id has exactly one record with its final
    /// status.
    #[test]
    fn batches_of_good_and_bad_items(items in proptest::collection::vec(arbitrary_item(), 0..12)) {
        let (_, sharing) = setup();
        let responses = sharing.api_share(&body(Value::Array(items.clone()))).unwrap();
        prop_assert_eq!(responses.len(), items.len());
        let (mut granted, mut failed) = (0, 0);
        for r in &responses {
            match r {
                ItemResponse::Success { message, .. } => {
                    let id: RequestId = message.id.parse().unwrap();
                    prop_assert_eq!(sharing.status(&id).unwrap(), Some(RequestStatus::Completed));
                    granted += 1;
                }
                ItemResponse::Error { request_id: Some(id), .. } => {
                    let id: RequestId = id.parse().unwrap();
                    let is_failed = matches!(sharing.status(&id).unwrap(), Some(RequestStatus::Failed { .. }));
                    prop_assert!(is_failed);
                    failed += 1;
                }
                ItemResponse::Error { request_id: None, .. } => {}
            }
        }
        let lead = EntityId::lead(869196);
        let opportunity = EntityId::opportunity(869196);
        let user: UserId = USER.parse().unwrap();
        let held = sharing.engine().pair_grants(&user, &lead).len()
            + sharing.engine().pair_grants(&user, &opportunity).len()
            + sharing.engine().pair_grants(&user, &EntityId::lead(12)).len()
            + sharing.engine().pair_grants(&user, &EntityId::opportunity(12)).len();
        // Repeated shares of one key replace each other: at most one grant per key.
        prop_assert!(held <= granted);
        prop_assert_eq!(sharing.engine().len(), held);
        prop_assert_eq!(granted == 0, held == 0);
        let records = sharing.history(&lead, &HistoryQuery::default().limit(1000)).unwrap().records.len()
            + sharing.history(&opportunity, &HistoryQuery::default().limit(1000)).unwrap().records.len()
            + sharing.history(&EntityId::lead(12), &HistoryQuery::default().limit(1000)).unwrap().records.len()
            + sharing.history(&EntityId::opportunity(12), &HistoryQuery::default().limit(1000)).unwrap().records.len();
        prop_assert_eq!(records, granted + failed);
    }
}

mod submit_and_policy {
    use super::*;
    use grantwheel::requests::{Command, ContextResolver, GrantorPolicy, Submission};

    fn share(u: u128, e: u64, level: Level) -> Command {
        Command::Share(ShareRequest::new(
            UserId::from_u128(u),
            EntityId::lead(e),
            level,
        ))
    }

    #[test]
    fn submitted_requests_are_processing_until_processed() {
        let (_, sharing) = setup();
        let ids = sharing.submit(vec![
            Submission::api(share(1, 1, Level::Read)),
            Submission::api(share(2, 1, Level::Edit)),
        ]);
        assert_eq!(ids.len(), 2);
        for id in &ids {
            assert_eq!(sharing.status(id).unwrap(), Some(RequestStatus::Processing));
        }
        assert!(!sharing
            .engine()
            .can_read(&UserId::from_u128(1), &EntityId::lead(1)));
        assert_eq!(sharing.pending(), 2);
        assert_eq!(sharing.process(1), 1);
        assert_eq!(
            sharing.status(&ids[0]).unwrap(),
            Some(RequestStatus::Completed)
        );
        assert_eq!(
            sharing.status(&ids[1]).unwrap(),
            Some(RequestStatus::Processing)
        );
        assert_eq!(sharing.process(10), 1);
        assert!(sharing
            .engine()
            .can_edit(&UserId::from_u128(2), &EntityId::lead(1)));
        let v = serde_json::to_value(sharing.status_response(&ids[1])).unwrap();
        assert_eq!(v["ShareStatus"], json!(6));
    }

    #[test]
    fn a_worker_carries_out_the_queue() {
        let (_, sharing) = setup();
        let worker = sharing.start_worker().unwrap();
        let ids = sharing.submit(
            (0..50)
                .map(|u| Submission::api(share(u, 7, Level::Read)))
                .collect(),
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while ids
            .iter()
            .any(|id| sharing.status(id).unwrap() != Some(RequestStatus::Completed))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the worker did not finish"
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        worker.stop();
        assert_eq!(sharing.engine().len(), 50);
    }

    #[test]
    fn the_api_submit_path_answers_at_once() {
        let (_, sharing) = setup();
        let r = sharing
            .api_submit_shares(&body(
                json!([lead_item(ACTIVITY, 2, Some(30)), {"UserId": "bad"}]),
            ))
            .unwrap();
        let id = id_of(&r[0]);
        assert!(matches!(r[1], ItemResponse::Error { .. }));
        assert_eq!(
            sharing.status(&id).unwrap(),
            Some(RequestStatus::Processing)
        );
        sharing.process(usize::MAX);
        assert_eq!(sharing.status(&id).unwrap(), Some(RequestStatus::Completed));
    }

    #[test]
    fn an_idempotency_key_yields_one_request_and_one_grant() {
        let (_, sharing) = setup();
        let a = sharing.run(Submission::api(share(1, 1, Level::Read)).key("evt-1"));
        let b = sharing.run(Submission::api(share(1, 1, Level::Edit)).key("evt-1"));
        assert_eq!(a.request, b.request);
        assert!(!sharing
            .engine()
            .can_edit(&UserId::from_u128(1), &EntityId::lead(1)));
        let queued = sharing.submit(vec![
            Submission::api(share(2, 1, Level::Read)).key("evt-2"),
            Submission::api(share(2, 1, Level::Read)).key("evt-2"),
        ]);
        assert_eq!(queued[0], queued[1]);
        assert_eq!(sharing.process(10), 1);
        let history = sharing
            .history(&EntityId::lead(1), &HistoryQuery::default())
            .unwrap();
        assert_eq!(history.records.len(), 2);
    }

    struct OwnerCheck;
    impl ContextResolver for OwnerCheck {
        fn check(&self, user: &UserId, _: &EntityId, context: &Context) -> Result<(), String> {
            match context {
                Context::Activity(a) if a.as_u128() == user.as_u128() => Ok(()),
                Context::Activity(_) => Err("the activity's owner is not the grantee".into()),
                _ => Err("a lead is shared through an activity".into()),
            }
        }
    }

    #[test]
    fn a_resolver_rejection_fails_the_request_and_creates_no_grant() {
        let engine = Engine::builder()
            .clock(ManualClock::new(Utc::now()))
            .build()
            .unwrap();
        let sharing = Sharing::builder(engine)
            .resolver(OwnerCheck)
            .build()
            .unwrap();
        let (u, e) = (UserId::from_u128(5), EntityId::lead(5));
        let wrong = sharing.share(
            ShareRequest::new(u, e, Level::Read)
                .context(Context::Activity(uuid::Uuid::from_u128(6))),
        );
        match &wrong.status {
            RequestStatus::Failed { kind, reason } => {
                assert_eq!(*kind, FailureKind::ContextRefused);
                assert!(reason.contains("owner is not the grantee"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert!(sharing.engine().is_empty());
        let right = sharing.share(
            ShareRequest::new(u, e, Level::Read)
                .context(Context::Activity(uuid::Uuid::from_u128(5))),
        );
        assert_eq!(right.status, RequestStatus::Completed);
    }

    struct Admins;
    impl GrantorPolicy for Admins {
        fn is_privileged(&self, grantor: &UserId, _: &EntityId) -> bool {
            grantor.as_u128() == 100
        }
    }

    #[test]
    fn delegation_limits() {
        let engine = Engine::builder()
            .clock(ManualClock::new(Utc::now()))
            .build()
            .unwrap();
        let sharing = Sharing::builder(engine)
            .grantor_policy(Admins)
            .build()
            .unwrap();
        let lead = EntityId::lead(1);
        let (reader, target, admin) = (
            UserId::from_u128(1),
            UserId::from_u128(2),
            UserId::from_u128(100),
        );
        sharing.share(ShareRequest::new(reader, lead, Level::Read).duration(Duration::days(10)));
        let give = |level, days| {
            sharing.run(
                Submission::direct(Command::Share(
                    ShareRequest::new(target, lead, level).duration(Duration::days(days)),
                ))
                .granted_by(reader),
            )
        };
        assert!(
            matches!(give(Level::Edit, 1).status, RequestStatus::Failed { .. }),
            "no higher level"
        );
        assert!(
            matches!(give(Level::Read, 20).status, RequestStatus::Failed { .. }),
            "no later expiry"
        );
        assert_eq!(give(Level::Read, 5).status, RequestStatus::Completed);
        let by_admin = sharing.run(
            Submission::direct(Command::Share(
                ShareRequest::new(target, lead, Level::Edit).duration(Duration::days(300)),
            ))
            .granted_by(admin),
        );
        assert_eq!(
            by_admin.status,
            RequestStatus::Completed,
            "the policy lifts the limits"
        );
        let stranger = sharing.run(
            Submission::direct(Command::Share(ShareRequest::new(target, lead, Level::Read)))
                .granted_by(UserId::from_u128(3)),
        );
        assert!(
            matches!(stranger.status, RequestStatus::Failed { .. }),
            "a grantor without access gives none"
        );
    }
}

/// Shares and revokes from several threads on overlapping keys: afterwards
/// the history's open share records are exactly the engine's live grants.
#[test]
fn history_and_engine_agree_after_concurrent_requests() {
    let (_, sharing) = setup();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let sharing = sharing.clone();
            s.spawn(move || {
                for i in 0..400u64 {
                    let (u, e) = (
                        UserId::from_u128(u128::from((i * 7 + t) % 5)),
                        EntityId::lead((i + t) % 3),
                    );
                    if (i + t) % 4 == 0 {
                        sharing.revoke(RevokeRequest {
                            user: u,
                            entity: e,
                            context: Context::Direct,
                            level: Level::Read,
                        });
                    } else {
                        let level = if i % 2 == 0 { Level::Read } else { Level::Edit };
                        sharing.share(
                            ShareRequest::new(u, e, level)
                                .duration(Duration::hours(1 + (i % 5) as i64)),
                        );
                    }
                }
            });
        }
    });
    let mut open = Vec::new();
    for e in 0..3 {
        let entity = EntityId::lead(e);
        let mut query = HistoryQuery::default().limit(1000);
        loop {
            let page = sharing.history(&entity, &query).unwrap();
            open.extend(
                page.records
                    .iter()
                    .filter(|r| {
                        r.kind == RequestKind::Share
                            && r.status == RequestStatus::Completed
                            && r.ended_at().is_none()
                    })
                    .filter_map(|r| r.grant),
            );
            match page.next {
                Some(c) => query = HistoryQuery::default().limit(1000).after(c),
                None => break,
            }
        }
    }
    open.sort();
    let mut live = Vec::new();
    for u in 0..5u128 {
        live.extend(
            sharing
                .engine()
                .user_grants(&UserId::from_u128(u))
                .into_iter()
                .map(|g| g.id),
        );
    }
    live.sort();
    assert_eq!(open, live);
}

// Defects found by trying the library as a new user would.

/// A GUID written as 32 decimal digits is a GUID, never a record number:
/// read as a number it shared the wrong record.
#[test]
fn a_guid_of_decimal_digits_shares_that_guid() {
    let (_, sharing) = setup();
    let user: UserId = USER.parse().unwrap();
    let item = json!({
        "UserId": USER, "Entity": 5, "EntityType": 3,
        "EntityId": "00000000000000000000000000869196", "AccessType": 2, "DurationInMinutes": 60
    });
    let answers = sharing.api_share(&body(json!([item]))).unwrap();
    assert!(
        matches!(answers[0], ItemResponse::Success { .. }),
        "{answers:?}"
    );
    let guid = EntityId::new(
        EntityKind::OPPORTUNITY,
        EntityRef::Uuid("00000000-0000-0000-0000-000000869196".parse().unwrap()),
    );
    assert!(sharing.engine().can_edit(&user, &guid));
    assert!(!sharing
        .engine()
        .can_read(&user, &EntityId::opportunity(869196)));

    // A number with a leading zero is refused, not guessed.
    let mut item = lead_item(ACTIVITY, 1, Some(5));
    item["EntityId"] = json!("0869196");
    let answers = sharing.api_share(&body(json!([item]))).unwrap();
    let (exception_type, exception_message, request_id) = error_of(&answers[0]);
    assert_eq!(exception_type, "InvalidInput");
    assert!(
        exception_message.starts_with("item 0: `EntityId`: `0869196` has a leading zero"),
        "{exception_message}"
    );
    assert_eq!(request_id, None);
    assert_eq!(sharing.engine().len(), 1);
}

proptest! {
    /// Through the wire: a UUID in either form is that UUID, a decimal u64
    /// is that number.
    #[test]
    fn wire_entity_ids_keep_their_shape(v: u128, n: u64, hyphens: bool) {
        use grantwheel::requests::wire::decode_shares;
        let u = uuid::Uuid::from_u128(v);
        let text = if hyphens { u.hyphenated().to_string() } else { u.simple().to_string() };
        for (id, want) in [
            (json!(text), EntityRef::Uuid(u)),
            (json!(n.to_string()), EntityRef::Number(n)),
            (json!(n), EntityRef::Number(n)),
        ] {
            let mut item = lead_item(ACTIVITY, 1, None);
            item["EntityId"] = id;
            let decoded = decode_shares(&body(json!([item]))).unwrap()[0].clone().unwrap();
            prop_assert_eq!(decoded.entity.id, want);
        }
    }
}

/// A duration over the engine's maximum is refused in the API's words
/// (index, wire field, minutes), before any request is made.
#[test]
fn over_maximum_durations_are_refused_in_the_apis_words() {
    let (_, sharing) = setup();
    let answers = sharing
        .api_share(&body(json!([
            lead_item(ACTIVITY, 2, Some(5_271_840)),
            lead_item(ACTIVITY_2, 2, Some(5_270_400)),
        ])))
        .unwrap();
    let (exception_type, exception_message, request_id) = error_of(&answers[0]);
    assert_eq!(exception_type, "InvalidInput");
    assert_eq!(
        exception_message,
        "item 0: `DurationInMinutes`: `5271840` minutes is more than the maximum of 5270400 minutes"
    );
    assert_eq!(request_id, None, "no Failed request is left behind");
    assert!(
        matches!(answers[1], ItemResponse::Success { .. }),
        "the maximum itself is fine"
    );
    let lead = EntityId::lead(869196);
    let page = sharing.history(&lead, &HistoryQuery::default()).unwrap();
    assert_eq!(page.records.len(), 1, "only the accepted item is a request");

    // A host that clamps gets the share, clamped.
    let clamping = Sharing::new(
        Engine::builder()
            .max_duration(Duration::days(100), grantwheel::OverMax::Clamp)
            .build()
            .unwrap(),
    );
    let answers = clamping
        .api_share(&body(json!([lead_item(ACTIVITY, 2, Some(200 * 24 * 60))])))
        .unwrap();
    assert!(
        matches!(answers[0], ItemResponse::Success { .. }),
        "{answers:?}"
    );

    // A repeat share the engine refuses is a Failed request, and reads like
    // an item error too.
    let rejecting = Sharing::new(
        Engine::builder()
            .repeat_share(grantwheel::RepeatShare::Reject)
            .build()
            .unwrap(),
    );
    let twice = body(json!([
        lead_item(ACTIVITY, 2, Some(30)),
        lead_item(ACTIVITY, 2, Some(30))
    ]));
    let answers = rejecting.api_share(&twice).unwrap();
    assert!(matches!(answers[0], ItemResponse::Success { .. }));
    let (exception_type, exception_message, request_id) = error_of(&answers[1]);
    assert_eq!(exception_type, "AlreadyShared");
    assert!(
        exception_message.starts_with(&format!(
            "item 1: `ContextEntityId`: `{USER}` already has edit access to `lead:869196`"
        )),
        "{exception_message}"
    );
    let id: RequestId = request_id.expect("a Failed request").parse().unwrap();
    assert!(matches!(
        rejecting.status(&id).unwrap(),
        Some(RequestStatus::Failed {
            kind: FailureKind::AlreadyShared,
            ..
        })
    ));
}

/// The status API takes the id as the API carries it; a malformed id gets
/// the not-found shape, saying why.
#[test]
fn the_status_api_takes_the_id_as_text() {
    let (_, sharing) = setup();
    let answers = sharing
        .api_share(&body(json!([lead_item(ACTIVITY, 2, Some(30))])))
        .unwrap();
    let id = id_of(&answers[0]).to_string();
    let answer = sharing.api_status(&id);
    assert_eq!(answer.status, "Success");
    assert_eq!(answer.state.as_deref(), Some("Completed"));
    assert_eq!(answer.share_status, Some(6));
    for bad in [
        "98fe",
        "",
        "zz000000000000000000000000000000",
        &format!("{id}0"),
    ] {
        let answer = sharing.api_status(bad);
        assert_eq!(answer.status, "Error", "{bad}");
        assert_eq!(answer.state.as_deref(), Some("NotFound"));
        assert!(
            answer
                .error_message
                .as_deref()
                .unwrap()
                .contains("32 hex digits"),
            "{answer:?}"
        );
    }
    let unknown = sharing.api_status(&RequestId::random().to_string());
    assert_eq!(unknown.state.as_deref(), Some("NotFound"));
}

/// The request layer's history does not depend on when it is built: one
/// layer per engine, and grants that ended while none listened are
/// recorded when one is built.
mod layer_order {
    use super::*;
    use grantwheel::store::MemoryStore;

    fn start() -> ManualClock {
        ManualClock::new(Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0).unwrap())
    }

    /// An engine over `store` (again and again: a restart each time).
    fn opener(clock: &ManualClock, store: &MemoryStore) -> Engine {
        Engine::builder()
            .clock(clock.clone())
            .store(store.clone())
            .build()
            .unwrap()
    }

    fn share(s: &Sharing, user: u128, minutes: i64) -> RequestId {
        let out = s.share(
            ShareRequest::new(UserId::from_u128(user), EntityId::lead(1), Level::Read)
                .duration(Duration::minutes(minutes)),
        );
        assert_eq!(out.status, RequestStatus::Completed);
        out.request
    }

    #[test]
    fn an_expiry_before_the_layer_is_built_reaches_the_history() {
        let (clock, store) = (start(), MemoryStore::new());
        let open = || opener(&clock, &store);
        let (expiring, revoked) = {
            let s = Sharing::new(open());
            (share(&s, 1, 30), share(&s, 2, 600))
        };
        // Restart; the grant expires and one is revoked on the engine
        // before any request layer exists.
        let engine = open();
        clock.advance(Duration::minutes(31));
        assert_eq!(engine.advance(), 1);
        engine
            .revoke_pair(&UserId::from_u128(2), &EntityId::lead(1))
            .unwrap();
        let s = Sharing::new(engine);
        let r = s.request(&expiring).unwrap().unwrap();
        assert_eq!(r.expired_at, r.expires_at, "{r:?}");
        let r = s.request(&revoked).unwrap().unwrap();
        assert!(matches!(r.revoked, Some((_, EndedBy::Engine))), "{r:?}");
        // ... and it was written: the next restart reads the same.
        drop(s);
        let s = Sharing::new(open());
        assert!(s.request(&expiring).unwrap().unwrap().expired_at.is_some());
        assert!(s.request(&revoked).unwrap().unwrap().revoked.is_some());
    }

    #[test]
    fn every_layer_of_an_engine_is_the_same_layer() {
        let (clock, first) = setup();
        let engine = first.engine().clone();
        let a = share(&first, 1, 30);
        let second = Sharing::new(engine.clone());
        assert_eq!(second.status(&a).unwrap(), Some(RequestStatus::Completed));
        let b = share(&second, 2, 30);
        assert_eq!(first.status(&b).unwrap(), Some(RequestStatus::Completed));
        let built = Sharing::builder(engine.clone()).build();
        assert_eq!(built.unwrap_err().field(), Some("engine"));

        // With every handle gone the engine keeps the history; an expiry
        // meanwhile is recorded when the next layer is built.
        drop((first, second));
        clock.advance(Duration::minutes(30));
        engine.advance();
        let third = Sharing::builder(engine).build().unwrap();
        let r = third.request(&a).unwrap().unwrap();
        assert_eq!(r.expired_at, r.expires_at);
        assert_eq!(
            third
                .history(&EntityId::lead(1), &HistoryQuery::default())
                .unwrap()
                .records
                .len(),
            2
        );
    }

    #[test]
    fn a_restored_history_reaches_every_handle() {
        let (clock, store) = (start(), MemoryStore::new());
        let open = || opener(&clock, &store);
        let id = share(&Sharing::new(open()), 1, 30);
        let engine = open();
        let (x, y) = (Sharing::new(engine.clone()), Sharing::new(engine));
        assert_eq!(x.status(&id).unwrap(), Some(RequestStatus::Completed));
        assert_eq!(y.status(&id).unwrap(), Some(RequestStatus::Completed));
    }
}
