//! A worker's metrics: counters, gauges and histograms in one explicit
//! registry per worker (no global state), exposed by `GET /metrics` in the
//! Prometheus text format, or OpenMetrics when the scraper asks for it.
//!
//! Label values are bounded by construction: kinds, outcomes, actions,
//! effects, transports and backends are the host's own words; a peer is
//! named only when the operator lists it in `[metrics] peers`, every other
//! peer counts as `other`; a caller is never a label.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `peerhost_invocations_total` | counter | peer, kind, outcome |
//! | `peerhost_invocation_seconds` | histogram | peer, kind |
//! | `peerhost_decisions_total` | counter | peer, action, effect |
//! | `peerhost_quota_refusals_total` | counter | peer |
//! | `peerhost_epoch_interruptions_total` | counter | peer |
//! | `peerhost_instances_in_use` | gauge | |
//! | `peerhost_instance_slots` | gauge | |
//! | `peerhost_http_connections_total` | counter | |
//! | `peerhost_http_connections_open` | gauge | |
//! | `peerhost_http_requests_total` | counter | status |
//! | `peerhost_http_received_bytes_total` | counter | |
//! | `peerhost_http_sent_bytes_total` | counter | |
//! | `peerhost_storage_bytes` | gauge | peer, store, backend |
//! | `peerhost_transport_round_trips_total` | counter | transport, outcome |
//! | `peerhost_transport_round_trip_seconds` | histogram | transport |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::BTreeSet;
use std::sync::Arc;

/// The label value of every peer the operator did not list.
pub const OTHER: &str = "other";

/// The content type of the Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The content type of the OpenMetrics text format.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A peer's label value: its name when listed, else [`OTHER`].
pub type PeerLabel = Arc<str>;

/// Labels of an invocation's count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InvocationLabels {
    /// The peer it ran at.
    pub peer: PeerLabel,
    /// `call`, `script` or `host` (a host operation: logic show, a push).
    pub kind: &'static str,
    /// `ok`, an error kind (`denied`, `not-found`, `invalid`, `limit`,
    /// `failed`) or `quota` (refused under `[quotas]`).
    pub outcome: &'static str,
}

/// Labels of an invocation's duration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// The peer it ran at.
    pub peer: PeerLabel,
    /// `call`, `script` or `host`.
    pub kind: &'static str,
}

/// Labels of a policy decision's count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// The peer whose policy decided.
    pub peer: PeerLabel,
    /// The action, as in the audit log (`kv.write`, `script.accept`, …).
    pub action: &'static str,
    /// `allow` or `deny`.
    pub effect: &'static str,
}

/// Labels naming a peer only.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    /// The peer.
    pub peer: PeerLabel,
}

/// Labels of an HTTP answer's count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// The status code.
    pub status: u16,
}

/// Labels of a storage size.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StorageLabels {
    /// The peer.
    pub peer: PeerLabel,
    /// `kv` (the kv capability's data) or `fs` (the namespace).
    pub store: &'static str,
    /// The backend: `sqlite`, `fs` or `s3` for kv; `dir`, `sqlite` or
    /// `s3` for the namespace.
    pub backend: &'static str,
}

/// Labels of a round trip to another worker.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabels {
    /// `cluster` (NATS), `http` or `websocket`.
    pub transport: &'static str,
    /// `ok`, or the error kind of the answer.
    pub outcome: &'static str,
}

/// Labels of a round trip's duration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportKindLabels {
    /// `cluster`, `http` or `websocket`.
    pub transport: &'static str,
}

/// A histogram family whose histograms share their buckets.
pub type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Buckets of durations: 100 µs doubling to about 6.5 s.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 17))
}

/// Every metric of one worker, and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    listed: BTreeSet<String>,
    /// Invocations that ended, by peer, kind and outcome.
    pub invocations: Family<InvocationLabels, Counter>,
    /// How long invocations took, in seconds, by peer and kind.
    pub invocation_seconds: Histograms<KindLabels>,
    /// Policy decisions, by peer, action and effect: one per audited
    /// decision, those past an invocation's audit-line cap included.
    pub decisions: Family<DecisionLabels, Counter>,
    /// Invocations and writes refused under `[quotas]`.
    pub quota_refusals: Family<PeerLabels, Counter>,
    /// Guests stopped by the epoch at their wall-time limit.
    pub epoch_interruptions: Family<PeerLabels, Counter>,
    /// Guest instances alive now (running, or kept for a caller).
    pub instances_in_use: Gauge,
    /// Instances the pooling allocator has room for.
    pub instance_slots: Gauge,
    /// HTTP connections accepted.
    pub http_connections: Counter,
    /// HTTP connections open now.
    pub http_connections_open: Gauge,
    /// HTTP requests answered, by status.
    pub http_requests: Family<StatusLabels, Counter>,
    /// Bytes of HTTP request bodies read.
    pub http_received_bytes: Counter,
    /// Bytes of HTTP response bodies sent (bodies of a known length).
    pub http_sent_bytes: Counter,
    /// Bytes stored, by peer, store and backend (as of the last scrape).
    pub storage_bytes: Family<StorageLabels, Gauge>,
    /// Envelopes sent to other workers and answered (or not), by
    /// transport and outcome.
    pub round_trips: Family<TransportLabels, Counter>,
    /// How long those round trips took, in seconds.
    pub round_trip_seconds: Histograms<TransportKindLabels>,
    /// Held while a scrape is answered: one at a time.
    pub scraping: tokio::sync::Semaphore,
}

