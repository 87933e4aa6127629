//! A client session's inbox: where upstream connections drop the reply bytes meant for it.
//!
//! Upstream connections never wait on a client: they append chunks here and wake the session,
//! which writes them out in order. A chunk is a run of complete reply frames, contiguous in
//! the upstream stream, for requests that this session sent on that connection.
//!
//! Deliberately small (an empty `VecDeque` and a `Notify` allocate nothing), since every idle
//! client holds one.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;

/// Complete reply frames for one session, in request order.
#[derive(Debug)]
pub struct Chunk {
    pub data: Bytes,
    /// How many replies `data` holds.
    pub frames: u32,
}

#[derive(Debug, Default)]
pub struct Inbox {
    chunks: Mutex<VecDeque<Chunk>>,
    notify: Notify,
}

impl Inbox {
    /// Adds a chunk and wakes the session.
    pub fn deliver(&self, chunk: Chunk) {
        self.chunks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(chunk);
        self.notify.notify_one();
    }

    /// Moves every waiting chunk into `into`, in order.
    pub fn drain_into(&self, into: &mut VecDeque<Chunk>) {
        let mut chunks = self.chunks.lock().unwrap_or_else(|e| e.into_inner());
        if into.is_empty() {
            std::mem::swap(&mut *chunks, into);
        } else {
            into.extend(chunks.drain(..));
        }
    }

    /// Resolves once a chunk has been delivered since the last wake-up (a delivery made before
    /// this is awaited is not lost: `Notify` keeps one permit).
    pub async fn wait(&self) {
        self.notify.notified().await
    }
}
