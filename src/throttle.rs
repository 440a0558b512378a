//! Rate limits kept in memory: failed logins, inserts, signals, sign-ups.
//!
//! [`Failures`] slows down password guessing: after `limit` failed logins
//! for one key (a username, known or not, or a client address), each
//! further attempt is refused until a delay has passed, 1 second after the
//! limit is reached and doubling with each further failure up to the
//! window; a key with no failure for a whole window is forgotten. On a
//! shared store the nodes pool these counts (see [`Failures::exchange`]).
//! [`Rate`] is a token bucket per key: inserts and signals per user,
//! sign-ups per address. Rates count per node (sign-ups in a bucket the
//! nodes share, [`Rate::take_shared`]),
//! against Broker's [`Clock`]; memory is bounded by forgetting idle keys.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};

use axum::http::HeaderMap;
use uuid::Uuid;

use crate::clock::Clock;
use crate::store::{Store, StoreError};

/// Most keys one limiter remembers; beyond it, idle keys are forgotten first.
const MAX_KEYS: usize = 100_000;

/// Failed attempts per key, with the delay they earned. Keys are kept as
/// 64-bit digests (of SHA-256, so no client can make them collide, and the
/// same on every node), so a client that sends huge usernames costs the
/// table no more than one that sends short ones.
///
/// On a shared store the nodes pool their counts: [`Failures::exchange`],
/// once a second, adds this node's new failures to the store's and takes in
/// the others', so a cluster allows the attempts of one node plus those
/// made within that second.
#[derive(Debug)]
pub struct Failures<K: ?Sized> {
    limit: u32,
    window_ms: i64,
    keys: Mutex<HashMap<u64, Strikes>>,
    /// Failures and successes not yet told to the other nodes, and when
    /// their counts were last read.
    unshared: Mutex<Unshared>,
    of: PhantomData<fn(&K)>,
}

#[derive(Debug, Default)]
struct Unshared {
    /// Whether this node exchanges at all (on a shared store).
    sharing: bool,
    added: HashMap<u64, i32>,
    cleared: Vec<u64>,
    read_at: i64,
}

/// The first 8 bytes of the SHA-256 of `key` as [`Hash`] feeds it: the
/// same on every node.
fn digest<K: Hash + ?Sized>(key: &K) -> u64 {
    let mut digest = Digest(ring::digest::Context::new(&ring::digest::SHA256));
    key.hash(&mut digest);
    digest.finish()
}

/// A [`Hasher`] giving the first 8 bytes of the SHA-256 of what it is fed.
struct Digest(ring::digest::Context);

impl Hasher for Digest {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest = self.0.clone().finish();
        let mut first = [0; 8];
        first.copy_from_slice(&digest.as_ref()[..8]);
        u64::from_le_bytes(first)
    }
}

#[derive(Debug, Clone, Copy)]
struct Strikes {
    count: u32,
    last: i64,
    blocked_until: i64,
}

