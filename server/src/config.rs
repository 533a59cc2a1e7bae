//! The service's settings: command-line flags, each also readable from an
//! environment variable (`GRANTWHEEL_...`), so a deployment can set them
//! either way.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use grantwheel::{OverMax, RepeatShare};

/// A duration as people write it: `90d`, `30m`, `1h 30m`, `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration ({e}); write it like `90d`, `12h` or `30m`"))
}

/// What a repeated share of a live (user, record, context) does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Repeat {
    /// The new share replaces the old grant.
    Replace,
    /// The old grant is kept, raised to the later end and higher level.
    KeepLater,
    /// The new share fails (`AlreadyShared`).
    Reject,
}

impl From<Repeat> for RepeatShare {
    fn from(r: Repeat) -> Self {
        match r {
            Repeat::Replace => RepeatShare::Replace,
            Repeat::KeepLater => RepeatShare::KeepLater,
            Repeat::Reject => RepeatShare::Reject,
        }
    }
}

/// What a duration over the maximum does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Over {
    /// The item is refused (400, naming `DurationInMinutes`).
    Reject,
    /// The share is shortened to the maximum.
    Clamp,
}

impl From<Over> for OverMax {
    fn from(o: Over) -> Self {
        match o {
            Over::Reject => OverMax::Reject,
            Over::Clamp => OverMax::Clamp,
        }
    }
}

/// Which instances on one PostgreSQL database raise expiry events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExpiryEvents {
    /// Every instance counts and logs each expiry.
    Everywhere,
    /// One instance at a time (the holder of a lease in the database).
    Leased,
}

impl From<ExpiryEvents> for grantwheel::ExpiryEvents {
    fn from(e: ExpiryEvents) -> Self {
        match e {
            ExpiryEvents::Everywhere => grantwheel::ExpiryEvents::Everywhere,
            ExpiryEvents::Leased => grantwheel::ExpiryEvents::Leased,
        }
    }
}

/// A source whose shares wait for an approver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ApproveSource {
    /// The share API.
    Api,
    /// Automation rules.
    Automation,
}

/// A record kind whose shares wait for an approver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ApproveRecord {
    /// Leads.
    Lead,
    /// Opportunities.
    Opportunity,
}

impl ServeArgs {
    /// The approval policy the flags ask for, if any.
    pub fn approval_rules(&self) -> Option<grantwheel::requests::ApprovalRules> {
        use grantwheel::requests::{ApprovalRules, SourceKind};
        use grantwheel::EntityKind;
        let rules = ApprovalRules {
            edit: self.approve_edit,
            longer_than: self
                .approve_longer_than
                .map(|d| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)),
            sources: self
                .approve_sources
                .iter()
                .map(|s| match s {
                    ApproveSource::Api => SourceKind::Api,
                    ApproveSource::Automation => SourceKind::Automation,
                })
                .collect(),
            kinds: self
                .approve_records
                .iter()
                .map(|k| match k {
                    ApproveRecord::Lead => EntityKind::LEAD,
                    ApproveRecord::Opportunity => EntityKind::OPPORTUNITY,
                })
                .collect(),
        };
        (rules != ApprovalRules::default()).then_some(rules)
    }
}

/// How SQLite syncs commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Sync {
    /// Every commit reaches the disk before the call is answered.
    Full,
    /// Commits reach the disk at checkpoints: safe against a crash of the
    /// process, not against a power cut.
    Normal,
}

