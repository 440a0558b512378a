//! HTTPS: rustls (with ring), with a certificate from PEM files or obtained
//! automatically by [`acme`].
//!
//! TLS 1.3 and 1.2 only; ALPN offers HTTP/2 first, then HTTP/1.1, so a
//! browser multiplexes all its event streams over one connection instead
//! of stopping at six. Certificate files are read again on SIGHUP and when
//! either changes (looked at every [`WATCH`]); connections made before keep
//! theirs, so open streams survive a reload. A certificate that cannot be
//! used (unreadable, expired, not valid for a `--tls-name`) is refused at
//! start-up with a message saying why; on a reload, the old one stays in
//! use and the reason is logged.
//!
//! [`redirect_to_https`] is what answers on the plain-HTTP port.

pub mod acme;
pub mod x509;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::store::Store;

/// How often the certificate files are looked at for changes.
pub const WATCH: Duration = Duration::from_secs(2);

/// Most store lookups of TLS-ALPN-01 challenges a node makes per second;
/// handshakes beyond them fail.
pub const CHALLENGE_LOOKUPS: u32 = 20;

/// The server's TLS settings and current certificate; shared behind an `Arc`.
pub struct Tls {
    source: Source,
    current: RwLock<Option<Arc<ServerConfig>>>,
    /// Whether a TLS-ALPN-01 challenge may be pending: only with ACME, while
    /// there is no certificate or it is due for renewal. Otherwise such
    /// handshakes fail without a store lookup.
    challenges: AtomicBool,
    /// The lookups made in the current second: (its start, how many).
    lookups: Mutex<(Instant, u32)>,
}

/// Where the certificate comes from.
enum Source {
    Files {
        cert: PathBuf,
        key: PathBuf,
        /// Names the certificate must be valid for.
        names: Vec<String>,
        /// The files' modification times when last read.
        stamp: RwLock<Option<(SystemTime, SystemTime)>>,
    },
    Acme(acme::Settings),
}

impl Tls {
    /// Reads the certificate chain and key; says what is wrong if they
    /// cannot serve (or are not valid for each of `names`).
    pub fn load(cert: &Path, key: &Path, names: &[String]) -> Result<Self, String> {
        let config = from_files(cert, key, names)?;
        Ok(Self {
            source: Source::Files {
                cert: cert.to_owned(),
                key: key.to_owned(),
                names: names.to_owned(),
                stamp: RwLock::new(stamps(cert, key)),
            },
            current: RwLock::new(Some(Arc::new(config))),
            challenges: AtomicBool::new(false),
            lookups: Mutex::new((Instant::now(), 0)),
        })
    }

    /// HTTPS with certificates obtained by ACME; until the first one is
    /// there, handshakes fail (but ACME challenges are answered).
    pub fn acme(settings: acme::Settings) -> Self {
        let challenges = AtomicBool::new(settings.challenge == acme::Challenge::TlsAlpn01);
        let lookups = Mutex::new((Instant::now(), 0));
        Self { source: Source::Acme(settings), current: RwLock::new(None), challenges, lookups }
    }

    /// Says whether a certificate is being (or may be) ordered, so that
    /// TLS-ALPN-01 handshakes are looked up (at most [`CHALLENGE_LOOKUPS`]
    /// a second) or fail at once.
    fn expect_challenges(&self, ordering: bool) {
        let alpn =
            matches!(&self.source, Source::Acme(s) if s.challenge == acme::Challenge::TlsAlpn01);
        self.challenges.store(ordering && alpn, Ordering::Relaxed);
    }

    /// Whether this handshake may look a challenge up.
    fn may_look_up(&self) -> bool {
        if !self.challenges.load(Ordering::Relaxed) {
            return false;
        }
        let mut lookups = self.lookups.lock().unwrap_or_else(PoisonError::into_inner);
        if lookups.0.elapsed() >= Duration::from_secs(1) {
            *lookups = (Instant::now(), 0);
        }
        lookups.1 += 1;
        lookups.1 <= CHALLENGE_LOOKUPS
    }

    /// Reads the files again; on failure the current certificate stays.
    /// (Nothing to do for ACME, which renews by itself.)
    pub fn reload(&self) -> Result<(), String> {
        let Source::Files { cert, key, names, stamp } = &self.source else { return Ok(()) };
        let now = stamps(cert, key);
        self.install(from_files(cert, key, names)?);
        *stamp.write().unwrap_or_else(PoisonError::into_inner) = now;
        Ok(())
    }

