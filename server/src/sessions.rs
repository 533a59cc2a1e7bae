//! The history page's logins: a random 128-bit id in a cookie, mapped to
//! the key that logged in and the session's end.

use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use hashbrown::HashMap;
use parking_lot::Mutex;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "gw_session";

/// Page sessions: a random 128-bit id in a cookie, mapped to the key that
/// logged in and the session's end. Kept in memory: a restart logs every
/// page out.
#[derive(Debug)]
pub struct Sessions {
    ttl: Duration,
    live: Mutex<HashMap<String, (String, Instant)>>,
}

/// The most sessions kept; the oldest go first beyond it.
const MAX_SESSIONS: usize = 10_000;

impl Sessions {
    /// Sessions lasting `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Sessions {
            ttl,
            live: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn open(&self, access_key: &str) -> Option<String> {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).ok()?;
        let id = hex::encode(id);
        let now = Instant::now();
        let mut live = self.live.lock();
        live.retain(|_, (_, end)| *end > now);
        if live.len() >= MAX_SESSIONS {
            if let Some(oldest) = live
                .iter()
                .min_by_key(|(_, (_, e))| *e)
                .map(|(k, _)| k.clone())
            {
                live.remove(&oldest);
            }
        }
        live.insert(id.clone(), (access_key.to_string(), now + self.ttl));
        Some(id)
    }

    pub(crate) fn key_of(&self, id: &str) -> Option<String> {
        let live = self.live.lock();
        let (key, end) = live.get(id)?;
        (*end > Instant::now()).then(|| key.clone())
    }

    pub(crate) fn close(&self, id: &str) {
        self.live.lock().remove(id);
    }
}

pub(crate) fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}
