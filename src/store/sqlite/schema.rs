//! The schema: its version and the migrations that reach it.
//!
//! Version 1 kept each history record as one JSON document beside a few
//! columns, and the request layer loaded them all at start. Version 2
//! keeps every field of a record in a column of its own, with the indexes
//! that serve each query of the store's read side, so nothing of the
//! history is loaded at start; the live grants gain the indexes of the
//! listings by user, entity, context and expiry. Version 3 gives a grant
//! its start (`starts_ms`, for grants shared to start later); version 4
//! gives a history record the start of the access it asked for; version 5
//! its grantor, its approval (why, deadline, and the decision) and why the
//! request layer ended its grant early (a start refused), with
//! the indexes of the approvals queue and of a user's audit.

use rusqlite::{params, Transaction};

use super::history::{insert_with_place, APPROVAL_INDEXES, HISTORY_INDEXES};
use super::io;
use crate::model::history::HistoryRecord;
use crate::store::StoreError;

/// The schema version this library writes. Older files are migrated
/// forward on open; newer ones are refused.
pub(super) const SCHEMA_VERSION: i64 = 5;

/// A migration: takes a file from the version at its index to the next.
type Migration = fn(&Transaction<'_>) -> Result<(), StoreError>;

/// Migrations: entry `i` takes a file from version `i` to `i + 1`.
pub(super) const MIGRATIONS: &[Migration] = &[to_v1, to_v2, to_v3, to_v4, to_v5];

const _: () = assert!(MIGRATIONS.len() as i64 == SCHEMA_VERSION);

const V1: &str = "
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('last_seq', 0), ('next_serial', 0), ('clock_ms', 0);

-- The live grants. A row goes when its grant is revoked, replaced or
-- expires, so this table holds only what may still give access.
CREATE TABLE grants (
    serial       INTEGER PRIMARY KEY,   -- unique per grant, never reused
    user         TEXT NOT NULL,         -- UUID
    entity_kind  INTEGER NOT NULL,      -- 1 lead, 5 opportunity, host codes
    entity_id    NOT NULL,              -- a number, or a UUID as text (no type: kept as given)
    context_kind INTEGER NOT NULL,      -- 0 direct, 1 activity, 2 task, 3+ host kinds
    context_id   TEXT,                  -- UUID; NULL for a direct share
    level        TEXT NOT NULL CHECK (level IN ('read', 'edit')),
    expires_ms   INTEGER NOT NULL,      -- exclusive; milliseconds since 1970 UTC
    crc          INTEGER NOT NULL       -- CRC-32 of the row's fields: damage is refused, not loaded
);

-- Every share and revoke request; `record` is the whole record as JSON.
CREATE TABLE history (
    request    TEXT PRIMARY KEY,        -- 32 hex digits
    seq        INTEGER NOT NULL UNIQUE,
    kind       TEXT NOT NULL,
    entity     TEXT NOT NULL,
    user       TEXT NOT NULL,
    status     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    record     TEXT NOT NULL
);
CREATE INDEX history_by_entity ON history (entity, seq);

CREATE TABLE rules (
    id   INTEGER PRIMARY KEY,
    rule TEXT NOT NULL                  -- the rule as JSON
);

-- The live grants with readable times.
CREATE VIEW grants_readable AS
SELECT serial, user, entity_kind, entity_id, context_kind, context_id, level,
       strftime('%Y-%m-%dT%H:%M:%fZ', expires_ms / 1000.0, 'unixepoch') AS expires_at
FROM grants;
";

fn to_v1(tx: &Transaction<'_>) -> Result<(), StoreError> {
    tx.execute_batch(V1).map_err(io)
}

/// The history table of version 2: one column per field.
pub(super) const HISTORY_V2: &str = "
CREATE TABLE history_v2 (
    seq             INTEGER PRIMARY KEY,    -- place in the history order: first written, first placed
    request         TEXT NOT NULL UNIQUE,   -- 32 hex digits
    kind            TEXT NOT NULL CHECK (kind IN ('share', 'revoke')),
    entity_kind     INTEGER NOT NULL,       -- as in grants
    entity_id       NOT NULL,               -- as in grants
    user            TEXT NOT NULL,          -- UUID
    context_kind    INTEGER NOT NULL,       -- as in grants
    context_id      TEXT,                   -- as in grants
    level           TEXT NOT NULL CHECK (level IN ('read', 'edit')),
    duration_ms     INTEGER,                -- asked for; NULL: the engine's default (or a revoke)
    expires_ms      INTEGER,                -- when the access given ends (completed shares)
    source          TEXT NOT NULL CHECK (source IN ('api', 'automation', 'direct')),
    rule            INTEGER,                -- the automation rule, for source 'automation'
    status          TEXT NOT NULL CHECK (status IN ('Processing', 'Completed', 'Failed')),
    failure_kind    TEXT,                   -- for status 'Failed'
    reason          TEXT,                   -- for status 'Failed'
    grant_serial    INTEGER,                -- the grant made (shares) or ended (revokes)
    created_ms      INTEGER NOT NULL,       -- milliseconds since 1970 UTC
    completed_ms    INTEGER,
    end_ms          INTEGER,                -- when a share's grant was revoked or replaced (an expiry is expires_ms)
    end_cause       TEXT CHECK (end_cause IN ('revoked', 'replaced', 'expired')),
    ended_by        TEXT,                   -- the revoke request that ended it
    idempotency_key TEXT,
    -- When retention may remove the record: a completed share when its
    -- grant ended (revoked or replaced, else at its expiry), any other
    -- request when it finished.
    done_ms INTEGER GENERATED ALWAYS AS (
        CASE WHEN status = 'Processing' THEN NULL
             WHEN kind = 'share' AND status = 'Completed' THEN coalesce(end_ms, expires_ms)
             ELSE completed_ms END) VIRTUAL
);
";

const GRANT_INDEXES: &str = "
CREATE INDEX grants_by_user ON grants (user, expires_ms);
CREATE INDEX grants_by_entity ON grants (entity_kind, entity_id, expires_ms);
CREATE INDEX grants_by_context ON grants (context_kind, context_id, expires_ms);
CREATE INDEX grants_by_expiry ON grants (expires_ms);
";

/// The readable view of version 2 (version 4 replaces it).
const HISTORY_VIEW: &str = "
CREATE VIEW history_readable AS
SELECT seq, request, kind, entity_kind, entity_id, user, context_kind, context_id, level,
       duration_ms / 60000.0 AS duration_minutes, source, rule, status, failure_kind, reason,
       grant_serial,
       strftime('%Y-%m-%dT%H:%M:%fZ', created_ms / 1000.0, 'unixepoch') AS created_at,
       strftime('%Y-%m-%dT%H:%M:%fZ', completed_ms / 1000.0, 'unixepoch') AS completed_at,
       strftime('%Y-%m-%dT%H:%M:%fZ', expires_ms / 1000.0, 'unixepoch') AS expires_at,
       strftime('%Y-%m-%dT%H:%M:%fZ', end_ms / 1000.0, 'unixepoch') AS ended_at,
       end_cause, ended_by, idempotency_key
FROM history;
";

/// Version 2: history in columns, every record of version 1 kept (its
/// place too); indexes for every query.
fn to_v2(tx: &Transaction<'_>) -> Result<(), StoreError> {
    tx.execute_batch(HISTORY_V2).map_err(io)?;
    {
        let mut old = tx
            .prepare("SELECT seq, request, record FROM history ORDER BY seq")
            .map_err(io)?;
        let mut rows = old.query(params![]).map_err(io)?;
        while let Some(row) = rows.next().map_err(io)? {
            let request: String = row.get(1).map_err(io)?;
            let corrupt = |reason: String| StoreError::Corrupt {
                what: format!("history row `{request}` (version 1)"),
                reason,
            };
            let seq: i64 = row.get(0).map_err(|e| corrupt(e.to_string()))?;
            let json: String = row.get(2).map_err(|e| corrupt(e.to_string()))?;
            let record: HistoryRecord =
                serde_json::from_str(&json).map_err(|e| corrupt(e.to_string()))?;
            insert_with_place(tx, "history_v2", seq, &record)?;
        }
    }
    tx.execute_batch("DROP TABLE history; ALTER TABLE history_v2 RENAME TO history;")
        .map_err(io)?;
    tx.execute_batch(HISTORY_INDEXES).map_err(io)?;
    tx.execute_batch(GRANT_INDEXES).map_err(io)?;
    tx.execute_batch(HISTORY_VIEW).map_err(io)
}

/// Version 3: grants may start later (`starts_ms`; NULL for a grant live
/// from its creation). Existing rows keep their checksums.
fn to_v3(tx: &Transaction<'_>) -> Result<(), StoreError> {
    tx.execute_batch(
        "ALTER TABLE grants ADD COLUMN starts_ms INTEGER; -- inclusive; NULL: from its creation
         DROP VIEW grants_readable;
         CREATE VIEW grants_readable AS
         SELECT serial, user, entity_kind, entity_id, context_kind, context_id, level,
                strftime('%Y-%m-%dT%H:%M:%fZ', starts_ms / 1000.0, 'unixepoch') AS starts_at,
                strftime('%Y-%m-%dT%H:%M:%fZ', expires_ms / 1000.0, 'unixepoch') AS expires_at
         FROM grants;",
    )
    .map_err(io)
}

/// Version 4: a share record keeps when its access begins (`starts_ms`;
/// NULL: at once), and the readable view shows it.
fn to_v4(tx: &Transaction<'_>) -> Result<(), StoreError> {
    tx.execute_batch(
        "ALTER TABLE history ADD COLUMN starts_ms INTEGER; -- when the access begins; NULL: at once
         DROP VIEW history_readable;
         CREATE VIEW history_readable AS
         SELECT seq, request, kind, entity_kind, entity_id, user, context_kind, context_id, level,
                duration_ms / 60000.0 AS duration_minutes, source, rule, status, failure_kind,
                reason, grant_serial,
                strftime('%Y-%m-%dT%H:%M:%fZ', created_ms / 1000.0, 'unixepoch') AS created_at,
                strftime('%Y-%m-%dT%H:%M:%fZ', completed_ms / 1000.0, 'unixepoch') AS completed_at,
                strftime('%Y-%m-%dT%H:%M:%fZ', starts_ms / 1000.0, 'unixepoch') AS starts_at,
                strftime('%Y-%m-%dT%H:%M:%fZ', expires_ms / 1000.0, 'unixepoch') AS expires_at,
                strftime('%Y-%m-%dT%H:%M:%fZ', end_ms / 1000.0, 'unixepoch') AS ended_at,
                end_cause, ended_by, idempotency_key
         FROM history;",
    )
    .map_err(io)
}

/// Version 5: a share record keeps its grantor and its approval; the
/// approvals queue and a user's audit get their indexes.
fn to_v5(tx: &Transaction<'_>) -> Result<(), StoreError> {
    tx.execute_batch(
        "ALTER TABLE history ADD COLUMN granted_by TEXT;            -- UUID of the grantor named, if any
         ALTER TABLE history ADD COLUMN approval_why TEXT;          -- why an approver was needed
         ALTER TABLE history ADD COLUMN approval_deadline_ms INTEGER; -- NULL: no approval needed
         ALTER TABLE history ADD COLUMN approver TEXT;              -- UUID, once decided
         ALTER TABLE history ADD COLUMN approved INTEGER CHECK (approved IN (0, 1));
         ALTER TABLE history ADD COLUMN decided_ms INTEGER;
         ALTER TABLE history ADD COLUMN decision_reason TEXT;
         ALTER TABLE history ADD COLUMN end_reason TEXT;             -- why the layer ended the grant early",
    )
    .map_err(io)?;
    tx.execute_batch(APPROVAL_INDEXES).map_err(io)
}
