//! A parsed client request: the raw RESP multibulk bytes plus where each argument sits in them.
//!
//! The raw bytes are what the proxy forwards upstream, untouched, so a request is never
//! re-encoded on the data path. Arguments are byte ranges into `raw`, so reading one is a
//! slice and keeping one (the local store, later) is a cheap `Bytes::slice`.

use bytes::Bytes;
use smallvec::SmallVec;

/// Where one argument sits inside [`Request::raw`]: `start..start + len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgSpan {
    pub start: u32,
    pub len: u32,
}

/// One complete command from a client, always in multibulk form (inline commands are
/// re-encoded by the parser, which is rare and keeps every later step on one format).
#[derive(Debug, Clone)]
pub struct Request {
    raw: Bytes,
    args: SmallVec<[ArgSpan; 4]>,
}

impl Request {
    /// Builds a request from multibulk bytes and the spans of its arguments.
    /// Invariant (upheld by the parser): `args` is non-empty and every span lies in `raw`.
    pub fn new(raw: Bytes, args: SmallVec<[ArgSpan; 4]>) -> Request {
        debug_assert!(!args.is_empty());
        Request { raw, args }
    }

    /// Encodes `args` as a multibulk request (used for inline commands and by tests).
    pub fn from_args<A: AsRef<[u8]>>(args: &[A]) -> Request {
        let mut raw =
            Vec::with_capacity(16 + args.iter().map(|a| a.as_ref().len() + 16).sum::<usize>());
        let mut spans = SmallVec::new();
        raw.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            let a = a.as_ref();
            raw.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            spans.push(ArgSpan {
                start: raw.len() as u32,
                len: a.len() as u32,
            });
            raw.extend_from_slice(a);
            raw.extend_from_slice(b"\r\n");
        }
        Request::new(Bytes::from(raw), spans)
    }

    /// The whole command as RESP multibulk bytes.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// Number of arguments, the command name included.
    pub fn argc(&self) -> usize {
        self.args.len()
    }

    /// Argument `i` (0 is the command name), or `None` past the end.
    pub fn arg(&self, i: usize) -> Option<&[u8]> {
        self.args
            .get(i)
            .map(|s| &self.raw[s.start as usize..(s.start + s.len) as usize])
    }

    /// Argument `i` as a zero-copy `Bytes`.
    pub fn arg_bytes(&self, i: usize) -> Option<Bytes> {
        self.args
            .get(i)
            .map(|s| self.raw.slice(s.start as usize..(s.start + s.len) as usize))
    }

    /// The command name as sent (any case).
    pub fn name(&self) -> &[u8] {
        self.arg(0).unwrap_or_default()
    }

    /// Iterates over every argument, the command name first.
    pub fn args(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.args
            .iter()
            .map(|s| &self.raw[s.start as usize..(s.start + s.len) as usize])
    }
}
