//! The frames every test scans: written by hand, and captured from Redis.

use super::*;

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Frames written by hand to cover every type, nesting, emptiness, nulls and binary data.
fn synthetic() -> Vec<Case> {
    let binary: &[u8] = b"\r\n$3\r\n*1\r\n\x00\xff+OK\r\n\r";
    let mut cases = vec![
        // RESP2
        case("simple", b"+OK\r\n", false),
        case("empty simple", b"+\r\n", false),
        case("simple with LF", b"+a\nb\r\n", false),
        case("error", b"-ERR unknown command 'FOO'\r\n", false),
        case("wrongtype", b"-WRONGTYPE Operation against a key\r\n", false),
        case("integer", b":1\r\n", false),
        case("zero", b":0\r\n", false),
        case("i64 min", b":-9223372036854775808\r\n", false),
        case("i64 max", b":9223372036854775807\r\n", false),
        case("bulk", b"$3\r\nabc\r\n", false),
        case("empty bulk", b"$0\r\n\r\n", false),
        case("null bulk", b"$-1\r\n", false),
        case("leading zero length", b"$03\r\nabc\r\n", false),
        Case { name: "binary bulk".into(), bytes: bulk(b'$', binary), push: false },
        Case { name: "bulk of CRLFs".into(), bytes: bulk(b'$', b"\r\n\r\n\r\n"), push: false },
        case("empty array", b"*0\r\n", false),
        case("null array", b"*-1\r\n", false),
        case("array", b"*3\r\n:1\r\n:2\r\n:3\r\n", false),
        case("array of bulks", b"*2\r\n$3\r\nfoo\r\n$-1\r\n", false),
        case("nested arrays", b"*2\r\n*1\r\n$-1\r\n*0\r\n", false),
        case("array ending in empty", b"*2\r\n:1\r\n*0\r\n", false),
        case("array ending in null", b"*2\r\n*-1\r\n*-1\r\n", false),
        case("deep tail", b"*1\r\n*1\r\n*1\r\n*1\r\n+x\r\n", false),
        Case {
            name: "array of binary bulks".into(),
            bytes: cat(&[b"*3\r\n", &bulk(b'$', binary), b"-ERR x\r\n", &bulk(b'$', b"*1\r\n")]),
            push: false,
        },
        // RESP3
        case("null", b"_\r\n", false),
        case("double", b",3.14\r\n", false),
        case("double inf", b",-inf\r\n", false),
        case("double exp", b",1.5e-10\r\n", false),
        case("true", b"#t\r\n", false),
        case("false", b"#f\r\n", false),
        case("big number", b"(3492890328409238509324850943850943825024385\r\n", false),
        case("negative big number", b"(-3492890328409238509324850943850943825024385\r\n", false),
        case("bulk error", b"!21\r\nSYNTAX invalid syntax\r\n", false),
        Case { name: "binary bulk error".into(), bytes: bulk(b'!', binary), push: false },
        case("verbatim", b"=15\r\ntxt:Some string\r\n", false),
        Case { name: "binary verbatim".into(), bytes: bulk(b'=', b"mkd:\r\n*2\r\n"), push: false },
        case("empty map", b"%0\r\n", false),
        case("map", b"%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n", false),
        case("map with aggregate keys", b"%1\r\n*2\r\n:1\r\n:2\r\n~1\r\n#t\r\n", false),
        case("empty set", b"~0\r\n", false),
        case("set", b"~3\r\n+a\r\n:1\r\n,2.5\r\n", false),
        case("push", b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n", true),
        case("empty push", b">0\r\n", true),
        case("push in array is not a push", b"*1\r\n>1\r\n+x\r\n", false),
        case("push in map", b"%1\r\n>1\r\n:1\r\n>0\r\n", false),
        case("attribute", b"|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.19\r\n$1\r\nb\r\n,0.54\r\n*2\r\n:2039123\r\n:9543892\r\n", false),
        case("empty attribute", b"|0\r\n:1\r\n", false),
        case("two attributes", b"|1\r\n+a\r\n+b\r\n|1\r\n+c\r\n+d\r\n$-1\r\n", false),
        case("attribute on a push", b"|1\r\n+k\r\n+v\r\n>1\r\n+x\r\n", true),
        case("push inside an attribute", b"|1\r\n+k\r\n>1\r\n+v\r\n+reply\r\n", false),
        case("attribute inside an array", b"*2\r\n|1\r\n+k\r\n+v\r\n:1\r\n:2\r\n", false),
        case("attribute on the last element", b"*2\r\n:1\r\n|1\r\n+k\r\n+v\r\n:2\r\n", false),
        case("attribute on an attribute key", b"|1\r\n|1\r\n+a\r\n+b\r\n+k\r\n+v\r\n+reply\r\n", false),
        case("attribute value is aggregate", b"|1\r\n+k\r\n*2\r\n:1\r\n|0\r\n:2\r\n*0\r\n", false),
        case("null aggregates RESP3", b"*3\r\n%-1\r\n~-1\r\n=-1\r\n", false),
        case(
            "mixed nesting",
            b"*3\r\n%1\r\n~2\r\n:1\r\n*1\r\n_\r\n>1\r\n|1\r\n+a\r\n*0\r\n#t\r\n$5\r\nhello\r\n(12\r\n",
            false,
        ),
    ];
    let mut deep = Vec::new();
    for i in 0..20 {
        deep.extend_from_slice(if i % 4 == 0 {
            b"%1\r\n+k\r\n"
        } else {
            b"*1\r\n"
        });
    }
    deep.extend_from_slice(&bulk(b'$', binary));
    cases.push(Case {
        name: "20 levels".into(),
        bytes: deep,
        push: false,
    });
    cases
}

/// The frames of one read from Redis, in order: their bytes and whether each is a push.
type Read = &'static [(&'static [u8], bool)];

