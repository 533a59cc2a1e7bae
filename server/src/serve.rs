//! Starting and stopping the service: the store opened, the engine and its
//! request layer built, keys loaded and reloaded, the listener bound; on
//! shutdown, new connections refused, calls in flight finished, the store
//! flushed, all within the grace period.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use grantwheel::requests::Sharing;
use grantwheel::store::{SqliteStore, Store, Synchronous};
use grantwheel::{Engine, Event};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::app::{App, AppInner};
use crate::config::{ServeArgs, Sync};
use crate::directory::{ContextCheck, Directory, Remote};
use crate::keys::{KeyStore, Keys, NewKey, KEY_RELOAD};
use crate::limiter::Limiter;
use crate::routes::router;
use crate::sessions::Sessions;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A setting was refused.
    #[error("`{field}`: {reason}")]
    Setting {
        /// The flag.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The store could not be opened or loaded.
    #[error("the database could not be opened: {0}")]
    Store(String),
    /// The server tables could not be used.
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    /// The address could not be bound, or a thread could not start.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn chrono_of(field: &'static str, d: Duration) -> Result<chrono::Duration, StartError> {
    chrono::Duration::from_std(d).map_err(|_| StartError::Setting {
        field,
        reason: "is too long".into(),
    })
}

/// Connect to PostgreSQL, trying again with a growing pause while the
/// server cannot be reached (an instance started before its database
/// waits for it, saying so, instead of exiting); a refusal that waiting
/// cannot mend (a newer schema) ends the start.
fn connect_postgres(url: &str) -> Result<grantwheel::store::PostgresStore, StartError> {
    let mut failures = 0u32;
    loop {
        match grantwheel::store::PostgresStore::connect(url) {
            Ok(store) => {
                if failures > 0 {
                    tracing::info!(tries = failures + 1, "connected to PostgreSQL");
                }
                return Ok(store);
            }
            Err(grantwheel::store::StoreError::Io(why)) => {
                failures += 1;
                let pause = crate::starting::pause_after(failures);
                // The error is the server's or the socket's, never the URL.
                tracing::warn!(
                    error = %why,
                    tries = failures,
                    retry_in_ms = pause.as_millis() as u64,
                    "PostgreSQL is not reachable; not ready until it is, trying again"
                );
                std::thread::sleep(pause);
            }
            Err(other) => return Err(StartError::Store(other.to_string())),
        }
    }
}

