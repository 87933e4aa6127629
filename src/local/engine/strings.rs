//! String commands: GET, SET and its variants (SETNX, SETEX, PSETEX, GETSET, GETDEL, GETEX),
//! MGET/MSET/MSETNX, the counters (INCR, DECR, INCRBY, DECRBY, INCRBYFLOAT), APPEND, STRLEN,
//! GETRANGE, SETRANGE. Each follows t_string.c's order of checks, so that a command with
//! several problems reports the same one Redis does.

use super::number::string2ll;
use super::reply::format_i64;
use super::{as_str, float, is_option, Call, Error, PROTO_MAX_BULK_LEN};
use crate::local::store::{Expiry, Str, Value};

/// SET/GETEX option flags, as in t_string.c (`OBJ_SET_NX`...).
const NX: u16 = 1;
const XX: u16 = 1 << 1;
const EX: u16 = 1 << 2;
const PX: u16 = 1 << 3;
const KEEPTTL: u16 = 1 << 4;
const GET: u16 = 1 << 5;
const EXAT: u16 = 1 << 6;
const PXAT: u16 = 1 << 7;
const PERSIST: u16 = 1 << 8;

/// Parsed SET or GETEX options: the flags and which argument holds the expire time.
struct Options {
    flags: u16,
    expire: Option<usize>,
}

/// Redis's `parseExtendedStringArgumentsOrReply`, condition for condition: an option is
/// accepted only when no incompatible one came before it (so `EX 1 EX 2` is fine and the last
/// wins, while `EX 1 PX 2` is a syntax error), and EX/PX/EXAT/PXAT need a following argument.
fn parse_options(c: &Call<'_, '_>, is_set: bool) -> Result<Options, Error> {
    let mut flags = 0;
    let mut expire = None;
    let mut j = if is_set { 3 } else { 2 };
    while j < c.argc() {
        let opt = c.arg(j);
        let has_next = j + 1 < c.argc();
        let none_of = |mask: u16| flags & mask == 0;
        if is_option(opt, "nx") && none_of(XX) && is_set {
            flags |= NX;
        } else if is_option(opt, "xx") && none_of(NX) && is_set {
            flags |= XX;
        } else if is_option(opt, "get") && is_set {
            flags |= GET;
        } else if is_option(opt, "keepttl") && none_of(PERSIST | EX | EXAT | PX | PXAT) && is_set {
            flags |= KEEPTTL;
        } else if is_option(opt, "persist") && !is_set && none_of(EX | EXAT | PX | PXAT | KEEPTTL) {
            flags |= PERSIST;
        } else if let Some(unit) = [("ex", EX), ("px", PX), ("exat", EXAT), ("pxat", PXAT)]
            .into_iter()
            .find(|(word, unit)| {
                is_option(opt, word)
                    && none_of(KEEPTTL | PERSIST | ((EX | PX | EXAT | PXAT) & !unit))
                    && has_next
            })
            .map(|(_, unit)| unit)
        {
            flags |= unit;
            expire = Some(j + 1);
            j += 1;
        } else {
            return Err(Error::Syntax);
        }
        j += 1;
    }
    Ok(Options { flags, expire })
}

/// Redis's `getExpireMillisecondsOrReply`: the absolute deadline (unix ms) that argument
/// `arg` asks for, under the time unit and relativity that `flags` say.
fn deadline(c: &Call<'_, '_>, arg: usize, flags: u16) -> Result<u64, Error> {
    let seconds = flags & (EX | EXAT) != 0;
    let mut ms = c.int_arg(arg)?;
    if ms <= 0 || (seconds && ms > i64::MAX / 1000) {
        return Err(Error::InvalidExpire(c.name));
    }
    if seconds {
        ms *= 1000;
    }
    if flags & (EX | PX) != 0 {
        // C's signed overflow wraps on Redis's platforms; the check below catches it.
        ms = ms.wrapping_add(c.now());
    }
    if ms <= 0 {
        return Err(Error::InvalidExpire(c.name));
    }
    Ok(ms as u64)
}

