//! `broker-bench`: measures Broker, and nginx + nchan the same way.
//!
//! Every measurement checks that every event reached every subscriber and
//! reports losses instead of hiding them. Subscribers run in separate client
//! processes (this same binary, `client` subcommand), each with its own
//! source address, so that no process nears the open-file limit and the
//! ephemeral ports of one address suffice. See BENCHMARKS.md.

mod client;
mod http;
mod webhook;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use http::Conn;

/// Nanoseconds since the UNIX epoch (comparable across processes).
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

#[derive(Parser)]
#[command(name = "broker-bench", version, about = "Load generator for Broker and nginx + nchan")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// Speak HTTP/1.1 over TLS (to the name `localhost`), trusting the CA
    /// certificate in this PEM file.
    #[arg(long, global = true)]
    tls_ca: Option<PathBuf>,
    /// With `--tls-ca`: event streams speak HTTP/2, one per connection
    /// (requests that publish stay on HTTP/1.1).
    #[arg(long, global = true, requires = "tls_ca")]
    http2: bool,
    /// With `--http2`: event streams per connection (a browser puts all of
    /// an origin's on one).
    #[arg(long, global = true, default_value_t = 1, requires = "http2")]
    h2_streams: usize,
    /// Run the load generator under the kernel's default policy, so that a
    /// client woken by a frame preempts the server writing the next ones.
    /// By default its threads and client processes run `SCHED_BATCH`.
    #[arg(long)]
    preempt: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Kind {
    /// Broker: subscribe to /events, publish with POST /insert and a JWT.
    Broker,
    /// nginx + nchan: subscribe to /sub/bench, publish with POST /pub/bench.
    Nchan,
}

#[derive(Args, Clone)]
struct Target {
    /// What serves the URL.
    #[arg(long, value_enum, default_value = "broker")]
    target: Kind,
    /// Server addresses: several nodes of one cluster, comma-separated or
    /// repeated. Subscriber processes and publishers are spread over them.
    #[arg(long, default_value = "127.0.0.1:8080", value_delimiter = ',', required = true)]
    addr: Vec<SocketAddr>,
    /// PIDs whose memory and CPU are measured, added up (for nchan: the
    /// worker processes).
    #[arg(long, value_delimiter = ',')]
    pid: Vec<u32>,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Broker only: publish to a private collection; subscribers read it as
    /// a member (with a token), so every delivery passes a permission check.
    #[arg(long)]
    private: bool,
    /// Broker only: subscribers present a token (of another user) on the
    /// public collection: the same streams as `--private`, without the check.
    #[arg(long, conflicts_with = "private")]
    authenticated: bool,
    /// Broker only: subscribers name no collection, so they read the hub's
    /// shared ring (the unfiltered path) instead of an inbox each.
    #[arg(long, conflicts_with_all = ["private", "authenticated"])]
    unfiltered: bool,
}

#[derive(Args, Clone)]
struct Fleet {
    /// Subscribers to open.
    #[arg(short = 'n', long, default_value_t = 18_000)]
    subscribers: usize,
    /// Client processes to spread them over (default: one per 9,000).
    #[arg(long)]
    procs: Option<usize>,
    /// Source addresses are 127.0.0.<first-source>, <first-source + 1>, …
    #[arg(long, default_value_t = 2)]
    first_source: u8,
    /// `channels` only: the streams share this many channels (stream i on
    /// channel i mod C); 0: a channel each.
    #[arg(long, default_value_t = 0)]
    channels: usize,
}

/// How fast and how long events are published.
#[derive(Args, Clone, Copy)]
struct Pace {
    /// Events per second.
    #[arg(short = 'r', long, default_value_t = 1000)]
    rate: usize,
    /// Seconds to publish.
    #[arg(short = 't', long, default_value_t = 10)]
    seconds: u64,
}

/// What a `rate --webhook` receiver does.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Hook {
    /// Answers 204 at once.
    Live,
    /// Never answers.
    Dead,
}

