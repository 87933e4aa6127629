//! Commands the built-in table lacks, learned from the upstream's own `COMMAND` reply: newer
//! Redis commands (7.2, 7.4, 8.x: `HGETDEL`, `CLIENT NO-TOUCH`, ...) and module commands
//! (`JSON.GET`), with their flags, ACL categories and key specs, so that permissions and
//! routing treat them as Redis would instead of as unknown.
//!
//! The built-in table stays first: a name it knows is never looked up here, so the hot path is
//! unchanged and an upstream cannot redefine what the proxy checks for a command it knows. A
//! command is learned only when its keys can be found from its key specs alone; one whose keys
//! need a module's own code (`getkeys-api`: `movablekeys` without a usable spec) or whose specs
//! are `unknown` or `incomplete` is left unknown, and stays refused to users with key limits.
//!
//! What is learned is built once, leaked (a few KiB, once per process) and published through
//! an atomic pointer, so lookups take no lock.

use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::types::OwnedFrame;

use super::{
    builtin, commands, search, BeginSearch, Categories, CommandInfo, FindKeys, Flags, GetKeys,
    KeyFlags, KeySpec,
};

/// What one `COMMAND` reply taught, against the built-in table.
#[derive(Debug, Default)]
pub struct Learned {
    /// Top-level commands the built-in table lacks, sorted by name.
    commands: &'static [CommandInfo],
    /// Subcommands of built-in containers that the built-in table lacks, sorted by full name
    /// (`client|no-touch`).
    subcommands: &'static [CommandInfo],
    /// Upstream commands whose keys cannot be found from their specs: left unknown.
    undecidable: Vec<String>,
    /// Built-in commands the upstream does not have (an older Redis, or renamed away).
    missing: Vec<String>,
}

impl Learned {
    /// Names of the commands and subcommands learned, sorted.
    pub fn added(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.commands
            .iter()
            .chain(self.commands.iter().flat_map(|c| c.subcommands))
            .chain(self.subcommands)
            .map(|c| c.name)
    }

    /// Upstream commands left unknown because their keys cannot be found from their specs.
    pub fn undecidable(&self) -> &[String] {
        &self.undecidable
    }

    /// Built-in commands the upstream does not list.
    pub fn missing(&self) -> &[String] {
        &self.missing
    }
}

/// Flags an upstream's `COMMAND` may not give a command: `no_auth`, and keywarden's own.
const UNTRUSTED: Flags = Flags::of(&[Flags::NO_AUTH, Flags::CONNECTION_STATE, Flags::LEARNED]);

static LEARNED: AtomicPtr<Learned> = AtomicPtr::new(std::ptr::null_mut());

/// Whether a learned command blocks (a module's blocking command): asked for every request
/// the dispositions do not know, so it is one load.
static ANY_BLOCKING: AtomicBool = AtomicBool::new(false);

/// True when a command learned from the upstream is flagged `blocking`.
#[inline]
pub(crate) fn any_blocking() -> bool {
    ANY_BLOCKING.load(Ordering::Relaxed)
}

/// What has been learned so far, if anything.
pub fn learned() -> Option<&'static Learned> {
    // Written once per install with Release; a published `Learned` is never freed.
    let ptr = LEARNED.load(Ordering::Acquire);
    (!ptr.is_null()).then(|| unsafe { &*ptr })
}

/// Publishes `learned` for every later lookup and returns it. The one it replaces (there is
/// one only if the upstream was learned again) is leaked, as lookups may still hold it.
pub fn install(learned: Learned) -> &'static Learned {
    let blocking = (learned.commands.iter())
        .chain(learned.commands.iter().flat_map(|c| c.subcommands))
        .chain(learned.subcommands)
        .any(CommandInfo::is_blocking);
    let leaked: &'static mut Learned = Box::leak(Box::new(learned));
    LEARNED.store(std::ptr::from_mut(leaked), Ordering::Release);
    ANY_BLOCKING.store(blocking, Ordering::Relaxed);
    leaked
}

/// A top-level command learned from the upstream, or a learned subcommand of a built-in
/// container `container` (its full name, `client`), as [`super::lookup`] resolves them.
pub(super) fn lookup_learned(
    name: &[u8],
    sub: Option<&[u8]>,
    container: Option<&'static CommandInfo>,
) -> Option<&'static CommandInfo> {
    let learned = learned()?;
    lookup_in_container(learned, name, sub, container)
}

