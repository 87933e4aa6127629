use super::*;

mod frames;
mod random;
use frames::{all_cases, FROM_REDIS};
use random::{random_frame, Rng};

/// The depth the multiplexer uses.
const DEPTH: usize = 128;

/// The tests' line limit: the real one (512 MiB) is too large to build cases at.
const TEST_MAX_LINE: usize = 64 * 1024;

/// The scanner the tests use, at [`DEPTH`] and [`TEST_MAX_LINE`].
fn test_scanner() -> ReplyScanner {
    ReplyScanner::with_max_line(DEPTH, TEST_MAX_LINE)
}

/// One complete frame and its expected push flag.
struct Case {
    name: String,
    bytes: Vec<u8>,
    push: bool,
}

fn case(name: &str, bytes: &[u8], push: bool) -> Case {
    Case {
        name: name.to_owned(),
        bytes: bytes.to_vec(),
        push,
    }
}

/// `$`, `=` or `!` with its length computed, so binary payloads need no hand counting.
fn bulk(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    out
}

fn expected(case: &Case) -> Frame {
    Frame {
        len: case.bytes.len(),
        push: case.push,
    }
}

/// Feeds `stream` to `scanner` in pieces of the sizes `piece` returns, as the multiplexer
/// does: append, scan until incomplete, drop the frames found. Returns the frames and the
/// number of bytes left over (the start of an incomplete frame).
fn feed(
    scanner: &mut ReplyScanner,
    stream: &[u8],
    mut piece: impl FnMut() -> usize,
) -> Result<(Vec<Frame>, usize), ReplyError> {
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let mut fed = 0;
    while fed < stream.len() {
        let n = piece().clamp(1, stream.len() - fed);
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        let mut start = 0;
        while let Some(frame) = scanner.scan(&buf[start..])? {
            frames.push(frame);
            start += frame.len;
        }
        // The frame in progress moves to the front of the buffer, as in a real read buffer.
        buf.drain(..start);
    }
    Ok((frames, buf.len()))
}

#[test]
fn every_frame_whole() {
    for case in all_cases() {
        let mut scanner = test_scanner();
        assert_eq!(
            scanner.scan(&case.bytes),
            Ok(Some(expected(&case))),
            "{}",
            case.name
        );
        // With trailing bytes of the next frame, the length is the same.
        let mut more = case.bytes.clone();
        more.extend_from_slice(b"$5\r\nnext");
        assert_eq!(
            scanner.scan(&more),
            Ok(Some(expected(&case))),
            "{} + tail",
            case.name
        );
    }
}

#[test]
fn every_frame_byte_by_byte() {
    for case in all_cases() {
        let mut scanner = test_scanner();
        for end in 0..case.bytes.len() {
            assert_eq!(
                scanner.scan(&case.bytes[..end]),
                Ok(None),
                "{} at {end}",
                case.name
            );
        }
        assert_eq!(
            scanner.scan(&case.bytes),
            Ok(Some(expected(&case))),
            "{}",
            case.name
        );
    }
}

#[test]
fn every_frame_split_in_two_everywhere() {
    for case in all_cases() {
        for split in 0..=case.bytes.len() {
            let mut scanner = test_scanner();
            let first = scanner.scan(&case.bytes[..split]);
            if split < case.bytes.len() {
                assert_eq!(first, Ok(None), "{} split at {split}", case.name);
                let second = scanner.scan(&case.bytes);
                assert_eq!(
                    second,
                    Ok(Some(expected(&case))),
                    "{} split at {split}",
                    case.name
                );
            } else {
                assert_eq!(first, Ok(Some(expected(&case))), "{}", case.name);
            }
        }
    }
}

#[test]
fn concatenated_frames_in_any_pieces() {
    let cases = all_cases();
    let stream: Vec<u8> = cases.iter().flat_map(|c| c.bytes.iter().copied()).collect();
    let want: Vec<Frame> = cases.iter().map(expected).collect();
    for size in [1, 2, 3, 5, 7, 13, 64, 4096, stream.len()] {
        let mut scanner = test_scanner();
        let (frames, left) = feed(&mut scanner, &stream, || size).unwrap();
        assert_eq!(frames, want, "pieces of {size}");
        assert_eq!(left, 0);
    }
    let mut rng = Rng(7);
    for _ in 0..20 {
        let mut scanner = test_scanner();
        let (frames, left) = feed(&mut scanner, &stream, || 1 + rng.below(40)).unwrap();
        assert_eq!(frames, want);
        assert_eq!(left, 0);
    }
}