/// `grantwheel-server serve`: the settings.
#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// The SQLite database file (created if missing): the grants and
    /// history, unless `--postgres` names a database for them, and the
    /// keys and what the events endpoint learnt.
    #[arg(long, env = "GRANTWHEEL_DB", default_value = "grantwheel.db")]
    pub db: PathBuf,

    /// Keep the grants, history and rules in this PostgreSQL database (a
    /// `postgresql://` URL) instead of the SQLite file: several instances
    /// can share it. Never logged (it may hold a password).
    #[arg(long, env = "GRANTWHEEL_POSTGRES", hide_env_values = true)]
    pub postgres: Option<String>,

    /// With `--postgres`: how long this instance may go without catching
    /// up with the other instances' writes before its checks say no and
    /// `/ready` fails.
    #[arg(long, env = "GRANTWHEEL_MAX_STALENESS", default_value = "5s", value_parser = parse_duration)]
    pub max_staleness: Duration,

    /// With `--postgres`: how often the instance reads the change feed
    /// when no wake-up came (a lost wake-up costs at most this).
    #[arg(long, env = "GRANTWHEEL_FEED_POLL", default_value = "250ms", value_parser = parse_duration)]
    pub feed_poll: Duration,

    /// With `--postgres`: which instances raise expiry and expiring-soon
    /// events (the expiry counters and the "grant ends soon" log lines).
    #[arg(long, env = "GRANTWHEEL_EXPIRY_EVENTS", value_enum, default_value_t = ExpiryEvents::Everywhere)]
    pub expiry_events: ExpiryEvents,

    /// Where to listen.
    #[arg(long, env = "GRANTWHEEL_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// The duration of a share that names none (the seed's default).
    #[arg(long, env = "GRANTWHEEL_DEFAULT_DURATION", default_value = "90d", value_parser = parse_duration)]
    pub default_duration: Duration,

    /// The longest share allowed.
    #[arg(long, env = "GRANTWHEEL_MAX_DURATION", default_value = "3660d", value_parser = parse_duration)]
    pub max_duration: Duration,

    /// What a duration over the maximum does.
    #[arg(long, env = "GRANTWHEEL_OVER_MAX", value_enum, default_value_t = Over::Reject)]
    pub over_max: Over,

    /// What a repeated share of a live (user, record, context) does.
    #[arg(long, env = "GRANTWHEEL_REPEAT_SHARE", value_enum, default_value_t = Repeat::Replace)]
    pub repeat_share: Repeat,

    /// The timing wheel's tick: how soon after its end a grant is
    /// reclaimed and counted as expired (checks are exact whatever the tick).
    #[arg(long, env = "GRANTWHEEL_TICK", default_value = "1s", value_parser = parse_duration)]
    pub tick: Duration,

    /// Warn this long before each grant ends (logged, counted); repeat the
    /// flag or separate with commas.
    #[arg(long, env = "GRANTWHEEL_WARN_BEFORE", value_delimiter = ',', value_parser = parse_duration)]
    pub warn_before: Vec<Duration>,

    /// How long history records of ended grants are kept.
    #[arg(long, env = "GRANTWHEEL_RETENTION", default_value = "90d", value_parser = parse_duration)]
    pub retention: Duration,

    /// How SQLite syncs commits.
    #[arg(long, env = "GRANTWHEEL_SYNC", value_enum, default_value_t = Sync::Full)]
    pub sync: Sync,

    /// Calls admitted per access key in each window (0: no limit).
    #[arg(long, env = "GRANTWHEEL_RATE_LIMIT", default_value_t = 25)]
    pub rate_limit: usize,

    /// The window of the rate limit.
    #[arg(long, env = "GRANTWHEEL_RATE_WINDOW", default_value = "5s", value_parser = parse_duration)]
    pub rate_window: Duration,

    /// Every call is answered within this: past it, 503 `Unavailable` (the
    /// work it started may still finish; a share's status tells).
    #[arg(long, env = "GRANTWHEEL_CALL_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub call_timeout: Duration,

    /// Batch calls (a share or revoke of more than one item) admitted per
    /// access key in each window, counted apart from other calls (0: no
    /// limit).
    #[arg(long, env = "GRANTWHEEL_BATCH_RATE_LIMIT", default_value_t = 5)]
    pub batch_rate_limit: usize,

    /// The most items one share or revoke call may hold (a larger batch is
    /// refused whole with 400, before any item is carried out).
    #[arg(long, env = "GRANTWHEEL_MAX_BATCH_ITEMS", default_value_t = 100)]
    pub max_batch_items: usize,

    /// Count check calls against the rate limit too (by default checks,
    /// the host's hot path, are not limited).
    #[arg(long, env = "GRANTWHEEL_LIMIT_CHECKS")]
    pub limit_checks: bool,

    /// The largest request body taken, in bytes.
    #[arg(long, env = "GRANTWHEEL_MAX_BODY", default_value_t = 1024 * 1024)]
    pub max_body: usize,

    /// Ask the CRM at this URL whether a share's context holds (see the
    /// README for the contract), instead of checking against what the
    /// events endpoint learnt.
    #[arg(long, env = "GRANTWHEEL_CONTEXT_RESOLVER")]
    pub context_resolver: Option<String>,

    /// How long the context resolver may take.
    #[arg(long, env = "GRANTWHEEL_RESOLVER_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub resolver_timeout: Duration,

    /// How long the resolver's "allowed" answers are kept.
    #[arg(long, env = "GRANTWHEEL_RESOLVER_CACHE", default_value = "60s", value_parser = parse_duration)]
    pub resolver_cache: Duration,

    /// Take every share's context on trust (no check that the activity's
    /// owner is the user, or that an opportunity's owner is not). Said in
    /// the log at start.
    #[arg(
        long,
        env = "GRANTWHEEL_NO_CONTEXT_CHECK",
        conflicts_with = "context_resolver"
    )]
    pub no_context_check: bool,

    /// Check a share made to start later again when its start comes (the
    /// context, and the grantor's own access for a delegated share): it
    /// gives no access until checked, and one refused then ends with the
    /// reason in its history record.
    #[arg(long, env = "GRANTWHEEL_REVALIDATE_AT_START")]
    pub revalidate_at_start: bool,

    /// Hold every share of edit access for an approver (see the
    /// `/Approvals` endpoints).
    #[arg(long, env = "GRANTWHEEL_APPROVE_EDIT")]
    pub approve_edit: bool,

    /// Hold every share longer than this for an approver.
    #[arg(long, env = "GRANTWHEEL_APPROVE_LONGER_THAN", value_parser = parse_duration)]
    pub approve_longer_than: Option<Duration>,

    /// Hold every share from these sources for an approver; repeat the
    /// flag or separate with commas.
    #[arg(
        long,
        env = "GRANTWHEEL_APPROVE_SOURCES",
        value_enum,
        value_delimiter = ','
    )]
    pub approve_sources: Vec<ApproveSource>,

    /// Hold every share of these record kinds for an approver; repeat the
    /// flag or separate with commas.
    #[arg(
        long,
        env = "GRANTWHEEL_APPROVE_RECORDS",
        value_enum,
        value_delimiter = ','
    )]
    pub approve_records: Vec<ApproveRecord>,

    /// How long a held share waits for an approver before it fails.
    #[arg(long, env = "GRANTWHEEL_APPROVAL_TIMEOUT", default_value = "7d", value_parser = parse_duration)]
    pub approval_timeout: Duration,

    /// How long a page session lasts after login.
    #[arg(long, env = "GRANTWHEEL_SESSION", default_value = "12h", value_parser = parse_duration)]
    pub session: Duration,

    /// How long shutdown may take before in-flight calls are abandoned.
    #[arg(long, env = "GRANTWHEEL_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Log as JSON lines instead of text.
    #[arg(long, env = "GRANTWHEEL_LOG_JSON")]
    pub log_json: bool,

    /// Serve HTTPS with the certificate chain in this PEM file (with
    /// `--tls-key`).
    #[arg(long, env = "GRANTWHEEL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of `--tls-cert`, a PEM file.
    #[arg(long, env = "GRANTWHEEL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Serve plain HTTP on an address that is not loopback because a proxy
    /// in front terminates TLS (without it, and without `--tls-cert`, such
    /// an address is refused). The page's session cookie is still marked
    /// `Secure`.
    #[arg(long, env = "GRANTWHEEL_BEHIND_TLS_PROXY", conflicts_with = "tls_cert")]
    pub behind_tls_proxy: bool,

    /// Do not create and print a key on a first start with none.
    #[arg(long, env = "GRANTWHEEL_NO_FIRST_KEY")]
    pub no_first_key: bool,
}

impl ServeArgs {
    /// The defaults, with this database file and listening address (for
    /// tests and embedding).
    pub fn new(db: PathBuf, listen: SocketAddr) -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Just {
            #[command(flatten)]
            args: ServeArgs,
        }
        let mut args = Just::parse_from(["grantwheel-server"]).args;
        args.db = db;
        args.listen = listen;
        args
    }
}
