//! The metrics catalogue: every metric keywarden exports, declared once in [`CATALOGUE`] with
//! its type, labels and help text, and the [`Metrics`] that records and renders them in the
//! Prometheus text format for the admin listener's `/metrics`.
//!
//! # One recorder per server, never a global one
//! Each [`Metrics`] owns its own `PrometheusRecorder` (built with
//! `PrometheusBuilder::build_recorder`, not installed) and registers its handles by calling that
//! recorder directly. The `metrics` facade's global recorder can be installed once per process,
//! and the end-to-end tests run several proxies in one process, each of which must report only
//! its own numbers; a recorder per server gives that with no thread-local or global state, and
//! a handle ([`metrics::Counter`], [`metrics::Gauge`]) costs one atomic operation to update.
//!
//! # Read at scrape time
//! Everything exported today already exists as state the proxy keeps for itself: the client
//! table, the health snapshot, the outage [`Counters`](crate::ops::events::Counters) and the local
//! store's own tallies. [`Metrics::render`] reads a [`Sample`] of them and sets the gauges, and
//! the counters to their absolute totals, so the data path does no extra work for metrics.
//!
//! Health transitions are counted from the health snapshots that [`Metrics::observe_health`]
//! is shown: by a task woken on every change, and at every scrape (see [`Seen::step`] for the
//! one case that can be missed).

use std::sync::Mutex;

use metrics::{Counter, Gauge, Key, KeyName, Label, Level, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use serde::Serialize;
use tokio::time::Instant;

use crate::local::store::PartStats;
use crate::ops::events::{Counts, EventKind};
use crate::upstream::health::State;
use crate::upstream::monitor::HealthSnapshot;

/// Whether a metric only grows (a Prometheus counter, named `..._total`) or goes up and down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    /// Rendered from a [`Histogram`](crate::upstream::histogram::Histogram) of fixed buckets.
    Histogram,
}

/// One entry of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    /// Label names, in the order they are written.
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn counter(
    name: &'static str,
    labels: &'static [&'static str],
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind: Kind::Counter,
        labels,
        help,
    }
}

const fn gauge(name: &'static str, labels: &'static [&'static str], help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Gauge,
        labels,
        help,
    }
}

