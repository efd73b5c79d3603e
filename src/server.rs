//! `stockd serve`: replay, start the engine, listen, serve until SIGTERM / Ctrl-C or a fatal
//! log error, then drain and flush. A log failure exits non-zero so a supervisor restarts us.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::Tokens;
use crate::clock::SystemClock;
use crate::config::ServerConfig;
use crate::engine::Engine;

/// How long in-flight requests may take to finish after a shutdown signal.
const DRAIN_TIMEOUT_MS: u64 = 10_000;

/// Machines with up to this many cores get a single-threaded event loop by default.
const SINGLE_LOOP_MAX_CORES: usize = 2;

/// The async runtime the server runs on, with how many threads it has and how many cores it
/// saw. `worker_threads` 0 means the default: one thread, a current-thread runtime, on up to
/// [`SINGLE_LOOP_MAX_CORES`] cores (every connection and actor then shares one core's caches
/// and no task is stolen or woken across cores; the log writer has a thread of its own
/// anyway; measured on 2 cores: faster up to a few hundred connections, slower beyond, README
/// "Runtime threads"), else one per core. Public so that benchmarks run on the same runtime.
pub fn runtime(worker_threads: usize) -> std::io::Result<(tokio::runtime::Runtime, usize, usize)> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = match worker_threads {
        0 if cores <= SINGLE_LOOP_MAX_CORES => 1,
        0 => cores,
        n => n,
    };
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    Ok((builder.enable_all().build()?, workers, cores))
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "refusing to listen on {0}: no tokens are configured, so stockd only listens on a loopback \
         address (127.0.0.1 or ::1). Use --listen 127.0.0.1:PORT, or configure tokens \
         (--tokens FILE or STOCKD_TOKENS) so that requests must authenticate"
    )]
    NotLoopback(std::net::SocketAddr),
    #[error("invalid token configuration: {0}")]
    Tokens(String),
    #[error("{0}")]
    Log(#[from] crate::wal::WalError),
    #[error(
        "cannot listen on {addr}: {source}. Is another stockd (or another program) using the port? \
         Choose another with --listen"
    )]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Fatal(String),
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// Tokens from `--tokens FILE` and `STOCKD_TOKENS`, both optional.
fn load_tokens(config: &ServerConfig) -> Result<Tokens, ServeError> {
    let from_file = match &config.tokens {
        Some(path) => Tokens::parse_file(path).map_err(ServeError::Tokens)?,
        None => Tokens::default(),
    };
    let from_env = match std::env::var("STOCKD_TOKENS") {
        Ok(list) => Tokens::parse_list(&list).map_err(ServeError::Tokens)?,
        Err(_) => Tokens::default(),
    };
    from_file.merge(from_env).map_err(ServeError::Tokens)
}

pub async fn serve(config: ServerConfig) -> Result<(), ServeError> {
    let tokens = load_tokens(&config)?;
    if tokens.is_empty() && !config.listen.ip().is_loopback() {
        return Err(ServeError::NotLoopback(config.listen));
    }
    let (fatal_tx, mut fatal_rx) = watch::channel::<Option<String>>(None);
    let on_fatal = Box::new(move |message: String| {
        let _ = fatal_tx.send(Some(message));
    });
    let (engine, startup) = Engine::open(&config.engine, Arc::new(SystemClock), on_fatal).await?;
    tracing::info!(
        "replayed {} records from {} segments in {} in {:.2} s ({} records/s): {} products, {} active reservations, {} released at start (expired while down)",
        startup.replay.records,
        startup.replay.segments,
        config.engine.data_dir.display(),
        startup.replay.elapsed_ms as f64 / 1000.0,
        startup.replay.records_per_second(),
        startup.products,
        startup.active_reservations,
        startup.expired_at_start
    );
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr()?;
    if tokens.is_empty() {
        tracing::info!("no tokens configured: requests need no auth, listening on loopback only");
    } else {
        tracing::info!(
            "{} tokens configured: every request but /healthz and /readyz needs one",
            tokens.len()
        );
    }
    {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "stockd listening on http://{addr}");
        let _ = stdout.flush();
    }

    let limits = crate::http::HttpLimits {
        max_concurrent_requests: config.max_concurrent_requests,
        request_timeout: Duration::from_millis(config.request_timeout_ms),
    };
    let app = crate::http::router(engine.clone(), limits, tokens);
    let connection_limits = crate::http::connections::ConnectionLimits {
        max_connections: config.max_connections,
        header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    fit_descriptor_limit(config.max_connections);
    let server = tokio::spawn(crate::http::connections::serve(
        listener,
        app,
        engine.clone(),
        connection_limits,
        stop_rx,
        Duration::from_millis(DRAIN_TIMEOUT_MS),
    ));

    let fatal = tokio::select! {
        _ = shutdown_signal() => None,
        m = fatal_rx.wait_for(|m| m.is_some()) => m.ok().and_then(|m| m.clone()),
    };
    tracing::info!("shutting down: draining requests");
    let _ = stop_tx.send(true);
    if !server.await.unwrap_or(false) {
        tracing::warn!("requests still running after {DRAIN_TIMEOUT_MS} ms; stopping anyway");
    }
    if let Some(message) = fatal {
        return Err(ServeError::Fatal(message));
    }
    engine
        .close()
        .await
        .map_err(|_| ServeError::Fatal("the log could not be flushed at shutdown".into()))?;
    tracing::info!("log flushed; bye");
    Ok(())
}

/// File descriptors the server needs beside its connections: the listener, log segments, the
/// runtime's own.
const SPARE_DESCRIPTORS: u64 = 256;

/// Raises the soft limit on open files to what `max_connections` needs, as far as the hard
/// limit allows, and says what to do when that is not enough.
fn fit_descriptor_limit(max_connections: usize) {
    let wanted = max_connections as u64 + SPARE_DESCRIPTORS;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < wanted {
        let raised = libc::rlimit {
            rlim_cur: wanted.min(limit.rlim_max),
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = raised.rlim_cur;
        }
    }
    if limit.rlim_cur < wanted {
        tracing::warn!(
            "--max-connections {max_connections} needs about {wanted} file descriptors, but the \
             limit is {}: past it new connections fail. Raise the limit (ulimit -n, or \
             LimitNOFILE= in a systemd unit) or lower --max-connections",
            limit.rlim_cur
        );
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