#[derive(Subcommand)]
enum Cmd {
    /// Opens N SSE connections; reports setup time and server memory per connection.
    Subscribers {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        subs: Fleet,
    },
    /// With N subscribers, publishes K single events one at a time, then a burst of B.
    Fanout {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        subs: Fleet,
        /// Single events, each published once the previous one reached everyone.
        #[arg(short = 'k', long, default_value_t = 200)]
        singles: usize,
        /// Events in the burst, published all at once.
        #[arg(short = 'b', long, default_value_t = 100)]
        burst: usize,
        /// Broker only: meanwhile, this many sign-ups a second arrive (each
        /// on one of up to 256 connections), and `/healthz` is timed every
        /// 20 ms (run the server with `--signup-rate 0`).
        #[arg(long, default_value_t = 0)]
        signups: usize,
    },
    /// Publishes R events a second for T seconds on the first address while
    /// N subscribers listen on the others (all of them if there is one):
    /// latency from the insert to the last subscriber, and of the insert
    /// itself (Broker only).
    Rate {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        subs: Fleet,
        #[command(flatten)]
        pace: Pace,
        /// Spread the events over this many event names (`bench-<n mod K>`;
        /// 1: all named `bench`), as updates to K records.
        #[arg(long, default_value_t = 1)]
        names: usize,
        /// Also a webhook on the collection (the server needs
        /// `--webhook-allow-http --webhook-allow-private`) to a receiver of
        /// this process: `live` answers 204 and measures the insert to its
        /// arrival; `dead` never answers.
        #[arg(long, value_enum)]
        webhook: Option<Hook>,
    },
    /// N streams, each on a channel of its own (Broker: a collection), and
    /// R events a second for T seconds, each into one stream's channel:
    /// latency from the insert to its one receiver, server CPU per event.
    Channels {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        subs: Fleet,
        #[command(flatten)]
        pace: Pace,
        /// Publishers, each on its own connection, spread over the
        /// addresses (a rate above what they sustain shows the highest).
        #[arg(short = 'c', long, default_value_t = 32)]
        publishers: usize,
        /// Also: every stream reads one shared channel too, and this many
        /// events are broadcast to it, one at a time, while the load runs.
        #[arg(short = 'b', long, default_value_t = 0)]
        broadcasts: usize,
        /// Broker only: send signals (`POST /signal`) instead of inserting
        /// events; the streams ask for signals and presence.
        #[arg(long)]
        signals: bool,
        /// Broker only: also open this many streams a second with a token,
        /// each on the next channel and closed a second later (its user
        /// joins, then leaves once the server's grace period is over).
        #[arg(long, default_value_t = 0)]
        churn: usize,
    },
    /// C concurrent publishers insert for T seconds (Broker only).
    Insert {
        #[command(flatten)]
        target: Target,
        /// Concurrent publishers, each on its own connection.
        #[arg(short = 'c', long, default_value_t = 64)]
        concurrency: usize,
        /// Seconds to run.
        #[arg(short = 't', long, default_value_t = 10)]
        seconds: u64,
    },
    /// Inserts E future events due across a window; reports publication lateness
    /// and the server's CPU while nothing is due (Broker only).
    Schedule {
        #[command(flatten)]
        target: Target,
        /// Future events to insert.
        #[arg(short = 'e', long, default_value_t = 100_000)]
        events: usize,
        /// Seconds across which they fall due.
        #[arg(long, default_value_t = 30)]
        window: u64,
        /// Seconds of idle time measured before the first is due.
        #[arg(long, default_value_t = 5)]
        idle: u64,
    },
    /// Prints two JSON results side by side with their ratios.
    Compare {
        /// Broker's result.
        broker: PathBuf,
        /// nchan's result.
        nchan: PathBuf,
    },
    /// Internal: one client process of `subscribers` and `fanout`.
    #[command(hide = true)]
    Client {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        path: String,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        source: IpAddr,
        #[arg(long)]
        events: usize,
        /// The first stream's index, for `{c}` in the path.
        #[arg(long, default_value_t = 0)]
        offset: usize,
        /// Channels the streams share (0: one each), for `{c}` in the path.
        #[arg(long, default_value_t = 0)]
        channels: usize,
    },
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() {
    let cli = Cli::parse();
    if let Some(Err(e)) = cli.tls_ca.as_deref().map(http::use_tls) {
        eprintln!("broker-bench: --tls-ca: {e}");
        std::process::exit(2);
    }
    if let Err(e) = if cli.http2 { http::use_http2(cli.h2_streams) } else { Ok(()) } {
        eprintln!("broker-bench: {e}");
        std::process::exit(2);
    }
    // The load generator stands in for clients on other machines: set
    // before any thread exists, `SCHED_BATCH` is inherited by its threads
    // and client processes. They keep their share of the cores but a frame
    // that wakes one does not preempt the server in the middle of writing
    // the next ones; any wait before a client reads still counts in the
    // latencies measured.
    if !cli.preempt && !matches!(cli.command, Cmd::Client { .. }) {
        let me = std::process::id().to_string();
        let batch =
            std::process::Command::new("chrt").args(["--batch", "--pid", "0", &me]).status();
        if !batch.as_ref().is_ok_and(|s| s.success()) {
            eprintln!(
                "broker-bench: chrt --batch failed ({batch:?}): the clients may preempt the server"
            );
        }
    }
    // A client process is one thread: the measured server, not the load
    // generator, should get the machine's cores.
    let runtime = match cli.command {
        Cmd::Client { .. } => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        _ => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
    };
    let runtime = runtime.unwrap_or_else(|e| {
        eprintln!("broker-bench: no runtime: {e}");
        std::process::exit(1)
    });
    runtime.block_on(command(cli.command));
}

async fn command(command: Cmd) {
    let result = match command {
        Cmd::Client { addr, path, count, source, events, offset, channels } => {
            client::run(addr, path, count, source, events, (offset, channels)).await;
            return;
        }
        Cmd::Compare { broker, nchan } => compare(&broker, &nchan),
        Cmd::Subscribers { target, subs } => run(&target, subscribers(&target, &subs)).await,
        Cmd::Fanout { target, subs, singles, burst, signups } => {
            run(&target, fanout(&target, &subs, singles, burst, signups)).await
        }
        Cmd::Rate { target, subs, pace, names, webhook } => {
            run(&target, rate(&target, &subs, pace, names.max(1), webhook)).await
        }
        Cmd::Channels { target, subs, pace, publishers, broadcasts, signals, churn } => {
            let load = Load { pace, publishers, broadcasts, signals, churn };
            run(&target, channels(&target, &subs, load)).await
        }
        Cmd::Insert { target, concurrency, seconds } => {
            run(&target, insert(&target, concurrency, seconds)).await
        }
        Cmd::Schedule { target, events, window, idle } => {
            run(&target, schedule(&target, events, window, idle)).await
        }
    };
    if let Err(e) = result {
        eprintln!("broker-bench: {e}");
        std::process::exit(1);
    }
}

/// A measurement: named values with units, printed as a table and JSON.
struct Report {
    command: &'static str,
    rows: Vec<(String, f64, &'static str)>,
    /// Raw measurements behind a distribution, in the JSON output only.
    samples: BTreeMap<String, Vec<f64>>,
    failures: Vec<String>,
}

impl Report {
    fn new(command: &'static str) -> Self {
        Self { command, rows: Vec::new(), samples: BTreeMap::new(), failures: Vec::new() }
    }

    fn add(&mut self, name: &str, value: f64, unit: &'static str) {
        self.rows.push((name.to_owned(), value, unit));
    }

