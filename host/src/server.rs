//! The HTTP API of `peerhost serve` (axum on hyper).
//!
//! - `GET /healthz`: `ok`.
//! - `GET /v1/peers`: `{"peers": ["alice", …]}`, the peers hosted here.
//! - `POST /v1/peers/{peer}/call/{function}`: body = JSON args (an array of
//!   positional arguments, or one value; empty = no arguments).
//! - `POST /v1/peers/{peer}/eval`: body = `{"script": "…", "params": …}`.
//! - `POST /v1/envelopes`: body = a signed envelope (see [`crate::envelope`]);
//!   runs at the envelope's target as its verified caller.
//!
//! `call` and `eval` are unsigned: they run as `anonymous`, whatever the
//! request says. The skeleton's `peerhost-caller` header is refused (400):
//! an unsigned request never acts as a peer. To act as a peer, its owner
//! signs an envelope (`peerhost call|eval --as`, `peerhost send`).
//!
//! Results are `200` with the JSON result; errors are
//! `{"error": {"kind", "message"[, "action", "resource"]}}` with 403 denied,
//! 404 not-found, 400 invalid, 413 limit, 500 failed; a caller over its
//! quota gets 429 with `Retry-After` and `"retry_after_ms"`.

use crate::envelope::Envelope;
use crate::error::{ErrorKind, InvocationError, parse_json};
use crate::runtime::Invocation;
use crate::worker::Worker;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The skeleton's unauthenticated caller header, now refused.
pub const CALLER_HEADER: &str = "peerhost-caller";

/// Largest request body, in bytes: the size limit of an envelope too.
pub const MAX_BODY: usize = crate::envelope::MAX_ENVELOPE;

/// The API's router over `worker`, bodies read within the worker's
/// `body_timeout_ms`.
pub fn router(worker: Arc<Worker>) -> Router {
    let body_timeout = Duration::from_millis(worker.deployment.config.http.body_timeout_ms);
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/peers", get(list_peers))
        .route("/v1/peers/{peer}/call/{function}", post(call))
        .route("/v1/peers/{peer}/eval", post(eval))
        .route("/v1/peers/{peer}/logic", get(logic))
        .route("/v1/peers/{peer}/logic/{*module}", get(logic_module))
        .route("/v1/envelopes", post(envelope))
        .fallback(|| async {
            error_response(InvocationError::not_found(
                "no such route; see GET /v1/peers",
            ))
        })
        .method_not_allowed_fallback(|| async {
            let error = InvocationError::invalid(
                "method not allowed: calls and evals are POST, the rest GET",
            );
            (
                StatusCode::METHOD_NOT_ALLOWED,
                axum::Json(json!({ "error": error })),
            )
                .into_response()
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            body_timeout,
            body_in_time,
        ))
        .with_state(worker)
}

/// How often usage is written to `peers/<name>/audit/usage.json`.
pub const USAGE_EVERY: Duration = Duration::from_secs(2);

/// How long in-flight requests may take to finish once shutdown begins.
pub const DRAIN: Duration = Duration::from_secs(30);

/// Largest request head (request line and headers) a client may send;
/// more is answered 431 and the connection closed.
pub const MAX_HEAD: usize = 64 * 1024;

/// Most headers in one request; more is answered 431.
pub const MAX_HEADERS: usize = 100;

