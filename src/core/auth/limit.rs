//! Failed authentications, limited per peer address.
//!
//! A request-rate limiter (tower_governor) cannot do this job: it counts requests before the
//! handler knows whether the token was right, and TCP hellos and WebSocket upgrades do not go
//! through tower. This counts only failures, the same way for every transport: each address
//! has a bucket of [`BURST`] failures that refills at one per [`REFILL`]; an empty bucket
//! refuses every attempt, right or wrong, until it refills, and each wrong guess meanwhile
//! empties it again (so a guesser stays locked out for as long as it keeps guessing).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Failed attempts an address may make in a row.
pub const BURST: u32 = 10;
/// One more attempt is allowed after this long (so 10 a minute when sustained).
pub const REFILL: Duration = Duration::from_secs(6);
/// Addresses tracked before fully refilled ones are forgotten.
const MAX_TRACKED: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Failed attempts still allowed, as of `at`.
    left: f64,
    at: Instant,
}

/// Per-address failure buckets.
#[derive(Debug)]
pub struct FailureLimiter {
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
    /// How many buckets `buckets` holds, readable without its lock: with none (no address
    /// has failed lately), [`Self::peek`] answers at once.
    tracked: AtomicUsize,
    burst: f64,
    refill: Duration,
}

impl Default for FailureLimiter {
    fn default() -> Self {
        FailureLimiter::new(BURST, REFILL)
    }
}

/// The key of an address: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its /64, which one
/// host usually holds whole.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut s = v6.segments();
                s[4..].fill(0);
                IpAddr::V6(s.into())
            }
        },
    }
}

impl FailureLimiter {
    /// A limiter allowing `burst` failures in a row, then one per `refill`.
    pub fn new(burst: u32, refill: Duration) -> Self {
        FailureLimiter {
            buckets: Mutex::default(),
            tracked: AtomicUsize::new(0),
            burst: f64::from(burst.max(1)),
            refill,
        }
    }

    fn level(&self, b: &Bucket, now: Instant) -> f64 {
        let gained = now.duration_since(b.at).as_secs_f64() / self.refill.as_secs_f64();
        (b.left + gained).min(self.burst)
    }

    /// Takes one attempt from `ip`'s bucket if it holds one (give it back with [`Self::refund`]
    /// when the attempt succeeds); else how long until it will. Checking and taking happen
    /// under one lock, so parallel guesses cannot all pass the same check.
    pub fn take(&self, ip: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let mut map = self.buckets.lock().unwrap();
        self.make_room(&mut map, now);
        let left = map.get(&key(ip)).map_or(self.burst, |b| self.level(b, now));
        if left < 1.0 {
            return Err(self.refill.mul_f64(1.0 - left));
        }
        map.insert(
            key(ip),
            Bucket {
                left: left - 1.0,
                at: now,
            },
        );
        self.publish(&map);
        Ok(())
    }

    /// Gives back the attempt taken for a success.
    pub fn refund(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut map = self.buckets.lock().unwrap();
        if let Some(b) = map.get_mut(&key(ip)) {
            b.left = (self.level(b, now) + 1.0).min(self.burst);
            b.at = now;
            // A full bucket is as good as none: forget it, so that an address that only ever
            // succeeds leaves nothing behind.
            if b.left >= self.burst {
                map.remove(&key(ip));
                self.publish(&map);
            }
        }
    }

    fn publish(&self, map: &HashMap<IpAddr, Bucket>) {
        self.tracked.store(map.len(), Ordering::Release);
    }

    /// How many addresses have a bucket.
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Acquire)
    }

    /// Forgets full buckets when the table is full; if still full (failures from very many
    /// addresses), the half of the buckets closest to full.
    fn make_room(&self, map: &mut HashMap<IpAddr, Bucket>, now: Instant) {
        if map.len() < MAX_TRACKED {
            return;
        }
        map.retain(|_, b| self.level(b, now) < self.burst);
        if map.len() >= MAX_TRACKED {
            let mut by_level: Vec<(f64, IpAddr)> = map
                .iter()
                .map(|(ip, b)| (self.level(b, now), *ip))
                .collect();
            by_level.sort_by(|a, b| b.0.total_cmp(&a.0));
            for (_, ip) in by_level.iter().take(by_level.len() / 2) {
                map.remove(ip);
            }
        }
        self.publish(map);
    }

    /// `Ok` when `ip` may try to authenticate, without taking an attempt; else how long until
    /// it may.
    pub fn peek(&self, ip: IpAddr) -> Result<(), Duration> {
        if self.tracked.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let map = self.buckets.lock().unwrap();
        let Some(b) = map.get(&key(ip)) else {
            return Ok(());
        };
        let left = self.level(b, now);
        if left >= 1.0 {
            Ok(())
        } else {
            Err(self.refill.mul_f64(1.0 - left))
        }
    }

    /// Counts a wrong guess made while `ip` was already limited: it empties the bucket again.
    pub fn failed(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut map = self.buckets.lock().unwrap();
        self.make_room(&mut map, now);
        let left = map.get(&key(ip)).map_or(self.burst, |b| self.level(b, now));
        map.insert(
            key(ip),
            Bucket {
                left: (left - 1.0).max(0.0),
                at: now,
            },
        );
        self.publish(&map);
    }
}
