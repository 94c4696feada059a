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
            burst: f64::from(burst.max(1)),
            refill,
        }
    }

    fn level(&self, b: &Bucket, now: Instant) -> f64 {
        let gained = now.duration_since(b.at).as_secs_f64() / self.refill.as_secs_f64();
        (b.left + gained).min(self.burst)
    }

    /// `Ok` when `ip` may try to authenticate; else how long until it may.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
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

    /// Counts a failed attempt from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut map = self.buckets.lock().unwrap();
        if map.len() >= MAX_TRACKED {
            map.retain(|_, b| self.level(b, now) < self.burst);
        }
        if map.len() >= MAX_TRACKED {
            // Still full (failures from very many addresses): forget the half closest to full.
            let mut levels: Vec<f64> = map.values().map(|b| self.level(b, now)).collect();
            levels.sort_by(f64::total_cmp);
            let cut = levels[levels.len() / 2];
            map.retain(|_, b| self.level(b, now) < cut);
        }
        let left = map.get(&key(ip)).map_or(self.burst, |b| self.level(b, now));
        map.insert(
            key(ip),
            Bucket {
                left: (left - 1.0).max(0.0),
                at: now,
            },
        );
    }
}
