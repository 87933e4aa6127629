//! Keyspace commands: DEL, UNLINK, EXISTS, TYPE, TOUCH, RENAME, RENAMENX, COPY, KEYS, DBSIZE,
//! FLUSHDB, RANDOMKEY; and the keyless PING and ECHO.

use super::{is_option, Call, Error, DATABASES};
use crate::local::store::Expiry;
use crate::policy::glob::matches as stringmatch;

/// DEL and UNLINK (freeing is never deferred here, so they are the same).
pub(super) fn del(c: &mut Call<'_, '_>) -> Result<(), Error> {
    let mut deleted = 0;
    for i in 1..c.argc() {
        if c.txn.remove(c.db, c.arg(i)).is_some() {
            deleted += 1;
        }
    }
    c.out.int(deleted);
    Ok(())
}

pub(super) fn unlink(c: &mut Call<'_, '_>) -> Result<(), Error> {
    del(c)
}

/// Counts every argument naming a live key, repeats included; not a use of the key.
pub(super) fn exists(c: &mut Call<'_, '_>) -> Result<(), Error> {
    let found = (1..c.argc())
        .filter(|&i| c.txn.exists(c.db, c.arg(i)))
        .count();
    c.out.int(found as i64);
    Ok(())
}

/// Like EXISTS, but each key found counts as used.
pub(super) fn touch(c: &mut Call<'_, '_>) -> Result<(), Error> {
    let found = (1..c.argc())
        .filter(|&i| c.txn.get(c.db, c.arg(i)).is_some())
        .count();
    c.out.int(found as i64);
    Ok(())
}

pub(super) fn type_(c: &mut Call<'_, '_>) -> Result<(), Error> {
    let name = c
        .txn
        .peek(c.db, c.arg(1))
        .map_or("none", |e| e.value().type_name());
    c.out.simple(name);
    Ok(())
}

/// Redis's `renameGenericCommand`: the value moves with its TTL; renaming a key to itself is
/// a no-op that still needs the key to exist.
fn rename_generic(c: &mut Call<'_, '_>, nx: bool) -> Result<(), Error> {
    let (from, to) = (c.arg(1), c.arg(2));
    let Some(bytes) = c.txn.get(c.db, from).map(|e| e.value().bytes()) else {
        return Err(Error::NoSuchKey);
    };
    if from == to {
        if nx {
            c.out.int(0);
        } else {
            c.out.ok();
        }
        return Ok(());
    }
    if nx && c.txn.get(c.db, to).is_some() {
        c.out.int(0);
        return Ok(());
    }
    c.txn.check_writes(c.db, &[(to, bytes)], &[from])?;
    c.txn.remove(c.db, to);
    let entry = c.txn.remove(c.db, from).expect("checked above");
    let expiry = entry.expire_at().map_or(Expiry::Persist, Expiry::At);
    c.txn.insert_checked(c.db, to, entry.into_value(), expiry);
    if nx {
        c.out.int(1);
    } else {
        c.out.ok();
    }
    Ok(())
}

pub(super) fn rename(c: &mut Call<'_, '_>) -> Result<(), Error> {
    rename_generic(c, false)
}

pub(super) fn renamenx(c: &mut Call<'_, '_>) -> Result<(), Error> {
    rename_generic(c, true)
}

/// COPY source destination [DB n] [REPLACE]: options are checked in order, as Redis does.
pub(super) fn copy(c: &mut Call<'_, '_>) -> Result<(), Error> {
    let (from, to) = (c.arg(1), c.arg(2));
    let mut to_db = c.db;
    let mut replace = false;
    let mut j = 3;
    while j < c.argc() {
        let more = c.argc() - j - 1;
        if is_option(c.arg(j), "replace") {
            replace = true;
        } else if is_option(c.arg(j), "db") && more >= 1 {
            let id = c.int_arg(j + 1)?;
            if i32::try_from(id).is_err() {
                return Err(Error::IntOutOfRange);
            }
            if !(0..i64::from(DATABASES)).contains(&id) {
                return Err(Error::DbOutOfRange);
            }
            to_db = id as u32;
            j += 1;
        } else {
            return Err(Error::Syntax);
        }
        j += 1;
    }
    if to_db == c.db && from == to {
        return Err(Error::SameObject);
    }
    let Some((value, at)) = c
        .txn
        .get(c.db, from)
        .map(|e| (e.value().clone(), e.expire_at()))
    else {
        c.out.int(0);
        return Ok(());
    };
    if c.txn.get(to_db, to).is_some() && !replace {
        c.out.int(0);
        return Ok(());
    }
    c.txn.check_fits(to_db, to, value.bytes())?;
    c.txn.remove(to_db, to);
    c.txn
        .insert_checked(to_db, to, value, at.map_or(Expiry::Persist, Expiry::At));
    c.out.int(1);
    Ok(())
}

pub(super) fn keys(c: &mut Call<'_, '_>) -> Result<(), Error> {
    let pattern = c.arg(1);
    let all = pattern == b"*";
    let keys = c
        .txn
        .keys_where(c.db, |key| all || stringmatch(pattern, key));
    c.out.array(keys.len());
    for key in &keys {
        c.out.bulk(key);
    }
    Ok(())
}

pub(super) fn dbsize(c: &mut Call<'_, '_>) -> Result<(), Error> {
    let n = c.txn.dbsize(c.db);
    c.out.int(n as i64);
    Ok(())
}

/// FLUSHDB [ASYNC|SYNC]: both flush at once.
pub(super) fn flushdb(c: &mut Call<'_, '_>) -> Result<(), Error> {
    let valid = match c.argc() {
        1 => true,
        2 => is_option(c.arg(1), "sync") || is_option(c.arg(1), "async"),
        _ => false,
    };
    if !valid {
        return Err(Error::Syntax);
    }
    c.txn.flush_db(c.db);
    c.out.ok();
    Ok(())
}

pub(super) fn randomkey(c: &mut Call<'_, '_>) -> Result<(), Error> {
    match c.txn.random_key(c.db) {
        Some(key) => c.out.bulk(&key),
        None => c.out.null(),
    }
    Ok(())
}

pub(super) fn ping(c: &mut Call<'_, '_>) -> Result<(), Error> {
    match c.argc() {
        1 => c.out.simple("PONG"),
        2 => c.out.bulk(c.arg(1)),
        _ => return Err(Error::Arity(c.name)),
    }
    Ok(())
}

pub(super) fn echo(c: &mut Call<'_, '_>) -> Result<(), Error> {
    c.out.bulk(c.arg(1));
    Ok(())
}
