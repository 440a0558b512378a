//! Wall-clock time, in UNIX milliseconds.
//!
//! Production uses the system clock; tests use a [`ManualClock`] that only
//! moves when told to, so that scheduled publication can be tested exactly
//! and without sleeping.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// Longest single timer wait: an upper bound on how late a clock jump (NTP
/// step, suspended VM) can be noticed.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// The source of "now" for the scheduler and for token expiry.
#[derive(Clone, Debug, Default)]
pub enum Clock {
    /// The operating system's real-time clock.
    #[default]
    System,
    /// A clock moved by hand, for tests.
    Manual(Arc<ManualClock>),
}

impl Clock {
    /// A manual clock set to `millis` since the UNIX epoch, and its handle.
    pub fn manual(millis: i64) -> (Self, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock(watch::Sender::new(millis)));
        (Self::Manual(clock.clone()), clock)
    }

    /// Milliseconds since the UNIX epoch.
    pub fn now_millis(&self) -> i64 {
        match self {
            Self::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            Self::Manual(clock) => *clock.0.borrow(),
        }
    }

    /// Whole seconds since the UNIX epoch.
    pub fn now_secs(&self) -> i64 {
        self.now_millis().div_euclid(1000)
    }

    /// Waits until the clock reads at least `millis`, or a little less if the
    /// wait is long (callers re-read the clock and wait again).
    pub async fn sleep_until(&self, millis: i64) {
        match self {
            Self::System => {
                let wait = u64::try_from(millis.saturating_sub(self.now_millis())).unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(wait).min(MAX_SLEEP)).await;
            }
            Self::Manual(clock) => {
                let mut rx = clock.0.subscribe();
                // The sender lives as long as `clock`, so this cannot fail.
                let _ = rx.wait_for(|now| *now >= millis).await;
            }
        }
    }
}

/// A clock for tests: it stands still until [`ManualClock::set`] or
/// [`ManualClock::advance`] moves it.
#[derive(Debug)]
pub struct ManualClock(watch::Sender<i64>);

impl ManualClock {
    /// Sets the time, in milliseconds since the UNIX epoch, waking sleepers.
    pub fn set(&self, millis: i64) {
        self.0.send_replace(millis);
    }

    /// Moves the time forward by `millis`, waking sleepers.
    pub fn advance(&self, millis: i64) {
        self.0.send_modify(|now| *now += millis);
    }
}
