//! The service over a real socket: the seed's bodies verbatim, codes and
//! error shapes, keys, the limiter, hostile input, the history page.

use std::time::Duration;

use crate::common;
use crate::common::{agent, get, post, Running};
use grantwheel_server::keys::KeyStore;
use serde_json::{json, Value};

/// The seed's Share body, byte for byte.
const SEED_SHARE: &str = r#"[
  {
    "UserId": "0203f172-8642-11e7-9bed-069b743e848f",
    "Entity": 1,
    "EntityType": 3,
    "EntityId": "869196",
    "ContextEntity": 1,
    "ContextEntityId": "f2dbf1d5-bbab-418b-bddc-4c92ecdef214",
    "AccessType": 2,
    "DurationInMinutes": 30
  }
]"#;

/// The activity of the seed's example, with the seed's user as its owner.
const SEED_ACTIVITY: &str = r#"{"Id":"evt-1","Trigger":"ActivityPosted","Entity":1,"EntityId":"869196",
  "Activity":{"Id":"f2dbf1d5-bbab-418b-bddc-4c92ecdef214","Owner":"0203f172-8642-11e7-9bed-069b743e848f"}}"#;

fn assert_error_shape(v: &Value, kind: &str) {
    assert_eq!(v["Status"], "Error", "{v}");
    assert_eq!(v["ExceptionType"], kind, "{v}");
    assert!(
        v["ExceptionMessage"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
}

#[test]
fn the_seed_share_then_status_then_check_then_revoke() {
    let s = Running::start(|_| {});
    // Before the activity is known, the lead cannot be shared through it.
    let (code, v) = post(&s.api("/Share"), "application/json", SEED_SHARE.as_bytes());
    assert_eq!(code, 400, "{v}");
    assert!(
        v["ExceptionMessage"]
            .as_str()
            .unwrap()
            .contains("not known"),
        "{v}"
    );

    let (code, v) = post(
        &s.api("/Events"),
        "application/json",
        SEED_ACTIVITY.as_bytes(),
    );
    assert_eq!((code, &v["Status"]), (200, &json!("Success")), "{v}");

    let (code, v) = post(&s.api("/Share"), "application/json", SEED_SHARE.as_bytes());
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["Status"], "Success");
    let id = v["Message"]["Id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 32);

    let (code, v) = get(&format!("{}&id={id}", s.api("/Status/Get")));
    assert_eq!(code, 200, "{v}");
    // The seed's shape exactly, with the extension `State`.
    assert_eq!(
        v,
        json!({"Status": "Success", "Message": {"ResponseText": "Request processed successfully."},
            "ShareStatus": 6, "ErrorMessage": null, "State": "Completed"})
    );

    let check = format!(
        "{}&UserId=0203f172-8642-11e7-9bed-069b743e848f&Entity=1&EntityId=869196",
        s.api("/Check")
    );
    let (code, v) = get(&check);
    assert_eq!(
        (code, &v["Read"], &v["Edit"]),
        (200, &json!(true), &json!(true)),
        "{v}"
    );

    let revoke = SEED_SHARE.replace(",\n    \"DurationInMinutes\": 30", "");
    let (code, v) = post(&s.api("/Revoke"), "application/json", revoke.as_bytes());
    assert_eq!((code, &v["Status"]), (200, &json!("Success")), "{v}");
    let (_, v) = get(&check);
    assert_eq!(
        (&v["Read"], &v["Edit"]),
        (&json!(false), &json!(false)),
        "{v}"
    );

    // The history endpoint shows both, newest first.
    let (code, v) = get(&format!("{}&Entity=1&EntityId=869196", s.api("/History")));
    assert_eq!(code, 200, "{v}");
    let records = v["Records"].as_array().unwrap();
    assert_eq!(
        records.len(),
        3,
        "the refused share, the share and the revoke: {v}"
    );
    assert_eq!(records[0]["Kind"], "Revoke");
    assert_eq!(records[1]["Status"], "Completed");
    assert_eq!(records[2]["Status"], "Failed");

    // Unknown request ids and malformed ones.
    let (code, v) = get(&format!("{}&id={}", s.api("/Status/Get"), "0".repeat(32)));
    assert_eq!(code, 404);
    assert_error_shape(&v, "RequestNotFound");
    let (code, v) = get(&format!("{}&id=98fe", s.api("/Status/Get")));
    assert_eq!(code, 400);
    assert_error_shape(&v, "InvalidInput");
}

#[test]
fn a_batch_mixing_good_and_bad_items_answers_each_in_order() {
    let s = Running::start(|_| {});
    let (code, _) = post(
        &s.api("/Events"),
        "application/json",
        SEED_ACTIVITY.as_bytes(),
    );
    assert_eq!(code, 200);
    let mut items: Vec<Value> = serde_json::from_str(SEED_SHARE).unwrap();
    items.push(json!({"UserId": "nope"}));
    items.push(json!({"UserId":"0203f172-8642-11e7-9bed-069b743e848f","Entity":1,"EntityType":3,"EntityId":"869196","ContextEntity":1,"ContextEntityId":"f2dbf1d5-bbab-418b-bddc-4c92ecdef214","AccessType":1,"DurationInMinutes":0}));
    let (code, v) = post(
        &s.api("/Share"),
        "application/json",
        &serde_json::to_vec(&items).unwrap(),
    );
    assert_eq!(code, 200, "{v}");
    let answers = v.as_array().unwrap();
    assert_eq!(answers.len(), 3);
    assert_eq!(answers[0]["Status"], "Success");
    assert!(answers[1]["ExceptionMessage"]
        .as_str()
        .unwrap()
        .starts_with("item 1: `UserId`"));
    assert!(answers[2]["ExceptionMessage"]
        .as_str()
        .unwrap()
        .contains("`DurationInMinutes`"));
}

#[test]
fn every_credential_failure_gets_the_same_401() {
    let s = Running::start(|_| {});
    let base = format!("http://{}/v2/EntityAccess.svc/Share", s.addr);
    let revoked = {
        let store = KeyStore::open(&s.db()).unwrap();
        let k = store.add("soon revoked").unwrap();
        store.revoke(&k.access_key).unwrap();
        k
    };
    std::thread::sleep(Duration::from_millis(1500));
    let cases = [
        base.clone(),
        format!("{base}?accessKey=gwnobody&secretKey={}", s.key.secret),
        format!("{base}?accessKey={}&secretKey=wrong", s.key.access_key),
        format!("{base}?accessKey={}", s.key.access_key),
        format!(
            "{base}?accessKey={}&secretKey={}",
            revoked.access_key, revoked.secret
        ),
    ];
    let answers: Vec<(u16, Value)> = cases
        .iter()
        .map(|u| post(u, "application/json", SEED_SHARE.as_bytes()))
        .collect();
    for a in &answers {
        assert_eq!(a, &answers[0]);
    }
    assert_eq!(answers[0].0, 401);
    assert_error_shape(&answers[0].1, "Unauthorized");
}

#[test]
fn the_26th_call_in_5_seconds_is_refused_and_keys_do_not_share_a_budget() {
    let s = Running::start(|_| {});
    let url = format!("{}&id={}", s.api("/Status/Get"), "0".repeat(32));
    let codes: Vec<u16> = (0..26).map(|_| get(&url).0).collect();
    assert_eq!(codes.iter().filter(|c| **c == 404).count(), 25, "{codes:?}");
    let resp = agent().get(&url).call().unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry));
    let (_, v) = get(&url);
    assert_error_shape(&v, "TooManyRequests");
    assert_eq!(
        v["ExceptionMessage"],
        "API calls exceeded the limit of 25 in 5 second(s)"
    );
    // Another key has its own budget.
    let other = KeyStore::open(&s.db()).unwrap().add("other").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let other_url = s.url(
        "/v2/EntityAccess.svc/Status/Get",
        &format!(
            "accessKey={}&secretKey={}&id={}",
            other.access_key,
            other.secret,
            "0".repeat(32)
        ),
    );
    assert_eq!(get(&other_url).0, 404);
    // After the window, the first key is admitted again.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(get(&url).0, 404);
}

