#!/usr/bin/env python3
"""Generates src/command/table.rs, keywarden's table of every Redis command, from a real server.

Usage (from the crate root):

    python3 scripts/gen_command_table.py [--redis-server PATH] [--out src/command/table.rs]

It starts its own redis-server on a free port (no persistence, a temporary directory), asks it
`COMMAND` (every command with its subcommands, arity, flags, ACL categories and key specs),
writes the Rust table, stops the server and runs rustfmt on the file, so the committed file is
exactly what this script produces. The file is committed: builds never need a server.

What the server cannot tell us is written down here, next to the data it joins:
- CONNECTION_STATE: our own flag for commands whose effect or reply depends on or changes the
  state of the client's connection.
- GETKEYS_PROCS: the commands for which Redis's own key finder falls back to a C function
  (`getkeys_proc` in src/commands.c) in a case the key specs cannot answer. Only the procs that
  Redis can actually reach are listed; see the module doc of src/command.rs.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

# Commands (lowercase, subcommands as "container|sub") that depend on or change per-connection
# state: running them on a connection shared with other clients would be wrong.
CONNECTION_STATE = {
    # Transactions.
    "multi", "exec", "discard", "watch", "unwatch",
    # Selected database, protocol, authenticated user, the whole state, the connection itself.
    "select", "hello", "auth", "reset", "quit",
    # Cluster routing state of the connection.
    "readonly", "readwrite", "asking",
    # Modes that take over the connection: Pub/Sub, MONITOR, replication handshake.
    "subscribe", "unsubscribe", "psubscribe", "punsubscribe", "ssubscribe", "sunsubscribe",
    "monitor", "sync", "psync", "replconf",
    # CLIENT settings of this connection, and reports about this connection.
    "client|setname", "client|getname", "client|id", "client|info", "client|reply",
    "client|tracking", "client|trackinginfo", "client|getredir", "client|caching",
    "client|no-evict",
}

# Redis's getkeys_proc fallbacks that can be reached, by command, as Rust `GetKeys` values.
# NumKeys mirrors genericGetKeys(storeKeyOfs, keyCountOfs, firstKeyOfs, keyStep = 1) in db.c.
GETKEYS_PROCS = {
    # Key specs with flag VARIABLE_FLAGS are bypassed: setGetKeys / bitfieldGetKeys answer.
    "set": "GetKeys::FirstArg",
    "bitfield": "GetKeys::FirstArg",
    # Key specs of begin_search "unknown": sortGetKeys / sortROGetKeys always answer.
    "sort": "GetKeys::Sort",
    "sort_ro": "GetKeys::SortRo",
    # An `incomplete` key spec (KEYS ...): migrateGetKeys answers when it is found.
    "migrate": "GetKeys::Migrate",
    # When the range spec after STREAMS fails, xreadGetKeys parses the options itself.
    "xread": "GetKeys::Xread",
    "xreadgroup": "GetKeys::Xread",
    # When numkeys is not a valid count for the keynum spec, genericGetKeys (atoi) answers.
    "sintercard": "GetKeys::NumKeys { store: 0, count: 1, first: 2 }",
    "zunion": "GetKeys::NumKeys { store: 0, count: 1, first: 2 }",
    "zinter": "GetKeys::NumKeys { store: 0, count: 1, first: 2 }",
    "zdiff": "GetKeys::NumKeys { store: 0, count: 1, first: 2 }",
    "zintercard": "GetKeys::NumKeys { store: 0, count: 1, first: 2 }",
    "zunionstore": "GetKeys::NumKeys { store: 1, count: 2, first: 3 }",
    "zinterstore": "GetKeys::NumKeys { store: 1, count: 2, first: 3 }",
    "zdiffstore": "GetKeys::NumKeys { store: 1, count: 2, first: 3 }",
    "eval": "GetKeys::NumKeys { store: 0, count: 2, first: 3 }",
    "evalsha": "GetKeys::NumKeys { store: 0, count: 2, first: 3 }",
    "eval_ro": "GetKeys::NumKeys { store: 0, count: 2, first: 3 }",
    "evalsha_ro": "GetKeys::NumKeys { store: 0, count: 2, first: 3 }",
    "fcall": "GetKeys::NumKeys { store: 0, count: 2, first: 3 }",
    "fcall_ro": "GetKeys::NumKeys { store: 0, count: 2, first: 3 }",
    "lmpop": "GetKeys::NumKeys { store: 0, count: 1, first: 2 }",
    "zmpop": "GetKeys::NumKeys { store: 0, count: 1, first: 2 }",
    "blmpop": "GetKeys::NumKeys { store: 0, count: 2, first: 3 }",
    "bzmpop": "GetKeys::NumKeys { store: 0, count: 2, first: 3 }",
}

# Redis's names -> our Rust constant names. An unknown name stops the script: a new Redis
# version must be looked at, not silently dropped.
COMMAND_FLAGS = {
    "write": "WRITE", "readonly": "READONLY", "denyoom": "DENYOOM", "module": "MODULE",
    "admin": "ADMIN", "pubsub": "PUBSUB", "noscript": "NOSCRIPT", "blocking": "BLOCKING",
    "loading": "LOADING", "stale": "STALE", "skip_monitor": "SKIP_MONITOR",
    "skip_slowlog": "SKIP_SLOWLOG", "asking": "ASKING", "fast": "FAST", "no_auth": "NO_AUTH",
    "no_mandatory_keys": "NO_MANDATORY_KEYS", "no_async_loading": "NO_ASYNC_LOADING",
    "no_multi": "NO_MULTI", "movablekeys": "MOVABLE_KEYS", "allow_busy": "ALLOW_BUSY",
}
CATEGORIES = [
    "keyspace", "read", "write", "set", "sortedset", "list", "hash", "string", "bitmap",
    "hyperloglog", "geo", "stream", "pubsub", "admin", "fast", "slow", "blocking", "dangerous",
    "connection", "transaction", "scripting",
]
KEY_FLAGS = {
    "RO": "RO", "RW": "RW", "OW": "OW", "RM": "RM", "access": "ACCESS", "update": "UPDATE",
    "insert": "INSERT", "delete": "DELETE", "not_key": "NOT_KEY", "incomplete": "INCOMPLETE",
    "variable_flags": "VARIABLE_FLAGS",
}


# --- A minimal RESP2 client -------------------------------------------------------------------

class Resp:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def call(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a.encode() if isinstance(a, str) else a
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.sock.sendall(out)
        return self._read()

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def _read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n).decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise ValueError("unexpected RESP line %r" % line)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(binary, workdir):
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--daemonize", "no", "--loglevel", "warning", "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            conn = Resp(port)
            if conn.call("PING") == "PONG":
                return proc, conn
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            sys.exit("redis-server did not start")
        time.sleep(0.02)


# --- COMMAND reply -> table --------------------------------------------------------------------

def pairs(flat):
    """A RESP2 map (a flat array of key, value, ...) as a dict."""
    return dict(zip(flat[0::2], flat[1::2]))


def parse_spec(raw):
    spec = pairs(raw)
    flags = spec["flags"]
    for f in flags:
        if f not in KEY_FLAGS:
            sys.exit("unknown key spec flag %r: update KEY_FLAGS and command.rs" % f)
    bs = pairs(spec["begin_search"])
    bs_spec = pairs(bs["spec"]) if bs["spec"] else {}
    if bs["type"] == "index":
        begin = "BeginSearch::Index(%d)" % bs_spec["index"]
    elif bs["type"] == "keyword":
        begin = 'BeginSearch::Keyword { keyword: "%s", startfrom: %d }' % (
            bs_spec["keyword"], bs_spec["startfrom"])
    elif bs["type"] == "unknown":
        begin = "BeginSearch::Unknown"
    else:
        sys.exit("unknown begin_search type %r" % bs["type"])
    fk = pairs(spec["find_keys"])
    fk_spec = pairs(fk["spec"]) if fk["spec"] else {}
    if fk["type"] == "range":
        find = "FindKeys::Range { lastkey: %d, step: %d, limit: %d }" % (
            fk_spec["lastkey"], fk_spec["keystep"], fk_spec["limit"])
    elif fk["type"] == "keynum":
        find = "FindKeys::Keynum { keynumidx: %d, firstkey: %d, step: %d }" % (
            fk_spec["keynumidx"], fk_spec["firstkey"], fk_spec["keystep"])
    elif fk["type"] == "unknown":
        find = "FindKeys::Unknown"
    else:
        sys.exit("unknown find_keys type %r" % fk["type"])
    key_flags = "KeyFlags::of(&[%s])" % ", ".join("K::" + KEY_FLAGS[f] for f in flags)
    return "KeySpec { begin: %s, find: %s, flags: %s }" % (begin, find, key_flags)


def parse_command(raw):
    name, arity, flags, _first, _last, _step, categories, _tips, specs, subs = raw
    for f in flags:
        if f not in COMMAND_FLAGS:
            sys.exit("unknown command flag %r on %s: update COMMAND_FLAGS and command.rs"
                     % (f, name))
    consts = ["F::" + COMMAND_FLAGS[f] for f in flags]
    if name in CONNECTION_STATE:
        consts.append("F::CONNECTION_STATE")
    cats = []
    for c in categories:
        c = c.lstrip("@")
        if c not in CATEGORIES:
            sys.exit("unknown ACL category @%s on %s: update CATEGORIES and command.rs"
                     % (c, name))
        cats.append("C::" + c.upper())
    return {
        "name": name,
        "arity": arity,
        "flags": "Flags::of(&[%s])" % ", ".join(consts),
        "categories": "Categories::of(&[%s])" % ", ".join(cats),
        "specs": [parse_spec(s) for s in specs],
        "subs": sorted((parse_command(s) for s in subs), key=lambda c: c["name"]),
        "getkeys": GETKEYS_PROCS.get(name, "GetKeys::None"),
        "movable": "movablekeys" in flags,
    }


def rust_ident(name):
    return name.upper().replace("-", "_").replace("|", "_")


def emit_command(c, subs_static):
    specs = "&[]" if not c["specs"] else "&[\n%s\n]" % "\n".join(
        "        %s," % s for s in c["specs"])
    return (
        "CommandInfo {\n"
        '    name: "%s",\n'
        "    arity: %d,\n"
        "    flags: %s,\n"
        "    categories: %s,\n"
        "    key_specs: %s,\n"
        "    subcommands: %s,\n"
        "    getkeys: %s,\n"
        "}" % (c["name"], c["arity"], c["flags"], c["categories"], specs, subs_static,
               c["getkeys"]))


def render(commands, version):
    out = [
        "//! GENERATED by `python3 scripts/gen_command_table.py` from the `COMMAND` reply of",
        "//! redis-server %s; do not edit. Regenerate (from the crate root) with:" % version,
        "//!",
        "//! ```sh",
        "//! python3 scripts/gen_command_table.py",
        "//! ```",
        "//!",
        "//! Every command and subcommand, sorted by name for binary search (subcommands by the",
        "//! part after `|`). What each field means is documented in `src/command.rs`.",
        "",
        "use super::{",
        "    BeginSearch, Categories, Categories as C, CommandInfo, FindKeys, Flags, Flags as F,",
        "    GetKeys, KeyFlags, KeyFlags as K, KeySpec,",
        "};",
        "",
        "/// The Redis version this table was generated from.",
        'pub(super) const REDIS_VERSION: &str = "%s";' % version,
        "",
    ]
    top = []
    for c in commands:
        subs_static = "&[]"
        if c["subs"]:
            ident = "SUB_" + rust_ident(c["name"])
            subs_static = ident
            body = ",\n".join(emit_command(s, "&[]") for s in c["subs"])
            out.append("static %s: &[CommandInfo] = &[\n%s,\n];\n" % (ident, body))
        top.append(emit_command(c, subs_static))
    out.append("pub(super) static COMMANDS: &[CommandInfo] = &[\n%s,\n];" % ",\n".join(top))
    return "\n".join(out) + "\n"


def check(commands, listed):
    names = {c["name"] for c in commands} | {s["name"] for c in commands for s in c["subs"]}
    missing = set(listed) - names
    if missing:
        sys.exit("COMMAND LIST names commands COMMAND did not describe: %s" % sorted(missing))
    for name in list(CONNECTION_STATE) + list(GETKEYS_PROCS):
        if name not in names:
            sys.exit("%s is listed in this script but unknown to the server" % name)
    # Redis skips the key specs of a command with a `variable_flags` spec and asks its
    # getkeys_proc; every other proc listed here belongs to a command with movable keys.
    for c in commands:
        variable = any("VARIABLE_FLAGS" in s for s in c["specs"])
        if variable and c["name"] not in GETKEYS_PROCS:
            sys.exit("%s has variable_flags key specs: add its getkeys proc" % c["name"])
        if c["name"] in GETKEYS_PROCS and not (variable or c["movable"]):
            sys.exit("%s has a getkeys proc here but no movable keys" % c["name"])


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--redis-server", default="redis-server")
    ap.add_argument("--out", default=os.path.join(here, "..", "src", "command", "table.rs"))
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as workdir:
        proc, conn = start_server(args.redis_server, workdir)
        try:
            info = pairs_from_info(conn.call("INFO", "server"))
            version = info["redis_version"]
            raw = conn.call("COMMAND")
            listed = conn.call("COMMAND", "LIST")
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    commands = sorted((parse_command(c) for c in raw), key=lambda c: c["name"])
    check(commands, listed)
    text = render(commands, version)
    with open(args.out, "w") as f:
        f.write(text)
    rustfmt = shutil.which("rustfmt")
    if rustfmt is None:
        sys.exit("rustfmt not found: the table was written unformatted")
    subprocess.run([rustfmt, "--edition", "2021", args.out], check=True)
    subs = sum(len(c["subs"]) for c in commands)
    print("wrote %s: %d commands, %d subcommands (redis %s)"
          % (os.path.relpath(args.out), len(commands), subs, version))


def pairs_from_info(text):
    fields = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            fields[k] = v
    return fields


if __name__ == "__main__":
    main()
