//! The listener: accepts clients, enforces `max_clients`, and runs graceful shutdown.
//!
//! `run` takes its listener and its shutdown signal as arguments, so the binary and the tests
//! start the proxy the same way. It also starts and stops the [admin listener](crate::ops::admin)
//! when one is configured.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use crate::command;
use crate::command::Categories;
use crate::config::Settings;
use crate::error::ProxyError;
use crate::local::clock::unix_ms;
use crate::local::engine;
use crate::local::store::Store;
use crate::ops::admin::{self, Admin};
use crate::ops::events::{self, AffectedKeyspaces, Events};
use crate::ops::reload::{self, Live, Policy, ReloadCounts, Trigger};
use crate::policy::auth::{CommandAccess, Denial, UserId};
use crate::policy::keyspace::{Membership, Mode};
use crate::policy::router::{self, Refusal, Route};
use crate::protocol::request::Request;
use crate::proxy::clients::{Clients, Phase};
use crate::proxy::session::client_state::ClientState;
use crate::proxy::session::Session;
use crate::upstream::health::State;
use crate::upstream::monitor::{Monitor, MonitorHandle, MonitorSettings};
use crate::upstream::shared::Upstream;
use crate::upstream::socket;

/// What every session of one server shares.
pub struct Server {
    /// The configuration in force, replaced whole by a [reload](crate::ops::reload).
    pub live: Live,
    pub upstream: Arc<Upstream>,
    pub clients: Clients,
    pub monitor: MonitorHandle,
    /// The local store serving `local_only` keyspaces, and `degraded` ones during an outage.
    pub store: Arc<Store>,
    /// Where events go (the monitor's, and reloads').
    pub events: Arc<Events>,
    pub reloads: ReloadCounts,
}

impl Server {
    /// The configuration in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.live.current()
    }
}

/// The server as one batch of requests sees it: with the policy its session holds, so that
/// every decision about the batch is made by one configuration.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
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
) -> router::Request<'k> {
    // Every command the engine runs is known: skip the table lookup for those.
    let local = runs_locally(req, supports);
    router::Request {
        keys,
        known: local || command::lookup_request(req).is_some(),
        local,
    }
}

