//! Automation rules end to end: the opportunity-sharing automation of the
//! seeds, conditions, publishing checks, duplicate events, and revoking all
//! a rule granted.

use std::collections::BTreeMap;

use chrono::{Duration, Utc};
use grantwheel::requests::automation::{
    AutomationEvent, Op, Rule, RuleState, ShareAction, ShareWith, Trigger, UserDirectory,
};
use grantwheel::requests::{HistoryQuery, RequestStatus, Sharing, Source};
use grantwheel::{Context, Engine, EntityId, EntityKind, Level, ManualClock, UserId};
use serde_json::json;
use uuid::Uuid;

fn sharing() -> Sharing {
    let engine = Engine::builder()
        .clock(ManualClock::new(Utc::now()))
        .build()
        .unwrap();
    Sharing::new(engine)
}

fn task_event(id: &str, deal: u64, owner: UserId, fields: serde_json::Value) -> AutomationEvent {
    let fields: BTreeMap<String, serde_json::Value> = serde_json::from_value(fields).unwrap();
    AutomationEvent {
        id: id.into(),
        trigger: Trigger::TaskCreated,
        entity: EntityId::opportunity(deal),
        activity: None,
        task: Some((Uuid::from_u128(u128::from(deal) + 1000), owner)),
        fields,
    }
}

#[test]
fn the_opportunity_automation_of_the_seeds() {
    let s = sharing();
    // "Task Created on Opportunity" -> Share Opportunity with the task owner,
    // view only, for one day; only for personal loans.
    let rule = Rule::new(
        "share personal-loan deals with the task owner",
        Trigger::TaskCreated,
        EntityKind::OPPORTUNITY,
        ShareAction {
            with: ShareWith::TaskOwner,
            duration_minutes: Some(24 * 60),
            level: Level::Read,
        },
    )
    .when("product", Op::Equals, json!("Personal Loan"));
    let id = s.add_rule(rule).unwrap();
    let (ann, bob) = (UserId::from_u128(1), UserId::from_u128(2));

    // Drafts do not act.
    assert!(s
        .on_event(&task_event(
            "e0",
            7,
            ann,
            json!({"product": "Personal Loan"})
        ))
        .is_empty());
    s.publish_rule(id).unwrap();
    assert_eq!(s.rule(id).unwrap().state, RuleState::Published);

    let first = s.on_event(&task_event(
        "e1",
        7,
        ann,
        json!({"product": "Personal Loan"}),
    ));
    assert_eq!(first.len(), 1);
    assert_eq!(
        s.status(&first[0]).unwrap(),
        Some(RequestStatus::Processing)
    );
    // The same event again: the same request, one grant.
    assert_eq!(
        s.on_event(&task_event(
            "e1",
            7,
            ann,
            json!({"product": "Personal Loan"})
        )),
        first
    );
    // A condition that does not hold.
    assert!(s
        .on_event(&task_event("e2", 8, bob, json!({"product": "Home Loan"})))
        .is_empty());
    let second = s.on_event(&task_event(
        "e3",
        7,
        bob,
        json!({"product": "Personal Loan"}),
    ));
    assert_eq!(s.process(100), 2);

    let deal = EntityId::opportunity(7);
    assert!(s.engine().can_read(&ann, &deal));
    assert!(!s.engine().can_edit(&ann, &deal));
    assert!(s.engine().can_read(&bob, &deal));
    let record = s.request(&first[0]).unwrap().unwrap();
    assert_eq!(record.source, Source::Automation { rule: id });
    assert_eq!(record.context, Context::Task(Uuid::from_u128(1007)));
    assert_eq!(
        record.expires_at,
        Some(record.created_at + Duration::days(1))
    );

    // History of the deal, filtered by user and by status.
    let by_ann = s
        .history(&deal, &HistoryQuery::default().user(ann))
        .unwrap()
        .records;
    assert_eq!(by_ann.len(), 1);
    assert_eq!(by_ann[0].request, first[0]);
    let done = s
        .history(
            &deal,
            &HistoryQuery::default().status(grantwheel::requests::StatusKind::Completed),
        )
        .unwrap()
        .records;
    assert_eq!(done.len(), 2);
    let from_rule = s
        .history(
            &deal,
            &HistoryQuery::default().source(Source::Automation { rule: id }),
        )
        .unwrap()
        .records;
    assert_eq!(from_rule.len(), 2);

    // Revoke everything the rule granted, in one call.
    let revoked = s.revoke_rule_grants(id).unwrap();
    assert_eq!(revoked.len(), 2);
    assert!(revoked.iter().all(|o| o.status == RequestStatus::Completed));
    assert!(!s.engine().can_read(&ann, &deal));
    assert!(!s.engine().can_read(&bob, &deal));
    assert!(s.request(&second[0]).unwrap().unwrap().revoked.is_some());
    assert!(s.revoke_rule_grants(id).unwrap().is_empty());
}

