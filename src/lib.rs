//! Broker: a real-time zero-code API server.
//!
//! Users sign up and log in, clients insert JSON events, and every
//! subscriber of the Server-Sent-Events stream sees each event when it is
//! published, at once or at its future timestamp. The log is immutable; the
//! latest event of each name is the current state.
//!
//! [`Broker::open`] builds the whole server from a [`Config`];
//! [`Broker::router`] is an axum `Router` another application can mount;
//! [`serve`] runs it on a listener until a shutdown future resolves.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod auth;
pub mod clock;
pub mod config;
pub mod domain;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod scheduler;
mod server;
pub mod store;

use std::future::Future;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use clock::Clock;
pub use config::{Config, Secret};

use auth::{Keys, Passwords};
use http::App;
use hub::Hub;
use scheduler::Wake;
use store::{SqliteStore, Store};

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
}

impl Broker {
    /// Opens the database and starts the scheduler and heartbeat.
    pub async fn open(config: Config) -> Result<Self, Error> {
        Self::open_with_clock(config, Clock::System).await
    }

    /// Like [`Broker::open`], with another time source (tests use a manual one).
    pub async fn open_with_clock(config: Config, clock: Clock) -> Result<Self, Error> {
        let secret = match &config.secret {
            Some(secret) => secret.clone(),
            None => stored_secret(&config.save_path)?,
        };
        let origins = config
            .origin
            .iter()
            .map(|o| o.parse().map_err(|_| Error::Config(format!("invalid origin {o:?}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let metrics = Arc::new(metrics::Metrics::default());
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open_with_metrics(&config.save_path, metrics.clone())?);
        let passwords = Passwords::new().await.map_err(|e| Error::Config(e.to_string()))?;
        let shutdown = CancellationToken::new();
        let max_lag = usize::try_from(config.max_lag).unwrap_or(usize::MAX);
        let hub = Arc::new(Hub::new(max_lag, stream_limit(config.max_connections), metrics));
        hub.spawn_heartbeat(config.heartbeat_interval(), shutdown.clone());
        let wake = Arc::new(Wake::default());
        let scheduler = scheduler::spawn(
            store.clone(),
            hub.clone(),
            clock.clone(),
            wake.clone(),
            max_lag,
            shutdown.clone(),
        );
        let app = Arc::new(App {
            store,
            hub,
            wake,
            keys: Keys::new(secret.expose().as_bytes(), config.expiry)
                .map_err(|e| Error::Config(format!("unusable secret: {e}")))?,
            passwords,
            clock,
            private_stream: config.private_stream,
            retry_ms: config.retry,
            origins,
        });
        let router = http::router(app.clone(), config.max_body);
        Ok(Self { app, router, shutdown, scheduler })
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
        let accepting = streams.spawn(server::run(
            listener,
            api,
            self.app.clone(),
            self.router.clone(),
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

/// File descriptors kept for the database, the listener and ordinary
/// requests when the stream limit is derived from the open-file limit.
const FD_RESERVE: u64 = 96;

/// The most streams to admit: as configured, or what the open-file limit
/// (raised to its hard maximum first) leaves after [`FD_RESERVE`].
fn stream_limit(configured: Option<usize>) -> usize {
    let files = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let limit = configured
        .unwrap_or_else(|| usize::try_from(files.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX));
    tracing::info!(open_files = files, max_streams = limit, "stream limit");
    limit
}

/// The JWT secret kept in the data directory, created on first start.
fn stored_secret(dir: &Path) -> Result<Secret, Error> {
    let path = dir.join("secret");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(Secret::from(text.trim().to_owned())),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    std::fs::create_dir_all(dir)?;
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).map_err(|e| Error::Config(format!("no randomness: {e}")))?;
    let secret = auth::hex(&random);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path)?;
    file.write_all(secret.as_bytes())?;
    file.sync_all()?;
    tracing::info!(path = %path.display(), "generated a new JWT secret");
    Ok(Secret::from(secret))
}
