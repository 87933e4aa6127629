//! The routing decision for one request: a pure function of the keyspaces, whether the
//! upstream is available, and the command (its keys, whether Redis knows it, whether the local
//! engine implements it). No sockets, no clock, no locks: tested with a table of cases.
//!
//! The rules, in order:
//! 1. A keyless command belongs to the default keyspace (commands the proxy answers itself
//!    never reach the router). A command Redis does not know has no known keys, so it too
//!    belongs to the default keyspace.
//! 2. `local_only` keys mixed with keys of any other mode: refused, in every state (the
//!    command would have to be split between two stores that never agree).
//! 3. Only `local_only` keys: served locally, whatever the upstream's state.
//! 4. Upstream available: forwarded, as one command, whatever the keyspaces.
//! 5. Upstream unavailable: refused if any key is `fail_closed` (or the command is unknown);
//!    otherwise, every key being `degraded`, served locally.
//!
//! Serving locally needs the local engine to implement the command; if it does not, the
//! request is refused, never approximated.

use crate::policy::keyspace::{Keyspaces, Membership, Mode};

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Upstream,
    Local,
    Reject(Refusal),
}

/// Why a request is refused; the keyspace named is the first key's that caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The upstream is unavailable and this keyspace fails closed.
    FailClosed(Membership),
    /// `local_only` keys together with keys that live upstream.
    MixedLocalOnly,
    /// The local engine does not implement this command.
    Unsupported(Membership),
}

/// What the router needs to know about one command.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Query<'a> {
    /// The command's keys, as the command table finds them.
    pub keys: &'a [&'a [u8]],
    /// Redis knows the command (it is in the command table).
    pub known: bool,
    /// The local engine implements it.
    pub local: bool,
}

pub(crate) fn route(keyspaces: &Keyspaces, upstream_available: bool, query: Query<'_>) -> Route {
    let mut first_local: Option<Membership> = None;
    let mut first_remote: Option<(Membership, Mode)> = None;
    let mut first_fail_closed: Option<Membership> = None;
    let mut visit = |m: Membership| match keyspaces.mode(m) {
        Mode::LocalOnly => {
            first_local.get_or_insert(m);
        }
        mode => {
            first_remote.get_or_insert((m, mode));
            if mode == Mode::FailClosed {
                first_fail_closed.get_or_insert(m);
            }
        }
    };
    if query.keys.is_empty() || !query.known {
        visit(Membership::Default);
    }
    for key in query.keys {
        visit(keyspaces.classify(key));
    }

    let local = |m: Membership| {
        if query.local {
            Route::Local
        } else {
            Route::Reject(Refusal::Unsupported(m))
        }
    };
    match (first_local, first_remote) {
        (Some(_), Some(_)) => Route::Reject(Refusal::MixedLocalOnly),
        (Some(m), None) => local(m),
        (None, _) if upstream_available => Route::Upstream,
        (None, _) if !query.known => Route::Reject(Refusal::FailClosed(Membership::Default)),
        (None, _) => match (first_fail_closed, first_remote) {
            (Some(m), _) => Route::Reject(Refusal::FailClosed(m)),
            (None, Some((m, _))) => local(m),
            (None, None) => unreachable!("every request visits at least one keyspace"),
        },
    }
}

