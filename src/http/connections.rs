//! Accepting and serving connections, with a bound on how many are open and on how long a
//! client may take to send a request head.
//!
//! Why not `axum::serve`: it has neither bound. A client that opens connections and sends
//! nothing, or a header a byte at a time, would hold a task and its buffers for as long as it
//! likes, and enough of them exhaust the file descriptors every other client needs. Here each
//! connection is served by hyper's HTTP/1 with its header read timeout set (the same timer
//! closes a keep-alive connection left idle that long). A connection accepted past
//! `max_connections` is answered `503` with `Retry-After` and closed; answering it takes a
//! task too, so at most [`REFUSING_MAX`] are answered at once and any beyond are closed
//! unanswered.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::error::ApiError;
use crate::engine::Engine;

/// Refused connections being answered at once.
const REFUSING_MAX: usize = 256;
/// Time a refused connection gets to send its request and take the answer.
const REFUSAL_MAX_MS: u64 = 2_000;
/// Pause after an accept error that is about the server, not the client (out of file
/// descriptors, out of memory), so that a persistent one does not spin the loop.
const ACCEPT_ERROR_PAUSE_MS: u64 = 50;
/// At most one warning about accept errors in this long, however many there are.
const ACCEPT_ERROR_WARN_EVERY_MS: u64 = 10_000;

/// Limits on connections.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    /// Time for a request head to arrive, counted from the end of the previous exchange on
    /// the connection (or from its accept).
    pub header_read_timeout: Duration,
}

/// Serves `app` on `listener` until `stop` turns true, then stops accepting and waits up to
/// `drain_timeout` for the requests in progress; returns whether they all finished.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    engine: Engine,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
    drain_timeout: Duration,
) -> bool {
    assert!(
        limits.max_connections > 0,
        "max_connections must be positive"
    );
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(REFUSING_MAX));
    let graceful = GracefulShutdown::new();
    let mut warned_at: Option<Instant> = None;
    let mut builder = http1::Builder::new();
    // Each answer flattened into one buffer and sent with one `sendto`, not a `writev` of
    // the head and the body: HTTP flash ~10% faster (7 alternating pairs, faster in 6),
    // with the same one system call a request.
    builder
        .timer(TokioTimer::new())
        .writev(false)
        .header_read_timeout(limits.header_read_timeout);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = async { let _ = stop.wait_for(|stop| *stop).await; } => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                if !is_client_error(&e) {
                    let every = Duration::from_millis(ACCEPT_ERROR_WARN_EVERY_MS);
                    if warned_at.is_none_or(|at| at.elapsed() >= every) {
                        warned_at = Some(Instant::now());
                        tracing::warn!(
                            "cannot accept a connection: {e}; if it says too many open files, \
                             raise the file descriptor limit (ulimit -n) or lower \
                             --max-connections"
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
                }
                continue;
            }
        };
        // Small request/response exchanges: without TCP_NODELAY, Nagle's algorithm and
        // delayed ACKs can hold a response back.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        let Ok(permit) = open.clone().try_acquire_owned() else {
            refuse(stream, &refusing, &builder, &engine);
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        let engine = engine.clone();
        engine.counters().http_connections.inc();
        tokio::spawn(async move {
            // Errors here are the client's (reset, timed out head, malformed request); hyper
            // has answered what it could.
            if let Err(e) = connection.await {
                tracing::debug!("connection ended: {e}");
            }
            engine.counters().http_connections.dec();
            drop(permit);
        });
    }
    drop(listener);
    tokio::time::timeout(drain_timeout, graceful.shutdown())
        .await
        .is_ok()
}

/// Answers one request on `stream` with 503 and closes it, if fewer than [`REFUSING_MAX`]
/// are being answered; else closes it at once.
fn refuse(stream: TcpStream, refusing: &Arc<Semaphore>, builder: &http1::Builder, engine: &Engine) {
    engine.counters().http_connections_refused.inc();
    let Ok(permit) = refusing.clone().try_acquire_owned() else {
        return;
    };
    let service = hyper::service::service_fn(|_request| async {
        Ok::<Response, Infallible>(ApiError::too_many_connections().into_response())
    });
    // Without keep-alive hyper closes the connection after the answer and says so in it
    // (`Connection: close`).
    let mut builder = builder.clone();
    builder.keep_alive(false);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_millis(REFUSAL_MAX_MS), connection).await;
        drop(permit);
    });
}

/// Accept errors caused by one client (it went away before we got to it): nothing to pause for.
fn is_client_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    )
}
