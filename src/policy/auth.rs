//! Who a client is and what it may do: the proxy's own `AUTH` and per-user permissions.
//!
//! The proxy decides these itself, from its config, rather than leaving them to the upstream:
//! keys served from the local store (degraded and `local_only` keyspaces) never reach the
//! upstream, so its ACLs could not protect them, and an unavailable upstream must never widen
//! access (see the README's "Authentication and users").
//!
//! # Users
//! - No password configured ([`Users::open`]): every client is the implicit `default` user,
//!   which may do everything, as Redis without `requirepass`.
//! - Otherwise ([`Users::new`]) clients start unauthenticated and may run only the commands
//!   Redis marks `no_auth` (AUTH, HELLO, QUIT, RESET) until `AUTH` succeeds. A configured user
//!   named `default` is the one `AUTH <password>` (no username) logs in as; with none, that form
//!   always fails.
//!
//! Passwords are kept only as SHA-256 digests and compared in constant time. A digest is
//! sensitive too (an unsalted digest of a weak password is easy to reverse), so no `Debug`
//! output here shows one.
//!
//! # Permissions ([`User::check`])
//! As Redis ACLs built from `+@category` and `~pattern` rules only:
//! 1. a command is allowed when it belongs to **any** of the user's categories; the `no_auth`
//!    commands always are, as in Redis;
//! 2. every key it names must match one of the user's key patterns or belong (by
//!    [`Keyspaces::classify`], the routing's own answer) to one of the user's keyspaces.
//!
//! Rules that go further than Redis, because the proxy cannot see what the upstream would do:
//! - a command the table does not know is allowed only to a user with every command and every
//!   key (the upstream may know it, a newer command or a module's, and run it on keys the
//!   proxy cannot find): otherwise it is Redis's unknown-command error, or NOPERM for a user
//!   with every command but not every key;
//! - code the proxy cannot look into (EVAL, EVALSHA, FCALL and their `_RO` forms, and what
//!   plants it: SCRIPT LOAD, FUNCTION LOAD, DELETE, RESTORE and FLUSH) runs upstream as the
//!   proxy's own user, with every permission, so only a user with every command and every key
//!   may run it; anyone else gets NOPERM for it;
//! - SORT and SORT_RO's `BY <pattern>` and `GET` read keys named by a pattern: as in Redis,
//!   only a user with every key may use them ([`Users::check_sort`]);
//! - what Redis flags `admin` (CONFIG, DEBUG, SHUTDOWN, REPLICAOF, FAILOVER, MODULE, ACL,
//!   SAVE, MONITOR, CLIENT KILL/LIST/PAUSE, ...) acts on the server as a whole or on other
//!   clients' traffic: it needs every command or the `admin` category named, whatever other
//!   category also holds it (Redis lets `+@connection` run CLIENT KILL);
//! - FLUSHALL, FLUSHDB and SWAPDB name no key but act on every key: they need every key.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::command::{Categories, CommandInfo, Flags, SortPattern};
use crate::policy::keyspace::{Keyspaces, Membership, Pattern};

/// The name Redis gives the user that `AUTH <password>` logs in as.
pub(crate) const DEFAULT_USER: &str = "default";

/// A user, as an index into [`Users`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserId(u32);

/// The SHA-256 digest of a password. Equality is constant-time; `Debug` never shows it.
#[derive(Clone, Copy)]
pub struct PasswordHash([u8; 32]);

/// Which commands a user may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandAccess {
    /// Every command, including ones the command table does not know (Redis's `+@all`).
    All,
    /// Commands in any of these categories, and the `no_auth` ones.
    Categories(Categories),
}

/// Which keys a user may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAccess {
    /// Every key (Redis's `~*`).
    All,
    /// Keys that match one of the patterns or fall in one of the keyspaces (either list may be
    /// empty; both empty means no key at all).
    Only {
        patterns: Vec<Pattern>,
        keyspaces: Vec<Membership>,
    },
}

/// One user: a name, a password (the implicit open `default` has none) and permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    name: String,
    /// `None` only for the implicit `default` user when no password is configured.
    password: Option<PasswordHash>,
    commands: CommandAccess,
    keys: KeyAccess,
}

/// Every user the proxy knows, and whether clients must authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Users {
    list: Vec<User>,
    /// False only for [`Users::open`].
    required: bool,
}