/// One peer's invocations over the last [`ACTIVITY_MINUTES`] minutes, for
/// the console (not exposed: a series per peer is what `[metrics] peers`
/// limits). Each peer keeps its own, so counting takes no lock shared with
/// other peers.
#[derive(Debug, Default)]
pub struct Activity {
    minutes: std::sync::Mutex<std::collections::VecDeque<(u64, u32)>>,
}

/// Minutes [`Activity`] keeps.
pub const ACTIVITY_MINUTES: u64 = 60;

fn this_minute() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

impl Activity {
    /// Counts one invocation, now.
    pub fn record(&self) {
        let now = this_minute();
        let mut counts = self.minutes.lock().unwrap_or_else(|p| p.into_inner());
        match counts.back_mut() {
            Some((minute, count)) if *minute == now => *count = count.saturating_add(1),
            _ => counts.push_back((now, 1)),
        }
        while counts
            .front()
            .is_some_and(|(minute, _)| now.saturating_sub(*minute) >= ACTIVITY_MINUTES)
        {
            counts.pop_front();
        }
    }

    /// The invocations in each of the last `n` minutes, oldest first.
    pub fn last(&self, n: u64) -> Vec<u32> {
        let now = this_minute();
        let counts = self.minutes.lock().unwrap_or_else(|p| p.into_inner());
        (0..n)
            .rev()
            .map(|ago| {
                let minute = now.saturating_sub(ago);
                counts
                    .iter()
                    .find(|(m, _)| *m == minute)
                    .map_or(0, |(_, count)| *count)
            })
            .collect()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(std::iter::empty::<String>())
    }
}

impl Metrics {
    /// A worker's metrics, naming the peers of `listed` in labels.
    pub fn new(listed: impl IntoIterator<Item = impl Into<String>>) -> Metrics {
        let mut metrics = Metrics {
            registry: Registry::with_prefix("peerhost"),
            listed: listed.into_iter().map(Into::into).collect(),
            invocations: Family::default(),
            invocation_seconds: Family::new_with_constructor(seconds),
            decisions: Family::default(),
            quota_refusals: Family::default(),
            epoch_interruptions: Family::default(),
            instances_in_use: Gauge::default(),
            instance_slots: Gauge::default(),
            http_connections: Counter::default(),
            http_connections_open: Gauge::default(),
            http_requests: Family::default(),
            http_received_bytes: Counter::default(),
            http_sent_bytes: Counter::default(),
            storage_bytes: Family::default(),
            round_trips: Family::default(),
            round_trip_seconds: Family::new_with_constructor(seconds),
            scraping: tokio::sync::Semaphore::new(1),
        };
        let r = &mut metrics.registry;
        r.register(
            "invocations",
            "Invocations that ended, by peer, kind and outcome",
            metrics.invocations.clone(),
        );
        r.register(
            "invocation_seconds",
            "How long invocations took, in seconds",
            metrics.invocation_seconds.clone(),
        );
        r.register(
            "decisions",
            "Policy decisions, by peer, action and effect",
            metrics.decisions.clone(),
        );
        r.register(
            "quota_refusals",
            "Invocations and writes refused under [quotas]",
            metrics.quota_refusals.clone(),
        );
        r.register(
            "epoch_interruptions",
            "Guests stopped by the epoch at their wall-time limit",
            metrics.epoch_interruptions.clone(),
        );
        r.register(
            "instances_in_use",
            "Guest instances alive now",
            metrics.instances_in_use.clone(),
        );
        r.register(
            "instance_slots",
            "Instances the pooling allocator has room for",
            metrics.instance_slots.clone(),
        );
        r.register(
            "http_connections",
            "HTTP connections accepted",
            metrics.http_connections.clone(),
        );
        r.register(
            "http_connections_open",
            "HTTP connections open now",
            metrics.http_connections_open.clone(),
        );
        r.register(
            "http_requests",
            "HTTP requests answered, by status",
            metrics.http_requests.clone(),
        );
        r.register(
            "http_received_bytes",
            "Bytes of HTTP request bodies read",
            metrics.http_received_bytes.clone(),
        );
        r.register(
            "http_sent_bytes",
            "Bytes of HTTP response bodies sent",
            metrics.http_sent_bytes.clone(),
        );
        r.register(
            "storage_bytes",
            "Bytes stored, by peer, store and backend, as of this scrape",
            metrics.storage_bytes.clone(),
        );
        r.register(
            "transport_round_trips",
            "Envelopes sent to other workers, by transport and outcome",
            metrics.round_trips.clone(),
        );
        r.register(
            "transport_round_trip_seconds",
            "How long round trips to other workers took, in seconds",
            metrics.round_trip_seconds.clone(),
        );
        metrics
    }

