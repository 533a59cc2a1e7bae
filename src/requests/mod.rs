//! Share and revoke requests shaped like the share API: request ids and
//! status, the share history, and the API's wire format ([`wire`]).
//!
//! [`Sharing`] wraps an [`Engine`]: every share or revoke that goes through
//! it, whether from the API's JSON, a direct call or (later) an automation
//! rule, gets a [`RequestId`], a status and a [`HistoryRecord`]. The engine's
//! events keep the records current (revoked, expired).
//!
//! # Ground rules
//!
//! - The layer's memory lock is never held across a call into the engine,
//!   so the engine's events (delivered inside its calls) can reach it.
//! - A request is in memory while it is in flight (being carried out, or
//!   queued), and its record is written when it finishes; the history
//!   itself lives in the store (see the `history` module's ground rules).
//!
//! # With a durable engine
//!
//! When the engine has a store ([`EngineBuilder::store`]), the store is the
//! layer's system of record: status, history pages, access at an instant,
//! idempotency keys and pruning are queries of its read side, so memory and
//! restart time do not grow with the history.
//!
//! - a share's finished record is written once, in the same batch as its
//!   grant, so a `Completed` status is as durable as the access it reports;
//!   a revoke's in the batch of the revoke;
//! - queued requests are written as `Processing` before their ids go out;
//! - rule changes are written before the call returns;
//! - a grant's end (revoked, replaced, expired) reaches its share's record
//!   in the store with the batch that ends the grant (expirations with the
//!   next batch; a record read before then shows a grant past its expiry
//!   as expired already);
//! - failed requests that no batch of theirs carries are written with the
//!   next batch, and read from memory until then;
//! - on restart only the rules are loaded; a request still `Processing`
//!   (the service stopped before carrying it out) becomes `Failed`, and
//!   grants that expired while the service was down are recorded as
//!   expired by the engine's first batch.
//!
//! [`EngineBuilder::store`]: crate::EngineBuilder::store

use self::history::{on_event, Backend, Memory};

mod api;
mod approval;
pub mod automation;
mod execute;
mod history;
mod queue;
mod request;
mod starts;
pub mod wire;

pub use approval::{ApprovalError, ApprovalPolicy, ApprovalRules, MAX_REASON_BYTES};
pub use execute::{ContextResolver, GrantorPolicy};
pub use history::{Cursor, HistoryPage, HistoryQuery};
pub use queue::Worker;
pub use request::{Command, Outcome, RevokeRequest, ShareRequest, Submission};

use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::engine::Engine;
use crate::engine::Restored;
use crate::error::{BuildError, InvalidArgument};
use crate::events::Event;

pub use crate::model::history::{
    Approval, BadFailureKind, BadRequestId, Decision, EndedBy, FailureKind, HistoryRecord,
    RequestId, RequestKind, RequestStatus, RuleId, Source, SourceKind, StatusKind, INTERRUPTED,
};

/// Configures a [`Sharing`]; see [`Sharing::builder`].
#[must_use = "a builder does nothing until `build()` is called"]
pub struct SharingBuilder {
    engine: Engine,
    config: Settings,
    resolver: Option<Box<dyn ContextResolver>>,
    grantor_policy: Option<Box<dyn GrantorPolicy>>,
    users: Option<Box<dyn automation::UserDirectory>>,
    approvals: Option<Box<dyn ApprovalPolicy>>,
}

impl fmt::Debug for SharingBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharingBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SharingBuilder {
    /// How long records of ended grants, failed requests and revokes are
    /// kept before [`Sharing::prune`] removes them (default 90 days).
    pub fn retention(mut self, retention: chrono::Duration) -> Self {
        self.config.retention = retention;
        self
    }

    /// Check each share's context with `resolver` (default: accept).
    pub fn resolver(mut self, resolver: impl ContextResolver) -> Self {
        self.resolver = Some(Box::new(resolver));
        self
    }

    /// Lift delegation limits for the grantors `policy` names (default:
    /// none privileged).
    pub fn grantor_policy(mut self, policy: impl GrantorPolicy) -> Self {
        self.grantor_policy = Some(Box::new(policy));
        self
    }

    /// Hold the shares `policy` picks for an approver (default: none
    /// held); one that nobody approves or denies within `timeout` fails.
    /// See [`Sharing::approve`].
    pub fn approvals(mut self, policy: impl ApprovalPolicy, timeout: chrono::Duration) -> Self {
        self.approvals = Some(Box::new(policy));
        self.config.approval_timeout = timeout;
        self
    }