#[test]
fn an_event_without_the_owner_fails_visibly() {
    let s = sharing();
    let rule = Rule::new(
        "activity owner",
        Trigger::ActivityPosted,
        EntityKind::LEAD,
        ShareAction {
            with: ShareWith::ActivityOwner,
            duration_minutes: None,
            level: Level::Edit,
        },
    );
    let id = s.add_rule(rule).unwrap();
    s.publish_rule(id).unwrap();
    let event = AutomationEvent {
        id: "x".into(),
        trigger: Trigger::ActivityPosted,
        entity: EntityId::lead(1),
        activity: None,
        task: None,
        fields: BTreeMap::new(),
    };
    let ids = s.on_event(&event);
    assert!(matches!(
        s.status(&ids[0]).unwrap(),
        Some(RequestStatus::Failed { .. })
    ));
    assert_eq!(s.process(10), 0);
    let with_owner = AutomationEvent {
        id: "y".into(),
        activity: Some((Uuid::from_u128(3), UserId::from_u128(4))),
        ..event
    };
    s.on_event(&with_owner);
    s.process(10);
    assert!(s
        .engine()
        .can_edit(&UserId::from_u128(4), &EntityId::lead(1)));
}

struct Directory;
impl UserDirectory for Directory {
    fn exists(&self, user: &UserId) -> bool {
        user.as_u128() < 10
    }
}

#[test]
fn publishing_checks_the_rule() {
    let engine = Engine::builder()
        .clock(ManualClock::new(Utc::now()))
        .build()
        .unwrap();
    let s = Sharing::builder(engine).users(Directory).build().unwrap();
    let action = |with, minutes| ShareAction {
        with,
        duration_minutes: minutes,
        level: Level::Read,
    };
    let field = |rule: Rule| {
        let id = s.add_rule(rule).unwrap();
        s.publish_rule(id).err().and_then(|e| e.field())
    };
    let created = |a| Rule::new("r", Trigger::EntityCreated, EntityKind::OPPORTUNITY, a);
    assert_eq!(
        field(created(action(
            ShareWith::User(UserId::from_u128(99)),
            None
        ))),
        Some("action.with")
    );
    assert_eq!(
        field(created(action(
            ShareWith::User(UserId::from_u128(1)),
            Some(-5)
        ))),
        Some("action.duration_minutes")
    );
    assert_eq!(
        field(created(action(
            ShareWith::User(UserId::from_u128(1)),
            Some(100_000_000)
        ))),
        Some("action.duration_minutes")
    );
    assert_eq!(
        field(created(action(ShareWith::TaskOwner, None))),
        Some("action.with")
    );
    assert_eq!(
        field(
            created(action(ShareWith::User(UserId::from_u128(1)), None)).when(
                "amount",
                Op::GreaterThan,
                json!("big")
            )
        ),
        Some("conditions")
    );
    assert_eq!(
        field(created(action(
            ShareWith::User(UserId::from_u128(1)),
            Some(60)
        ))),
        None
    );
    // An unpublished rule stops acting.
    let id = s.rules().last().unwrap().0;
    assert!(s.unpublish_rule(id).unwrap());
    assert_eq!(s.rule(id).unwrap().state, RuleState::Draft);
}

#[test]
fn rules_read_and_write_json() {
    let rule = Rule::new(
        "json",
        Trigger::TaskReminder,
        EntityKind::OPPORTUNITY,
        ShareAction {
            with: ShareWith::User(UserId::from_u128(5)),
            duration_minutes: Some(30),
            level: Level::Edit,
        },
    )
    .when("stage", Op::In, json!(["Won", "Negotiation"]));
    let text = serde_json::to_string_pretty(&rule).unwrap();
    let back: Rule = serde_json::from_str(&text).unwrap();
    assert_eq!(back, rule);
    assert!(serde_json::from_str::<Rule>(r#"{"name": "x"}"#).is_err());
}

/// "All automation" is one filter, whatever the rules: the history tab's
/// API / Automation column.
#[test]
fn history_filters_by_source_kind() {
    use grantwheel::requests::{ShareRequest, SourceKind};
    let s = sharing();
    let deal = EntityId::opportunity(7);
    let action = ShareAction {
        with: ShareWith::TaskOwner,
        duration_minutes: Some(60),
        level: Level::Read,
    };
    let rules: Vec<_> = (0..2)
        .map(|_| {
            let id = s
                .add_rule(Rule::new(
                    "r",
                    Trigger::TaskCreated,
                    EntityKind::OPPORTUNITY,
                    action,
                ))
                .unwrap();
            s.publish_rule(id).unwrap();
            id
        })
        .collect();
    assert_eq!(
        s.on_event(&task_event("e1", 7, UserId::from_u128(1), json!({})))
            .len(),
        2
    );
    s.process(10);
    s.share(ShareRequest::new(UserId::from_u128(2), deal, Level::Edit));
    let item = json!([{"UserId": UserId::from_u128(3).to_string(), "Entity": 5, "EntityType": 3,
        "EntityId": "7", "AccessType": 1}]);
    s.api_share(&serde_json::to_vec(&item).unwrap()).unwrap();

    let of = |kind| {
        let page = s
            .history(&deal, &HistoryQuery::default().source_kind(kind))
            .unwrap();
        page.records.iter().map(|r| r.source).collect::<Vec<_>>()
    };
    let automation = of(SourceKind::Automation);
    assert_eq!(automation.len(), 2);
    for r in &rules {
        assert!(automation.contains(&Source::Automation { rule: *r }));
    }
    assert_eq!(of(SourceKind::Api), vec![Source::Api]);
    assert_eq!(of(SourceKind::Direct), vec![Source::Direct]);
}
