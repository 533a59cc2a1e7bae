//! The feed's follower: one connection that listens on [`FEED_CHANNEL`]
//! and reads the feed after a position.
//!
//! It listens before it reads, so a write that commits after a read is
//! always followed by a wake-up; a wake-up lost while the connection was
//! down costs nothing, since the engine reads the feed after every wait.

use std::time::Duration;

use chrono::{DateTime, Utc};
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;

use super::rows::i64_of;
use super::{close_off_thread, connect, decode_entry, pg, read_grants, read_rules, FEED_CHANNEL};
use crate::clock::from_millis;
use crate::model::grant::Grant;
use crate::model::history::RuleId;
use crate::model::rule::Rule;
use crate::store::{FeedRead, Follower, Housekept, StoreError};

/// Read at most `limit` feed entries after `after`, checking that they
/// follow it without a hole.
pub(super) fn read_feed(
    client: &mut Client,
    after: u64,
    limit: usize,
) -> Result<FeedRead, StoreError> {
    // The head first: every entry up to it was committed before the rows
    // are read, so an entry missing after `after` was trimmed, not late.
    let head: i64 = client
        .query_one("SELECT seq FROM grantwheel_feed_head", &[])
        .map_err(pg)?
        .try_get(0)
        .map_err(pg)?;
    if head <= i64_of(after) {
        return Ok(FeedRead::Entries(Vec::new()));
    }
    let rows = client
        .query(
            "SELECT seq, batch_seq, next_serial, clock_ms, changes FROM grantwheel_feed WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[&i64_of(after), &i64::try_from(limit).unwrap_or(i64::MAX)],
        )
        .map_err(pg)?;
    let mut entries = Vec::with_capacity(rows.len());
    for (expect, row) in (after + 1..).zip(&rows) {
        let entry = decode_entry(row)?;
        if entry.position != expect {
            if entries.is_empty() {
                return Ok(FeedRead::Behind {
                    oldest: entry.position,
                });
            }
            // Positions are handed out under the feed lock and committed in
            // order: a hole inside the kept feed means a damaged table.
            return Err(StoreError::Corrupt {
                what: "grantwheel_feed".into(),
                reason: format!("position {expect} is missing before {}", entry.position),
            });
        }
        entries.push(entry);
    }
    if entries.is_empty() {
        // Entries up to the head exist, but none after `after` is kept.
        return Ok(FeedRead::Behind {
            oldest: u64::try_from(head).unwrap_or(0) + 1,
        });
    }
    Ok(FeedRead::Entries(entries))
}

/// Follows the feed of a [`PostgresStore`](super::PostgresStore).
pub(super) struct PostgresFollower {
    url: String,
    listen: bool,
    /// `None` after a failure, until [`Follower::reconnect`].
    client: Option<Client>,
    /// Whether `client`'s session holds the expiry-events lease (a
    /// session advisory lock: it ends with the connection).
    leased: bool,
}

impl PostgresFollower {
    pub(super) fn connect(url: &str, listen: bool) -> Result<Self, StoreError> {
        let mut f = PostgresFollower {
            url: url.to_string(),
            listen,
            client: None,
            leased: false,
        };
        f.reconnect()?;
        Ok(f)
    }

    fn client(&mut self) -> Result<&mut Client, StoreError> {
        self.client
            .as_mut()
            .ok_or_else(|| StoreError::Io("postgresql: the follower is not connected".into()))
    }

    /// Run `f` on the connection; a failure drops the connection, so the
    /// caller reconnects (and listens again) before the next read.
    fn on<T>(
        &mut self,
        f: impl FnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let out = f(self.client()?);
        if out.is_err() {
            self.leased = false;
            if let Some(c) = self.client.take() {
                close_off_thread(c);
            }
        }
        out
    }
}

impl Drop for PostgresFollower {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            close_off_thread(c);
        }
    }
}

impl Follower for PostgresFollower {
    fn wait(&mut self, timeout: Duration) -> Result<bool, StoreError> {
        if !self.listen {
            std::thread::sleep(timeout);
            return Ok(false);
        }
        self.on(|c| {
            let mut notes = c.notifications();
            let woke = notes.timeout_iter(timeout).next().map_err(pg)?.is_some();
            // Several writes, one read: drain what else has arrived.
            let mut pending = notes.iter();
            while pending.next().map_err(pg)?.is_some() {}
            Ok(woke)
        })
    }

    fn read(&mut self, after: u64, limit: usize) -> Result<FeedRead, StoreError> {
        self.on(|c| read_feed(c, after, limit))
    }

