use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

mod cases;
use cases::cases;

/// What the parser produced, in a form that compares across feeding modes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Out {
    Cmd { raw: Vec<u8>, args: Vec<Vec<u8>> },
    Err(String),
}

/// Everything a run produced, and the bytes left unconsumed at the end.
#[derive(Debug, PartialEq, Eq)]
struct Run {
    outs: Vec<Out>,
    left: Vec<u8>,
}

struct Case {
    name: &'static str,
    input: Vec<u8>,
    limits: ParserLimits,
    auth_required: bool,
    expect: Vec<Out>,
    /// How many bytes of the input are left unconsumed (an incomplete tail).
    left: usize,
}

/// A multibulk command: its raw bytes are the client's own.
fn mb(raw: &[u8], args: &[&[u8]]) -> Out {
    Out::Cmd {
        raw: raw.to_vec(),
        args: args.iter().map(|a| a.to_vec()).collect(),
    }
}

/// An inline command: its raw bytes are the multibulk re-encoding.
fn inl(args: &[&[u8]]) -> Out {
    Out::Cmd {
        raw: Request::from_args(args).raw().to_vec(),
        args: args.iter().map(|a| a.to_vec()).collect(),
    }
}

fn err(message: &str) -> Out {
    Out::Err(message.to_owned())
}

fn limits(max_inline_len: usize) -> ParserLimits {
    ParserLimits {
        max_inline_len,
        ..ParserLimits::default()
    }
}

fn case(name: &'static str, input: &[u8], expect: Vec<Out>) -> Case {
    Case {
        name,
        input: input.to_vec(),
        limits: ParserLimits::default(),
        auth_required: false,
        expect,
        left: 0,
    }
}

impl Case {
    fn left(mut self, left: usize) -> Case {
        self.left = left;
        self
    }
    /// Nothing is consumed: the input only waits, or fails before its first command.
    fn all_left(mut self) -> Case {
        self.left = self.input.len();
        self
    }
    fn limits(mut self, limits: ParserLimits) -> Case {
        self.limits = limits;
        self
    }
    fn unauthenticated(mut self) -> Case {
        self.auth_required = true;
        self
    }
    fn expected_run(&self) -> Run {
        assert!(self.left <= self.input.len(), "{}: left", self.name);
        Run {
            outs: self.expect.clone(),
            left: self.input[self.input.len() - self.left..].to_vec(),
        }
    }
}

fn to_out(request: &Request) -> Out {
    Out::Cmd {
        raw: request.raw().to_vec(),
        args: request.args().map(|a| a.to_vec()).collect(),
    }
}

/// Calls `next` until it needs more bytes; false once it has failed.
fn drain(parser: &mut RequestParser, buf: &mut BytesMut, outs: &mut Vec<Out>) -> bool {
    loop {
        match parser.next(buf) {
            Ok(Some(request)) => outs.push(to_out(&request)),
            Ok(None) => return true,
            Err(e) => {
                outs.push(Out::Err(e.0));
                return false;
            }
        }
    }
}

fn parser_for(case: &Case) -> RequestParser {
    let mut parser = RequestParser::new(case.limits);
    parser.set_auth_required(case.auth_required);
    parser
}

/// Feeds the pieces one after another, draining after each. After an error the rest still
/// arrives, but nothing more is parsed.
fn feed<'a>(parser: &mut RequestParser, pieces: impl IntoIterator<Item = &'a [u8]>) -> Run {
    let mut buf = BytesMut::new();
    let mut outs = Vec::new();
    let mut failed = false;
    for piece in pieces {
        buf.extend_from_slice(piece);
        if !failed {
            failed = !drain(parser, &mut buf, &mut outs);
        }
    }
    Run {
        outs,
        left: buf.to_vec(),
    }
}

fn run_pieces<'a>(mut parser: RequestParser, pieces: impl IntoIterator<Item = &'a [u8]>) -> Run {
    feed(&mut parser, pieces)
}

fn run_whole(case: &Case) -> Run {
    run_pieces(parser_for(case), [&case.input[..]])
}

fn run_bytewise(case: &Case) -> Run {
    run_pieces(parser_for(case), case.input.chunks(1))
}

fn run_split(case: &Case, at: usize) -> Run {
    let (a, b) = case.input.split_at(at);
    run_pieces(parser_for(case), [a, b])
}

#[test]
fn every_case_whole_bytewise_and_split_everywhere() {
    for case in cases() {
        let expected = case.expected_run();
        assert_eq!(run_whole(&case), expected, "{}: whole", case.name);
        assert_eq!(run_bytewise(&case), expected, "{}: byte by byte", case.name);
        for at in 0..=case.input.len() {
            assert_eq!(
                run_split(&case, at),
                expected,
                "{}: split at {at}",
                case.name
            );
        }
    }
}