fn lookup_in_container(
    learned: &'static Learned,
    name: &[u8],
    sub: Option<&[u8]>,
    container: Option<&'static CommandInfo>,
) -> Option<&'static CommandInfo> {
    // Lowercased on the stack: a client sending unknown names pays no allocation for them.
    let find = |list: &'static [CommandInfo], parts: &[&[u8]]| {
        let mut lower: smallvec::SmallVec<[u8; 64]> = smallvec::SmallVec::new();
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                lower.push(b'|');
            }
            lower.extend(part.iter().map(u8::to_ascii_lowercase));
        }
        list.binary_search_by(|c| c.name.as_bytes().cmp(&lower))
            .ok()
            .map(|i| &list[i])
    };
    match container {
        Some(container) => find(learned.subcommands, &[container.name.as_bytes(), sub?]),
        None => {
            let cmd = find(learned.commands, &[name])?;
            match sub {
                Some(sub) if !cmd.subcommands.is_empty() => {
                    find(cmd.subcommands, &[cmd.name.as_bytes(), sub])
                }
                _ => Some(cmd),
            }
        }
    }
}

/// Reads a whole RESP2 `COMMAND` reply against the built-in table.
pub fn from_reply(reply: &[u8]) -> Result<Learned, String> {
    let frame = match decode(reply) {
        Ok(Some((frame, _))) => frame,
        Ok(None) => return Err("an incomplete COMMAND reply".to_owned()),
        Err(e) => return Err(format!("an unreadable COMMAND reply: {e}")),
    };
    let entries = match frame {
        OwnedFrame::Array(entries) => entries,
        OwnedFrame::Error(e) => return Err(format!("COMMAND was refused: {e}")),
        _ => return Err("COMMAND did not reply with an array".to_owned()),
    };
    let mut learned = Learned::default();
    let mut new_commands = Vec::new();
    let mut new_subcommands = Vec::new();
    let mut upstream_names = Vec::new();
    for entry in &entries {
        let Some(parsed) = parse_entry(entry, None) else {
            continue;
        };
        upstream_names.push(parsed.name.clone());
        match builtin(parsed.name.as_bytes()) {
            Some(builtin) => {
                for sub in parsed.subcommands {
                    let short = sub.name.rsplit_once('|').map_or("", |(_, s)| s);
                    if search(
                        builtin.subcommands,
                        short.as_bytes(),
                        CommandInfo::short_name,
                    )
                    .is_some()
                    {
                        continue;
                    }
                    match sub.build(&mut learned.undecidable) {
                        Some(info) => new_subcommands.push(info),
                        None => continue,
                    }
                }
            }
            None => {
                if let Some(info) = parsed.build(&mut learned.undecidable) {
                    new_commands.push(info);
                }
            }
        }
    }
    learned.missing = commands()
        .iter()
        .filter(|c| !upstream_names.iter().any(|n| n == c.name))
        .map(|c| c.name.to_owned())
        .collect();
    new_commands.sort_by_key(|c| c.name);
    new_subcommands.sort_by_key(|c| c.name);
    learned.commands = Box::leak(new_commands.into_boxed_slice());
    learned.subcommands = Box::leak(new_subcommands.into_boxed_slice());
    Ok(learned)
}

/// One entry of the reply, before it is judged and built.
struct Parsed {
    name: String,
    arity: i32,
    flags: Flags,
    categories: Categories,
    /// `None`: a spec the interpreter cannot use.
    key_specs: Vec<Option<KeySpec>>,
    subcommands: Vec<Parsed>,
}