pub(crate) const BUILD_INFO: Metric = gauge(
    "keywarden_build_info",
    &["version"],
    "Always 1; the version label is the running keywarden's version.",
);
pub(crate) const CLIENT_CONNECTIONS: Metric = gauge(
    "keywarden_client_connections",
    &[],
    "Client connections open now.",
);
pub(crate) const CLIENT_CONNECTIONS_PARKED: Metric = gauge(
    "keywarden_client_connections_parked",
    &[],
    "Idle client connections held without a task (parked), among those open now.",
);
pub(crate) const CLIENT_CONNECTIONS_TOTAL: Metric = counter(
    "keywarden_client_connections_total",
    &[],
    "Client connections accepted.",
);
pub(crate) const CLIENT_CONNECTIONS_REJECTED: Metric = counter(
    "keywarden_client_connections_rejected_total",
    &[],
    "Client connections refused because max_clients was reached.",
);
pub(crate) const PROTOCOL_ERRORS: Metric = counter(
    "keywarden_protocol_errors_total",
    &[],
    "Clients closed for sending bytes that are not RESP (answered -ERR Protocol error, as Redis does).",
);
pub(crate) const AUTH_FAILURES: Metric = counter(
    "keywarden_auth_failures_total",
    &[],
    "AUTH and HELLO ... AUTH refused with WRONGPASS (an unknown user or a wrong password).",
);
pub(crate) const CLIENTS_CLOSED_BY_LIMIT: Metric = counter(
    "keywarden_clients_closed_total",
    &["limit"],
    "Clients closed for reaching a limit: max_query_buffer, max_client_output or max_total_output.",
);
pub(crate) const CLIENT_OUTPUT_BYTES: Metric = gauge(
    "keywarden_client_output_bytes",
    &[],
    "Reply bytes held for all clients (each client's share to within 64 KiB).",
);
pub(crate) const UPSTREAM_CONNECTS: Metric = counter(
    "keywarden_upstream_connects_total",
    &["upstream"],
    "Shared upstream connections made: first connects and reconnects.",
);
pub(crate) const UPSTREAM_SUSPICIONS: Metric = counter(
    "keywarden_upstream_suspicions_total",
    &["upstream"],
    "Data-path failures (a timeout, an unframeable reply, a connection closed under requests) \
     that started a probe; they count toward an outage only if it fails.",
);
pub(crate) const UPSTREAM_REQUEST_DURATION: Metric = Metric {
    name: "keywarden_upstream_request_duration_seconds",
    kind: Kind::Histogram,
    labels: &["upstream"],
    help:
        "Time from a request being written to a shared upstream connection to its reply arriving.",
};
pub(crate) const COMMANDS: Metric = counter(
    "keywarden_commands_total",
    &["command", "outcome"],
    "Requests by command (Redis's name; unknown for commands Redis does not know) and outcome: upstream, local (served by the local store), proxy (answered by keywarden: connection, transaction and admin commands), refused.",
);
pub(crate) const KEYSPACE_FAIL_CLOSED_REFUSALS: Metric = counter(
    "keywarden_keyspace_fail_closed_refusals_total",
    &["keyspace"],
    "Requests refused with -FAILCLOSED, by the keyspace that failed closed.",
);
pub(crate) const KEYSPACE_DEGRADED_REPLIES: Metric = counter(
    "keywarden_keyspace_degraded_replies_total",
    &["keyspace"],
    "Replies served from the local store during outages, by degraded keyspace.",
);
pub(crate) const UPSTREAM_HEALTH: Metric = gauge(
    "keywarden_upstream_health",
    &["upstream", "state"],
    "1 for the upstream's current health state (healthy, recovering, unavailable), 0 for the others.",
);
pub(crate) const UPSTREAM_HEALTH_TRANSITIONS: Metric = counter(
    "keywarden_upstream_health_transitions_total",
    &["upstream", "event"],
    "Outage events of the upstream: BACKEND_UNAVAILABLE_AT_STARTUP, BACKEND_DEGRADED (left healthy), BACKEND_RECOVERED (healthy again).",
);
pub(crate) const FAIL_CLOSED_REFUSALS: Metric = counter(
    "keywarden_fail_closed_refusals_total",
    &[],
    "Requests refused with -FAILCLOSED because their keyspace fails closed and the upstream was unavailable.",
);
pub(crate) const DEGRADED_REPLIES: Metric = counter(
    "keywarden_degraded_replies_total",
    &[],
    "Replies served from the local store for degraded keyspaces while the upstream was unavailable.",
);
pub(crate) const DISCARDED_WRITES: Metric = counter(
    "keywarden_discarded_writes_total",
    &[],
    "Writes made in the local store for degraded keyspaces during outages, discarded when the upstream is healthy again.",
);
pub(crate) const LOCAL_STORE_KEYS: Metric = gauge(
    "keywarden_local_store_keys",
    &[],
    "Keys held by the local store, all databases (expired keys not yet removed included).",
);
pub(crate) const LOCAL_STORE_USED_BYTES: Metric = gauge(
    "keywarden_local_store_used_bytes",
    &[],
    "Bytes the local store counts against its budget (keys, values and per-entry overhead).",
);
pub(crate) const LOCAL_STORE_MAX_BYTES: Metric = gauge(
    "keywarden_local_store_max_bytes",
    &[],
    "The local store's byte budget (local_store.max_bytes); beyond it keys are evicted.",
);
pub(crate) const LOCAL_STORE_EVICTIONS: Metric = counter(
    "keywarden_local_store_evictions_total",
    &[],
    "Keys evicted from the local store (least recently used) to make room.",
);
pub(crate) const LOCAL_STORE_EXPIRATIONS: Metric = counter(
    "keywarden_local_store_expirations_total",
    &[],
    "Keys removed from the local store because their TTL passed.",
);
pub(crate) const LOCAL_STORE_OOM_REFUSALS: Metric = counter(
    "keywarden_local_store_oom_refusals_total",
    &[],
    "Writes the local store refused with -OOM: a noeviction keyspace was full, or an entry alone exceeded its keyspace's budget.",
);
pub(crate) const KEYSPACE_LOCAL_KEYS: Metric = gauge(
    "keywarden_keyspace_local_keys",
    &["keyspace"],
    "Keys the local store holds for the keyspace, all databases.",
);
pub(crate) const KEYSPACE_LOCAL_USED_BYTES: Metric = gauge(
    "keywarden_keyspace_local_used_bytes",
    &["keyspace"],
    "Bytes the keyspace's part of the local store counts against its budget.",
);
pub(crate) const KEYSPACE_LOCAL_MAX_BYTES: Metric = gauge(
    "keywarden_keyspace_local_max_bytes",
    &["keyspace"],
    "The keyspace's budget in the local store (its max_bytes, or its share of local_store.max_bytes).",
);
pub(crate) const KEYSPACE_LOCAL_EVICTIONS: Metric = counter(
    "keywarden_keyspace_local_evictions_total",
    &["keyspace"],
    "Keys evicted from the keyspace's part of the local store to make room for its own writes.",
);
pub(crate) const KEYSPACE_LOCAL_OOM_REFUSALS: Metric = counter(
    "keywarden_keyspace_local_oom_refusals_total",
    &["keyspace"],
    "Writes to the keyspace refused with -OOM by the local store.",
);
pub(crate) const CLUSTER_SHARD_UP: Metric = gauge(
    "keywarden_cluster_shard_up",
    &["shard"],
    "Under a Redis Cluster: 1 while the shard (its primary when found, and its slots then) forwards, 0 while its keys follow their keyspace's outage mode.",
);
pub(crate) const CLUSTER_REDIRECTS: Metric = counter(
    "keywarden_cluster_redirects_total",
    &[],
    "MOVED, ASK and TRYAGAIN replies keywarden followed for its clients (none reaches them).",
);
pub(crate) const CONFIG_RELOADS: Metric = counter(
    "keywarden_config_reloads_total",
    &["result"],
    "Configuration reloads (SIGHUP, KEYWARDEN RELOAD) by result: applied, or failed (the configuration in force did not change).",
);
pub(crate) const CONFIG_LAST_RELOAD_SUCCESSFUL: Metric = gauge(
    "keywarden_config_last_reload_successful",
    &[],
    "0 when the last reload was rejected (the file on disk is not what runs), else 1.",
);