/// Serves the API on `listener` until `shutdown` resolves, then drains
/// in-flight requests (for at most [`DRAIN`]).
///
/// The front holds what a slow or greedy client may take to the
/// `[http]` limits of `peerhost.toml`: at most `max_connections` at once
/// (the rest wait in the listen backlog), request heads within
/// `header_timeout_ms`, [`MAX_HEAD`] and [`MAX_HEADERS`], bodies within
/// `body_timeout_ms` and [`MAX_BODY`], and no connection silent both ways
/// for longer than `idle_timeout_ms`.
pub async fn serve(
    listener: TcpListener,
    worker: Arc<Worker>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let limits = worker.deployment.config.http;
    let ms = Duration::from_millis;
    // Usage (caller pays) reaches peers/<name>/audit/usage.json every
    // USAGE_EVERY, and once more when the server stops.
    let saver = {
        let worker = worker.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(USAGE_EVERY);
            loop {
                every.tick().await;
                let worker = worker.clone();
                let _ = tokio::task::spawn_blocking(move || worker.save_usage()).await;
            }
        })
    };
    let usage_of = worker.clone();
    let app = router(worker);
    let permits = Arc::new(tokio::sync::Semaphore::new(
        usize::try_from(limits.max_connections).unwrap_or(usize::MAX),
    ));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(ms(limits.header_timeout_ms))
        .max_buf_size(MAX_HEAD)
        .max_headers(MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(64)
        .max_header_list_size(u32::try_from(MAX_HEAD).unwrap_or(u32::MAX))
        .keep_alive_interval(ms(limits.idle_timeout_ms) / 2)
        .keep_alive_timeout(ms(limits.header_timeout_ms));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit,
            () = &mut shutdown => break,
        };
        let Ok(permit) = permit else { break };
        let stream = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match stream {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors or a connection reset before accept:
                // the listener itself is fine; breathe and go on.
                tracing::warn!(target: "peerhost::http", "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(Idle::new(stream, ms(limits.idle_timeout_ms)));
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = builder
            .serve_connection_with_upgrades(io, service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(target: "peerhost::http", "connection ended: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN) => {
            tracing::warn!(target: "peerhost::http", "requests still running after {DRAIN:?}; leaving them");
        }
    }
    saver.abort();
    let _ = tokio::task::spawn_blocking(move || usage_of.save_usage()).await;
    Ok(())
}

/// Reads the request body within `timeout` (a client trickling its body
/// holds a connection no longer), then hands the request on.
async fn body_in_time(
    State(timeout): State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(bytes)) => {
            next.run(axum::extract::Request::from_parts(
                parts,
                axum::body::Body::from(bytes),
            ))
            .await
        }
        Ok(Err(_)) => error_response(InvocationError::limit(format!(
            "the request body is over the {MAX_BODY}-byte limit"
        ))),
        Err(_) => {
            let error = InvocationError::limit(format!(
                "the request body did not arrive within {timeout:?}"
            ));
            (
                StatusCode::REQUEST_TIMEOUT,
                axum::Json(json!({ "error": error })),
            )
                .into_response()
        }
    }
}

/// A connection that fails once it has been silent both ways (nothing read,
/// nothing written) for `limit`: a client that opens connections and says
/// nothing, or stops reading its answers, cannot hold them.
struct Idle {
    stream: tokio::net::TcpStream,
    limit: Duration,
    /// The last byte read or written. Recorded, not armed: the timer is
    /// moved only when it fires early, so a busy connection does not touch
    /// the timer wheel on every read.
    last: tokio::time::Instant,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Idle {
    fn new(stream: tokio::net::TcpStream, limit: Duration) -> Idle {
        Idle {
            stream,
            limit,
            last: tokio::time::Instant::now(),
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }

    fn active(&mut self) {
        self.last = tokio::time::Instant::now();
    }

    /// Whether the connection has been silent for the whole limit; re-arms
    /// the timer for the true deadline when there was activity since.
    fn expired(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        loop {
            if self.deadline.as_mut().poll(cx).is_pending() {
                return false;
            }
            let due = self.last + self.limit;
            if due <= tokio::time::Instant::now() {
                return true;
            }
            self.deadline.as_mut().reset(due);
        }
    }
}

fn idle_error() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "connection idle too long")
}

impl tokio::io::AsyncRead for Idle {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.active();
                }
                Poll::Ready(result)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl tokio::io::AsyncWrite for Idle {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        match std::pin::Pin::new(&mut self.stream).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                self.active();
                Poll::Ready(Ok(n))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            other => other,
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

fn error_response(error: InvocationError) -> Response {
    if let Some(ms) = error.retry_after_ms {
        // Over quota: 429, and when to come back (whole seconds, rounded up).
        let seconds = ms.div_ceil(1000).max(1).to_string();
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(axum::http::header::RETRY_AFTER, seconds)],
            axum::Json(json!({ "error": error })),
        )
            .into_response();
    }
    let status =
        StatusCode::from_u16(error.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(json!({ "error": error }))).into_response()
}

