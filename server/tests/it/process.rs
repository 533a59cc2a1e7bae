//! The binary as a process: SIGTERM during a burst of shares loses no
//! acknowledged share.

#![cfg(unix)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{common, pg};

use grantwheel_server::keys::{KeyStore, NewKey};
use serde_json::{json, Value};

/// A started binary: its process, its address, and every line it has
/// logged so far (stderr, read by a thread of its own).
struct Spawned {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

/// Start the binary on `db` with a JSON log; its address, read from the log.
fn spawn(db: &std::path::Path) -> (Child, SocketAddr) {
    let s = spawn_with(db, true, &[]);
    (s.child, s.addr)
}

/// Start the binary on `db`, its log in JSON or text at the level
/// `RUST_LOG` gives (`trace` here: every level), with `extra` flags.
fn spawn_with(db: &std::path::Path, json: bool, extra: &[&str]) -> Spawned {
    spawn_on(db, json, "127.0.0.1:0", extra, true)
}

/// [`spawn_with`] on `listen`; waits for the "serving" line only if `wait`
/// (else the address is `listen`).
fn spawn_on(db: &std::path::Path, json: bool, listen: &str, extra: &[&str], wait: bool) -> Spawned {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_grantwheel-server"));
    cmd.args(["serve", "--listen", listen, "--no-context-check"])
        .args(["--rate-limit", "0", "--no-first-key", "--db"])
        .arg(db)
        .args(extra)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if json {
        cmd.arg("--log-json");
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let lines = log.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Read to the end, so the child never blocks on a full pipe.
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("serving") {
                let _ = tx.send(line.clone());
            }
            lines.lock().unwrap().push(line);
        }
    });
    if !wait {
        return Spawned {
            child,
            addr: listen.parse().unwrap(),
            log,
        };
    }
    let line = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    let addr = match serde_json::from_str::<Value>(&line) {
        Ok(v) => v["fields"]["addr"].as_str().unwrap_or("").to_string(),
        // Text: `... serving addr=127.0.0.1:port db=...`.
        Err(_) => line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .unwrap_or("")
            .to_string(),
    };
    Spawned {
        child,
        addr: addr.parse().unwrap(),
        log,
    }
}

/// Send `head` (a request line and headers, without the blank line) and
/// `body` over a new connection that closes after the answer; the code.
fn raw(addr: SocketAddr, head: &str, body: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "{head}\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Stop the child with SIGTERM and wait for it.
fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent()
}

fn share(addr: SocketAddr, key: &NewKey, n: u64) -> Result<(u16, Value), ureq::Error> {
    let body = json!([{"UserId":"0203f172-8642-11e7-9bed-069b743e848f","Entity":5,"EntityType":3,
        "EntityId": n.to_string(),"AccessType":1,"DurationInMinutes":600}]);
    let url = format!(
        "http://{addr}/v2/EntityAccess.svc/Share?accessKey={}&secretKey={}",
        key.access_key, key.secret
    );
    let mut resp = agent()
        .post(&url)
        .header("Content-Type", "application/json")
        .send(serde_json::to_vec(&body).unwrap().as_slice())?;
    let code = resp.status().as_u16();
    let v = serde_json::from_str(&resp.body_mut().read_to_string()?).unwrap_or(Value::Null);
    Ok((code, v))
}

