//! Hot reload (SIGHUP, `KEYWARDEN RELOAD`): read the file again, check it as at startup, and
//! install the new [`Policy`] whole, or change nothing. What each setting does after a reload
//! is the README's "Hot reload" table; this module keeps the reasons.
//!
//! - **Whole or nothing.** A rejected file leaves the policy in force untouched, so a typo
//!   never half-applies: a process runs one configuration at a time.
//! - **Between batches.** Sessions take a newer policy before their next batch (they check one
//!   atomic generation number, see [`crate::config::live`]), so a request is never routed by
//!   one configuration and counted or refused by another, and no connection is dropped for it.
//! - **What a reload catches inside keywarden is judged again**, never let through on the old
//!   policy's word: the store knows the generation in force ([`Store::lock_judged`]) and refuses
//!   a local batch routed by an older one, and the policy is installed and the keys whose
//!   keyspace changed mode are discarded under the same store lock, so nothing routed by the
//!   old policy writes after the discard. A request already sent upstream finishes as sent.
//! - **Settings that cannot change while running** (listen address, threads, the upstream and
//!   its credentials, ...) keep their values and are named in `restart_required`, instead of
//!   failing the whole reload: the rest still applies.
//!
//! [`Store::lock_judged`]: crate::local::store::Store::lock_judged

use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::live::{Live, Policy};
use crate::config::Settings;
use crate::local::store::{Layout, Store};
use crate::ops::events::Events;
use crate::ops::events::{AffectedKeyspaces, ReloadEvent, ReloadOutcome};
use crate::policy::keyspace::PerKeyspace;
use crate::upstream::monitor::MonitorHandle;
use crate::upstream::monitor::MonitorSettings;
use crate::upstream::shared::Upstream;

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    Signal,
    Command,
}

impl Trigger {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::Command => "KEYWARDEN RELOAD",
        }
    }
}

/// A reload that changed nothing: why, each problem as `place: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejected {
    pub errors: Vec<String>,
}

/// An applied reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Applied {
    pub generation: u64,
    pub applied: Vec<&'static str>,
    pub restart_required: Vec<&'static str>,
    pub discarded_local_keys: usize,
}

/// The new settings to install, and what changed. Settings that cannot change while running
/// keep their current values in `settings` and are named in `restart_required`.
#[derive(Debug)]
pub(crate) struct Plan {
    pub settings: Settings,
    pub applied: Vec<&'static str>,
    pub restart_required: Vec<&'static str>,
}

/// Compares `new` with `current`, setting by setting.
/// How `settings` divide the local store among their keyspaces.
pub(crate) fn store_layout(settings: &Settings) -> Layout {
    let store = &settings.local_store;
    Layout::new(&settings.keyspaces, store.max_bytes, &store.shares)
}

pub(crate) fn plan(current: &Settings, mut new: Settings) -> Plan {
    let mut restart_required = Vec::new();
    macro_rules! fixed {
        ($($name:literal => $($field:ident).+;)*) => {$(
            if new.$($field).+ != current.$($field).+ {
                restart_required.push($name);
                new.$($field).+ = current.$($field).+.clone();
            }
        )*};
    }
    fixed! {
        "listen" => listen;
        "threads" => threads;
        "upstream.address" => upstream.address;
        "upstream.connections" => upstream.connections;
        "upstream.username" => upstream.username;
        "upstream.password" => upstream.password;
        "upstream.tls" => upstream.tls;
        "upstream.sentinel" => upstream.sentinel;
        "upstream.cluster_nodes" => upstream.cluster_nodes;
        "admin.listen" => admin.listen;
        "events.file" => events.file;
        "instance_id" => instance_id;
        "log" => log;
    }
    // The TLS listener's address needs a restart; its certificate files are read again.
    let listen_of = |s: &Settings| s.tls.as_ref().map(|t| t.listen);
    if listen_of(&new) != listen_of(current) {
        restart_required.push("tls.listen");
        new.tls = current.tls.clone();
    }
    let mut applied = Vec::new();
    macro_rules! changed {
        ($($name:literal => $($field:ident).+;)*) => {$(
            if new.$($field).+ != current.$($field).+ {
                applied.push($name);
            }
        )*};
    }
    changed! {
        "keyspaces" => keyspaces;
        "users" => users;
        "max_clients" => max_clients;
        "client_idle_timeout" => client_idle_timeout;
        "tcp_keepalive" => tcp_keepalive;
        "shutdown_timeout" => shutdown_timeout;
        "limits" => limits;
        "upstream.connect_timeout" => upstream.connect_timeout;
        "upstream.command_timeout" => upstream.command_timeout;
        "upstream.reconnect_backoff_min" => upstream.reconnect_backoff_min;
        "upstream.reconnect_backoff_max" => upstream.reconnect_backoff_max;
        "health" => health;
        "local_store" => local_store;
        "tls" => tls;
    }
    Plan {
        settings: new,
        applied,
        restart_required,
    }
}

