//! The schema: its version and the migrations that reach it.

/// The schema version this library writes. Older files are migrated
/// forward on open; newer ones are refused.
pub(super) const SCHEMA_VERSION: i64 = 1;

/// Migrations: entry `i` takes a file from version `i` to `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &["
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
"];

const _: () = assert!(MIGRATIONS.len() as i64 == SCHEMA_VERSION);
