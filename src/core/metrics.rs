//! Server metrics in Prometheus form, counted by the core for every transport.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label sets of one, two and three labels: static strings, so counting allocates nothing.
type Labels = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];
type Labels3 = [(&'static str, &'static str); 3];

/// The server's counters; one per server (no global state, so tests can run servers side by side).
pub struct Metrics {
    registry: Registry,
    sessions: Family<Labels, Counter>,
    active: Family<Labels, Gauge>,
    bytes_in: Family<Labels, Counter>,
    bytes_out: Family<Labels, Counter>,
    transfers: Family<Labels3, Counter>,
    /// The `transfers` counters already made, by their labels' addresses: finding one here
    /// skips hashing three label pairs under the family's lock on every transfer.
    transfer_counters: std::sync::Mutex<Vec<(Labels3, Counter)>>,
    execs: Family<Labels2, Counter>,
    exec_seconds: Histogram,
    mismatches: Family<Labels, Counter>,
}

/// Byte counters of one transport, cheap to clone and bump.
#[derive(Clone, Debug, Default)]
pub struct ByteCounters {
    /// Bytes received from peers.
    pub bytes_in: Counter,
    /// Bytes sent to peers.
    pub bytes_out: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric ferry exports.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ferry");
        let m = Metrics {
            sessions: Family::default(),
            active: Family::default(),
            bytes_in: Family::default(),
            bytes_out: Family::default(),
            transfers: Family::default(),
            transfer_counters: std::sync::Mutex::default(),
            execs: Family::default(),
            exec_seconds: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
            mismatches: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "sessions",
            "Authenticated sessions opened, by transport",
            m.sessions.clone(),
        );
        registry.register(
            "sessions_active",
            "Sessions open now, by transport",
            m.active.clone(),
        );
        registry.register(
            "received_bytes",
            "Bytes received from peers, by transport",
            m.bytes_in.clone(),
        );
        registry.register(
            "sent_bytes",
            "Bytes sent to peers, by transport",
            m.bytes_out.clone(),
        );
        registry.register(
            "transfers",
            "Finished transfers, by direction and result",
            m.transfers.clone(),
        );
        registry.register(
            "execs",
            "Finished commands, by how they ended",
            m.execs.clone(),
        );
        registry.register(
            "exec_duration_seconds",
            "Wall time of finished commands",
            m.exec_seconds.clone(),
        );
        registry.register(
            "checksum_mismatches",
            "MD5 checks that failed, by transport",
            m.mismatches.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts a session opening; returns the transport's byte counters.
    pub fn session_opened(&self, transport: &'static str) -> ByteCounters {
        let l = [("transport", transport)];
        self.sessions.get_or_create(&l).inc();
        self.active.get_or_create(&l).inc();
        ByteCounters {
            bytes_in: self.bytes_in.get_or_create(&l).clone(),
            bytes_out: self.bytes_out.get_or_create(&l).clone(),
        }
    }

    /// Counts a session closing.
    pub fn session_closed(&self, transport: &'static str) {
        self.active.get_or_create(&[("transport", transport)]).dec();
    }

    /// Counts a finished transfer.
    pub fn transfer(&self, transport: &'static str, direction: &'static str, result: &'static str) {
        let labels = [
            ("transport", transport),
            ("direction", direction),
            ("result", result),
        ];
        let same = |(a, b): (&(&str, &str), &(&str, &str))| std::ptr::eq(a.1, b.1);
        let mut made = self.transfer_counters.lock().unwrap();
        if let Some((_, c)) = made.iter().find(|(l, _)| l.iter().zip(&labels).all(same)) {
            c.inc();
            return;
        }
        let counter = self.transfers.get_or_create(&labels).clone();
        counter.inc();
        made.push((labels, counter));
    }

    /// Counts a failed MD5 check.
    pub fn mismatch(&self, transport: &'static str) {
        self.mismatches
            .get_or_create(&[("transport", transport)])
            .inc();
    }

    /// Counts a finished command and its wall time.
    pub fn exec(&self, transport: &'static str, result: &'static str, seconds: f64) {
        self.execs
            .get_or_create(&[("transport", transport), ("result", result)])
            .inc();
        self.exec_seconds.observe(seconds);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
