//! The write side: a batch in one transaction that takes the feed head's
//! row lock first and holds it to commit (so feed numbers are dense and in
//! commit order), its changes written by prepared statements (runs of
//! like changes as one `unnest` statement), and the [`SharedStore`] side
//! of the store (the feed lock, the position, the follower).

use postgres::types::ToSql;
use postgres::{Client, Statement};

use super::connect::close_off_thread;
use super::follow;
use super::rows::{
    i64_of, record_params, sql_type, GrantColumns, GrantValues, RecordColumns, GRANT_COLUMNS,
};
use super::{lost, pg, PostgresStore, FEED_CHANNEL};
use crate::clock::to_millis;
use crate::store::sql::history::{history_columns, upsert, HISTORY_TYPES};
use crate::store::{Batch, Change, EndCause, FeedRead, Follower, SharedStore, StoreError};

/// The write path's statements, prepared once per connection.
pub(super) struct Statements {
    take_head: Statement,
    set_head: Statement,
    last_seq: Statement,
    put_grant: Statement,
    put_grants: Statement,
    end_grant: Statement,
    end_record: Statement,
    ended_by: Statement,
    put_record: Statement,
    put_records: Statement,
    forget: Statement,
    put_rule: Statement,
    remove_rule: Statement,
    put_feed: Statement,
    put_meta: Statement,
    notify: Statement,
}

/// The history columns a record is written to.
const RECORD_COLUMNS: &str = history_columns!("user_id");

/// How a record written again replaces its earlier version.
fn record_conflict() -> String {
    upsert("grantwheel_history", "user_id", &["owner"])
}

/// The grant columns, for `UNNEST`, in [`GRANT_COLUMNS`] order.
const GRANT_TYPES: [&str; 9] = [
    "bigint", "text", "int", "text", "int", "text", "text", "bigint", "bigint",
];

const GRANT_CONFLICT: &str = "ON CONFLICT (serial) DO UPDATE SET user_id = excluded.user_id, entity_kind = excluded.entity_kind, entity_id = excluded.entity_id,
    context_kind = excluded.context_kind, context_id = excluded.context_id, level = excluded.level, expires_ms = excluded.expires_ms,
    starts_ms = excluded.starts_ms";

/// `$1, $2, ...` for `n` values.
fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `UNNEST($1::t1[], ...) WITH ORDINALITY AS u(columns, ord)`: rows from
/// arrays, in array order.
fn unnest(types: &[&str], columns: &str) -> String {
    let arrays: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(i, t)| format!("${}::{t}[]", i + 1))
        .collect();
    format!(
        "SELECT {columns} FROM UNNEST({}) WITH ORDINALITY AS u({columns}, ord) ORDER BY ord",
        arrays.join(", ")
    )
}

impl Statements {
    pub(super) fn prepare(c: &mut Client) -> Result<Self, StoreError> {
        let mut p = |sql: &str| c.prepare(sql).map_err(pg);
        Ok(Statements {
            take_head: p("SELECT seq FROM grantwheel_feed_head FOR UPDATE")?,
            set_head: p("UPDATE grantwheel_feed_head SET seq = $1")?,
            last_seq: p("SELECT value FROM grantwheel_meta WHERE key = 'last_seq'")?,
            put_grant: p(&format!(
                "INSERT INTO grantwheel_grants ({GRANT_COLUMNS}) VALUES ({}) {GRANT_CONFLICT}",
                placeholders(GRANT_TYPES.len())
            ))?,
            put_grants: p(&format!(
                "INSERT INTO grantwheel_grants ({GRANT_COLUMNS}) {} {GRANT_CONFLICT}",
                unnest(&GRANT_TYPES, GRANT_COLUMNS)
            ))?,
            end_grant: p("DELETE FROM grantwheel_grants WHERE serial = $1")?,
            end_record: p("UPDATE grantwheel_history SET end_ms = $2, end_cause = $3 WHERE grant_serial = $1 AND kind = 'share' AND end_ms IS NULL")?,
            ended_by: p("UPDATE grantwheel_history SET ended_by = $2 WHERE grant_serial = $1 AND kind = 'share'")?,
            put_record: p(&format!(
                "INSERT INTO grantwheel_history ({RECORD_COLUMNS}) VALUES ({}) {}",
                placeholders(HISTORY_TYPES.len()),
                record_conflict()
            ))?,
            put_records: p(&format!(
                "INSERT INTO grantwheel_history ({RECORD_COLUMNS}) {} {}",
                unnest(&HISTORY_TYPES.map(sql_type), RECORD_COLUMNS),
                record_conflict()
            ))?,
            forget: p("DELETE FROM grantwheel_history WHERE request = $1")?,
            put_rule: p("INSERT INTO grantwheel_rules (id, rule) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET rule = excluded.rule")?,
            remove_rule: p("DELETE FROM grantwheel_rules WHERE id = $1")?,
            put_feed: p("INSERT INTO grantwheel_feed (seq, engine, batch_seq, next_serial, clock_ms, changes) VALUES ($1, $2, $3, $4, $5, $6)")?,
            put_meta: p("UPDATE grantwheel_meta SET value = CASE key WHEN 'last_seq' THEN $1 WHEN 'next_serial' THEN greatest(value, $2) ELSE greatest(value, $3) END")?,
            notify: p("SELECT pg_notify($1, $2)")?,
        })
    }
}

