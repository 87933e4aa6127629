//! Expiry commands: EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT (with NX, XX, GT, LT), TTL, PTTL,
//! EXPIRETIME, PEXPIRETIME, PERSIST. Deadlines are absolute unix milliseconds, as in Redis.

use super::{is_option, Call, Error};

/// Redis's `expireGenericCommand`. `relative`: the time is from now (EXPIRE, PEXPIRE);
/// `seconds`: the unit (EXPIRE, EXPIREAT). A deadline not in the future deletes the key.
fn expire_generic(c: &mut Call<'_, '_>, relative: bool, seconds: bool) -> Result<(), Error> {
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for j in 3..c.argc() {
        let opt = c.arg(j);
        if is_option(opt, "nx") {
            nx = true;
        } else if is_option(opt, "xx") {
            xx = true;
        } else if is_option(opt, "gt") {
            gt = true;
        } else if is_option(opt, "lt") {
            lt = true;
        } else {
            return Err(Error::UnsupportedOption(opt.to_vec()));
        }
    }
    if nx && (xx || gt || lt) {
        return Err(Error::ExpireNxIncompatible);
    }
    if gt && lt {
        return Err(Error::ExpireGtLtIncompatible);
    }
    let mut when = c.int_arg(2)?;
    if seconds {
        when = when.checked_mul(1000).ok_or(Error::InvalidExpire(c.name))?;
    }
    let base = if relative { c.now() } else { 0 };
    let when = when.checked_add(base).ok_or(Error::InvalidExpire(c.name))?;

    let key = c.arg(1);
    let Some(current) = c.txn.get(c.db, key).map(|e| e.expire_at()) else {
        c.out.int(0);
        return Ok(());
    };
    // -1: no deadline, which GT treats as infinite and LT as "anything is less".
    let current = current.map_or(-1, |at| at as i64);
    let refused = (nx && current != -1)
        || (xx && current == -1)
        || (gt && (when <= current || current == -1))
        || (lt && current != -1 && when >= current);
    if refused {
        c.out.int(0);
        return Ok(());
    }
    if when <= c.now() {
        c.txn.remove(c.db, key);
    } else {
        c.txn.set_expire(c.db, key, Some(when as u64));
    }
    c.out.int(1);
    Ok(())
}

pub(super) fn expire(c: &mut Call<'_, '_>) -> Result<(), Error> {
    expire_generic(c, true, true)
}

pub(super) fn pexpire(c: &mut Call<'_, '_>) -> Result<(), Error> {
    expire_generic(c, true, false)
}

pub(super) fn expireat(c: &mut Call<'_, '_>) -> Result<(), Error> {
    expire_generic(c, false, true)
}

pub(super) fn pexpireat(c: &mut Call<'_, '_>) -> Result<(), Error> {
    expire_generic(c, false, false)
}

/// Redis's `ttlGenericCommand`: -2 without a key, -1 without a deadline; seconds round to
/// nearest. Not a use of the key.
fn ttl_generic(c: &mut Call<'_, '_>, millis: bool, absolute: bool) -> Result<(), Error> {
    let Some(deadline) = c.txn.peek(c.db, c.arg(1)).map(|e| e.expire_at()) else {
        c.out.int(-2);
        return Ok(());
    };
    let Some(at) = deadline else {
        c.out.int(-1);
        return Ok(());
    };
    let ttl = if absolute {
        at as i64
    } else {
        (at as i64 - c.now()).max(0)
    };
    // Near i64::MAX, `ttl + 500` overflows in C; Redis's build answers as if it did not
    // (EXPIRETIME after PEXPIREAT 9223372036854775807 is 9223372036854776), so no wrapping.
    let seconds = ((i128::from(ttl) + 500) / 1000) as i64;
    c.out.int(if millis { ttl } else { seconds });
    Ok(())
}

pub(super) fn ttl(c: &mut Call<'_, '_>) -> Result<(), Error> {
    ttl_generic(c, false, false)
}

pub(super) fn pttl(c: &mut Call<'_, '_>) -> Result<(), Error> {
    ttl_generic(c, true, false)
}

pub(super) fn expiretime(c: &mut Call<'_, '_>) -> Result<(), Error> {
    ttl_generic(c, false, true)
}

pub(super) fn pexpiretime(c: &mut Call<'_, '_>) -> Result<(), Error> {
    ttl_generic(c, true, true)
}

pub(super) fn persist(c: &mut Call<'_, '_>) -> Result<(), Error> {
    let key = c.arg(1);
    let had = c.txn.get(c.db, key).is_some() && c.txn.set_expire(c.db, key, None).is_some();
    c.out.int(i64::from(had));
    Ok(())
}