    /// Serves `config` to new connections from now on.
    fn install(&self, config: ServerConfig) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(config));
    }

    /// The TLS handshake of a new connection: the stream to serve, or `None`
    /// when it was an ACME server checking a TLS-ALPN-01 challenge.
    pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        socket: S,
        store: &dyn Store,
    ) -> Result<Option<TlsStream<S>>, String> {
        let acceptor = rustls::server::Acceptor::default();
        let start = tokio_rustls::LazyConfigAcceptor::new(acceptor, socket)
            .await
            .map_err(|e| e.to_string())?;
        let hello = start.client_hello();
        let challenge = hello.alpn().is_some_and(|mut p| p.any(|p| p == acme::ALPN));
        let name = hello.server_name().unwrap_or_default().to_owned();
        let config = if challenge {
            if !self.may_look_up() {
                return Err("no TLS-ALPN-01 challenge is expected now, or too many at once".into());
            }
            acme::challenge_config(store, &name).await?
        } else {
            let current = self.current.read().unwrap_or_else(PoisonError::into_inner).clone();
            current.ok_or("no certificate yet: it is being obtained")?
        };
        let stream = start.into_stream(config).await.map_err(|e| e.to_string())?;
        Ok((!challenge).then_some(stream))
    }

    /// Keeps the certificate current until `shutdown`: reloads files on
    /// SIGHUP and when they change, or obtains and renews by ACME.
    pub fn spawn(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        clock: Clock,
        shutdown: CancellationToken,
    ) {
        match &self.source {
            Source::Files { .. } => {
                tokio::spawn(self.reloader(shutdown));
            }
            Source::Acme(settings) => {
                let settings = settings.clone();
                tokio::spawn(acme::run(self, settings, store, clock, shutdown));
            }
        }
    }

    async fn reloader(self: Arc<Self>, shutdown: CancellationToken) {
        let Source::Files { cert, key, stamp, .. } = &self.source else { return };
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let signalled = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let signalled = std::future::pending::<Option<()>>();
            let why = tokio::select! {
                _ = signalled => "SIGHUP",
                () = tokio::time::sleep(WATCH) => {
                    if stamps(cert, key) == *stamp.read().unwrap_or_else(PoisonError::into_inner) {
                        continue;
                    }
                    "the files changed"
                }
                () = shutdown.cancelled() => return,
            };
            match self.reload() {
                Ok(()) => {
                    tracing::info!(cert = %cert.display(), "TLS certificate reloaded ({why})")
                }
                Err(e) => {
                    tracing::error!(error = %e, "TLS certificate not reloaded ({why}); the previous one stays in use")
                }
            }
        }
    }
}

fn stamps(cert: &Path, key: &Path) -> Option<(SystemTime, SystemTime)> {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((modified(cert)?, modified(key)?))
}

/// A server configuration from the chain in `cert` and the key in `key`,
/// if the certificate is current and valid for each of `names`.
fn from_files(cert: &Path, key: &Path, names: &[String]) -> Result<ServerConfig, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| format!("cannot read the certificate {}: {e}", cert.display()))?;
    let Some(leaf) = chain.first() else {
        return Err(format!("{} holds no PEM certificate", cert.display()));
    };
    let (_, expires) = x509::validity(leaf)
        .ok_or_else(|| format!("{} is not an X.509 certificate", cert.display()))?;
    if expires <= Clock::System.now_secs() {
        return Err(format!(
            "the certificate {} expired at {expires} (UNIX seconds); renew it",
            cert.display()
        ));
    }
    x509::check_names(leaf, names).map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read the private key {}: {e}", key.display()))?;
    server_config(chain, key, &[b"h2", b"http/1.1"])
}

/// A rustls server configuration: TLS 1.3 and 1.2, ring, ALPN `protocols`.
fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    protocols: &[&[u8]],
) -> Result<ServerConfig, String> {
    let mut config = builder()?
        .with_single_cert(chain, key)
        .map_err(|e| format!("the certificate and key cannot be used together: {e}"))?;
    config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A server configuration builder with ring, TLS 1.3 and 1.2.
fn builder() -> Result<rustls::ConfigBuilder<ServerConfig, rustls::server::WantsServerCert>, String>
{
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS: {e}"))?;
    Ok(builder.with_no_client_auth())
}

/// A router that answers ACME HTTP-01 challenges and every other request
/// with a permanent redirect (308) to the same host and path over HTTPS on
/// `https_port`.
pub fn redirect_to_https(https_port: u16, store: Arc<dyn Store>) -> axum::Router {
    use axum::extract::Path as UrlPath;
    use axum::http::{StatusCode, Uri, header};
    use axum::response::IntoResponse;
    let challenge = move |UrlPath(token): UrlPath<String>| async move {
        match acme::http_answer(store.as_ref(), &token).await {
            Some(answer) => (StatusCode::OK, answer).into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        }
    };
    axum::Router::new()
        .route("/.well-known/acme-challenge/{token}", axum::routing::get(challenge))
        .fallback(move |headers: axum::http::HeaderMap, uri: Uri| async move {
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(|h| {
                // The name without the plain port (IPv6 literals keep their brackets).
                match h.rsplit_once(':') {
                    Some((name, port))
                        if !name.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) =>
                    {
                        name
                    }
                    _ => h,
                }
            });
            let Some(host) = host.filter(|h| !h.is_empty()) else {
                let body = r#"{"error":"a Host header is needed to redirect to HTTPS"}"#;
                return (
                    StatusCode::BAD_REQUEST,
                    [(header::CONTENT_TYPE, "application/json")],
                    body,
                )
                    .into_response();
            };
            let port = if https_port == 443 { String::new() } else { format!(":{https_port}") };
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            let location = format!("https://{host}{port}{path}");
            (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, location)]).into_response()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_lookups_only_while_ordering_and_bounded() {
        let settings = |challenge| acme::Settings {
            domains: vec!["example.com".into()],
            email: None,
            directory: "https://acme.invalid/directory".into(),
            ca: None,
            challenge,
        };
        let tls = Tls::acme(settings(acme::Challenge::TlsAlpn01));
        let allowed = (0..CHALLENGE_LOOKUPS + 5).filter(|_| tls.may_look_up()).count();
        assert_eq!(allowed, CHALLENGE_LOOKUPS as usize, "bounded per second");
        tls.expect_challenges(false); // a current certificate, not due
        *tls.lookups.lock().unwrap() = (Instant::now() - Duration::from_secs(2), 0);
        assert!(!tls.may_look_up());
        tls.expect_challenges(true);
        assert!(tls.may_look_up());
        let http = Tls::acme(settings(acme::Challenge::Http01));
        http.expect_challenges(true);
        assert!(!http.may_look_up(), "HTTP-01 is answered on the plain port only");
    }
}