    /// The most items one share or revoke batch of the API may hold
    /// (default [`wire::MAX_BATCH_ITEMS`]); a larger batch is refused
    /// whole, before any item is carried out.
    pub fn max_batch_items(mut self, max: usize) -> Self {
        self.config.max_batch_items = max;
        self
    }

    /// Refuse to publish rules that name users unknown to `users` (default:
    /// users are not checked).
    pub fn users(mut self, users: impl automation::UserDirectory) -> Self {
        self.users = Some(Box::new(users));
        self
    }

    /// Build the engine's request layer with these settings.
    ///
    /// # Errors
    ///
    /// An engine carries one request layer, so that every handle sees one
    /// history: [`BuildError::Invalid`] (field `engine`) when the engine (or a
    /// clone of it) already has a living one. Clone that [`Sharing`]
    /// instead, or get it with [`Sharing::new`].
    ///
    /// ```
    /// use grantwheel::requests::Sharing;
    /// use grantwheel::Engine;
    /// let engine = Engine::new();
    /// let first = Sharing::builder(engine.clone()).build().unwrap();
    /// assert_eq!(Sharing::builder(engine.clone()).build().unwrap_err().field(), Some("engine"));
    /// ```
    pub fn build(self) -> Result<Sharing, BuildError> {
        if self.config.max_batch_items == 0 {
            return Err(InvalidArgument::new(
                "max_batch_items",
                "must be at least 1: a batch of one item is the seed's call",
            )
            .into());
        }
        if self.config.approval_timeout <= chrono::Duration::zero() {
            return Err(InvalidArgument::new(
                "approval_timeout",
                format!(
                    "`{}` is not a positive duration",
                    self.config.approval_timeout
                ),
            )
            .into());
        }
        let engine = self.engine.clone();
        match engine.attach_layer(|restored| Sharing::layer(self, restored)) {
            Ok(inner) => Ok(Sharing { inner }),
            Err(_) => Err(InvalidArgument::new(
                "engine",
                "already carries a request layer; clone that `Sharing` (or get it with `Sharing::new`) instead of building another",
            )
            .into()),
        }
    }
}

/// Settings of the request layer, each set by its builder method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Settings {
    /// How long records of ended grants, failed requests and revokes are
    /// kept before [`Sharing::prune`] removes them (default 90 days).
    retention: chrono::Duration,
    /// How long a share may wait for an approver before it fails (default
    /// 7 days; see [`SharingBuilder::approvals`]).
    approval_timeout: chrono::Duration,
    /// The most items one share or revoke batch of the API may hold
    /// (default [`wire::MAX_BATCH_ITEMS`]).
    max_batch_items: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            retention: chrono::Duration::days(90),
            approval_timeout: chrono::Duration::days(7),
            max_batch_items: wire::MAX_BATCH_ITEMS,
        }
    }
}

struct SharingInner {
    engine: Engine,
    config: Settings,
    resolver: Option<Box<dyn ContextResolver>>,
    grantor_policy: Option<Box<dyn GrantorPolicy>>,
    users: Option<Box<dyn automation::UserDirectory>>,
    approvals: Option<Box<dyn ApprovalPolicy>>,
    rules: Mutex<automation::Rules>,
    /// Where records are written and read.
    backend: Backend,
    /// Requests in flight and records waiting for their batch.
    memory: Mutex<Memory>,
    queue: Mutex<std::collections::VecDeque<(RequestId, Submission)>>,
    queued: parking_lot::Condvar,
    /// This layer's subscription to the engine's events.
    subscription: crate::events::SubscriptionId,
}

/// The request layer: share and revoke requests with ids, status and
/// history, over an [`Engine`]. `Send + Sync`; clones share it.
///
/// ```
/// use grantwheel::requests::{RequestStatus, ShareRequest, Sharing};
/// use grantwheel::{Engine, EntityId, Level, UserId};
///
/// let sharing = Sharing::new(Engine::new());
/// let (user, lead) = (UserId::from_u128(1), EntityId::lead(869196));
/// let outcome = sharing.share(ShareRequest::new(user, lead, Level::Edit));
/// assert_eq!(outcome.status, RequestStatus::Completed);
/// assert!(sharing.engine().can_edit(&user, &lead));
/// assert_eq!(sharing.status(&outcome.request).unwrap(), Some(RequestStatus::Completed));
/// ```
#[derive(Clone)]
pub struct Sharing {
    inner: Arc<SharingInner>,
}