    fn head(&mut self) -> Result<Option<u64>, StoreError> {
        self.on(|c| {
            let head: i64 = c
                .query_one("SELECT seq FROM grantwheel_feed_head", &[])
                .map_err(pg)?
                .try_get(0)
                .map_err(pg)?;
            Ok(Some(u64::try_from(head).unwrap_or(0)))
        })
    }

    fn snapshot(
        &mut self,
        each: &mut dyn FnMut(Grant),
    ) -> Result<(u64, Vec<(RuleId, Rule)>), StoreError> {
        self.on(|c| {
            // One repeatable-read transaction: the head, the grants and the
            // rules of one moment.
            let mut tx = c
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .map_err(pg)?;
            let head: i64 = tx
                .query_one("SELECT seq FROM grantwheel_feed_head", &[])
                .map_err(pg)?
                .try_get(0)
                .map_err(pg)?;
            read_grants(&mut tx, each)?;
            let rules = read_rules(&mut tx)?;
            tx.commit().map_err(pg)?;
            Ok((u64::try_from(head).unwrap_or(0), rules))
        })
    }

    fn server_time(&mut self) -> Result<DateTime<Utc>, StoreError> {
        self.on(|c| {
            let ms: i64 = c
                .query_one(
                    "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
                    &[],
                )
                .map_err(pg)?
                .try_get(0)
                .map_err(pg)?;
            Ok(from_millis(u64::try_from(ms).unwrap_or(0)))
        })
    }

    fn housekeep(
        &mut self,
        expired_before: DateTime<Utc>,
        keep_feed: Duration,
    ) -> Result<Option<Housekept>, StoreError> {
        /// The advisory lock key of housekeeping ("gw-house" in ASCII).
        const HOUSEKEEPING_LOCK: i64 = 0x6777_2d68_6f75_7365;
        /// Feed entries always kept, however old: a follower that was away
        /// briefly catches up instead of taking a snapshot.
        const KEEP_ENTRIES: i64 = 10_000;
        self.on(|c| {
            let mut tx = c.transaction().map_err(pg)?;
            let ours: bool = tx
                .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&HOUSEKEEPING_LOCK])
                .map_err(pg)?
                .try_get(0)
                .map_err(pg)?;
            if !ours {
                return Ok(None);
            }
            let before = expired_before.timestamp_millis();
            let mut done = Housekept::default();
            loop {
                // In slices of 10,000: each statement stays short (the
                // rows are of expired grants, which no writer touches).
                let n = tx
                    .execute(
                        "DELETE FROM grantwheel_grants WHERE serial IN (SELECT serial FROM grantwheel_grants WHERE expires_ms <= $1 LIMIT 10000)",
                        &[&before],
                    )
                    .map_err(pg)?;
                done.grants += n;
                if n < 10_000 {
                    break;
                }
            }
            let secs = keep_feed.as_secs_f64();
            done.feed = tx
                .execute(
                    "DELETE FROM grantwheel_feed WHERE seq <= (SELECT seq FROM grantwheel_feed_head) - $1 AND committed < now() - make_interval(secs => $2)",
                    &[&KEEP_ENTRIES, &secs],
                )
                .map_err(pg)?;
            tx.commit().map_err(pg)?;
            Ok(Some(done))
        })
    }

    fn hold_lease(&mut self) -> Result<bool, StoreError> {
        /// The advisory lock key of the expiry-events lease ("gw-lease").
        const LEASE_LOCK: i64 = 0x6777_2d6c_6561_7365;
        if self.leased && self.client.is_some() {
            // Held since this connection took it: the lock lives as long
            // as the session, and a lost session fails the next read,
            // which clears `leased`.
            return Ok(true);
        }
        let leased = self.on(|c| {
            c.query_one("SELECT pg_try_advisory_lock($1)", &[&LEASE_LOCK])
                .and_then(|r| r.try_get::<_, bool>(0))
                .map_err(pg)
        })?;
        self.leased = leased;
        Ok(leased)
    }

    fn reconnect(&mut self) -> Result<(), StoreError> {
        self.leased = false;
        if let Some(c) = self.client.take() {
            close_off_thread(c);
        }
        let mut client = connect(&self.url)?;
        if self.listen {
            // Listen first: anything committed after this is announced.
            client
                .batch_execute(&format!("LISTEN {FEED_CHANNEL}"))
                .map_err(pg)?;
        }
        self.client = Some(client);
        Ok(())
    }
}
