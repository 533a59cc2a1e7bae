//! The service on PostgreSQL (`--postgres URL`): the grants, history and
//! rules live in the database, not in the instance's files. A share made
//! by one instance is answered, with its status and history, by another
//! instance started on the same database with files of its own, and the
//! instance that made it can be shut down with a call in flight without
//! a panic (the connections close off the async threads).
//!
//! Needs a server: `GRANTWHEEL_PG_URL` (see `tests/support/pg.rs`).

use crate::pg;

use crate::common::{get, post, Running};
use serde_json::json;

const SHARE: &str = r#"[{"UserId":"0203f172-8642-11e7-9bed-069b743e848f","Entity":1,"EntityType":3,
  "EntityId":"869196","ContextEntity":1,"ContextEntityId":"f2dbf1d5-bbab-418b-bddc-4c92ecdef214",
  "AccessType":2,"DurationInMinutes":30}]"#;

#[test]
fn a_share_made_by_one_instance_is_answered_by_the_next() {
    let Some(server) = pg::url("a_share_made_by_one_instance_is_answered_by_the_next") else {
        return;
    };
    let url = pg::fresh_database(&server);
    let on_pg = |args: &mut grantwheel_server::config::ServeArgs| {
        args.postgres = Some(url.clone());
        args.no_context_check = true;
    };
    let a = Running::start(on_pg);

    let (code, v) = post(&a.api("/Share"), "application/json", SHARE.as_bytes());
    assert_eq!((code, &v["Status"]), (200, &json!("Success")), "{v}");
    let id = v["Message"]["Id"].as_str().unwrap().to_string();

    let check = |s: &Running| {
        let (code, v) = get(&format!(
            "{}&UserId=0203f172-8642-11e7-9bed-069b743e848f&Entity=1&EntityId=869196",
            s.api("/Check")
        ));
        assert_eq!(code, 200, "{v}");
        (v["Read"].clone(), v["Edit"].clone())
    };
    assert_eq!(check(&a), (json!(true), json!(true)));
    drop(a);

    // Another instance, with a keys file and a directory of its own: all
    // it knows of the share comes from the database.
    let b = Running::start(on_pg);
    assert_eq!(check(&b), (json!(true), json!(true)));
    let (code, v) = get(&format!("{}&id={id}", b.api("/Status/Get")));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["ShareStatus"], 6, "{v}");
    let (code, v) = get(&format!("{}&Entity=1&EntityId=869196", b.api("/History")));
    assert_eq!(code, 200, "{v}");
    let records = v["Records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{v}");
    assert_eq!(records[0]["Status"], "Completed", "{v}");
    assert_eq!(records[0]["Kind"], "Share", "{v}");
}

/// Poll `f` until it holds or `within` passes.
fn eventually(within: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() > end {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn two_instances_at_once_follow_each_other_and_a_cut_off_one_is_not_ready() {
    let test = "two_instances_at_once_follow_each_other_and_a_cut_off_one_is_not_ready";
    let Some(server) = pg::url(test) else {
        return;
    };
    let url = pg::fresh_database(&server);
    let name = url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let on_pg = |args: &mut grantwheel_server::config::ServeArgs| {
        args.postgres = Some(url.clone());
        args.no_context_check = true;
        args.max_staleness = std::time::Duration::from_millis(700);
    };
    let a = Running::start(on_pg);
    let b = Running::start(on_pg);
    let check = |s: &Running| {
        let (code, v) = get(&format!(
            "{}&UserId=0203f172-8642-11e7-9bed-069b743e848f&Entity=1&EntityId=869196",
            s.api("/Check")
        ));
        assert_eq!(code, 200, "{v}");
        v["Read"] == json!(true)
    };
    let second = std::time::Duration::from_secs(1);

    // A share on A is answered on B (the feed, not a restart), and a
    // revoke on A is a "no" on B.
    let (code, v) = post(&a.api("/Share"), "application/json", SHARE.as_bytes());
    assert_eq!((code, &v["Status"]), (200, &json!("Success")), "{v}");
    assert!(eventually(second, || check(&b)), "B sees A's share");
    let revoke = SHARE.replace(",\"DurationInMinutes\":30", "");
    let (code, v) = post(&a.api("/Revoke"), "application/json", revoke.as_bytes());
    assert_eq!((code, &v["Status"]), (200, &json!("Success")), "{v}");
    assert!(eventually(second, || !check(&b)), "B sees A's revoke");
    // And the other way: B writes, A reads its own feed.
    let (code, v) = post(&b.api("/Share"), "application/json", SHARE.as_bytes());
    assert_eq!((code, &v["Status"]), (200, &json!("Success")), "{v}");
    assert!(check(&b), "read-your-writes on B");
    assert!(eventually(second, || check(&a)), "A sees B's share");

    // Ready, with the feed's position shown (two shares and a revoke).
    for s in [&a, &b] {
        let (code, v) = get(&s.url("/ready", ""));
        assert_eq!((code, &v["Status"]), (200, &json!("Ready")), "{v}");
        assert_eq!(v["Feed"]["Fresh"], json!(true), "{v}");
        assert!(
            v["Feed"]["Position"].as_u64().is_some_and(|p| p >= 3),
            "{v}"
        );
        let (code, v) = get(&s.url("/health", ""));
        assert_eq!((code, &v["Feed"]["Fresh"]), (200, &json!(true)), "{v}");
    }

    // The database becomes unreachable for both: past --max-staleness
    // their checks say no, /ready fails saying why, /health stays alive.
    let mut sql = postgres::Client::connect(&server, postgres::NoTls).unwrap();
    sql.batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        .unwrap();
    sql.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
        &[&name],
    )
    .unwrap();
    let not_ready = |s: &Running| {
        let (code, v) = get(&s.url("/ready", ""));
        code == 503
            && v["ExceptionMessage"]
                .as_str()
                .is_some_and(|m| m.contains("behind the change feed"))
    };
    assert!(
        eventually(5 * second, || not_ready(&a) && not_ready(&b)),
        "both not ready"
    );
    assert!(!check(&a) && !check(&b), "a cut-off instance says no");
    let (code, v) = get(&b.url("/health", ""));
    assert_eq!((code, &v["Feed"]["Fresh"]), (200, &json!(false)), "{v}");
    assert!(v["Feed"]["Problem"].is_string(), "{v}");

    // Back: both catch up, are ready, and answer yes again.
    sql.batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .unwrap();
    assert!(
        eventually(10 * second, || check(&a) && check(&b)),
        "both answer again once caught up"
    );
    for s in [&a, &b] {
        let (code, v) = get(&s.url("/ready", ""));
        assert_eq!((code, &v["Status"]), (200, &json!("Ready")), "{v}");
    }
}
