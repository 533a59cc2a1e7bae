//! The share-history page in a real browser: headless Chromium driven over
//! WebDriver logs in with a key, filters by user and then by status through
//! the form, and finds exactly the expected rows. Screenshots are saved
//! under `target/browser/`.
//!
//! Needs Chromium and ChromeDriver (Debian's `chromium` and
//! `chromium-driver`, or `GRANTWHEEL_CHROMIUM` / `GRANTWHEEL_CHROMEDRIVER`).
//! Without them the test is skipped with a printed reason, unless
//! `GRANTWHEEL_BROWSER_REQUIRED` is set, as the gate sets it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{get, post, Running};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

const LEAD: &str = "869196";
const A: &str = "0203f172-8642-11e7-9bed-069b743e848f";
const B: &str = "6a1c2b3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const C: &str = "c0ffee00-1234-4abc-8def-0123456789ab";
const ACT_A: &str = "f2dbf1d5-bbab-418b-bddc-4c92ecdef214";
const ACT_B: &str = "0b5e7d3c-2a19-4f60-9e8d-7c6b5a493827";
const ACT_C: &str = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a";

/// The browser's two programs, or why the test cannot run.
fn programs() -> Result<(PathBuf, PathBuf), String> {
    let find = |var: &str, default: &str| -> Result<PathBuf, String> {
        let path = std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(default));
        if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "{} not found (install Debian's chromium and chromium-driver, or set {var})",
                path.display()
            ))
        }
    };
    Ok((
        find("GRANTWHEEL_CHROMEDRIVER", "/usr/bin/chromedriver")?,
        find("GRANTWHEEL_CHROMIUM", "/usr/bin/chromium")?,
    ))
}

/// ChromeDriver on a loopback port, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start(program: &PathBuf) -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(program)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn send(s: &Running, path: &str, body: &Value) -> (u16, Value) {
    post(
        &s.api(path),
        "application/json",
        &serde_json::to_vec(body).unwrap(),
    )
}

fn activity(event: &str, id: &str, owner: &str) -> Value {
    json!({"Id": event, "Trigger": "ActivityPosted", "Entity": 1, "EntityId": LEAD,
        "Activity": {"Id": id, "Owner": owner}})
}

fn share(user: &str, context: &str, access: u8, minutes: Option<u32>) -> Value {
    let mut item = json!({"UserId": user, "Entity": 1, "EntityType": 3, "EntityId": LEAD,
        "ContextEntity": 1, "ContextEntityId": context, "AccessType": access});
    if let Some(m) = minutes {
        item["DurationInMinutes"] = json!(m);
    }
    json!([item])
}

/// The lead's history through the API, newest first.
fn history(s: &Running) -> Vec<Value> {
    let (code, v) = get(&format!("{}&Entity=1&EntityId={LEAD}", s.api("/History")));
    assert_eq!(code, 200, "{v}");
    v["Records"].as_array().unwrap().clone()
}