/// Write one change in the batch's transaction. Every kind of change is
/// handled here: a new kind is a compile error, never a silent no-op.
fn write_change(tx: &mut Client, s: &Statements, change: &Change) -> Result<(), StoreError> {
    match change {
        Change::Put(g) => {
            let v = GrantValues::of(g);
            tx.execute(&s.put_grant, &v.params()).map_err(pg)?;
        }
        Change::End { grant, at, cause } => {
            let serial = i64_of(grant.serial);
            tx.execute(&s.end_grant, &[&serial]).map_err(pg)?;
            let cause = match cause {
                // Not recorded: readers compare `expires_ms` with their time.
                EndCause::Expired => return Ok(()),
                EndCause::Revoked => "revoked",
                EndCause::Replaced => "replaced",
            };
            tx.execute(&s.end_record, &[&serial, &at.timestamp_millis(), &cause])
                .map_err(pg)?;
        }
        Change::EndedBy { serial, request } => {
            tx.execute(&s.ended_by, &[&i64_of(*serial), &request.to_string()])
                .map_err(pg)?;
        }
        Change::Record(record) => {
            let params = record_params(record);
            let refs: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
            tx.execute(&s.put_record, &refs).map_err(pg)?;
        }
        Change::Forget(request) => {
            tx.execute(&s.forget, &[&request.to_string()]).map_err(pg)?;
        }
        Change::Rule { id, rule } => {
            let json = serde_json::to_string(rule)
                .map_err(|e| StoreError::Io(format!("encoding a rule: {e}")))?;
            tx.execute(&s.put_rule, &[&i64_of(id.0), &json])
                .map_err(pg)?;
        }
        Change::RemoveRule(id) => {
            tx.execute(&s.remove_rule, &[&i64_of(id.0)]).map_err(pg)?;
        }
    }
    Ok(())
}

/// Write a batch's changes in order, each run of puts and records (rows
/// of two tables that no other change of the run touches) as one
/// statement per table: a batch of 10,000 shares is two statements, not
/// 20,000.
fn write_changes(tx: &mut Client, s: &Statements, changes: &[Change]) -> Result<(), StoreError> {
    let mut rest = changes;
    while let Some((first, after)) = rest.split_first() {
        let run = rest
            .iter()
            .take_while(|c| matches!(c, Change::Put(_) | Change::Record(_)))
            .count();
        if run < 2 {
            write_change(tx, s, first)?;
            rest = after;
            continue;
        }
        let (now, later) = rest.split_at(run);
        write_run(tx, s, now)?;
        rest = later;
    }
    Ok(())
}

/// Write a run of puts and records: the last put of each serial and the
/// last record of each request (a statement may not touch a row twice),
/// records in their order (their order is the history's).
fn write_run(tx: &mut Client, s: &Statements, run: &[Change]) -> Result<(), StoreError> {
    let mut last_put: hashbrown::HashMap<u64, usize> = hashbrown::HashMap::new();
    let mut last_record: hashbrown::HashMap<crate::model::history::RequestId, usize> =
        hashbrown::HashMap::new();
    for (i, c) in run.iter().enumerate() {
        match c {
            Change::Put(g) => {
                last_put.insert(g.id.serial, i);
            }
            Change::Record(r) => {
                last_record.insert(r.request, i);
            }
            _ => {}
        }
    }
    let (mut grants, mut records) = (GrantColumns::default(), RecordColumns::default());
    let (mut puts, mut recs) = (0, 0);
    for (i, c) in run.iter().enumerate() {
        match c {
            Change::Put(g) if last_put.get(&g.id.serial) == Some(&i) => {
                grants.push(GrantValues::of(g));
                puts += 1;
            }
            Change::Record(r) if last_record.get(&r.request) == Some(&i) => {
                records.push(r);
                recs += 1;
            }
            _ => {}
        }
    }
    if puts > 0 {
        tx.execute(&s.put_grants, &grants.params()).map_err(pg)?;
    }
    if recs > 0 {
        tx.execute(&s.put_records, &records.params()).map_err(pg)?;
    }
    Ok(())
}

