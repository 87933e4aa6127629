//! Keyspaces: named sets of keys chosen by pattern, each with the mode that decides what
//! happens to its keys when the upstream is unavailable.
//!
//! Patterns are bytes. A pattern with a glob metacharacter (`*`, `?`, `[`, `\`) is a Redis
//! glob (see [`crate::policy::glob`]); any other pattern is a prefix (`rl:` covers every key that
//! starts with `rl:`). **The first keyspace in config order with a matching pattern wins**;
//! keys that match none belong to the default keyspace, whose mode is `default_mode`
//! (`fail_closed` unless configured).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::policy::glob;

/// What happens to a keyspace's keys when the upstream cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Forward while healthy; an immediate error while unavailable. Never local state.
    FailClosed,
    /// Forward while healthy; served from the local store while unavailable.
    Degraded,
    /// Always served from the local store; the upstream is never touched.
    LocalOnly,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::FailClosed => "fail_closed",
            Mode::Degraded => "degraded",
            Mode::LocalOnly => "local_only",
        }
    }

    pub fn parse(text: &str) -> Option<Mode> {
        match text {
            "fail_closed" => Some(Mode::FailClosed),
            "degraded" => Some(Mode::Degraded),
            "local_only" => Some(Mode::LocalOnly),
            _ => None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Prefix(Bytes),
    Glob(Bytes),
}

impl Pattern {
    /// Reads a configured pattern: a glob if it has a metacharacter, otherwise a prefix.
    pub fn parse(text: &[u8]) -> Pattern {
        let bytes = Bytes::copy_from_slice(text);
        if glob::is_literal(text) {
            Pattern::Prefix(bytes)
        } else {
            Pattern::Glob(bytes)
        }
    }

    /// Every key is classified on each routing and each local store lookup, mostly against
    /// patterns it does not match: the first byte rules most of them out before a compare
    /// call or the glob matcher (a glob that starts with a literal byte needs it first).
    #[inline]
    pub fn matches(&self, key: &[u8]) -> bool {
        match self {
            Pattern::Prefix(p) => {
                key.len() >= p.len()
                    && p.first().is_none_or(|b| key.first() == Some(b))
                    && key.starts_with(p)
            }
            Pattern::Glob(g) => {
                let literal_first = g.first().filter(|b| !b"*?[\\".contains(b));
                literal_first.is_none_or(|b| key.first() == Some(b)) && glob::matches(g, key)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyspace {
    pub name: String,
    pub patterns: Vec<Pattern>,
    pub mode: Mode,
}

/// The configured keyspaces, in config order, and the default for keys that match none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyspaces {
    list: Vec<Keyspace>,
    default_mode: Mode,
}

/// Which keyspace a key fell in: an index into the configured list, or the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Membership {
    Named(usize),
    Default,
}

/// Outage counts per keyspace (the default one last), for the metrics: requests refused
/// fail-closed and degraded replies. One relaxed atomic add each, on outage paths only.
///
/// A keyspace's counters belong to its name, not to its place in the list: a reload that keeps
/// a keyspace (see [`PerKeyspace::carried`]) shares them with the old list, so a counter never
/// goes back and an add racing with the reload is not lost.
#[derive(Debug)]
pub(crate) struct PerKeyspace {
    /// Indexed like the keyspace list, with the default keyspace last.
    counts: Box<[Arc<KeyspaceCounts>]>,
}

#[derive(Debug, Default)]
pub(crate) struct KeyspaceCounts {
    refused: AtomicU64,
    degraded: AtomicU64,
}

impl PerKeyspace {
    pub(crate) fn new(keyspaces: &Keyspaces) -> PerKeyspace {
        PerKeyspace::carried(keyspaces, None)
    }

    /// Counters for `keyspaces`, taking over those of `previous` (the list it replaces and its
    /// counters) for every keyspace whose name is in both.
    pub(crate) fn carried(
        keyspaces: &Keyspaces,
        previous: Option<(&Keyspaces, &PerKeyspace)>,
    ) -> PerKeyspace {
        let counts = keyspaces
            .names()
            .map(|name| {
                previous
                    .and_then(|(list, counts)| {
                        list.names()
                            .position(|n| n == name)
                            .map(|i| counts.counts[i].clone())
                    })
                    .unwrap_or_default()
            })
            .collect();
        PerKeyspace { counts }
    }

    fn slot(&self, m: Membership) -> Option<&KeyspaceCounts> {
        let i = match m {
            Membership::Named(i) => i,
            Membership::Default => self.counts.len() - 1,
        };
        self.counts.get(i).map(|c| &**c)
    }

    pub(crate) fn record_refused(&self, m: Membership) {
        if let Some(c) = self.slot(m) {
            c.refused.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn record_degraded(&self, m: Membership) {
        if let Some(c) = self.slot(m) {
            c.degraded.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (keyspace name, refused, degraded replies) for each keyspace, the default one last.
    pub(crate) fn totals(&self, keyspaces: &Keyspaces) -> Vec<(String, u64, u64)> {
        keyspaces
            .names()
            .zip(self.counts.iter())
            .map(|(name, c)| {
                let (r, d) = (&c.refused, &c.degraded);
                (
                    name.to_owned(),
                    r.load(Ordering::Relaxed),
                    d.load(Ordering::Relaxed),
                )
            })
            .collect()
    }
}

/// What a keyspace's part of the local store does when a write would take it past its
/// budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Eviction {
    /// Evict the keyspace's least recently used keys (Redis's `allkeys-lru`, within the
    /// keyspace).
    #[default]
    Lru,
    /// Refuse the write with Redis's `-OOM` error (Redis's `noeviction`): for keys whose loss
    /// is a security hole (nonces, idempotency keys, rate limits).
    NoEviction,
}

impl Eviction {
    pub fn as_str(self) -> &'static str {
        match self {
            Eviction::Lru => "lru",
            Eviction::NoEviction => "noeviction",
        }
    }

    pub fn parse(text: &str) -> Option<Eviction> {
        match text {
            "lru" => Some(Eviction::Lru),
            "noeviction" => Some(Eviction::NoEviction),
            _ => None,
        }
    }
}

/// One keyspace's part of the local store as configured: its own byte budget, or `None` for
/// an equal share of what the keyspaces with one leave, and what it does when full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreShare {
    /// The keyspace's name (`default` for keys in none).
    pub name: String,
    pub max_bytes: Option<usize>,
    pub eviction: Eviction,
}

/// One keyspace's byte budget in the local store and what it does when full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub max_bytes: usize,
    pub eviction: Eviction,
}

/// The name used for keys that match no configured keyspace.
pub(crate) const DEFAULT_NAME: &str = "default";

impl Keyspaces {
    pub fn new(list: Vec<Keyspace>, default_mode: Mode) -> Keyspaces {
        Keyspaces { list, default_mode }
    }

    /// Everything in the default keyspace, fail closed: the proxy with no keyspaces configured.
    pub fn fail_closed() -> Keyspaces {
        Keyspaces::new(Vec::new(), Mode::FailClosed)
    }

    /// The keyspace `key` belongs to: the first, in config order, with a matching pattern.
    pub(crate) fn classify(&self, key: &[u8]) -> Membership {
        self.list
            .iter()
            .position(|ks| ks.patterns.iter().any(|p| p.matches(key)))
            .map_or(Membership::Default, Membership::Named)
    }

    pub fn mode(&self, m: Membership) -> Mode {
        match m {
            Membership::Named(i) => self.list[i].mode,
            Membership::Default => self.default_mode,
        }
    }

    pub fn name(&self, m: Membership) -> &str {
        match m {
            Membership::Named(i) => &self.list[i].name,
            Membership::Default => DEFAULT_NAME,
        }
    }

    /// Every keyspace's name in config order, the default keyspace's last.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        let named = self.list.iter().map(|ks| ks.name.as_str());
        named.chain(std::iter::once(DEFAULT_NAME))
    }

    pub fn default_mode(&self) -> Mode {
        self.default_mode
    }

    /// True when no keyspace is configured: every key is in the default keyspace, so a route
    /// never depends on a command's keys.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Keyspace> {
        self.list.iter()
    }

    /// The mode of every keyspace in [`Keyspaces::names`] order, the default one last.
    pub fn modes(&self) -> impl Iterator<Item = Mode> + '_ {
        let named = self.list.iter().map(|ks| ks.mode);
        named.chain(std::iter::once(self.default_mode))
    }

    /// Each keyspace's part of a local store of `total` bytes, in [`Keyspaces::names`] order:
    /// a keyspace named in `shares` with a budget gets it; every other keyspace that can hold
    /// local keys (`degraded` or `local_only`) gets an equal share of what those leave; a
    /// `fail_closed` keyspace never holds a local key and gets nothing. Budgets that add up to
    /// more than `total` (the config check refuses them) are cut to what is left, in order.
    pub fn budgets(&self, total: usize, shares: &[StoreShare]) -> Vec<Budget> {
        let share = |name: &str| shares.iter().find(|s| s.name == name);
        let mut left = total;
        let mut fixed: Vec<Option<usize>> = Vec::new();
        let mut sharing = 0;
        for (name, mode) in self.names().zip(self.modes()) {
            let own = match (mode, share(name).and_then(|s| s.max_bytes)) {
                (Mode::FailClosed, _) => Some(0),
                (_, Some(bytes)) => {
                    let bytes = bytes.min(left);
                    left -= bytes;
                    Some(bytes)
                }
                (_, None) => {
                    sharing += 1;
                    None
                }
            };
            fixed.push(own);
        }
        let each = left.checked_div(sharing).unwrap_or(0);
        self.names()
            .zip(fixed)
            .map(|(name, own)| Budget {
                max_bytes: own.unwrap_or(each),
                eviction: share(name).map_or(Eviction::Lru, |s| s.eviction),
            })
            .collect()
    }

    /// Names of the keyspaces in `mode`, the default one included when it is in that mode.
    /// Whether any keyspace, the default included, has `mode`.
    pub(crate) fn any_in(&self, mode: Mode) -> bool {
        self.default_mode == mode || self.list.iter().any(|ks| ks.mode == mode)
    }

    pub(crate) fn names_in(&self, mode: Mode) -> Vec<String> {
        let mut names: Vec<String> = self
            .list
            .iter()
            .filter(|ks| ks.mode == mode)
            .map(|ks| ks.name.clone())
            .collect();
        if self.default_mode == mode {
            names.push(DEFAULT_NAME.to_string());
        }
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_keyspace_counters_follow_names_across_a_reload() {
        let ks = |names: &[&str]| {
            let list = names
                .iter()
                .map(|n| Keyspace {
                    name: (*n).to_owned(),
                    patterns: vec![Pattern::parse(n.as_bytes())],
                    mode: Mode::Degraded,
                })
                .collect();
            Keyspaces::new(list, Mode::FailClosed)
        };
        let before = ks(&["a", "b"]);
        let old = PerKeyspace::new(&before);
        old.record_refused(Membership::Named(1));
        old.record_degraded(Membership::Default);
        let after = ks(&["c", "b"]);
        let new = PerKeyspace::carried(&after, Some((&before, &old)));
        // An add through the old list after the switch still counts.
        old.record_refused(Membership::Named(1));
        new.record_refused(Membership::Named(0));
        assert_eq!(
            new.totals(&after),
            [
                ("c".to_owned(), 1, 0),
                ("b".to_owned(), 2, 0),
                ("default".to_owned(), 0, 1)
            ]
        );
    }

    fn ks(name: &str, patterns: &[&str], mode: Mode) -> Keyspace {
        Keyspace {
            name: name.into(),
            patterns: patterns
                .iter()
                .map(|p| Pattern::parse(p.as_bytes()))
                .collect(),
            mode,
        }
    }

    #[test]
    fn first_match_in_config_order_wins() {
        let spaces = Keyspaces::new(
            vec![
                ks("limits", &["rl:"], Mode::FailClosed),
                ks("sessions", &["session:*", "sess:"], Mode::Degraded),
                ks("broad", &["*:cache"], Mode::Degraded),
                ks("scratch", &["tmp:", "rl:tmp"], Mode::LocalOnly),
            ],
            Mode::FailClosed,
        );
        let cases: &[(&[u8], Membership, Mode)] = &[
            (b"rl:user:1", Membership::Named(0), Mode::FailClosed),
            // Listed in "scratch" too, but "limits" comes first.
            (b"rl:tmp:1", Membership::Named(0), Mode::FailClosed),
            (b"session:abc", Membership::Named(1), Mode::Degraded),
            (b"sess:x", Membership::Named(1), Mode::Degraded),
            (b"user:cache", Membership::Named(2), Mode::Degraded),
            (b"tmp:1", Membership::Named(3), Mode::LocalOnly),
            (b"other", Membership::Default, Mode::FailClosed),
            (b"", Membership::Default, Mode::FailClosed),
            (b"r", Membership::Default, Mode::FailClosed),
        ];
        for (key, membership, mode) in cases {
            let m = spaces.classify(key);
            assert_eq!(m, *membership, "{key:?}");
            assert_eq!(spaces.mode(m), *mode, "{key:?}");
        }
        assert_eq!(spaces.name(Membership::Default), "default");
        assert_eq!(spaces.names_in(Mode::Degraded), ["sessions", "broad"]);
        assert_eq!(spaces.names_in(Mode::FailClosed), ["limits", "default"]);
    }

    #[test]
    fn patterns_are_prefixes_unless_globs() {
        assert_eq!(
            Pattern::parse(b"rl:"),
            Pattern::Prefix(Bytes::from_static(b"rl:"))
        );
        assert!(matches!(Pattern::parse(b"rl:*"), Pattern::Glob(_)));
        assert!(Pattern::parse(b"a\\*").matches(b"a*"));
        assert!(!Pattern::parse(b"a\\*").matches(b"ab"));
        assert!(Pattern::parse(b"\xff\x00").matches(b"\xff\x00tail"));
    }
}