#[test]
fn redis_reads_split_into_their_frames() {
    for (label, frames) in FROM_REDIS {
        let read: Vec<u8> = frames.iter().flat_map(|(b, _)| b.iter().copied()).collect();
        let want: Vec<Frame> = frames
            .iter()
            .map(|(b, push)| Frame {
                len: b.len(),
                push: *push,
            })
            .collect();
        let mut scanner = test_scanner();
        let mut found = Vec::new();
        let mut start = 0;
        while let Some(frame) = scanner.scan(&read[start..]).unwrap() {
            found.push(frame);
            start += frame.len;
        }
        assert_eq!(found, want, "{label}");
        assert_eq!(start, read.len(), "{label}");
    }
}

#[test]
fn many_small_frames_in_one_buffer() {
    let mut stream = Vec::new();
    for i in 0..10_000 {
        match i % 3 {
            0 => stream.extend_from_slice(b"+OK\r\n"),
            1 => stream.extend_from_slice(b"$3\r\nabc\r\n"),
            _ => stream.extend_from_slice(b":1\r\n"),
        }
    }
    let mut scanner = test_scanner();
    let mut start = 0;
    let mut count = 0;
    while let Some(frame) = scanner.scan(&stream[start..]).unwrap() {
        assert_eq!(frame.len, [5, 9, 4][count % 3]);
        start += frame.len;
        count += 1;
    }
    assert_eq!((count, start), (10_000, stream.len()));
    assert_eq!(scanner.open.capacity(), 0, "flat frames must not allocate");
}

#[test]
fn flat_frames_never_allocate() {
    let mut scanner = test_scanner();
    for case in all_cases() {
        if matches!(case.bytes[0], b'*' | b'~' | b'%' | b'>' | b'|') {
            continue;
        }
        for end in 0..=case.bytes.len() {
            let _ = scanner.scan(&case.bytes[..end]);
        }
    }
    // Null and empty aggregates are leaves too.
    for flat in [
        &b"*-1\r\n"[..],
        b"*0\r\n",
        b"%0\r\n",
        b"~-1\r\n",
        b">0\r\n",
        b"|0\r\n:1\r\n",
    ] {
        assert!(scanner.scan(flat).unwrap().is_some());
    }
    assert_eq!(scanner.open.capacity(), 0);
}

#[test]
fn the_stack_grows_with_depth_not_with_length() {
    let mut scanner = test_scanner();
    let mut wide = b"*50000\r\n".to_vec();
    for _ in 0..50_000 {
        wide.extend_from_slice(b"*1\r\n:1\r\n");
    }
    assert_eq!(
        scanner.scan(&wide).unwrap().map(|f| f.len),
        Some(wide.len())
    );
    assert!(
        scanner.open.capacity() <= 4,
        "capacity {}",
        scanner.open.capacity()
    );
}