/// Redis's `setGenericCommand` for SET, SETNX, SETEX and PSETEX. `counted` makes the reply
/// `:1`/`:0` (SETNX) instead of `+OK`/nil.
fn set_generic(
    c: &mut Call<'_, '_>,
    flags: u16,
    value_arg: usize,
    expire: Option<usize>,
    counted: bool,
) -> Result<(), Error> {
    let key = c.arg(1);
    let value = c.arg(value_arg);
    let at = match expire {
        Some(arg) => Some(deadline(c, arg, flags)?),
        None => None,
    };
    if flags & GET != 0 {
        match as_str(c.txn.get(c.db, key))? {
            Some(old) => c.out.bulk(old),
            None => c.out.null(),
        }
    }
    // Only NX and XX need to know whether the key exists.
    let found = flags & (NX | XX) != 0 && c.txn.get(c.db, key).is_some();
    if (flags & NX != 0 && found) || (flags & XX != 0 && !found) {
        if flags & GET == 0 {
            if counted {
                c.out.int(0);
            } else {
                c.out.null();
            }
        }
        return Ok(());
    }
    let expiry = match at {
        Some(at) => Expiry::At(at),
        None if flags & KEEPTTL != 0 => Expiry::Keep,
        None => Expiry::Persist,
    };
    c.txn
        .insert(c.db, key, Value::Str(Str::from_slice(value)), expiry)?;
    if flags & GET == 0 {
        if counted {
            c.out.int(1);
        } else {
            c.out.ok();
        }
    }
    Ok(())
}

pub(super) fn set(c: &mut Call<'_, '_>) -> Result<(), Error> {
    let options = parse_options(c, true)?;
    set_generic(c, options.flags, 2, options.expire, false)
}

pub(super) fn setnx(c: &mut Call<'_, '_>) -> Result<(), Error> {
    set_generic(c, NX, 2, None, true)
}

pub(super) fn setex(c: &mut Call<'_, '_>) -> Result<(), Error> {
    set_generic(c, EX, 3, Some(2), false)
}

pub(super) fn psetex(c: &mut Call<'_, '_>) -> Result<(), Error> {
    set_generic(c, PX, 3, Some(2), false)
}

pub(super) fn get(c: &mut Call<'_, '_>) -> Result<(), Error> {
    match as_str(c.txn.get(c.db, c.arg(1)))? {
        Some(value) => c.out.bulk(value),
        None => c.out.null(),
    }
    Ok(())
}

pub(super) fn getset(c: &mut Call<'_, '_>) -> Result<(), Error> {
    let key = c.arg(1);
    match as_str(c.txn.get(c.db, key))? {
        Some(old) => c.out.bulk(old),
        None => c.out.null(),
    }
    c.txn.insert(
        c.db,
        key,
        Value::Str(Str::from_slice(c.arg(2))),
        Expiry::Persist,
    )?;
    Ok(())
}

pub(super) fn getdel(c: &mut Call<'_, '_>) -> Result<(), Error> {
    let key = c.arg(1);
    match as_str(c.txn.get(c.db, key))? {
        Some(value) => c.out.bulk(value),
        None => {
            c.out.null();
            return Ok(());
        }
    }
    c.txn.remove(c.db, key);
    Ok(())
}

/// GETEX: the lookup comes before the expire time is checked, so a missing key answers nil
/// whatever the options' values; EXAT/PXAT in the past delete the key.
pub(super) fn getex(c: &mut Call<'_, '_>) -> Result<(), Error> {
    let Options { flags, expire } = parse_options(c, false)?;
    let key = c.arg(1);
    match as_str(c.txn.get(c.db, key))? {
        Some(value) => c.out.bulk(value),
        None => {
            c.out.null();
            return Ok(());
        }
    }
    let at = match expire {
        Some(arg) => Some(deadline(c, arg, flags)?),
        None => None,
    };
    match at {
        Some(at) if flags & (EXAT | PXAT) != 0 && at as i64 <= c.now() => {
            c.txn.remove(c.db, key);
        }
        Some(at) => {
            c.txn.set_expire(c.db, key, Some(at));
        }
        None if flags & PERSIST != 0 => {
            c.txn.set_expire(c.db, key, None);
        }
        None => {}
    }
    Ok(())
}