/// Every metric keywarden exports. The README's Operations section lists the same (tested).
pub(crate) const CATALOGUE: &[Metric] = &[
    BUILD_INFO,
    CLIENT_CONNECTIONS,
    CLIENT_CONNECTIONS_PARKED,
    CLIENT_CONNECTIONS_TOTAL,
    CLIENT_CONNECTIONS_REJECTED,
    PROTOCOL_ERRORS,
    AUTH_FAILURES,
    CLIENTS_CLOSED_BY_LIMIT,
    CLIENT_OUTPUT_BYTES,
    UPSTREAM_CONNECTS,
    UPSTREAM_SUSPICIONS,
    UPSTREAM_HEALTH,
    UPSTREAM_HEALTH_TRANSITIONS,
    FAIL_CLOSED_REFUSALS,
    DEGRADED_REPLIES,
    DISCARDED_WRITES,
    KEYSPACE_FAIL_CLOSED_REFUSALS,
    KEYSPACE_DEGRADED_REPLIES,
    COMMANDS,
    UPSTREAM_REQUEST_DURATION,
    LOCAL_STORE_KEYS,
    LOCAL_STORE_USED_BYTES,
    LOCAL_STORE_MAX_BYTES,
    LOCAL_STORE_EVICTIONS,
    LOCAL_STORE_EXPIRATIONS,
    LOCAL_STORE_OOM_REFUSALS,
    KEYSPACE_LOCAL_KEYS,
    KEYSPACE_LOCAL_USED_BYTES,
    KEYSPACE_LOCAL_MAX_BYTES,
    KEYSPACE_LOCAL_EVICTIONS,
    KEYSPACE_LOCAL_OOM_REFUSALS,
    CLUSTER_SHARD_UP,
    CLUSTER_REDIRECTS,
    CONFIG_RELOADS,
    CONFIG_LAST_RELOAD_SUCCESSFUL,
];

/// The health states, in the order the `state` label's series are registered.
const STATES: [State; 3] = [State::Healthy, State::Recovering, State::Unavailable];

/// What the local store holds, as `/metrics` and `/status` show it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct StoreUsage {
    pub keys: usize,
    pub used_bytes: usize,
    pub max_bytes: usize,
    pub evictions: u64,
    pub expirations: u64,
    /// Writes refused with -OOM.
    pub oom_refusals: u64,
}

/// The proxy's state as INFO and `/status` show it: the part of a [`Sample`] that needs no
/// rendering and no walk over every command's counters, so that a client asking for INFO in a
/// loop costs little.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Overview {
    pub(crate) clients: usize,
    /// Of those, idle ones parked without a task.
    pub(crate) parked_clients: usize,
    pub(crate) health: HealthSnapshot,
    pub(crate) counts: Counts,
    pub(crate) store: StoreUsage,
    /// Each keyspace's part of the local store, the default keyspace's last.
    pub(crate) store_parts: Vec<PartStats>,
    /// Reloads applied, reloads failed, and whether the last one failed.
    pub(crate) reloads: (u64, u64, bool),
    /// Under a Redis Cluster: each shard, and the redirections followed.
    pub(crate) shards: Vec<ShardStatus>,
    pub(crate) redirects: u64,
}

/// One shard of a Redis Cluster upstream, as INFO and the metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShardStatus {
    pub(crate) name: String,
    /// Its primary now.
    pub(crate) primary: String,
    pub(crate) state: State,
}