impl<'a> Ctx<'a> {
    pub fn new(server: &'a Server, policy: &'a Policy) -> Ctx<'a> {
        Ctx {
            server,
            policy,
            settings: &policy.settings,
        }
    }

    /// Where `req` goes, given whether the upstream is available (read once per batch from
    /// the health snapshot).
    pub fn route(&self, req: &Request, upstream_available: bool) -> Route {
        self.route_in(req, upstream_available, &mut engine::Supports::default())
    }

    /// [`Ctx::route`] for one of a batch of requests, which share `supports`.
    pub fn route_in(
        &self,
        req: &Request,
        upstream_available: bool,
        supports: &mut engine::Supports,
    ) -> Route {
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
    pub fn serve_locally(
        &self,
        reqs: &[Request],
        db: u32,
        resp3: bool,
        upstream_available: bool,
        recoveries: u64,
    ) -> Option<Bytes> {
        let mut out = BytesMut::with_capacity(64 * reqs.len());
        let generation = self.policy.generation;
        let mut txn = self.store.lock_judged(unix_ms(), generation, recoveries)?;
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

    /// Counts `req`, served locally while the upstream is unavailable, as a degraded reply if
    /// its keyspace is degraded, and as a discarded write if it is a write that `succeeded`.
    pub fn count_degraded(&self, req: &Request, succeeded: bool) {
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
    pub fn permit(&self, req: &Request, state: &Option<Box<ClientState>>) -> Result<(), Bytes> {
        let users = &self.settings.users;
        if !users.required() {
            return Ok(());
        }
        self.permit_as(req, ClientState::user_of(state, users))
    }

    /// [`Ctx::permit`] for a client acting as `who`.
    pub fn permit_as(&self, req: &Request, who: Option<UserId>) -> Result<(), Bytes> {
        let users = &self.settings.users;
        if !users.required() {
            return Ok(());
        }
        let cmd = command::lookup_request(req);
        // Redis looks the command up and checks its arity before anything else.
        if let Some(c) = cmd {
            if !c.arity_ok(req.argc()) {
                let text = format!(
                    "-ERR wrong number of arguments for '{}' command\r\n",
                    c.name()
                );
                return Err(Bytes::from(text));
            }
        }
        let positions = command::keys(req).unwrap_or_default();
        let keys: SmallVec<[&[u8]; 4]> = positions
            .iter()
            .filter_map(|&i| req.arg(i as usize))
            .collect();
        users
            .check(who, cmd, &keys, &self.settings.keyspaces)
            .map_err(|denial| match denial {
                Denial::UnknownCommand => engine::unknown_command(req),
                denial => Bytes::from(format!("-{denial}\r\n")),
            })
    }

    /// Whether the client may run the proxy's admin command: a user with every command or the
    /// `admin` category.
    pub fn permit_admin(&self, state: &Option<Box<ClientState>>) -> Result<(), Bytes> {
        let users = &self.settings.users;
        let Some(who) = ClientState::user_of(state, users) else {
            return Err(Bytes::from(format!("-{}\r\n", Denial::NoAuth)));
        };
        match users.user(who).commands() {
            CommandAccess::All => Ok(()),
            CommandAccess::Categories(c) if c.contains(Categories::ADMIN) => Ok(()),
            CommandAccess::Categories(_) => Err(Bytes::from(format!(
                "-{}\r\n",
                Denial::Command("keywarden".into())
            ))),
        }
    }

    /// The error reply for a refused request, counted where it is an outage refusal.
    pub fn refusal(&self, refusal: Refusal, req: &Request) -> ProxyError {
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

/// Serves clients from `listener` until `shutdown` resolves, then drains: stops accepting,
/// lets in-flight requests finish within `shutdown_timeout`, and closes every connection.
/// With `[admin] listen` set, the admin listener serves from startup until the drain ends
/// (`/readyz` answers 503 while draining); failing to bind it is an error, before anything
/// starts. SIGHUP [reloads](crate::ops::reload) the configuration.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    // SIGHUP reloads the config file. Registered first (a SIGHUP during startup must not end
    // the process), and even without a file, so that a stray one is a failed reload; one
    // that comes before the listener serves is handled once it does.
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: reload with KEYWARDEN RELOAD");
            None
        }
    };
    let admin_listener = match settings.admin.listen {
        Some(addr) => Some(admin::bind(addr).await?),
        None => None,
    };
    let events = Arc::new(Events::new(
        events::instance_id(settings.instance_id.as_deref()),
        settings.events.file.as_deref(),
    )?);
    let monitor = Monitor::start(
        MonitorSettings::from_settings(&settings),
        events.clone(),
        AffectedKeyspaces::of(&settings.keyspaces),
    )
    .await;
    let upstream = Upstream::start(
        &settings.upstream,
        &settings.limits,
        settings.tcp_keepalive,
        monitor.handle(),
    );
    let store = Arc::new(Store::new(settings.local_store.max_bytes));
    tracing::info!(listen = %listener.local_addr()?, upstream = %settings.upstream.address, "keywarden listening");
    let server = Arc::new(Server {
        live: Live::new(settings),
        upstream: upstream.clone(),
        clients: Clients::default(),
        monitor: monitor.handle(),
        store: store.clone(),
        events,
        reloads: ReloadCounts::default(),
    });
    let housekeeping = tokio::spawn(housekeeping(server.clone()));
    let admin = match admin_listener {
        Some(l) => Some(Admin::start(l, server.clone())?),
        None => None,
    };
    let mut policy = server.policy();

    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let _ = reload::reload(&server, Trigger::Signal);
                continue;
            }
            _ = &mut shutdown => break,
        };
        if policy.generation != server.live.generation() {
            policy = server.policy();
        }
        let settings = &policy.settings;
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of file descriptors and similar: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if server.clients.count() >= settings.max_clients {
            server.clients.record_rejected();
            tokio::spawn(refuse(stream));
            continue;
        }
        if let Err(e) = socket::tune(&stream, settings.tcp_keepalive) {
            tracing::debug!(error = %e, "client socket setup failed");
            continue;
        }
        tokio::spawn(Session::new(stream, server.clone(), policy.clone()));
    }

    drop(listener);
    let clients = &server.clients;
    tracing::info!(clients = clients.count(), "shutting down: draining clients");
    clients.set_phase(Phase::Drain);
    let shutdown_timeout = server.policy().settings.shutdown_timeout;
    if tokio::time::timeout(shutdown_timeout, clients.all_gone())
        .await
        .is_err()
    {
        tracing::warn!(
            clients = clients.count(),
            "shutdown deadline passed: closing remaining clients"
        );
        clients.set_phase(Phase::Stop);
        let _ = tokio::time::timeout(Duration::from_secs(1), clients.all_gone()).await;
    }
    housekeeping.abort();
    if let Some(admin) = admin {
        admin.stop();
    }
    upstream.stop();
    monitor.stop();
    tracing::info!("keywarden stopped");
    Ok(())
}

/// Background work on the local store: active expiry, and discarding what degraded keyspaces
/// wrote locally once the upstream is healthy again (the upstream's data is the truth).
async fn housekeeping(server: Arc<Server>) {
    let mut health = server.monitor.subscribe();
    let mut was_healthy = health.borrow().state == State::Healthy;
    let mut expiry = tokio::time::interval(Duration::from_millis(100));
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = expiry.tick() => {
                // Redis's active expiry samples 20 keys per cycle, 10 times a second; a few
                // hundred per tick keeps up with far more and never holds the lock long.
                server.store.expire_some(unix_ms(), 256);
            }
            changed = health.changed() => {
                if changed.is_err() {
                    return;
                }
                let healthy = health.borrow_and_update().state == State::Healthy;
                if healthy && !was_healthy {
                    // Judged by the policy in force while the store is locked (a reload
                    // installs its policy under the same lock).
                    let judge = || server.policy();
                    let removed = server.store.discard_on_recovery(judge, |policy, _, key| {
                        let keyspaces = &policy.settings.keyspaces;
                        keyspaces.mode(keyspaces.classify(key)) == Mode::Degraded
                    });
                    tracing::info!(keys = removed, "discarded local data of degraded keyspaces");
                }
                was_healthy = healthy;
            }
        }
    }
}

/// Tells a client over the limit why, as Redis does, and closes it.
async fn refuse(mut stream: TcpStream) {
    let reply = ProxyError::MaxClients.to_reply();
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&reply)).await;
}