    /// The label value of peer `name`: its name when listed, else [`OTHER`].
    pub fn peer(&self, name: &str) -> PeerLabel {
        if self.listed.contains(name) {
            Arc::from(name)
        } else {
            Arc::from(OTHER)
        }
    }

    /// Counts one invocation at `peer` of `kind` that ended with `outcome`
    /// after `secs`.
    pub fn invoked(&self, peer: &PeerLabel, kind: &'static str, outcome: &'static str, secs: f64) {
        let peer = peer.clone();
        self.invocations
            .get_or_create(&InvocationLabels {
                peer: peer.clone(),
                kind,
                outcome,
            })
            .inc();
        self.invocation_seconds
            .get_or_create(&KindLabels { peer, kind })
            .observe(secs);
    }

    /// Counts one decision of `peer`'s policy on `action`.
    pub fn decided(&self, peer: &PeerLabel, action: &'static str, allowed: bool) {
        self.decisions
            .get_or_create(&DecisionLabels {
                peer: peer.clone(),
                action,
                effect: if allowed { "allow" } else { "deny" },
            })
            .inc();
    }

    /// Counts one round trip over `transport` that ended with `outcome`
    /// after `secs`.
    pub fn round_trip(&self, transport: &'static str, outcome: &'static str, secs: f64) {
        self.round_trips
            .get_or_create(&TransportLabels { transport, outcome })
            .inc();
        self.round_trip_seconds
            .get_or_create(&TransportKindLabels { transport })
            .observe(secs);
    }

    /// A guard counting one instance in use until it is dropped.
    pub fn instance(&self) -> InUse {
        self.instances_in_use.inc();
        InUse(self.instances_in_use.clone())
    }

    /// The exposition: OpenMetrics text when `openmetrics`, else the
    /// Prometheus text format (version 0.0.4).
    pub fn encode(&self, openmetrics: bool) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        if openmetrics {
            text
        } else {
            to_prometheus_text(&text)
        }
    }
}

/// The `outcome` label of an invocation or a round trip that ended in
/// `error`: `quota` for a refusal under `[quotas]` (it says when to retry),
/// else the error's kind.
pub fn outcome(error: &crate::error::InvocationError) -> &'static str {
    if error.retry_after_ms.is_some() {
        "quota"
    } else {
        error.kind.as_str()
    }
}

/// One instance counted in [`Metrics::instances_in_use`] while alive.
#[derive(Debug)]
pub struct InUse(Gauge);

impl Drop for InUse {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Whether an `Accept` header asks for OpenMetrics.
pub fn wants_openmetrics(accept: &str) -> bool {
    accept
        .split(',')
        .any(|kind| kind.trim().starts_with("application/openmetrics-text"))
}

/// OpenMetrics text as the Prometheus text format: a counter's family is
/// named by its samples (`…_total`), and the `# EOF` and `# UNIT` lines,
/// which the older format does not have, are left out.
fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: BTreeSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => text.push_str(&line),
            None => text.push_str(line),
        }
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unlisted_peer_is_labelled_other() {
        let metrics = Metrics::new(["alice"]);
        assert_eq!(&*metrics.peer("alice"), "alice");
        assert_eq!(&*metrics.peer("did:key:z6Mk"), OTHER);
    }

    #[test]
    fn the_prometheus_text_names_counters_by_their_samples_and_has_no_eof() {
        let metrics = Metrics::new(["bob"]);
        metrics.invoked(&metrics.peer("bob"), "call", "ok", 0.001);
        metrics.decided(&metrics.peer("bob"), "kv.read", false);
        let open = metrics.encode(true);
        assert!(open.ends_with("# EOF\n"), "{open}");
        assert!(
            open.contains("# TYPE peerhost_invocations counter\n"),
            "{open}"
        );
        let text = metrics.encode(false);
        assert!(!text.contains("# EOF"), "{text}");
        assert!(
            text.contains("# TYPE peerhost_invocations_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "peerhost_invocations_total{peer=\"bob\",kind=\"call\",outcome=\"ok\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "peerhost_decisions_total{peer=\"bob\",action=\"kv.read\",effect=\"deny\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE peerhost_invocation_seconds histogram\n"),
            "{text}"
        );
    }

    #[test]
    fn an_instance_is_counted_while_its_guard_lives() {
        let metrics = Metrics::default();
        let one = metrics.instance();
        let two = metrics.instance();
        assert_eq!(metrics.instances_in_use.get(), 2);
        drop(one);
        drop(two);
        assert_eq!(metrics.instances_in_use.get(), 0);
    }

    #[test]
    fn activity_counts_this_minute_and_zero_for_the_rest() {
        let activity = Activity::default();
        activity.record();
        activity.record();
        let last = activity.last(30);
        assert_eq!(last.len(), 30);
        assert_eq!(last.iter().sum::<u32>(), 2);
        assert_eq!(Activity::default().last(5), vec![0; 5]);
    }

    #[test]
    fn openmetrics_is_chosen_by_the_accept_header() {
        assert!(wants_openmetrics(
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        ));
        assert!(!wants_openmetrics("text/plain"));
        assert!(!wants_openmetrics("*/*"));
    }
}