fn result_response(result: Result<Value, InvocationError>) -> Response {
    match result {
        Ok(value) => axum::Json(value).into_response(),
        Err(error) => error_response(error),
    }
}

/// Refuses a request that claims a caller without a signature.
fn unsigned(headers: &HeaderMap) -> Result<(), InvocationError> {
    if headers.contains_key(CALLER_HEADER) {
        return Err(InvocationError::invalid(format!(
            "the {CALLER_HEADER} header is not accepted: unsigned requests run as `anonymous`; \
             to act as a peer, sign an envelope (POST /v1/envelopes, `peerhost send`)"
        )));
    }
    Ok(())
}

/// The request body, or the typed error for one that could not be read
/// (over [`MAX_BODY`]: `limit`).
fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, InvocationError> {
    body.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            InvocationError::limit(format!(
                "the request body is over the {MAX_BODY}-byte limit"
            ))
        } else {
            InvocationError::invalid(format!("cannot read the request body: {rejection}"))
        }
    })
}

async fn list_peers(State(worker): State<Arc<Worker>>) -> Response {
    axum::Json(json!({ "peers": worker.peer_names() })).into_response()
}

async fn call(
    State(worker): State<Arc<Worker>>,
    Path((peer, function)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = async {
        unsigned(&headers)?;
        let body = body_bytes(body)?;
        // An empty body is a call without arguments.
        let args = if body.iter().all(u8::is_ascii_whitespace) {
            Value::Array(Vec::new())
        } else {
            parse_json(&body, "the request body (call arguments)")?
        };
        worker
            .invoke_anonymous(&peer, Invocation::Call { function, args })
            .await
    };
    result_response(run.await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EvalBody {
    script: String,
    #[serde(default)]
    params: Value,
}

async fn eval(
    State(worker): State<Arc<Worker>>,
    Path(peer): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = async {
        unsigned(&headers)?;
        let body = body_bytes(body)?;
        let value = parse_json(&body, "the request body")?;
        let EvalBody { script, params } = serde_json::from_value(value).map_err(|e| {
            InvocationError::invalid(format!(
                "the request body must be {{\"script\": \"…\", \"params\": …}}: {e}"
            ))
        })?;
        worker
            .invoke_anonymous(&peer, Invocation::Script { script, params })
            .await
    };
    result_response(run.await)
}

/// `GET /v1/peers/{peer}/logic`: the peer's modules, exported functions,
/// doc comments and sources, where its policy grants `anonymous` the
/// action `logic.read` (signed callers send a `logic` envelope).
async fn logic(
    State(worker): State<Arc<Worker>>,
    Path(peer): Path<String>,
    headers: HeaderMap,
) -> Response {
    show_logic(worker, peer, None, headers).await
}

/// `GET /v1/peers/{peer}/logic/{module}`: one module (`main`, `text`, `lib/text`).
async fn logic_module(
    State(worker): State<Arc<Worker>>,
    Path((peer, module)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    show_logic(worker, peer, Some(module), headers).await
}

async fn show_logic(
    worker: Arc<Worker>,
    peer: String,
    module: Option<String>,
    headers: HeaderMap,
) -> Response {
    let run = async {
        unsigned(&headers)?;
        worker
            .invoke_anonymous(&peer, Invocation::ShowLogic { module })
            .await
    };
    result_response(run.await)
}

async fn envelope(
    State(worker): State<Arc<Worker>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = async {
        let body = body_bytes(body)?;
        let envelope = Envelope::from_json(&body)?;
        worker.accept(&envelope).await
    };
    result_response(run.await)
}

/// Kind of an error body returned by the API, for clients.
pub fn kind_of(body: &Value) -> Option<ErrorKind> {
    ErrorKind::parse(body.get("error")?.get("kind")?.as_str()?)
}