/// The state metrics are read from, taken at one scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sample {
    pub clients: usize,
    pub parked_clients: usize,
    /// Client connections accepted, refused at max_clients, closed for protocol errors.
    pub accepted: u64,
    pub rejected: u64,
    pub protocol_errors: u64,
    pub auth_failures: u64,
    /// (limit, clients closed for reaching it) for each limit.
    pub closed_by_limit: Vec<(&'static str, u64)>,
    /// Reply bytes held for all clients.
    pub output_bytes: usize,
    pub upstream_connects: u64,
    pub upstream_suspicions: u64,
    /// (keyspace, fail-closed refusals, degraded replies), the default keyspace last.
    pub per_keyspace: Vec<(String, u64, u64)>,
    /// (command, outcome, requests) for every pair seen.
    pub commands: Vec<(&'static str, &'static str, u64)>,
    /// The upstream latency histogram's lines.
    pub latency: String,
    pub health: HealthSnapshot,
    pub counts: Counts,
    pub store: StoreUsage,
    /// Each keyspace's part of the local store, the default keyspace's last.
    pub store_parts: Vec<PartStats>,
    /// Reloads applied, reloads failed, and whether the last one failed.
    pub reloads: (u64, u64, bool),
    /// Under a Redis Cluster: each shard, and the redirections followed.
    pub shards: Vec<ShardStatus>,
    pub redirects: u64,
}

/// The last health snapshot the transition counters were brought up to date with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen {
    healthy: bool,
    since: Instant,
}

/// Outage events that happened between two snapshots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Steps {
    pub degraded: u64,
    pub recovered: u64,
}

impl Seen {
    pub(crate) fn new(snapshot: HealthSnapshot) -> Seen {
        Seen {
            healthy: snapshot.state == State::Healthy,
            since: snapshot.since,
        }
    }

    /// The events between the snapshot seen last and `now`, which becomes the one seen last.
    /// An outage opens when `healthy` is left (BACKEND_DEGRADED) and closes when it is reached
    /// again (BACKEND_RECOVERED); the moves between `unavailable` and `recovering` are neither.
    /// Still healthy but since a later instant: a whole outage came and went unseen. The one
    /// case that cannot be told apart: unhealthy at both looks, with a close and a reopening
    /// between them (counted as nothing; the watcher looks at every change, so it takes two
    /// flips within one wake-up of a task).
    pub(crate) fn step(&mut self, now: HealthSnapshot) -> Steps {
        if now.since < self.since {
            // Older than what was already seen (read before another looker caught up).
            return Steps::default();
        }
        let healthy = now.state == State::Healthy;
        let steps = match (self.healthy, healthy) {
            (true, false) => Steps {
                degraded: 1,
                recovered: 0,
            },
            (false, true) => Steps {
                degraded: 0,
                recovered: 1,
            },
            (true, true) if now.since != self.since => Steps {
                degraded: 1,
                recovered: 1,
            },
            _ => Steps::default(),
        };
        *self = Seen {
            healthy,
            since: now.since,
        };
        steps
    }
}

/// The metrics of one server: its own recorder and a handle to each series.
pub(crate) struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    clients: Gauge,
    parked_clients: Gauge,
    accepted: Counter,
    rejected: Counter,
    protocol_errors: Counter,
    auth_failures: Counter,
    output_bytes: Gauge,
    upstream_connects: Counter,
    upstream_suspicions: Counter,
    /// One per state in [`STATES`] order.
    health: [Gauge; 3],
    degraded_events: Counter,
    recovered_events: Counter,
    seen: Mutex<Seen>,
    refused: Counter,
    degraded_replies: Counter,
    discarded_writes: Counter,
    store_keys: Gauge,
    store_used: Gauge,
    store_max: Gauge,
    store_evictions: Counter,
    store_expirations: Counter,
    store_refusals: Counter,
    reloads_applied: Counter,
    reloads_failed: Counter,
    last_reload_ok: Gauge,
}

