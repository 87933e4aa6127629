//! Hash commands: HSET, HMSET, HSETNX, HGET, HMGET, HDEL, HEXISTS, HLEN, HSTRLEN, HGETALL,
//! HKEYS, HVALS, HINCRBY, HINCRBYFLOAT (HSCAN is in `scan`). Order of checks as in t_hash.c.

use super::number::string2ll;
use super::reply::format_i64;
use super::{as_hash, float, Call, Error};
use crate::local::store::{Expiry, Hash, Value};

type Pair<'a> = (&'a [u8], &'a [u8]);

/// Sets `pairs` in the hash at `key`, creating it if needed; returns how many fields are new.
/// `convert` are the arguments Redis's `hashTypeTryConversion` looks at first. The whole write
/// is refused before it starts if the result could not fit in the store.
fn write_fields(
    c: &mut Call<'_, '_>,
    key: &[u8],
    pairs: &[Pair<'_>],
    convert: &[&[u8]],
) -> Result<usize, Error> {
    let set_all = |h: &mut Hash| {
        h.convert_for_args(convert.iter().copied());
        pairs.iter().filter(|(f, v)| h.set(f, v)).count()
    };
    let bytes_after =
        as_hash(c.txn.get(c.db, key))?.map(|h| h.bytes_after_set(pairs.iter().copied()));
    match bytes_after {
        None => {
            let mut hash = Hash::new();
            let created = set_all(&mut hash);
            c.txn.insert(c.db, key, Value::Hash(hash), Expiry::Keep)?;
            Ok(created)
        }
        Some(bytes) => {
            c.txn.check_fits(c.db, key, bytes)?;
            let created = c.txn.update(c.db, key, |value| match value {
                Value::Hash(h) => set_all(h),
                Value::Str(_) => 0,
            });
            Ok(created.unwrap_or(0))
        }
    }
}

fn hset_generic(c: &mut Call<'_, '_>, hmset: bool) -> Result<(), Error> {
    if c.argc() % 2 == 1 {
        return Err(Error::Arity(c.name));
    }
    let pairs: Vec<Pair<'_>> = (2..c.argc())
        .step_by(2)
        .map(|i| (c.arg(i), c.arg(i + 1)))
        .collect();
    let convert: Vec<&[u8]> = (2..c.argc()).map(|i| c.arg(i)).collect();
    let created = write_fields(c, c.arg(1), &pairs, &convert)?;
    if hmset {
        c.out.ok();
    } else {
        c.out.int(created as i64);
    }
    Ok(())
}

pub(super) fn hset(c: &mut Call<'_, '_>) -> Result<(), Error> {
    hset_generic(c, false)
}

pub(super) fn hmset(c: &mut Call<'_, '_>) -> Result<(), Error> {
    hset_generic(c, true)
}

pub(super) fn hsetnx(c: &mut Call<'_, '_>) -> Result<(), Error> {
    let (key, field, value) = (c.arg(1), c.arg(2), c.arg(3));
    if as_hash(c.txn.get(c.db, key))?.is_some_and(|h| h.contains(field)) {
        c.out.int(0);
        return Ok(());
    }
    write_fields(c, key, &[(field, value)], &[field, value])?;
    c.out.int(1);
    Ok(())
}

pub(super) fn hget(c: &mut Call<'_, '_>) -> Result<(), Error> {
    let (key, field) = (c.arg(1), c.arg(2));
    match as_hash(c.txn.get(c.db, key))?.and_then(|h| h.get(field)) {
        Some(value) => c.out.bulk(value),
        None => c.out.null(),
    }
    Ok(())
}

pub(super) fn hmget(c: &mut Call<'_, '_>) -> Result<(), Error> {
    let fields: Vec<&[u8]> = (2..c.argc()).map(|i| c.arg(i)).collect();
    let hash = as_hash(c.txn.get(c.db, c.arg(1)))?;
    c.out.array(fields.len());
    for field in fields {
        match hash.and_then(|h| h.get(field)) {
            Some(value) => c.out.bulk(value),
            None => c.out.null(),
        }
    }
    Ok(())
}

/// Deleting the last field deletes the key.
pub(super) fn hdel(c: &mut Call<'_, '_>) -> Result<(), Error> {
    let key = c.arg(1);
    let fields: Vec<&[u8]> = (2..c.argc()).map(|i| c.arg(i)).collect();
    // Deleting no field is not a change (WATCH must not see one), so leave the hash alone.
    let present = match as_hash(c.txn.get(c.db, key))? {
        None => false,
        Some(h) => fields.iter().any(|f| h.contains(f)),
    };
    if !present {
        c.out.int(0);
        return Ok(());
    }
    let (deleted, empty) = c
        .txn
        .update(c.db, key, |value| match value {
            Value::Hash(h) => {
                let deleted = fields.iter().filter(|f| h.remove(f)).count();
                (deleted, h.is_empty())
            }
            Value::Str(_) => (0, false),
        })
        .unwrap_or((0, false));
    if empty {
        c.txn.remove(c.db, key);
    }
    c.out.int(deleted as i64);
    Ok(())
}

pub(super) fn hexists(c: &mut Call<'_, '_>) -> Result<(), Error> {
    let (key, field) = (c.arg(1), c.arg(2));
    let found = as_hash(c.txn.get(c.db, key))?.is_some_and(|h| h.contains(field));
    c.out.int(i64::from(found));
    Ok(())
}

pub(super) fn hlen(c: &mut Call<'_, '_>) -> Result<(), Error> {
    let len = as_hash(c.txn.get(c.db, c.arg(1)))?.map_or(0, Hash::len);
    c.out.int(len as i64);
    Ok(())
}

pub(super) fn hstrlen(c: &mut Call<'_, '_>) -> Result<(), Error> {
    let (key, field) = (c.arg(1), c.arg(2));
    let len = as_hash(c.txn.get(c.db, key))?
        .and_then(|h| h.get(field))
        .map_or(0, <[u8]>::len);
    c.out.int(len as i64);
    Ok(())
}

/// HGETALL, HKEYS, HVALS: a small hash answers in insertion order, as Redis's listpack does.
fn getall(c: &mut Call<'_, '_>, fields: bool, values: bool) -> Result<(), Error> {
    let Some(hash) = as_hash(c.txn.get(c.db, c.arg(1)))? else {
        if fields && values {
            c.out.map(0);
        } else {
            c.out.array(0);
        }
        return Ok(());
    };
    if fields && values {
        c.out.map(hash.len());
    } else {
        c.out.array(hash.len());
    }
    for (field, value) in hash.iter() {
        if fields {
            c.out.bulk(field);
        }
        if values {
            c.out.bulk(value);
        }
    }
    Ok(())
}

pub(super) fn hgetall(c: &mut Call<'_, '_>) -> Result<(), Error> {
    getall(c, true, true)
}

pub(super) fn hkeys(c: &mut Call<'_, '_>) -> Result<(), Error> {
    getall(c, true, false)
}

pub(super) fn hvals(c: &mut Call<'_, '_>) -> Result<(), Error> {
    getall(c, false, true)
}

pub(super) fn hincrby(c: &mut Call<'_, '_>) -> Result<(), Error> {
    let incr = c.int_arg(3)?;
    let (key, field) = (c.arg(1), c.arg(2));
    let old = match as_hash(c.txn.get(c.db, key))?.and_then(|h| h.get(field)) {
        Some(value) => string2ll(value).ok_or(Error::HashNotInteger)?,
        None => 0,
    };
    let new = old.checked_add(incr).ok_or(Error::Overflow)?;
    write_fields(c, key, &[(field, &format_i64(new))], &[])?;
    c.out.int(new);
    Ok(())
}

pub(super) fn hincrbyfloat(c: &mut Call<'_, '_>) -> Result<(), Error> {
    let incr = float::parse(c.arg(3)).ok_or(Error::NotFloat)?;
    if !float::is_finite(incr) {
        return Err(Error::ValueNanOrInfinity);
    }
    let (key, field) = (c.arg(1), c.arg(2));
    let old = match as_hash(c.txn.get(c.db, key))?.and_then(|h| h.get(field)) {
        Some(value) => float::parse(value).ok_or(Error::HashNotFloat)?,
        None => float::zero(),
    };
    let new = float::add(old, incr);
    if !float::is_finite(new) {
        return Err(Error::IncrementNanOrInfinity);
    }
    let text = float::format_human(new);
    write_fields(c, key, &[(field, &text)], &[])?;
    c.out.bulk(&text);
    Ok(())
}
