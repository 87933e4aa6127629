//! The domain events keywarden emits, and the one function that emits them.
//!
//! | event | when |
//! |---|---|
//! | `BACKEND_UNAVAILABLE_AT_STARTUP` | the first probe at startup fails |
//! | `BACKEND_DEGRADED` | an upstream leaves `healthy` |
//! | `BACKEND_RECOVERED` | it is `healthy` again after either of the above |
//! | `CONFIG_RELOADED` | a reload (SIGHUP, `KEYWARDEN RELOAD`) installed a new configuration |
//! | `CONFIG_RELOAD_FAILED` | a reload was rejected; the configuration in force is unchanged |
//!
//! Each is one JSON object on one line, with fixed fields in a fixed order. The backend events
//! carry `event`, `timestamp` (RFC 3339, UTC, milliseconds), `instance`, `upstream` (its
//! address), `cause`, `keyspaces` (the keyspace names by mode), then the RECOVERED fields. A RECOVERED carries the
//! cause of the outage it closes. For example (one line in the file):
//!
//! ```text
//! {"event":"BACKEND_RECOVERED","timestamp":"2025-03-01T12:00:04.210Z",
//!  "instance":"kw-1f3a9c0d2b4e5f67","upstream":"10.0.0.5:6379","cause":"refused",
//!  "keyspaces":{"fail_closed":["ratelimit"],"degraded":["cache"],"local_only":["scratch"]},
//!  "outage_ms":3208,"refused":1412,"degraded_replies":877,"discarded_writes":35}
//! ```
//!
//! The reload events carry `source` (the file), `trigger`, `generation` (of the configuration
//! in force afterwards), then `applied`, `restart_required`, `keyspaces` and
//! `discarded_local_keys`, or `errors` (each problem as `place: message`; a config problem
//! never quotes a secret).
//!
//! An event is built from names the operator configured, an address, a cause and counts: it
//! has no field that could carry a client's key or value, and must never gain one.
//!
//! [`Events::emit`] writes it to the log (a `tracing` event with target `keywarden::events`, its
//! fields as tracing fields) and, when configured, appends the line to a JSONL file.

use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use serde::Serialize;

use crate::upstream::outage::OutageEvents;
pub use crate::upstream::outage::{AffectedKeyspaces, Counters, Counts, Event, EventKind, Outage};

/// A configuration reload's outcome: `CONFIG_RELOADED` or `CONFIG_RELOAD_FAILED`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReloadEvent<'a> {
    /// The file read.
    pub source: &'a str,
    /// What asked for it: `SIGHUP` or `KEYWARDEN RELOAD`.
    pub trigger: &'static str,
    /// The configuration in force afterwards (1 at startup, one more per applied reload).
    pub generation: u64,
    pub outcome: ReloadOutcome<'a>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum ReloadOutcome<'a> {
    Applied {
        /// The settings that changed and now apply, such as `keyspaces` or `users`.
        applied: &'a [&'static str],
        /// Settings that changed in the file but need a restart; their old values stay.
        restart_required: &'a [&'static str],
        /// The keyspaces in force afterwards.
        keyspaces: &'a AffectedKeyspaces,
        /// Local keys removed because their keyspace's mode changed.
        discarded_local_keys: usize,
    },
    /// The new file was rejected; the configuration in force did not change.
    Failed {
        /// Each problem, `place: message`.
        errors: &'a [String],
    },
}

impl ReloadEvent<'_> {
    pub(crate) fn name(&self) -> &'static str {
        match self.outcome {
            ReloadOutcome::Applied { .. } => "CONFIG_RELOADED",
            ReloadOutcome::Failed { .. } => "CONFIG_RELOAD_FAILED",
        }
    }
}

#[derive(Serialize)]
struct ReloadHead<'a> {
    event: &'static str,
    timestamp: String,
    instance: &'a str,
    source: &'a str,
    trigger: &'static str,
    generation: u64,
}

#[derive(Serialize)]
struct ReloadedLine<'a> {
    #[serde(flatten)]
    head: ReloadHead<'a>,
    applied: &'a [&'static str],
    restart_required: &'a [&'static str],
    keyspaces: &'a AffectedKeyspaces,
    discarded_local_keys: usize,
}