impl Metrics {
    /// The metrics of a server whose upstream is `upstream` and whose health, when the server
    /// started, was `initial` (an unavailable start is a BACKEND_UNAVAILABLE_AT_STARTUP).
    pub(crate) fn new(upstream: &str, initial: HealthSnapshot) -> Metrics {
        let recorder = PrometheusBuilder::new().build_recorder();
        for m in CATALOGUE {
            let (name, help) = (KeyName::from(m.name), SharedString::from(m.help));
            match m.kind {
                Kind::Counter => recorder.describe_counter(name, None, help),
                Kind::Gauge => recorder.describe_gauge(name, None, help),
                // Rendered by hand (see `render`).
                Kind::Histogram => {}
            }
        }
        let up = |extra: (&'static str, &'static str)| {
            vec![
                Label::new("upstream", upstream.to_owned()),
                Label::new(extra.0, extra.1),
            ]
        };
        let event = |kind: EventKind| {
            let labels = up(("event", kind.as_str()));
            register_counter(&recorder, UPSTREAM_HEALTH_TRANSITIONS, labels)
        };
        register_gauge(
            &recorder,
            BUILD_INFO,
            vec![Label::new("version", env!("CARGO_PKG_VERSION"))],
        )
        .set(1.0);
        let reload = |result: &'static str| {
            register_counter(
                &recorder,
                CONFIG_RELOADS,
                vec![Label::new("result", result)],
            )
        };
        let at_startup = event(EventKind::UnavailableAtStartup);
        if initial.state != State::Healthy {
            at_startup.increment(1);
        }
        let metrics = Metrics {
            handle: recorder.handle(),
            clients: register_gauge(&recorder, CLIENT_CONNECTIONS, vec![]),
            parked_clients: register_gauge(&recorder, CLIENT_CONNECTIONS_PARKED, vec![]),
            accepted: register_counter(&recorder, CLIENT_CONNECTIONS_TOTAL, vec![]),
            rejected: register_counter(&recorder, CLIENT_CONNECTIONS_REJECTED, vec![]),
            protocol_errors: register_counter(&recorder, PROTOCOL_ERRORS, vec![]),
            auth_failures: register_counter(&recorder, AUTH_FAILURES, vec![]),
            output_bytes: register_gauge(&recorder, CLIENT_OUTPUT_BYTES, vec![]),
            upstream_connects: register_counter(
                &recorder,
                UPSTREAM_CONNECTS,
                vec![Label::new("upstream", upstream.to_owned())],
            ),
            upstream_suspicions: register_counter(
                &recorder,
                UPSTREAM_SUSPICIONS,
                vec![Label::new("upstream", upstream.to_owned())],
            ),
            health: STATES
                .map(|s| register_gauge(&recorder, UPSTREAM_HEALTH, up(("state", s.as_str())))),
            degraded_events: event(EventKind::Degraded),
            recovered_events: event(EventKind::Recovered),
            seen: Mutex::new(Seen::new(initial)),
            refused: register_counter(&recorder, FAIL_CLOSED_REFUSALS, vec![]),
            degraded_replies: register_counter(&recorder, DEGRADED_REPLIES, vec![]),
            discarded_writes: register_counter(&recorder, DISCARDED_WRITES, vec![]),
            store_keys: register_gauge(&recorder, LOCAL_STORE_KEYS, vec![]),
            store_used: register_gauge(&recorder, LOCAL_STORE_USED_BYTES, vec![]),
            store_max: register_gauge(&recorder, LOCAL_STORE_MAX_BYTES, vec![]),
            store_evictions: register_counter(&recorder, LOCAL_STORE_EVICTIONS, vec![]),
            store_expirations: register_counter(&recorder, LOCAL_STORE_EXPIRATIONS, vec![]),
            store_refusals: register_counter(&recorder, LOCAL_STORE_OOM_REFUSALS, vec![]),
            reloads_applied: reload("applied"),
            reloads_failed: reload("failed"),
            last_reload_ok: register_gauge(&recorder, CONFIG_LAST_RELOAD_SUCCESSFUL, vec![]),
            recorder,
        };
        metrics.observe_health(initial);
        metrics
    }

    /// Brings the health gauge and the transition counters up to `snapshot`.
    pub(crate) fn observe_health(&self, snapshot: HealthSnapshot) {
        let steps = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .step(snapshot);
        self.degraded_events.increment(steps.degraded);
        self.recovered_events.increment(steps.recovered);
        for (gauge, state) in self.health.iter().zip(STATES) {
            gauge.set(if state == snapshot.state { 1.0 } else { 0.0 });
        }
    }

    /// The Prometheus text exposition of `sample`.
    pub(crate) fn render(&self, sample: &Sample) -> String {
        self.observe_health(sample.health);
        self.clients.set(sample.clients as f64);
        self.parked_clients.set(sample.parked_clients as f64);
        self.accepted.absolute(sample.accepted);
        self.rejected.absolute(sample.rejected);
        self.protocol_errors.absolute(sample.protocol_errors);
        self.auth_failures.absolute(sample.auth_failures);
        self.output_bytes.set(sample.output_bytes as f64);
        for (limit, n) in &sample.closed_by_limit {
            let labels = vec![Label::new("limit", *limit)];
            register_counter(&self.recorder, CLIENTS_CLOSED_BY_LIMIT, labels).absolute(*n);
        }
        self.upstream_connects.absolute(sample.upstream_connects);
        self.upstream_suspicions
            .absolute(sample.upstream_suspicions);
        // Registered at scrape time: the recorder hands back the same series each time.
        for (command, outcome, n) in &sample.commands {
            let labels = vec![
                Label::new("command", *command),
                Label::new("outcome", *outcome),
            ];
            register_counter(&self.recorder, COMMANDS, labels).absolute(*n);
        }
        for (name, refused, degraded) in &sample.per_keyspace {
            let label = || vec![Label::new("keyspace", name.clone())];
            let r = register_counter(&self.recorder, KEYSPACE_FAIL_CLOSED_REFUSALS, label());
            r.absolute(*refused);
            let d = register_counter(&self.recorder, KEYSPACE_DEGRADED_REPLIES, label());
            d.absolute(*degraded);
        }
        self.refused.absolute(sample.counts.refused);
        self.degraded_replies
            .absolute(sample.counts.degraded_replies);
        self.discarded_writes
            .absolute(sample.counts.discarded_writes);
        let store = &sample.store;
        self.store_keys.set(store.keys as f64);
        self.store_used.set(store.used_bytes as f64);
        self.store_max.set(store.max_bytes as f64);
        self.store_evictions.absolute(store.evictions);
        self.store_expirations.absolute(store.expirations);
        self.store_refusals.absolute(store.oom_refusals);
        for part in &sample.store_parts {
            let label = || vec![Label::new("keyspace", part.keyspace.clone())];
            let r = &self.recorder;
            register_gauge(r, KEYSPACE_LOCAL_KEYS, label()).set(part.keys as f64);
            register_gauge(r, KEYSPACE_LOCAL_USED_BYTES, label()).set(part.used_bytes as f64);
            register_gauge(r, KEYSPACE_LOCAL_MAX_BYTES, label()).set(part.max_bytes as f64);
            register_counter(r, KEYSPACE_LOCAL_EVICTIONS, label()).absolute(part.evictions);
            register_counter(r, KEYSPACE_LOCAL_OOM_REFUSALS, label()).absolute(part.refusals);
        }
        for shard in &sample.shards {
            let label = vec![Label::new("shard", shard.name.clone())];
            let up = f64::from(u8::from(shard.state != State::Unavailable));
            register_gauge(&self.recorder, CLUSTER_SHARD_UP, label).set(up);
        }
        register_counter(&self.recorder, CLUSTER_REDIRECTS, Vec::new()).absolute(sample.redirects);
        let (applied, failed, last_failed) = sample.reloads;
        self.reloads_applied.absolute(applied);
        self.reloads_failed.absolute(failed);
        self.last_reload_ok.set(if last_failed { 0.0 } else { 1.0 });
        let mut text = self.handle.render();
        if !sample.latency.is_empty() {
            let m = UPSTREAM_REQUEST_DURATION;
            text.push_str(&format!(
                "# HELP {} {}\n# TYPE {} histogram\n",
                m.name, m.help, m.name
            ));
            text.push_str(&sample.latency);
        }
        text
    }
}

