//! Automatic certificates (ACME, RFC 8555), as Let's Encrypt issues them.
//!
//! Every node runs [`run`]: it serves the certificate kept in the store
//! (files in the data directory beside SQLite; the shared database on
//! PostgreSQL, so that a cluster holds one certificate), and once a third
//! of its lifetime is left, or when there is none, the node holding the
//! store's lease orders a new one while the old one goes on being served.
//! The others pick the new one up from the store. The challenge answers
//! are kept in the store too, so whichever node the ACME server reaches
//! can answer: TLS-ALPN-01 on the HTTPS port (a handshake offering
//! `acme-tls/1`, see [`challenge_config`]) or HTTP-01 on the plain port
//! ([`http_answer`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_util::sync::CancellationToken;

use super::{Tls, builder, server_config, x509};
use crate::clock::Clock;
use crate::store::Store;

/// The ALPN protocol of TLS-ALPN-01 validation handshakes.
pub const ALPN: &[u8] = b"acme-tls/1";
/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Longest wait before the store is looked at again (for a certificate
/// another node obtained, or a renewal that became due).
const RECHECK: Duration = Duration::from_secs(60);
/// How long the ordering node holds the lease (an order takes seconds).
const LEASE: i64 = 600;
/// How long every ACME step may take.
const STEP: Duration = Duration::from_secs(120);

/// How the ACME server checks that this server answers for a domain.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// A TLS handshake on the HTTPS port (port 443 for a public CA).
    #[value(name = "tls-alpn-01")]
    TlsAlpn01,
    /// An HTTP request on the plain port (`--http-redirect-port`, 80 for a
    /// public CA).
    #[value(name = "http-01")]
    Http01,
}

/// What to obtain, and from where.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The names the certificate is for.
    pub domains: Vec<String>,
    /// A contact address for the CA's notices.
    pub email: Option<String>,
    /// The ACME directory URL.
    pub directory: String,
    /// A PEM root to trust for the ACME server instead of the system's.
    pub ca: Option<PathBuf>,
    /// The challenge to answer.
    pub challenge: Challenge,
}

/// A certificate as kept in the store.
#[derive(Serialize, Deserialize)]
struct Kept {
    /// The PEM chain, leaf first.
    chain: String,
    /// The PEM private key.
    key: String,
}

/// A kept certificate ready to serve, and when to renew it.
struct Usable {
    config: ServerConfig,
    renew_at: i64,
}

impl Kept {
    fn usable(&self, domains: &[String], now: i64) -> Result<Usable, String> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.chain.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("unreadable chain: {e}"))?;
        let leaf = chain.first().ok_or("no certificate in the chain")?;
        let (from, until) = x509::validity(leaf).ok_or("not an X.509 certificate")?;
        if until <= now {
            return Err(format!("expired at {until} (UNIX seconds)"));
        }
        x509::check_names(leaf, domains)?;
        let key = PrivateKeyDer::from_pem_slice(self.key.as_bytes())
            .map_err(|e| format!("unreadable key: {e}"))?;
        let config = server_config(chain, key, &[b"h2", b"http/1.1"])?;
        Ok(Usable { config, renew_at: until - (until - from) / 3 })
    }
}

/// Keeps `tls` serving a current certificate for `settings.domains` until
/// `shutdown`.
pub async fn run(
    tls: Arc<Tls>,
    settings: Settings,
    store: Arc<dyn Store>,
    clock: Clock,
    shutdown: CancellationToken,
) {
    let name = format!("certificate {}", settings.domains.join(","));
    let holder = uuid::Uuid::new_v4().to_string();
    // The kept certificate being served, and when to renew it.
    let (mut installed, mut failures) = (None::<(String, i64)>, 0u32);
    loop {
        let now = clock.now_secs();
        let kept = match store.acme_get(&name).await {
            Ok(kept) => kept,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the kept certificate; retrying");
                if wait(&clock, None, Duration::from_secs(5), &shutdown).await {
                    return;
                }
                continue;
            }
        };
        let renew_at = match kept {
            // Unchanged since it was installed: nothing to parse again.
            Some(text) if installed.as_ref().is_some_and(|(served, _)| *served == text) => {
                installed.as_ref().map(|(_, at)| *at)
            }
            Some(text) => match serde_json::from_str::<Kept>(&text)
                .map_err(|e| e.to_string())
                .and_then(|kept| kept.usable(&settings.domains, now))
            {
                Ok(usable) => {
                    tls.install(usable.config);
                    tracing::info!(domains = ?settings.domains, "serving the ACME certificate");
                    installed = Some((text, usable.renew_at));
                    Some(usable.renew_at)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the kept certificate cannot be used");
                    None
                }
            },
            None => None,
        };
        let due = renew_at.is_none_or(|at| at <= now);
        tls.expect_challenges(due);
        if let Some(at) = renew_at.filter(|_| !due) {
            if wait(&clock, Some(at), RECHECK, &shutdown).await {
                return;
            }
            continue;
        }
        let pause = match store.lease("acme-lease", &holder, now, now + LEASE).await {
            Ok(true) => {
                tracing::info!(domains = ?settings.domains, directory = %settings.directory, "ordering a certificate");
                let ordered = tokio::select! {
                    ordered = order(&settings, store.as_ref()) => ordered,
                    () = shutdown.cancelled() => return,
                };
                let kept = ordered
                    .and_then(|kept| serde_json::to_string(&kept).map_err(|e| e.to_string()));
                let saved = match kept {
                    Ok(kept) => store.acme_put(&name, Some(&kept)).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                // Released: the next node may order at once if this one fails.
                let _ = store.lease("acme-lease", &holder, now, 0).await;
                match saved {
                    Ok(()) => {
                        tracing::info!(domains = ?settings.domains, "certificate obtained");
                        failures = 0;
                        continue;
                    }
                    Err(e) => {
                        failures += 1;
                        let pause = Duration::from_secs(10 << failures.min(8)); // up to 43 min
                        tracing::error!(error = %e, retry_in = ?pause, "could not obtain a certificate; the current one (if any) stays in use");
                        pause
                    }
                }
            }
            // Another node is ordering: its certificate will be in the store.
            Ok(false) => Duration::from_secs(2),
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the ACME lease; retrying");
                Duration::from_secs(5)
            }
        };
        if wait(&clock, None, pause, &shutdown).await {
            return;
        }
    }
}

