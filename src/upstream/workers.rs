//! The runtimes client sessions run on.
//!
//! With `threads = 1` everything runs on one single-threaded runtime. With `threads = N > 1`
//! keywarden runs N single-threaded runtimes, one per worker thread, as predixy and Envoy run
//! one event loop per worker: worker 0 is the main thread's (the listener, the health
//! monitors, the admin listener, and its share of the clients); the listener hands each
//! accepted client to the workers in turn, and a client's session stays on its worker for
//! its whole life. Every worker has its own shared upstream connections
//! ([`crate::upstream::shared::Upstream`] keeps a pool per worker), so a session and the
//! connection it writes to always run on the same thread: the requests of a worker's clients
//! are gathered into one write without a wake-up crossing threads, as they are with one
//! thread. What workers share is read without waiting on each other: the health monitors'
//! published state, the local store's sharded locks, the client registry and the metrics'
//! atomics.
//!
//! The workers are installed once, by the binary, before anything starts; a process that
//! never installs them (the tests, which run the proxy inside their own runtime) has one
//! worker, the current runtime.

use std::cell::Cell;
use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

static WORKERS: OnceLock<Box<[Handle]>> = OnceLock::new();

thread_local! {
    /// The worker the calling thread runs (0 on any thread that is not a worker's).
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// Installs the workers' runtimes, worker 0 first. Only the first call counts.
pub fn install(handles: Vec<Handle>) {
    let _ = WORKERS.set(handles.into_boxed_slice());
}

/// Marks the calling thread as worker `i`'s.
pub fn enter(i: usize) {
    INDEX.with(|c| c.set(i));
}

/// How many workers there are: 1 unless installed.
pub(crate) fn count() -> usize {
    WORKERS.get().map_or(1, |w| w.len())
}

/// The calling thread's worker.
pub(crate) fn current() -> usize {
    INDEX.with(Cell::get)
}

/// Runs `task` on worker `i`'s runtime (on the current runtime when none are installed).
pub(crate) fn spawn_on<F>(i: usize, task: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match WORKERS.get() {
        Some(workers) => workers[i % workers.len()].spawn(task),
        None => tokio::spawn(task),
    }
}