#[test]
fn sigterm_during_a_burst_of_shares_loses_no_acknowledged_share() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("grantwheel.db");
    let key = KeyStore::open(&db).unwrap().add("burst").unwrap();
    let (mut child, addr) = spawn(&db);

    let mut acked: Vec<(u64, String)> = Vec::new();
    let mut n = 0u64;
    let mut signalled = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        n += 1;
        assert!(Instant::now() < deadline, "the server never stopped");
        match share(addr, &key, n) {
            Ok((200, v)) => acked.push((n, v["Message"]["Id"].as_str().unwrap().to_string())),
            Ok((code, v)) => panic!("share {n}: {code} {v}"),
            Err(_) if signalled => break, // refused: the server has stopped listening
            Err(e) => panic!("share {n}: {e}"),
        }
        if acked.len() == 200 && !signalled {
            let ok = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(ok.success());
            signalled = true;
        }
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "a clean stop: {status}");
    assert!(acked.len() >= 200);

    // Every acknowledged share is there after a restart, and Completed.
    let (mut child, addr) = spawn(&db);
    for (n, id) in &acked {
        let base = format!(
            "http://{addr}/v2/EntityAccess.svc/{{}}?accessKey={}&secretKey={}",
            key.access_key, key.secret
        );
        let check = format!(
            "{}&UserId=0203f172-8642-11e7-9bed-069b743e848f&Entity=5&EntityId={n}",
            base.replace("{}", "Check")
        );
        let v: Value = serde_json::from_str(
            &agent()
                .get(&check)
                .call()
                .unwrap()
                .body_mut()
                .read_to_string()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(v["Read"], json!(true), "share {n} lost: {v}");
        let status = format!("{}&id={id}", base.replace("{}", "Status/Get"));
        let v: Value = serde_json::from_str(
            &agent()
                .get(&status)
                .call()
                .unwrap()
                .body_mut()
                .read_to_string()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(v["ShareStatus"], 6, "share {n}: {v}");
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// Every shape a caller may give a secret in, right or wrong (in the query
/// string, in a mistyped path after `&`, `;` or `/`, percent-encoded, as a
/// path of its own, in the key headers, in the page's login form), leaves no
/// part of it in the log, text or JSON, at every level.
#[test]
fn no_secret_reaches_the_log_whatever_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("grantwheel.db");
    let key = KeyStore::open(&db).unwrap().add("log").unwrap();
    // A wrong secret the caller typed must not leak either.
    let typo = format!("{}beef", &key.secret[..60]);
    let body = br#"[{"UserId":"0203f172-8642-11e7-9bed-069b743e848f","Entity":5,"EntityType":3,"EntityId":"1","AccessType":1}]"#;
    for json in [true, false] {
        let mut server = spawn_with(&db, json, &[]);
        let addr = server.addr;
        let mut codes = Vec::new();
        for secret in [&key.secret, &typo] {
            let ak = &key.access_key;
            let api = "/v2/EntityAccess.svc";
            for path in [
                format!("{api}/Share?accessKey={ak}&secretKey={secret}"),
                format!("{api}/Share&accessKey={ak}&secretKey={secret}"),
                format!("{api}/Share;accessKey={ak};secretKey={secret}"),
                format!("{api}/Share/accessKey={ak}/secretKey={secret}"),
                format!("{api}/Share/{ak}/{secret}"),
                format!("{api}/Share%26accessKey%3D{ak}%26secretKey%3D{secret}"),
                format!("/{secret}"),
                format!("/history?accessKey={ak}&secretKey={secret}"),
                format!("{api}/Status/Get?id=x&accessKey={ak}&secretKey={secret}"),
            ] {
                codes.push(raw(
                    addr,
                    &format!("POST {path} HTTP/1.1\r\nContent-Type: application/json"),
                    body,
                ));
                codes.push(raw(addr, &format!("GET {path} HTTP/1.1"), b""));
            }
            codes.push(raw(
                addr,
                &format!("POST {api}/Share HTTP/1.1\r\nContent-Type: application/json\r\nx-LSQ-AccessKey: {ak}\r\nx-LSQ-SecretKey: {secret}"),
                body,
            ));
            let form = format!("accessKey={ak}&secretKey={secret}");
            codes.push(raw(
                addr,
                "POST /login HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded",
                form.as_bytes(),
            ));
        }
        assert!(codes.contains(&200), "the right secret was used: {codes:?}");
        assert!(codes.contains(&404) && codes.contains(&401), "{codes:?}");
        stop(&mut server.child);
        let log = server.log.lock().unwrap().join("\n");
        assert!(
            log.contains("\"call\"") || log.contains(" call "),
            "calls are logged: {log}"
        );
        for secret in [&key.secret, &typo] {
            for piece in secret.as_bytes().chunks(12) {
                let piece = std::str::from_utf8(piece).unwrap();
                assert!(
                    !log.contains(piece),
                    "a part of a secret ({piece}) is in the {} log:\n{log}",
                    if json { "JSON" } else { "text" }
                );
            }
        }
    }
}

/// Lines of `log` (JSON) whose message contains `text`.
fn lines_with(log: &Arc<Mutex<Vec<String>>>, text: &str) -> usize {
    log.lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(text))
        .count()
}

/// Poll `f` until it holds or `within` passes.
fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// GET `path` with a client that gives up after `within`: the code, or 0
/// when no answer came in time; and how long it took.
fn timed_get(addr: SocketAddr, path: &str, within: Duration) -> (u16, Duration) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(within))
        .build()
        .new_agent();
    let t = Instant::now();
    let code = agent
        .get(&format!("http://{addr}{path}"))
        .call()
        .map_or(0, |r| r.status().as_u16());
    (code, t.elapsed())
}

