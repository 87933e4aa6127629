//! The listener: accepts clients, enforces `max_clients`, and runs graceful shutdown.
//!
//! `run` takes its listener and its shutdown signal as arguments, so the binary and the tests
//! start the proxy the same way. It also starts and stops the [admin listener](crate::ops::admin)
//! when one is configured.

use std::future::Future;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};

use crate::config::live::Live;
use crate::config::Settings;
use crate::config::UpstreamSettings;
use crate::error::ProxyError;
use crate::local::clock::unix_ms;
use crate::local::store::Store;
use crate::ops::admin::{self, Admin};
use crate::ops::events::{self, AffectedKeyspaces, Events};
use crate::ops::reload::{store_layout, ReloadCounts, Trigger};
use crate::policy::keyspace::Mode;
use crate::proxy::clients::{Clients, Phase};
use crate::proxy::parker;
use crate::proxy::server::Server;
use crate::proxy::session::Session;
use crate::upstream::catalog;
use crate::upstream::cluster::{Cluster, OnSwitch};
use crate::upstream::handshake;
use crate::upstream::health::State;
use crate::upstream::health::{Cause, Outcome};
use crate::upstream::monitor::{Monitor, MonitorSettings};
use crate::upstream::monitor::{Probe, ProbeTimeouts};
use crate::upstream::outage::{Event, OutageEvents};
use crate::upstream::shared::Upstream;
use crate::upstream::socket::{self, Conn};
use crate::upstream::target::{self, Target};
use crate::upstream::workers;

/// Connections the kernel completes for a listener before keywarden accepts them. Redis's
/// `tcp-backlog` is 511 and mio's 1024; the standard library's (and so tokio's `bind`) is 128,
/// which a burst of clients (an application's pools reconnecting at once) overflows: the
/// kernel then drops their handshakes and each client waits a second to retry (measured:
/// 10,000 clients opened in batches of 200 took 6.5 s against 128, 0.5 s for Redis). The
/// kernel caps it at `net.core.somaxconn`.
const BACKLOG: u32 = 1024;

