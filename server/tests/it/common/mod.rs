//! What the service's socket tests share: a server on a loopback port and
//! a plain HTTP client.

pub mod proxy;

use std::net::SocketAddr;
use std::time::Duration;

use grantwheel::store::Store;
use grantwheel_server::config::ServeArgs;
use grantwheel_server::keys::{KeyStore, NewKey};
use grantwheel_server::Server;
use serde_json::Value;

/// A server on a loopback port over a fresh SQLite file, stopped on drop.
pub struct Running {
    pub addr: SocketAddr,
    pub key: NewKey,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Running {
    pub fn start(tune: impl FnOnce(&mut ServeArgs)) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyStore::open(&dir.path().join("grantwheel.db"))
            .unwrap()
            .add("test")
            .unwrap();
        Running::start_in(dir, key, tune)
    }

    /// Stop the server and start another on the same file.
    pub fn restart(self) -> Running {
        self.restart_with(|_| {})
    }

    /// Stop the server and start another on the same file, with `tune`
    /// applied to its settings.
    pub fn restart_with(mut self, tune: impl FnOnce(&mut ServeArgs)) -> Running {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let dir = std::mem::replace(&mut self._dir, dir);
        Running::start_in(dir, self.key.clone(), tune)
    }

    pub fn start_in(
        dir: tempfile::TempDir,
        key: NewKey,
        tune: impl FnOnce(&mut ServeArgs),
    ) -> Running {
        Running::start_full(dir, key, tune, None)
    }

    /// A server over a store the test made (on the server's database file).
    pub fn start_with_store(
        tune: impl FnOnce(&mut ServeArgs),
        store: impl FnOnce(&std::path::Path) -> Box<dyn Store>,
    ) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("grantwheel.db");
        let key = KeyStore::open(&db).unwrap().add("test").unwrap();
        let store = store(&db);
        Running::start_full(dir, key, tune, Some(store))
    }

    fn start_full(
        dir: tempfile::TempDir,
        key: NewKey,
        tune: impl FnOnce(&mut ServeArgs),
        store: Option<Box<dyn Store>>,
    ) -> Running {
        let db = dir.path().join("grantwheel.db");
        let mut args = ServeArgs::new(db, "127.0.0.1:0".parse().unwrap());
        tune(&mut args);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let server = match store {
                    Some(store) => Server::bind_with_store(args, store).await.unwrap(),
                    None => Server::bind(args).await.unwrap(),
                };
                addr_tx.send(server.local_addr().unwrap()).unwrap();
                server
                    .run(async move {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        Running {
            addr,
            key,
            stop: Some(stop),
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// The server's database file.
    pub fn db(&self) -> std::path::PathBuf {
        self._dir.path().join("grantwheel.db")
    }

    pub fn creds(&self) -> String {
        format!(
            "accessKey={}&secretKey={}",
            self.key.access_key, self.key.secret
        )
    }

    pub fn url(&self, path: &str, query: &str) -> String {
        format!("http://{}{path}?{query}", self.addr)
    }

    pub fn api(&self, path: &str) -> String {
        self.url(&format!("/v2/EntityAccess.svc{path}"), &self.creds())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .new_agent()
}

/// POST `body` with a content type; the code and the JSON answer.
pub fn post(url: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
    let mut resp = agent()
        .post(url)
        .header("Content-Type", content_type)
        .send(body)
        .unwrap();
    let code = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    (
        code,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub fn get(url: &str) -> (u16, Value) {
    let mut resp = agent().get(url).call().unwrap();
    let code = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    (
        code,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// One answer read off a raw connection.
#[derive(Debug)]
pub struct Answer {
    pub code: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A kept-alive HTTP/1.1 connection written by hand: requests exactly as
/// given, a body sent after a pause if asked, answers read by their
/// `Content-Length`.
pub struct Conn {
    stream: std::net::TcpStream,
    addr: SocketAddr,
    buf: Vec<u8>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Conn {
            stream,
            addr,
            buf: Vec::new(),
        }
    }

    /// Send `line` (`POST /path HTTP/1.1`) with `headers`, then `body`
    /// after `pause`; the answer, or `None` when the connection ended
    /// before one came.
    pub fn send(
        &mut self,
        line: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        pause: Duration,
    ) -> Option<Answer> {
        use std::io::Write;
        let mut head = format!("{line}\r\nHost: {}\r\n", self.addr);
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        self.stream.write_all(head.as_bytes()).ok()?;
        if !body.is_empty() {
            std::thread::sleep(pause);
            self.stream.write_all(body).ok()?;
        }
        self.read_answer()
    }

    fn fill(&mut self) -> Option<()> {
        use std::io::Read;
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Some(())
            }
        }
    }

    fn read_answer(&mut self) -> Option<Answer> {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
        self.buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let code = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        while self.buf.len() < len {
            self.fill()?;
        }
        let body = String::from_utf8_lossy(&self.buf[..len]).to_string();
        self.buf.drain(..len);
        Some(Answer {
            code,
            headers,
            body,
        })
    }
}