fn metadata() -> Metadata<'static> {
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()))
}

fn key(m: Metric, labels: Vec<Label>) -> Key {
    debug_assert!(
        labels.iter().map(Label::key).eq(m.labels.iter().copied()),
        "{}: labels as in the catalogue",
        m.name
    );
    Key::from_parts(m.name, labels)
}

fn register_counter(recorder: &PrometheusRecorder, m: Metric, labels: Vec<Label>) -> Counter {
    debug_assert_eq!(m.kind, Kind::Counter, "{}", m.name);
    recorder.register_counter(&key(m, labels), &metadata())
}

fn register_gauge(recorder: &PrometheusRecorder, m: Metric, labels: Vec<Label>) -> Gauge {
    debug_assert_eq!(m.kind, Kind::Gauge, "{}", m.name);
    recorder.register_gauge(&key(m, labels), &metadata())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn snap(state: State, since: Instant) -> HealthSnapshot {
        HealthSnapshot { state, since }
    }

    /// `name{labels}` -> value, from a rendered exposition.
    fn series(text: &str) -> BTreeMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (name, value) = l.rsplit_once(' ').unwrap();
                (name.to_owned(), value.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn catalogue_follows_prometheus_conventions() {
        let mut names: Vec<&str> = CATALOGUE.iter().map(|m| m.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), CATALOGUE.len(), "names are unique");
        for m in CATALOGUE {
            assert!(m.name.starts_with("keywarden_"), "{}", m.name);
            assert!(
                m.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{}",
                m.name
            );
            assert_eq!(
                m.name.ends_with("_total"),
                m.kind == Kind::Counter,
                "{}: counters, and only counters, end in _total",
                m.name
            );
            assert!(!m.help.is_empty() && !m.help.contains('\n'), "{}", m.name);
        }
    }

    #[test]
    fn every_metric_is_in_the_readme() {
        let readme = include_str!("../../README.md");
        for m in CATALOGUE {
            assert!(
                readme.contains(&format!("`{}`", m.name)),
                "README does not document {}",
                m.name
            );
        }
    }

    #[test]
    fn a_stale_snapshot_counts_nothing() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(1);
        let mut seen = Seen::new(snap(State::Healthy, t0));
        assert_eq!(seen.step(snap(State::Unavailable, t1)).degraded, 1);
        // A scrape that read the snapshot before the watcher caught up.
        assert_eq!(seen.step(snap(State::Healthy, t0)), Steps::default());
        assert_eq!(seen.step(snap(State::Unavailable, t1)), Steps::default());
    }

    #[test]
    fn transitions_between_snapshots() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(1);
        let t2 = t0 + Duration::from_millis(2);
        let cases = [
            (State::Healthy, t0, State::Healthy, t0, (0, 0)),
            (State::Healthy, t0, State::Unavailable, t1, (1, 0)),
            (State::Healthy, t0, State::Recovering, t1, (1, 0)),
            (State::Unavailable, t0, State::Recovering, t1, (0, 0)),
            (State::Recovering, t0, State::Unavailable, t1, (0, 0)),
            (State::Recovering, t0, State::Healthy, t1, (0, 1)),
            (State::Unavailable, t0, State::Healthy, t2, (0, 1)),
            // A whole outage between two looks.
            (State::Healthy, t0, State::Healthy, t2, (1, 1)),
        ];
        for (from, since, to, at, (degraded, recovered)) in cases {
            let mut seen = Seen::new(snap(from, since));
            let steps = seen.step(snap(to, at));
            assert_eq!(
                steps,
                Steps {
                    degraded,
                    recovered
                },
                "{from} -> {to}"
            );
            assert_eq!(seen.step(snap(to, at)), Steps::default(), "seen once");
        }
    }

    fn sample(state: State, since: Instant) -> Sample {
        Sample {
            clients: 4,
            parked_clients: 1,
            accepted: 11,
            rejected: 2,
            protocol_errors: 1,
            auth_failures: 5,
            closed_by_limit: vec![("max_client_output", 3)],
            output_bytes: 4096,
            upstream_connects: 6,
            upstream_suspicions: 7,
            per_keyspace: vec![("limits".into(), 4, 0), ("default".into(), 3, 5)],
            commands: vec![("get", "upstream", 10), ("set", "refused", 2)],
            latency: String::new(),
            health: snap(state, since),
            counts: Counts {
                refused: 7,
                degraded_replies: 5,
                discarded_writes: 2,
            },
            store: StoreUsage {
                keys: 3,
                used_bytes: 812,
                max_bytes: 1 << 20,
                evictions: 1,
                expirations: 9,
                oom_refusals: 4,
            },
            store_parts: vec![PartStats {
                keyspace: "default".into(),
                keys: 3,
                used_bytes: 812,
                max_bytes: 1 << 20,
                eviction: crate::policy::keyspace::Eviction::NoEviction,
                evictions: 1,
                refusals: 4,
            }],
            reloads: (2, 1, true),
            shards: vec![ShardStatus {
                name: "127.0.0.1:7001 slots 0-5460".into(),
                primary: "127.0.0.1:7004".into(),
                state: State::Unavailable,
            }],
            redirects: 3,
        }
    }

    #[tokio::test]
    async fn renders_every_metric_with_help_and_type() {
        let t0 = Instant::now();
        let metrics = Metrics::new("127.0.0.1:6379", snap(State::Healthy, t0));
        let text = metrics.render(&sample(State::Healthy, t0));
        for m in CATALOGUE {
            let kind = match m.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                // Rendered from the upstream's histogram, empty in this sample (see
                // `histogram` and tests/admin.rs).
                Kind::Histogram => continue,
            };
            assert!(
                text.contains(&format!("# HELP {} {}\n", m.name, m.help)),
                "{text}"
            );
            assert!(
                text.contains(&format!("# TYPE {} {kind}\n", m.name)),
                "{text}"
            );
        }
        let s = series(&text);
        let up = r#"upstream="127.0.0.1:6379""#;
        let want = [
            (
                format!(
                    r#"keywarden_build_info{{version="{}"}}"#,
                    env!("CARGO_PKG_VERSION")
                ),
                1.0,
            ),
            ("keywarden_client_connections".to_owned(), 4.0),
            ("keywarden_client_connections_parked".to_owned(), 1.0),
            (
                format!(r#"keywarden_upstream_health{{{up},state="healthy"}}"#),
                1.0,
            ),
            (
                format!(r#"keywarden_upstream_health{{{up},state="recovering"}}"#),
                0.0,
            ),
            (
                format!(r#"keywarden_upstream_health{{{up},state="unavailable"}}"#),
                0.0,
            ),
            (
                format!(
                    r#"keywarden_upstream_health_transitions_total{{{up},event="BACKEND_UNAVAILABLE_AT_STARTUP"}}"#
                ),
                0.0,
            ),
            (
                format!(
                    r#"keywarden_upstream_health_transitions_total{{{up},event="BACKEND_DEGRADED"}}"#
                ),
                0.0,
            ),
            (
                format!(
                    r#"keywarden_upstream_health_transitions_total{{{up},event="BACKEND_RECOVERED"}}"#
                ),
                0.0,
            ),
            ("keywarden_client_connections_total".to_owned(), 11.0),
            (
                "keywarden_client_connections_rejected_total".to_owned(),
                2.0,
            ),
            ("keywarden_protocol_errors_total".to_owned(), 1.0),
            ("keywarden_auth_failures_total".to_owned(), 5.0),
            (
                r#"keywarden_clients_closed_total{limit="max_client_output"}"#.to_owned(),
                3.0,
            ),
            ("keywarden_client_output_bytes".to_owned(), 4096.0),
            (format!(r#"keywarden_upstream_connects_total{{{up}}}"#), 6.0),
            (
                format!(r#"keywarden_upstream_suspicions_total{{{up}}}"#),
                7.0,
            ),
            (
                r#"keywarden_keyspace_fail_closed_refusals_total{keyspace="limits"}"#.to_owned(),
                4.0,
            ),
            (
                r#"keywarden_keyspace_fail_closed_refusals_total{keyspace="default"}"#.to_owned(),
                3.0,
            ),
            (
                r#"keywarden_keyspace_degraded_replies_total{keyspace="limits"}"#.to_owned(),
                0.0,
            ),
            (
                r#"keywarden_keyspace_degraded_replies_total{keyspace="default"}"#.to_owned(),
                5.0,
            ),
            (
                r#"keywarden_commands_total{command="get",outcome="upstream"}"#.to_owned(),
                10.0,
            ),
            (
                r#"keywarden_commands_total{command="set",outcome="refused"}"#.to_owned(),
                2.0,
            ),
            ("keywarden_fail_closed_refusals_total".to_owned(), 7.0),
            ("keywarden_degraded_replies_total".to_owned(), 5.0),
            ("keywarden_discarded_writes_total".to_owned(), 2.0),
            ("keywarden_local_store_keys".to_owned(), 3.0),
            ("keywarden_local_store_used_bytes".to_owned(), 812.0),
            ("keywarden_local_store_max_bytes".to_owned(), 1048576.0),
            ("keywarden_local_store_evictions_total".to_owned(), 1.0),
            ("keywarden_local_store_expirations_total".to_owned(), 9.0),
            ("keywarden_local_store_oom_refusals_total".to_owned(), 4.0),
            (
                r#"keywarden_keyspace_local_keys{keyspace="default"}"#.to_owned(),
                3.0,
            ),
            (
                r#"keywarden_keyspace_local_used_bytes{keyspace="default"}"#.to_owned(),
                812.0,
            ),
            (
                r#"keywarden_keyspace_local_max_bytes{keyspace="default"}"#.to_owned(),
                1048576.0,
            ),
            (
                r#"keywarden_keyspace_local_evictions_total{keyspace="default"}"#.to_owned(),
                1.0,
            ),
            (
                r#"keywarden_keyspace_local_oom_refusals_total{keyspace="default"}"#.to_owned(),
                4.0,
            ),
            (
                r#"keywarden_config_reloads_total{result="applied"}"#.to_owned(),
                2.0,
            ),
            (
                r#"keywarden_config_reloads_total{result="failed"}"#.to_owned(),
                1.0,
            ),
            ("keywarden_config_last_reload_successful".to_owned(), 0.0),
            (
                r#"keywarden_cluster_shard_up{shard="127.0.0.1:7001 slots 0-5460"}"#.to_owned(),
                0.0,
            ),
            ("keywarden_cluster_redirects_total".to_owned(), 3.0),
        ];
        assert_eq!(s, want.into_iter().collect::<BTreeMap<_, _>>(), "{text}");

        // An outage: the gauge follows, the transition is counted once however often it is
        // scraped.
        let t1 = t0 + Duration::from_millis(5);
        metrics.render(&sample(State::Unavailable, t1));
        let s = series(&metrics.render(&sample(State::Unavailable, t1)));
        assert_eq!(
            s[&format!(r#"keywarden_upstream_health{{{up},state="unavailable"}}"#)],
            1.0
        );
        assert_eq!(
            s[&format!(r#"keywarden_upstream_health{{{up},state="healthy"}}"#)],
            0.0
        );
        assert_eq!(
            s[&format!(
                r#"keywarden_upstream_health_transitions_total{{{up},event="BACKEND_DEGRADED"}}"#
            )],
            1.0
        );
    }

    #[tokio::test]
    async fn an_unavailable_start_is_counted_and_two_servers_keep_their_own_numbers() {
        let t0 = Instant::now();
        let a = Metrics::new("a:1", snap(State::Unavailable, t0));
        let b = Metrics::new("b:1", snap(State::Healthy, t0));
        let sa = series(&a.render(&sample(State::Unavailable, t0)));
        let mut other = sample(State::Healthy, t0);
        other.store.keys = 99;
        let sb = series(&b.render(&other));
        assert_eq!(
            sa[r#"keywarden_upstream_health_transitions_total{upstream="a:1",event="BACKEND_UNAVAILABLE_AT_STARTUP"}"#],
            1.0
        );
        assert_eq!(
            sb[r#"keywarden_upstream_health_transitions_total{upstream="b:1",event="BACKEND_UNAVAILABLE_AT_STARTUP"}"#],
            0.0
        );
        assert_eq!(sa["keywarden_local_store_keys"], 3.0);
        assert_eq!(sb["keywarden_local_store_keys"], 99.0);
        assert!(!sa.keys().any(|k| k.contains("b:1")));
    }
}
