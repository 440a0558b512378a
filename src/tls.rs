//! HTTPS: rustls (with ring) and a certificate from PEM files.
//!
//! TLS 1.3 and 1.2 only; ALPN offers HTTP/2 first, then HTTP/1.1, so a
//! browser multiplexes all its event streams over one connection instead
//! of stopping at six. The certificate and key are read again on SIGHUP and
//! when either file changes (looked at every [`WATCH`]); connections made
//! before keep theirs, so open streams survive a reload. A certificate that
//! cannot be used is refused at start-up with a message saying why; on a
//! reload, the old one stays in use and the reason is logged.
//!
//! [`redirect_to_https`] is what answers on the plain-HTTP port.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_util::sync::CancellationToken;

/// How often the certificate files are looked at for changes.
pub const WATCH: Duration = Duration::from_secs(2);

/// The server's TLS settings; shared behind an `Arc`.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    config: RwLock<Arc<ServerConfig>>,
    /// The files' modification times when last read.
    stamp: RwLock<Option<(SystemTime, SystemTime)>>,
}

impl Tls {
    /// Reads the certificate chain and key; says what is wrong if they
    /// cannot serve.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, String> {
        let config = server_config(cert, key)?;
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            config: RwLock::new(Arc::new(config)),
            stamp: RwLock::new(stamps(cert, key)),
        })
    }

    /// An acceptor with the current certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.read().unwrap_or_else(PoisonError::into_inner).clone())
    }

    /// Reads the files again; on failure the current certificate stays.
    pub fn reload(&self) -> Result<(), String> {
        let stamp = stamps(&self.cert, &self.key);
        let config = server_config(&self.cert, &self.key)?;
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
        *self.stamp.write().unwrap_or_else(PoisonError::into_inner) = stamp;
        Ok(())
    }

    /// Reloads on SIGHUP and when the files change, until `shutdown`.
    pub fn spawn_reloader(self: Arc<Self>, shutdown: CancellationToken) {
        tokio::spawn(async move {
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
                        let now = stamps(&self.cert, &self.key);
                        if now == *self.stamp.read().unwrap_or_else(PoisonError::into_inner) {
                            continue;
                        }
                        "the files changed"
                    }
                    () = shutdown.cancelled() => return,
                };
                match self.reload() {
                    Ok(()) => {
                        tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded ({why})")
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "TLS certificate not reloaded ({why}); the previous one stays in use")
                    }
                }
            }
        });
    }
}

fn stamps(cert: &Path, key: &Path) -> Option<(SystemTime, SystemTime)> {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((modified(cert)?, modified(key)?))
}

/// A rustls server configuration for the chain in `cert` and the key in
/// `key`: TLS 1.3 and 1.2, ALPN `h2` then `http/1.1`.
fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| format!("cannot read the certificate {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no PEM certificate", cert.display()));
    }
    let expires = not_after(&chain[0])
        .ok_or_else(|| format!("{} is not an X.509 certificate", cert.display()))?;
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if expires <= i64::try_from(now).unwrap_or(i64::MAX) {
        return Err(format!(
            "the certificate {} expired at {expires} (UNIX seconds); renew it",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read the private key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("the certificate and key cannot be used together: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A router that answers every request with a permanent redirect (308) to
/// the same host and path over HTTPS on `https_port`.
pub fn redirect_to_https(https_port: u16) -> axum::Router {
    use axum::http::{StatusCode, Uri, header};
    use axum::response::IntoResponse;
    axum::Router::new().fallback(move |headers: axum::http::HeaderMap, uri: Uri| async move {
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
            return (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "application/json")], body)
                .into_response();
        };
        let port = if https_port == 443 { String::new() } else { format!(":{https_port}") };
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let location = format!("https://{host}{port}{path}");
        (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, location)]).into_response()
    })
}

/// When a DER certificate expires (its `notAfter`), in UNIX seconds; `None`
/// if it is not a certificate.
fn not_after(cert: &[u8]) -> Option<i64> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version
    // OPTIONAL, serialNumber, signature, issuer, validity SEQUENCE {
    // notBefore, notAfter }, … }, … }
    let (_, certificate, _) = der(cert)?;
    let (_, tbs, _) = der(certificate)?;
    let mut rest = tbs;
    let (tag, _, after) = der(rest)?;
    if tag == 0xa0 {
        rest = after; // the explicit version
    }
    for _ in 0..3 {
        rest = der(rest)?.2; // serial number, signature algorithm, issuer
    }
    let (_, validity, _) = der(rest)?;
    let (_, _, after_not_before) = der(validity)?;
    let (tag, time, _) = der(after_not_before)?;
    let time = std::str::from_utf8(time).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 => {
            // UTCTime: YYMMDDHHMMSS, years 1950 to 2049.
            let yy: i64 = time.get(..2)?.parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, time.get(2..)?)
        }
        0x18 => (time.get(..4)?.parse().ok()?, time.get(4..)?), // GeneralizedTime
        _ => return None,
    };
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day) = (field(0)?, field(2)?);
    let seconds = field(4)? * 3600 + field(6)? * 60 + field(8)?;
    Some(days_from_civil(year, month, day) * 86_400 + seconds)
}

/// One DER element at the start of `input`: its tag, its contents and what
/// follows it.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        let bytes = usize::from(first & 0x7f);
        if bytes == 0 || bytes > 4 {
            return None;
        }
        let (len, after) = (rest.get(..bytes)?, rest.get(bytes..)?);
        rest = after;
        len.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b))
    };
    Some((tag, rest.get(..length)?, rest.get(length..)?))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_count_days_since_1970() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 11, 30), 20_787);
        assert_eq!(days_from_civil(2050, 1, 1), 29_220);
    }

    #[test]
    fn garbage_is_no_certificate() {
        assert_eq!(not_after(b""), None);
        assert_eq!(not_after(b"\x30\x82\xff\xff"), None);
        assert_eq!(not_after(&[0x30, 0x03, 0x02, 0x01, 0x01]), None);
    }
}