pub(super) fn mget(c: &mut Call<'_, '_>) -> Result<(), Error> {
    c.out.array(c.argc() - 1);
    for i in 1..c.argc() {
        match c.txn.get(c.db, c.arg(i)).map(|e| e.value()) {
            Some(Value::Str(value)) => c.out.bulk(value),
            _ => c.out.null(),
        }
    }
    Ok(())
}

/// MSET and MSETNX: all or nothing (an entry that cannot fit refuses the whole command).
fn mset_generic(c: &mut Call<'_, '_>, nx: bool) -> Result<(), Error> {
    if c.argc().is_multiple_of(2) {
        return Err(Error::Arity(c.name));
    }
    if nx
        && (1..c.argc())
            .step_by(2)
            .any(|i| c.txn.get(c.db, c.arg(i)).is_some())
    {
        c.out.int(0);
        return Ok(());
    }
    let writes: Vec<(&[u8], usize)> = (1..c.argc())
        .step_by(2)
        .map(|i| (c.arg(i), c.arg(i + 1).len()))
        .collect();
    c.txn.check_writes(c.db, &writes, &[])?;
    let last = crate::local::store::last_of_each(writes.iter().map(|(k, _)| *k));
    for (n, &(key, _)) in writes.iter().enumerate() {
        // A key given twice ends with its last value: the earlier ones would only make room
        // for nothing.
        if !last[n] {
            continue;
        }
        let value = Value::Str(Str::from_slice(c.arg(2 * n + 2)));
        c.txn.insert_checked(c.db, key, value, Expiry::Persist);
    }
    if nx {
        c.out.int(1);
    } else {
        c.out.ok();
    }
    Ok(())
}

pub(super) fn mset(c: &mut Call<'_, '_>) -> Result<(), Error> {
    mset_generic(c, false)
}

pub(super) fn msetnx(c: &mut Call<'_, '_>) -> Result<(), Error> {
    mset_generic(c, true)
}

/// Redis's `incrDecrCommand`. The value keeps its TTL.
fn incr_by(c: &mut Call<'_, '_>, incr: i64) -> Result<(), Error> {
    let key = c.arg(1);
    let old = match as_str(c.txn.get(c.db, key))? {
        Some(value) => string2ll(value).ok_or(Error::NotInteger)?,
        None => 0,
    };
    let new = old.checked_add(incr).ok_or(Error::Overflow)?;
    c.txn.insert(
        c.db,
        key,
        Value::Str(Str::from_vec(format_i64(new))),
        Expiry::Keep,
    )?;
    c.out.int(new);
    Ok(())
}

pub(super) fn incr(c: &mut Call<'_, '_>) -> Result<(), Error> {
    incr_by(c, 1)
}

pub(super) fn decr(c: &mut Call<'_, '_>) -> Result<(), Error> {
    incr_by(c, -1)
}

pub(super) fn incrby(c: &mut Call<'_, '_>) -> Result<(), Error> {
    let incr = c.int_arg(2)?;
    incr_by(c, incr)
}

pub(super) fn decrby(c: &mut Call<'_, '_>) -> Result<(), Error> {
    let decr = c.int_arg(2)?;
    if decr == i64::MIN {
        return Err(Error::DecrementOverflow);
    }
    incr_by(c, -decr)
}