impl<K: Hash + ?Sized> Failures<K> {
    /// `limit` failures (0: no limit) within `window_secs` of each other.
    pub fn new(limit: u32, window_secs: u64) -> Self {
        let window_ms = i64::try_from(window_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let (keys, unshared, of) = (Mutex::default(), Mutex::default(), PhantomData);
        Self { limit, window_ms, keys, unshared, of }
    }

    /// The delay `count` failures earn, the last at `last`: until when.
    fn blocked_until(&self, count: u32, last: i64) -> i64 {
        if count < self.limit {
            return 0;
        }
        let doublings = (count - self.limit).min(30);
        last.saturating_add((1000i64 << doublings).min(self.window_ms))
    }

    /// Seconds until `key` may try again, if it must wait.
    pub fn wait(&self, key: &K, clock: &Clock) -> Option<u64> {
        let now = clock.now_millis();
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let until = keys.get(&digest(key))?.blocked_until;
        (until > now).then(|| u64::try_from((until - now + 999) / 1000).unwrap_or(1))
    }

    /// How many keys must wait before their next attempt.
    pub fn throttled(&self, clock: &Clock) -> usize {
        let now = clock.now_millis();
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        keys.values().filter(|s| s.blocked_until > now).count()
    }

    /// Counts a failure of `key`.
    pub fn fail(&self, key: &K, clock: &Clock) {
        if self.limit == 0 {
            return;
        }
        let (now, key) = (clock.now_millis(), digest(key));
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if keys.len() >= MAX_KEYS && !keys.contains_key(&key) {
            let window = self.window_ms;
            keys.retain(|_, s| now - s.last <= window);
            if keys.len() >= MAX_KEYS {
                keys.clear(); // under a flood of distinct keys, start over
            }
        }
        let strikes = keys.entry(key).or_insert(Strikes { count: 0, last: now, blocked_until: 0 });
        if now - strikes.last > self.window_ms {
            strikes.count = 0;
        }
        strikes.count = strikes.count.saturating_add(1);
        strikes.last = now;
        strikes.blocked_until = strikes.blocked_until.max(self.blocked_until(strikes.count, now));
        drop(keys);
        let mut unshared = self.unshared.lock().unwrap_or_else(PoisonError::into_inner);
        if unshared.sharing && unshared.added.len() < MAX_KEYS {
            *unshared.added.entry(key).or_default() += 1;
        }
    }

    /// Forgets `key`'s failures (after a successful login).
    pub fn clear(&self, key: &K) {
        let key = digest(key);
        if self.keys.lock().unwrap_or_else(PoisonError::into_inner).remove(&key).is_some() {
            let mut unshared = self.unshared.lock().unwrap_or_else(PoisonError::into_inner);
            unshared.added.remove(&key);
            if unshared.sharing && unshared.cleared.len() < MAX_KEYS {
                unshared.cleared.push(key);
            }
        }
    }

    /// Tells a shared store this node's failures and successes since the
    /// last exchange, and takes in the counts other nodes changed.
    pub async fn exchange(&self, store: &dyn Store, clock: &Clock) -> Result<(), StoreError> {
        if self.limit == 0 {
            return Ok(());
        }
        let now = clock.now_millis();
        let (added, cleared, since) = {
            let mut unshared = self.unshared.lock().unwrap_or_else(PoisonError::into_inner);
            unshared.sharing = true;
            let added = std::mem::take(&mut unshared.added);
            let cleared = std::mem::take(&mut unshared.cleared);
            (added, cleared, std::mem::replace(&mut unshared.read_at, now))
        };
        let signed = |k: u64| i64::from_le_bytes(k.to_le_bytes());
        let added: Vec<(i64, i32)> = added.into_iter().map(|(k, n)| (signed(k), n)).collect();
        let cleared: Vec<i64> = cleared.into_iter().map(signed).collect();
        // Read from a second back: a count another node wrote just before
        // this node's clock reached `since` is not missed.
        let counts =
            store.login_failures(added, cleared, now, since - 1000, self.window_ms).await?;
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, count, last) in counts {
            let count = u32::try_from(count).unwrap_or(0);
            let key = u64::from_le_bytes(key.to_le_bytes());
            if keys.len() >= MAX_KEYS && !keys.contains_key(&key) {
                continue;
            }
            let strikes = keys.entry(key).or_insert(Strikes { count: 0, last, blocked_until: 0 });
            if last >= strikes.last {
                // The pooled count is as new as this node's: it is the count
                // (0 after a success on any node).
                *strikes = Strikes { count, last, blocked_until: self.blocked_until(count, last) };
            } else if count > strikes.count {
                // This node failed since: its own failures are not in yet.
                strikes.count = count;
                strikes.blocked_until = strikes.blocked_until.max(self.blocked_until(count, last));
            }
        }
        Ok(())
    }
}

/// A token bucket per key (a user, an address): `burst` at once, refilled
/// at `per_second`.
#[derive(Debug)]
pub struct Rate<K = Uuid> {
    burst: f64,
    per_second: f64,
    keys: Mutex<HashMap<K, (f64, i64)>>,
}

impl<K: Hash + Eq> Rate<K> {
    /// `per_second` a second, in bursts of as many; 0 means no limit.
    pub fn new(per_second: u32) -> Self {
        Self::per(per_second, 1)
    }

    /// `n` every `seconds`, in bursts of `n`; 0 means no limit.
    pub fn per(n: u32, seconds: u32) -> Self {
        let per_second = f64::from(n) / f64::from(seconds.max(1));
        Self { burst: f64::from(n), per_second, keys: Mutex::default() }
    }

    /// Takes one token from `key`'s bucket, or says how many seconds
    /// until one is available.
    pub fn take(&self, key: K, clock: &Clock) -> Result<(), u64> {
        if self.burst == 0.0 {
            return Ok(());
        }
        let (now, burst, rate) = (clock.now_millis(), self.burst, self.per_second);
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if keys.len() >= MAX_KEYS && !keys.contains_key(&key) {
            // A full bucket is the same as none.
            keys.retain(|_, (tokens, at)| *tokens + (now - *at) as f64 / 1000.0 * rate < burst);
        }
        let (tokens, at) = keys.entry(key).or_insert((burst, now));
        let elapsed = (now - *at).max(0) as f64 / 1000.0;
        *tokens = (*tokens + elapsed * rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(self.wait_for(*tokens))
        }
    }

    /// Seconds until a bucket holding `tokens` holds one.
    fn wait_for(&self, tokens: f64) -> u64 {
        ((1.0 - tokens) / self.per_second).ceil().max(1.0) as u64
    }