/// A client listener on `addr`, with [`BACKLOG`].
pub fn bind(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG as i32)?;
    TcpListener::from_std(socket.into())
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
    // The TLS listener, as Redis's tls-port: its certificate is read now, so a bad one stops
    // startup with its reason.
    let tls_listener = match &settings.tls {
        Some(tls) => {
            let config = crate::upstream::tls::server_config(tls)?;
            let listener = bind(tls.listen)?;
            tracing::info!(listen = %listener.local_addr()?, "keywarden listening for TLS clients");
            Some((
                listener,
                Arc::new(crate::upstream::tls::ServerTls::new(config)),
            ))
        }
        None => None,
    };
    let events = Arc::new(Events::new(
        events::instance_id(settings.instance_id.as_deref()),
        settings.events.file.as_deref(),
    )?);
    // Where the upstream is: its address, or the primary the sentinels name now.
    let target = match &settings.upstream.sentinel {
        None => Target::new(&settings.upstream.address),
        Some(sentinel) => {
            let found = target::primary(sentinel, settings.upstream.tls.as_ref()).await;
            match &found {
                Some(primary) => {
                    tracing::info!(master = %sentinel.master, %primary, "the sentinels name the primary")
                }
                None => {
                    tracing::warn!(master = %sentinel.master, "no sentinel names a primary yet")
                }
            }
            Target::new(found.as_deref().unwrap_or_default())
        }
    };
    // A cluster: its shards, each with its own monitor and connections, and one monitor
    // over them all (healthy while every shard is) for what looks at the upstream as a whole.
    let cluster = match settings.upstream.cluster_nodes.is_empty() {
        true => None,
        false => {
            let told = events.clone();
            let on_switch: OnSwitch = Arc::new(move |shard: &str, from: &str, to: &str| {
                told.emit_switched(shard, from, to)
            });
            Some(
                Cluster::start(
                    &settings.upstream,
                    &settings.limits,
                    settings.tcp_keepalive,
                    MonitorSettings::from_settings(&settings),
                    events.clone(),
                    AffectedKeyspaces::of(&settings.keyspaces),
                    on_switch,
                )
                .await,
            )
        }
    };
    let monitor = match &cluster {
        None => {
            Monitor::start_at(
                MonitorSettings::from_settings(&settings),
                target.clone(),
                events.clone(),
                AffectedKeyspaces::of(&settings.keyspaces),
            )
            .await
        }
        Some(cluster) => {
            Monitor::start_with(
                whole_cluster(&settings),
                WholeCluster(Arc::downgrade(cluster)),
                Arc::new(Unheard),
                AffectedKeyspaces::of(&settings.keyspaces),
            )
            .await
        }
    };
    // Under a cluster, one connection per protocol to the first seed: it learns the
    // version HELLO reports; every request goes through the shards' own connections.
    let home = match &cluster {
        None => settings.upstream.clone(),
        Some(_) => UpstreamSettings {
            connections: 1,
            ..settings.upstream.clone()
        },
    };
    // The seed's connection reports to a monitor of its own that nothing reads: a dead seed
    // is no outage of the cluster's.
    let seed_monitor = match &cluster {
        None => None,
        Some(_) => Some(
            Monitor::start_with(
                whole_cluster(&settings),
                Unjudged,
                Arc::new(Unheard),
                AffectedKeyspaces::of(&settings.keyspaces),
            )
            .await,
        ),
    };
    let upstream = Upstream::start(
        &home,
        &settings.limits,
        settings.tcp_keepalive,
        seed_monitor.as_ref().unwrap_or(&monitor).handle(),
        target.clone(),
    );
    let store = Arc::new(Store::with_layout(store_layout(&settings)));
    let catalog = tokio::spawn(catalog::learn(
        settings.upstream.clone(),
        target.clone(),
        monitor.handle(),
    ));
    tracing::info!(listen = %listener.local_addr()?, upstream = %settings.upstream.name(), "keywarden listening");
    let sentinel = settings.upstream.sentinel.clone();
    let upstream_tls = settings.upstream.tls.clone();
    let login = handshake::setup_commands(&settings.upstream, false)
        .into_iter()
        .next();
    let name = settings.upstream.name();
    let server = Arc::new(Server {
        live: Live::new(settings),
        cluster: cluster.clone(),
        upstream: upstream.clone(),
        clients: Clients::default(),
        monitor: monitor.handle(),
        store: store.clone(),
        events,
        reloads: ReloadCounts::default(),
        tls: tls_listener.as_ref().map(|(_, tls)| tls.clone()),
    });
    let housekeeping = tokio::spawn(housekeeping(server.clone()));
    let parker = tokio::spawn(parker::run(server.clone()));
    // Following the sentinels: a new primary closes the clients' own connections to the old
    // one (subscribers and blocked clients reconnect, as after a Redis that died).
    let follower = sentinel.map(|sentinel| {
        let server = server.clone();
        tokio::spawn(target::follow(
            sentinel,
            target,
            upstream_tls,
            login,
            move |from, to| {
                server.events.emit_switched(&name, from, to);
                server.clients.upstream_moved();
            },
        ))
    });
    let admin = match admin_listener {
        Some(l) => Some(Admin::start(l, server.clone())?),
        None => None,
    };
    let mut policy = server.policy();
    // Clients accepted and not yet registered: TLS handshakes under way, clients on their way
    // to another worker (see the max_clients check).
    let pending = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut next_worker = 0usize;

    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r.map(|(s, _)| (s, None)),
            r = async {
                match &tls_listener {
                    Some((l, tls)) => l.accept().await.map(|(s, _)| (s, Some(tls.current()))),
                    None => std::future::pending().await,
                }
            } => r,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let _ = server.reload(Trigger::Signal);
                continue;
            }
            _ = &mut shutdown => break,
        };
        if policy.generation != server.live.generation() {
            policy = server.policy();
        }
        let settings = &policy.settings;
        let (stream, tls) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and similar: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Handshakes under way count as clients: each holds a socket and rustls's buffers; so
        // do clients on their way to another worker.
        let handshaking = pending.load(Ordering::Relaxed);
        if server.clients.count() + handshaking >= settings.max_clients {
            server.clients.record_rejected();
            match tls {
                None => {
                    tokio::spawn(refuse(stream));
                }
                // Closed without a handshake: saying why would cost a certificate signature
                // per connection over the limit.
                Some(_) => drop(stream),
            }
            continue;
        }
        if let Err(e) = socket::tune(&stream, settings.tcp_keepalive) {
            tracing::debug!(error = %e, "client socket setup failed");
            continue;
        }
        // The workers in turn (see crate::upstream::workers). A plain client of this worker's
        // is spawned as its session alone (the smallest task); any other is set up by a short
        // task on its worker: the socket registered with that worker's runtime, a TLS
        // handshake, and then its session.
        let worker = next_worker % workers::count();
        next_worker = next_worker.wrapping_add(1);
        let here = worker == workers::current();
        if here && tls.is_none() {
            tokio::spawn(Session::start(
                Conn::plain(stream),
                server.clone(),
                policy.clone(),
            ));
            continue;
        }
        let stream = match here {
            true => Handed::Here(stream),
            false => match stream.into_std() {
                Ok(socket) => Handed::Moved(socket),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot hand a client to its worker");
                    continue;
                }
            },
        };
        let (server, policy) = (server.clone(), policy.clone());
        pending.fetch_add(1, Ordering::Relaxed);
        let pending = pending.clone();
        workers::spawn_on(worker, async move {
            let stream = match stream {
                Handed::Here(stream) => Ok(stream),
                Handed::Moved(socket) => TcpStream::from_std(socket),
            };
            let conn = match (stream, tls) {
                (Err(e), _) => {
                    tracing::debug!(error = %e, "cannot register a client with its worker");
                    None
                }
                (Ok(stream), None) => Some(Conn::plain(stream)),
                // The handshake runs in the client's own task: a slow one delays no one.
                (Ok(stream), Some(config)) => tls_accept(stream, config).await,
            };
            let session = conn.map(|conn| Session::start(conn, server, policy));
            pending.fetch_sub(1, Ordering::Relaxed);
            if let Some(session) = session {
                // Its own task, so that it is no larger than any other session's.
                tokio::spawn(session);
            }
        });
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
    parker.abort();
    catalog.abort();
    if let Some(follower) = follower {
        follower.abort();
    }
    if let Some(admin) = admin {
        admin.stop();
    }
    upstream.stop();
    monitor.stop();
    if let Some(seed) = &seed_monitor {
        seed.stop();
    }
    if let Some(cluster) = &cluster {
        cluster.stop();
    }
    tracing::info!("keywarden stopped");
    Ok(())
}