#[test]
fn push_flag_only_for_a_top_level_push() {
    let cases: &[(&[u8], bool)] = &[
        (b">1\r\n+x\r\n", true),
        (b">-1\r\n", true),
        (b"*1\r\n>1\r\n+x\r\n", false),
        (b"|1\r\n+k\r\n+v\r\n>1\r\n+x\r\n", true),
        (b"|1\r\n+k\r\n>1\r\n+v\r\n+x\r\n", false),
        (b"|1\r\n>0\r\n>0\r\n*0\r\n", false),
        (b"%1\r\n>0\r\n>0\r\n", false),
    ];
    for (bytes, push) in cases {
        let mut scanner = test_scanner();
        let frame = Frame {
            len: bytes.len(),
            push: *push,
        };
        assert_eq!(
            scanner.scan(bytes),
            Ok(Some(frame)),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
        // The flag does not leak into the next frame.
        assert_eq!(
            scanner.scan(b"+OK\r\n"),
            Ok(Some(Frame {
                len: 5,
                push: false
            }))
        );
    }
}

/// Inputs that are not RESP, with the error each must give.
fn malformed() -> Vec<(Vec<u8>, ReplyError)> {
    use ReplyError::Malformed as M;
    let mut cases: Vec<(Vec<u8>, ReplyError)> = [
        (&b"x"[..], M("unknown type byte")),
        (b"\r\n", M("unknown type byte")),
        (b"?\r\n", M("unknown type byte")),
        (b" +OK\r\n", M("unknown type byte")),
        (b"PONG\r\n", M("unknown type byte")),
        (b";4\r\nabcd\r\n", M("unknown type byte")),
        (b".\r\n", M("unknown type byte")),
        (b"+OK\rX", M("CR not followed by LF")),
        (b"+OK\r\r\n", M("CR not followed by LF")),
        (b"$3\r\r\nabc\r\n", M("CR not followed by LF")),
        (b":\r\n", M("integer reply is not a number")),
        (b":-\r\n", M("integer reply is not a number")),
        (b":+1\r\n", M("integer reply is not a number")),
        (b":1.5\r\n", M("integer reply is not a number")),
        (b": 1\r\n", M("integer reply is not a number")),
        (
            b":9223372036854775808\r\n",
            M("integer reply is not a number"),
        ),
        (
            b":-9223372036854775809\r\n",
            M("integer reply is not a number"),
        ),
        (b":123456789012345678901\r\n", M("integer reply too long")),
        (b"#\r\n", M("boolean other than t or f")),
        (b"#x\r\n", M("boolean other than t or f")),
        (b"#tt\r\n", M("boolean other than t or f")),
        (b"_x\r\n", M("null with content")),
        (b"$\r\n", M("length is not a number")),
        (b"$abc\r\n", M("length is not a number")),
        (b"$-\r\n", M("length is not a number")),
        (b"*3x\r\n", M("length is not a number")),
        (b"$-2\r\n", M("negative length")),
        (b"*-2\r\n", M("negative length")),
        (b"%-5\r\n", M("negative length")),
        (b"$?\r\n", M("RESP3 streamed types are not supported")),
        (b"*?\r\n", M("RESP3 streamed types are not supported")),
        (b"$123456789012345678901\r\n", M("length line too long")),
        (b"*000000000000000000001\r\n", M("length line too long")),
        (b"|-1\r\n", M("null attribute")),
        (b"$1\r\nab\r\n", M("bulk payload not followed by CRLF")),
        (b"$1\r\na\n\r", M("bulk payload not followed by CRLF")),
        (b"$0\r\nX\r\n", M("bulk payload not followed by CRLF")),
        (b"=3\r\ntxt:\r\n", M("bulk payload not followed by CRLF")),
        (b"*2\r\n:1\r\nX", M("unknown type byte")),
        (b"*2\r\n:1\r\n*1\r\n$-2\r\n", M("negative length")),
        (
            b"%1\r\n+k\r\n$2\r\nvvv\r\n",
            M("bulk payload not followed by CRLF"),
        ),
        (b"|1\r\n+k\r\n+v\r\n|-1\r\n", M("null attribute")),
        (b">1\r\n#maybe\r\n", M("boolean other than t or f")),
    ]
    .iter()
    .map(|(b, e)| (b.to_vec(), e.clone()))
    .collect();
    let mut long = b"+".to_vec();
    long.extend(std::iter::repeat_n(b'a', TEST_MAX_LINE + 1));
    long.extend_from_slice(b"\r\n");
    cases.push((long.clone(), M("line longer than the line limit")));
    let mut nested_long = b"*2\r\n:1\r\n".to_vec();
    nested_long.extend_from_slice(&long);
    cases.push((nested_long, M("line longer than the line limit")));
    cases
}

#[test]
fn malformed_input_is_an_error() {
    for (bytes, error) in malformed() {
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(40)]).into_owned();
        let mut scanner = test_scanner();
        assert_eq!(scanner.scan(&bytes), Err(error.clone()), "{shown:?}");
        // The scanner stays on the bad element: the same bytes give the same error.
        assert_eq!(scanner.scan(&bytes), Err(error.clone()), "{shown:?} again");
        // Fed byte by byte, the error is found at the latest at the last byte, never
        // mistaken for an incomplete frame.
        let mut scanner = test_scanner();
        let mut seen = None;
        for end in 1..=bytes.len() {
            match scanner.scan(&bytes[..end]) {
                Ok(None) => {}
                Ok(Some(frame)) => panic!("{shown:?} framed as {frame:?}"),
                Err(e) => {
                    seen = Some(e);
                    break;
                }
            }
        }
        assert_eq!(seen, Some(error), "{shown:?} byte by byte");
    }
}