/// [`route`] when no keyspace is configured: every key is in the default keyspace, so only
/// the command matters, and its keys need not be found. `known` is asked only when the answer
/// depends on it (a `degraded` default while the upstream is unavailable).
pub(crate) fn route_default(
    default_mode: Mode,
    upstream_available: bool,
    local: bool,
    known: impl FnOnce() -> bool,
) -> Route {
    let here = if local {
        Route::Local
    } else {
        Route::Reject(Refusal::Unsupported(Membership::Default))
    };
    match default_mode {
        Mode::LocalOnly => here,
        _ if upstream_available => Route::Upstream,
        Mode::Degraded if local || known() => here,
        Mode::Degraded | Mode::FailClosed => {
            Route::Reject(Refusal::FailClosed(Membership::Default))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::keyspace::{Keyspace, Pattern};

    fn spaces(default_mode: Mode) -> Keyspaces {
        let ks = |name: &str, p: &str, mode| Keyspace {
            name: name.into(),
            patterns: vec![Pattern::parse(p.as_bytes())],
            mode,
        };
        Keyspaces::new(
            vec![
                ks("limits", "rl:", Mode::FailClosed),
                ks("cache", "cache:", Mode::Degraded),
                ks("scratch", "tmp:", Mode::LocalOnly),
            ],
            default_mode,
        )
    }

    const LIMITS: Membership = Membership::Named(0);
    const CACHE: Membership = Membership::Named(1);
    const SCRATCH: Membership = Membership::Named(2);
    const DEFAULT: Membership = Membership::Default;

    /// (default mode, upstream available, keys, known, local engine supports, route)
    type Case = (Mode, bool, &'static [&'static str], bool, bool, Route);

    #[test]
    fn routing_table() {
        use Refusal::*;
        use Route::*;
        let cases: &[Case] = &[
            // Single keys, healthy.
            (Mode::FailClosed, true, &["rl:1"], true, true, Upstream),
            (Mode::FailClosed, true, &["cache:1"], true, true, Upstream),
            (Mode::FailClosed, true, &["tmp:1"], true, true, Local),
            (Mode::FailClosed, true, &["other"], true, true, Upstream),
            // Single keys, unavailable.
            (
                Mode::FailClosed,
                false,
                &["rl:1"],
                true,
                true,
                Reject(FailClosed(LIMITS)),
            ),
            (Mode::FailClosed, false, &["cache:1"], true, true, Local),
            (
                Mode::FailClosed,
                false,
                &["cache:1"],
                true,
                false,
                Reject(Unsupported(CACHE)),
            ),
            (Mode::FailClosed, false, &["tmp:1"], true, true, Local),
            (
                Mode::FailClosed,
                false,
                &["other"],
                true,
                true,
                Reject(FailClosed(DEFAULT)),
            ),
            (Mode::Degraded, false, &["other"], true, true, Local),
            // local_only never reaches the upstream, and the engine must support the command.
            (
                Mode::FailClosed,
                true,
                &["tmp:1"],
                true,
                false,
                Reject(Unsupported(SCRATCH)),
            ),
            // Multi-key across keyspaces.
            (
                Mode::FailClosed,
                true,
                &["rl:1", "cache:1"],
                true,
                true,
                Upstream,
            ),
            (
                Mode::FailClosed,
                false,
                &["cache:1", "rl:1"],
                true,
                true,
                Reject(FailClosed(LIMITS)),
            ),
            (
                Mode::FailClosed,
                false,
                &["cache:1", "cache:2"],
                true,
                true,
                Local,
            ),
            (
                Mode::Degraded,
                false,
                &["cache:1", "other"],
                true,
                true,
                Local,
            ),
            (
                Mode::FailClosed,
                true,
                &["tmp:1", "tmp:2"],
                true,
                true,
                Local,
            ),
            (
                Mode::FailClosed,
                true,
                &["tmp:1", "cache:1"],
                true,
                true,
                Reject(MixedLocalOnly),
            ),
            (
                Mode::FailClosed,
                false,
                &["tmp:1", "cache:1"],
                true,
                true,
                Reject(MixedLocalOnly),
            ),
            (
                Mode::FailClosed,
                true,
                &["rl:1", "tmp:1"],
                true,
                true,
                Reject(MixedLocalOnly),
            ),
            // Keyless commands follow the default keyspace.
            (Mode::FailClosed, true, &[], true, true, Upstream),
            (
                Mode::FailClosed,
                false,
                &[],
                true,
                true,
                Reject(FailClosed(DEFAULT)),
            ),
            (Mode::Degraded, false, &[], true, true, Local),
            (Mode::Degraded, true, &[], true, true, Upstream),
            (Mode::LocalOnly, true, &[], true, true, Local),
            (
                Mode::LocalOnly,
                false,
                &[],
                true,
                false,
                Reject(Unsupported(DEFAULT)),
            ),
            // Unknown commands: forwarded while healthy, fail closed while unavailable.
            (Mode::FailClosed, true, &[], false, false, Upstream),
            (Mode::Degraded, true, &[], false, false, Upstream),
            (
                Mode::Degraded,
                false,
                &[],
                false,
                false,
                Reject(FailClosed(DEFAULT)),
            ),
            (
                Mode::FailClosed,
                false,
                &[],
                false,
                false,
                Reject(FailClosed(DEFAULT)),
            ),
        ];
        for (default, up, keys, known, local, want) in cases {
            let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
            let got = route(
                &spaces(*default),
                *up,
                Query {
                    keys: &keys,
                    known: *known,
                    local: *local,
                },
            );
            assert_eq!(got, *want, "default {default}, up {up}, keys {keys:?}");
        }
    }

    #[test]
    fn without_keyspaces_only_the_command_matters() {
        let none = |mode| Keyspaces::new(Vec::new(), mode);
        for mode in [Mode::FailClosed, Mode::Degraded, Mode::LocalOnly] {
            for up in [true, false] {
                // `local` implies `known`: the engine runs only commands Redis has.
                for (known, local) in [(true, true), (true, false), (false, false)] {
                    for keys in [&[][..], &[&b"k"[..]][..], &[&b"tmp:1"[..], b"rl:1"][..]] {
                        let want = route(&none(mode), up, Query { keys, known, local });
                        let got = route_default(mode, up, local, || known);
                        assert_eq!(
                            got, want,
                            "default {mode}, up {up}, known {known}, local {local}"
                        );
                    }
                }
            }
        }
    }
}