    /// [`Rate::take`] from a bucket the nodes of a shared store share (one
    /// query), so that a cluster allows what one node does; in memory on a
    /// store of one node's own.
    pub async fn take_shared(
        &self,
        key: K,
        store: &dyn Store,
        clock: &Clock,
    ) -> Result<Result<(), u64>, StoreError> {
        if self.burst == 0.0 {
            return Ok(Ok(()));
        }
        let (now, per_ms) = (clock.now_millis(), self.per_second / 1000.0);
        let idle_ms = (self.burst / per_ms).ceil() as i64;
        let shared = i64::from_le_bytes(digest(&key).to_le_bytes());
        Ok(match store.take_token(shared, now, self.burst, per_ms, idle_ms).await? {
            None => self.take(key, clock),
            Some((true, _)) => Ok(()),
            Some((false, tokens)) => Err(self.wait_for(tokens)),
        })
    }
}

/// An address or a network (`10.0.0.0/8`, `::1`) whose
/// `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proxy {
    addr: IpAddr,
    prefix: u8,
}

impl FromStr for Proxy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix) = text.split_once('/').unwrap_or((text, ""));
        let addr: IpAddr =
            addr.trim().parse().map_err(|_| format!("{text:?} is not an IP address or network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            "" => max,
            p => p
                .parse()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Self { addr, prefix })
    }
}

impl Proxy {
    fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => (u128::from(u32::from(v4)), 32),
                None => (u128::from(v6), 128),
            },
        };
        let ((net, width), (ip, ip_width)) = (bits(self.addr), bits(ip));
        let shift = u32::from(width) - u32::from(self.prefix.min(width));
        width == ip_width && (shift == 128 || net >> shift == ip >> shift)
    }
}

/// The client's address: the peer's, unless the peer is a trusted proxy;
/// then the last address of `X-Forwarded-For` that is not a trusted proxy.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[Proxy]) -> IpAddr {
    let trusts = |ip: IpAddr| trusted.iter().any(|p| p.contains(ip));
    if !trusts(peer) {
        return peer;
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .collect::<Vec<_>>();
    let mut client = peer;
    for ip in forwarded.into_iter().rev() {
        client = ip;
        if !trusts(ip) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_earn_a_growing_delay_then_are_forgotten() {
        let (clock, hand) = Clock::manual(1_000_000);
        let f = Failures::<str>::new(3, 900);
        let key = "alice";
        for _ in 0..2 {
            f.fail(key, &clock);
            assert_eq!(f.wait(key, &clock), None);
        }
        f.fail(key, &clock);
        assert_eq!(f.wait(key, &clock), Some(1));
        hand.advance(1000);
        assert_eq!(f.wait(key, &clock), None);
        f.fail(key, &clock);
        assert_eq!(f.wait(key, &clock), Some(2));
        hand.advance(2000);
        f.fail(key, &clock);
        assert_eq!(f.wait(key, &clock), Some(4));
        hand.advance(901_000);
        assert_eq!(f.wait(key, &clock), None);
        f.fail(key, &clock);
        assert_eq!(f.wait(key, &clock), None, "a whole window later, counting starts over");
        f.clear(key);
        assert_eq!(f.wait(key, &clock), None);
    }

    #[test]
    fn the_bucket_refills() {
        let (clock, hand) = Clock::manual(1_000_000);
        let rate = Rate::new(2);
        let user = Uuid::new_v4();
        assert!(rate.take(user, &clock).is_ok() && rate.take(user, &clock).is_ok());
        assert_eq!(rate.take(user, &clock), Err(1));
        hand.advance(500);
        assert!(rate.take(user, &clock).is_ok());
        assert!(Rate::new(0).take(user, &clock).is_ok());
        let hourly = Rate::per(2, 3600);
        let address: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(hourly.take(address, &clock).is_ok() && hourly.take(address, &clock).is_ok());
        assert_eq!(hourly.take(address, &clock), Err(1800));
    }

    #[test]
    fn forwarded_addresses_are_believed_from_trusted_proxies_only() {
        let trusted: Vec<Proxy> = vec!["127.0.0.1".parse().unwrap(), "10.0.0.0/8".parse().unwrap()];
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "1.2.3.4, 5.6.7.8, 10.1.2.3".parse().unwrap());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(client_address(ip("127.0.0.1"), &headers, &trusted), ip("5.6.7.8"));
        assert_eq!(client_address(ip("192.0.2.1"), &headers, &trusted), ip("192.0.2.1"));
        assert_eq!(client_address(ip("127.0.0.1"), &HeaderMap::new(), &trusted), ip("127.0.0.1"));
        assert!("10.0.0.0/33".parse::<Proxy>().is_err() && "x".parse::<Proxy>().is_err());
        let any: Proxy = "0.0.0.0/0".parse().unwrap();
        assert!(any.contains(ip("8.8.8.8")) && !any.contains(ip("::2")));
    }
}
