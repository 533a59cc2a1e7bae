//! The schema's promises: every query served by an index, and version 1
//! files migrated with every record kept.

use chrono::{DateTime, Duration, TimeZone, Utc};
use rusqlite::{params, Connection, TransactionBehavior};

use super::reader::plans;
use super::schema::MIGRATIONS;
use super::SqliteStore;
use crate::ids::{Context, EntityId, GrantId, Level, UserId};
use crate::model::history::{
    EndedBy, FailureKind, HistoryQuery, HistoryRecord, RequestId, RequestKind, RequestStatus,
    RuleId, Source,
};
use crate::store::Store;

fn at(minutes: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0)
        .single()
        .unwrap_or_default()
        + Duration::minutes(minutes)
}

fn record(i: u64) -> HistoryRecord {
    let user = UserId::from_u128(u128::from(i % 3) + 1);
    let entity = EntityId::lead(7);
    let context = Context::Activity(uuid::Uuid::from_u128(99));
    let grant = GrantId {
        user,
        entity,
        context,
        serial: i,
    };
    let (status, grant, revoked, expired_at) = match i % 4 {
        0 => (RequestStatus::Completed, Some(grant), None, None),
        1 => (
            RequestStatus::Completed,
            Some(grant),
            Some((at(30), EndedBy::Request(RequestId::random()))),
            None,
        ),
        2 => (
            RequestStatus::Failed {
                kind: FailureKind::ContextRefused,
                reason: "no such activity".into(),
            },
            None,
            None,
            None,
        ),
        _ => (RequestStatus::Completed, Some(grant), None, Some(at(60))),
    };
    HistoryRecord {
        request: RequestId::random(),
        kind: RequestKind::Share,
        entity,
        user,
        context,
        level: if i.is_multiple_of(2) {
            Level::Read
        } else {
            Level::Edit
        },
        duration: Some(Duration::minutes(60)),
        expires_at: grant.map(|_| at(60)),
        source: if i.is_multiple_of(2) {
            Source::Api
        } else {
            Source::Automation { rule: RuleId(4) }
        },
        status,
        grant,
        created_at: at(i64::try_from(i).unwrap_or(0)),
        completed_at: Some(at(i64::try_from(i).unwrap_or(0))),
        revoked,
        expired_at,
        idempotency_key: (i == 5).then(|| "crm-17".to_string()),
        starts_at: None,
        granted_by: None,
        approval: None,
        end_reason: None,
    }
}

/// A file as version 1 wrote it: its schema, and history as JSON.
fn version_1_file(path: &std::path::Path, records: &[HistoryRecord]) {
    let mut conn = Connection::open(path).unwrap();
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Exclusive)
        .unwrap();
    if let Some(to_v1) = MIGRATIONS.first() {
        to_v1(&tx).unwrap();
    }
    for (seq, r) in records.iter().enumerate() {
        tx.execute(
            "INSERT INTO history (request, seq, kind, entity, user, status, created_at, record) VALUES (?1, ?2, 'Share', ?3, ?4, ?5, ?6, ?7)",
            params![
                r.request.to_string(),
                seq as i64 + 10,
                r.entity.to_string(),
                r.user.to_string(),
                r.status.name(),
                r.created_at.to_rfc3339(),
                serde_json::to_string(r).unwrap(),
            ],
        )
        .unwrap();
    }
    tx.pragma_update(None, "user_version", 1).unwrap();
    tx.commit().unwrap();
}

#[test]
fn a_version_1_file_keeps_every_record_and_its_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    let records: Vec<HistoryRecord> = (0..12).map(record).collect();
    version_1_file(&path, &records);

    let store = SqliteStore::open(&path).unwrap();
    let version: i64 = store
        .conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 5);
    let reader = store.reader().unwrap();
    for r in &records {
        assert_eq!(reader.request(&r.request).unwrap().as_ref(), Some(r));
    }
    assert_eq!(
        reader.request_by_key("crm-17").unwrap().map(|r| r.request),
        Some(records[5].request)
    );
    // The old order is the page order: newest first.
    let page = reader
        .history(&EntityId::lead(7), &HistoryQuery::default().limit(100))
        .unwrap();
    let newest_first: Vec<HistoryRecord> = records.iter().rev().cloned().collect();
    assert_eq!(page.records, newest_first);
    // New records come after the migrated ones.
    drop(reader);
    let mut store = store;
    let new = record(100);
    store
        .apply(&crate::store::Batch {
            seq: 1,
            next_serial: 200,
            clock: at(200),
            changes: &[crate::store::Change::Record(Box::new(new.clone()))],
        })
        .unwrap();
    let page = store
        .reader()
        .unwrap()
        .history(&EntityId::lead(7), &HistoryQuery::default().limit(1))
        .unwrap();
    assert_eq!(page.records, vec![new]);
}

#[test]
fn every_query_is_served_by_an_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("plans.db")).unwrap();
    let plans = plans(&store.conn);
    assert!(plans.len() >= 15, "{plans:?}");
    for (name, plan) in &plans {
        println!("{name}: {plan}");
        assert!(!plan.starts_with("error"), "{name}: {plan}");
        // A `SCAN` of a table reads every row; `SEARCH ... USING INDEX`
        // reads what the index selects.
        let scans = plan
            .split("; ")
            .any(|step| step.starts_with("SCAN") && !step.contains("USING"));
        assert!(!scans, "{name} scans a table: {plan}");
        assert!(
            plan.contains("INDEX") || plan.contains("PRIMARY KEY"),
            "{name}: {plan}"
        );
        if name.ends_with("places only") {
            assert!(
                plan.contains("COVERING INDEX"),
                "{name} reads the table: {plan}"
            );
        }
    }
}
