//! What every session shares ([`Server`]), and the server as one batch of requests sees it
//! ([`Ctx`]): routing, permissions and refusals judged by the policy the batch holds.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use crate::command;
use crate::command::Categories;
use crate::config::live::{Live, Policy};
use crate::config::Settings;
use crate::error::{self, ProxyError};
use crate::local::clock::unix_ms;
use crate::local::engine;
use crate::local::store::{Store, Txn, Watch};
use crate::ops::admin;
use crate::ops::events::Events;
use crate::ops::metrics::{self, Overview, Sample, ShardStatus, StoreUsage};
use crate::ops::reload::{self, Applied, Rejected, ReloadCounts, Trigger};
use crate::policy::auth::{CommandAccess, Denial, UserId};
use crate::policy::keyspace::{Membership, Mode};
use crate::policy::router::{self, Refusal, Route};
use crate::protocol::request::Request;
use crate::proxy::clients::{Clients, Phase};
use crate::proxy::session::client_state::SessionState;
use crate::upstream::cluster::Cluster;
use crate::upstream::monitor::MonitorHandle;
use crate::upstream::shared::Upstream;

/// What every session of one server shares.
pub(crate) struct Server {
    /// The configuration in force, replaced whole by a [reload](crate::ops::reload).
    pub live: Live,
    /// The shards when the upstream is a Redis Cluster; `upstream` is then a connection to
    /// its first seed, which only learns the server's version.
    pub cluster: Option<Arc<Cluster>>,
    pub upstream: Arc<Upstream>,
    pub clients: Clients,
    pub monitor: MonitorHandle,
    /// The local store serving `local_only` keyspaces, and `degraded` ones during an outage.
    pub store: Arc<Store>,
    /// Where events go (the monitor's, and reloads').
    pub events: Arc<Events>,
    pub reloads: ReloadCounts,
    /// The TLS listener's configuration, when `[tls]` is set.
    pub tls: Option<Arc<crate::upstream::tls::ServerTls>>,
}

impl Server {
    /// The configuration in force.
    pub(crate) fn policy(&self) -> Arc<Policy> {
        self.live.current()
    }

    /// What INFO and `/status` show: lock-free but for the store's few counters.
    pub(crate) fn overview(&self) -> Overview {
        let store = &self.store;
        Overview {
            clients: self.clients.count(),
            parked_clients: self.clients.parking.parked(),
            health: self.monitor.snapshot(),
            counts: self.monitor.counters().totals(),
            store: StoreUsage {
                keys: store.keys(),
                used_bytes: store.used_bytes(),
                max_bytes: store.max_bytes(),
                evictions: store.evictions(),
                expirations: store.expirations(),
                oom_refusals: store.refusals(),
            },
            store_parts: store.part_stats(),
            reloads: self.reloads.totals(),
            shards: self.cluster.as_ref().map_or_else(Vec::new, |c| {
                (c.shards().iter())
                    .map(|s| ShardStatus {
                        name: s.name.clone(),
                        primary: s.target.current().to_string(),
                        state: s.monitor.handle().snapshot().state,
                    })
                    .collect()
            }),
            redirects: self.cluster.as_ref().map_or(0, |c| {
                c.redirects.load(std::sync::atomic::Ordering::Relaxed)
            }),
        }
    }

    /// The metrics' state now: the [`Server::overview`], the client and per-keyspace totals,
    /// the latency histogram rendered, and every command's counts.
    pub(crate) fn sample(&self) -> Sample {
        let Overview {
            clients,
            parked_clients,
            health,
            counts,
            store,
            store_parts,
            reloads,
            shards,
            redirects,
        } = self.overview();
        let policy = self.policy();
        let (accepted, rejected, protocol_errors) = self.clients.totals();
        Sample {
            clients,
            parked_clients,
            accepted,
            rejected,
            protocol_errors,
            auth_failures: self.clients.auth_failures(),
            closed_by_limit: self.clients.closed_by_limit(),
            output_bytes: self.clients.output(),
            upstream_connects: self.upstream.connects(),
            upstream_suspicions: self.monitor.suspicions(),
            per_keyspace: policy.per_keyspace.totals(&policy.settings.keyspaces),
            latency: self.upstream.latency().render(
                metrics::UPSTREAM_REQUEST_DURATION.name,
                &format!("upstream=\"{}\"", self.monitor.upstream()),
            ),
            commands: (self.clients.commands.totals().into_iter())
                .map(|(c, o, n)| (c, o.as_str(), n))
                .collect(),
            health,
            counts,
            store,
            store_parts,
            reloads,
            shards,
            redirects,
        }
    }

