//! What an operator watches: metrics, and readiness when the store fails.

use crate::common::{get, post, Running};
use grantwheel::store::{Fault, FaultHandle, FaultyStore, SqliteStore};
use serde_json::{json, Value};

fn share_body(entity: u64) -> Vec<u8> {
    serde_json::to_vec(
        &json!([{"UserId":"0203f172-8642-11e7-9bed-069b743e848f","Entity":5,
        "EntityType":3,"EntityId":entity.to_string(),"AccessType":1,"DurationInMinutes":60}]),
    )
    .unwrap()
}

/// The value of the first sample of `name` whose labels contain `labels`.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(labels)
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_count_calls_by_route_and_code_and_show_the_live_grants() {
    let s = Running::start(|a| a.no_context_check = true);
    for n in 1..=3 {
        let (code, v) = post(&s.api("/Share"), "application/json", &share_body(n));
        assert_eq!(code, 200, "{v}");
    }
    let (code, _) = get(&s.url(
        "/v2/EntityAccess.svc/Rules",
        "accessKey=nope&secretKey=nope",
    ));
    assert_eq!(code, 401);

    let (code, text) = get(&s.url("/metrics", ""));
    assert_eq!(code, 200);
    let text = match text {
        Value::String(t) => t,
        other => panic!("metrics are text, not {other}"),
    };
    let shares = sample(
        &text,
        "grantwheel_http_requests_total",
        // The recorder is the process's: the other tests here count their
        // calls in it too, so the route and the code are both named.
        r#"route="/v2/EntityAccess.svc/Share",status="200""#,
    );
    assert!(
        shares.is_some_and(|n| n >= 3.0),
        "three shares counted:\n{text}"
    );
    assert!(
        sample(&text, "grantwheel_http_requests_total", r#"status="401""#)
            .is_some_and(|n| n >= 1.0),
        "the 401 counted by code:\n{text}"
    );
    assert!(
        sample(&text, "grantwheel_unauthorized_total", "").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "grantwheel_live_grants", ""),
        Some(3.0),
        "{text}"
    );
    assert!(
        text.contains("grantwheel_http_request_duration_seconds"),
        "latency per route:\n{text}"
    );
    // The query string (where the secret travels) is never a label.
    assert!(!text.contains(&s.key.secret), "{text}");
    assert!(!text.contains("secretKey"), "{text}");
}

#[test]
fn readiness_fails_while_the_store_cannot_be_read_and_the_process_keeps_serving() {
    let handle = std::sync::Arc::new(std::sync::OnceLock::<FaultHandle>::new());
    let keep = handle.clone();
    let s = Running::start_with_store(
        |a| a.no_context_check = true,
        move |db| {
            let (store, h) = FaultyStore::new(SqliteStore::open(db).unwrap());
            keep.set(h).unwrap();
            Box::new(store)
        },
    );
    let handle = handle.get().unwrap();
    let (code, v) = post(&s.api("/Share"), "application/json", &share_body(7));
    assert_eq!(code, 200, "{v}");
    let (code, v) = get(&s.url("/ready", ""));
    assert_eq!((code, &v["Status"]), (200, &json!("Ready")), "{v}");

    // The store stops answering: reads and writes fail.
    handle.fail_reads(true);
    handle.set(Fault::From(handle.ops() + 1));
    let (code, v) = get(&s.url("/ready", ""));
    assert_eq!(code, 503, "{v}");
    assert_eq!(v["Status"], "Error", "{v}");
    assert_eq!(v["ExceptionType"], "Unavailable", "{v}");
    let (code, v) = get(&format!("{}&Entity=5&EntityId=7", s.api("/History")));
    assert_eq!(
        (code, &v["ExceptionType"]),
        (503, &json!("Unavailable")),
        "{v}"
    );

    // Alive, and checks still answer from memory.
    assert_eq!(get(&s.url("/health", "")).0, 200);
    let check = format!(
        "{}&UserId=0203f172-8642-11e7-9bed-069b743e848f&Entity=5&EntityId=7",
        s.api("/Check")
    );
    let (code, v) = get(&check);
    assert_eq!((code, &v["Read"]), (200, &json!(true)), "{v}");
    // A write cannot be kept: an error in the documented shape, never a
    // success, and nothing granted.
    let (code, v) = post(&s.api("/Share"), "application/json", &share_body(8));
    assert!(code >= 500, "{code} {v}");
    assert_eq!(v["Status"], "Error", "{v}");
    let (_, v) = get(&check.replace("EntityId=7", "EntityId=8"));
    assert_eq!(v["Read"], json!(false), "{v}");

    // The store recovers: ready again, and the earlier share is intact.
    handle.fail_reads(false);
    handle.set(Fault::None);
    let (code, v) = get(&s.url("/ready", ""));
    assert_eq!((code, &v["Status"]), (200, &json!("Ready")), "{v}");
    let (code, v) = get(&format!("{}&Entity=5&EntityId=7", s.api("/History")));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["Records"].as_array().map(Vec::len), Some(1), "{v}");
}

#[test]
fn an_engine_setting_refused_at_start_names_its_flag() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = grantwheel_server::config::ServeArgs::new(
        dir.path().join("grantwheel.db"),
        "127.0.0.1:0".parse().unwrap(),
    );
    args.max_staleness = std::time::Duration::ZERO;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = match rt.block_on(grantwheel_server::Server::bind(args)) {
        Ok(_) => panic!("a zero --max-staleness was taken"),
        Err(e) => e,
    };
    match &err {
        grantwheel_server::StartError::Setting { field, .. } => {
            assert_eq!(*field, "--max-staleness", "{err}")
        }
        other => panic!("not named as a setting: {other}"),
    }
}