/// The monitor over a whole cluster: it checks, every 25 ms, that every slot's shard forwards.
/// Its events are not emitted: each shard's monitor emits its own, naming the shard.
fn whole_cluster(settings: &Settings) -> MonitorSettings {
    MonitorSettings {
        address: settings.upstream.name(),
        probe_interval: Duration::from_millis(25),
        recovery_probe_interval: Duration::from_millis(25),
        failure_threshold: 1,
        success_threshold: 1,
        ..MonitorSettings::from_settings(settings)
    }
}

/// The probe of [`whole_cluster`]: no network, only the shards' published states.
struct WholeCluster(std::sync::Weak<Cluster>);

impl Probe for WholeCluster {
    async fn probe(&self, _: ProbeTimeouts) -> Outcome {
        match self.0.upgrade() {
            Some(c) if c.all_available() => Outcome::Success,
            _ => Outcome::Failure(Cause::ProbeFailed),
        }
    }
}

/// The probe of the seed connection's monitor under a cluster: always fine (see above).
struct Unjudged;

impl Probe for Unjudged {
    async fn probe(&self, _: ProbeTimeouts) -> Outcome {
        Outcome::Success
    }
}

/// Where the whole cluster's monitor sends its events: nowhere (see [`whole_cluster`]).
struct Unheard;

impl OutageEvents for Unheard {
    fn emit(&self, _: &Event<'_>) {}
}

/// Background work on the local store: active expiry, and discarding what degraded keyspaces
/// wrote locally once requests are forwarded again (the upstream's data is the truth, and
/// writes may reach it from then on, so a relapse must not bring the old values back).
async fn housekeeping(server: Arc<Server>) {
    let mut health = server.monitor.subscribe();
    let mut was_forwarding = health.borrow().state != State::Unavailable;
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
                let state = health.borrow_and_update().state;
                if state == State::Unavailable && server.cluster.is_none() {
                    // Clients blocked or subscribed on connections of their own are told as
                    // if Redis had died, so their libraries reconnect. (Under a cluster, one
                    // shard down is no reason to close the clients of the others: a client's
                    // own connection to the node that failed fails by itself.)
                    server.clients.upstream_lost();
                }
                let forwarding = state != State::Unavailable;
                if forwarding && !was_forwarding {
                    // Judged by the policy in force while the store is locked (a reload
                    // installs its policy under the same lock).
                    let judge = || server.policy();
                    let removed = server.store.discard_on_recovery(judge, |policy, _, key| {
                        let keyspaces = &policy.settings.keyspaces;
                        keyspaces.mode(keyspaces.classify(key)) == Mode::Degraded
                    });
                    tracing::info!(keys = removed, "discarded local data of degraded keyspaces");
                }
                was_forwarding = forwarding;
            }
        }
    }
}

/// How long a TLS client has to finish its handshake (Redis gives a connection's handshake
/// no separate limit; an idle one is closed by `timeout`, which is off by default).
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// The TLS handshake of a client of the TLS listener; `None` (logged at debug, without
/// anything the client sent) when it fails.
async fn tls_accept(stream: TcpStream, config: Arc<rustls::ServerConfig>) -> Option<Conn> {
    let session = rustls::ServerConnection::new(config).ok()?;
    let conn = Conn::tls(stream, session);
    match conn.handshake(TLS_HANDSHAKE).await {
        Ok(()) => Some(conn),
        Err(e) => {
            tracing::debug!(error = %e, "TLS handshake with a client failed");
            None
        }
    }
}

/// An accepted client's socket on its way to its worker's task.
enum Handed {
    /// Registered with this runtime, the client's worker's.
    Here(TcpStream),
    /// Out of this runtime, for another worker's to register.
    Moved(std::net::TcpStream),
}

/// Tells a client over the limit why, as Redis does, and closes it.
async fn refuse(stream: TcpStream) {
    let reply = ProxyError::MaxClients.to_reply();
    let conn = Conn::plain(stream);
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.write_all(&reply)).await;
}