pub(super) fn incrbyfloat(c: &mut Call<'_, '_>) -> Result<(), Error> {
    let key = c.arg(1);
    let incr = c.arg(2);
    let old = match as_str(c.txn.get(c.db, key))? {
        Some(value) => float::parse(value).ok_or(Error::NotFloat)?,
        None => float::zero(),
    };
    let incr = float::parse(incr).ok_or(Error::NotFloat)?;
    let new = float::add(old, incr);
    if !float::is_finite(new) {
        return Err(Error::IncrementNanOrInfinity);
    }
    let text = float::format_human(new);
    c.out.bulk(&text);
    c.txn
        .insert(c.db, key, Value::Str(Str::from_vec(text)), Expiry::Keep)?;
    Ok(())
}

pub(super) fn append(c: &mut Call<'_, '_>) -> Result<(), Error> {
    let key = c.arg(1);
    let tail = c.arg(2);
    let Some(old_len) = as_str(c.txn.get(c.db, key))?.map(<[u8]>::len) else {
        c.txn
            .insert(c.db, key, Value::Str(Str::from_slice(tail)), Expiry::Keep)?;
        c.out.int(tail.len() as i64);
        return Ok(());
    };
    let total = old_len + tail.len();
    if total as u64 > PROTO_MAX_BULK_LEN {
        return Err(Error::StringTooLong);
    }
    c.txn.check_fits(c.db, key, total)?;
    c.txn.update(c.db, key, |value| {
        if let Value::Str(s) = value {
            s.extend_from_slice(tail);
        }
    });
    c.out.int(total as i64);
    Ok(())
}

pub(super) fn strlen(c: &mut Call<'_, '_>) -> Result<(), Error> {
    let len = as_str(c.txn.get(c.db, c.arg(1)))?.map_or(0, <[u8]>::len);
    c.out.int(len as i64);
    Ok(())
}

pub(super) fn getrange(c: &mut Call<'_, '_>) -> Result<(), Error> {
    let mut start = c.int_arg(2)?;
    let mut end = c.int_arg(3)?;
    let Some(s) = as_str(c.txn.get(c.db, c.arg(1)))? else {
        c.out.bulk(b"");
        return Ok(());
    };
    let len = s.len() as i64;
    if start < 0 && end < 0 && start > end {
        c.out.bulk(b"");
        return Ok(());
    }
    if start < 0 {
        start += len;
    }
    if end < 0 {
        end += len;
    }
    start = start.max(0);
    end = end.max(0);
    if end >= len {
        end = len - 1;
    }
    if start > end || len == 0 {
        c.out.bulk(b"");
    } else {
        c.out.bulk(&s[start as usize..=end as usize]);
    }
    Ok(())
}

pub(super) fn setrange(c: &mut Call<'_, '_>) -> Result<(), Error> {
    let key = c.arg(1);
    let offset = c.int_arg(2)?;
    let patch = c.arg(3);
    if offset < 0 {
        return Err(Error::OffsetOutOfRange);
    }
    let existing = as_str(c.txn.get(c.db, key))?.map(<[u8]>::len);
    if patch.is_empty() {
        // Nothing to write: the length as it stands (0 for no key, which is not created).
        c.out.int(existing.unwrap_or(0) as i64);
        return Ok(());
    }
    let end = offset as u64 + patch.len() as u64;
    if end > PROTO_MAX_BULK_LEN {
        return Err(Error::StringTooLong);
    }
    let (offset, end) = (offset as usize, end as usize);
    let new_len = existing.unwrap_or(0).max(end);
    c.txn.check_fits(c.db, key, new_len)?;
    match existing {
        None => {
            let mut s = Str::from_elem(0, end);
            s[offset..].copy_from_slice(patch);
            c.txn.insert(c.db, key, Value::Str(s), Expiry::Keep)?;
        }
        Some(_) => {
            c.txn.update(c.db, key, |value| {
                if let Value::Str(s) = value {
                    if s.len() < end {
                        s.resize(end, 0);
                    }
                    s[offset..end].copy_from_slice(patch);
                }
            });
        }
    }
    c.out.int(new_len as i64);
    Ok(())
}