    fn fail(&mut self, what: String) {
        self.failures.push(what);
    }
}

async fn run(
    target: &Target,
    work: impl std::future::Future<Output = Result<Report, Error>>,
) -> Result<(), Error> {
    let report = work.await?;
    let addrs: Vec<String> = target.addr.iter().map(ToString::to_string).collect();
    println!("{} against {:?} at {}", report.command, target.target, addrs.join(","));
    for (name, value, unit) in &report.rows {
        println!("  {name:<32} {value:>14.3} {unit}");
    }
    for failure in &report.failures {
        println!("  FAILURE: {failure}");
    }
    let metrics: BTreeMap<&str, f64> =
        report.rows.iter().map(|(n, v, _)| (n.as_str(), *v)).collect();
    let json = json!({
        "command": report.command,
        "target": format!("{:?}", target.target).to_lowercase(),
        "metrics": metrics,
        "units": report.rows.iter().map(|(n, _, u)| (n.clone(), *u)).collect::<BTreeMap<_, _>>(),
        "failures": report.failures,
        "samples": report.samples,
        "date": now_ns() / 1_000_000_000,
    });
    println!("{json}");
    if let Some(path) = &target.json {
        std::fs::write(path, serde_json::to_vec_pretty(&json)?)?;
    }
    if report.failures.is_empty() { Ok(()) } else { Err("the measurement found failures".into()) }
}

/// Publishes bench events to the target.
struct Publisher {
    kind: Kind,
    /// How many event names Broker events are spread over.
    names: usize,
    jwt: Option<String>,
    collection: String,
    /// A member's token, for the subscribers of a private collection.
    reader: Option<String>,
    /// Whether subscribers name no collection.
    unfiltered: bool,
}

impl Publisher {
    /// For Broker: signs a fresh bench user up and logs in; events go to a
    /// fresh collection, so subscribers see only this run.
    async fn new(target: &Target) -> Result<Self, Error> {
        let collection = uuid_v4();
        let (kind, unfiltered) = (target.target, target.unfiltered);
        let mut publisher =
            Self { kind, names: 1, jwt: None, collection, reader: None, unfiltered };
        if target.target == Kind::Broker {
            let mut conn = Conn::connect(target.addr[0]).await?;
            let (name, jwt) = sign_up(&mut conn, &publisher.collection).await?;
            if target.private || target.authenticated {
                let (reader, reader_jwt) = sign_up(&mut conn, &uuid_v4()).await?;
                if target.private {
                    let claim = json!({"collection_id": publisher.collection, "private": true});
                    expect(&mut conn, "POST", "/collections", &jwt, &claim, 201).await?;
                    let path = format!("/collections/{}/members/{reader}", publisher.collection);
                    expect(&mut conn, "PUT", &path, &jwt, &json!({"role": "reader"}), 200).await?;
                    eprintln!("private collection of {name}, read by member {reader}");
                }
                publisher.reader = Some(reader_jwt);
            }
            publisher.jwt = Some(jwt);
        }
        Ok(publisher)
    }

    fn subscribe_path(&self) -> String {
        match (self.kind, &self.reader) {
            (Kind::Broker, None) if self.unfiltered => "/events".to_owned(),
            (Kind::Broker, None) => format!("/events?collection_id={}", self.collection),
            (Kind::Broker, Some(jwt)) => {
                format!("/events?collection_id={}&token={jwt}", self.collection)
            }
            (Kind::Nchan, _) => "/sub/bench".to_owned(),
        }
    }