/// Why a request was refused before it went anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// The client has not authenticated and the command is not one of the `no_auth` ones.
    NoAuth,
    /// The user may not run this command; Redis's lowercase name (`get`, `client|list`).
    Command(String),
    /// The user may not access one of the keys.
    Key,
    /// The command table does not know the command, and the user may not run everything.
    /// Answer it as Redis answers an unknown command (`-ERR unknown command '<name>', with args
    /// beginning with: ...`, which needs the request's arguments): Redis looks a command up
    /// before it checks permissions, so no user ever sees NOPERM for one.
    UnknownCommand,
    /// The command table does not know the command, and the user has every command but not
    /// every key: the proxy cannot find its keys to check them. Answer it as
    /// [`Denial::Command`] with the request's name in lower case.
    Unclassified,
    /// SORT's `BY` with a pattern, or `GET`, from a user without every key.
    SortPattern(SortPattern),
}

/// Why `AUTH` (or `HELLO ... AUTH`) failed, or why `HELLO` needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// Unknown user, wrong password, or `AUTH <password>` with no `default` user configured.
    WrongPass,
    /// `AUTH <password>` when no password is configured at all.
    NoPasswordConfigured,
    /// `HELLO` without `AUTH` from a client that has not authenticated.
    HelloNoAuth,
}

impl UserId {
    /// The position of the user in [`Users`] (for per-user tables kept elsewhere).
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl PasswordHash {
    /// The digest of `password`.
    pub fn of(password: &[u8]) -> PasswordHash {
        PasswordHash(Sha256::digest(password).into())
    }

    /// Reads 64 hexadecimal characters, either case (what `sha256sum` prints).
    pub(crate) fn from_hex(text: &str) -> Option<PasswordHash> {
        let text = text.as_bytes();
        if text.len() != 64 {
            return None;
        }
        let mut digest = [0u8; 32];
        for (byte, pair) in digest.iter_mut().zip(text.chunks_exact(2)) {
            *byte = hex_digit(pair[0])? << 4 | hex_digit(pair[1])?;
        }
        Some(PasswordHash(digest))
    }

    /// True if `password` hashes to this digest, in time that does not depend on where the
    /// digests differ.
    pub fn matches(&self, password: &[u8]) -> bool {
        *self == PasswordHash::of(password)
    }
}

fn hex_digit(ch: u8) -> Option<u8> {
    match ch {
        b'0'..=b'9' => Some(ch - b'0'),
        b'a'..=b'f' => Some(ch - b'a' + 10),
        b'A'..=b'F' => Some(ch - b'A' + 10),
        _ => None,
    }
}

impl PartialEq for PasswordHash {
    /// Constant-time: every byte is compared, whatever the first difference.
    fn eq(&self, other: &PasswordHash) -> bool {
        let diff = self
            .0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

impl Eq for PasswordHash {}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(<redacted>)")
    }
}

/// Every ACL category there is.
fn every_category() -> Categories {
    Categories::ALL
        .iter()
        .fold(Categories::empty(), |all, (c, _)| all | *c)
}

impl CommandAccess {
    /// The access a list of categories gives: all of them is [`CommandAccess::All`], as Redis's
    /// `+@all` is every category.
    pub fn of(categories: Categories) -> CommandAccess {
        if categories.contains(every_category()) {
            CommandAccess::All
        } else {
            CommandAccess::Categories(categories)
        }
    }

    fn allows(&self, cmd: &CommandInfo) -> bool {
        match self {
            CommandAccess::All => true,
            CommandAccess::Categories(allowed) => {
                cmd.flags().contains(Flags::NO_AUTH) || allowed.intersects(cmd.categories())
            }
        }
    }
}

impl KeyAccess {
    fn allows(&self, key: &[u8], keyspaces: &Keyspaces) -> bool {
        match self {
            KeyAccess::All => true,
            KeyAccess::Only {
                patterns,
                keyspaces: allowed,
            } => {
                patterns.iter().any(|p| p.matches(key))
                    || allowed.contains(&keyspaces.classify(key))
            }
        }
    }
}

impl User {
    /// A configured user. `name` must be unique among the users given to [`Users::new`].
    pub fn new(
        name: String,
        password: PasswordHash,
        commands: CommandAccess,
        keys: KeyAccess,
    ) -> User {
        User {
            name,
            password: Some(password),
            commands,
            keys,
        }
    }

