//! Broker: a real-time zero-code API server.
//!
//! Users sign up and log in, clients insert JSON events, and every
//! subscriber of the Server-Sent-Events stream sees each event when it is
//! published, at once or at its future timestamp. The log is immutable; the
//! latest event of each name is the current state.
//!
//! [`Broker::open`] builds the whole server from a [`Config`];
//! [`Broker::router`] is an axum `Router` another application can mount;
//! [`serve()`] runs it on a listener until a shutdown future resolves.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod access;
pub mod auth;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod domain;
pub mod feed;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod policy;
pub mod presence;
pub mod retention;
pub mod scheduler;
pub mod schemas;
pub mod serve;
pub mod store;
pub mod throttle;
pub mod tls;
pub mod transfer;
pub mod webhooks;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use clock::Clock;
pub use config::{Config, Secret};

use auth::{Keys, Passwords};
use feed::Feed;
use http::App;
use hub::Hub;
use scheduler::Wake;
use throttle::{Failures, Rate};

/// Why Broker could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// A file or socket operation failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A running Broker: its state, background tasks and shutdown token.
pub struct Broker {
    app: Arc<App>,
    router: Router,
    shutdown: CancellationToken,
    scheduler: JoinHandle<()>,
    deliveries: JoinHandle<()>,
    tls: Option<Arc<tls::Tls>>,
    /// Where plain HTTP is redirected to HTTPS from.
    redirect: Option<std::net::SocketAddr>,
}

impl Broker {
    /// Opens the database and starts the scheduler and heartbeat.
    pub async fn open(config: Config) -> Result<Self, Error> {
        Self::open_with_clock(config, Clock::System).await
    }