    /// Publishes event `n` (due at `timestamp`, Broker only) on `conn`.
    async fn publish(&self, conn: &mut Conn, n: usize, timestamp: i64) -> Result<(), Error> {
        let response = match self.kind {
            Kind::Broker => {
                let event = match self.names {
                    1 => "bench".to_owned(),
                    k => format!("bench-{}", n % k),
                };
                let body = json!({"event": event, "collection_id": self.collection, "timestamp": timestamp, "data": {"n": n}});
                conn.request("POST", "/insert", self.jwt.as_deref(), body.to_string().as_bytes())
                    .await?
            }
            Kind::Nchan => {
                conn.request("POST", "/pub/bench", None, format!("{{\"n\":{n}}}").as_bytes())
                    .await?
            }
        };
        if !(200..300).contains(&response.status) {
            return Err(format!(
                "publishing {n} got {}: {}",
                response.status,
                String::from_utf8_lossy(&response.body)
            )
            .into());
        }
        Ok(())
    }
}

/// Publishes events `range` over `lanes` concurrent connections, spread
/// over `addrs`, event `n` due at `due(n)`.
async fn publish_all(
    publisher: &Arc<Publisher>,
    addrs: &[SocketAddr],
    range: std::ops::Range<usize>,
    lanes: usize,
    due: impl Fn(usize) -> i64 + Copy + Send + 'static,
) -> Result<(), Error> {
    let lanes = lanes.clamp(1, range.len().max(1));
    let mut tasks = Vec::new();
    for lane in 0..lanes {
        let (publisher, range, addr) =
            (publisher.clone(), range.clone(), addrs[lane % addrs.len()]);
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr).await?;
            for n in range.skip(lane).step_by(lanes) {
                publisher.publish(&mut conn, n, due(n)).await?;
            }
            Ok::<_, Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// A random UUID v4 string, from the kernel's generator.
fn uuid_v4() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| format!("00000000-0000-4000-8000-{:012x}", now_ns() & 0xffff_ffff_ffff))
}

/// The client processes of one run.
struct Clients {
    procs: Vec<(Child, ChildStdin, Lines<BufReader<ChildStdout>>)>,
    ok: usize,
    refused: usize,
    failed: usize,
    setup: Duration,
}

impl Clients {
    /// Starts the client processes, spread over `addrs`.
    async fn start(
        addrs: &[SocketAddr],
        subs: &Fleet,
        path: &str,
        events: usize,
    ) -> Result<Self, Error> {
        let procs = subs.procs.unwrap_or(subs.subscribers.div_ceil(9000)).max(addrs.len());
        let exe = std::env::current_exe()?;
        let started = Instant::now();
        let mut clients =
            Self { procs: Vec::new(), ok: 0, refused: 0, failed: 0, setup: Duration::ZERO };
        let mut started_streams = 0;
        for i in 0..procs {
            let offset = started_streams;
            let count = subs.subscribers / procs + usize::from(i < subs.subscribers % procs);
            started_streams += count;
            let source = Ipv4Addr::new(127, 0, 0, subs.first_source.wrapping_add(i as u8));
            let mut child = Command::new(&exe);
            if let Some(ca) = http::tls_ca() {
                child.arg("--tls-ca").arg(ca);
            }
            if let Some(streams) = http::http2() {
                child.args(["--http2", "--h2-streams", &streams.to_string()]);
            }
            let mut child = child
                .args(["client", "--addr", &addrs[i % addrs.len()].to_string(), "--path", path])
                .args(["--count", &count.to_string(), "--source", &source.to_string()])
                .args(["--events", &events.to_string(), "--offset", &offset.to_string()])
                .args(["--channels", &subs.channels.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            let stdin = child.stdin.take().ok_or("no stdin")?;
            let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
            clients.procs.push((child, stdin, stdout));
        }
        for (_, _, lines) in &mut clients.procs {
            let line = lines.next_line().await?.ok_or("a client process died")?;
            let fields: Vec<usize> =
                line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
            if !line.starts_with("ready") || fields.len() < 3 {
                return Err(format!("unexpected client output: {line}").into());
            }
            clients.ok += fields[0];
            clients.refused += fields[1];
            clients.failed += fields[2];
        }
        clients.setup = started.elapsed();
        Ok(clients)
    }

    /// Waits until every client process says `done n` for each of `events`,
    /// or until `timeout`; returns whether all came.
    async fn wait_done(&mut self, events: &[usize], timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        for (_, _, lines) in &mut self.procs {
            let mut missing: std::collections::HashSet<usize> = events.iter().copied().collect();
            while !missing.is_empty() {
                match tokio::time::timeout_at(deadline, lines.next_line()).await {
                    Ok(Ok(Some(line))) => {
                        if let Some(n) = line.strip_prefix("done ").and_then(|n| n.parse().ok()) {
                            missing.remove(&n);
                        }
                    }
                    _ => return false,
                }
            }
        }
        true
    }

    /// Per event: how many subscribers got it and when the last one did.
    async fn report(&mut self, events: usize) -> Result<(Vec<(u64, u64)>, u64), Error> {
        let mut merged = vec![(0u64, 0u64); events];
        let mut ended = 0;
        for (_, stdin, lines) in &mut self.procs {
            stdin.write_all(b"report\n").await?;
            stdin.flush().await?;
            loop {
                let line = lines.next_line().await?.ok_or("a client process died")?;
                let Some(json) = line.strip_prefix("report ") else { continue };
                let report: Value = serde_json::from_str(json)?;
                ended += report["ended"].as_u64().unwrap_or(0);
                for (n, pair) in report["events"].as_array().ok_or("bad report")?.iter().enumerate()
                {
                    let count = pair[0].as_u64().unwrap_or(0);
                    let last = pair[1].as_u64().unwrap_or(0);
                    merged[n].0 += count;
                    merged[n].1 = merged[n].1.max(last);
                }
                break;
            }
        }
        Ok((merged, ended))
    }

    async fn stop(mut self) {
        for (child, stdin, _) in &mut self.procs {
            let _ = stdin.write_all(b"quit\n").await;
            let _ = child.kill().await;
        }
    }
}

/// Resident memory of all `pids` in bytes, if they are all there.
fn rss_of(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| rss(p)).sum()
}

/// CPU time of all `pids` so far, in seconds, if they are all there.
fn cpu_of(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| cpu_seconds(p)).sum()
}

/// Resident memory of `pid` in bytes, from /proc.
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// CPU time of `pid` so far, in seconds (user + system).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks())
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The `q` quantile (0..=1) of sorted `values`.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn add_distribution(report: &mut Report, name: &str, mut values: Vec<f64>, unit: &'static str) {
    report.samples.insert(name.to_owned(), values.clone());
    values.sort_by(f64::total_cmp);
    report.add(&format!("{name} p50"), quantile(&values, 0.5), unit);
    report.add(&format!("{name} p99"), quantile(&values, 0.99), unit);
    report.add(&format!("{name} max"), quantile(&values, 1.0), unit);
}

fn check_connections(report: &mut Report, clients: &Clients, wanted: usize) {
    report.add("subscribers connected", clients.ok as f64, "");
    report.add("subscribers refused (503)", clients.refused as f64, "");
    report.add("subscribers failed", clients.failed as f64, "");
    report.add("setup time", clients.setup.as_secs_f64(), "s");
    if clients.ok + clients.refused < wanted || clients.failed > 0 {
        report.fail(format!(
            "{} of {wanted} connections failed (neither accepted nor refused with 503)",
            clients.failed
        ));
    }
}

async fn subscribers(target: &Target, subs: &Fleet) -> Result<Report, Error> {
    let mut report = Report::new("subscribers");
    let publisher = Publisher::new(target).await?;
    let before = rss_of(&target.pid);
    let clients = Clients::start(&target.addr, subs, &publisher.subscribe_path(), 1).await?;
    check_connections(&mut report, &clients, subs.subscribers);
    tokio::time::sleep(Duration::from_secs(1)).await; // let allocations settle
    if let (Some(before), Some(after)) = (before, rss_of(&target.pid)) {
        report.add("server RSS before", before as f64 / 1048576.0, "MiB");
        report.add("server RSS after", after as f64 / 1048576.0, "MiB");
        let per = after.saturating_sub(before) as f64 / clients.ok.max(1) as f64;
        report.add("server memory per connection", per, "bytes");
    }
    clients.stop().await;
    Ok(report)
}

/// Signs a fresh bench user up (own collection `collection`) and logs in:
/// (username, token).
async fn sign_up(conn: &mut Conn, collection: &str) -> Result<(String, String), Error> {
    let name = format!("bench-{}", uuid_v4());
    let user = json!({"username": name, "password": "bench-password", "collection_id": collection});
    let created = conn.request("POST", "/users", None, user.to_string().as_bytes()).await?;
    if created.status != 200 {
        return Err(format!("sign-up failed: {}", String::from_utf8_lossy(&created.body)).into());
    }
    let login = json!({"username": name, "password": "bench-password"});
    let response = conn.request("POST", "/login", None, login.to_string().as_bytes()).await?;
    let body: Value = serde_json::from_slice(&response.body)?;
    let jwt = body["jwt"].as_str().map(str::to_owned).ok_or("login failed")?;
    Ok((name, jwt))
}

/// Sends a JSON request that must answer `status`.
async fn expect(
    conn: &mut Conn,
    method: &str,
    path: &str,
    jwt: &str,
    body: &Value,
    status: u16,
) -> Result<(), Error> {
    let response = conn.request(method, path, Some(jwt), body.to_string().as_bytes()).await?;
    if response.status != status {
        let text = String::from_utf8_lossy(&response.body);
        return Err(format!("{method} {path} answered {}: {text}", response.status).into());
    }
    Ok(())
}

async fn fanout(
    target: &Target,
    subs: &Fleet,
    singles: usize,
    burst: usize,
    signups: usize,
) -> Result<Report, Error> {
    let mut report = Report::new("fanout");
    let publisher = Arc::new(Publisher::new(target).await?);
    let total = singles + burst;
    let mut clients =
        Clients::start(&target.addr, subs, &publisher.subscribe_path(), total).await?;
    check_connections(&mut report, &clients, subs.subscribers);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let side = (target.target == Kind::Broker)
        .then(|| (flood(target.addr[0], signups, &stop), probe(target.addr[0], &stop)));
    let mut sent = vec![0u64; total];
    let mut inserts = Vec::new();
    let mut conn = Conn::connect(target.addr[0]).await?;
    for (n, sent_at) in sent.iter_mut().enumerate().take(singles) {
        *sent_at = now_ns();
        publisher.publish(&mut conn, n, 0).await?;
        inserts.push(now_ns().saturating_sub(*sent_at) as f64 / 1e6);
        if !clients.wait_done(&[n], Duration::from_secs(10)).await {
            report.fail(format!("event {n} did not reach every subscriber within 10 s"));
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some((flood, probe)) = side {
        add_distribution(&mut report, "insert latency", inserts, "ms");
        add_distribution(&mut report, "healthz latency", probe.await?, "ms");
        let (answered, accepted) = flood.await?;
        report.add("sign-ups answered", answered as f64, "");
        report.add("sign-ups accepted", accepted as f64, "");
    }
    let burst_start = now_ns();
    publish_all(&publisher, &target.addr, singles..total, 8, |_| 0).await?;
    let burst_events: Vec<usize> = (singles..total).collect();
    if !clients.wait_done(&burst_events, Duration::from_secs(60)).await {
        report.fail("the burst did not reach every subscriber within 60 s".into());
    }
    sent[singles..].iter_mut().for_each(|s| *s = burst_start);
    let (events, ended) = clients.report(total).await?;
    let latencies: Vec<f64> = (0..singles)
        .filter(|&n| events[n].1 > 0)
        .map(|n| events[n].1.saturating_sub(sent[n]) as f64 / 1e6)
        .collect();
    add_distribution(&mut report, "single event to last subscriber", latencies, "ms");
    let burst_end = events[singles..].iter().map(|e| e.1).max().unwrap_or(0);
    report.add("burst delivered to all", burst_end.saturating_sub(burst_start) as f64 / 1e9, "s");
    let expected = (clients.ok * total) as u64;
    let delivered: u64 = events.iter().map(|e| e.0).sum();
    report.add("deliveries expected", expected as f64, "");
    report.add("deliveries lost", expected.saturating_sub(delivered) as f64, "");
    report.add("streams ended early", ended as f64, "");
    if delivered != expected {
        report.fail(format!(
            "{} deliveries lost, {} duplicated",
            expected.saturating_sub(delivered),
            delivered.saturating_sub(expected)
        ));
    }
    if ended > 0 {
        report.fail(format!("{ended} streams ended during the run"));
    }
    clients.stop().await;
    Ok(report)
}

async fn rate(
    target: &Target,
    subs: &Fleet,
    pace: Pace,
    names: usize,
    hook: Option<Hook>,
) -> Result<Report, Error> {
    if target.target != Kind::Broker {
        return Err("rate measures Broker only".into());
    }
    let Pace { rate, seconds } = pace;
    let mut report = Report::new("rate");
    let mut publisher = Publisher::new(target).await?;
    publisher.names = names;
    let publisher = Arc::new(publisher);
    let total = rate * seconds as usize;
    let receiver = match hook {
        Some(hook) => Some(webhook(&publisher, target.addr[0], total, hook == Hook::Dead).await?),
        None => None,
    };
    let listen = if target.addr.len() > 1 { &target.addr[1..] } else { &target.addr[..] };
    let mut clients = Clients::start(listen, subs, &publisher.subscribe_path(), total).await?;
    check_connections(&mut report, &clients, subs.subscribers);
    // Sixteen lanes on the first node, each sending on its own schedule.
    const LANES: usize = 16;
    let sent = Arc::new(std::sync::Mutex::new(vec![0u64; total]));
    let start = Instant::now() + Duration::from_millis(100);
    let mut tasks = Vec::new();
    for lane in 0..LANES {
        let (publisher, sent, addr) = (publisher.clone(), sent.clone(), target.addr[0]);
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr).await?;
            let mut answered = Vec::new();
            for n in (lane..total).step_by(LANES) {
                let at = start + Duration::from_secs_f64(n as f64 / rate as f64);
                tokio::time::sleep_until(at.into()).await;
                let began = now_ns();
                sent.lock().unwrap_or_else(|e| e.into_inner())[n] = began;
                publisher.publish(&mut conn, n, 0).await?;
                answered.push(now_ns().saturating_sub(began) as f64 / 1e6);
            }
            Ok::<_, Error>(answered)
        }));
    }
    let mut inserts = Vec::new();
    for task in tasks {
        inserts.extend(task.await??);
    }
    add_distribution(&mut report, "insert latency", inserts, "ms");
    report.add("publish time", start.elapsed().as_secs_f64(), "s");
    report.add("events per second", total as f64 / start.elapsed().as_secs_f64(), "/s");
    let all: Vec<usize> = (0..total).collect();
    if !clients.wait_done(&all, Duration::from_secs(30)).await {
        report.fail("not every event reached every subscriber within 30 s".into());
    }
    let (events, ended) = clients.report(total).await?;
    let sent = sent.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let latencies: Vec<f64> = (0..total)
        .filter(|&n| events[n].1 > 0)
        .map(|n| events[n].1.saturating_sub(sent[n]) as f64 / 1e6)
        .collect();
    add_distribution(&mut report, "insert to last subscriber", latencies, "ms");
    if let (Some(receiver), Some(Hook::Live)) = (&receiver, hook) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while receiver.arrived() < total && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let arrivals = receiver.arrivals.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let lags: Vec<f64> = (0..total)
            .filter(|&n| arrivals[n] > 0)
            .map(|n| arrivals[n].saturating_sub(sent[n]) as f64 / 1e6)
            .collect();
        report.add("webhook events lost", (total - lags.len()) as f64, "");
        add_distribution(&mut report, "insert to webhook", lags, "ms");
        if receiver.arrived() < total {
            report.fail(format!(
                "{} events did not reach the webhook within 30 s",
                total - receiver.arrived()
            ));
        }
    }
    if let Some(receiver) = &receiver {
        let requests = receiver.requests.load(std::sync::atomic::Ordering::Relaxed);
        report.add("webhook requests", requests as f64, "");
        let connections = receiver.connections.load(std::sync::atomic::Ordering::Relaxed);
        report.add("webhook connections", connections as f64, "");
    }
    let expected = (clients.ok * total) as u64;
    let delivered: u64 = events.iter().map(|e| e.0).sum();
    report.add("deliveries expected", expected as f64, "");
    report.add("deliveries lost", expected.saturating_sub(delivered) as f64, "");
    if delivered != expected || ended > 0 {
        report.fail(format!(
            "{} deliveries lost, {ended} streams ended",
            expected.saturating_sub(delivered)
        ));
    }
    clients.stop().await;
    Ok(report)
}