    /// Reads the configuration file again and installs it (see [`reload::reload`]).
    pub(crate) fn reload(&self, trigger: Trigger) -> Result<Applied, Rejected> {
        let parts = reload::Parts {
            live: &self.live,
            upstream: &self.upstream,
            cluster: self.cluster.as_deref(),
            monitor: &self.monitor,
            store: &self.store,
            events: &self.events,
            counts: &self.reloads,
            tls: self.tls.as_deref(),
            wake_clients: &|| self.clients.wake_all(),
        };
        reload::reload(&parts, trigger)
    }

    /// Whether new clients are served: false once shutdown began.
    pub(crate) fn ready(&self) -> bool {
        self.clients.phase() == Phase::Run
    }
}

impl admin::Proxy for Server {
    fn sample(&self) -> Sample {
        Server::sample(self)
    }

    fn overview(&self) -> Overview {
        Server::overview(self)
    }

    fn policy(&self) -> Arc<Policy> {
        Server::policy(self)
    }

    fn ready(&self) -> bool {
        Server::ready(self)
    }

    fn health(&self) -> &MonitorHandle {
        &self.monitor
    }
}

/// The server as one batch of requests sees it: with the policy its session holds, so that
/// every decision about the batch is made by one configuration.
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub server: &'a Server,
    pub policy: &'a Policy,
    /// The policy's settings.
    pub settings: &'a Settings,
}

impl std::ops::Deref for Ctx<'_> {
    type Target = Server;

    fn deref(&self) -> &Server {
        self.server
    }
}

/// Whether the local store can run `req`: a command the engine runs, or WATCH (which the
/// session runs against the local store).
fn runs_locally(req: &Request, supports: &mut engine::Supports) -> bool {
    supports.check(req.name()) || req.name().eq_ignore_ascii_case(b"watch")
}