#[test]
fn line_length_limit_is_exact() {
    let mut longest = b"-".to_vec();
    longest.extend(std::iter::repeat_n(b'e', TEST_MAX_LINE));
    longest.extend_from_slice(b"\r\n");
    let mut scanner = test_scanner();
    assert_eq!(
        scanner.scan(&longest),
        Ok(Some(Frame {
            len: TEST_MAX_LINE + 3,
            push: false
        }))
    );
    // One byte short of the CR: still incomplete, not yet an error.
    assert_eq!(scanner.scan(&longest[..TEST_MAX_LINE + 1]), Ok(None));
    assert_eq!(
        scanner.scan(&longest),
        Ok(Some(Frame {
            len: TEST_MAX_LINE + 3,
            push: false
        }))
    );
    // A bulk may be far longer than a line.
    let big = bulk(b'$', &vec![b'\r'; 4 * TEST_MAX_LINE]);
    assert_eq!(
        scanner.scan(&big),
        Ok(Some(Frame {
            len: big.len(),
            push: false
        }))
    );
}

#[test]
fn error_lasts_until_reset() {
    let mut scanner = test_scanner();
    assert_eq!(scanner.scan(b"*2\r\n:1\r\n"), Ok(None));
    let bad = b"*2\r\n:1\r\n@";
    assert_eq!(
        scanner.scan(bad),
        Err(ReplyError::Malformed("unknown type byte"))
    );
    assert_eq!(
        scanner.scan(bad),
        Err(ReplyError::Malformed("unknown type byte"))
    );
    scanner.reset();
    assert_eq!(
        scanner.scan(b":7\r\n"),
        Ok(Some(Frame {
            len: 4,
            push: false
        }))
    );
}

#[test]
fn reset_forgets_a_partial_frame() {
    let mut scanner = test_scanner();
    assert_eq!(scanner.scan(b">2\r\n*3\r\n$100\r\nabc"), Ok(None));
    scanner.reset();
    // Without the reset the scanner would skip 100 payload bytes from offset 14.
    assert_eq!(
        scanner.scan(b"+OK\r\n"),
        Ok(Some(Frame {
            len: 5,
            push: false
        }))
    );
    assert_eq!(
        scanner.scan(b"$-1\r\n"),
        Ok(Some(Frame {
            len: 5,
            push: false
        }))
    );
    // Reset at an idle moment is harmless.
    scanner.reset();
    assert_eq!(
        scanner.scan(b"#t\r\n"),
        Ok(Some(Frame {
            len: 4,
            push: false
        }))
    );
}

#[test]
fn an_empty_slice_is_incomplete() {
    let mut scanner = test_scanner();
    assert_eq!(scanner.scan(b""), Ok(None));
    assert_eq!(
        scanner.scan(b"+OK\r\n"),
        Ok(Some(Frame {
            len: 5,
            push: false
        }))
    );
}

#[test]
fn a_huge_declared_length_waits_instead_of_overflowing() {
    let mut scanner = test_scanner();
    assert_eq!(scanner.scan(b"$9223372036854775807\r\nabc"), Ok(None));
    scanner.reset();
    assert_eq!(scanner.scan(b"*9223372036854775807\r\n:1\r\n"), Ok(None));
    scanner.reset();
    assert_eq!(scanner.scan(b"%9223372036854775807\r\n:1\r\n"), Ok(None));
}

/// `levels` aggregates of kind `open` around `:1`, each closing after its one child.
fn nested(open: &[u8], levels: usize) -> Vec<u8> {
    let mut out = open.repeat(levels);
    out.extend_from_slice(b":1\r\n");
    out
}

/// An attribute whose value is an attributed element, `levels` deep.
fn nested_attributes(levels: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..levels {
        out.extend_from_slice(b"|1\r\n+k\r\n");
    }
    out.extend_from_slice(b":1\r\n");
    for _ in 0..levels {
        out.extend_from_slice(b"+r\r\n");
    }
    out
}