/// Sign-ups at `rate` a second (open loop, over up to 256 connections)
/// until `stop`: how many were answered, and how many accepted.
fn flood(
    addr: SocketAddr,
    rate: usize,
    stop: &Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(usize, usize)> {
    let stop = stop.clone();
    tokio::spawn(async move {
        if rate == 0 {
            return (0, 0);
        }
        const LANES: usize = 256;
        let start = Instant::now();
        let mut lanes = Vec::new();
        for lane in 0..LANES {
            let stop = stop.clone();
            lanes.push(tokio::spawn(async move {
                let (mut answered, mut accepted) = (0, 0);
                let Ok(mut conn) = Conn::connect(addr).await else { return (0, 0) };
                for n in (lane..).step_by(LANES) {
                    let at = start + Duration::from_secs_f64(n as f64 / rate as f64);
                    tokio::time::sleep_until(at.into()).await;
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let body = json!({"username": format!("flood-{}", uuid_v4()), "password": "flood-password", "collection_id": uuid_v4()});
                    let Ok(response) = conn.request("POST", "/users", None, body.to_string().as_bytes()).await else { break };
                    answered += 1;
                    accepted += usize::from(response.status == 200);
                }
                (answered, accepted)
            }));
        }
        let mut totals = (0, 0);
        for lane in lanes {
            let (answered, accepted) = lane.await.unwrap_or((0, 0));
            totals = (totals.0 + answered, totals.1 + accepted);
        }
        totals
    })
}

/// `GET /healthz` every 20 ms until `stop`: each answer's latency, in ms.
fn probe(
    addr: SocketAddr,
    stop: &Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<f64>> {
    let stop = stop.clone();
    tokio::spawn(async move {
        let mut latencies = Vec::new();
        let Ok(mut conn) = Conn::connect(addr).await else { return latencies };
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let began = now_ns();
            if conn.request("GET", "/healthz", None, b"").await.is_err() {
                break;
            }
            latencies.push(now_ns().saturating_sub(began) as f64 / 1e6);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        latencies
    })
}

/// Claims the publisher's collection and adds a webhook to a receiver of
/// this process.
async fn webhook(
    publisher: &Publisher,
    addr: SocketAddr,
    total: usize,
    dead: bool,
) -> Result<webhook::Receiver, Error> {
    let receiver = webhook::Receiver::start(total, dead).await?;
    let jwt = publisher.jwt.as_deref().ok_or("no token")?;
    let mut conn = Conn::connect(addr).await?;
    let claim = json!({"collection_id": publisher.collection, "private": false});
    // Already claimed (--private): fine.
    let _ = conn.request("POST", "/collections", Some(jwt), claim.to_string().as_bytes()).await?;
    let path = format!("/collections/{}/webhooks", publisher.collection);
    let hook = json!({"url": format!("http://{}/hook", receiver.addr)});
    expect(&mut conn, "POST", &path, jwt, &hook, 201).await?;
    Ok(receiver)
}

/// The channel every stream also reads with `--broadcasts`.
const SHARED: usize = 0xffff_ffff_ffff;

/// Publishes event `n` into channel `channel` (Broker: a collection named
/// from `prefix` and the channel).
async fn send_to(
    publisher: &Publisher,
    conn: &mut Conn,
    prefix: &str,
    (channel, n): (usize, usize),
    signal: bool,
) -> Result<(), Error> {
    let response = match publisher.kind {
        Kind::Broker => {
            let collection = format!("{prefix}-0000-4000-8000-{channel:012x}");
            let data = json!({"n": n});
            let (path, body) = if signal {
                ("/signal", json!({"event": "bench", "collection_id": collection, "data": data}))
            } else {
                (
                    "/insert",
                    json!({"event": "bench", "collection_id": collection, "timestamp": 0, "data": data}),
                )
            };
            conn.request("POST", path, publisher.jwt.as_deref(), body.to_string().as_bytes())
                .await?
        }
        Kind::Nchan => {
            let path = format!("/pub/c{channel:012x}");
            conn.request("POST", &path, None, format!("{{\"n\":{n}}}").as_bytes()).await?
        }
    };
    if !(200..300).contains(&response.status) {
        return Err(format!("publishing {n} got {}", response.status).into());
    }
    Ok(())
}

/// What `channels` sends.
struct Load {
    pace: Pace,
    publishers: usize,
    broadcasts: usize,
    signals: bool,
    churn: usize,
}

async fn channels(target: &Target, subs: &Fleet, load: Load) -> Result<Report, Error> {
    let Load { pace: Pace { rate, seconds }, publishers, broadcasts, signals, churn } = load;
    if (signals || churn > 0) && target.target != Kind::Broker {
        return Err("signals and churn are Broker's".into());
    }
    let mut report = Report::new("channels");
    let publisher = Arc::new(Publisher::new(target).await?);
    let prefix = uuid_v4()[..8].to_owned();
    let sub_path = match (target.target, broadcasts > 0) {
        (Kind::Broker, false) => format!("/events?collection_id={prefix}-0000-4000-8000-{{c}}"),
        (Kind::Broker, true) => format!(
            "/events?collection_id={prefix}-0000-4000-8000-{{c}}&collection_id={prefix}-0000-4000-8000-{SHARED:012x}"
        ),
        (Kind::Nchan, false) => "/sub/c{c}".to_owned(),
        (Kind::Nchan, true) => "/subm/c{c}".to_owned(),
    };
    let sub_path = if signals { sub_path + "&signals=true&presence=true" } else { sub_path };
    let total = rate * seconds as usize;
    let mut clients = Clients::start(&target.addr, subs, &sub_path, total + broadcasts).await?;
    check_connections(&mut report, &clients, subs.subscribers);
    // Events go to the channels in turn; each has the streams i ≡ c.
    let streams = subs.subscribers.max(1);
    let channels = if subs.channels > 0 { subs.channels } else { streams };
    let on = |c: usize| {
        (subs.subscribers / channels + usize::from(c < subs.subscribers % channels)) as u64
    };
    let (cpu_before, rss_before) = (cpu_of(&target.pid), rss_of(&target.pid));
    // Lanes on every address, each sending on its own schedule.
    let lanes = publishers.max(1);
    let sent = Arc::new(std::sync::Mutex::new(vec![0u64; total + broadcasts]));
    let start = Instant::now() + Duration::from_millis(100);
    let mut tasks = Vec::new();
    for lane in 0..lanes {
        let (publisher, sent, prefix) = (publisher.clone(), sent.clone(), prefix.clone());
        let addr = target.addr[lane % target.addr.len()];
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr).await?;
            for n in (lane..total).step_by(lanes) {
                let at = start + Duration::from_secs_f64(n as f64 / rate as f64);
                tokio::time::sleep_until(at.into()).await;
                sent.lock().unwrap_or_else(|e| e.into_inner())[n] = now_ns();
                send_to(&publisher, &mut conn, &prefix, (n % channels, n), signals).await?;
            }
            Ok::<_, Error>(())
        }));
    }
    let churning = (churn > 0).then(|| {
        let (jwt, prefix) = (publisher.jwt.clone().unwrap_or_default(), prefix.clone());
        tokio::spawn(churn_streams(
            target.addr.clone(),
            jwt,
            prefix,
            (churn, seconds, channels),
            start,
        ))
    });
    // Broadcasts to every stream, one at a time, while the load runs.
    let mut conn = Conn::connect(target.addr[0]).await?;
    tokio::time::sleep_until((start + Duration::from_secs(1)).into()).await;
    for n in total..total + broadcasts {
        sent.lock().unwrap_or_else(|e| e.into_inner())[n] = now_ns();
        send_to(&publisher, &mut conn, &prefix, (SHARED, n), false).await?;
        if !clients.wait_done(&[n], Duration::from_secs(30)).await {
            report.fail(format!("broadcast {n} did not reach every stream within 30 s"));
            break;
        }
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    report.add("publish time", elapsed, "s");
    report.add("events per second", total as f64 / elapsed, "/s");
    if let Some(churning) = churning {
        let (opened, failed) = churning.await?;
        report.add("churn streams opened", opened as f64, "");
        if failed > 0 {
            report.fail(format!("{failed} churn streams failed"));
        }
    }
    // Every event reaches the streams of its channel: wait until each was
    // received that often. With no stream open (to measure the insert
    // alone), nothing arrives.
    let singles: u64 = (0..total).map(|n| on(n % channels)).sum();
    let expected = if clients.ok == 0 { 0 } else { singles + (broadcasts * clients.ok) as u64 };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (events, ended) = loop {
        let (events, ended) = clients.report(total + broadcasts).await?;
        let delivered: u64 = events.iter().map(|e| e.0).sum();
        if delivered >= expected || Instant::now() > deadline {
            break (events, ended);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if let (Some(before), Some(after)) = (cpu_before, cpu_of(&target.pid)) {
        report.add("server CPU per event", (after - before) / total.max(1) as f64 * 1e6, "µs");
    }
    if let (Some(before), Some(after)) = (rss_before, rss_of(&target.pid)) {
        report.add("server RSS before publishing", before as f64 / 1048576.0, "MiB");
        report.add("server RSS after", after as f64 / 1048576.0, "MiB");
    }
    let sent = sent.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let latency = |range: std::ops::Range<usize>| -> Vec<f64> {
        range
            .filter(|&n| events[n].1 > 0)
            .map(|n| events[n].1.saturating_sub(sent[n]) as f64 / 1e6)
            .collect()
    };
    let what = if signals { "signal to its last receiver" } else { "insert to its last receiver" };
    add_distribution(&mut report, what, latency(0..total), "ms");
    if broadcasts > 0 {
        let all = latency(total..total + broadcasts);
        add_distribution(&mut report, "broadcast to last stream", all, "ms");
    }
    let delivered: u64 = events.iter().map(|e| e.0).sum();
    report.add("deliveries expected", expected as f64, "");
    report.add("deliveries", delivered as f64, "");
    report.add("streams ended early", ended as f64, "");
    if delivered != expected || ended > 0 {
        report.fail(format!("{delivered} of {expected} delivered, {ended} streams ended"));
    }
    clients.stop().await;
    Ok(report)
}

/// Opens `per_second` streams a second for `seconds` from `start`, with
/// `jwt`, each on the next of `channels` and closed a second later, so
/// that its user joins and leaves; returns how many opened and failed.
async fn churn_streams(
    addrs: Vec<SocketAddr>,
    jwt: String,
    prefix: String,
    (per_second, seconds, channels): (usize, u64, usize),
    start: Instant,
) -> (usize, usize) {
    let mut streams = Vec::new();
    for k in 0..per_second * seconds as usize {
        let at = start + Duration::from_secs_f64(k as f64 / per_second as f64);
        tokio::time::sleep_until(at.into()).await;
        let (addr, jwt) = (addrs[k % addrs.len()], jwt.clone());
        let path = format!("/events?collection_id={prefix}-0000-4000-8000-{:012x}", k % channels);
        streams.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await?;
            let head = format!(
                "GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {jwt}\r\n\r\n"
            );
            tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes()).await?;
            let mut first = [0u8; 12];
            tokio::io::AsyncReadExt::read_exact(&mut stream, &mut first).await?;
            if &first != b"HTTP/1.1 200" {
                return Err(
                    format!("a churn stream got {}", String::from_utf8_lossy(&first)).into()
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, Error>(())
        }));
    }
    let mut failed = 0;
    for stream in &mut streams {
        if !matches!(stream.await, Ok(Ok(()))) {
            failed += 1;
        }
    }
    (streams.len(), failed)
}