/// What the router needs to know about `req` besides its keys.
fn view<'k>(
    req: &Request,
    keys: &'k [&'k [u8]],
    supports: &mut engine::Supports,
) -> router::Query<'k> {
    // Every command the engine runs is known: skip the table lookup for those.
    let local = runs_locally(req, supports);
    router::Query {
        keys,
        known: local || command::lookup_request(req).is_some(),
        local,
    }
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(server: &'a Server, policy: &'a Policy) -> Ctx<'a> {
        Ctx {
            server,
            policy,
            settings: &policy.settings,
        }
    }

    /// Where `req` goes, given whether the upstream is available (read once per batch from
    /// the health snapshot).
    pub(crate) fn route(&self, req: &Request, upstream_available: bool) -> Route {
        self.route_in(req, upstream_available, &mut engine::Supports::default())
    }

    /// Whether requests go upstream, read once per batch: the monitor's state, or under a
    /// cluster, whether every shard forwards (when one does not, each request is judged by
    /// its keys' shards: see [`Ctx::route_in`]).
    pub(crate) fn upstream_available(&self) -> bool {
        match &self.cluster {
            Some(cluster) => cluster.all_available(),
            None => self.monitor.snapshot().upstream_available(),
        }
    }

    /// Under a cluster with a shard that does not forward: whether the shards of `req`'s keys
    /// do (for a keyless request, whether any shard does).
    fn shards_available(&self, req: &Request) -> bool {
        let Some(cluster) = &self.cluster else {
            return false;
        };
        let positions = command::keys(req).unwrap_or_default();
        let keys: SmallVec<[&[u8]; 4]> = positions
            .iter()
            .filter_map(|&i| req.arg(i as usize))
            .collect();
        cluster.available_for(&keys)
    }

    /// [`Ctx::route`] for one of a batch of requests, which share `supports`.
    pub(crate) fn route_in(
        &self,
        req: &Request,
        upstream_available: bool,
        supports: &mut engine::Supports,
    ) -> Route {
        // A request spanning an available shard and one that is not follows the strictest
        // key, as any request does while the upstream is unavailable.
        let upstream_available = upstream_available || self.shards_available(req);
        let keyspaces = &self.settings.keyspaces;
        if keyspaces.is_empty() {
            // Every key is in the default keyspace: the keys do not matter, skip finding them.
            let mode = keyspaces.default_mode();
            if upstream_available && mode != Mode::LocalOnly {
                return Route::Upstream;
            }
            let local = runs_locally(req, supports);
            return router::route_default(mode, upstream_available, local, || {
                command::lookup_request(req).is_some()
            });
        }
        // A command whose keys cannot be found (wrong arity, bad numkeys) goes by the default
        // keyspace: upstream, Redis answers it with its own error.
        let positions = command::keys(req).unwrap_or_default();
        let keys: SmallVec<[&[u8]; 4]> = positions
            .iter()
            .filter_map(|&i| req.arg(i as usize))
            .collect();
        router::route(keyspaces, upstream_available, view(req, &keys, supports))
    }

    /// Runs `reqs` against the local store in database `db`, with the store locked once, and
    /// returns their replies. A request served locally while the upstream is unavailable is a
    /// degraded reply, unless it is `local_only` (the router never mixes the two), and a write
    /// it makes will be discarded on recovery.
    ///
    /// `recoveries` is [`Store::recoveries`] as read before the health snapshot that routed
    /// them. `None` when a reload installed another policy since, or a recovery discarded the
    /// degraded keyspaces' data: nothing ran, and the requests must be judged again (see
    /// [`Store::lock_judged`]).
    pub(crate) fn serve_locally(
        &self,
        reqs: &[Request],
        db: u32,
        resp3: bool,
        upstream_available: bool,
        recoveries: u64,
    ) -> Option<Bytes> {
        let mut out = BytesMut::with_capacity(64 * reqs.len());
        let mut txn = self.lock_store(recoveries)?;
        if upstream_available || !self.settings.keyspaces.any_in(Mode::Degraded) {
            engine::execute_all_in(&mut txn, db, resp3, reqs, &mut out);
            return Some(out.freeze());
        }
        // Degraded replies are counted one by one, so run them one by one.
        for req in reqs {
            let start = out.len();
            engine::execute_all_in(&mut txn, db, resp3, std::slice::from_ref(req), &mut out);
            self.count_degraded(req, out[start] != b'-');
        }
        Some(out.freeze())
    }

    /// Runs a transaction's `queued` commands against the local store, as EXEC: locked and
    /// judged as [`Ctx::serve_locally`] judges a batch (`None`: nothing ran, and EXEC must be
    /// judged again), aborted if a key in `watch` changed. Returns EXEC's reply and the
    /// client's database afterwards (a queued SELECT moves it). Run while the upstream is
    /// unavailable, every queued command counts as a degraded reply, and its writes as ones
    /// recovery will discard (a command failing inside EXEC still counts).
    pub(crate) fn exec_locally(
        &self,
        queued: &[Request],
        db: u32,
        resp3: bool,
        watch: Option<&mut Watch>,
        upstream_available: bool,
        recoveries: u64,
    ) -> Option<(Bytes, u32)> {
        let txn = self.lock_store(recoveries)?;
        let mut out = BytesMut::new();
        let db = engine::exec_transaction(txn, db, resp3, queued, watch, &mut out);
        let ran = out.first() == Some(&b'*') && !out.starts_with(b"*-1");
        if !upstream_available && ran {
            for req in queued {
                self.count_degraded(req, true);
            }
        }
        Some((out.freeze(), db))
    }

    /// The local store, locked for requests routed by this batch's policy and by a health
    /// snapshot read when the store had seen `recoveries` recoveries; `None` when a reload or
    /// a recovery has come since (see [`Store::lock_judged`]).
    fn lock_store(&self, recoveries: u64) -> Option<Txn<'_>> {
        (self.store).lock_judged(unix_ms(), self.policy.generation, recoveries)
    }

    /// Counts `req`, served locally while the upstream is unavailable, as a degraded reply if
    /// its keyspace is degraded, and as a discarded write if it is a write that `succeeded`.
    pub(crate) fn count_degraded(&self, req: &Request, succeeded: bool) {
        let membership = self.first_key_membership(req);
        if self.settings.keyspaces.mode(membership) != Mode::Degraded {
            return;
        }
        self.policy.per_keyspace.record_degraded(membership);
        let counters = self.monitor.counters();
        counters.record_degraded_reply();
        if succeeded && command::lookup_request(req).is_some_and(|c| c.is_write()) {
            counters.record_discarded_writes(1);
        }
    }

    fn first_key_membership(&self, req: &Request) -> Membership {
        let keyspaces = &self.settings.keyspaces;
        command::keys(req)
            .ok()
            .and_then(|keys| keys.first().and_then(|&i| req.arg(i as usize)))
            .map_or(Membership::Default, |key| keyspaces.classify(key))
    }

    /// Whether the client may run `req`: authenticated, and the command and its keys allowed
    /// to its user. Checked before routing, so it holds in every mode and health state. The
    /// reply to send when not. Costs nothing when no password is configured (everyone is the
    /// all-permission default user).
    pub(crate) fn permit(&self, req: &Request, state: &SessionState) -> Result<(), Bytes> {
        let users = &self.settings.users;
        if !users.required() {
            return Ok(());
        }
        self.permit_as(req, state.user(users))
    }

    /// [`Ctx::permit`] for a client acting as `who`.
    pub(crate) fn permit_as(&self, req: &Request, who: Option<UserId>) -> Result<(), Bytes> {
        let users = &self.settings.users;
        if !users.required() {
            return Ok(());
        }
        let cmd = command::lookup_request(req);
        // Redis looks the command up and checks its arity before anything else.
        if let Some(c) = cmd {
            if !c.arity_ok(req.argc()) {
                let command = c.name().to_owned();
                return Err(ProxyError::Arity { command }.to_reply());
            }
        }
        let positions = command::keys(req).unwrap_or_default();
        let keys: SmallVec<[&[u8]; 4]> = positions
            .iter()
            .filter_map(|&i| req.arg(i as usize))
            .collect();
        users
            .check(who, cmd, &keys, &self.settings.keyspaces)
            .and_then(|()| users.check_sort(who, command::sort_pattern(req)))
            .map_err(|denial| match denial {
                Denial::UnknownCommand => engine::unknown_command(req),
                Denial::Unclassified => {
                    let name = String::from_utf8_lossy(req.name()).to_lowercase();
                    error::reply(&Denial::Command(name))
                }
                denial => error::reply(&denial),
            })
    }

    /// Whether the client may run the proxy's admin command: a user with every command or the
    /// `admin` category.
    pub(crate) fn permit_admin(&self, state: &SessionState) -> Result<(), Bytes> {
        let users = &self.settings.users;
        let Some(who) = state.user(users) else {
            return Err(error::reply(&Denial::NoAuth));
        };
        match users.user(who).commands() {
            CommandAccess::All => Ok(()),
            CommandAccess::Categories(c) if c.contains(Categories::ADMIN) => Ok(()),
            CommandAccess::Categories(_) => Err(error::reply(&Denial::Command("keywarden".into()))),
        }
    }

    /// The error reply for a refused request, counted where it is an outage refusal.
    pub(crate) fn refusal(&self, refusal: Refusal, req: &Request) -> ProxyError {
        let keyspaces = &self.settings.keyspaces;
        let command =
            || String::from_utf8_lossy(&req.name()[..req.name().len().min(64)]).to_lowercase();
        match refusal {
            Refusal::FailClosed(m) => {
                self.monitor.counters().record_refused();
                self.policy.per_keyspace.record_refused(m);
                ProxyError::FailClosed {
                    keyspace: keyspaces.name(m).to_owned(),
                }
            }
            Refusal::MixedLocalOnly => ProxyError::MixedLocalOnly { command: command() },
            Refusal::Unsupported(m) => ProxyError::Unsupported {
                command: command(),
                keyspace: keyspaces.name(m).to_owned(),
            },
        }
    }
}
