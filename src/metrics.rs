//! Counters and histograms, rendered in the Prometheus text format.
//!
//! Hand-rolled on atomics and two small maps: Broker needs a dozen series,
//! not a metrics framework.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 13] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// A latency histogram.
#[derive(Debug, Default, Clone)]
pub struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|le| secs <= *le) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum += secs;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (le, n) in BUCKETS.iter().zip(self.counts) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// Requests of one route: counts by status, and latency.
#[derive(Debug, Default)]
struct Route {
    statuses: BTreeMap<u16, u64>,
    latency: Histogram,
}

/// Every metric Broker exports.
#[derive(Debug, Default)]
pub struct Metrics {
    routes: Mutex<BTreeMap<String, Route>>,
    commits: Mutex<Histogram>,
    /// Events accepted by `POST /insert`.
    pub inserted: AtomicU64,
    /// Events published.
    pub published: AtomicU64,
    /// Events cancelled.
    pub cancelled: AtomicU64,
    /// Event frames handed to subscribers' connections.
    pub deliveries: AtomicU64,
    /// Event frames streams looked at and did not write (not what they
    /// named, already sent, or not theirs to read): with the hub's index,
    /// next to none.
    pub skipped: AtomicU64,
    /// Subscribers disconnected for falling behind.
    pub slow_dropped: AtomicU64,
    /// Signals this node fanned out (sent here or on another node).
    pub signals: AtomicU64,
    /// Signal frames queued for this node's streams.
    pub signal_deliveries: AtomicU64,
    /// Events this node deleted for retention.
    pub expired: AtomicU64,
    /// Webhook requests this node sent that were answered 2xx.
    pub webhooks_sent: AtomicU64,
    /// Webhook requests this node sent that failed (to be retried).
    pub webhooks_failed: AtomicU64,
}

/// Gauges read at scrape time.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Open event streams.
    pub subscribers: usize,
    /// Events waiting for their time.
    pub pending: u64,
    /// Usernames and client addresses made to wait before their next login.
    pub throttled: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Metrics {
    /// Records one HTTP request.
    pub fn request(&self, route: &str, status: u16, elapsed: Duration) {
        let mut routes = lock(&self.routes);
        // One lock, and no allocation once the route has been seen.
        if !routes.contains_key(route) {
            routes.insert(route.to_owned(), Route::default());
        }
        if let Some(entry) = routes.get_mut(route) {
            *entry.statuses.entry(status).or_default() += 1;
            entry.latency.observe(elapsed);
        }
    }

    /// Records how long a store commit took.
    pub fn commit(&self, elapsed: Duration) {
        lock(&self.commits).observe(elapsed);
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let name = "broker_http_requests_total";
        let _ = writeln!(
            out,
            "# HELP {name} HTTP requests by route and status.\n# TYPE {name} counter"
        );
        let routes = lock(&self.routes);
        for (route, entry) in routes.iter() {
            for (status, n) in &entry.statuses {
                let _ = writeln!(out, "{name}{{route=\"{route}\",status=\"{status}\"}} {n}");
            }
        }
        let name = "broker_http_request_duration_seconds";
        let _ =
            writeln!(out, "# HELP {name} HTTP request latency by route.\n# TYPE {name} histogram");
        for (route, entry) in routes.iter() {
            entry.latency.render(&mut out, name, &format!("route=\"{route}\""));
        }
        drop(routes);
        let counters = [
            ("broker_events_inserted_total", "Events inserted.", &self.inserted),
            ("broker_events_published_total", "Events published.", &self.published),
            ("broker_events_cancelled_total", "Events cancelled.", &self.cancelled),
            ("broker_deliveries_total", "Event frames written to subscribers.", &self.deliveries),
            (
                "broker_frames_skipped_total",
                "Event frames that streams looked at and did not write.",
                &self.skipped,
            ),
            (
                "broker_slow_consumers_dropped_total",
                "Subscribers disconnected for falling behind.",
                &self.slow_dropped,
            ),
            ("broker_signals_total", "Signals fanned out by this node.", &self.signals),
            (
                "broker_signal_deliveries_total",
                "Signal frames queued for this node's streams.",
                &self.signal_deliveries,
            ),
            (
                "broker_events_expired_total",
                "Events deleted for retention by this node.",
                &self.expired,
            ),
            (
                "broker_webhooks_sent_total",
                "Webhook requests answered 2xx, sent by this node.",
                &self.webhooks_sent,
            ),
            (
                "broker_webhooks_failed_total",
                "Webhook requests that failed (and are retried), sent by this node.",
                &self.webhooks_failed,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let gauges = [
            ("broker_subscribers", "Open event streams.", gauges.subscribers as u64),
            ("broker_scheduled_events_pending", "Events waiting for their time.", gauges.pending),
            (
                "broker_logins_throttled",
                "Usernames and client addresses made to wait before their next login attempt.",
                gauges.throttled as u64,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
        let name = "broker_store_commit_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Store commit latency (one group commit, fsync included).\n# TYPE {name} histogram"
        );
        lock(&self.commits).render(&mut out, name, "");
        out
    }
}