    /// Like [`Broker::open`], with another time source (tests use a manual one).
    ///
    /// On PostgreSQL the node starts even if the database is down: requests
    /// that need it answer 503 until it is back (and, without `--secret`,
    /// until the shared secret could be read from it).
    pub async fn open_with_clock(config: Config, clock: Clock) -> Result<Self, Error> {
        let origins = config
            .origin
            .iter()
            .map(|o| o.parse().map_err(|_| Error::Config(format!("invalid origin {o:?}"))))
            .collect::<Result<Vec<_>, _>>()?;
        // Checked before anything starts: an unusable certificate stops here.
        let tls = tls_settings(&config)?.map(Arc::new);
        let metrics = Arc::new(metrics::Metrics::default());
        let store = store::open(config.store_location(), metrics.clone())?;
        check_permissions(&config)?;
        let passwords = Passwords::new().await.map_err(|e| Error::Config(e.to_string()))?;
        let shutdown = CancellationToken::new();
        let max_lag = usize::try_from(config.max_lag).unwrap_or(usize::MAX);
        let hub = Arc::new(Hub::new(max_lag, stream_limit(config.max_connections), metrics));
        hub.spawn_heartbeat(config.heartbeat_interval(), shutdown.clone());
        let follower = cluster::Follower::of(store.as_ref(), &shutdown);
        let schedule_poll = follower.as_ref().map(cluster::Follower::log_poll);
        let shared = follower.is_some();
        let feed = Arc::new(Feed::new(store.clone(), hub.clone(), max_lag, shared));
        match hub.access.refresh(store.as_ref()).await {
            Ok(_) => {}
            // Retried by the poller; until then requests answer 503.
            Err(store::StoreError::Unavailable(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let presence = presence::Presence::new(
            hub.clone(),
            clock.clone(),
            Duration::from_millis(config.presence_grace_ms),
            follower.is_some().then(|| (store.clone(), feed.node())),
        );
        if let Some(follower) = follower {
            let (store, hub, feed) = (store.clone(), hub.clone(), feed.clone());
            follower.spawn(store, hub, feed, presence.clone(), shutdown.clone());
        }
        let wake = Arc::new(Wake::default());
        let scheduler = scheduler::spawn(
            store.clone(),
            feed.clone(),
            clock.clone(),
            wake.clone(),
            schedule_poll,
            shutdown.clone(),
        );
        retention::Sweeper::new(
            store.clone(),
            feed.node().to_string(),
            hub.access.clone(),
            hub.metrics.clone(),
            clock.clone(),
            config.retention,
            i64::from(config.idempotency_window),
        )
        .spawn(shutdown.clone());
        let webhooks = webhooks::Settings {
            allow_http: config.webhook_allow_http,
            allow_private: config.webhook_allow_private,
            retry_for: Duration::from_secs(config.webhook_retry_for),
        };
        let holder = feed.node().to_string();
        let webhooks_changed = Arc::new(tokio::sync::Notify::new());
        let deliveries = webhooks::Deliveries::new(
            store.clone(),
            hub.clone(),
            clock.clone(),
            holder,
            webhooks.clone(),
            webhooks_changed.clone(),
        )
        .spawn(shutdown.clone());
        let app = Arc::new(App {
            store,
            presence,
            hub,
            feed,
            wake,
            keys: OnceLock::new(),
            passwords,
            clock,
            private_stream: config.private_stream,
            retry_ms: config.retry,
            max_depth: usize::try_from(config.max_depth).unwrap_or(usize::MAX),
            write_stall: Duration::from_secs(config.write_stall),
            stalls: serve::stalls::Stalls::spawn(
                Duration::from_secs(config.write_stall),
                shutdown.clone(),
            ),
            origins,
            logins: http::Logins {
                names: Failures::new(config.login_attempts, config.login_window),
                addresses: Failures::new(config.login_attempts_per_address, config.login_window),
                trusted: config.trusted_proxy.clone(),
            },
            inserts: Rate::new(config.insert_rate),
            signals: Rate::new(config.signal_rate),
            signups: Rate::per(config.signup_rate, 3600),
            min_password_length: usize::from(config.min_password_length),
            idempotency_window: i64::from(config.idempotency_window),
            webhooks,
            webhooks_changed,
            max_webhooks: config.max_webhooks,
            hsts: Some(config.hsts_max_age)
                .filter(|age| *age > 0)
                .and_then(|age| axum::http::HeaderValue::from_str(&format!("max-age={age}")).ok()),
        });
        match &config.secret {
            Some(secret) => set_keys(&app, secret, config.expiry)?,
            None => keep_secret(&app, config.expiry, shutdown.clone()).await?,
        }
        if let Some(tls) = &tls {
            tls.clone().spawn(app.store.clone(), app.clock.clone(), shutdown.clone());
        }
        if shared {
            spawn_login_sharing(app.clone(), shutdown.clone());
        }
        let router = http::router(app.clone(), config.max_body);
        let redirect =
            config.http_redirect_port.map(|port| std::net::SocketAddr::new(config.host, port));
        Ok(Self { app, router, shutdown, scheduler, deliveries, tls, redirect })
    }

    /// The API as an axum `Router`, ready to serve or to mount.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// The token that stops the scheduler, the heartbeat and every open
    /// stream when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The fan-out hub (for example to count open streams).
    pub fn hub(&self) -> Arc<Hub> {
        self.app.hub.clone()
    }

    /// Serves the API on `listener` until `signal` resolves, then stops
    /// accepting, closes every stream, lets in-flight requests finish (at
    /// most a few seconds) and stops the background tasks. Event streams are
    /// written straight to their sockets; everything else goes through
    /// hyper and [`Broker::router`].
    pub async fn serve(
        self,
        listener: TcpListener,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let token = self.shutdown.clone();
        if let Some(from) = self.redirect {
            let https_port = listener.local_addr()?.port();
            let plain = TcpListener::bind(from).await?;
            tracing::info!("redirecting http://{from} to HTTPS");
            let shutdown = token.clone().cancelled_owned();
            let redirects = tls::redirect_to_https(https_port, self.app.store.clone());
            tokio::spawn(async move {
                if let Err(e) = axum::serve(plain, redirects).with_graceful_shutdown(shutdown).await
                {
                    tracing::error!(error = %e, "the redirect listener failed");
                }
            });
        }
        tokio::spawn({
            let token = token.clone();
            async move {
                tokio::select! {
                    () = signal => token.cancel(),
                    () = token.cancelled() => {}
                }
            }
        });
        // Open streams get a runtime of their own (it also accepts), so
        // that fanning an event out to thousands of them never queues an
        // insert or a login behind it: the two sets of threads share the
        // cores through the kernel's scheduler instead of one run queue.
        let streams = tokio::runtime::Builder::new_multi_thread()
            .thread_name("broker-stream")
            .enable_all()
            .build()?;
        let api = tokio::runtime::Handle::current();
        let accepting = streams.spawn(serve::run(
            listener,
            api,
            self.app.clone(),
            self.router.clone(),
            self.tls.clone(),
            token.clone(),
        ));
        if let Err(e) = accepting.await {
            tracing::error!(error = %e, "the accept loop failed");
        }
        streams.shutdown_background();
        token.cancel();
        if let Err(e) = self.scheduler.await {
            tracing::error!(error = %e, "the scheduler task failed");
        }
        if let Err(e) = self.deliveries.await {
            tracing::error!(error = %e, "the webhook deliveries failed");
        }
        Ok(())
    }
}

/// Binds `config.host:config.port`, then serves until `signal` resolves.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    signal: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    Broker::open(config).await?.serve(listener, signal).await
}

/// HTTPS as configured: certificate files (checked now) or ACME.
fn tls_settings(config: &Config) -> Result<Option<tls::Tls>, Error> {
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            Some(tls::Tls::load(cert, key, &config.tls_name).map_err(Error::Config)?)
        }
        _ if !config.acme_domain.is_empty() => {
            let challenge = config.acme_challenge;
            if challenge == tls::acme::Challenge::Http01 && config.http_redirect_port.is_none() {
                let why = "--acme-challenge http-01 needs --http-redirect-port";
                return Err(Error::Config(why.into()));
            }
            for domain in &config.acme_domain {
                if rustls_pki_types::DnsName::try_from(domain.as_str()).is_err() {
                    return Err(Error::Config(format!(
                        "--acme-domain {domain:?} is not a DNS name"
                    )));
                }
            }
            Some(tls::Tls::acme(tls::acme::Settings {
                domains: config.acme_domain.clone(),
                email: config.acme_email.clone(),
                directory: config.acme_directory.clone(),
                ca: config.acme_ca.clone(),
                challenge,
            }))
        }
        _ => None,
    };
    if tls.is_none() && config.http_redirect_port.is_some() {
        let why = "--http-redirect-port needs HTTPS: --tls-cert or --acme-domain";
        return Err(Error::Config(why.into()));
    }
    Ok(tls)
}

