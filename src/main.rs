//! The `broker` binary: parses the command line and runs the library.

use std::net::SocketAddr;
use std::process::ExitCode;

use broker::Config;
use broker::config::{Admin, Command, LogFormat};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::from_args(std::env::args_os());
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()));
    match config.log_format {
        LogFormat::Text => {
            logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init()
        }
        LogFormat::Json => logs.json().init(),
    }
    if let Some(command) = config.command.clone() {
        return run(command, &config).await;
    }
    let addr = SocketAddr::new(config.host, config.port);
    let listener = match listen(addr) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(addr) => {
            let tls = config.tls_cert.is_some() || !config.acme_domain.is_empty();
            let scheme = if tls { "https" } else { "http" };
            tracing::info!("listening on {scheme}://{addr}")
        }
        Err(e) => tracing::warn!(error = %e, "listening on an unknown address"),
    }
    match broker::serve(listener, config, shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "broker failed");
            ExitCode::FAILURE
        }
    }
}

/// `broker export` and `broker import` (on standard output and input), and
/// `broker admin`.
async fn run(command: Command, config: &Config) -> ExitCode {
    let result = async {
        let store = broker::store::open(config.store_location(), Default::default())?;
        match &command {
            Command::Export => {
                let out = std::io::BufWriter::new(std::io::stdout().lock());
                broker::transfer::export(&*store, out).await
            }
            Command::Import => broker::transfer::import(&*store, std::io::stdin().lock()).await,
            Command::Admin(Admin::Grant { username }) => {
                broker::transfer::set_admin(&*store, username, true).await.map(|()| 1)
            }
            Command::Admin(Admin::Revoke { username }) => {
                broker::transfer::set_admin(&*store, username, false).await.map(|()| 1)
            }
        }
    };
    match result.await {
        Ok(records) => {
            tracing::info!(records, "{command:?} done");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "{command:?} failed");
            ExitCode::FAILURE
        }
    }
}

/// Binds with a listen queue deep enough for thousands of EventSources
/// reconnecting at once (the kernel caps it at `net.core.somaxconn`).
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutting down");
}
