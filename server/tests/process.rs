//! The binary as a process: SIGTERM during a burst of shares loses no
//! acknowledged share.

#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use grantwheel_server::keys::{KeyStore, NewKey};
use serde_json::{json, Value};

/// Start the binary on `db`; its address, read from its JSON log (stderr).
fn spawn(db: &std::path::Path) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_grantwheel-server"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-json",
            "--no-context-check",
        ])
        .args(["--rate-limit", "0", "--no-first-key", "--db"])
        .arg(db)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(log).lines().map_while(Result::ok) {
            if sent {
                continue; // drain, so the child never blocks on a full pipe
            }
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["fields"]["message"] == "serving" {
                    let addr = v["fields"]["addr"].as_str().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                    sent = true;
                }
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    (child, addr.parse().unwrap())
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
        assert_eq!(v["Message"]["ResponseText"], "Completed", "share {n}: {v}");
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}