async fn insert(target: &Target, concurrency: usize, seconds: u64) -> Result<Report, Error> {
    if target.target != Kind::Broker {
        return Err("insert measures Broker only".into());
    }
    let mut report = Report::new("insert");
    let publisher = Arc::new(Publisher::new(target).await?);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let cpu_before = cpu_of(&target.pid);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let publisher = publisher.clone();
        let addr = target.addr[worker % target.addr.len()];
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr).await?;
            let mut latencies = Vec::new();
            let mut n = worker;
            while Instant::now() < deadline {
                let t = Instant::now();
                publisher.publish(&mut conn, n, 0).await?;
                latencies.push(t.elapsed().as_secs_f64() * 1e3);
                n += concurrency;
            }
            Ok::<_, Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    report.add("publishers", concurrency as f64, "");
    report.add("acknowledged inserts", latencies.len() as f64, "");
    report.add("inserts per second", latencies.len() as f64 / elapsed, "/s");
    if let (Some(before), Some(after)) = (cpu_before, cpu_of(&target.pid)) {
        report.add("server CPU", (after - before) / elapsed * 100.0, "% of a core");
    }
    add_distribution(&mut report, "insert latency", latencies, "ms");
    Ok(report)
}

async fn schedule(target: &Target, events: usize, window: u64, idle: u64) -> Result<Report, Error> {
    if target.target != Kind::Broker {
        return Err("schedule measures Broker only".into());
    }
    let mut report = Report::new("schedule");
    let publisher = Arc::new(Publisher::new(target).await?);
    // One subscriber, in this process, records when each event arrives; like
    // a browser, it resumes with Last-Event-ID if the server drops it.
    let path = publisher.subscribe_path();
    let addr = target.addr[0];
    let arrivals = Arc::new(std::sync::Mutex::new(vec![0u64; events]));
    let reconnects = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let twice = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel::<Result<(), String>>();
    let reader = tokio::spawn({
        let (arrivals, reconnects, twice) = (arrivals.clone(), reconnects.clone(), twice.clone());
        async move {
            use std::sync::atomic::Ordering::Relaxed;
            use tokio::io::AsyncReadExt;
            let mut decoder = http::SseDecoder::new(false);
            let seen = std::sync::atomic::AtomicUsize::new(0);
            let mut subscribed_tx = Some(subscribed_tx);
            let mut on_data = |data: &[u8]| {
                let mut arrivals = arrivals.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(slot) = http::payload_number(data).and_then(|n| arrivals.get_mut(n)) {
                    if *slot == 0 {
                        *slot = now_ns();
                        seen.fetch_add(1, Relaxed);
                    } else {
                        twice.fetch_add(1, Relaxed);
                    }
                }
            };
            while seen.load(Relaxed) < events {
                let resume = decoder.last_id.as_ref().map(|id| format!("Last-Event-ID: {id}\r\n"));
                let request = format!(
                    "GET {path} HTTP/1.1\r\nHost: bench\r\n{}\r\n",
                    resume.unwrap_or_default()
                );
                let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else { return };
                let Ok(mut stream) = http::secure(tcp).await else { return };
                if stream.write_all(request.as_bytes()).await.is_err() {
                    return;
                }
                let (status, chunked, rest) = match http::read_head(&mut stream).await {
                    Ok(head) => head,
                    Err(_) => return,
                };
                if let Some(tx) = subscribed_tx.take() {
                    let _ = tx.send(if status == 200 {
                        Ok(())
                    } else {
                        Err(format!("subscribing got {status}"))
                    });
                } else {
                    reconnects.fetch_add(1, Relaxed);
                }
                if status != 200 {
                    return;
                }
                decoder.restart(chunked);
                decoder.feed(&rest, &mut on_data);
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || seen.load(Relaxed) >= events {
                        break;
                    }
                    decoder.feed(&buf[..n], &mut on_data);
                }
            }
        }
    });
    subscribed.await.map_err(|_| "the subscriber failed")??;
    // Due times start after the inserts are done (at ~5,000/s, to be safe) and
    // the idle period.
    let now = now_ns() / 1_000_000_000;
    let first_due = now + events as u64 / 5000 + 3 + idle;
    let due = move |n: usize| (first_due + n as u64 * window / events.max(1) as u64) as i64;
    let started = Instant::now();
    publish_all(&publisher, &target.addr, 0..events, 64, due).await?;
    report.add("future events inserted", events as f64, "");
    report.add("insert time", started.elapsed().as_secs_f64(), "s");
    let idle_start = now_ns();
    let idle_end = (first_due * 1_000_000_000).saturating_sub(500_000_000);
    if idle_end > idle_start + 1_000_000_000 {
        let cpu_before = cpu_of(&target.pid);
        tokio::time::sleep(Duration::from_nanos(idle_end - idle_start)).await;
        if let (Some(before), Some(after)) = (cpu_before, cpu_of(&target.pid)) {
            let secs = (idle_end - idle_start) as f64 / 1e9;
            report.add("idle seconds measured", secs, "s");
            report.add("server CPU while idle", (after - before) / secs * 100.0, "% of a core");
        }
    } else {
        report.fail("inserting took too long to leave an idle period; lower --events".into());
    }
    let wait = Duration::from_secs(window + 30);
    let _ = tokio::time::timeout(wait, reader).await;
    let arrivals = arrivals.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let missing = arrivals.iter().filter(|&&t| t == 0).count();
    let lateness: Vec<f64> = arrivals
        .iter()
        .enumerate()
        .filter(|&(_, &t)| t > 0)
        .map(|(n, &t)| (t as f64 - due(n) as f64 * 1e9) / 1e6)
        .collect();
    let early = lateness.iter().filter(|&&l| l < 0.0).count();
    add_distribution(&mut report, "publication lateness", lateness, "ms");
    report.add("events missing", missing as f64, "");
    report.add(
        "subscriber reconnects",
        reconnects.load(std::sync::atomic::Ordering::Relaxed) as f64,
        "",
    );
    report.add("events published early", early as f64, "");
    let twice = twice.load(std::sync::atomic::Ordering::Relaxed);
    report.add("events received twice", twice as f64, "");
    if twice > 0 {
        report.fail(format!("{twice} events arrived twice"));
    }
    if missing > 0 {
        report.fail(format!("{missing} events never arrived"));
    }
    if early > 0 {
        report.fail(format!("{early} events arrived before their second"));
    }
    Ok(report)
}

fn compare(broker: &PathBuf, nchan: &PathBuf) -> Result<(), Error> {
    let read =
        |p: &PathBuf| -> Result<Value, Error> { Ok(serde_json::from_slice(&std::fs::read(p)?)?) };
    let (b, n) = (read(broker)?, read(nchan)?);
    println!(
        "{} — Broker vs nginx + nchan (ratio = Broker / nchan)",
        b["command"].as_str().unwrap_or("?")
    );
    println!("  {:<32} {:>14} {:>14} {:>8}", "metric", "broker", "nchan", "ratio");
    if let Some(metrics) = b["metrics"].as_object() {
        for (name, value) in metrics {
            let (bv, nv) = (
                value.as_f64().unwrap_or(f64::NAN),
                n["metrics"][name].as_f64().unwrap_or(f64::NAN),
            );
            let unit = b["units"][name].as_str().unwrap_or("");
            println!("  {:<32} {:>14.3} {:>14.3} {:>8.3}  {unit}", name, bv, nv, bv / nv);
        }
    }
    Ok(())
}