#[derive(Serialize)]
struct ReloadFailedLine<'a> {
    #[serde(flatten)]
    head: ReloadHead<'a>,
    errors: &'a [String],
}

/// Where events go: the log always, a JSONL file when configured.
pub struct Events {
    instance: String,
    jsonl: Option<Mutex<File>>,
}

/// The wire form: field order here is the order in the line.
#[derive(Serialize)]
struct Line<'a> {
    event: &'static str,
    timestamp: String,
    instance: &'a str,
    upstream: &'a str,
    cause: &'static str,
    keyspaces: &'a AffectedKeyspaces,
    #[serde(flatten)]
    outage: Option<Outage>,
}

/// The id events carry: the configured one, or one generated on first use and kept for the
/// life of the process (`kw-` and 16 random hex digits), so that several keywarden instances
/// behind one load balancer can be told apart.
pub fn instance_id(configured: Option<&str>) -> String {
    static GENERATED: OnceLock<String> = OnceLock::new();
    match configured {
        Some(id) => id.to_owned(),
        None => GENERATED
            .get_or_init(|| {
                // std's hasher keys are random per process: randomness without a dependency.
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u128(
                    SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_nanos())
                        .unwrap_or(0),
                );
                h.write_u32(std::process::id());
                format!("kw-{:016x}", h.finish())
            })
            .clone(),
    }
}

impl Events {
    /// Events for instance `instance`, also appended to `jsonl` when given. The file is opened
    /// once, here, for appending (created if missing), so an error shows at startup.
    pub fn new(instance: String, jsonl: Option<&Path>) -> io::Result<Events> {
        let jsonl = match jsonl {
            Some(path) => Some(Mutex::new(
                OpenOptions::new().create(true).append(true).open(path)?,
            )),
            None => None,
        };
        Ok(Events { instance, jsonl })
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The JSON line for `event` at `at`, without the newline.
    pub fn line(&self, event: &Event<'_>, at: SystemTime) -> String {
        let line = Line {
            event: event.kind.as_str(),
            timestamp: humantime::format_rfc3339_millis(at).to_string(),
            instance: &self.instance,
            upstream: event.upstream,
            cause: event.cause.as_str(),
            keyspaces: event.keyspaces,
            outage: event.outage,
        };
        serde_json::to_string(&line).expect("an event always encodes")
    }

    /// Emits `event` now: to the log, and to the JSONL file if there is one. A failed file
    /// write is logged and does not stop the proxy.
    pub(crate) fn emit(&self, event: &Event<'_>) {
        let line = self.line(event, SystemTime::now());
        self.log(event);
        self.append(line, event.kind.as_str());
    }

    /// Emits the outcome of a configuration reload, to the log and the JSONL file.
    pub(crate) fn emit_reload(&self, event: &ReloadEvent<'_>) {
        let line = self.reload_line(event, SystemTime::now());
        let name = event.name();
        let (applied, restart_required, errors) = match &event.outcome {
            ReloadOutcome::Applied {
                applied,
                restart_required,
                ..
            } => (applied.join(","), restart_required.join(","), String::new()),
            ReloadOutcome::Failed { errors } => (String::new(), String::new(), errors.join("; ")),
        };
        macro_rules! log_event {
            ($level:ident) => {
                tracing::$level!(
                    target: "keywarden::events",
                    event = name,
                    instance = %self.instance,
                    source = event.source,
                    trigger = event.trigger,
                    generation = event.generation,
                    applied = %applied,
                    restart_required = %restart_required,
                    errors = %errors,
                    "{name}"
                )
            };
        }
        match event.outcome {
            ReloadOutcome::Applied { .. } if restart_required.is_empty() => log_event!(info),
            ReloadOutcome::Applied { .. } => log_event!(warn),
            ReloadOutcome::Failed { .. } => log_event!(error),
        }
        self.append(line, name);
    }

    /// Emits `BACKEND_SWITCHED`: Sentinel named a new primary for `upstream` (the master's
    /// name) and keywarden now sends its traffic there.
    pub(crate) fn emit_switched(&self, upstream: &str, from: &str, to: &str) {
        #[derive(serde::Serialize)]
        struct Line<'a> {
            event: &'a str,
            timestamp: String,
            instance: &'a str,
            upstream: &'a str,
            from: &'a str,
            to: &'a str,
        }
        let name = "BACKEND_SWITCHED";
        let line = serde_json::to_string(&Line {
            event: name,
            timestamp: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            instance: &self.instance,
            upstream,
            from,
            to,
        })
        .expect("an event always encodes");
        tracing::warn!(target: "keywarden::events", event = name, instance = %self.instance, upstream, from, to, "{name}");
        self.append(line, name);
    }

