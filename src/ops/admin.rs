//! The admin HTTP listener (`[admin] listen`): what operators and their tools ask the proxy.
//!
//! | path | answer |
//! |---|---|
//! | `GET /metrics` | the [metrics catalogue](crate::ops::metrics), Prometheus text format 0.0.4 |
//! | `GET /healthz` | `200 ok` while the process runs |
//! | `GET /readyz` | `200 ready` while serving clients; `503 draining` once shutdown began |
//! | `GET /status` | JSON: instance, upstream health and since when, keyspaces, local store, clients |
//!
//! Any other path is `404`; another method on these paths is `405` (with `Allow: GET`).
//!
//! It never holds up the data path: it runs in tasks of its own, and reads only snapshots,
//! atomics, and the client table's and the store's locks, each taken once per request and held
//! for a count. HTTP is hyper's (HTTP/1.1, keep-alive); at most [`MAX_CONNECTIONS`] admin
//! connections are open at once, and one that sends no complete request head within
//! [`HEADER_TIMEOUT`] is closed, so a stuck scraper cannot pile up tasks.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::config::live::Policy;
use crate::ops::events::{self, Counts};
use crate::ops::metrics::{Metrics, Overview, Sample, StoreUsage};
use crate::policy::keyspace::Pattern;
use crate::upstream::monitor::MonitorHandle;

/// Admin connections open at once; more are closed at accept. A Prometheus server keeps one.
pub(crate) const MAX_CONNECTIONS: usize = 64;
/// How long a connection may take to send a request's head.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The Prometheus text exposition format's content type.
pub(crate) const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A running admin listener; [`Admin::stop`] (or dropping it) closes it and its connections.
pub(crate) struct Admin {
    tasks: [JoinHandle<()>; 2],
}

/// The running proxy as the admin listener reads it; the proxy's shared state implements it,
/// so that operations code is given what it shows and never reaches into the proxy.
pub(crate) trait Proxy: Send + Sync + 'static {
    /// The metrics' state now.
    fn sample(&self) -> Sample;
    /// What `/status` shows of it.
    fn overview(&self) -> Overview;
    /// The configuration in force.
    fn policy(&self) -> Arc<Policy>;
    /// Whether new clients are served: false once shutdown began.
    fn ready(&self) -> bool;
    /// The upstream's health.
    fn health(&self) -> &MonitorHandle;
}

/// What every admin request reads.
struct Shared {
    proxy: Arc<dyn Proxy>,
    metrics: Metrics,
}

/// Binds the admin listener. Done before anything else starts, so a busy port is reported at
/// once and nothing has to be wound down.
pub(crate) async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("admin listener on {addr}: {e}")))
}

impl Admin {
    /// Serves `listener` for `proxy` until stopped. Its metrics start from the health the
    /// proxy has now, so call this as soon as the proxy's shared state exists.
    pub(crate) fn start(listener: TcpListener, proxy: Arc<dyn Proxy>) -> io::Result<Admin> {
        let addr = listener.local_addr()?;
        let health = proxy.health();
        let metrics = Metrics::new(health.upstream(), health.snapshot());
        let shared = Arc::new(Shared { proxy, metrics });
        let tasks = [
            tokio::spawn(watch_health(shared.clone())),
            tokio::spawn(accept(listener, shared)),
        ];
        tracing::info!(admin = %addr, "admin listener started");
        Ok(Admin { tasks })
    }

    /// Stops accepting and closes every admin connection.
    pub(crate) fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Counts health transitions as they happen, so that an outage shorter than the scrape
/// interval is counted too.
async fn watch_health(shared: Arc<Shared>) {
    let mut health = shared.proxy.health().subscribe();
    while health.changed().await.is_ok() {
        let snapshot = *health.borrow_and_update();
        shared.metrics.observe_health(snapshot);
    }
}

/// The accept loop; the connections are its children, aborted with it.
async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) if connections.len() < MAX_CONNECTIONS => {
                    connections.spawn(serve(stream, shared.clone()));
                }
                Ok((stream, peer)) => {
                    tracing::warn!(%peer, limit = MAX_CONNECTIONS, "too many admin connections");
                    drop(stream);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        let response = match authorized(&shared, req.headers()) {
            true => respond(&shared, req.method(), req.uri().path()),
            false => unauthorized(),
        };
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, "admin connection failed");
    }
}