    /// Redis's `requirepass`: `default`, with this password and every permission.
    pub fn requirepass(password: PasswordHash) -> User {
        User::new(
            DEFAULT_USER.to_owned(),
            password,
            CommandAccess::All,
            KeyAccess::All,
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn commands(&self) -> &CommandAccess {
        &self.commands
    }

    pub fn keys(&self) -> &KeyAccess {
        &self.keys
    }

    /// The same commands and keys as `other`.
    pub(crate) fn same_permissions(&self, other: &User) -> bool {
        self.commands == other.commands && self.keys == other.keys
    }

    /// May this user run `cmd` (`None`: not in the command table) on `keys`? `keys` are the
    /// request's keys as [`crate::command::keys`] finds them; `keyspaces` classifies them.
    /// The command is checked before its keys, as Redis does.
    pub fn check(
        &self,
        cmd: Option<&CommandInfo>,
        keys: &[&[u8]],
        keyspaces: &Keyspaces,
    ) -> Result<(), Denial> {
        let Some(cmd) = cmd else {
            return match (&self.commands, &self.keys) {
                (CommandAccess::All, KeyAccess::All) => Ok(()),
                (CommandAccess::All, KeyAccess::Only { .. }) => Err(Denial::Unclassified),
                (CommandAccess::Categories(_), _) => Err(Denial::UnknownCommand),
            };
        };
        // A learned command without keys may still reach keys no argument names (a module's
        // search or query): the proxy cannot check it for a user with key limits.
        if cmd.flags().contains(Flags::LEARNED) && !cmd.has_keys() && self.keys != KeyAccess::All {
            return Err(Denial::Unclassified);
        }
        let refused = !self.commands.allows(cmd)
            || (runs_code(cmd) && !self.unrestricted())
            || (cmd.flags().contains(Flags::ADMIN) && !self.administers())
            || (acts_on_every_key(cmd) && self.keys != KeyAccess::All);
        if refused {
            return Err(Denial::Command(cmd.name().to_owned()));
        }
        if keys.iter().all(|key| self.keys.allows(key, keyspaces)) {
            Ok(())
        } else {
            Err(Denial::Key)
        }
    }

    /// Every command, or the admin category named: what acts on the server as a whole.
    fn administers(&self) -> bool {
        match &self.commands {
            CommandAccess::All => true,
            CommandAccess::Categories(c) => c.contains(Categories::ADMIN),
        }
    }

    /// Every command and every key: nothing the upstream runs for this user can go beyond
    /// what the proxy checks.
    fn unrestricted(&self) -> bool {
        self.commands == CommandAccess::All && self.keys == KeyAccess::All
    }
}

/// A keyless command that acts on every key of a database or of the server.
fn acts_on_every_key(cmd: &CommandInfo) -> bool {
    matches!(cmd.name(), "flushall" | "flushdb" | "swapdb")
}

/// Runs or plants code the proxy cannot look into: scripts and functions, which the upstream
/// runs as the proxy's own user (see the module doc). A command learned from the upstream in
/// the `scripting` category is taken to, as no list of its own can name it.
fn runs_code(cmd: &CommandInfo) -> bool {
    let learned = cmd.flags().contains(Flags::LEARNED);
    (learned && cmd.categories().contains(Categories::SCRIPTING))
        || matches!(
            cmd.name(),
            "eval"
                | "evalsha"
                | "eval_ro"
                | "evalsha_ro"
                | "fcall"
                | "fcall_ro"
                | "script|load"
                | "function|load"
                | "function|delete"
                | "function|restore"
                | "function|flush"
        )
}

impl Default for Users {
    fn default() -> Users {
        Users::open()
    }
}

impl Users {
    /// No password: every client is `default` and may do everything.
    pub fn open() -> Users {
        Users {
            list: vec![User {
                name: DEFAULT_USER.to_owned(),
                password: None,
                commands: CommandAccess::All,
                keys: KeyAccess::All,
            }],
            required: false,
        }
    }

    /// The configured users, names unique (the config checks it); none at all is
    /// [`Users::open`]. Clients must authenticate as one of them.
    pub fn new(list: Vec<User>) -> Users {
        if list.is_empty() {
            return Users::open();
        }
        debug_assert!(
            list.iter()
                .enumerate()
                .all(|(i, u)| list[..i].iter().all(|v| v.name != u.name)),
            "user names must be unique"
        );
        Users {
            list,
            required: true,
        }
    }

    /// True when a password is configured: clients then start unauthenticated.
    pub fn required(&self) -> bool {
        self.required
    }

    /// The user a client acts as before any `AUTH` (and after RESET): the all-permission
    /// `default` when no password is configured, otherwise none.
    pub(crate) fn default_user(&self) -> Option<UserId> {
        (!self.required).then_some(UserId(0))
    }

    pub fn user(&self, id: UserId) -> &User {
        &self.list[id.index()]
    }

    pub fn iter(&self) -> impl Iterator<Item = (UserId, &User)> {
        self.list
            .iter()
            .enumerate()
            .map(|(i, u)| (UserId(i as u32), u))
    }

    /// The user here with `user`'s name and password, if any: after a reload, who a client
    /// that logged in as `user` (of the configuration before) still is.
    pub(crate) fn same_user(&self, user: &User) -> Option<UserId> {
        self.iter()
            .find(|(_, u)| u.name == user.name && u.password == user.password)
            .map(|(id, _)| id)
    }

    /// The user `username` if `password` is theirs. The password is hashed before the user is
    /// looked up, so a wrong name costs the same as a wrong password.
    pub(crate) fn authenticate(&self, username: &[u8], password: &[u8]) -> Option<UserId> {
        let hash = PasswordHash::of(password);
        let (id, user) = self.iter().find(|(_, u)| u.name.as_bytes() == username)?;
        let ok = match &user.password {
            // Redis's `nopass`: any password is accepted.
            None => true,
            Some(expected) => *expected == hash,
        };
        ok.then_some(id)
    }

    /// `AUTH [username] password`, as Redis answers it: without a username it logs in as
    /// `default`, and is an error when no password is configured at all. On failure the client
    /// keeps the user it had.
    pub fn auth(&self, username: Option<&[u8]>, password: &[u8]) -> Result<UserId, AuthError> {
        if username.is_none() && !self.required {
            return Err(AuthError::NoPasswordConfigured);
        }
        let username = username.unwrap_or(DEFAULT_USER.as_bytes());
        self.authenticate(username, password)
            .ok_or(AuthError::WrongPass)
    }

    /// The whole decision for one request from a client acting as `who` (`None`: not
    /// authenticated): the `no_auth` commands always pass; any other needs a user, whose
    /// permissions then decide. An unknown command is [`Denial::UnknownCommand`] for a client
    /// that has not authenticated too, as Redis looks commands up first.
    pub fn check(
        &self,
        who: Option<UserId>,
        cmd: Option<&CommandInfo>,
        keys: &[&[u8]],
        keyspaces: &Keyspaces,
    ) -> Result<(), Denial> {
        match (who, cmd) {
            (Some(id), _) => self.user(id).check(cmd, keys, keyspaces),
            (None, None) => Err(Denial::UnknownCommand),
            (None, Some(cmd)) if cmd.flags().contains(Flags::NO_AUTH) => Ok(()),
            (None, Some(_)) => Err(Denial::NoAuth),
        }
    }

    /// SORT and SORT_RO's pattern options (see [`crate::command::sort_pattern`]): refused, as
    /// Redis refuses them, to a user without every key. Asked once [`Users::check`] passed.
    pub fn check_sort(
        &self,
        who: Option<UserId>,
        pattern: Option<SortPattern>,
    ) -> Result<(), Denial> {
        match (who, pattern) {
            (Some(id), Some(p)) if self.user(id).keys != KeyAccess::All => {
                Err(Denial::SortPattern(p))
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Denial {
    /// Redis 7.0's error text, without the leading `-` and the CRLF.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::NoAuth => f.write_str("NOAUTH Authentication required."),
            Denial::Command(name) => write!(
                f,
                "NOPERM this user has no permissions to run the '{name}' command"
            ),
            Denial::Key => f.write_str(
                "NOPERM this user has no permissions to access one of the keys used as arguments",
            ),
            // Only stand-ins: see the variants' docs for the reply to send.
            Denial::UnknownCommand => f.write_str("ERR unknown command"),
            Denial::Unclassified => f.write_str("NOPERM this user has no permissions"),
            Denial::SortPattern(p) => write!(
                f,
                "ERR {} option of SORT denied due to insufficient ACL permissions.",
                p.as_str()
            ),
        }
    }
}

impl fmt::Display for AuthError {
    /// Redis 7.0's error text, without the leading `-` and the CRLF.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthError::WrongPass => {
                "WRONGPASS invalid username-password pair or user is disabled."
            }
            AuthError::NoPasswordConfigured => {
                "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"
            }
            AuthError::HelloNoAuth => {
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time"
            }
        })
    }
}

impl std::error::Error for Denial {}
impl std::error::Error for AuthError {}

#[cfg(test)]
mod tests;