    /// The JSON line for a reload event at `at`, without the newline.
    pub(crate) fn reload_line(&self, event: &ReloadEvent<'_>, at: SystemTime) -> String {
        let head = ReloadHead {
            event: event.name(),
            timestamp: humantime::format_rfc3339_millis(at).to_string(),
            instance: &self.instance,
            source: event.source,
            trigger: event.trigger,
            generation: event.generation,
        };
        let line = match &event.outcome {
            ReloadOutcome::Applied {
                applied,
                restart_required,
                keyspaces,
                discarded_local_keys,
            } => serde_json::to_string(&ReloadedLine {
                head,
                applied,
                restart_required,
                keyspaces,
                discarded_local_keys: *discarded_local_keys,
            }),
            ReloadOutcome::Failed { errors } => {
                serde_json::to_string(&ReloadFailedLine { head, errors })
            }
        };
        line.expect("an event always encodes")
    }

    /// Appends `line` to the JSONL file, if there is one.
    fn append(&self, line: String, event: &str) {
        if let Some(file) = &self.jsonl {
            // One write of the whole line: with O_APPEND, lines from several writers never
            // interleave. No buffer in between, so the line is in the file when this returns.
            let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
            let mut bytes = line.into_bytes();
            bytes.push(b'\n');
            if let Err(e) = file.write_all(&bytes).and_then(|()| file.flush()) {
                tracing::error!(error = %e, event, "cannot append the event to the events file");
            }
        }
    }

    /// The log form. The log line has its own timestamp, so the event's is not repeated (a
    /// JSON log line would otherwise carry the key twice); `keyspaces` is its JSON text.
    fn log(&self, event: &Event<'_>) {
        let keyspaces = serde_json::to_string(event.keyspaces).expect("names always encode");
        let o = event.outage;
        macro_rules! log_event {
            ($level:ident) => {
                tracing::$level!(
                    target: "keywarden::events",
                    event = event.kind.as_str(),
                    instance = %self.instance,
                    upstream = event.upstream,
                    cause = event.cause.as_str(),
                    keyspaces = %keyspaces,
                    outage_ms = o.map(|o| o.outage_ms),
                    refused = o.map(|o| o.counts.refused),
                    degraded_replies = o.map(|o| o.counts.degraded_replies),
                    discarded_writes = o.map(|o| o.counts.discarded_writes),
                    "{}", event.kind.as_str()
                )
            };
        }
        match event.kind {
            EventKind::Recovered => log_event!(info),
            EventKind::Degraded | EventKind::UnavailableAtStartup => log_event!(warn),
        }
    }
}

