//! The parser cases: each input, the limits it runs under, and what must come out of it.

use super::*;

pub(super) fn cases() -> Vec<Case> {
    const SET: &[u8] = b"*3\r\n$3\r\nSET\r\n$16\r\nkey:000000000001\r\n$3\r\nxxx\r\n";
    const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";
    let set = || mb(SET, &[b"SET", b"key:000000000001", b"xxx"]);
    let ping = || mb(PING, &[b"PING"]);
    let many = [SET, SET, PING, SET].concat();
    let mset: &[u8] = b"*7\r\n$4\r\nMSET\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$2\r\n22\r\n$1\r\nc\r\n$3\r\n333\r\n";
    vec![
        // Multibulk.
        case("one command", SET, vec![set()]),
        case(
            "many commands in one buffer",
            &many,
            vec![set(), set(), ping(), set()],
        ),
        case(
            "more than four arguments",
            mset,
            vec![mb(mset, &[b"MSET", b"a", b"1", b"b", b"22", b"c", b"333"])],
        ),
        case(
            "empty bulk",
            b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n",
            vec![mb(b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n", &[b"ECHO", b""])],
        ),
        case(
            "binary bulk with CRLF, NUL and high bytes inside",
            b"*2\r\n$4\r\nECHO\r\n$9\r\na\r\n\0\xff*$\nb\r\n",
            vec![mb(
                b"*2\r\n$4\r\nECHO\r\n$9\r\na\r\n\0\xff*$\nb\r\n",
                &[b"ECHO", b"a\r\n\0\xff*$\nb"],
            )],
        ),
        case(
            "*0 and *-1 are skipped",
            &[b"*0\r\n*-1\r\n", PING, b"*0\r\n"].concat(),
            vec![ping()],
        ),
        case("*0 then a partial command", b"*0\r\n*1\r\n$4\r\nPI", vec![]).left(10),
        case(
            "most negative count is a valid number, skipped",
            &[b"*-9223372036854775808\r\n", PING].concat(),
            vec![ping()],
        ),
        case(
            "partial command waits",
            b"*2\r\n$3\r\nGET\r\n$3\r\nke",
            vec![],
        )
        .all_left(),
        case("partial count line waits", b"*12", vec![]).all_left(),
        case("count line waits for the byte after CR", b"*1\r", vec![]).all_left(),
        case(
            "bulk line waits for the byte after CR",
            b"*1\r\n$4\r",
            vec![],
        )
        .all_left(),
        case(
            "payload waits for its two trailing bytes",
            b"*1\r\n$4\r\nPING\r",
            vec![],
        )
        .all_left(),
        case(
            "bytes after a payload are skipped unchecked",
            &[b"*1\r\n$4\r\nPINGXY", PING].concat(),
            vec![mb(b"*1\r\n$4\r\nPINGXY", &[b"PING"]), ping()],
        ),
        case(
            "the byte after a header CR is skipped unchecked",
            b"*2\rX$4\rYECHO\r\n$1\r\r\n\r\n",
            vec![mb(b"*2\rX$4\rYECHO\r\n$1\r\r\n\r\n", &[b"ECHO", b"\n"])],
        ),
        case(
            "largest count is accepted and waits",
            b"*2147483647\r\n$1\r\na\r\n",
            vec![],
        )
        .all_left(),
        case(
            "largest bulk is accepted and waits",
            b"*1\r\n$536870912\r\nabc",
            vec![],
        )
        .all_left(),
        case(
            "NUL hides the end of a count line",
            b"*1\0\r\n$4\r\nPING\r\n",
            vec![],
        )
        .all_left(),
        case(
            "NUL hides the end of a bulk line",
            b"*1\r\n$4\0\r\nPING\r\n",
            vec![],
        )
        .all_left(),
        // Multibulk errors.
        case(
            "count not a number",
            b"*x\r\n",
            vec![err("Protocol error: invalid multibulk length")],
        )
        .all_left(),
        case(
            "count empty",
            b"*\r\n",
            vec![err("Protocol error: invalid multibulk length")],
        )
        .all_left(),
        case(
            "count -0",
            b"*-0\r\n",
            vec![err("Protocol error: invalid multibulk length")],
        )
        .all_left(),
        case(
            "count with leading zero",
            b"*01\r\n",
            vec![err("Protocol error: invalid multibulk length")],
        )
        .all_left(),
        case(
            "count with plus sign",
            b"*+1\r\n",
            vec![err("Protocol error: invalid multibulk length")],
        )
        .all_left(),
        case(
            "count with a space",
            b"*1 \r\n",
            vec![err("Protocol error: invalid multibulk length")],
        )
        .all_left(),
        case(
            "count over INT_MAX",
            b"*2147483648\r\n",
            vec![err("Protocol error: invalid multibulk length")],
        )
        .all_left(),
        case(
            "count overflows i64",
            b"*99999999999999999999\r\n",
            vec![err("Protocol error: invalid multibulk length")],
        )
        .all_left(),
        case(
            "count below i64::MIN",
            b"*-9223372036854775809\r\n",
            vec![err("Protocol error: invalid multibulk length")],
        )
        .all_left(),
        case(
            "count over a configured limit",
            &[PING, b"*3\r\n"].concat(),
            vec![ping(), err("Protocol error: invalid multibulk length")],
        )
        .limits(ParserLimits {
            max_multibulk_len: 2,
            ..ParserLimits::default()
        })
        .left(4),
        case(
            "bulk length not a number",
            b"*1\r\n$x\r\n",
            vec![err("Protocol error: invalid bulk length")],
        )
        .all_left(),
        case(
            "bulk length empty",
            b"*1\r\n$\r\n",
            vec![err("Protocol error: invalid bulk length")],
        )
        .all_left(),
        case(
            "bulk length negative",
            b"*1\r\n$-1\r\n",
            vec![err("Protocol error: invalid bulk length")],
        )
        .all_left(),
        case(
            "bulk length with leading zero",
            b"*1\r\n$04\r\nPING\r\n",
            vec![err("Protocol error: invalid bulk length")],
        )
        .all_left(),
        case(
            "bulk length over 512 MiB",
            b"*1\r\n$536870913\r\n",
            vec![err("Protocol error: invalid bulk length")],
        )
        .all_left(),
        case(
            "bulk length over a configured limit",
            b"*2\r\n$3\r\nGET\r\n$4\r\nabcd\r\n",
            vec![err("Protocol error: invalid bulk length")],
        )
        .limits(ParserLimits {
            max_bulk_len: 3,
            ..ParserLimits::default()
        })
        .all_left(),
        case(
            "expected '$', got '#'",
            b"*1\r\n#4\r\nPING\r\n",
            vec![err("Protocol error: expected '$', got '#'")],
        )
        .all_left(),
        case(
            "expected '$', got CR",
            b"*1\r\n\r\n",
            vec![err("Protocol error: expected '$', got ' '")],
        )
        .all_left(),
        case(
            "expected '$', got LF",
            b"*1\r\n\n\r\n",
            vec![err("Protocol error: expected '$', got ' '")],
        )
        .all_left(),
        case(
            "expected '$', got a high byte",
            b"*1\r\n\xff\r\n",
            vec![err("Protocol error: expected '$', got '\u{ff}'")],
        )
        .all_left(),
        case(
            "expected '$' on a later argument, after a good command",
            &[PING, b"*2\r\n$4\r\nECHO\r\n:1\r\n"].concat(),
            vec![ping(), err("Protocol error: expected '$', got ':'")],
        )
        .left(18),
        case(
            "too big mbulk count string",
            b"*111111111",
            vec![err("Protocol error: too big mbulk count string")],
        )
        .limits(limits(8))
        .all_left(),
        case(
            "too big mbulk count string with its line end",
            b"*000000001\r\n$4\r\nPING\r\n",
            vec![err("Protocol error: too big mbulk count string")],
        )
        .limits(limits(8))
        .all_left(),
        case(
            "too big mbulk count string behind a NUL",
            b"*1\0\r\n$4\r\nPING\r\n",
            vec![err("Protocol error: too big mbulk count string")],
        )
        .limits(limits(8))
        .all_left(),
        case(
            "too big bulk count string",
            b"*1\r\n$123456789",
            vec![err("Protocol error: too big bulk count string")],
        )
        .limits(limits(8))
        .all_left(),
        case(
            "too big bulk count string with its line end",
            b"*1\r\n$000000004\r\nPING\r\n",
            vec![err("Protocol error: too big bulk count string")],
        )
        .limits(limits(8))
        .all_left(),
        case(
            "too big bulk count string of digits only",
            b"*1\r\n$9999999999999999\r\n",
            vec![err("Protocol error: too big bulk count string")],
        )
        .limits(limits(16))
        .all_left(),
        case(
            "too big mbulk count string of digits only",
            b"*9999999999\r\n",
            vec![err("Protocol error: too big mbulk count string")],
        )
        .limits(limits(8))
        .all_left(),
        case(
            "too big bulk count string behind a NUL",
            b"*1\r\n$4\0\r\nPING\r\n",
            vec![err("Protocol error: too big bulk count string")],
        )
        .limits(limits(8))
        .all_left(),
        // Authentication limits (off unless the session turns them on).
        case(
            "eleven arguments before AUTH",
            b"*11\r\n",
            vec![err("Protocol error: unauthenticated multibulk length")],
        )
        .unauthenticated()
        .all_left(),
        case("ten arguments before AUTH wait", b"*10\r\n", vec![])
            .unauthenticated()
            .all_left(),
        case(
            "bulk over 16 KiB before AUTH",
            b"*1\r\n$16385\r\n",
            vec![err("Protocol error: unauthenticated bulk length")],
        )
        .unauthenticated()
        .all_left(),
        case(
            "bulk of 16 KiB before AUTH waits",
            b"*1\r\n$16384\r\n",
            vec![],
        )
        .unauthenticated()
        .all_left(),
        case(
            "invalid count before AUTH is invalid first",
            b"*2147483648\r\n",
            vec![err("Protocol error: invalid multibulk length")],
        )
        .unauthenticated()
        .all_left(),
        case(
            "negative count before AUTH is skipped",
            &[b"*-100\r\n", PING].concat(),
            vec![ping()],
        )
        .unauthenticated(),
        case("eleven arguments after AUTH wait", b"*11\r\n", vec![]).all_left(),
        case(
            "inline has no argument limit before AUTH",
            b"a b c d e f g h i j k l\r\n",
            vec![inl(&[
                b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"h", b"i", b"j", b"k", b"l",
            ])],
        )
        .unauthenticated(),
        // Inline.
        case("inline PING", b"PING\r\n", vec![inl(&[b"PING"])]),
        case(
            "inline LF only",
            b"SET k v\nGET k\n",
            vec![inl(&[b"SET", b"k", b"v"]), inl(&[b"GET", b"k"])],
        ),
        case(
            "inline extra blanks",
            b"  ECHO \t  a\t\x0b\x0cb  \r\n",
            vec![inl(&[b"ECHO", b"a", b"b"])],
        ),
        case(
            "inline only one CR is dropped",
            b"ECHO a\r\r\n",
            vec![inl(&[b"ECHO", b"a"])],
        ),
        case(
            "inline CR in the middle separates",
            b"ECHO a\rb\n",
            vec![inl(&[b"ECHO", b"a", b"b"])],
        ),
        case(
            "inline double quotes keep spaces",
            b"ECHO \"a b\"\r\n",
            vec![inl(&[b"ECHO", b"a b"])],
        ),
        case(
            "inline double-quote escapes",
            b"ECHO \"a\\x41\\x4\\n\\z\\\"\\\\\\t\\r\\b\\a\\xfF\\x00\\'\"\r\n",
            vec![inl(&[b"ECHO", b"aAx4\nz\"\\\t\r\x08\x07\xff\0'"])],
        ),
        case(
            "inline single quotes",
            b"ECHO 'b\\'c\\n\"'\r\n",
            vec![inl(&[b"ECHO", b"b'c\\n\""])],
        ),
        case(
            "inline empty quotes",
            b"ECHO \"\" ''\r\n",
            vec![inl(&[b"ECHO", b"", b""])],
        ),
        case(
            "inline only an empty argument",
            b"\"\"\r\n",
            vec![inl(&[b""])],
        ),
        case(
            "inline quotes opened mid-argument",
            b"ECHO a\"b c\" d'e f'\r\n",
            vec![inl(&[b"ECHO", b"ab c", b"de f"])],
        ),
        case(
            "inline vertical tab inside an argument",
            b"ECHO a\x0bb\r\n",
            vec![inl(&[b"ECHO", b"a\x0bb"])],
        ),
        case(
            "inline vertical tab after a closing quote",
            b"ECHO \"a\"\x0bb\r\n",
            vec![inl(&[b"ECHO", b"a", b"b"])],
        ),
        case(
            "inline closing quote before CR",
            b"ECHO \"a\"\r\r\n",
            vec![inl(&[b"ECHO", b"a"])],
        ),
        case(
            "inline high bytes",
            b"ECHO \xff\xfe\r\n",
            vec![inl(&[b"ECHO", b"\xff\xfe"])],
        ),
        case(
            "inline line starting with a space and a star",
            b" *1\r\n",
            vec![inl(&[b"*1"])],
        ),
        case(
            "empty inline lines are skipped",
            &[b"\r\n\n   \r\n\t\x0b\n\r\r\n", PING, b"\n"].concat(),
            vec![ping()],
        ),
        case(
            "inline, multibulk, inline",
            &[b"PING\r\n", PING, b"GET k\n"].concat(),
            vec![inl(&[b"PING"]), ping(), inl(&[b"GET", b"k"])],
        ),
        case("partial inline waits", b"PIN", vec![]).all_left(),
        case("inline waits for LF after CR", b"PING\r", vec![]).all_left(),
        case("NUL hides the end of an inline line", b"PING\0\r\n", vec![]).all_left(),
        case("inline line starting with NUL", b"\0PING\r\n", vec![]).all_left(),
        // Inline errors.
        case(
            "unbalanced double quote",
            b"ECHO \"foo\r\n",
            vec![err("Protocol error: unbalanced quotes in request")],
        )
        .all_left(),
        case(
            "unbalanced single quote",
            b"ECHO 'foo\r\n",
            vec![err("Protocol error: unbalanced quotes in request")],
        )
        .all_left(),
        case(
            "double quote glued to text",
            b"ECHO \"foo\"bar\r\n",
            vec![err("Protocol error: unbalanced quotes in request")],
        )
        .all_left(),
        case(
            "single quote glued to text",
            b"ECHO 'foo'bar\r\n",
            vec![err("Protocol error: unbalanced quotes in request")],
        )
        .all_left(),
        case(
            "quote glued on both sides",
            b"ECHO x\"a b\"y\r\n",
            vec![err("Protocol error: unbalanced quotes in request")],
        )
        .all_left(),
        case(
            "trailing backslash in quotes",
            b"ECHO \"a\\\r\n",
            vec![err("Protocol error: unbalanced quotes in request")],
        )
        .all_left(),
        case(
            "unbalanced after a good command",
            b"PING\r\nECHO \"x\r\nPING\r\n",
            vec![
                inl(&[b"PING"]),
                err("Protocol error: unbalanced quotes in request"),
            ],
        )
        .left(15),
        case(
            "too big inline request",
            b"PING PING",
            vec![err("Protocol error: too big inline request")],
        )
        .limits(limits(8))
        .all_left(),
        // Whole or in pieces, a line over the limit fails: the answer does not depend on how
        // the bytes were chunked (Redis's does, see the module documentation).
        case(
            "too big inline request with its line end",
            b"SET k \"unbalanced\r\n",
            vec![err("Protocol error: too big inline request")],
        )
        .limits(limits(16))
        .all_left(),
        case(
            "inline request exactly at the limit",
            b"SET k 0123456789\r\n",
            vec![inl(&[b"SET", b"k", b"0123456789"])],
        )
        .limits(limits(17)),
        case(
            "too big inline request behind a NUL",
            b"PING\0\r\nxx",
            vec![err("Protocol error: too big inline request")],
        )
        .limits(limits(8))
        .all_left(),
        case(
            "inline line at the limit is fine",
            b"PING PIN\nPING\n",
            vec![inl(&[b"PING", b"PIN"]), inl(&[b"PING"])],
        )
        .limits(limits(8)),
    ]
}