#[test]
fn hostile_input_is_refused_and_nothing_is_stored() {
    let s = Running::start(|_| {});
    let share = s.api("/Share");
    let (code, v) = post(&share, "text/plain", SEED_SHARE.as_bytes());
    assert_eq!(code, 400);
    assert!(v["ExceptionMessage"]
        .as_str()
        .unwrap()
        .contains("application/json"));
    let (code, v) = post(&share, "application/json", b"not json");
    assert_eq!(code, 400);
    assert_error_shape(&v, "InvalidInput");
    let (code, _) = post(&share, "application/json", &[0x5b, 0xff, 0xfe, 0x5d]);
    assert_eq!(code, 400, "invalid UTF-8");
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (code, _) = post(&share, "application/json", deep.as_bytes());
    assert_eq!(code, 400, "nesting 100k deep");
    let big = vec![b' '; 10 * 1024 * 1024];
    let resp = agent()
        .post(&share)
        .header("Content-Type", "application/json")
        .send(&big[..]);
    if let Ok(mut resp) = resp {
        assert_eq!(resp.status().as_u16(), 413);
        let v: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
        assert_error_shape(&v, "PayloadTooLarge");
    }
    let (code, v) = get(&s.url("/v2/EntityAccess.svc/Nope", ""));
    assert_eq!(code, 404);
    assert_error_shape(&v, "NotFound");
    assert_eq!(
        v["ExceptionMessage"],
        "API could not be found: check the API signature"
    );
    // Still serving, and nothing was stored.
    let (code, v) = get(&format!("{}&Entity=1&EntityId=869196", s.api("/History")));
    assert_eq!(code, 200);
    assert_eq!(v["Records"].as_array().unwrap().len(), 0);
}