impl OutageEvents for Events {
    fn emit(&self, event: &Event<'_>) {
        Events::emit(self, event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::keyspace::{Keyspaces, Mode};
    use crate::upstream::health::Cause;
    use serde_json::{json, Value};
    use std::time::Duration;

    fn keyspaces() -> AffectedKeyspaces {
        AffectedKeyspaces {
            fail_closed: vec!["ratelimit".into()],
            degraded: vec!["cache".into(), "sessions".into()],
            local_only: vec![],
        }
    }

    fn keys_of(v: &Value) -> Vec<&str> {
        v.as_object().unwrap().keys().map(|k| k.as_str()).collect()
    }

    #[test]
    fn json_shape_of_each_event() {
        let events = Events::new("kw-test".into(), None).unwrap();
        let ks = keyspaces();
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_740_830_404_210);
        let degraded = Event {
            kind: EventKind::Degraded,
            upstream: "127.0.0.1:6379",
            cause: Cause::Refused,
            keyspaces: &ks,
            outage: None,
        };
        let line = events.line(&degraded, at);
        assert!(!line.contains('\n'));
        assert_eq!(
            serde_json::from_str::<Value>(&line).unwrap(),
            json!({
                "event": "BACKEND_DEGRADED",
                "timestamp": "2025-03-01T12:00:04.210Z",
                "instance": "kw-test",
                "upstream": "127.0.0.1:6379",
                "cause": "refused",
                "keyspaces": {
                    "fail_closed": ["ratelimit"],
                    "degraded": ["cache", "sessions"],
                    "local_only": [],
                },
            })
        );
        // Field order is part of the format (serde_json's Value sorts keys, so check the text).
        assert!(line.starts_with(r#"{"event":"BACKEND_DEGRADED","timestamp":"#));

        let startup = Event {
            kind: EventKind::UnavailableAtStartup,
            cause: Cause::Timeout,
            ..degraded
        };
        let v: Value = serde_json::from_str(&events.line(&startup, at)).unwrap();
        assert_eq!(v["event"], "BACKEND_UNAVAILABLE_AT_STARTUP");
        assert_eq!(v["cause"], "timeout");
        assert_eq!(keys_of(&v).len(), 6);

        let recovered = Event {
            kind: EventKind::Recovered,
            outage: Some(Outage {
                outage_ms: 3208,
                counts: Counts {
                    refused: 1412,
                    degraded_replies: 877,
                    discarded_writes: 35,
                },
            }),
            ..degraded
        };
        let line = events.line(&recovered, at);
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], "BACKEND_RECOVERED");
        assert_eq!(v["outage_ms"], 3208);
        assert_eq!(v["refused"], 1412);
        assert_eq!(v["degraded_replies"], 877);
        assert_eq!(v["discarded_writes"], 35);
        // Exactly the fixed fields: nothing else can carry a key or a value.
        let mut fields = keys_of(&v);
        fields.sort();
        assert_eq!(
            fields,
            [
                "cause",
                "degraded_replies",
                "discarded_writes",
                "event",
                "instance",
                "keyspaces",
                "outage_ms",
                "refused",
                "timestamp",
                "upstream"
            ]
        );
        let tail = concat!(
            r#""keyspaces":{"fail_closed":["ratelimit"],"degraded":["cache","sessions"],"#,
            r#""local_only":[]},"outage_ms":3208,"refused":1412,"degraded_replies":877,"#,
            r#""discarded_writes":35}"#
        );
        assert!(line.ends_with(tail), "{line}");
    }

    #[test]
    fn timestamp_is_utc_with_milliseconds_and_parses_back() {
        let events = Events::new("i".into(), None).unwrap();
        let ks = AffectedKeyspaces::default();
        let now = SystemTime::now();
        let v: Value = serde_json::from_str(&events.line(
            &Event {
                kind: EventKind::Degraded,
                upstream: "u",
                cause: Cause::Closed,
                keyspaces: &ks,
                outage: None,
            },
            now,
        ))
        .unwrap();
        let ts = v["timestamp"].as_str().unwrap();
        assert_eq!(ts.len(), "2025-03-01T12:00:04.210Z".len(), "{ts}");
        assert!(ts.ends_with('Z'), "{ts}");
        let back = humantime::parse_rfc3339(ts).unwrap();
        let diff = now.duration_since(back).unwrap();
        assert!(diff < Duration::from_millis(1), "{diff:?}");
    }

    #[test]
    fn jsonl_appends_one_line_per_event_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "{\"event\":\"EARLIER\"}\n").unwrap();
        let ks = keyspaces();
        let ev = |kind| Event {
            kind,
            upstream: "127.0.0.1:1",
            cause: Cause::Closed,
            keyspaces: &ks,
            outage: (kind == EventKind::Recovered).then(Outage::default),
        };
        {
            let events = Events::new("a".into(), Some(&path)).unwrap();
            events.emit(&ev(EventKind::Degraded));
            // Readable at once: nothing is held back in a buffer.
            let text = std::fs::read_to_string(&path).unwrap();
            assert_eq!(text.lines().count(), 2);
            events.emit(&ev(EventKind::Recovered));
        }
        let events = Events::new("b".into(), Some(&path)).unwrap();
        events.emit(&ev(EventKind::Degraded));

        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with('\n'));
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let got: Vec<(&str, &str)> = lines
            .iter()
            .skip(1)
            .map(|v| {
                (
                    v["event"].as_str().unwrap(),
                    v["instance"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(lines[0]["event"], "EARLIER");
        assert_eq!(
            got,
            [
                ("BACKEND_DEGRADED", "a"),
                ("BACKEND_RECOVERED", "a"),
                ("BACKEND_DEGRADED", "b")
            ]
        );
    }

    #[test]
    fn unwritable_events_file_is_a_startup_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/such/dir/events.jsonl");
        assert!(Events::new("i".into(), Some(&missing)).is_err());
    }

    #[test]
    fn instance_id_is_configured_or_generated_once() {
        assert_eq!(instance_id(Some("edge-1")), "edge-1");
        let a = instance_id(None);
        assert_eq!(a, instance_id(None));
        assert!(a.starts_with("kw-") && a.len() == 19, "{a}");
    }

    /// The log form: a tracing event with target `keywarden::events` and the fields.
    #[test]
    fn logged_as_a_structured_tracing_event() {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(move || sink.clone())
            .finish();
        let events = Events::new("kw-log".into(), None).unwrap();
        let ks = keyspaces();
        tracing::subscriber::with_default(subscriber, || {
            events.emit(&Event {
                kind: EventKind::Degraded,
                upstream: "127.0.0.1:6379",
                cause: Cause::Timeout,
                keyspaces: &ks,
                outage: None,
            });
            events.emit(&Event {
                kind: EventKind::Recovered,
                upstream: "127.0.0.1:6379",
                cause: Cause::Timeout,
                keyspaces: &ks,
                outage: Some(Outage {
                    outage_ms: 12,
                    counts: Counts {
                        refused: 1,
                        degraded_replies: 2,
                        discarded_writes: 3,
                    },
                }),
            });
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        let d = &lines[0];
        assert_eq!(d["target"], "keywarden::events");
        assert_eq!(d["level"], "WARN");
        assert_eq!(d["event"], "BACKEND_DEGRADED");
        assert_eq!(d["instance"], "kw-log");
        assert_eq!(d["upstream"], "127.0.0.1:6379");
        assert_eq!(d["cause"], "timeout");
        let ks_back: Value = serde_json::from_str(d["keyspaces"].as_str().unwrap()).unwrap();
        assert_eq!(ks_back["degraded"], json!(["cache", "sessions"]));
        assert!(d.get("outage_ms").is_none(), "{d}");
        let r = &lines[1];
        assert_eq!(r["level"], "INFO");
        assert_eq!(r["event"], "BACKEND_RECOVERED");
        assert_eq!(
            (
                &r["outage_ms"],
                &r["refused"],
                &r["degraded_replies"],
                &r["discarded_writes"]
            ),
            (&json!(12), &json!(1), &json!(2), &json!(3))
        );
    }

    #[test]
    fn affected_keyspaces_from_the_configuration() {
        use crate::policy::keyspace::{Keyspace, Pattern};
        let ks = |name: &str, mode| Keyspace {
            name: name.into(),
            patterns: vec![Pattern::parse(format!("{name}:").as_bytes())],
            mode,
        };
        let config = Keyspaces::new(
            vec![
                ks("rl", Mode::FailClosed),
                ks("cache", Mode::Degraded),
                ks("tmp", Mode::LocalOnly),
                ks("sess", Mode::Degraded),
            ],
            Mode::FailClosed,
        );
        assert_eq!(
            AffectedKeyspaces::of(&config),
            AffectedKeyspaces {
                fail_closed: vec!["rl".into(), "default".into()],
                degraded: vec!["cache".into(), "sess".into()],
                local_only: vec!["tmp".into()],
            }
        );
    }

    #[test]
    fn counters_report_what_happened_since() {
        let c = Counters::default();
        c.record_refused();
        let start = c.totals();
        c.record_refused();
        c.record_refused();
        c.record_degraded_reply();
        c.record_discarded_writes(5);
        assert_eq!(
            c.totals().since(start),
            Counts {
                refused: 2,
                degraded_replies: 1,
                discarded_writes: 5
            }
        );
    }
}
