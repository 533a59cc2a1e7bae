//! The service on PostgreSQL (`--postgres URL`): the grants, history and
//! rules live in the database, not in the instance's files. A share made
//! by one instance is answered, with its status and history, by another
//! instance started on the same database with files of its own, and the
//! instance that made it can be shut down with a call in flight without
//! a panic (the connections close off the async threads).
//!
//! Needs a server: `GRANTWHEEL_PG_URL` (see `tests/support/pg.rs`).

mod common;

#[path = "../../tests/support/pg.rs"]
mod pg;

use common::{get, post, Running};
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
    assert_eq!(v["Message"]["ResponseText"], "Completed", "{v}");
    let (code, v) = get(&format!("{}&Entity=1&EntityId=869196", b.api("/History")));
    assert_eq!(code, 200, "{v}");
    let records = v["Records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{v}");
    assert_eq!(records[0]["Status"], "Completed", "{v}");
    assert_eq!(records[0]["Kind"], "Share", "{v}");
}