impl Parsed {
    /// The command as the proxy can use it, or `None` (its name added to `undecidable`) when
    /// its keys cannot be found from its specs.
    fn build(self, undecidable: &mut Vec<String>) -> Option<CommandInfo> {
        let usable = self.key_specs.iter().all(|s| {
            s.is_some_and(|s| {
                s.begin != BeginSearch::Unknown
                    && s.find != FindKeys::Unknown
                    && !s.flags.contains(KeyFlags::INCOMPLETE)
            })
        });
        let keyless_but_movable =
            self.key_specs.is_empty() && self.flags.contains(Flags::MOVABLE_KEYS);
        if !usable || keyless_but_movable {
            undecidable.push(self.name);
            return None;
        }
        let container = !self.subcommands.is_empty();
        let mut subcommands: Vec<CommandInfo> = self
            .subcommands
            .into_iter()
            .filter_map(|s| s.build(undecidable))
            .collect();
        if container && subcommands.is_empty() {
            // Without its subcommands a container would answer for all of them: unknown.
            undecidable.push(self.name);
            return None;
        }
        subcommands.sort_by_key(|c| c.name);
        let key_specs: Vec<KeySpec> = self.key_specs.into_iter().flatten().collect();
        Some(CommandInfo {
            name: Box::leak(self.name.into_boxed_str()),
            arity: self.arity,
            // `no_auth` from an upstream would let unauthenticated clients run it; keywarden's
            // own flags are keywarden's to set.
            flags: Flags(self.flags.0 & !UNTRUSTED.0) | Flags::LEARNED,
            categories: self.categories,
            key_specs: Box::leak(key_specs.into_boxed_slice()),
            subcommands: Box::leak(subcommands.into_boxed_slice()),
            getkeys: GetKeys::None,
        })
    }
}

fn text(frame: &OwnedFrame) -> Option<String> {
    match frame {
        OwnedFrame::BulkString(b) | OwnedFrame::SimpleString(b) => {
            Some(String::from_utf8_lossy(b).into_owned())
        }
        _ => None,
    }
}

fn int(frame: &OwnedFrame) -> Option<i64> {
    match frame {
        OwnedFrame::Integer(i) => Some(*i),
        _ => None,
    }
}

fn array(frame: &OwnedFrame) -> &[OwnedFrame] {
    match frame {
        OwnedFrame::Array(items) => items,
        _ => &[],
    }
}

/// The value under `key` in a RESP2 map written as a flat array of key, value pairs.
fn field<'a>(map: &'a [OwnedFrame], key: &str) -> Option<&'a OwnedFrame> {
    map.chunks_exact(2)
        .find(|pair| text(&pair[0]).is_some_and(|k| k.eq_ignore_ascii_case(key)))
        .map(|pair| &pair[1])
}

fn int_field(map: &[OwnedFrame], key: &str) -> Option<i32> {
    field(map, key)
        .and_then(int)
        .and_then(|i| i32::try_from(i).ok())
}

/// One `COMMAND` entry: name, arity, flags, first key, last key, step, ACL categories, and
/// from Redis 7.0 tips, key specs and subcommands. Redis 6 has no key specs: its first, last
/// and step become one, as Redis 7 itself derives them, unless the command has movable keys.
fn parse_entry(entry: &OwnedFrame, container: Option<&str>) -> Option<Parsed> {
    let e = array(entry);
    let name = text(e.first()?)?.to_ascii_lowercase();
    let arity = i32::try_from(int(e.get(1)?)?).ok()?;
    let flags = array(e.get(2)?)
        .iter()
        .filter_map(text)
        .filter_map(|f: String| Flags::from_name(&f))
        .fold(Flags::empty(), |a, b| a | b);
    let categories = e
        .get(6)
        .map(array)
        .unwrap_or_default()
        .iter()
        .filter_map(text)
        .filter_map(|c| Categories::from_name(c.trim_start_matches('@')))
        .fold(Categories::empty(), |a, b| a | b);
    let key_specs = match e.get(8) {
        Some(specs) => array(specs).iter().map(|s| parse_spec(array(s))).collect(),
        None => legacy_spec(e, flags).into_iter().collect(),
    };
    let name = match container {
        Some(container) if !name.contains('|') => format!("{container}|{name}"),
        _ => name,
    };
    let subcommands = e
        .get(9)
        .map(array)
        .unwrap_or_default()
        .iter()
        .filter_map(|s| parse_entry(s, Some(&name)))
        .collect();
    Some(Parsed {
        name,
        arity,
        flags,
        categories,
        key_specs,
        subcommands,
    })
}