#[test]
fn depth_up_to_the_cap_is_accepted_and_beyond_is_too_deep() {
    for open in [&b"*1\r\n"[..], b"~1\r\n", b"%1\r\n+k\r\n", b"*2\r\n:0\r\n"] {
        let ok = nested(open, DEPTH);
        let mut scanner = test_scanner();
        assert_eq!(
            scanner.scan(&ok),
            Ok(Some(Frame {
                len: ok.len(),
                push: false
            }))
        );
        let deep = nested(open, DEPTH + 1);
        assert_eq!(scanner.scan(&deep), Err(ReplyError::TooDeep));
        // Found as soon as the offending header arrives, byte by byte too.
        let mut scanner = test_scanner();
        let header_end = open.len() * DEPTH + 4;
        for end in 0..header_end {
            assert_eq!(scanner.scan(&deep[..end]), Ok(None));
        }
        assert_eq!(scanner.scan(&deep[..header_end]), Err(ReplyError::TooDeep));
    }
    let ok = nested_attributes(DEPTH);
    let mut scanner = test_scanner();
    assert_eq!(
        scanner.scan(&ok),
        Ok(Some(Frame {
            len: ok.len(),
            push: false
        }))
    );
    assert_eq!(
        scanner.scan(&nested_attributes(DEPTH + 1)),
        Err(ReplyError::TooDeep)
    );
    scanner.reset();
    let mut push = b">1\r\n".to_vec();
    push.extend_from_slice(&nested(b"*1\r\n", DEPTH - 1));
    assert_eq!(
        scanner.scan(&push),
        Ok(Some(Frame {
            len: push.len(),
            push: true
        }))
    );
}

#[test]
fn depth_counts_every_aggregate_header() {
    // Empty and null aggregates are nesting levels too.
    for last in [&b"*0\r\n"[..], b"*-1\r\n", b"%0\r\n", b"|0\r\n:1\r\n"] {
        let mut bytes = b"*1\r\n".repeat(3);
        bytes.extend_from_slice(last);
        let mut scanner = ReplyScanner::new(3);
        assert_eq!(scanner.scan(&bytes), Err(ReplyError::TooDeep), "{last:?}");
        let mut scanner = ReplyScanner::new(4);
        assert_eq!(
            scanner.scan(&bytes),
            Ok(Some(Frame {
                len: bytes.len(),
                push: false
            }))
        );
    }
    // Depth 0 allows flat frames only.
    let mut scanner = ReplyScanner::new(0);
    assert_eq!(
        scanner.scan(b"$3\r\nabc\r\n"),
        Ok(Some(Frame {
            len: 9,
            push: false
        }))
    );
    assert_eq!(scanner.scan(b"*0\r\n"), Err(ReplyError::TooDeep));
    // A top-level attribute is closed before the reply it annotates starts.
    let mut scanner = ReplyScanner::new(1);
    let attributed = b"|1\r\n+k\r\n+v\r\n*1\r\n:1\r\n";
    assert_eq!(
        scanner.scan(attributed),
        Ok(Some(Frame {
            len: attributed.len(),
            push: false
        }))
    );
    // But an aggregate inside an attribute nests.
    assert_eq!(
        scanner.scan(b"|1\r\n+k\r\n*1\r\n:1\r\n+r\r\n"),
        Err(ReplyError::TooDeep)
    );
}

#[test]
fn very_deep_nesting_needs_no_recursion() {
    let levels = 200_000;
    let bytes = nested(b"*1\r\n", levels);
    let mut scanner = ReplyScanner::new(levels);
    assert_eq!(
        scanner.scan(&bytes),
        Ok(Some(Frame {
            len: bytes.len(),
            push: false
        }))
    );
    let mut scanner = ReplyScanner::new(levels);
    let (frames, left) = feed(&mut scanner, &bytes, || 4096).unwrap();
    assert_eq!((frames.len(), left), (1, 0));
}