/// The changes of a batch that the feed carries: expirations are left
/// out, since every engine expires grants by its own clock (and a million
/// grants expiring at once would otherwise be a million feed lines).
fn feed_changes(changes: &[Change]) -> Vec<&Change> {
    changes
        .iter()
        .filter(|c| {
            !matches!(
                c,
                Change::End {
                    cause: EndCause::Expired,
                    ..
                }
            )
        })
        .collect()
}

impl PostgresStore {
    /// Open a transaction and take the feed lock (the head's row lock):
    /// held to commit, so every write is ordered after every write
    /// committed before it. Returns the head.
    pub(super) fn lock(&mut self) -> Result<i64, StoreError> {
        if let Some(head) = self.locked {
            return Ok(head);
        }
        self.client()?;
        let begun = self.client.as_mut().map(|c| c.batch_execute("BEGIN"));
        if let Some(Err(e)) = begun {
            // Nothing was sent inside a transaction yet, so a connection
            // found lost here is opened again and the write goes ahead.
            if !lost(&e) {
                return Err(pg(e));
            }
            if let Some(old) = self.client.take() {
                close_off_thread(old);
            }
            self.client()?.batch_execute("BEGIN").map_err(pg)?;
        }
        let s = &self.statements;
        let client = self
            .client
            .as_mut()
            .ok_or_else(|| StoreError::Io("postgresql: the store is closed".into()))?;
        let head = client
            .query_one(&s.take_head, &[])
            .and_then(|r| r.try_get::<_, i64>(0));
        match head {
            Ok(head) => {
                self.locked = Some(head);
                Ok(head)
            }
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK");
                Err(pg(e))
            }
        }
    }

    /// Write `batch` after feed position `head` and commit, in the open
    /// transaction.
    pub(super) fn write_locked(&mut self, head: i64, batch: &Batch<'_>) -> Result<(), StoreError> {
        let s = &self.statements;
        let client = self
            .client
            .as_mut()
            .ok_or_else(|| StoreError::Io("postgresql: the store is closed".into()))?;
        let last: i64 = client
            .query_one(&s.last_seq, &[])
            .map_err(pg)?
            .try_get(0)
            .map_err(pg)?;
        if i64_of(batch.seq) <= last {
            // A replay: rolled back, so the feed number is not used.
            return client.batch_execute("ROLLBACK").map_err(pg);
        }
        write_changes(client, s, batch.changes)?;
        let changes = serde_json::to_string(&feed_changes(batch.changes))
            .map_err(|e| StoreError::Io(format!("encoding a batch: {e}")))?;
        let clock = i64_of(to_millis(batch.clock));
        let position = head + 1;
        client
            .execute(
                &s.put_feed,
                &[
                    &position,
                    &self.engine,
                    &i64_of(batch.seq),
                    &i64_of(batch.next_serial),
                    &clock,
                    &changes,
                ],
            )
            .map_err(pg)?;
        client.execute(&s.set_head, &[&position]).map_err(pg)?;
        client
            .execute(
                &s.put_meta,
                &[&i64_of(batch.seq), &i64_of(batch.next_serial), &clock],
            )
            .map_err(pg)?;
        // Delivered at commit, and only if it commits.
        client
            .execute(&s.notify, &[&FEED_CHANNEL, &position.to_string()])
            .map_err(pg)?;
        client.batch_execute("COMMIT").map_err(pg)
    }
}

impl SharedStore for PostgresStore {
    fn position(&mut self) -> Result<u64, StoreError> {
        self.feed_head()
    }

    fn lock_feed(&mut self, after: u64) -> Result<FeedRead, StoreError> {
        let head = self.lock()?;
        let read = (|| {
            if head < i64_of(after) {
                return Err(StoreError::Corrupt {
                    what: "grantwheel_feed_head".into(),
                    reason: format!(
                        "the feed is at {head}, behind this engine's position {after}: the database was replaced or restored; restart the engine"
                    ),
                });
            }
            let client = self.client()?;
            let mut entries = Vec::new();
            let mut at = after;
            while i64_of(at) < head {
                match follow::read_feed(client, at, 10_000)? {
                    FeedRead::Entries(page) if page.is_empty() => break,
                    FeedRead::Entries(page) => {
                        at = page.last().map_or(at, |e| e.position);
                        entries.extend(page);
                    }
                    behind @ FeedRead::Behind { .. } => return Ok(behind),
                }
            }
            Ok(FeedRead::Entries(entries))
        })();
        if read.is_err() {
            self.release_feed();
        }
        read
    }

    fn release_feed(&mut self) {
        if self.locked.take().is_some() {
            if let Some(c) = self.client.as_mut() {
                let _ = c.batch_execute("ROLLBACK");
            }
        }
    }

    fn follower(&self) -> Result<Box<dyn Follower>, StoreError> {
        Ok(Box::new(follow::PostgresFollower::connect(
            &self.url,
            self.listen,
        )?))
    }
}