/// What a reload changes: every part of the running proxy that holds a setting.
pub(crate) struct Parts<'a> {
    pub live: &'a Live,
    pub upstream: &'a Upstream,
    /// The shards, when the upstream is a Redis Cluster.
    pub cluster: Option<&'a crate::upstream::cluster::Cluster>,
    pub monitor: &'a MonitorHandle,
    pub store: &'a Store,
    pub events: &'a Events,
    pub counts: &'a ReloadCounts,
    /// The TLS listener's configuration, when there is one.
    pub tls: Option<&'a crate::upstream::tls::ServerTls>,
    /// Wakes every client, so that idle ones take the new policy now.
    pub wake_clients: &'a dyn Fn(),
}

/// Reads the configuration again and installs it, or leaves the one in force when the new one
/// is invalid. Emits `CONFIG_RELOADED` or `CONFIG_RELOAD_FAILED` either way.
pub(crate) fn reload(parts: &Parts<'_>, trigger: Trigger) -> Result<Applied, Rejected> {
    let _one_at_a_time = parts.live.one_at_a_time();
    let current = parts.live.current();
    let source = current.settings.source.as_ref();
    let origin = source.map_or_else(
        || "built-in defaults".to_owned(),
        |s| s.path.display().to_string(),
    );
    let loaded = match source {
        Some(source) => source.load().map_err(|e| Rejected {
            errors: e.problems.iter().map(ToString::to_string).collect(),
        }),
        None => Err(Rejected {
            errors: vec![
                "keywarden was started without a config file: there is nothing to reload"
                    .to_owned(),
            ],
        }),
    };
    // A rejected reload is counted and told, and changes nothing.
    let reject = |rejected: Rejected| {
        parts.counts.record_reload(false);
        parts.events.emit_reload(&ReloadEvent {
            source: &origin,
            trigger: trigger.as_str(),
            generation: current.generation,
            outcome: ReloadOutcome::Failed {
                errors: &rejected.errors,
            },
        });
        Err(rejected)
    };
    let new = match loaded {
        Ok(new) => new,
        Err(rejected) => return reject(rejected),
    };
    let Plan {
        settings,
        applied,
        restart_required,
    } = plan(&current.settings, new);
    // Certificates are read again on every reload (a rotated file keeps its path); one that
    // cannot be used rejects the whole reload, as an invalid file does.
    let server_tls = match (&settings.tls, parts.tls) {
        (Some(tls), Some(_)) => match crate::upstream::tls::server_config(tls) {
            Ok(config) => Some(config),
            Err(e) => {
                return reject(Rejected {
                    errors: vec![format!("tls: {e}")],
                })
            }
        },
        _ => None,
    };
    if let (Some(config), Some(holder)) = (server_tls, parts.tls) {
        holder.replace(config);
    }
    crate::upstream::tls::forget_connectors();
    let (old_keyspaces, new_keyspaces) = (&current.settings.keyspaces, &settings.keyspaces);
    let per_keyspace =
        PerKeyspace::carried(new_keyspaces, Some((old_keyspaces, &current.per_keyspace)));
    let affected = AffectedKeyspaces::of(new_keyspaces);
    parts
        .upstream
        .retune(&settings.upstream, &settings.limits, settings.tcp_keepalive);
    match parts.cluster {
        // The whole cluster's monitor keeps its own pace; each shard's takes the new one.
        Some(cluster) => cluster.reconfigure(
            &settings.upstream,
            &settings.limits,
            settings.tcp_keepalive,
            &MonitorSettings::from_settings(&settings),
            &affected,
        ),
        None => parts
            .monitor
            .reconfigure(&MonitorSettings::from_settings(&settings), affected.clone()),
    }
    let generation = current.generation + 1;
    let layout = store_layout(&settings);
    // A key stays only while its keyspace keeps its mode (no need to look when the keyspaces
    // did not change). Both lists are owned here: the new one moves into the policy while the
    // store is locked.
    let (before, after) = (old_keyspaces.clone(), new_keyspaces.clone());
    let discard = (before != after).then_some(move |_: u32, key: &[u8]| {
        before.mode(before.classify(key)) != after.mode(after.classify(key))
    });
    let mut policy = Some(Policy {
        generation,
        settings,
        per_keyspace,
    });
    let discarded_local_keys = parts.store.reconfigure(
        layout,
        generation,
        || parts.live.install(policy.take().expect("installed once")),
        discard,
    );
    if discarded_local_keys > 0 {
        tracing::info!(
            keys = discarded_local_keys,
            "discarded local keys whose keyspace changed mode"
        );
    }
    // Idle clients take the new policy now: a withdrawn user is closed, a new idle timeout
    // starts counting.
    (parts.wake_clients)();
    parts.counts.record_reload(true);
    parts.events.emit_reload(&ReloadEvent {
        source: &origin,
        trigger: trigger.as_str(),
        generation,
        outcome: ReloadOutcome::Applied {
            applied: &applied,
            restart_required: &restart_required,
            keyspaces: &affected,
            discarded_local_keys,
        },
    });
    Ok(Applied {
        generation,
        applied,
        restart_required,
        discarded_local_keys,
    })
}