/// Over PostgreSQL through a proxy that can freeze the link (no packets,
/// nothing closed) or refuse it: every call answers within its bound (503
/// past `--call-timeout`, `/ready` within 2 s); each change of the feed's
/// state is logged once (stale, fresh again); an instance started while
/// the database is down keeps trying, answers `/health` as starting and
/// `/ready` with 503 meanwhile, and serves once it is up; the server's
/// notices ("already exists, skipping") stay out of the log.
#[test]
fn a_frozen_or_absent_database_is_answered_within_bounds_and_logged_once() {
    let test = "a_frozen_or_absent_database_is_answered_within_bounds_and_logged_once";
    let Some(server) = pg::url(test) else {
        return;
    };
    let url = pg::fresh_database(&server);
    let target: SocketAddr = url
        .split('@')
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap()
        .parse()
        .unwrap();
    let proxy = common::proxy::Proxy::start(target);
    let via = proxy.url(&url, target);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("grantwheel.db");
    let key = KeyStore::open(&db).unwrap().add("pg").unwrap();
    let creds = format!("accessKey={}&secretKey={}", key.access_key, key.secret);
    let flags = [
        "--postgres",
        &via,
        "--call-timeout",
        "2s",
        "--max-staleness",
        "1s",
    ];

    // Down at start: it waits, saying so, and answers meanwhile.
    proxy.down.store(true, std::sync::atomic::Ordering::Relaxed);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut s = spawn_on(&db, true, &listen, &flags, false);
    assert!(
        eventually(Duration::from_secs(20), || lines_with(
            &s.log,
            "PostgreSQL is not reachable"
        ) >= 2),
        "no retry logged"
    );
    let (code, _) = timed_get(s.addr, "/ready", Duration::from_secs(3));
    assert_eq!(code, 503, "not ready while the database is down");
    let (code, _) = timed_get(s.addr, "/health", Duration::from_secs(3));
    assert_eq!(code, 200);
    assert_eq!(lines_with(&s.log, "secretKey"), 0);
    proxy
        .down
        .store(false, std::sync::atomic::Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(30), || lines_with(
            &s.log,
            "\"serving\""
        ) == 1),
        "it never served once the database was up"
    );
    assert!(lines_with(&s.log, "connected to PostgreSQL") == 1);
    assert!(eventually(Duration::from_secs(5), || timed_get(
        s.addr,
        "/ready",
        Duration::from_secs(3)
    )
    .0 == 200));

    // How far behind it is, for an alert before checks fail closed.
    let mut resp = agent()
        .get(&format!("http://{}/metrics", s.addr))
        .call()
        .unwrap();
    let metrics = resp.body_mut().read_to_string().unwrap();
    for name in [
        "grantwheel_feed_head ",
        "grantwheel_feed_lag_changes 0",
        "grantwheel_feed_catch_up_age_seconds ",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    let mut resp = agent()
        .get(&format!("http://{}/health", s.addr))
        .call()
        .unwrap();
    let health: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(health["Feed"]["Lag"], 0, "{health}");
    assert!(health["Feed"]["Head"].is_u64(), "{health}");

    // A share, then the link freezes.
    let body = br#"[{"UserId":"0203f172-8642-11e7-9bed-069b743e848f","Entity":5,"EntityType":3,"EntityId":"3","AccessType":1}]"#;
    let mut resp = agent()
        .post(&format!(
            "http://{}/v2/EntityAccess.svc/Share?{creds}",
            s.addr
        ))
        .header("Content-Type", "application/json")
        .send(&body[..])
        .unwrap();
    let v: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    let id = v["Message"]["Id"].as_str().unwrap().to_string();
    let status = format!("/v2/EntityAccess.svc/Status/Get?{creds}&id={id}");
    assert_eq!(timed_get(s.addr, &status, Duration::from_secs(5)).0, 200);
    proxy
        .frozen
        .store(true, std::sync::atomic::Ordering::Relaxed);
    // The status's store read hangs on the frozen link: 503 at the deadline.
    let (code, took) = timed_get(s.addr, &status, Duration::from_secs(8));
    assert_eq!(code, 503, "answered within the call's deadline");
    assert!(took < Duration::from_secs(4), "{took:?}");
    let (code, took) = timed_get(s.addr, "/ready", Duration::from_secs(3));
    assert_eq!(code, 503);
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(
        eventually(Duration::from_secs(10), || lines_with(
            &s.log,
            "stale at feed position"
        ) == 1),
        "the stale instance was not logged"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        lines_with(&s.log, "stale at feed position"),
        1,
        "logged once"
    );
    proxy
        .frozen
        .store(false, std::sync::atomic::Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(60), || lines_with(
            &s.log,
            "fresh again"
        ) == 1),
        "fresh again was not logged"
    );
    assert!(eventually(Duration::from_secs(30), || timed_get(
        s.addr,
        &status,
        Duration::from_secs(5)
    )
    .0 == 200));
    stop(&mut s.child);
    // Started again on the same database (its tables exist): no notice.
    let mut again = spawn_with(&db, true, &flags);
    stop(&mut again.child);
    for log in [&s.log, &again.log] {
        let log = log.lock().unwrap().join("\n");
        assert!(!log.contains("already exists"), "{log}");
        assert!(!log.contains(&key.secret));
    }
}