/// File descriptors kept for the database, the listener and ordinary
/// requests when the stream limit is derived from the open-file limit.
const FD_RESERVE: u64 = 96;

/// The most streams to admit: as configured, or what the open-file limit
/// (raised to its hard maximum first) leaves after [`FD_RESERVE`].
/// Pools failed logins with the other nodes once a second (see
/// [`throttle::Failures::exchange`]).
fn spawn_login_sharing(app: Arc<App>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        let mut failing = false;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = shutdown.cancelled() => return,
            }
            let logins = &app.logins;
            let names = logins.names.exchange(app.store.as_ref(), &app.clock).await;
            let addresses = logins.addresses.exchange(app.store.as_ref(), &app.clock).await;
            match names.and(addresses) {
                Ok(()) => failing = false,
                Err(e) if !std::mem::replace(&mut failing, true) => {
                    tracing::warn!(error = %e, "cannot share failed logins with the other nodes; retrying");
                }
                Err(_) => {}
            }
        }
    });
}

/// Warns of (or, with `--strict-permissions`, refuses) a SQLite data
/// directory whose files other local users can read.
fn check_permissions(config: &Config) -> Result<(), Error> {
    if config.database_url.is_some() {
        return Ok(());
    }
    let loose = store::loose_permissions(&config.save_path);
    if loose.is_empty() {
        return Ok(());
    }
    let list: Vec<String> =
        loose.iter().map(|(path, mode)| format!("{} ({mode:o})", path.display())).collect();
    let dir = config.save_path.display();
    let message = format!(
        "other users can read Broker's data: {}; fix with `chmod -R go= {dir}`",
        list.join(", ")
    );
    if config.strict_permissions {
        return Err(Error::Config(format!("{message} (--strict-permissions)")));
    }
    tracing::warn!("{message} (or start with --strict-permissions to refuse)");
    Ok(())
}

fn stream_limit(configured: Option<usize>) -> usize {
    let files = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let limit = configured
        .unwrap_or_else(|| usize::try_from(files.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX));
    tracing::info!(open_files = files, max_streams = limit, "stream limit");
    limit
}

/// Makes the app's JWT keys from `secret`.
fn set_keys(app: &App, secret: &Secret, expiry: u64) -> Result<(), Error> {
    let keys = Keys::new(secret.expose().as_bytes(), expiry)
        .map_err(|e| Error::Config(format!("unusable secret: {e}")))?;
    let _ = app.keys.set(keys);
    Ok(())
}

/// Uses the secret kept by the store (a file beside SQLite, a row of the
/// shared database), generating one on the very first start. While the
/// database cannot be reached, keeps trying in the background.
async fn keep_secret(
    app: &Arc<App>,
    expiry: u64,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).map_err(|e| Error::Config(format!("no randomness: {e}")))?;
    let candidate = auth::hex(&random);
    match app.store.keep_secret(candidate.clone()).await {
        Ok(secret) => return set_keys(app, &Secret::from(secret), expiry),
        Err(store::StoreError::Unavailable(e)) => {
            tracing::warn!(error = %e, "the database is unreachable; retrying every second (requests needing it answer 503)");
        }
        Err(e) => return Err(e.into()),
    }
    let app = app.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = shutdown.cancelled() => return,
            }
            match app.store.keep_secret(candidate.clone()).await {
                Ok(secret) => {
                    if let Err(e) = set_keys(&app, &Secret::from(secret), expiry) {
                        tracing::error!(error = %e, "the stored secret is unusable");
                    }
                    tracing::info!("the database is reachable");
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "the database is still unreachable"),
            }
        }
    });
    Ok(())
}