/// Whether the request carries the configured bearer token (read from the policy in force, so
/// a reload changes it), or none is configured.
fn authorized(shared: &Shared, headers: &hyper::HeaderMap) -> bool {
    let Some(token) = shared.proxy.policy().settings.admin.token else {
        return true;
    };
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|given| token.matches(given))
}

fn unauthorized() -> Response<Full<Bytes>> {
    let mut response = reply(
        StatusCode::UNAUTHORIZED,
        "text/plain; charset=utf-8",
        "a bearer token is required\n",
    );
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn respond(shared: &Shared, method: &Method, path: &str) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if !matches!(path, "/metrics" | "/healthz" | "/readyz" | "/status") {
        return reply(StatusCode::NOT_FOUND, TEXT, "not found\n");
    }
    if method != Method::GET {
        let mut response = reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    let proxy = &shared.proxy;
    match path {
        "/metrics" => {
            let text = shared.metrics.render(&proxy.sample());
            reply(StatusCode::OK, METRICS_CONTENT_TYPE, text)
        }
        "/healthz" => reply(StatusCode::OK, TEXT, "ok\n"),
        "/readyz" if proxy.ready() => reply(StatusCode::OK, TEXT, "ready\n"),
        "/readyz" => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "draining\n"),
        _ => {
            let policy = proxy.policy();
            let status = Status::of(proxy.overview(), &policy, proxy.ready());
            let json = serde_json::to_string(&status).expect("status always encodes");
            reply(StatusCode::OK, "application/json", json)
        }
    }
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// `/status`. Field order here is the order in the JSON.
#[derive(Debug, Serialize)]
pub(crate) struct Status<'a> {
    pub instance: String,
    pub version: &'static str,
    /// `false` once shutdown began (as `/readyz`).
    pub ready: bool,
    pub upstreams: Vec<UpstreamStatus>,
    pub default_mode: &'static str,
    pub keyspaces: Vec<KeyspaceStatus<'a>>,
    pub local_store: StoreUsage,
    pub clients: usize,
    /// Totals since the proxy started: requests refused fail-closed, degraded replies, and
    /// discarded local writes.
    pub counts: Counts,
    pub config: ConfigStatus,
}

/// The configuration in force and its reloads.
#[derive(Debug, Serialize)]
pub(crate) struct ConfigStatus {
    /// The file it was read from, if any.
    pub source: Option<String>,
    /// 1 at startup, one more per applied reload.
    pub generation: u64,
    pub reloads_applied: u64,
    pub reloads_failed: u64,
    /// The last reload was rejected: the file on disk is not what runs.
    pub last_reload_failed: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct UpstreamStatus {
    /// Its address, or `sentinel:<master>` under Sentinel.
    pub address: String,
    pub state: &'static str,
    /// Milliseconds since the upstream entered `state`.
    pub since_ms: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct KeyspaceStatus<'a> {
    pub name: &'a str,
    pub mode: &'static str,
    /// As configured (a keyspace's patterns are the operator's, never a client's keys).
    pub patterns: Vec<String>,
}

impl<'a> Status<'a> {
    /// The status shown for `sample` (an overview), taken under `policy`; `ready` as `/readyz`.
    pub(crate) fn of(sample: Overview, policy: &'a Policy, ready: bool) -> Status<'a> {
        let settings = &policy.settings;
        let (reloads_applied, reloads_failed, last_reload_failed) = sample.reloads;
        Status {
            instance: events::instance_id(settings.instance_id.as_deref()),
            version: env!("CARGO_PKG_VERSION"),
            ready,
            upstreams: vec![UpstreamStatus {
                address: settings.upstream.name(),
                state: sample.health.state.as_str(),
                since_ms: sample.health.since.elapsed().as_millis() as u64,
            }],
            default_mode: settings.keyspaces.default_mode().as_str(),
            keyspaces: settings
                .keyspaces
                .iter()
                .map(|ks| KeyspaceStatus {
                    name: &ks.name,
                    mode: ks.mode.as_str(),
                    patterns: ks.patterns.iter().map(pattern_text).collect(),
                })
                .collect(),
            local_store: sample.store,
            clients: sample.clients,
            counts: sample.counts,
            config: ConfigStatus {
                source: (settings.source.as_ref()).map(|s| s.path.display().to_string()),
                generation: policy.generation,
                reloads_applied,
                reloads_failed,
                last_reload_failed,
            },
        }
    }
}

fn pattern_text(p: &Pattern) -> String {
    match p {
        Pattern::Prefix(b) | Pattern::Glob(b) => String::from_utf8_lossy(b).into_owned(),
    }
}