/// A history with every kind of row: API and automation shares, a failure
/// with its reason, a default duration, a revoke. Returns the request ids,
/// oldest first.
fn seed(s: &Running) -> Vec<String> {
    for (event, act, owner) in [("e-a", ACT_A, A), ("e-c", ACT_C, C)] {
        assert_eq!(send(s, "/Events", &activity(event, act, owner)).0, 200);
    }
    assert_eq!(
        send(s, "/Share", &share(A, ACT_A, 2, Some(30))).0,
        200,
        "A edits for 30 minutes"
    );
    assert_eq!(
        send(s, "/Share", &share(C, ACT_C, 1, None)).0,
        200,
        "C reads for the default 90 days"
    );
    let rule = json!({"Name": "share the lead with whoever posts an activity on it",
        "Trigger": "ActivityPosted", "Entity": 1, "ShareWith": "ActivityOwner",
        "AccessType": 1, "DurationInMinutes": 120});
    let (code, v) = send(s, "/Rules", &rule);
    assert_eq!(code, 201, "{v}");
    let rule_id = v["Id"].as_u64().unwrap();
    assert_eq!(
        send(s, &format!("/Rules/{rule_id}/Publish"), &json!({})).0,
        200
    );
    assert_eq!(send(s, "/Events", &activity("e-b", ACT_B, B)).0, 200);
    // The rule's share runs on the service's worker: wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !history(s)
        .iter()
        .any(|r| r["Source"] == "Automation" && r["Status"] == "Completed")
    {
        assert!(Instant::now() < deadline, "the rule never shared");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(send(s, "/Share", &share(B, ACT_B, 2, Some(1440))).0, 200);
    let (code, v) = send(s, "/Share", &share(A, ACT_B, 2, Some(60)));
    assert_eq!(code, 400, "A is not the owner of B's activity: {v}");
    assert_eq!(send(s, "/Revoke", &share(C, ACT_C, 1, None)).0, 200);

    let records = history(s);
    let seen: Vec<(&str, &str, &str, &str)> = records
        .iter()
        .map(|r| {
            (
                r["Kind"].as_str().unwrap(),
                r["UserId"].as_str().unwrap(),
                r["Source"].as_str().unwrap(),
                r["Status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("Revoke", C, "Api", "Completed"),
            ("Share", A, "Api", "Failed"),
            ("Share", B, "Api", "Completed"),
            ("Share", B, "Automation", "Completed"),
            ("Share", C, "Api", "Completed"),
            ("Share", A, "Api", "Completed"),
        ]
    );
    records
        .iter()
        .rev()
        .map(|r| r["RequestId"].as_str().unwrap().to_string())
        .collect()
}

/// The request ids of the page's history rows, top to bottom.
async fn rows(c: &Client) -> Vec<String> {
    let mut ids = Vec::new();
    for row in c.find_all(Locator::Css("#history tbody tr")).await.unwrap() {
        ids.push(row.attr("data-request").await.unwrap().unwrap_or_default());
    }
    ids
}

/// The text of the element `css` finds.
async fn text_of(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Type `text` into the element `css` finds.
async fn type_into(c: &Client, css: &str, text: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .send_keys(text)
        .await
        .unwrap();
}

/// Click the element `css` finds.
async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Wait until the browser is on a page whose address contains `part`.
async fn wait_for_url(c: &Client, part: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let url = c.current_url().await.unwrap();
        if url.as_str().contains(part) {
            let ready = c
                .execute("return document.readyState", vec![])
                .await
                .unwrap();
            if ready == json!("complete") {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "never reached a page with `{part}`: at {url}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_history_page_logs_in_and_filters_by_user_then_status() {
    let (driver_program, chromium) = match programs() {
        Ok(p) => p,
        Err(why) if std::env::var_os("GRANTWHEEL_BROWSER_REQUIRED").is_some() => {
            panic!("the browser test is required here: {why}")
        }
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    // Shares of opportunities wait for an approver; the limiter is off so
    // the polls below never meet it.
    let s = Running::start(|a| {
        a.approve_records = vec![grantwheel_server::config::ApproveRecord::Opportunity];
        a.rate_limit = 0;
    });
    let ids = seed(&s);
    let opportunity = json!({"Id": "e-o", "Trigger": "EntityCreated", "Entity": 5,
        "EntityId": "42", "Owner": C});
    assert_eq!(send(&s, "/Events", &opportunity).0, 200);
    let held = json!([{"UserId": A, "Entity": 5, "EntityType": 3, "EntityId": "42",
        "AccessType": 2, "DurationInMinutes": 480}]);
    let (code, v) = send(&s, "/Share", &held);
    assert_eq!(code, 200, "{v}");
    let held_id = v["Message"]["Id"].as_str().unwrap().to_string();
    let (r_a, _r_c, _r_auto, _r_b, r_fail, _r_revoke) =
        (&ids[0], &ids[1], &ids[2], &ids[3], &ids[4], &ids[5]);
    let driver = Driver::start(&driver_program);
    let profile = tempfile::tempdir().unwrap();
    let shots = screenshot_dir();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let caps = json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--window-size=1400,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }
        });
        let caps = match caps {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .expect("a WebDriver session");

        // The page needs a key: the browser is sent to the login form.
        c.goto(&s.url("/history", &format!("Entity=1&EntityId={LEAD}")))
            .await
            .unwrap();
        wait_for_url(&c, "/login").await;
        assert!(rows(&c).await.is_empty(), "no history before the login");
        type_into(&c, "input[name=accessKey]", &s.key.access_key).await;
        type_into(&c, "input[name=secretKey]", &s.key.secret).await;
        click(&c, "button[type=submit]").await;
        wait_for_url(&c, "/history?").await;
        let mut newest_first = ids.clone();
        newest_first.reverse();
        assert_eq!(rows(&c).await, newest_first, "every record, newest first");
        let page = text_of(&c, "main").await;
        for expected in [
            "Who has access now",
            "Automation (rule ",
            "90 days (default)",
            "30 minutes",
            "Failed",
        ] {
            assert!(page.contains(expected), "`{expected}` on the page:\n{page}");
        }
        let access = text_of(&c, "#access").await;
        assert!(
            access.contains(A) && access.contains(B) && !access.contains(C),
            "{access}"
        );
        // The approvals queue lists the held share, with why and until
        // when; its link opens the opportunity's history, where the row
        // says it waits.
        let queue = text_of(&c, "#approvals").await;
        assert!(
            queue.contains("Waiting for an approver")
                && queue.contains("Opportunity 42")
                && queue.contains(A)
                && queue.contains("opportunity")
                && queue.contains("8 hours"),
            "{queue}"
        );
        std::fs::write(shots.join("history.png"), c.screenshot().await.unwrap()).unwrap();
        let back = c.current_url().await.unwrap();
        click(&c, "#approvals a").await;
        wait_for_url(&c, "EntityId=42").await;
        assert_eq!(rows(&c).await, vec![held_id.clone()]);
        let row = text_of(&c, "#history tbody tr").await;
        assert!(
            row.contains("Processing") && row.contains("awaiting approval"),
            "{row}"
        );
        std::fs::write(
            shots.join("history-approvals.png"),
            c.screenshot().await.unwrap(),
        )
        .unwrap();
        c.goto(back.as_str()).await.unwrap();
        wait_for_url(&c, &format!("EntityId={LEAD}")).await;

        // Filter by user through the form.
        let user = c.find(Locator::Css("input[name=UserId]")).await.unwrap();
        user.clear().await.unwrap();
        user.send_keys(A).await.unwrap();
        click(&c, "form.filters button[type=submit]").await;
        wait_for_url(&c, &format!("UserId={A}")).await;
        assert_eq!(
            rows(&c).await,
            vec![r_fail.clone(), r_a.clone()],
            "A's records"
        );

        // Then by status, keeping the user.
        c.find(Locator::Css("select[name=Status]"))
            .await
            .unwrap()
            .select_by_value("Failed")
            .await
            .unwrap();
        click(&c, "form.filters button[type=submit]").await;
        wait_for_url(&c, "Status=Failed").await;
        assert_eq!(rows(&c).await, vec![r_fail.clone()], "A's failed record");
        let row = text_of(&c, "#history tbody tr").await;
        assert!(row.contains("Failed") && row.contains(A), "{row}");
        assert!(
            c.find(Locator::Css("input[name=UserId]"))
                .await
                .unwrap()
                .prop("value")
                .await
                .unwrap()
                .as_deref()
                == Some(A),
            "the form keeps the user filter"
        );
        std::fs::write(
            shots.join("history-filtered.png"),
            c.screenshot().await.unwrap(),
        )
        .unwrap();
        c.close().await.unwrap();
    });
    drop(driver);
}