#[test]
fn the_history_page_needs_a_login_and_escapes_what_it_shows() {
    let s = Running::start(|_| {});
    let page = s.url("/history", "Entity=1&EntityId=869196");
    let resp = agent().get(&page).call().unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    assert!(resp.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/login"));
    let form = format!(
        "accessKey={}&secretKey={}&next=%2Fhistory%3FEntity%3D1%26EntityId%3D869196",
        s.key.access_key, s.key.secret
    );
    let resp = agent()
        .post(&s.url("/login", ""))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send(form.as_bytes())
        .unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    let cookie = resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let hostile = s.url(
        "/history",
        "Entity=1&EntityId=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
    );
    let mut resp = agent()
        .get(&hostile)
        .header("Cookie", &cookie)
        .call()
        .unwrap();
    let html = resp.body_mut().read_to_string().unwrap();
    assert!(!html.contains("<script>"), "{html}");
    let mut resp = agent().get(&page).header("Cookie", &cookie).call().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let html = resp.body_mut().read_to_string().unwrap();
    assert!(html.contains("Who has access now"));
}

#[test]
fn a_published_rule_shares_on_an_event_and_a_restart_keeps_everything() {
    let s = Running::start(|_| {});
    let rule = json!({"Name":"share deals with the task owner","Trigger":"TaskCreated","Entity":5,
        "ShareWith":"TaskOwner","AccessType":1,"DurationInMinutes":60});
    let (code, v) = post(
        &s.api("/Rules"),
        "application/json",
        &serde_json::to_vec(&rule).unwrap(),
    );
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["State"], "Draft");
    let id = v["Id"].as_u64().unwrap();
    let (code, v) = post(
        &s.api(&format!("/Rules/{id}/Publish")),
        "application/json",
        b"",
    );
    assert_eq!((code, &v["State"]), (200, &json!("Published")), "{v}");
    let (code, v) = post(
        &s.api("/Rules"),
        "application/json",
        br#"{"Name":"x","Trigger":"Nope"}"#,
    );
    assert_eq!(code, 400, "{v}");
    assert_error_shape(&v, "InvalidInput");

    let task_owner = "11111111-2222-4333-8444-555555555555";
    let event = json!({"Id":"evt-9","Trigger":"TaskCreated","Entity":5,"EntityId":"42",
        "Owner":"0203f172-8642-11e7-9bed-069b743e848f",
        "Task":{"Id":"aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee","Owner":task_owner}});
    let (code, v) = post(
        &s.api("/Events"),
        "application/json",
        &serde_json::to_vec(&event).unwrap(),
    );
    assert_eq!(code, 200, "{v}");
    let request = v["RequestIds"][0].as_str().unwrap().to_string();
    let check = format!(
        "{}&UserId={task_owner}&Entity=5&EntityId=42",
        s.api("/Check")
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while get(&check).1["Read"] != json!(true) {
        assert!(
            std::time::Instant::now() < deadline,
            "the rule's share never landed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The same event again acts once.
    let (_, again) = post(
        &s.api("/Events"),
        "application/json",
        &serde_json::to_vec(&event).unwrap(),
    );
    assert_eq!(again["RequestIds"][0], json!(request));

    let s = s.restart();
    let check = format!(
        "{}&UserId={task_owner}&Entity=5&EntityId=42",
        s.api("/Check")
    );
    let (_, v) = get(&check);
    assert_eq!(
        (&v["Read"], &v["Edit"]),
        (&json!(true), &json!(false)),
        "{v}"
    );
    let (code, v) = get(&format!("{}&id={request}", s.api("/Status/Get")));
    assert_eq!((code, &v["ShareStatus"]), (200, &json!(6)), "{v}");
    let (_, v) = get(&s.api(&format!("/Rules/{id}")));
    assert_eq!(v["State"], "Published", "{v}");
    let (_, v) = get(&format!(
        "{}&Entity=5&EntityId=42&Source=Automation",
        s.api("/History")
    ));
    let records = v["Records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{v}");
    assert_eq!(records[0]["RuleId"], json!(id));
    let (code, _) = agent()
        .delete(&s.api(&format!("/Rules/{id}")))
        .call()
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(code, 200);
    assert_eq!(get(&s.api(&format!("/Rules/{id}"))).0, 404);
}

#[test]
fn the_check_batch_answers_each_pair_in_order() {
    let s = Running::start(|a| a.no_context_check = true);
    let share = json!([{"UserId":"0203f172-8642-11e7-9bed-069b743e848f","Entity":5,"EntityType":3,
        "EntityId":"42","AccessType":1,"DurationInMinutes":60}]);
    let (code, v) = post(
        &s.api("/Share"),
        "application/json",
        &serde_json::to_vec(&share).unwrap(),
    );
    assert_eq!(code, 200, "{v}");
    let checks = json!([
        {"UserId":"0203f172-8642-11e7-9bed-069b743e848f","Entity":5,"EntityId":"42"},
        {"UserId":"0203f172-8642-11e7-9bed-069b743e848f","Entity":5,"EntityId":43},
        {"UserId":"0203f172-8642-11e7-9bed-069b743e848f","Entity":7,"EntityId":"42"},
        {"UserId":"nope","Entity":5,"EntityId":"42"}
    ]);
    let (code, v) = post(
        &s.api("/Check"),
        "application/json",
        &serde_json::to_vec(&checks).unwrap(),
    );
    assert_eq!(code, 200, "{v}");
    let a = v.as_array().unwrap();
    assert_eq!(
        (&a[0]["Read"], &a[0]["Edit"]),
        (&json!(true), &json!(false))
    );
    assert!(a[0]["ReadUntil"].is_string() && a[0]["EditUntil"].is_null());
    assert_eq!(a[1]["Read"], json!(false));
    assert!(
        a[2]["ExceptionMessage"]
            .as_str()
            .unwrap()
            .contains("`Entity`"),
        "{v}"
    );
    assert!(
        a[3]["ExceptionMessage"]
            .as_str()
            .unwrap()
            .starts_with("item 3"),
        "{v}"
    );
}

#[test]
fn a_context_resolver_url_decides_and_a_silent_one_refuses() {
    // A stand-in CRM on loopback: allows only the seed's user.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let crm = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming().take(20) {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            let body = if head.contains("UserId=0203f172-8642-11e7-9bed-069b743e848f") {
                r#"{"Allowed":true}"#
            } else {
                r#"{"Allowed":false,"Reason":"that user does not own the activity"}"#
            };
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let s = Running::start(|a| a.context_resolver = Some(format!("http://{crm}/check")));
    let (code, v) = post(&s.api("/Share"), "application/json", SEED_SHARE.as_bytes());
    assert_eq!(code, 200, "{v}");
    let other = SEED_SHARE.replace(
        "0203f172-8642-11e7-9bed-069b743e848f",
        "11111111-2222-4333-8444-555555555555",
    );
    let (code, v) = post(&s.api("/Share"), "application/json", other.as_bytes());
    assert_eq!(code, 400, "{v}");
    assert!(
        v["ExceptionMessage"]
            .as_str()
            .unwrap()
            .contains("does not own"),
        "{v}"
    );

    // A resolver that does not answer refuses (fails closed).
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let s = Running::start(|a| a.context_resolver = Some(format!("http://{dead}/check")));
    let (code, v) = post(&s.api("/Share"), "application/json", SEED_SHARE.as_bytes());
    assert_eq!(code, 400, "{v}");
    assert!(
        v["ExceptionMessage"]
            .as_str()
            .unwrap()
            .contains("did not answer"),
        "{v}"
    );
}

#[test]
fn a_share_that_starts_later_is_listed_apart_and_checks_say_no_until_then() {
    let s = Running::start(|_| {});
    let user = "0203f172-8642-11e7-9bed-069b743e848f";
    // The opportunity's owner is someone else.
    let event = json!({"Id":"evt-s","Trigger":"EntityCreated","Entity":5,"EntityId":"42",
        "Owner":"11111111-2222-4333-8444-555555555555"});
    let (code, v) = post(
        &s.api("/Events"),
        "application/json",
        &serde_json::to_vec(&event).unwrap(),
    );
    assert_eq!(code, 200, "{v}");
    let items = json!([
        {"UserId": user, "Entity": 5, "EntityType": 3, "EntityId": "42", "AccessType": 2,
         "DurationInMinutes": 60, "StartsInMinutes": 120},
        {"UserId": user, "Entity": 5, "EntityType": 3, "EntityId": "42", "AccessType": 1,
         "StartsInMinutes": 5, "StartsAt": "2030-01-01T00:00:00Z"}
    ]);
    let (code, v) = post(
        &s.api("/Share"),
        "application/json",
        &serde_json::to_vec(&items).unwrap(),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v[0]["Status"], "Success", "{v}");
    assert!(
        v[1]["ExceptionMessage"]
            .as_str()
            .unwrap()
            .contains("`StartsInMinutes`: give `StartsAt` or `StartsInMinutes`, not both"),
        "{v}"
    );
    let id = v[0]["Message"]["Id"].as_str().unwrap().to_string();
    let (_, status) = get(&format!("{}&id={id}", s.api("/Status/Get")));
    assert_eq!(status["ShareStatus"], 6);

    let check = format!("{}&UserId={user}&Entity=5&EntityId=42", s.api("/Check"));
    let (code, v) = get(&check);
    assert_eq!((code, &v["Read"]), (200, &json!(false)), "{v}");
    let (_, now) = get(&format!("{}&Entity=5&EntityId=42", s.api("/Access")));
    assert_eq!(now, json!([]));
    let (code, later) = get(&format!(
        "{}&Entity=5&EntityId=42",
        s.api("/Access/Scheduled")
    ));
    assert_eq!(code, 200, "{later}");
    let starts: chrono::DateTime<chrono::Utc> =
        later[0]["Starts"].as_str().unwrap().parse().unwrap();
    let ends: chrono::DateTime<chrono::Utc> = later[0]["Ends"].as_str().unwrap().parse().unwrap();
    // Counted from the start asked for; listed from the tick that starts
    // it (at most one tick, 1 s, later), when checks begin to say yes.
    let length = ends - starts;
    assert!(
        length <= chrono::Duration::minutes(60)
            && length > chrono::Duration::minutes(60) - chrono::Duration::seconds(1),
        "counted from the start: {length}"
    );
    assert_eq!(starts.timestamp_subsec_millis(), 0, "on a tick: {starts}");
    let ahead = starts - chrono::Utc::now();
    assert!(
        ahead > chrono::Duration::minutes(119)
            && ahead <= chrono::Duration::minutes(120) + chrono::Duration::seconds(1),
        "{ahead}"
    );
    // The history keeps the start asked for.
    let (_, history) = get(&format!("{}&Entity=5&EntityId=42", s.api("/History")));
    let asked: chrono::DateTime<chrono::Utc> = history["Records"][0]["Starts"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ends - asked, chrono::Duration::minutes(60), "{history}");
    assert!(asked <= starts && starts - asked < chrono::Duration::seconds(1));
}

#[test]
fn a_held_share_waits_for_an_approver_and_the_audit_names_them() {
    let s = Running::start(|a| {
        a.approve_edit = true;
        a.approval_timeout = Duration::from_secs(3600);
    });
    let user = "0203f172-8642-11e7-9bed-069b743e848f";
    let boss = "b0550000-0000-4000-8000-000000000001";
    for record in ["77", "78"] {
        let event = json!({"Id": format!("evt-{record}"), "Trigger": "EntityCreated", "Entity": 5,
            "EntityId": record, "Owner": "11111111-2222-4333-8444-555555555555"});
        let (code, v) = post(
            &s.api("/Events"),
            "application/json",
            &serde_json::to_vec(&event).unwrap(),
        );
        assert_eq!(code, 200, "{v}");
    }
    let share = |access: u8, id: &str| {
        let items = json!([{"UserId": user, "Entity": 5, "EntityType": 3, "EntityId": id,
            "AccessType": access, "DurationInMinutes": 60}]);
        let (code, v) = post(
            &s.api("/Share"),
            "application/json",
            &serde_json::to_vec(&items).unwrap(),
        );
        assert_eq!(code, 200, "{v}");
        v["Message"]["Id"].as_str().unwrap().to_string()
    };
    // Read access is not held; edit access is.
    let read = share(1, "78");
    let (_, st) = get(&format!("{}&id={read}", s.api("/Status/Get")));
    assert_eq!(st["ShareStatus"], 6, "{st}");
    assert!(st.get("Stage").is_none(), "{st}");
    let id = share(2, "77");
    let (_, st) = get(&format!("{}&id={id}", s.api("/Status/Get")));
    assert_eq!(
        (&st["ShareStatus"], &st["State"]),
        (&json!(1), &json!("Processing")),
        "{st}"
    );
    assert_eq!(st["Stage"], "AwaitingApproval", "{st}");
    let check = format!("{}&UserId={user}&Entity=5&EntityId=77", s.api("/Check"));
    assert_eq!(get(&check).1["Read"], json!(false));

    // The queue lists it, with why and until when.
    let (code, queue) = get(&s.api("/Approvals"));
    assert_eq!(code, 200, "{queue}");
    assert_eq!(queue.as_array().unwrap().len(), 1, "{queue}");
    assert_eq!(queue[0]["RequestId"], id.as_str());
    assert_eq!(queue[0]["Stage"], "AwaitingApproval");
    assert!(queue[0]["Approval"]["Why"]
        .as_str()
        .unwrap()
        .contains("edit"));
    assert_eq!(
        (queue[0]["Entity"].clone(), queue[0]["EntityId"].clone()),
        (json!(5), json!("77"))
    );

    // Refusals, each by name, none deciding anything.
    let decide = |what: &str, id: &str, body: Value| {
        post(
            &s.api(&format!("/Approvals/{id}/{what}")),
            "application/json",
            &serde_json::to_vec(&body).unwrap(),
        )
    };
    let (code, v) = decide("Approve", &id, json!({"ApproverId": user}));
    assert_eq!(code, 403, "{v}");
    assert_error_shape(&v, "OwnShare");
    let (code, v) = decide(
        "Approve",
        &id,
        json!({"ApproverId": boss, "Reason": "x".repeat(2001)}),
    );
    assert_eq!(code, 400, "{v}");
    assert!(
        v["ExceptionMessage"].as_str().unwrap().contains("reason"),
        "{v}"
    );
    let (code, v) = decide("Approve", &id, json!({"Approver": boss}));
    assert_eq!(code, 400, "{v}");
    let (code, v) = decide("Approve", "not-an-id", json!({"ApproverId": boss}));
    assert_eq!(code, 400, "{v}");
    let (code, v) = decide(
        "Approve",
        "00000000000000000000000000000001",
        json!({"ApproverId": boss}),
    );
    assert_eq!(code, 404, "{v}");
    assert_eq!(get(&check).1["Read"], json!(false));

    // Approved: access now, the record names the approver.
    let (code, v) = decide(
        "Approve",
        &id,
        json!({"ApproverId": boss, "Reason": "cover"}),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["Status"], "Completed", "{v}");
    assert_eq!(v["Approval"]["Decision"], "Approved");
    assert_eq!(v["Approval"]["ApproverId"], boss);
    assert_eq!(v["Approval"]["Reason"], "cover");
    assert_eq!(get(&check).1["Edit"], json!(true));
    let (code, v) = decide("Deny", &id, json!({"ApproverId": boss}));
    assert_eq!(code, 409, "{v}");
    assert_error_shape(&v, "NotAwaitingApproval");
    assert_eq!(get(&s.api("/Approvals")).1, json!([]));

    // The audit: who had access to the record then, what the user held.
    let at = (chrono::Utc::now() + chrono::Duration::seconds(1)).to_rfc3339();
    let at_q = serde_urlencoded::to_string([("At", at.as_str())]).unwrap();
    let (code, who) = get(&format!(
        "{}&Entity=5&EntityId=77&{at_q}",
        s.api("/Access/At")
    ));
    assert_eq!(code, 200, "{who}");
    assert_eq!(who.as_array().unwrap().len(), 1, "{who}");
    assert_eq!(who[0]["RequestId"], id.as_str());
    assert_eq!(who[0]["Approval"]["ApproverId"], boss);
    let (code, held) = get(&format!("{}&UserId={user}&{at_q}", s.api("/Access/Held")));
    assert_eq!(code, 200, "{held}");
    let ids: Vec<&str> = held
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["RequestId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id.as_str(), read.as_str()], "newest first");
    let (code, v) = get(&format!(
        "{}&UserId={user}&At=yesterday",
        s.api("/Access/Held")
    ));
    assert_eq!(code, 400, "{v}");
    assert!(
        v["ExceptionMessage"].as_str().unwrap().contains("`At`"),
        "{v}"
    );

    // Denied: failed, and no access.
    let other = share(2, "77");
    let (code, v) = decide("Deny", &other, json!({"ApproverId": boss, "Reason": "no"}));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["Status"], "Failed", "{v}");
    assert_eq!(v["Approval"]["Decision"], "Denied");
}

#[test]
fn a_share_checked_again_at_its_start_ends_when_its_context_no_longer_holds() {
    let s = Running::start(|a| a.revalidate_at_start = true);
    let (kept, moved) = (
        "0203f172-8642-11e7-9bed-069b743e848f",
        "7e57ab1e-0000-4000-8000-000000000002",
    );
    let (act_kept, act_moved) = (
        "f2dbf1d5-bbab-418b-bddc-4c92ecdef214",
        "0b5e7d3c-2a19-4f60-9e8d-7c6b5a493827",
    );
    let post_event = |id: &str, act: &str, owner: &str| {
        let event = json!({"Id": id, "Trigger": "ActivityPosted", "Entity": 1, "EntityId": "5150",
            "Activity": {"Id": act, "Owner": owner}});
        let (code, v) = post(
            &s.api("/Events"),
            "application/json",
            &serde_json::to_vec(&event).unwrap(),
        );
        assert_eq!(code, 200, "{v}");
    };
    post_event("e-1", act_kept, kept);
    post_event("e-2", act_moved, moved);
    let starts = (chrono::Utc::now() + chrono::Duration::milliseconds(1500)).to_rfc3339();
    let items = json!([
        {"UserId": kept, "Entity": 1, "EntityType": 3, "EntityId": "5150", "ContextEntity": 1,
         "ContextEntityId": act_kept, "AccessType": 1, "DurationInMinutes": 60, "StartsAt": starts},
        {"UserId": moved, "Entity": 1, "EntityType": 3, "EntityId": "5150", "ContextEntity": 1,
         "ContextEntityId": act_moved, "AccessType": 1, "DurationInMinutes": 60, "StartsAt": starts}
    ]);
    let (code, v) = post(
        &s.api("/Share"),
        "application/json",
        &serde_json::to_vec(&items).unwrap(),
    );
    assert_eq!(code, 200, "{v}");
    let refused_id = v[1]["Message"]["Id"].as_str().unwrap().to_string();
    // Before the start, the second activity passes to someone else.
    post_event("e-3", act_moved, kept);
    let check = |user: &str| {
        get(&format!(
            "{}&UserId={user}&Entity=1&EntityId=5150",
            s.api("/Check")
        ))
        .1["Read"]
            .clone()
    };
    assert_eq!(check(kept), json!(false), "not before its start");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while check(kept) != json!(true) {
        assert!(std::time::Instant::now() < deadline, "never confirmed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(check(moved), json!(false), "refused at its start");
    let (_, history) = get(&format!("{}&Entity=1&EntityId=5150", s.api("/History")));
    let record = history["Records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["RequestId"] == refused_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(record["EndedBy"], "Refused", "{record}");
    assert!(
        record["EndReason"]
            .as_str()
            .unwrap()
            .contains("refused at its start"),
        "{record}"
    );
}

/// After every answer given before the body was read (401 for an unknown
/// key and for a wrong secret, 400 for a wrong content type, 404, 405,
/// 429), the connection stays usable: the next call on it, from a client
/// that sends its headers first and its body 50 ms later, answers
/// normally. A body declared over the limit gets 413 and `Connection:
/// close`, so the client knows to open another.
#[test]
fn the_connection_stays_usable_after_an_early_error() {
    let s = Running::start(|a| {
        a.rate_limit = 3;
        a.no_context_check = true;
        a.max_body = 4096;
    });
    let ak = s.key.access_key.clone();
    let api = "/v2/EntityAccess.svc";
    let good = format!("{api}/Share?{}", s.creds());
    let body = br#"[{"UserId":"0203f172-8642-11e7-9bed-069b743e848f","Entity":5,"EntityType":3,"EntityId":"7","AccessType":1}]"#;
    let json = [("Content-Type", "application/json")];
    let pause = Duration::from_millis(50);
    let wrong_secret = format!("{api}/Share?accessKey={ak}&secretKey={}", "0".repeat(64));
    type Early<'a> = (String, Vec<(&'a str, &'a str)>, u16);
    let early: Vec<Early> = vec![
        (
            format!("POST {api}/Share?accessKey=gwnobody&secretKey=x HTTP/1.1"),
            json.to_vec(),
            401,
        ),
        (format!("POST {wrong_secret} HTTP/1.1"), json.to_vec(), 401),
        (
            format!("POST {good} HTTP/1.1"),
            vec![("Content-Type", "text/plain")],
            400,
        ),
        (
            format!("POST {api}/Shares?{} HTTP/1.1", s.creds()),
            json.to_vec(),
            404,
        ),
        (format!("PUT {good} HTTP/1.1"), json.to_vec(), 405),
    ];
    let mut conn = common::Conn::open(s.addr);
    for (line, headers, code) in &early {
        let a = conn.send(line, headers, body, pause).expect(line);
        assert_eq!(a.code, *code, "{line}: {}", a.body);
        assert_eq!(a.header("connection"), None, "{line}");
        // The next call on the same connection.
        let a = conn
            .send(&format!("GET {api}/Check?{}&UserId=0203f172-8642-11e7-9bed-069b743e848f&Entity=5&EntityId=7 HTTP/1.1", s.creds()), &[], b"", pause)
            .unwrap_or_else(|| panic!("the connection was dropped after {line}"));
        assert_eq!(a.code, 200, "after {line}: {}", a.body);
    }
    // 429: shares spend the budget of 3 (the 400 above spent one), then
    // one is refused early.
    let codes: Vec<u16> = (0..3)
        .map(|_| {
            conn.send(&format!("POST {good} HTTP/1.1"), &json, body, pause)
                .expect("share")
                .code
        })
        .collect();
    assert_eq!(codes, [200, 200, 429]);
    let a = conn
        .send("GET /health HTTP/1.1", &[], b"", pause)
        .expect("the connection was dropped after 429");
    assert_eq!(a.code, 200);

    // Declared over the limit: refused at once, and the connection ends.
    let big = vec![b' '; 5000];
    let check = format!("{api}/Check?{}", s.creds());
    let a = conn
        .send(
            &format!("POST {check} HTTP/1.1"),
            &json,
            &big,
            Duration::ZERO,
        )
        .expect("413");
    assert_eq!((a.code, a.header("connection")), (413, Some("close")));

    // A pooled client: its next call after each early error succeeds.
    let pooled = agent();
    for (line, _, _) in &early[..2] {
        let url = format!(
            "http://{}{}",
            s.addr,
            line.split_whitespace().nth(1).unwrap()
        );
        let resp = pooled
            .post(&url)
            .header("Content-Type", "application/json")
            .send(&body[..])
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401);
        let resp = pooled
            .get(&format!("http://{}/health", s.addr))
            .call()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
    }
}

/// Bodies that were once accepted and should not be: a key given twice
/// (the first and the last value disagree), a batch over the item cap, a
/// padded id. Each gets 400 naming the field, and nothing is stored. A
/// byte-order mark before the JSON is skipped. An error quotes at most a
/// short prefix of what was sent.
#[test]
fn ambiguous_or_oversized_bodies_are_refused_naming_the_field() {
    let s = Running::start(|a| {
        a.no_context_check = true;
        a.max_batch_items = 3;
        a.rate_limit = 0;
    });
    let share = s.api("/Share");
    let item = |id: &str| {
        format!(
            r#"{{"UserId":"0203f172-8642-11e7-9bed-069b743e848f","Entity":5,"EntityType":3,"EntityId":"{id}","AccessType":1}}"#
        )
    };
    let history = |id: &str| {
        let (code, v) = get(&format!("{}&Entity=5&EntityId={id}", s.api("/History")));
        assert_eq!(code, 200);
        v["Records"].as_array().unwrap().len()
    };

    // The same field twice: edit first, read last.
    let twice = r#"[{"UserId":"0203f172-8642-11e7-9bed-069b743e848f","Entity":5,"EntityType":3,"EntityId":"11","AccessType":2,"DurationInMinutes":30,"AccessType":1}]"#;
    let (code, v) = post(&share, "application/json", twice.as_bytes());
    assert_eq!(code, 400, "{v}");
    assert_error_shape(&v, "InvalidInput");
    assert_eq!(
        v["ExceptionMessage"],
        "`AccessType` appears twice in item 0: a field may be given once"
    );
    assert_eq!(history("11"), 0);
    // In the other endpoints' bodies too.
    let rule = r#"{"Name":"a","Name":"b","Trigger":"EntityCreated","Entity":5,"ShareWith":"ActivityOwner","AccessType":1}"#;
    let (code, v) = post(&s.api("/Rules"), "application/json", rule.as_bytes());
    assert_eq!(code, 400, "{v}");
    assert!(
        v["ExceptionMessage"]
            .as_str()
            .unwrap()
            .contains("`Name` appears twice"),
        "{v}"
    );
    let checks = r#"[{"UserId":"0203f172-8642-11e7-9bed-069b743e848f","Entity":5,"EntityId":"1","EntityId":"2"}]"#;
    let (code, v) = post(&s.api("/Check"), "application/json", checks.as_bytes());
    assert_eq!(code, 400, "{v}");
    assert!(
        v["ExceptionMessage"]
            .as_str()
            .unwrap()
            .contains("`EntityId` appears twice in item 0"),
        "{v}"
    );

    // Over the item cap: refused whole, none carried out.
    let four = format!(
        "[{},{},{},{}]",
        item("21"),
        item("22"),
        item("23"),
        item("24")
    );
    let (code, v) = post(&share, "application/json", four.as_bytes());
    assert_eq!(code, 400, "{v}");
    assert_eq!(
        v["ExceptionMessage"],
        "the batch holds 4 items; at most 3 are allowed"
    );
    assert_eq!(history("21") + history("24"), 0);
    let (code, v) = post(&s.api("/Revoke"), "application/json", four.as_bytes());
    assert_eq!(code, 400, "{v}");
    let three = format!("[{},{},{}]", item("21"), item("22"), item("23"));
    let (code, v) = post(&share, "application/json", three.as_bytes());
    assert_eq!((code, v.as_array().map(Vec::len)), (200, Some(3)), "{v}");

    // A padded record id is refused, naming it.
    let (code, v) = post(
        &share,
        "application/json",
        format!("[{}]", item(" 869196")).as_bytes(),
    );
    assert_eq!(code, 400, "{v}");
    let m = v["ExceptionMessage"].as_str().unwrap();
    assert!(m.contains("`EntityId`") && m.contains("white space"), "{v}");
    assert_eq!(history("869196"), 0);
    let (code, v) = get(&format!(
        "{}&UserId=0203f172-8642-11e7-9bed-069b743e848f&Entity=5&EntityId=%20869196",
        s.api("/Check")
    ));
    assert_eq!(code, 400, "{v}");

    // A byte-order mark is skipped.
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(format!("[{}]", item("31")).as_bytes());
    let (code, v) = post(&share, "application/json", &bom);
    assert_eq!(code, 200, "{v}");
    assert_eq!(history("31"), 1);

    // A 900,000-byte UserId is answered in a line.
    let huge = "7".repeat(900_000);
    let body = format!(
        r#"[{{"UserId":"{huge}","Entity":5,"EntityType":3,"EntityId":"1","AccessType":1}}]"#
    );
    let resp = agent()
        .post(&share)
        .header("Content-Type", "application/json")
        .send(body.as_bytes())
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let text = resp.into_body().read_to_string().unwrap();
    assert!(text.len() < 500, "{} bytes", text.len());
    assert!(text.contains("`UserId`"), "{text}");
    for query in [
        format!("&Entity=5&EntityId=1&UserId={huge}"),
        format!("&Entity=5&EntityId=1&Status={huge}"),
        format!("&Entity=5&EntityId={huge}"),
    ] {
        let url = format!("{}{}", s.api("/History"), &query[..query.len().min(60_000)]);
        let (code, v) = get(&url);
        assert_eq!(code, 400, "{v}");
        assert!(v.to_string().len() < 600, "{} bytes", v.to_string().len());
    }
}

/// Batch calls (a share or revoke of more than one item) spend a budget
/// of their own; single calls spend the seed's.
#[test]
fn batch_calls_are_limited_apart_from_single_calls() {
    let s = Running::start(|a| {
        a.no_context_check = true;
        a.rate_limit = 3;
        a.batch_rate_limit = 2;
    });
    let share = s.api("/Share");
    let item = |n: u32| {
        format!(
            r#"{{"UserId":"0203f172-8642-11e7-9bed-069b743e848f","Entity":5,"EntityType":3,"EntityId":"{n}","AccessType":1}}"#
        )
    };
    let batch = format!("[{},{}]", item(1), item(2));
    let codes: Vec<u16> = (0..3)
        .map(|_| post(&share, "application/json", batch.as_bytes()).0)
        .collect();
    assert_eq!(codes, [200, 200, 429]);
    let (_, v) = post(&share, "application/json", batch.as_bytes());
    assert_eq!(
        v["ExceptionMessage"],
        "Batch calls (of more than one item) exceeded the limit of 2 in 5 second(s)"
    );
    // The single calls' budget is whole.
    let one = format!("[{}]", item(3));
    let codes: Vec<u16> = (0..4)
        .map(|_| post(&share, "application/json", one.as_bytes()).0)
        .collect();
    assert_eq!(codes, [200, 200, 200, 429]);
}

/// The key in the `x-LSQ-AccessKey` and `x-LSQ-SecretKey` headers works on
/// every endpoint, as in the query string; a wrong or missing key gets the
/// same 401 either way, and a header wins over the parameter.
#[test]
fn keys_in_headers_work_on_every_endpoint_with_identical_401s() {
    let s = Running::start(|a| {
        a.rate_limit = 0;
        a.no_context_check = true;
    });
    let base = format!("http://{}/v2/EntityAccess.svc", s.addr);
    let user = "0203f172-8642-11e7-9bed-069b743e848f";
    let item = format!(
        r#"[{{"UserId":"{user}","Entity":5,"EntityType":3,"EntityId":"5","AccessType":1}}]"#
    );
    let rule = r#"{"Name":"r","Trigger":"EntityCreated","Entity":5,"ShareWith":"ActivityOwner","AccessType":1}"#;
    let event = r#"{"Id":"e1","Trigger":"EntityCreated","Entity":5,"EntityId":"5"}"#;
    let decision = format!(r#"{{"ApproverId":"{user}"}}"#);
    let rid = "98fe2984209c413c9b6b06a1b68111ff";
    let calls: Vec<(&str, String, Option<&str>)> = vec![
        ("POST", "/Share".into(), Some(&item)),
        ("POST", "/Revoke".into(), Some(&item)),
        ("GET", format!("/Status/Get?id={rid}"), None),
        (
            "GET",
            format!("/Check?UserId={user}&Entity=5&EntityId=5"),
            None,
        ),
        ("POST", "/Check".into(), Some(r#"[]"#)),
        ("GET", "/History?Entity=5&EntityId=5".into(), None),
        ("GET", "/Access?Entity=5&EntityId=5".into(), None),
        ("GET", "/Access/Scheduled?Entity=5&EntityId=5".into(), None),
        (
            "GET",
            "/Access/At?Entity=5&EntityId=5&At=2026-01-01T00:00:00Z".into(),
            None,
        ),
        (
            "GET",
            format!("/Access/Held?UserId={user}&At=2026-01-01T00:00:00Z"),
            None,
        ),
        ("GET", "/Approvals".into(), None),
        ("POST", format!("/Approvals/{rid}/Approve"), Some(&decision)),
        ("POST", format!("/Approvals/{rid}/Deny"), Some(&decision)),
        ("GET", "/Rules".into(), None),
        ("POST", "/Rules".into(), Some(rule)),
        ("GET", "/Rules/1".into(), None),
        ("PUT", "/Rules/1".into(), Some(rule)),
        ("POST", "/Rules/1/Publish".into(), None),
        ("POST", "/Rules/1/Unpublish".into(), None),
        ("DELETE", "/Rules/1".into(), None),
        ("POST", "/Events".into(), Some(event)),
    ];
    let wrong = "0".repeat(64);
    let call =
        |method: &str, path: &str, body: Option<&str>, headers: &[(&str, &str)], query: &str| {
            let sep = if path.contains('?') { '&' } else { '?' };
            let url = if query.is_empty() {
                format!("{base}{path}")
            } else {
                format!("{base}{path}{sep}{query}")
            };
            let mut req = axum::http::Request::builder().method(method).uri(&url);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if body.is_some() {
                req = req.header("Content-Type", "application/json");
            }
            let req = req.body(body.unwrap_or("").as_bytes().to_vec()).unwrap();
            let mut resp = agent().run(req).unwrap();
            let code = resp.status().as_u16();
            (code, resp.body_mut().read_to_string().unwrap())
        };
    let ak = s.key.access_key.as_str();
    let good = [
        ("x-LSQ-AccessKey", ak),
        ("x-LSQ-SecretKey", s.key.secret.as_str()),
    ];
    let bad = [("X-LSQ-ACCESSKEY", ak), ("x-lsq-secretkey", wrong.as_str())];
    let mut first_401 = None;
    for (method, path, body) in &calls {
        let (code, text) = call(method, path, *body, &good, "");
        assert_ne!(code, 401, "{method} {path} with header keys: {text}");
        // A right header over a wrong parameter.
        let (code, _) = call(method, path, *body, &good, &format!("secretKey={wrong}"));
        assert_ne!(code, 401, "{method} {path}: the header wins");
        let refusals = [
            call(method, path, *body, &bad, ""),
            call(
                method,
                path,
                *body,
                &[],
                &format!("accessKey={ak}&secretKey={wrong}"),
            ),
            call(method, path, *body, &[], ""),
            call(method, path, *body, &[("x-LSQ-AccessKey", ak)], ""),
            // A wrong header over a right parameter.
            call(method, path, *body, &bad, &s.creds()),
        ];
        for (code, text) in refusals {
            assert_eq!(code, 401, "{method} {path}: {text}");
            let first = first_401.get_or_insert_with(|| text.clone());
            assert_eq!(&text, first, "{method} {path}: the same 401");
        }
    }
}

/// A revoke ends the grant its context gave, whatever `AccessType` it
/// names: a read revoke (1, also when `AccessType` is left out) of an edit
/// grant ends reading and editing alike, since reading is part of editing.
/// The history keeps the access the revoke named.
#[test]
fn a_read_revoke_of_an_edit_grant_ends_it() {
    let s = Running::start(|a| a.no_context_check = true);
    let user = "0203f172-8642-11e7-9bed-069b743e848f";
    let check = |id: &str| {
        let (_, v) = get(&format!(
            "{}&UserId={user}&Entity=5&EntityId={id}",
            s.api("/Check")
        ));
        (v["Read"].clone(), v["Edit"].clone())
    };
    for (id, access) in [("61", Some(1)), ("62", None)] {
        let share = format!(
            r#"[{{"UserId":"{user}","Entity":5,"EntityType":3,"EntityId":"{id}","AccessType":2}}]"#
        );
        let (code, v) = post(&s.api("/Share"), "application/json", share.as_bytes());
        assert_eq!(code, 200, "{v}");
        assert_eq!(check(id), (json!(true), json!(true)));
        let mut item = json!({"UserId": user, "Entity": 5, "EntityType": 3, "EntityId": id});
        if let Some(a) = access {
            item["AccessType"] = json!(a);
        }
        let body = serde_json::to_vec(&json!([item])).unwrap();
        let (code, v) = post(&s.api("/Revoke"), "application/json", &body);
        assert_eq!(code, 200, "{v}");
        assert_eq!(check(id), (json!(false), json!(false)), "EntityId {id}");
        let (_, h) = get(&format!("{}&Entity=5&EntityId={id}", s.api("/History")));
        let revoke = &h["Records"][0];
        assert_eq!(
            (&revoke["Kind"], &revoke["AccessType"]),
            (&json!("Revoke"), &json!(1)),
            "{h}"
        );
        assert_eq!(h["Records"][1]["EndedBy"], "Revoked", "{h}");
    }
}

/// Write `request` on `io` (which closes after the answer) and read the
/// whole answer.
async fn exchange<S>(mut io: S, request: &[u8]) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    io.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = io.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).to_string()
}

/// HTTPS over a real TLS socket with a certificate the test makes: the
/// seed's share with the header keys, the page's session cookie marked
/// `Secure`; plain HTTP on the same port gets no answer.
#[test]
fn https_with_a_certificate_the_test_makes() {
    use std::sync::Arc;
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let s = Running::start(|a| {
        a.tls_cert = Some(cert.clone());
        a.tls_key = Some(key.clone());
        a.no_context_check = true;
    });
    let mut roots = rustls::RootCertStore::empty();
    roots.add(made.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (share, login) = rt.block_on(async {
        let connect = || async {
            let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            connector.connect(name, tcp).await.unwrap()
        };
        let body = br#"[{"UserId":"0203f172-8642-11e7-9bed-069b743e848f","Entity":5,"EntityType":3,"EntityId":"9","AccessType":1}]"#;
        let head = format!(
            "POST /v2/EntityAccess.svc/Share HTTP/1.1\r\nHost: localhost\r\nx-LSQ-AccessKey: {}\r\nx-LSQ-SecretKey: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            s.key.access_key,
            s.key.secret,
            body.len()
        );
        let share = exchange(connect().await, &[head.as_bytes(), body].concat()).await;
        let form = format!("accessKey={}&secretKey={}", s.key.access_key, s.key.secret);
        let head = format!(
            "POST /login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
            form.len()
        );
        let login = exchange(connect().await, head.as_bytes()).await;
        (share, login)
    });
    assert!(share.starts_with("HTTP/1.1 200"), "{share}");
    assert!(share.contains(r#""Status":"Success""#), "{share}");
    assert!(login.starts_with("HTTP/1.1 303"), "{login}");
    let cookie = login
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap();
    assert!(cookie.ends_with("; Secure"), "{cookie}");
    // Plain HTTP on the TLS port: no HTTP answer.
    let plain = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(15),
            exchange(
                tcp,
                b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            ),
        )
        .await
        .unwrap()
    });
    assert!(!plain.starts_with("HTTP/1.1 200"), "{plain}");
}

/// Plain HTTP is refused on any address but loopback, unless a proxy in
/// front terminates TLS; then the session cookie is still `Secure`.
#[test]
fn plain_http_is_refused_off_loopback_unless_behind_a_tls_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("grantwheel.db");
    let args = grantwheel_server::config::ServeArgs::new(db, "0.0.0.0:0".parse().unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    match rt.block_on(grantwheel_server::Server::bind(args)) {
        Err(grantwheel_server::StartError::Setting { field, reason }) => {
            assert_eq!(field, "--listen");
            assert!(reason.contains("--behind-tls-proxy"), "{reason}");
        }
        other => panic!("a plain start on 0.0.0.0 was not refused: {other:?}"),
    }
    drop(rt);
    let s = Running::start(|a| {
        a.listen = "0.0.0.0:0".parse().unwrap();
        a.behind_tls_proxy = true;
    });
    let port = s.addr.port();
    let resp = agent()
        .post(&format!("http://127.0.0.1:{port}/login"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send(format!("accessKey={}&secretKey={}", s.key.access_key, s.key.secret).as_bytes())
        .unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    let cookie = resp.headers().get("set-cookie").unwrap().to_str().unwrap();
    assert!(cookie.ends_with("; Secure"), "{cookie}");
}

/// A call whose answer was lost can be sent again: with the same
/// `Idempotency-Key` header (or per item, `IdempotencyKey`) it is answered
/// with its first requests, across a restart, and nothing is done twice.
/// The same key with another body is another call.
#[test]
fn a_retry_with_its_idempotency_key_gets_the_first_answer() {
    let s = Running::start(|a| {
        a.no_context_check = true;
        a.rate_limit = 0;
    });
    let user = "0203f172-8642-11e7-9bed-069b743e848f";
    let item = |id: &str| {
        json!({"UserId": user, "Entity": 5, "EntityType": 3, "EntityId": id, "AccessType": 2,
            "DurationInMinutes": 30})
    };
    let send = |s: &Running, path: &str, key: Option<&str>, body: &Value| {
        let mut req = agent()
            .post(&s.api(path))
            .header("Content-Type", "application/json");
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let mut resp = req
            .send(serde_json::to_vec(body).unwrap().as_slice())
            .unwrap();
        let code = resp.status().as_u16();
        let v: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
        (code, v)
    };
    let records = |s: &Running, id: &str| {
        let (_, v) = get(&format!("{}&Entity=5&EntityId={id}", s.api("/History")));
        v["Records"].as_array().unwrap().len()
    };
    let batch = json!([item("71"), item("72")]);
    let first = send(&s, "/Share", Some("crm-call-1"), &batch);
    assert_eq!(first.0, 200, "{first:?}");
    let again = send(&s, "/Share", Some("crm-call-1"), &batch);
    assert_eq!(first, again);
    // Per item, without a header.
    let mut keyed = item("73");
    keyed["IdempotencyKey"] = json!("item-73");
    let one = send(&s, "/Share", None, &json!([keyed.clone()]));
    assert_eq!(one.0, 200, "{one:?}");
    // A revoke too.
    let revoke = json!([{"UserId": user, "Entity": 5, "EntityType": 3, "EntityId": "72"}]);
    let revoked = send(&s, "/Revoke", Some("crm-call-2"), &revoke);
    assert_eq!(revoked.0, 200, "{revoked:?}");

    // After a restart (the keys live in the store with the records).
    let s = s.restart_with(|a| {
        a.no_context_check = true;
        a.rate_limit = 0;
    });
    assert_eq!(send(&s, "/Share", Some("crm-call-1"), &batch), first);
    assert_eq!(send(&s, "/Share", None, &json!([keyed])), one);
    assert_eq!(send(&s, "/Revoke", Some("crm-call-2"), &revoke), revoked);
    // One share each, one revoke.
    assert_eq!(
        (records(&s, "71"), records(&s, "72"), records(&s, "73")),
        (1, 2, 1)
    );
    // The same key with another body is another call.
    let other = send(&s, "/Share", Some("crm-call-1"), &json!([item("74")]));
    assert_eq!(other.0, 200, "{other:?}");
    assert_ne!(other.1["Message"]["Id"], first.1[0]["Message"]["Id"]);
    assert_eq!(records(&s, "74"), 1);
    // A key that cannot travel in a log line is refused, naming it.
    let bad = send(&s, "/Share", Some(&"k".repeat(201)), &batch);
    assert_eq!(bad.0, 400);
    assert!(
        bad.1["ExceptionMessage"]
            .as_str()
            .unwrap()
            .starts_with("`Idempotency-Key`"),
        "{bad:?}"
    );
    let mut spaced = item("75");
    spaced["IdempotencyKey"] = json!("a b");
    let bad = send(&s, "/Share", None, &json!([spaced]));
    assert_eq!(bad.0, 400);
    assert!(
        bad.1["ExceptionMessage"]
            .as_str()
            .unwrap()
            .contains("`IdempotencyKey`"),
        "{bad:?}"
    );
}
