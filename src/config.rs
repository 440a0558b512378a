//! Command-line and environment configuration.
//!
//! One [`Config`] struct parsed by clap. Every option has an environment
//! fallback, and the single-dash spellings of Broker 1.x (`-port 8080
//! -origin … -expiry … -secret …`) are accepted verbatim through
//! [`Config::from_args`].

use std::ffi::OsString;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;

use crate::throttle::Proxy;

/// Everything a Broker server needs to start.
#[derive(Parser, Debug, Clone)]
#[command(name = "broker", version, about = "Real-time zero-code API server")]
pub struct Config {
    /// TCP port to listen on.
    #[arg(long, env = "BROKER_PORT", default_value_t = 8080)]
    pub port: u16,

    /// Address to bind (0.0.0.0 for every interface, 127.0.0.1 for this machine only).
    #[arg(long, env = "BROKER_HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,

    /// Browser origin allowed by CORS; repeat the option or separate with commas for several.
    #[arg(
        long,
        env = "BROKER_ORIGIN",
        default_value = "http://localhost:3000",
        value_delimiter = ','
    )]
    pub origin: Vec<String>,

    /// Lifetime of issued JWTs, in seconds.
    #[arg(long, env = "BROKER_EXPIRY", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub expiry: u64,

    /// Secret that signs JWTs. Without one, a random secret is generated on
    /// first start and kept in the data directory.
    #[arg(long, env = "BROKER_SECRET", hide_env_values = true)]
    pub secret: Option<Secret>,

    /// Directory of the embedded database.
    #[arg(long, env = "SAVE_PATH", default_value = "./broker_data", global = true)]
    pub save_path: PathBuf,

    /// PostgreSQL database to use instead of the embedded one
    /// (`postgres://user:password@host:port/database`); every node given
    /// the same URL serves the same users and events.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<Secret>,

    /// Most PostgreSQL connections this node opens (one more listens for
    /// other nodes' notifications).
    #[arg(long, env = "BROKER_DB_POOL", default_value_t = 6, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub db_pool: u64,

    /// Seconds between heartbeat comments on open event streams.
    #[arg(long, env = "BROKER_HEARTBEAT", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat: u64,

    /// How many levels an event's data may nest arrays and objects; deeper
    /// data is refused with 400 (many JSON parsers fail on deep nesting).
    #[arg(long, env = "BROKER_MAX_DEPTH", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_depth: u64,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "BROKER_MAX_BODY", default_value_t = 1024 * 1024)]
    pub max_body: usize,

    /// Refuse anonymous subscribers on /events: a valid token is required
    /// (header, `token` query parameter or `broker_token` cookie).
    #[arg(long, env = "BROKER_PRIVATE_STREAM")]
    pub private_stream: bool,

    /// Milliseconds a disconnected EventSource waits before reconnecting
    /// (the SSE `retry:` field sent on connect).
    #[arg(long, env = "BROKER_RETRY", default_value_t = 3000)]
    pub retry: u64,

    /// Most event streams open at once; beyond it a subscriber gets 503.
    /// Default: what the open-file limit allows, less a reserve for the
    /// database and ordinary requests.
    #[arg(long, env = "BROKER_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Log format: human-readable text, or one JSON object per line.
    #[arg(long, env = "BROKER_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Seconds an event stream's client may take no data before it is
    /// disconnected (it can reconnect and resume).
    #[arg(long, env = "BROKER_WRITE_STALL", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub write_stall: u64,

    /// How many events a subscriber may fall behind before it is disconnected
    /// (it can reconnect and resume).
    #[arg(long, env = "BROKER_MAX_LAG", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_lag: u64,

    /// Failed logins for one username (known or not) before each further
    /// attempt must wait: 1 second, doubling with every failure, up to
    /// `--login-window`. 0 turns the limit off.
    #[arg(long, env = "BROKER_LOGIN_ATTEMPTS", default_value_t = 5)]
    pub login_attempts: u32,

    /// Failed logins from one client address before it must wait likewise.
    /// 0 turns the limit off.
    #[arg(long, env = "BROKER_LOGIN_ATTEMPTS_PER_ADDRESS", default_value_t = 50)]
    pub login_attempts_per_address: u32,

    /// Seconds after the last failure when a username's or address's
    /// failures are forgotten; also the longest wait.
    #[arg(long, env = "BROKER_LOGIN_WINDOW", default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub login_window: u64,

    /// Proxies (addresses or networks such as 10.0.0.0/8) whose
    /// `X-Forwarded-For` header names the client; repeat or separate with
    /// commas. Without one, the peer's address is the client's.
    #[arg(long, env = "BROKER_TRUSTED_PROXY", value_delimiter = ',')]
    pub trusted_proxy: Vec<Proxy>,

    /// Serve HTTPS (HTTP/2 and HTTP/1.1) with this PEM certificate chain;
    /// it is read again on SIGHUP and when the file changes.
    #[arg(long, env = "BROKER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of `--tls-cert`.
    #[arg(long, env = "BROKER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Names clients reach this server by: start-up fails unless the
    /// `--tls-cert` certificate is valid for each (repeat or separate with
    /// commas).
    #[arg(long, env = "BROKER_TLS_NAME", value_delimiter = ',', requires = "tls_cert")]
    pub tls_name: Vec<String>,

    /// Serve HTTPS with a certificate obtained and renewed automatically
    /// (ACME, from Let's Encrypt unless `--acme-directory` says otherwise)
    /// for this domain name; repeat or separate with commas for several.
    /// The account and certificate are kept in the data directory, or in
    /// the database that several nodes share.
    #[arg(long, env = "BROKER_ACME_DOMAIN", value_delimiter = ',', conflicts_with = "tls_cert")]
    pub acme_domain: Vec<String>,

    /// Contact address given to the ACME certificate authority (for its
    /// notices about the certificates).
    #[arg(long, env = "BROKER_ACME_EMAIL")]
    pub acme_email: Option<String>,

    /// Directory URL of the ACME certificate authority.
    #[arg(long, env = "BROKER_ACME_DIRECTORY", default_value = crate::tls::acme::LETS_ENCRYPT)]
    pub acme_directory: String,

    /// PEM root certificate to trust for the ACME server instead of the
    /// system's (a private CA, or a test CA such as pebble).
    #[arg(long, env = "BROKER_ACME_CA")]
    pub acme_ca: Option<PathBuf>,

    /// How the certificate authority checks this server answers for the
    /// domains: a TLS handshake on the HTTPS port (`--port`, which must be
    /// reachable as 443), or an HTTP request on `--http-redirect-port`
    /// (reachable as 80).
    #[arg(long, env = "BROKER_ACME_CHALLENGE", value_enum, default_value = "tls-alpn-01")]
    pub acme_challenge: crate::tls::acme::Challenge,

    /// Also listen for plain HTTP on this port (on `--host`), answering
    /// every request with a permanent redirect to HTTPS (and ACME HTTP-01
    /// challenges). Needs `--tls-cert` or `--acme-domain`.
    #[arg(long, env = "BROKER_HTTP_REDIRECT_PORT")]
    pub http_redirect_port: Option<u16>,

    /// `max-age` of the `Strict-Transport-Security` header sent over HTTPS,
    /// in seconds; 0 sends none.
    #[arg(long, env = "BROKER_HSTS_MAX_AGE", default_value_t = 31_536_000)]
    pub hsts_max_age: u64,

    /// Inserts each user may make per second (in bursts of as many); more
    /// get 429 with `Retry-After`. 0 (the default) means no limit.
    #[arg(long, env = "BROKER_INSERT_RATE", default_value_t = 0)]
    pub insert_rate: u32,

    /// Signals each user may send per second (`POST /signal`, in bursts of
    /// as many); more get 429 with `Retry-After`. 0 means no limit.
    #[arg(long, env = "BROKER_SIGNAL_RATE", default_value_t = 50)]
    pub signal_rate: u32,

    /// How long a user stays present in a collection after their last
    /// stream on it closed, in milliseconds: a tab that reconnects within
    /// it causes no leave and join.
    #[arg(long, env = "BROKER_PRESENCE_GRACE_MS", default_value_t = 5000)]
    pub presence_grace_ms: u64,

    /// How long an `Idempotency-Key` of `POST /insert` is remembered, in
    /// seconds: a retry with the same key within it stores nothing and
    /// answers the first insert's event again.
    #[arg(long, env = "BROKER_IDEMPOTENCY_WINDOW", default_value_t = 86_400)]
    pub idempotency_window: u32,

    /// Which events collections nobody claimed keep: `all` (as Broker 1.x),
    /// an age (`90s`, `30m`, `12h`, `7d`: events whose timestamp is older
    /// are deleted), `latest=N` (the latest N events of each name), or
    /// both (`7d,latest=10`). The latest event of each name and pending
    /// events are always kept. Owners set their own collections' retention.
    #[arg(long, env = "BROKER_RETENTION", default_value = "all", value_parser = crate::policy::Retention::parse)]
    pub retention: crate::policy::Retention,

    /// Sign-ups per client address per hour, in bursts of as many (0: no
    /// limit); more get 429 with `Retry-After`. Addresses are found as for
    /// failed logins (`--trusted-proxy`).
    #[arg(long, env = "BROKER_SIGNUP_RATE", default_value_t = 300)]
    pub signup_rate: u32,

    /// The fewest characters a new password may have (sign-up, password
    /// change, an administrator's reset); 0, the default, accepts any
    /// non-empty password, as Broker 1.x did. `GET /users/password-rule`
    /// tells clients.
    #[arg(long, env = "BROKER_MIN_PASSWORD_LENGTH", default_value_t = 0)]
    pub min_password_length: u16,

    /// Refuses to start when the data directory or a file of Broker's in it
    /// can be read by other users (else a warning names them).
    #[arg(long, env = "BROKER_STRICT_PERMISSIONS")]
    pub strict_permissions: bool,

    /// Lets webhooks use `http://` URLs (else only `https://`).
    #[arg(long, env = "BROKER_WEBHOOK_ALLOW_HTTP")]
    pub webhook_allow_http: bool,

    /// Lets webhooks reach loopback, private, link-local and other
    /// non-public addresses (checked after DNS, at every connection).
    #[arg(long, env = "BROKER_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: bool,

    /// How long, in seconds, an event's delivery to a webhook is retried
    /// (after 1 s, 2 s, 4 s, … at most 5 min apart) before the webhook is
    /// paused as failing.
    #[arg(long, env = "BROKER_WEBHOOK_RETRY_FOR", default_value_t = 86_400)]
    pub webhook_retry_for: u64,

    /// Most webhooks per collection.
    #[arg(long, env = "BROKER_MAX_WEBHOOKS", default_value_t = 10)]
    pub max_webhooks: usize,
}