/// Scans `stream` (one frame) as prefixes growing by `step` bytes, returning the frame and
/// the number of calls made.
fn scan_growing(scanner: &mut ReplyScanner, stream: &[u8], step: usize) -> (Frame, usize) {
    let mut calls = 0;
    let mut end = 0;
    loop {
        end = (end + step).min(stream.len());
        calls += 1;
        if let Some(frame) = scanner.scan(&stream[..end]).unwrap() {
            return (frame, calls);
        }
        assert!(end < stream.len(), "complete stream not framed");
    }
}

#[test]
fn a_large_array_in_4k_pieces_costs_linear_work() {
    let mut stream = b"*200000\r\n".to_vec();
    for i in 0..200_000 {
        match i % 4 {
            0 => stream.extend_from_slice(b"$5\r\nhello\r\n"),
            1 => stream.extend_from_slice(format!(":{i}\r\n").as_bytes()),
            2 => stream.extend_from_slice(b"*2\r\n+a\r\n$-1\r\n"),
            _ => stream.extend_from_slice(b"%1\r\n$3\r\nk\r\n\r\n,1.5\r\n"),
        }
    }
    let mut scanner = test_scanner();
    let (frame, calls) = scan_growing(&mut scanner, &stream, 4096);
    assert_eq!(
        frame,
        Frame {
            len: stream.len(),
            push: false
        }
    );
    assert!(calls > 500);
    // Each byte at most once, plus one CR looked at again per call when a piece ends
    // between CR and LF. Rescanning from the frame start would cost ~calls/2 times more.
    assert!(
        scanner.examined <= stream.len() + calls,
        "examined {} bytes of {} in {calls} calls",
        scanner.examined,
        stream.len()
    );
}

#[test]
fn a_50mb_bulk_in_16k_pieces_is_skipped_not_searched() {
    let payload = vec![b'\r'; 50 << 20];
    let stream = bulk(b'$', &payload);
    let mut scanner = test_scanner();
    let (frame, calls) = scan_growing(&mut scanner, &stream, 16 << 10);
    assert_eq!(
        frame,
        Frame {
            len: stream.len(),
            push: false
        }
    );
    assert!(calls > 3000);
    // The header line and the final CRLF; the payload is never looked at.
    assert!(scanner.examined <= 16, "examined {}", scanner.examined);
}

#[test]
fn a_long_line_byte_by_byte_is_searched_once() {
    let mut line = b"+".to_vec();
    line.extend(std::iter::repeat_n(b'x', 60_000));
    line.extend_from_slice(b"\r\n");
    let mut scanner = test_scanner();
    let (frame, calls) = scan_growing(&mut scanner, &line, 1);
    assert_eq!(
        frame,
        Frame {
            len: line.len(),
            push: false
        }
    );
    assert_eq!(calls, line.len());
    assert!(
        scanner.examined <= line.len() + 1,
        "examined {}",
        scanner.examined
    );
}

#[test]
fn errors_display_what_went_wrong() {
    assert_eq!(
        ReplyError::Malformed("unknown type byte").to_string(),
        "malformed reply: unknown type byte"
    );
    assert_eq!(
        ReplyError::TooDeep.to_string(),
        "reply nested deeper than the limit"
    );
    let boxed: Box<dyn std::error::Error> = Box::new(ReplyError::TooDeep);
    assert!(boxed.source().is_none());
}

#[test]
fn random_frames_in_random_pieces() {
    let levels = 5;
    for seed in 0..300 {
        let mut rng = Rng(seed);
        let mut stream = Vec::new();
        let want: Vec<Frame> = (0..1 + rng.below(30))
            .map(|_| random_frame(&mut rng, &mut stream, levels))
            .collect();
        let max_piece = [1, 3, 17, 200, 5000][rng.below(5)];
        let mut scanner = ReplyScanner::new(levels);
        let (frames, left) = feed(&mut scanner, &stream, || 1 + rng.below(max_piece))
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(frames, want, "seed {seed}");
        assert_eq!(left, 0, "seed {seed}");
        assert!(scanner.examined <= 2 * stream.len(), "seed {seed}");
        // Every proper prefix of the first frame is incomplete.
        let mut scanner = ReplyScanner::new(levels);
        for end in 0..want[0].len {
            assert_eq!(
                scanner.scan(&stream[..end]),
                Ok(None),
                "seed {seed} at {end}"
            );
        }
    }
}