/// Waits until `clock` reaches `until` (UNIX seconds), `longest` passes or
/// shutdown; true on shutdown.
async fn wait(
    clock: &Clock,
    until: Option<i64>,
    longest: Duration,
    shutdown: &CancellationToken,
) -> bool {
    let due = async {
        match until {
            Some(at) => clock.sleep_until(at.saturating_mul(1000)).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = due => false,
        () = tokio::time::sleep(longest) => false,
        () = shutdown.cancelled() => true,
    }
}

/// Orders a certificate for `settings.domains`, answering its challenges.
async fn order(settings: &Settings, store: &dyn Store) -> Result<Kept, String> {
    let account = account(settings, store).await?;
    let identifiers: Vec<Identifier> =
        settings.domains.iter().map(|d| Identifier::Dns(d.clone())).collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await.map_err(acme_error)?;
    let mut answers = Vec::new();
    let ordered = async {
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization.map_err(acme_error)?;
            if authorization.status == AuthorizationStatus::Valid {
                continue; // validated recently: the CA reuses it
            }
            let kind = match settings.challenge {
                Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
                Challenge::Http01 => ChallengeType::Http01,
            };
            let mut challenge = authorization
                .challenge(kind.clone())
                .ok_or_else(|| format!("the ACME server offers no {kind:?} challenge"))?;
            let key_authorization = challenge.key_authorization();
            let (name, answer) = match settings.challenge {
                Challenge::TlsAlpn01 => (
                    format!("tls-alpn-01 {}", challenge.identifier()),
                    crate::auth::hex(key_authorization.digest().as_ref()),
                ),
                Challenge::Http01 => {
                    (format!("http-01 {}", challenge.token), key_authorization.as_str().to_owned())
                }
            };
            store.acme_put(&name, Some(&answer)).await.map_err(|e| e.to_string())?;
            answers.push(name);
            challenge.set_ready().await.map_err(acme_error)?;
        }
        let retries = RetryPolicy::new().timeout(STEP);
        let status = order.poll_ready(&retries).await.map_err(acme_error)?;
        if status != OrderStatus::Ready {
            return Err(format!("the order is {status:?}: {:?}", order.state().error));
        }
        let key = order.finalize().await.map_err(acme_error)?;
        let chain = order.poll_certificate(&retries).await.map_err(acme_error)?;
        Ok(Kept { chain, key })
    }
    .await;
    for name in answers {
        if let Err(e) = store.acme_put(&name, None).await {
            tracing::warn!(error = %e, "could not remove a challenge answer");
        }
    }
    ordered
}

/// The ACME account kept for `settings.directory`, created the first time.
async fn account(settings: &Settings, store: &dyn Store) -> Result<Account, String> {
    let builder = || match &settings.ca {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    };
    let name = format!("account {}", settings.directory);
    if let Some(kept) = store.acme_get(&name).await.map_err(|e| e.to_string())? {
        let credentials: AccountCredentials =
            serde_json::from_str(&kept).map_err(|e| format!("the kept ACME account: {e}"))?;
        let builder = builder().map_err(acme_error)?;
        return builder.from_credentials(credentials).await.map_err(acme_error);
    }
    let contact: Vec<String> = settings.email.iter().map(|e| format!("mailto:{e}")).collect();
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let new = NewAccount {
        contact: &contact,
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let (account, credentials) = builder()
        .map_err(acme_error)?
        .create(&new, settings.directory.clone(), None)
        .await
        .map_err(acme_error)?;
    let credentials = serde_json::to_string(&credentials).map_err(|e| e.to_string())?;
    store.acme_put(&name, Some(&credentials)).await.map_err(|e| e.to_string())?;
    tracing::info!(directory = %settings.directory, "created an ACME account");
    Ok(account)
}

fn acme_error(e: instant_acme::Error) -> String {
    format!("ACME: {e}")
}

/// The TLS configuration answering a TLS-ALPN-01 challenge for `name`
/// (RFC 8737): a self-signed certificate carrying the key authorization's
/// digest.
pub async fn challenge_config(store: &dyn Store, name: &str) -> Result<Arc<ServerConfig>, String> {
    let answer = store.acme_get(&format!("tls-alpn-01 {name}")).await.map_err(|e| e.to_string())?;
    let digest = answer
        .as_deref()
        .and_then(unhex)
        .filter(|d| d.len() == 32)
        .ok_or_else(|| format!("no TLS-ALPN-01 challenge is pending for {name:?}"))?;
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&digest)];
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    // Not through `with_single_cert`: webpki refuses the critical
    // acmeIdentifier extension that the CA looks for.
    let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let key = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| e.to_string())?;
    let certified = rustls::sign::CertifiedKey::new(vec![cert.der().clone()], key);
    let resolver = Arc::new(rustls::sign::SingleCertAndKey::from(certified));
    let mut config = builder()?.with_cert_resolver(resolver);
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The answer to an HTTP-01 challenge's `token`, if one is pending.
pub async fn http_answer(store: &dyn Store, token: &str) -> Option<String> {
    store.acme_get(&format!("http-01 {token}")).await.ok().flatten()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}