/// The flag that sets an engine setting.
fn flag_of(field: &'static str) -> &'static str {
    match field {
        "default_duration" => "--default-duration",
        "max_duration" => "--max-duration",
        "tick" => "--tick",
        "warn_before" => "--warn-before",
        "max_staleness" => "--max-staleness",
        "feed_poll" => "--feed-poll",
        "max_batch_items" => "--max-batch-items",
        other => other,
    }
}

/// The process's metrics recorder (one per process, shared by every
/// server in it).
fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("grantwheel_http_request_duration_seconds".into()),
                    &[
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 0.5, 1.0, 2.5,
                    ],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // A recorder installed earlier (by a host) keeps the metrics.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// A running service's parts, before it serves.
pub struct Server {
    listener: tokio::net::TcpListener,
    /// Present when the service serves HTTPS itself.
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: App,
    worker: grantwheel::requests::Worker,
    driver: grantwheel::Driver,
    reload_stop: mpsc::Sender<()>,
    grace: Duration,
    call_timeout: Duration,
    /// The key made on this first start, to show once.
    first_key: Option<NewKey>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Open the database, build the engine and bind the address; nothing
    /// is served until [`run`](Self::run).
    ///
    /// # Errors
    ///
    /// [`StartError`] naming what failed.
    pub async fn bind(args: ServeArgs) -> Result<Server, StartError> {
        Server::bind_inner(args, None).await
    }

    /// As [`bind`](Server::bind), with a store the host made instead of
    /// the SQLite store at `args.db` (which still keeps the keys and what
    /// events taught): another backend, or a store wrapped to fail on
    /// purpose in tests.
    ///
    /// # Errors
    ///
    /// [`StartError`] naming what failed.
    pub async fn bind_with_store(
        args: ServeArgs,
        store: Box<dyn Store>,
    ) -> Result<Server, StartError> {
        Server::bind_inner(args, Some(store)).await
    }

    async fn bind_inner(
        args: ServeArgs,
        store: Option<Box<dyn Store>>,
    ) -> Result<Server, StartError> {
        let metrics = recorder();
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::acceptor(cert, key)?),
            _ => None,
        };
        if tls.is_none() {
            crate::tls::check_plain(args.listen, args.behind_tls_proxy)?;
            if args.behind_tls_proxy {
                tracing::warn!(listen = %args.listen, "plain HTTP: a proxy in front terminates TLS (--behind-tls-proxy)");
            }
        }
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        // Until the store is open the address answers too (health says
        // "starting", the rest 503), on a second handle of the socket.
        let std_listener = listener.into_std()?;
        let second = tokio::net::TcpListener::from_std(std_listener.try_clone()?)?;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let (opened_tx, opened_rx) = tokio::sync::oneshot::channel::<()>();
        let starting = tokio::spawn(crate::starting::serve(second, tls.clone(), async move {
            let _ = opened_rx.await;
        }));
        let setup = args.clone();
        let built = tokio::task::spawn_blocking(move || Server::open(&setup, store)).await;
        let _ = opened_tx.send(());
        if let Ok(Err(e)) = starting.await {
            tracing::warn!(error = %e, "the starting answers ended with an error");
        }
        let built = built.map_err(|e| StartError::Store(e.to_string()))??;
        let (sharing, keys, keystore, directory, first_key) = built;
        let (reload_stop, stop_rx) = mpsc::channel::<()>();
        let reload_keys = keys.clone();
        std::thread::Builder::new()
            .name("grantwheel-keys".into())
            .spawn(move || loop {
                match stop_rx.recv_timeout(KEY_RELOAD) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if let Err(e) = reload_keys.reload(&keystore) {
                            tracing::warn!(error = %e, "the keys could not be reloaded; the keys held stay");
                        }
                    }
                    _ => return,
                }
            })?;
        let worker = sharing.start_worker()?;
        let driver = sharing.engine().start_driver(Duration::from_millis(500))?;
        let app = App {
            inner: Arc::new(AppInner {
                sharing,
                keys,
                limiter: Limiter::new(args.rate_limit, args.rate_window),
                batch_limiter: Limiter::new(args.batch_rate_limit, args.rate_window),
                limit_checks: args.limit_checks,
                directory,
                sessions: Sessions::new(args.session),
                secure_cookies: tls.is_some() || args.behind_tls_proxy,
                metrics,
                max_body: args.max_body,
                default_minutes: i64::try_from(args.default_duration.as_secs() / 60)
                    .unwrap_or(i64::MAX),
            }),
        };
        Ok(Server {
            listener,
            tls,
            app,
            worker,
            driver,
            reload_stop,
            grace: args.shutdown_grace,
            call_timeout: args.call_timeout,
            first_key,
        })
    }

    #[expect(
        clippy::type_complexity,
        reason = "the parts of a start, taken apart at once"
    )]
    fn open(
        args: &ServeArgs,
        store: Option<Box<dyn Store>>,
    ) -> Result<
        (
            Sharing,
            Keys,
            KeyStore,
            Option<Arc<Directory>>,
            Option<NewKey>,
        ),
        StartError,
    > {
        let keystore = KeyStore::open(&args.db)?;
        let first_key = if !args.no_first_key && !keystore.any_live()? {
            Some(keystore.add("first key")?)
        } else {
            None
        };
        let keys = Keys::load(&keystore)?;
        let sync = match args.sync {
            Sync::Full => Synchronous::Full,
            Sync::Normal => Synchronous::Normal,
        };
        let store: Box<dyn Store> = match (store, &args.postgres) {
            (Some(store), _) => store,
            // On the blocking pool (as all of `open` is): the synchronous
            // client runs a runtime of its own.
            (None, Some(url)) => Box::new(connect_postgres(url)?),
            (None, None) => Box::new(
                SqliteStore::open_with(&args.db, sync)
                    .map_err(|e| StartError::Store(e.to_string()))?,
            ),
        };
        let mut engine = Engine::builder()
            .store(store)
            .default_duration(chrono_of("--default-duration", args.default_duration)?)
            .max_duration(
                chrono_of("--max-duration", args.max_duration)?,
                args.over_max.into(),
            )
            .repeat_share(args.repeat_share.into())
            .tick(chrono_of("--tick", args.tick)?)
            .max_staleness(chrono_of("--max-staleness", args.max_staleness)?)
            .feed_poll(chrono_of("--feed-poll", args.feed_poll)?)
            .expiry_events(args.expiry_events.into())
            .confirm_starts(args.revalidate_at_start);
        let warnings = args
            .warn_before
            .iter()
            .map(|d| chrono_of("--warn-before", *d))
            .collect::<Result<Vec<_>, _>>()?;
        engine = engine.warn_before(warnings);
        let engine = engine.build().map_err(|e| match e {
            // A setting the engine refused: named by its flag, not blamed
            // on the database.
            grantwheel::BuildError::Invalid(a) => StartError::Setting {
                field: flag_of(a.field()),
                reason: a.reason().to_string(),
            },
            other => StartError::Store(other.to_string()),
        })?;
        engine.subscribe(|event: &Event| match event {
            Event::Expired(_) => metrics::counter!("grantwheel_expirations_total").increment(1),
            Event::Revoked { .. } => metrics::counter!("grantwheel_revocations_total").increment(1),
            Event::ExpiringSoon { grant, .. } => {
                metrics::counter!("grantwheel_expiry_warnings_total").increment(1);
                tracing::info!(user = %grant.id.user, entity = %grant.id.entity, ends = %grant.expires_at, "grant ends soon");
            }
            _ => {}
        });
        let mut builder = Sharing::builder(engine)
            .retention(chrono_of("--retention", args.retention)?)
            .max_batch_items(args.max_batch_items);
        if let Some(rules) = args.approval_rules() {
            tracing::info!(?rules, "shares this policy picks wait for an approver");
            builder = builder.approvals(
                rules,
                chrono_of("--approval-timeout", args.approval_timeout)?,
            );
        }
        let mut directory = None;
        if let Some(url) = &args.context_resolver {
            builder = builder.resolver(ContextCheck::Remote(Remote::new(
                url.clone(),
                args.resolver_timeout,
                args.resolver_cache,
            )));
        } else if args.no_context_check {
            tracing::warn!("contexts are taken on trust (--no-context-check): a share's activity owner and an opportunity's owner are not checked");
        } else {
            let d = Arc::new(Directory::open(&args.db)?);
            builder = builder.resolver(ContextCheck::Directory(d.clone()));
            directory = Some(d);
        }
        let sharing = builder.build().map_err(|e| match e {
            grantwheel::BuildError::Invalid(a) => StartError::Setting {
                field: flag_of(a.field()),
                reason: a.reason().to_string(),
            },
            other => StartError::Store(other.to_string()),
        })?;
        Ok((sharing, keys, keystore, directory, first_key))
    }

    /// The address it listens on.
    ///
    /// # Errors
    ///
    /// The operating system's error.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Whether it serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The key made on a first start with no keys (shown once).
    pub fn first_key(&self) -> Option<&NewKey> {
        self.first_key.as_ref()
    }

    /// The request layer it serves.
    pub fn sharing(&self) -> &Sharing {
        self.app.sharing()
    }

    /// Serve until `shutdown` completes; then stop taking connections,
    /// finish the calls in flight and flush the store, within the grace
    /// period.
    ///
    /// # Errors
    ///
    /// The operating system's error when serving fails.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let Server {
            listener,
            tls,
            app,
            worker,
            driver,
            reload_stop,
            grace,
            call_timeout,
            ..
        } = self;
        let routes = router(app.clone())
            .layer(axum::middleware::from_fn_with_state(
                crate::observe::CallLimits {
                    max_body: app.inner.max_body,
                    deadline: call_timeout,
                },
                crate::observe::call,
            ))
            .layer(tower_http::catch_panic::CatchPanicLayer::new());
        // Over a shared store: each change of the feed's state, logged once.
        let watching = app.sharing().engine().feed_status().map(|_| {
            let engine = app.sharing().engine().clone();
            tokio::spawn(async move {
                let mut watch = crate::watch::FeedWatch::default();
                let mut every = tokio::time::interval(crate::watch::EVERY);
                loop {
                    every.tick().await;
                    if let Some(status) = engine.feed_status() {
                        crate::watch::log(watch.look(&status));
                    }
                }
            })
        });
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections; finishing calls in flight");
            let _ = stopping_tx.send(());
        };
        let bounded = async {
            let _ = stopping_rx.await;
            tokio::time::sleep(grace).await;
        };
        let serving = async move {
            match tls {
                Some(acceptor) => {
                    let listener = crate::tls::TlsListener::new(listener, acceptor)?;
                    axum::serve(listener, routes)
                        .with_graceful_shutdown(signal)
                        .await
                }
                None => {
                    axum::serve(listener, routes)
                        .with_graceful_shutdown(signal)
                        .await
                }
            }
        };
        tokio::select! {
            served = serving => served?,
            () = bounded => tracing::warn!(grace_ms = grace.as_millis() as u64, "calls still in flight at the end of the grace period were abandoned"),
        }
        if let Some(w) = watching {
            w.abort();
        }
        let _ = reload_stop.send(());
        tokio::task::spawn_blocking(move || {
            worker.stop();
            driver.stop();
            match app.sharing().engine().flush() {
                Ok(()) => tracing::info!("store flushed; stopped"),
                Err(e) => tracing::error!(error = %e, "the store could not be flushed at shutdown"),
            }
            // The app (and with it, most often, the last handle on the
            // engine and its store) is dropped here, off the async threads:
            // a store's drop may do blocking I/O.
            drop(app);
        })
        .await
        .map_err(|e| StartError::Store(e.to_string()))?;
        Ok(())
    }
}