/// Redis 6's (first, last, step) as a key spec; `None` for a command without keys.
fn legacy_spec(e: &[OwnedFrame], flags: Flags) -> Option<Option<KeySpec>> {
    let first = i32::try_from(int(e.get(3)?)?).ok()?;
    let last = i32::try_from(int(e.get(4)?)?).ok()?;
    let step = i32::try_from(int(e.get(5)?)?).ok()?;
    if first == 0 {
        // No keys, or only keys a command's own code finds (movablekeys): say so.
        return flags.contains(Flags::MOVABLE_KEYS).then_some(None);
    }
    if flags.contains(Flags::MOVABLE_KEYS) {
        return Some(None);
    }
    let lastkey = if last < 0 { last } else { last - first };
    Some(Some(KeySpec {
        begin: BeginSearch::Index(first),
        find: FindKeys::Range {
            lastkey,
            step: step.max(1),
            limit: 0,
        },
        flags: KeyFlags::empty(),
    }))
}

/// One key spec (a flat map: flags, begin_search, find_keys); `None` when a part of it is not
/// understood.
fn parse_spec(spec: &[OwnedFrame]) -> Option<KeySpec> {
    let flags = array(field(spec, "flags")?)
        .iter()
        .filter_map(text)
        .filter_map(|f: String| KeyFlags::from_name(&f))
        .fold(KeyFlags::empty(), |a, b| a | b);
    let begin = array(field(spec, "begin_search")?);
    let begin_spec = array(field(begin, "spec")?);
    let begin = match text(field(begin, "type")?)?.as_str() {
        "index" => BeginSearch::Index(int_field(begin_spec, "index")?),
        "keyword" => BeginSearch::Keyword {
            keyword: Box::leak(text(field(begin_spec, "keyword")?)?.into_boxed_str()),
            startfrom: int_field(begin_spec, "startfrom")?,
        },
        _ => BeginSearch::Unknown,
    };
    let find = array(field(spec, "find_keys")?);
    let find_spec = array(field(find, "spec")?);
    let find = match text(field(find, "type")?)?.as_str() {
        "range" => FindKeys::Range {
            lastkey: int_field(find_spec, "lastkey")?,
            step: int_field(find_spec, "keystep")?,
            limit: int_field(find_spec, "limit")?,
        },
        "keynum" => FindKeys::Keynum {
            keynumidx: int_field(find_spec, "keynumidx")?,
            firstkey: int_field(find_spec, "firstkey")?,
            step: int_field(find_spec, "keystep")?,
        },
        _ => FindKeys::Unknown,
    };
    // Steps below 1 would never advance: not a spec the interpreter can follow.
    match find {
        FindKeys::Range { step, .. } | FindKeys::Keynum { step, .. } if step < 1 => None,
        _ => Some(KeySpec { begin, find, flags }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_or_broken_reply_teaches_nothing() {
        for (reply, why) in [
            (
                &b"-NOPERM this user has no permissions to run the 'command' command\r\n"[..],
                "refused",
            ),
            (b"*3\r\n*1\r\n", "incomplete"),
            (b":1\r\n", "array"),
        ] {
            let err = from_reply(reply).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn a_redis_6_entry_becomes_a_range_spec_unless_its_keys_move() {
        // Redis 6's COMMAND: name, arity, flags, first, last, step, categories.
        let reply = b"*2\r\n\
            *7\r\n$6\r\nnewcmd\r\n:-3\r\n*1\r\n+write\r\n:1\r\n:-1\r\n:2\r\n*1\r\n+@write\r\n\
            *7\r\n$6\r\nmovcmd\r\n:-2\r\n*1\r\n+movablekeys\r\n:0\r\n:0\r\n:0\r\n*0\r\n";
        let learned = from_reply(reply).unwrap();
        assert_eq!(learned.commands.len(), 1);
        let cmd = &learned.commands[0];
        assert_eq!(cmd.name, "newcmd");
        assert_eq!(
            cmd.key_specs,
            [KeySpec {
                begin: BeginSearch::Index(1),
                find: FindKeys::Range {
                    lastkey: -1,
                    step: 2,
                    limit: 0
                },
                flags: KeyFlags::empty(),
            }]
        );
        assert!(cmd.categories.contains(Categories::WRITE));
        assert_eq!(learned.undecidable, ["movcmd"]);
        // Every built-in command is missing from a two-command upstream.
        assert_eq!(learned.missing.len(), commands().len());
    }
}