#[test]
fn request_bytes_are_split_off_the_buffer_without_copying() {
    let mut buf = BytesMut::from(&b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"[..]);
    let start = buf.as_ptr();
    let mut parser = RequestParser::new(ParserLimits::default());
    let first = parser.next(&mut buf).unwrap().unwrap();
    let second = parser.next(&mut buf).unwrap().unwrap();
    assert_eq!(first.raw().as_ptr(), start);
    assert_eq!(second.raw().as_ptr(), start.wrapping_add(14));
    assert_eq!(second.arg(1), Some(&b"k"[..]));
    assert_eq!(
        second.arg_bytes(1).unwrap().as_ptr(),
        start.wrapping_add(14 + 17)
    );
    assert!(buf.is_empty());
    assert!(parser.next(&mut buf).unwrap().is_none());
}

#[test]
fn large_bulk_in_small_pieces_is_not_rescanned() {
    const LEN: usize = 8 * 1024 * 1024;
    const PIECE: usize = 4096;
    let header = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${LEN}\r\n");
    let mut input = header.clone().into_bytes();
    input.resize(input.len() + LEN, b'v');
    input.extend_from_slice(b"\r\n");

    let mut parser = RequestParser::new(ParserLimits::default());
    let mut buf = BytesMut::new();
    let mut request = None;
    let mut calls = 0;
    for piece in input.chunks(PIECE) {
        assert!(request.is_none(), "request before the last piece");
        buf.extend_from_slice(piece);
        calls += 1;
        request = parser.next(&mut buf).unwrap();
        if request.is_none() && buf.len() > header.len() {
            // Parked at the start of the payload, its length known: nothing to rescan.
            assert_eq!(parser.pos, header.len());
            assert_eq!(parser.bulk_len, Some(LEN));
        }
    }
    let request = request.expect("complete after the last piece");
    assert!(calls > 2000);
    assert_eq!(request.argc(), 3);
    assert_eq!(request.arg(2).map(<[u8]>::len), Some(LEN));
    assert_eq!(request.raw().len(), input.len());
    // Only the header lines were searched, once; a rescanning parser would examine
    // gigabytes here.
    assert!(
        parser.examined <= header.len(),
        "examined {}",
        parser.examined
    );
}

#[test]
fn long_lines_in_pieces_are_searched_once() {
    // An inline line just under the limit, one byte at a time.
    let mut line = vec![b'x'; 60_000];
    line.extend_from_slice(b"\r\n");
    let mut parser = RequestParser::new(ParserLimits::default());
    let run = feed(&mut parser, line.chunks(1));
    assert_eq!(run.outs.len(), 1);
    assert!(
        parser.examined <= line.len(),
        "examined {}",
        parser.examined
    );

    // A header line hidden by a NUL is not searched again at all.
    let mut input = b"*1\0".to_vec();
    input.resize(60_000, b'\r');
    let mut parser = RequestParser::new(ParserLimits::default());
    let run = feed(&mut parser, input.chunks(7));
    assert!(run.outs.is_empty());
    assert!(parser.examined <= 3, "examined {}", parser.examined);

    // Many small arguments, one byte at a time: linear in the frame.
    let args: Vec<Vec<u8>> = (0..5000).map(|i| format!("arg{i}").into_bytes()).collect();
    let frame = Request::from_args(&args).raw().to_vec();
    let mut parser = RequestParser::new(ParserLimits::default());
    let run = feed(&mut parser, frame.chunks(1));
    assert_eq!(run.outs.len(), 1);
    assert!(
        parser.examined <= frame.len(),
        "examined {}",
        parser.examined
    );
}

#[test]
fn a_declared_length_is_not_allocated() {
    let mut buf = BytesMut::from(&b"*2147483647\r\n$536870912\r\nab"[..]);
    let capacity = buf.capacity();
    let mut parser = RequestParser::new(ParserLimits::default());
    assert!(parser.next(&mut buf).unwrap().is_none());
    assert_eq!(buf.capacity(), capacity);
    assert!(!parser.args.spilled());
}

#[test]
fn after_an_error_the_same_error_is_returned() {
    let mut parser = RequestParser::new(ParserLimits::default());
    let mut buf = BytesMut::from(&b"*x\r\n*1\r\n$4\r\nPING\r\n"[..]);
    let first = parser.next(&mut buf).unwrap_err();
    assert_eq!(parser.next(&mut buf).unwrap_err(), first);
    buf.extend_from_slice(b"PING\r\n");
    assert_eq!(parser.next(&mut buf).unwrap_err(), first);
}

#[test]
fn authentication_limit_follows_the_session() {
    let mut parser = RequestParser::new(ParserLimits::default());
    parser.set_auth_required(true);
    let mut buf = BytesMut::from(&b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n*11\r\n"[..]);
    let auth = parser.next(&mut buf).unwrap().unwrap();
    assert_eq!(auth.name(), b"AUTH");
    parser.set_auth_required(false);
    assert!(parser.next(&mut buf).unwrap().is_none());
}

#[test]
fn error_type_displays_the_message() {
    let e = ProtocolError::new("Protocol error: invalid bulk length");
    assert_eq!(e.to_string(), "Protocol error: invalid bulk length");
    let boxed: Box<dyn std::error::Error> = Box::new(e);
    assert_eq!(boxed.to_string(), "Protocol error: invalid bulk length");
}

#[test]
fn default_limits_are_redis_7s() {
    let limits = ParserLimits::default();
    assert_eq!(limits.max_bulk_len, 536_870_912);
    assert_eq!(limits.max_multibulk_len, 2_147_483_647);
    assert_eq!(limits.max_inline_len, 65_536);
}

#[test]
fn numbers_follow_string2ll() {
    for (text, value) in [
        (&b"0"[..], Some(0)),
        (b"1", Some(1)),
        (b"-1", Some(-1)),
        (b"9223372036854775807", Some(i64::MAX)),
        (b"-9223372036854775808", Some(i64::MIN)),
        (b"9223372036854775808", None),
        (b"18446744073709551616", None),
        (b"00", None),
        (b"-0", None),
        (b"-", None),
        (b"", None),
        (b"+1", None),
        (b" 1", None),
        (b"1 ", None),
        (b"1a", None),
        (b"000000000000000000001", None),
    ] {
        assert_eq!(
            parse_number(text),
            value,
            "{:?}",
            String::from_utf8_lossy(text)
        );
    }
}

/// Random streams of commands, good and corrupted, fed whole and in random pieces: the
/// pieces never change what comes out (the limits are far above the inputs' sizes).
#[test]
fn random_streams_parse_the_same_in_any_pieces() {
    let mut rng = StdRng::seed_from_u64(0x6b65_7977);
    for round in 0..3000 {
        let input = random_stream(&mut rng);
        let case = case("random", &input, vec![]);
        let whole = run_whole(&case);
        let bytewise = run_bytewise(&case);
        assert_eq!(bytewise, whole, "round {round}: {input:?}");
        for _ in 0..4 {
            let mut pieces = Vec::new();
            let mut rest = &input[..];
            while !rest.is_empty() {
                let n = rng.gen_range(1..=rest.len().min(24));
                pieces.push(&rest[..n]);
                rest = &rest[n..];
            }
            let run = run_pieces(parser_for(&case), pieces);
            assert_eq!(run, whole, "round {round}: {input:?}");
        }
        // Every multibulk command's raw bytes re-parse to the same arguments.
        for out in &whole.outs {
            if let Out::Cmd { raw, args } = out {
                let again = run_pieces(RequestParser::new(ParserLimits::default()), [&raw[..]]);
                assert_eq!(again.outs.len(), 1);
                assert!(matches!(&again.outs[0], Out::Cmd { args: a, .. } if a == args));
            }
        }
    }
}

fn random_stream(rng: &mut StdRng) -> Vec<u8> {
    const BYTES: &[u8] = b"ab$*\"'\\ \t\r\n\0x0129-";
    let mut out = Vec::new();
    for _ in 0..rng.gen_range(1..6) {
        let argc = rng.gen_range(0..6);
        let args: Vec<Vec<u8>> = (0..argc)
            .map(|_| {
                (0..rng.gen_range(0..6))
                    .map(|_| BYTES[rng.gen_range(0..BYTES.len())])
                    .collect()
            })
            .collect();
        let mut piece = match rng.gen_range(0..4) {
            0 => {
                let mut line = args.join(&b' ');
                line.extend_from_slice(if rng.gen() { b"\r\n" } else { b"\n" });
                line
            }
            1 => format!("*{}\r\n", rng.gen_range(-2..1)).into_bytes(),
            _ if args.is_empty() => b"*1\r\n$0\r\n\r\n".to_vec(),
            _ => Request::from_args(&args).raw().to_vec(),
        };
        // Now and then, damage a byte or cut the piece short.
        if !piece.is_empty() && rng.gen_ratio(1, 4) {
            let i = rng.gen_range(0..piece.len());
            piece[i] = BYTES[rng.gen_range(0..BYTES.len())];
        }
        if !piece.is_empty() && rng.gen_ratio(1, 10) {
            piece.truncate(rng.gen_range(0..piece.len()));
        }
        out.extend_from_slice(&piece);
    }
    out
}
