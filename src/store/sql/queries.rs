//! The read side's statements both SQL stores run, written once over a
//! small [`Dialect`]: the tables' and the user column's names, and how a
//! numbered parameter is written. A template names them `{history}`,
//! `{grants}`, `{user}`, `{columns}` (a history row, `seq` first) and
//! `{grant_columns}`, and its parameters `?1`, `?2`, ...
//!
//! Two reads stay with each store, for reasons of their own: the history
//! page (SQLite merges its index ranges in Rust, PostgreSQL in one
//! `UNION ALL` statement from one snapshot) and the requests left
//! processing (PostgreSQL keeps only those whose instance is gone, by its
//! advisory locks).

/// How one store spells what the templates name.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dialect {
    /// The history table.
    pub(crate) history: &'static str,
    /// The live grants' table.
    pub(crate) grants: &'static str,
    /// The user's column (`user` is a keyword in PostgreSQL).
    pub(crate) user: &'static str,
    /// A history row's columns, `seq` first.
    pub(crate) columns: &'static str,
    /// A grant row's columns.
    pub(crate) grant_columns: &'static str,
    /// The sign of a numbered parameter: `?` (SQLite) or `$` (PostgreSQL).
    pub(crate) parameter: char,
}

impl Dialect {
    /// The statement of `template` in this dialect.
    pub(crate) fn render(&self, template: &str) -> String {
        let sql = template
            .replace("{columns}", self.columns)
            .replace("{grant_columns}", self.grant_columns)
            .replace("{history}", self.history)
            .replace("{grants}", self.grants)
            .replace("{user}", self.user);
        if self.parameter == '?' {
            sql
        } else {
            // Templates hold no other `?` (no string literal has one).
            sql.replace('?', &self.parameter.to_string())
        }
    }
}

/// A request by its id.
pub(crate) const REQUEST: &str = "SELECT {columns} FROM {history} WHERE request = ?1";

/// A request by its idempotency key.
pub(crate) const REQUEST_BY_KEY: &str =
    "SELECT {columns} FROM {history} WHERE idempotency_key = ?1";

/// The completed shares of an entity (`?1`, `?2`) live at `?3`, newest
/// first.
pub(crate) const ACCESS_AT: &str = "SELECT {columns} FROM {history} WHERE entity_kind = ?1 AND entity_id = ?2 AND status = 'Completed' AND kind = 'share' AND completed_ms <= ?3 AND (starts_ms IS NULL OR starts_ms <= ?3) AND expires_ms > ?3 AND (end_ms IS NULL OR end_ms > ?3) ORDER BY seq DESC";

/// The share record that made grant `?1`.
pub(crate) const SHARE_OF_GRANT: &str =
    "SELECT {columns} FROM {history} WHERE grant_serial = ?1 AND kind = 'share' LIMIT 1";

/// The approvals queue, soonest deadline first (`?1`: how many).
pub(crate) const AWAITING: &str = "SELECT {columns} FROM {history} WHERE status = 'Processing' AND approval_deadline_ms IS NOT NULL ORDER BY approval_deadline_ms, seq LIMIT ?1";

/// A user's (`?1`) completed shares live at `?2`, newest first (the end
/// bounds the index range; the start is checked on each).
pub(crate) const HELD_AT: &str = "SELECT {columns} FROM {history} WHERE {user} = ?1 AND kind = 'share' AND status = 'Completed' AND expires_ms > ?2 AND completed_ms <= ?2 AND (starts_ms IS NULL OR starts_ms <= ?2) AND (end_ms IS NULL OR end_ms > ?2) ORDER BY seq DESC";

/// A rule's (`?1`) completed shares whose grant is neither ended nor
/// expired at `?2`.
pub(crate) const OPEN_OF_RULE: &str = "SELECT {columns} FROM {history} WHERE rule = ?1 AND kind = 'share' AND status = 'Completed' AND end_ms IS NULL AND expires_ms > ?2 ORDER BY seq";

/// The requests finished before `?1`, longest ago first (`?2`: how many).
pub(crate) const PRUNABLE: &str =
    "SELECT request FROM {history} WHERE done_ms < ?1 ORDER BY done_ms, seq LIMIT ?2";

/// A user's (`?1`) grants live at `?2`.
pub(crate) const GRANTS_OF_USER: &str = "SELECT {grant_columns} FROM {grants} WHERE {user} = ?1 AND expires_ms > ?2 ORDER BY expires_ms, serial";

/// An entity's (`?1`, `?2`) grants live at `?3`.
pub(crate) const GRANTS_ON_ENTITY: &str = "SELECT {grant_columns} FROM {grants} WHERE entity_kind = ?1 AND entity_id = ?2 AND expires_ms > ?3 ORDER BY expires_ms, serial";

/// The grants made through a context (`?1`, `?2`) live at `?3`.
pub(crate) const GRANTS_THROUGH: &str = "SELECT {grant_columns} FROM {grants} WHERE context_kind = ?1 AND context_id = ?2 AND expires_ms > ?3 ORDER BY expires_ms, serial";

/// The direct grants (context kind `?1`, no context id) live at `?2`.
pub(crate) const GRANTS_DIRECT: &str = "SELECT {grant_columns} FROM {grants} WHERE context_kind = ?1 AND context_id IS NULL AND expires_ms > ?2 ORDER BY expires_ms, serial";

/// The grants live at `?2` that expire by `?1`.
pub(crate) const GRANTS_EXPIRING: &str = "SELECT {grant_columns} FROM {grants} WHERE expires_ms > ?2 AND expires_ms <= ?1 ORDER BY expires_ms, serial";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_renders_in_each_dialect() {
        let pg = Dialect {
            history: "grantwheel_history",
            grants: "grantwheel_grants",
            user: "user_id",
            columns: "seq, request",
            grant_columns: "serial",
            parameter: '$',
        };
        assert_eq!(
            pg.render(HELD_AT).split(" AND ").next(),
            Some("SELECT seq, request FROM grantwheel_history WHERE user_id = $1")
        );
        assert_eq!(
            pg.render(GRANTS_EXPIRING),
            "SELECT serial FROM grantwheel_grants WHERE expires_ms > $2 AND expires_ms <= $1 ORDER BY expires_ms, serial"
        );
        for t in [
            REQUEST,
            REQUEST_BY_KEY,
            ACCESS_AT,
            SHARE_OF_GRANT,
            AWAITING,
            HELD_AT,
        ] {
            assert!(!pg.render(t).contains(['{', '?']), "{t}");
        }
    }
}
