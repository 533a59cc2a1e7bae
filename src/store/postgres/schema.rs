//! The schema: its version and the migrations that reach it.
//!
//! The tables mirror the SQLite store's (one column per field of a
//! history record, the same indexes for the same queries), plus the
//! change feed that several instances follow: a one-row head whose row
//! lock every write transaction takes, and the batches stored under the
//! numbers it hands out.

use postgres::Transaction;

use super::pg;
use crate::store::StoreError;

/// The schema version this library writes. Older databases are migrated
/// forward on connect; newer ones are refused.
pub(super) const SCHEMA_VERSION: i64 = 5;

/// A migration: takes a database from the version at its index to the
/// next.
type Migration = fn(&mut Transaction<'_>) -> Result<(), StoreError>;

/// Migrations: entry `i` takes a database from version `i` to `i + 1`.
pub(super) const MIGRATIONS: &[Migration] = &[to_v1, to_v2, to_v3, to_v4, to_v5];

const _: () = assert!(MIGRATIONS.len() as i64 == SCHEMA_VERSION);

const V1: &str = "
CREATE TABLE grantwheel_meta (
    key   TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO grantwheel_meta (key, value) VALUES ('last_seq', 0), ('next_serial', 0), ('clock_ms', 0);

-- The change feed. Every write transaction first takes this row's lock
-- (`UPDATE ... SET seq = seq + 1 RETURNING seq`) and holds it to commit,
-- so feed numbers are handed out in commit order, and a transaction that
-- rolls back takes its number with it: the feed is dense.
CREATE TABLE grantwheel_feed_head (
    one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
    seq BIGINT NOT NULL
);
INSERT INTO grantwheel_feed_head (one, seq) VALUES (true, 0);

CREATE TABLE grantwheel_feed (
    seq         BIGINT PRIMARY KEY,      -- dense: 1, 2, 3, ... in commit order
    engine      TEXT NOT NULL,           -- the writing instance
    batch_seq   BIGINT NOT NULL,         -- the batch's own sequence number
    next_serial BIGINT NOT NULL,
    clock_ms    BIGINT NOT NULL,
    committed   TIMESTAMPTZ NOT NULL DEFAULT now(),
    changes     TEXT NOT NULL            -- the batch's changes, as JSON
);

-- The live grants. A row goes when its grant is revoked, replaced or
-- expires, so this table holds only what may still give access.
CREATE TABLE grantwheel_grants (
    serial       BIGINT PRIMARY KEY,     -- unique per grant, never reused
    user_id      TEXT NOT NULL,          -- UUID
    entity_kind  INTEGER NOT NULL,       -- 1 lead, 5 opportunity, host codes
    entity_id    TEXT NOT NULL,          -- a number, or a UUID, as text
    context_kind INTEGER NOT NULL,       -- 0 direct, 1 activity, 2 task, 3+ host kinds
    context_id   TEXT,                   -- UUID; NULL for a direct share
    level        TEXT NOT NULL CHECK (level IN ('read', 'edit')),
    expires_ms   BIGINT NOT NULL         -- exclusive; milliseconds since 1970 UTC
);
CREATE INDEX grantwheel_grants_by_user ON grantwheel_grants (user_id, expires_ms);
CREATE INDEX grantwheel_grants_by_entity ON grantwheel_grants (entity_kind, entity_id, expires_ms);
CREATE INDEX grantwheel_grants_by_context ON grantwheel_grants (context_kind, context_id, expires_ms);
CREATE INDEX grantwheel_grants_by_expiry ON grantwheel_grants (expires_ms);

-- Every share and revoke request, one column per field.
CREATE TABLE grantwheel_history (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- place in the history order (taken under the feed lock: commit order)
    request         TEXT NOT NULL UNIQUE,   -- 32 hex digits
    kind            TEXT NOT NULL CHECK (kind IN ('share', 'revoke')),
    entity_kind     INTEGER NOT NULL,
    entity_id       TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    context_kind    INTEGER NOT NULL,
    context_id      TEXT,
    level           TEXT NOT NULL CHECK (level IN ('read', 'edit')),
    duration_ms     BIGINT,                 -- asked for; NULL: the engine's default (or a revoke)
    expires_ms      BIGINT,                 -- when the access given ends (completed shares)
    source          TEXT NOT NULL CHECK (source IN ('api', 'automation', 'direct')),
    rule            BIGINT,                 -- the automation rule, for source 'automation'
    status          TEXT NOT NULL CHECK (status IN ('Processing', 'Completed', 'Failed')),
    failure_kind    TEXT,
    reason          TEXT,
    grant_serial    BIGINT,                 -- the grant made (shares) or ended (revokes)
    created_ms      BIGINT NOT NULL,
    completed_ms    BIGINT,
    end_ms          BIGINT,                 -- when a share's grant was revoked or replaced
    end_cause       TEXT CHECK (end_cause IN ('revoked', 'replaced', 'expired')),
    ended_by        TEXT,                   -- the revoke request that ended it
    idempotency_key TEXT,
    -- When retention may remove the record.
    done_ms BIGINT GENERATED ALWAYS AS (
        CASE WHEN status = 'Processing' THEN NULL
             WHEN kind = 'share' AND status = 'Completed' THEN coalesce(end_ms, expires_ms)
             ELSE completed_ms END) STORED
);
CREATE INDEX grantwheel_history_by_entity_status ON grantwheel_history (entity_kind, entity_id, status, source, seq);
CREATE INDEX grantwheel_history_by_entity_user ON grantwheel_history (entity_kind, entity_id, user_id, seq);
CREATE INDEX grantwheel_history_by_rule ON grantwheel_history (rule, entity_kind, entity_id, seq) WHERE rule IS NOT NULL;
CREATE INDEX grantwheel_history_open_by_rule ON grantwheel_history (rule, expires_ms)
    WHERE rule IS NOT NULL AND kind = 'share' AND status = 'Completed' AND end_ms IS NULL;
CREATE UNIQUE INDEX grantwheel_history_by_key ON grantwheel_history (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX grantwheel_history_by_grant ON grantwheel_history (grant_serial) WHERE kind = 'share' AND grant_serial IS NOT NULL;
CREATE INDEX grantwheel_history_processing ON grantwheel_history (seq) WHERE status = 'Processing';
CREATE INDEX grantwheel_history_by_done ON grantwheel_history (done_ms, seq) WHERE done_ms IS NOT NULL;

CREATE TABLE grantwheel_rules (
    id   BIGINT PRIMARY KEY,
    rule TEXT NOT NULL                   -- the rule as JSON
);
";

fn to_v1(tx: &mut Transaction<'_>) -> Result<(), StoreError> {
    tx.batch_execute(V1).map_err(pg)
}

/// Version 2: each history row names the instance that wrote it, so a
/// request left `Processing` is failed only once the instance that queued
/// it is gone (see `PostgresStore` on owners).
const V2: &str = "
-- The writing instance's owner key (its writer connection sets
-- grantwheel.owner; its follower holds the session advisory lock of that
-- key while it runs). NULL: written before version 2.
ALTER TABLE grantwheel_history
    ADD COLUMN owner BIGINT DEFAULT nullif(current_setting('grantwheel.owner', true), '')::bigint;
";

fn to_v2(tx: &mut Transaction<'_>) -> Result<(), StoreError> {
    tx.batch_execute(V2).map_err(pg)
}

/// Version 3: grants may start later.
const V3: &str = "
-- Inclusive, milliseconds since 1970 UTC; NULL: live from its creation.
ALTER TABLE grantwheel_grants ADD COLUMN starts_ms BIGINT;
";

fn to_v3(tx: &mut Transaction<'_>) -> Result<(), StoreError> {
    tx.batch_execute(V3).map_err(pg)
}

/// Version 4: a share record keeps when its access begins.
const V4: &str = "
-- Milliseconds since 1970 UTC; NULL: at once.
ALTER TABLE grantwheel_history ADD COLUMN starts_ms BIGINT;
";

fn to_v4(tx: &mut Transaction<'_>) -> Result<(), StoreError> {
    tx.batch_execute(V4).map_err(pg)
}

/// Version 5: a share record keeps its grantor and its approval; the
/// approvals queue and a user's audit get their indexes.
const V5: &str = "
ALTER TABLE grantwheel_history
    ADD COLUMN granted_by TEXT,                 -- UUID of the grantor named, if any
    ADD COLUMN approval_why TEXT,               -- why an approver was needed
    ADD COLUMN approval_deadline_ms BIGINT,     -- NULL: no approval needed
    ADD COLUMN approver TEXT,                   -- UUID, once decided
    ADD COLUMN approved BOOLEAN,
    ADD COLUMN decided_ms BIGINT,
    ADD COLUMN decision_reason TEXT,
    ADD COLUMN end_reason TEXT;                 -- why the layer ended the grant early
CREATE INDEX grantwheel_history_awaiting ON grantwheel_history (approval_deadline_ms, seq)
    WHERE status = 'Processing' AND approval_deadline_ms IS NOT NULL;
CREATE INDEX grantwheel_history_shares_by_user ON grantwheel_history (user_id, expires_ms)
    WHERE kind = 'share' AND status = 'Completed';
";

fn to_v5(tx: &mut Transaction<'_>) -> Result<(), StoreError> {
    tx.batch_execute(V5).map_err(pg)
}

/// The advisory lock key migrations hold ("gw-schema" in ASCII).
const MIGRATION_LOCK: i64 = 0x6777_2d73_6368_656d;

/// Bring the database to [`SCHEMA_VERSION`], in one transaction that
/// holds an advisory lock, so instances starting together migrate once.
pub(super) fn migrate(client: &mut postgres::Client) -> Result<(), StoreError> {
    let mut tx = client.transaction().map_err(pg)?;
    // Released at commit: one migrating instance at a time.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(pg)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS grantwheel_schema (one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one), version BIGINT NOT NULL)",
    )
    .map_err(pg)?;
    let found: i64 = tx
        .query_opt("SELECT version FROM grantwheel_schema", &[])
        .map_err(pg)?
        .map_or(Ok(0), |r| r.try_get(0))
        .map_err(pg)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found < 0 {
        return Err(StoreError::Corrupt {
            what: "schema version".into(),
            reason: format!("`{found}` is negative"),
        });
    }
    for migration in MIGRATIONS.iter().skip(found as usize) {
        migration(&mut tx)?;
    }
    tx.execute(
        "INSERT INTO grantwheel_schema (one, version) VALUES (true, $1) ON CONFLICT (one) DO UPDATE SET version = excluded.version",
        &[&SCHEMA_VERSION],
    )
    .map_err(pg)?;
    tx.commit().map_err(pg)
}
