//! Context validation, as the seed requires it: a lead is shared through
//! an activity only with that activity's owner, and an opportunity never
//! with its owner.
//!
//! The service cannot take a request's word for either. It checks them
//! against one of:
//!
//! - [`Directory`]: what the events endpoint learnt (each event's activity
//!   or task with its owner and record, each record's owner), kept in the
//!   database file so it outlives restarts;
//! - [`Remote`]: the CRM itself, asked over HTTP (see [`Remote`] for the
//!   contract), with a timeout and a cache of positive answers;
//! - nothing, when the service runs with `--no-context-check` (said in the
//!   log at start).
//!
//! A check that cannot be made (an unknown activity, a resolver that does
//! not answer) refuses the share: it fails closed.

use std::path::Path;
use std::time::{Duration, Instant};

use grantwheel::requests::ContextResolver;
use grantwheel::{Context, EntityId, EntityKind, UserId};
use hashbrown::HashMap;
use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};

use crate::db::{self, DbError};

/// The name of a context as the directory stores it, if it is one the
/// directory knows (activities and tasks).
fn context_key(context: &Context) -> Option<String> {
    match context {
        Context::Activity(a) => Some(format!("activity:{}", a.hyphenated())),
        Context::Task(t) => Some(format!("task:{}", t.hyphenated())),
        _ => None,
    }
}

/// What the events endpoint learnt: contexts with their record and owner,
/// and records with their owner.
#[derive(Debug)]
pub struct Directory {
    conn: Mutex<Connection>,
}

