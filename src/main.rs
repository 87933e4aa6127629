//! The `keywarden` binary: parse the command line, then either check a config file or run the
//! proxy until SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use keywarden::config::cli::{check_config, Cli, CliCommand};
use keywarden::config::{LogFormat, Settings};
use keywarden::upstream::workers;
use tracing_subscriber::EnvFilter;

/// jemalloc instead of the system allocator: tokio's task cells and socket registrations are
/// 128-byte aligned, which glibc serves with padding on top of each. Measured with
/// `scripts/bench` (10,000 idle clients): 0.77 KB per idle client with glibc, 0.63 with
/// jemalloc (mimalloc: 1.02).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main` (its `malloc_conf`). A background thread returns
/// freed pages to the system as they age (10 s, jemalloc's default), as Redis runs jemalloc
/// (`jemalloc-bg-thread yes`): without it freed memory is returned only while the process
/// allocates, so the tasks of clients that went idle and were parked (see
/// `proxy::parking`) stayed resident in a quiet proxy. Measured with 10,000 parked clients:
/// 0.79 KB per client resident without, 0.21 KB 20 s after they parked with.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 48] = b"background_thread:true,max_background_threads:1\0";

fn main() -> ExitCode {
    match Cli::parse().into_command() {
        Ok(CliCommand::CheckConfig { path }) => {
            let (text, code) = check_config(&path);
            if code == 0 {
                println!("{text}");
            } else {
                eprintln!("{text}");
            }
            ExitCode::from(code as u8)
        }
        Ok(CliCommand::Run { settings }) => run(settings),
        Err((text, code)) => {
            eprintln!("{text}");
            ExitCode::from(code as u8)
        }
    }
}

fn run(settings: Settings) -> ExitCode {
    init_logging(&settings);
    let threads = match settings.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // One single-threaded runtime per worker (see keywarden::upstream::workers): this thread's
    // is worker 0's, and each other worker has a thread of its own.
    let runtime = match single_threaded() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    let others = match (1..threads)
        .map(Worker::start)
        .collect::<std::io::Result<Vec<_>>>()
    {
        Ok(others) => others,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the worker threads");
            return ExitCode::FAILURE;
        }
    };
    let mut handles = vec![runtime.handle().clone()];
    handles.extend(others.iter().map(|w| w.handle.clone()));
    workers::install(handles);
    let result = runtime.block_on(async {
        let listener = keywarden::proxy::listener::bind(settings.listen)?;
        keywarden::proxy::listener::run(settings, listener, shutdown_signal()).await
    });
    for worker in others {
        worker.stop();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "keywarden failed");
            ExitCode::FAILURE
        }
    }
}

fn single_threaded() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// A worker other than the main thread's: its runtime runs on its own thread until stopped.
struct Worker {
    handle: tokio::runtime::Handle,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Worker {
    fn start(i: usize) -> std::io::Result<Worker> {
        let runtime = single_threaded()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("keywarden-worker-{i}"))
            .spawn(move || {
                workers::enter(i);
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(Worker {
            handle,
            stop,
            thread,
        })
    }

    /// Once the proxy has stopped: the runtime ends with whatever it still runs.
    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "shutdown requested"),
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
    }
}

/// Logs go to stdout, JSON or text as configured; `RUST_LOG` overrides the configured level.
fn init_logging(settings: &Settings) {
    // tracing-subscriber's parser panics on some non-ASCII text: such a RUST_LOG is ignored,
    // as an invalid one is (the configured level was checked when the file was loaded).
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| v.is_ascii())
        .and_then(|v| EnvFilter::try_new(v).ok());
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(&settings.log.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match settings.log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