/// The subcommands: work on the store (given by `--database-url` or
/// `--save-path`) instead of serving.
#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Write every user and event of the store to standard output, as JSON
    /// Lines (to move to another backend, or as a backup).
    Export,
    /// Read what `broker export` wrote, from standard input, into the store;
    /// the store must be empty.
    Import,
    /// Manage administrators (whether or not a server is running).
    #[command(subcommand)]
    Admin(Admin),
}

/// `broker admin …`.
#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Admin {
    /// Make USERNAME an administrator.
    Grant {
        /// The user's login name.
        username: String,
    },
    /// Make USERNAME an ordinary user again.
    Revoke {
        /// The user's login name.
        username: String,
    },
}

/// How log lines are written.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Long options that Broker 1.x spelled with a single dash.
const SEED_FLAGS: [&str; 4] = ["port", "origin", "expiry", "secret"];

impl Config {
    /// Where the store is: PostgreSQL with `--database-url`, else embedded
    /// SQLite in `--save-path`.
    pub fn store_location(&self) -> crate::store::Location<'_> {
        match &self.database_url {
            Some(url) => crate::store::Location::Postgres {
                url: url.expose(),
                pool: usize::try_from(self.db_pool).unwrap_or(1),
            },
            None => crate::store::Location::Sqlite(&self.save_path),
        }
    }

    /// Parses a command line, accepting the seed's `-port 8080` spellings as
    /// well as `--port 8080`; exits with usage on error, like clap does.
    pub fn from_args<I, T>(args: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        Self::parse_from(args.into_iter().map(|arg| seed_to_gnu(arg.into())))
    }

    /// Interval between heartbeat comments on event streams.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat)
    }
}