impl Directory {
    /// The directory in the database at `path`.
    ///
    /// # Errors
    ///
    /// [`DbError`] when the file cannot be opened.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        Ok(Directory {
            conn: Mutex::new(db::open(path)?),
        })
    }

    /// Learn that `context` (an activity or a task) is on `entity` and
    /// owned by `owner`. Other contexts are ignored.
    ///
    /// # Errors
    ///
    /// [`DbError`] when it cannot be written.
    pub fn learn_context(
        &self,
        context: &Context,
        entity: &EntityId,
        owner: &UserId,
    ) -> Result<(), DbError> {
        let Some(key) = context_key(context) else {
            return Ok(());
        };
        self.conn.lock().execute(
            "INSERT OR REPLACE INTO server_contexts (context, entity, owner) VALUES (?1, ?2, ?3)",
            params![key, entity.to_string(), owner.to_string()],
        )?;
        Ok(())
    }

    /// Learn that `owner` owns `entity`.
    ///
    /// # Errors
    ///
    /// [`DbError`] when it cannot be written.
    pub fn learn_owner(&self, entity: &EntityId, owner: &UserId) -> Result<(), DbError> {
        self.conn.lock().execute(
            "INSERT OR REPLACE INTO server_owners (entity, owner) VALUES (?1, ?2)",
            params![entity.to_string(), owner.to_string()],
        )?;
        Ok(())
    }

    fn context_of(&self, key: &str) -> Result<Option<(String, String)>, DbError> {
        let conn = self.conn.lock();
        let mut stmt =
            conn.prepare_cached("SELECT entity, owner FROM server_contexts WHERE context = ?1")?;
        Ok(stmt
            .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    fn owner_of(&self, entity: &EntityId) -> Result<Option<String>, DbError> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached("SELECT owner FROM server_owners WHERE entity = ?1")?;
        Ok(stmt
            .query_row([entity.to_string()], |r| r.get(0))
            .optional()?)
    }

    fn decide(&self, user: &UserId, entity: &EntityId, context: &Context) -> Result<(), String> {
        let failed = |e: DbError| format!("the context could not be checked: {e}");
        if let Some(key) = context_key(context) {
            let Some((on, owner)) = self.context_of(&key).map_err(failed)? else {
                return Err(format!(
                    "`{key}` is not known: post it to the events endpoint (with its owner) before sharing through it"
                ));
            };
            if on != entity.to_string() {
                return Err(format!("`{key}` is on `{on}`, not on `{entity}`"));
            }
            if entity.kind == EntityKind::LEAD && owner != user.to_string() {
                return Err(format!(
                    "a lead is shared only with the owner of its activity: `{key}` is owned by `{owner}`, not `{user}`"
                ));
            }
        } else if entity.kind == EntityKind::LEAD {
            return Err(format!(
                "a lead is shared only through an activity whose owner is the user, not through `{context:?}`"
            ));
        }
        if entity.kind == EntityKind::OPPORTUNITY {
            match self.owner_of(entity).map_err(failed)? {
                None => {
                    return Err(format!(
                        "the owner of `{entity}` is not known: post an event for it with its `Owner` before sharing it"
                    ))
                }
                Some(owner) if owner == user.to_string() => {
                    return Err(format!(
                        "`{user}` owns `{entity}`: an opportunity is never shared with its owner"
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// Asks the CRM whether a share's context holds, over HTTP.
///
/// The contract: `GET <url>?UserId=<UUID>&Entity=<code>&EntityId=<id>`,
/// plus `&ContextEntity=<1 activity | 2 task>&ContextEntityId=<UUID>` when
/// the share names a context; the CRM answers `200` with
/// `{"Allowed": true}` or `{"Allowed": false, "Reason": "..."}`. Any other
/// answer, or none within the timeout, refuses the share. Allowed answers
/// are kept for the cache time; refusals are not kept.
#[derive(Debug)]
pub struct Remote {
    url: String,
    agent: ureq::Agent,
    ttl: Duration,
    cache: Mutex<HashMap<(UserId, EntityId, Context), Instant>>,
}

/// The CRM's answer.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Verdict {
    allowed: bool,
    #[serde(default)]
    reason: Option<String>,
}

/// The most allowed answers kept; beyond it the cache starts again.
const REMOTE_CACHE_MAX: usize = 100_000;

impl Remote {
    /// A resolver at `url` with this timeout and cache time.
    pub fn new(url: String, timeout: Duration, ttl: Duration) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .new_agent();
        Remote {
            url,
            agent,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn ask(&self, user: &UserId, entity: &EntityId, context: &Context) -> Result<(), String> {
        let code = grantwheel::requests::wire::entity_code(entity.kind);
        let mut req = self
            .agent
            .get(&self.url)
            .query("UserId", user.to_string())
            .query("Entity", code.to_string())
            .query(
                "EntityId",
                grantwheel::requests::wire::entity_id_text(entity),
            );
        match context {
            Context::Activity(a) => {
                req = req
                    .query("ContextEntity", "1")
                    .query("ContextEntityId", a.hyphenated().to_string());
            }
            Context::Task(t) => {
                req = req
                    .query("ContextEntity", "2")
                    .query("ContextEntityId", t.hyphenated().to_string());
            }
            _ => {}
        }
        let unreachable = |e: String| format!("the context resolver did not answer: {e}");
        let mut resp = req.call().map_err(|e| unreachable(e.to_string()))?;
        if resp.status() != 200 {
            return Err(unreachable(format!("it answered {}", resp.status())));
        }
        let verdict: Verdict = resp
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_json()
            .map_err(|e| unreachable(format!("its answer is not `{{\"Allowed\": ...}}`: {e}")))?;
        if verdict.allowed {
            Ok(())
        } else {
            Err(verdict
                .reason
                .unwrap_or_else(|| "the CRM refused the context".into()))
        }
    }
}

impl ContextResolver for Remote {
    fn check(&self, user: &UserId, entity: &EntityId, context: &Context) -> Result<(), String> {
        let key = (*user, *entity, *context);
        let now = Instant::now();
        if let Some(at) = self.cache.lock().get(&key) {
            if now.saturating_duration_since(*at) < self.ttl {
                return Ok(());
            }
        }
        self.ask(user, entity, context)?;
        let mut cache = self.cache.lock();
        if cache.len() >= REMOTE_CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, now);
        Ok(())
    }
}

impl ContextResolver for Directory {
    fn check(&self, user: &UserId, entity: &EntityId, context: &Context) -> Result<(), String> {
        self.decide(user, entity, context)
    }
}

/// How the service validates contexts.
#[derive(Debug)]
pub enum ContextCheck {
    /// Against what the events endpoint learnt.
    Directory(std::sync::Arc<Directory>),
    /// By asking the CRM.
    Remote(Remote),
}

impl ContextResolver for ContextCheck {
    fn check(&self, user: &UserId, entity: &EntityId, context: &Context) -> Result<(), String> {
        match self {
            ContextCheck::Directory(d) => d.check(user, entity, context),
            ContextCheck::Remote(r) => r.check(user, entity, context),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn the_seed_rules_hold_against_what_was_learnt() {
        let dir = tempfile::tempdir().unwrap();
        let d = Directory::open(&dir.path().join("g.db")).unwrap();
        let (owner, other) = (UserId::from_u128(1), UserId::from_u128(2));
        let lead = EntityId::lead(869196);
        let activity = Context::Activity(Uuid::from_u128(9));
        assert!(d
            .check(&owner, &lead, &activity)
            .unwrap_err()
            .contains("not known"));
        d.learn_context(&activity, &lead, &owner).unwrap();
        assert!(d.check(&owner, &lead, &activity).is_ok());
        assert!(d
            .check(&other, &lead, &activity)
            .unwrap_err()
            .contains("owned by"));
        let elsewhere = EntityId::lead(1);
        assert!(d
            .check(&owner, &elsewhere, &activity)
            .unwrap_err()
            .contains("is on"));
        assert!(d.check(&owner, &lead, &Context::Direct).is_err());

        let opp = EntityId::opportunity(42);
        assert!(d
            .check(&other, &opp, &Context::Direct)
            .unwrap_err()
            .contains("not known"));
        d.learn_owner(&opp, &owner).unwrap();
        assert!(d.check(&other, &opp, &Context::Direct).is_ok());
        assert!(d
            .check(&owner, &opp, &Context::Direct)
            .unwrap_err()
            .contains("never shared with its owner"));
        // Learnt facts outlive the process.
        drop(d);
        let d = Directory::open(&dir.path().join("g.db")).unwrap();
        assert!(d.check(&owner, &lead, &activity).is_ok());
        assert!(d.check(&other, &opp, &Context::Direct).is_ok());
    }
}