/// Reloads since the start, for the metrics and INFO.
#[derive(Debug, Default)]
pub(crate) struct ReloadCounts {
    applied: AtomicU64,
    failed: AtomicU64,
    /// Whether the last reload failed (the file on disk is not what runs).
    last_failed: std::sync::atomic::AtomicBool,
}

impl ReloadCounts {
    fn record_reload(&self, ok: bool) {
        let counter = if ok { &self.applied } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
        self.last_failed.store(!ok, Ordering::Relaxed);
    }

    /// (applied, failed, whether the last one failed).
    pub(crate) fn totals(&self) -> (u64, u64, bool) {
        (
            self.applied.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.last_failed.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::keyspace::{Keyspace, Keyspaces, Mode, Pattern};
    use std::time::Duration;

    #[test]
    fn fixed_settings_keep_their_values_and_are_named() {
        let current = Settings::default();
        let mut new = current.clone();
        new.listen = "127.0.0.1:1".parse().unwrap();
        new.upstream.address = "elsewhere:6379".into();
        new.upstream.command_timeout = Duration::from_secs(9);
        new.max_clients = 7;
        new.keyspaces = Keyspaces::new(
            vec![Keyspace {
                name: "scratch".into(),
                patterns: vec![Pattern::parse(b"tmp:")],
                mode: Mode::LocalOnly,
            }],
            Mode::FailClosed,
        );
        let plan = plan(&current, new.clone());
        assert_eq!(plan.restart_required, ["listen", "upstream.address"]);
        assert_eq!(
            plan.applied,
            ["keyspaces", "max_clients", "upstream.command_timeout"]
        );
        assert_eq!(plan.settings.listen, current.listen);
        assert_eq!(plan.settings.upstream.address, current.upstream.address);
        assert_eq!(
            plan.settings.upstream.command_timeout,
            Duration::from_secs(9)
        );
        assert_eq!(plan.settings.keyspaces, new.keyspaces);
    }

    #[test]
    fn the_same_settings_change_nothing() {
        let current = Settings::default();
        let plan = plan(&current, current.clone());
        assert!(plan.applied.is_empty() && plan.restart_required.is_empty());
        assert_eq!(plan.settings, current);
    }
}