/// Rewrites `-port` / `-port=8080` (seed style) to `--port` / `--port=8080`.
fn seed_to_gnu(arg: OsString) -> OsString {
    let Some(text) = arg.to_str() else { return arg };
    let Some(rest) = text.strip_prefix('-') else {
        return arg;
    };
    let name = rest.split('=').next().unwrap_or(rest);
    if SEED_FLAGS.contains(&name) { OsString::from(format!("-{text}")) } else { arg }
}

/// A secret string whose `Debug` output never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the code that signs with it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err("the secret must not be empty".into());
        }
        Ok(Self(s.to_owned()))
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_command_line_works_verbatim() {
        let c = Config::from_args([
            "broker",
            "-port",
            "9090",
            "-origin",
            "http://a.test",
            "-expiry",
            "60",
            "-secret",
            "s3",
        ]);
        assert_eq!(c.port, 9090);
        assert_eq!(c.origin, ["http://a.test"]);
        assert_eq!(c.expiry, 60);
        assert_eq!(c.secret.as_ref().map(Secret::expose), Some("s3"));
    }

    #[test]
    fn gnu_style_and_several_origins() {
        let c = Config::from_args([
            "broker",
            "--port=1",
            "--origin",
            "http://a.test,http://b.test",
            "--origin",
            "http://c.test",
            "-secret=x",
        ]);
        assert_eq!(c.port, 1);
        assert_eq!(c.origin, ["http://a.test", "http://b.test", "http://c.test"]);
        assert_eq!(c.secret.as_ref().map(Secret::expose), Some("x"));
    }

    #[test]
    fn defaults_and_redacted_secret() {
        assert!(Config::try_parse_from(["broker"]).unwrap().secret.is_none());
        let c = Config::try_parse_from(["broker", "--secret", "hunter2"]).unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.save_path, PathBuf::from("./broker_data"));
        assert_eq!(c.heartbeat, 15);
        assert_eq!(c.max_body, 1024 * 1024);
        assert_eq!(c.expiry, 3600);
        assert_eq!(c.origin, ["http://localhost:3000"]);
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn values_are_not_rewritten() {
        assert_eq!(seed_to_gnu("-portal".into()), OsString::from("-portal"));
        assert_eq!(seed_to_gnu("-h".into()), OsString::from("-h"));
    }
}
