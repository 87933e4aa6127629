//! SCAN and HSCAN. SCAN pages through the store's hash-ordered index (see
//! [`crate::local::store`]): the cursor is the engine's own, and a full iteration returns every key
//! present throughout exactly once. HSCAN answers a whole hash in one reply with cursor 0, as
//! Redis does for every hash small enough to be a listpack (and in the same order).

use super::number::{parse_cursor, string2ll};
use super::{as_hash, c_str, is_option, Call, Error};
use crate::policy::glob::matches as stringmatch;
use crate::protocol::request::Request;

struct Options<'a> {
    count: usize,
    pattern: Option<&'a [u8]>,
    type_name: Option<&'a [u8]>,
}

/// The options after the cursor, in Redis's `scanGenericCommand` order; TYPE only for SCAN.
fn parse_options(req: &Request, first: usize, scan: bool) -> Result<Options<'_>, Error> {
    let mut options = Options {
        count: 10,
        pattern: None,
        type_name: None,
    };
    let mut i = first;
    let arg = |i: usize| req.arg(i).unwrap_or_default();
    while i < req.argc() {
        let more = req.argc() - i;
        let opt = arg(i);
        if is_option(opt, "count") && more >= 2 {
            let count = string2ll(arg(i + 1)).ok_or(Error::NotInteger)?;
            if count < 1 {
                return Err(Error::Syntax);
            }
            options.count = usize::try_from(count).unwrap_or(usize::MAX);
        } else if is_option(opt, "match") && more >= 2 {
            let pattern = arg(i + 1);
            // Exactly "*" matches everything, so it is no filter at all.
            options.pattern = (pattern != b"*").then_some(pattern);
        } else if is_option(opt, "type") && scan && more >= 2 {
            options.type_name = Some(arg(i + 1));
        } else {
            return Err(Error::Syntax);
        }
        i += 2;
    }
    Ok(options)
}

pub(super) fn scan(c: &mut Call<'_, '_>) -> Result<(), Error> {
    let cursor = parse_cursor(c.arg(1)).ok_or(Error::InvalidCursor)?;
    let options = parse_options(c.req, 2, true)?;
    let (next, candidates) = c.txn.scan(c.db, cursor, options.count);
    let mut keys = Vec::with_capacity(candidates.len());
    for key in candidates {
        if options.pattern.is_some_and(|p| !stringmatch(p, &key)) {
            continue;
        }
        // Looking the key up also drops it if it has expired.
        let Some(type_name) = c.txn.peek(c.db, &key).map(|e| e.value().type_name()) else {
            continue;
        };
        if options
            .type_name
            .is_some_and(|wanted| !c_str(wanted).eq_ignore_ascii_case(type_name.as_bytes()))
        {
            continue;
        }
        keys.push(key);
    }
    c.out.array(2);
    c.out.bulk_u64(next);
    c.out.array(keys.len());
    for key in &keys {
        c.out.bulk(key);
    }
    Ok(())
}

/// HSCAN: the cursor is checked first, then the key (a missing one answers an empty scan
/// before the options are even read), then the options.
pub(super) fn hscan(c: &mut Call<'_, '_>) -> Result<(), Error> {
    parse_cursor(c.arg(2)).ok_or(Error::InvalidCursor)?;
    let Some(hash) = as_hash(c.txn.get(c.db, c.arg(1)))? else {
        c.out.array(2);
        c.out.bulk(b"0");
        c.out.array(0);
        return Ok(());
    };
    let options = parse_options(c.req, 3, false)?;
    let pairs: Vec<(&[u8], &[u8])> = hash
        .iter()
        .filter(|(field, _)| options.pattern.is_none_or(|p| stringmatch(p, field)))
        .collect();
    c.out.array(2);
    c.out.bulk(b"0");
    c.out.array(pairs.len() * 2);
    for (field, value) in pairs {
        c.out.bulk(field);
        c.out.bulk(value);
    }
    Ok(())
}