/// Replies captured from redis-server 7.0.15 on a socket, one read each. A read that held
/// several frames is listed as its frames in order; their concatenation is the read.
pub(super) const FROM_REDIS: &[(&str, Read)] = &[
    ("RESP2 GET binary", &[(b"$10\r\na\r\nb\r\n$3\r\n\r\n", false)]),
    ("RESP2 GET missing", &[(b"$-1\r\n", false)]),
    ("RESP2 HSET", &[(b":2\r\n", false)]),
    ("RESP2 HGETALL", &[(b"*4\r\n$2\r\nf1\r\n$2\r\nv1\r\n$2\r\nf2\r\n$2\r\nv2\r\n", false)]),
    ("RESP2 LRANGE empty", &[(b"*0\r\n", false)]),
    ("RESP2 BLPOP timeout", &[(b"*-1\r\n", false)]),
    (
        "RESP2 unknown command",
        &[(b"-ERR unknown command 'NOSUCHCMD', with args beginning with: \r\n", false)],
    ),
    ("RESP2 MGET", &[(b"*2\r\n$10\r\na\r\nb\r\n$3\r\n\r\n$-1\r\n", false)]),
    ("RESP2 ZSCORE", &[(b"$3\r\n1.5\r\n", false)]),
    ("RESP2 QUEUED", &[(b"+QUEUED\r\n", false)]),
    ("RESP2 EXEC aborted", &[(b"*-1\r\n", false)]),
    (
        "RESP2 DEBUG PROTOCOL attrib",
        &[(b"$39\r\nSome real reply following the attribute\r\n", false)],
    ),
    (
        "RESP2 XREAD",
        &[(
            b"*1\r\n*2\r\n$2\r\nst\r\n*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n",
            false,
        )],
    ),
    (
        "HELLO 3",
        &[(
            b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:4\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n",
            false,
        )],
    ),
    ("RESP3 HGETALL", &[(b"%2\r\n$2\r\nf1\r\n$2\r\nv1\r\n$2\r\nf2\r\n$2\r\nv2\r\n", false)]),
    ("RESP3 SMEMBERS", &[(b"~2\r\n$2\r\nm2\r\n$2\r\nm1\r\n", false)]),
    ("RESP3 GET missing", &[(b"_\r\n", false)]),
    ("RESP3 ZSCORE", &[(b",1.5\r\n", false)]),
    ("RESP3 ZRANGE WITHSCORES", &[(b"*1\r\n*2\r\n$1\r\nm\r\n,1.5\r\n", false)]),
    (
        "RESP3 XREAD",
        &[(
            b"%1\r\n$2\r\nst\r\n*1\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n",
            false,
        )],
    ),
    (
        "RESP3 HRANDFIELD WITHVALUES",
        &[(b"*2\r\n*2\r\n$2\r\nf2\r\n$2\r\nv2\r\n*2\r\n$2\r\nf1\r\n$2\r\nv1\r\n", false)],
    ),
    ("DEBUG PROTOCOL string", &[(b"$11\r\nHello World\r\n", false)]),
    ("DEBUG PROTOCOL integer", &[(b":12345\r\n", false)]),
    ("DEBUG PROTOCOL double", &[(b",3.141\r\n", false)]),
    ("DEBUG PROTOCOL bignum", &[(b"(1234567999999999999999999999999999999\r\n", false)]),
    ("DEBUG PROTOCOL null", &[(b"_\r\n", false)]),
    ("DEBUG PROTOCOL array", &[(b"*3\r\n:0\r\n:1\r\n:2\r\n", false)]),
    ("DEBUG PROTOCOL set", &[(b"~3\r\n:0\r\n:1\r\n:2\r\n", false)]),
    ("DEBUG PROTOCOL map", &[(b"%3\r\n:0\r\n#f\r\n:1\r\n#t\r\n:2\r\n#f\r\n", false)]),
    (
        "DEBUG PROTOCOL attrib",
        &[(
            b"|1\r\n$14\r\nkey-popularity\r\n*2\r\n$7\r\nkey:123\r\n:90\r\n$39\r\nSome real reply following the attribute\r\n",
            false,
        )],
    ),
    (
        // The push and the command's own reply arrive in one read.
        "DEBUG PROTOCOL push",
        &[
            (b">2\r\n$16\r\nserver-cpu-usage\r\n:42\r\n", true),
            (b"$40\r\nSome real reply following the push reply\r\n", false),
        ],
    ),
    ("DEBUG PROTOCOL verbatim", &[(b"=29\r\ntxt:This is a verbatim\nstring\r\n", false)]),
    ("DEBUG PROTOCOL true", &[(b"#t\r\n", false)]),
    ("DEBUG PROTOCOL false", &[(b"#f\r\n", false)]),
    (
        "CLIENT TRACKING invalidation",
        &[(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$7\r\ntracked\r\n", true)],
    ),
    (
        // Under RESP3 the reply to SUBSCRIBE itself is a push.
        "RESP3 SUBSCRIBE",
        &[(b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n", true)],
    ),
    (
        "RESP3 pubsub message",
        &[(b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$12\r\nhello\r\nworld\r\n", true)],
    ),
    ("RESP3 PING while subscribed", &[(b"+PONG\r\n", false)]),
    (
        // FLUSHALL with tracking on: the reply, then a flush invalidation with a null key.
        "RESP3 FLUSHALL with tracking",
        &[(b"+OK\r\n", false), (b">2\r\n$10\r\ninvalidate\r\n_\r\n", true)],
    ),
    (
        "RESP3 INFO keyspace",
        &[(b"=48\r\ntxt:# Keyspace\r\ndb0:keys=1,expires=0,avg_ttl=0\r\n\r\n", false)],
    ),
    (
        "RESP3 COMMAND INFO GET",
        &[(
            b"*1\r\n*10\r\n$3\r\nget\r\n:2\r\n~2\r\n+readonly\r\n+fast\r\n:1\r\n:1\r\n:1\r\n~3\r\n+@read\r\n+@string\r\n+@fast\r\n~0\r\n~1\r\n%3\r\n$5\r\nflags\r\n~2\r\n+RO\r\n+access\r\n$12\r\nbegin_search\r\n%2\r\n$4\r\ntype\r\n$5\r\nindex\r\n$4\r\nspec\r\n%1\r\n$5\r\nindex\r\n:1\r\n$9\r\nfind_keys\r\n%2\r\n$4\r\ntype\r\n$5\r\nrange\r\n$4\r\nspec\r\n%3\r\n$7\r\nlastkey\r\n:0\r\n$7\r\nkeystep\r\n:1\r\n$5\r\nlimit\r\n:0\r\n~0\r\n",
            false,
        )],
    ),
    (
        "RESP3 EXEC with error, empty map, null",
        &[(b"*3\r\n-ERR value is not an integer or out of range\r\n%0\r\n_\r\n", false)],
    ),
    ("RESP3 CONFIG GET", &[(b"%1\r\n$9\r\nmaxmemory\r\n$1\r\n0\r\n", false)]),
    (
        "RESP3 LATENCY DOCTOR",
        &[(
            b"=292\r\ntxt:I'm sorry, Dave, I can't do that. Latency monitoring is disabled in this Redis instance. You may use \"CONFIG SET latency-monitor-threshold <milliseconds>.\" in order to enable it. If we weren't in a deep space mission I'd suggest to take a look at https://redis.io/topics/latency-monitor.\n\r\n",
            false,
        )],
    ),
    ("RESP3 EVAL nested", &[(b"*2\r\n:1\r\n*2\r\n:2\r\n*2\r\n:3\r\n*1\r\n:4\r\n", false)]),
    ("RESP3 EVAL double", &[(b",1.25\r\n", false)]),
    ("RESP3 EVAL error", &[(b"-BOOM\r\n", false)]),
    ("RESP3 EVAL bignum", &[(b"(123456789012345678901234567890\r\n", false)]),
    ("RESP3 EVAL verbatim", &[(b"=6\r\ntxt:hi\r\n", false)]),
];

/// Every single frame: the synthetic ones and each frame Redis sent.
pub(super) fn all_cases() -> Vec<Case> {
    let mut cases = synthetic();
    for (label, frames) in FROM_REDIS {
        for (i, (bytes, push)) in frames.iter().enumerate() {
            cases.push(case(&format!("redis: {label} #{i}"), bytes, *push));
        }
    }
    cases
}