impl fmt::Debug for Sharing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sharing").finish_non_exhaustive()
    }
}

impl Sharing {
    /// The request layer of `engine`: the one it already carries, else a
    /// new one with the default settings.
    ///
    /// An engine carries at most one request layer, so the order of calls
    /// does not matter: a second `Sharing::new` over the same engine (or a
    /// clone) is a handle on the first, and a layer built after the engine
    /// has run a while still sees the grants that ended meanwhile (their
    /// records are finished as expired, or as ended outside the request
    /// layer). When the last handle is dropped, the history stays with the
    /// engine for the next layer.
    ///
    /// ```
    /// use grantwheel::requests::{ShareRequest, Sharing};
    /// use grantwheel::{Engine, EntityId, Level, UserId};
    /// let engine = Engine::new();
    /// let a = Sharing::new(engine.clone());
    /// let done = a.share(ShareRequest::new(UserId::from_u128(1), EntityId::lead(1), Level::Read));
    /// let b = Sharing::new(engine);
    /// assert!(b.status(&done.request).unwrap().is_some(), "one history");
    /// ```
    pub fn new(engine: Engine) -> Self {
        let builder = Sharing::builder(engine.clone());
        match engine.attach_layer(|restored| Sharing::layer(builder, restored)) {
            Ok(inner) | Err(inner) => Sharing { inner },
        }
    }

    /// Configure a request layer over `engine`: settings, a context
    /// resolver, a grantor policy, a user directory.
    ///
    /// ```
    /// use grantwheel::requests::{ContextResolver, RequestStatus, ShareRequest, Sharing};
    /// use grantwheel::{Context, Engine, EntityId, Level, UserId};
    ///
    /// struct NoTasks;
    /// impl ContextResolver for NoTasks {
    ///     fn check(&self, _: &UserId, _: &EntityId, c: &Context) -> Result<(), String> {
    ///         match c {
    ///             Context::Task(_) => Err("tasks cannot share".into()),
    ///             _ => Ok(()),
    ///         }
    ///     }
    /// }
    /// let sharing = Sharing::builder(Engine::new()).resolver(NoTasks).build().unwrap();
    /// let req = ShareRequest::new(UserId::from_u128(1), EntityId::lead(1), Level::Read)
    ///     .context(Context::Task(uuid::Uuid::nil()));
    /// assert!(matches!(sharing.share(req).status, RequestStatus::Failed { .. }));
    /// assert!(sharing.engine().is_empty());
    /// ```
    pub fn builder(engine: Engine) -> SharingBuilder {
        SharingBuilder {
            engine,
            config: Settings::default(),
            resolver: None,
            grantor_policy: None,
            users: None,
            approvals: None,
        }
    }

    /// A new request layer from its settings and the state the engine
    /// kept (loaded from the store, or left by an earlier layer).
    fn layer(b: SharingBuilder, restored: Option<Restored>) -> Arc<SharingInner> {
        let restored = restored.unwrap_or_default();
        let backend = match b.engine.store_reader() {
            Some(reader) => Backend::Store(reader),
            None => Backend::Local(restored.local.clone().unwrap_or_default()),
        };
        // Subscribed before restoring: a grant that ends from now on either
        // raises its event after its record is back, or is found gone by
        // the restore (an event raised before the layer exists finds no
        // layer to upgrade to, and the restore finds that grant gone).
        let inner = Arc::new_cyclic(|weak: &std::sync::Weak<SharingInner>| {
            let weak = weak.clone();
            let subscription = b.engine.subscribe(move |event: &Event| {
                if let Some(inner) = weak.upgrade() {
                    on_event(&inner, event);
                }
            });
            SharingInner {
                engine: b.engine,
                config: b.config,
                resolver: b.resolver,
                grantor_policy: b.grantor_policy,
                users: b.users,
                approvals: b.approvals,
                rules: Mutex::new(automation::Rules::default()),
                backend,
                memory: Mutex::new(Memory::default()),
                queue: Mutex::new(std::collections::VecDeque::new()),
                queued: parking_lot::Condvar::new(),
                subscription,
            }
        });
        inner.restore(restored);
        // From here on the rule set follows the engine's rule changes,
        // which it collected from its load on (so none is missed between).
        let weak = Arc::downgrade(&inner);
        inner.engine.follow_rules(Box::new(move |updates| {
            if let Some(inner) = weak.upgrade() {
                inner.rules.lock().apply(updates);
            }
        }));
        inner.engine.deliver_rules();
        inner
    }

    /// The engine underneath (for checks).
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }
}
