//! How every connection of the store is opened and closed: its bounds
//! (connect, unacknowledged data, statement time), its keepalives, its
//! notices, the writing instance's name on the session, and closing off
//! the async threads.

use postgres::{Client, NoTls};

use super::pg;
use crate::store::StoreError;

/// How long a statement may run on the server before it is cancelled
/// (unless the URL's `options` set `statement_timeout` themselves).
pub const STATEMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// How long data sent may go unacknowledged before the connection is
/// dropped: a link that froze (no packets, nothing closed) fails the call
/// within this instead of hanging until the kernel gives up (minutes).
pub const UNACKNOWLEDGED_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// Connect with the settings every connection of the store uses: a
/// bounded connect; keepalives so a dead server is noticed on an idle
/// connection, and a bound on unacknowledged data so it is noticed on a
/// busy one; a statement timeout; and the server's notices kept out of
/// the host's log unless they warn.
pub(super) fn connect(url: &str) -> Result<Client, StoreError> {
    use std::time::Duration;
    let mut config: postgres::Config = url.parse().map_err(pg)?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(UNACKNOWLEDGED_FOR);
    }
    let options = config.get_options().unwrap_or("").to_string();
    if !options.contains("statement_timeout") {
        let ms = STATEMENT_TIMEOUT.as_millis();
        config.options(format!("{options} -c statement_timeout={ms}").trim_start());
    }
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(3)
        // "relation ... already exists, skipping" at every start is news to
        // nobody: only warnings reach the log.
        .notice_callback(|notice| {
            if matches!(
                notice.parsed_severity(),
                Some(postgres::error::Severity::Warning) | None
            ) {
                log::warn!("postgresql: {}", notice.message());
            }
        });
    config.connect(NoTls).map_err(pg)
}

/// Name the writing instance on `client`'s session: the history rows it
/// writes take `owner` (the column's default reads the setting), and the
/// session holds `owner`'s advisory lock while it lives (not waited for:
/// no other session takes this key).
pub(super) fn own(client: &mut Client, owner: i64) -> Result<(), StoreError> {
    client
        .execute(
            "SELECT set_config('grantwheel.owner', $1, false), pg_try_advisory_lock($2)",
            &[&owner.to_string(), &owner],
        )
        .map(drop)
        .map_err(pg)
}

/// Drop `value` (which holds connections) on a thread of its own.
///
/// A `postgres` client closes its connection by blocking on its own
/// runtime, which panics on a thread that drives an async runtime; hosts
/// drop engines from async code all the time (a server shutting down), so
/// the store never closes a connection on the dropping thread.
pub(super) fn close_off_thread<T: Send + 'static>(value: T) {
    run_off_thread(move || drop(value));
}

/// Run `f` (which uses connections) on a thread of its own, and wait for
/// it: see [`close_off_thread`].
pub(super) fn run_off_thread(f: impl FnOnce() + Send + 'static) {
    let _ = std::thread::Builder::new()
        .name("grantwheel-pg-close".into())
        .spawn(f)
        .map(|t| t.join());
}
