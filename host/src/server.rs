//! The HTTP API of `peerhost serve` (axum on hyper).
//!
//! - `GET /healthz`: `ok`.
//! - `GET /v1/peers`: `{"peers": ["alice", …]}`, the peers hosted here.
//! - `POST /v1/peers/{peer}/call/{function}`: body = JSON args (an array of
//!   positional arguments, or one value; empty = no arguments).
//! - `POST /v1/peers/{peer}/eval`: body = `{"script": "…", "params": …}`.
//! - `POST /v1/envelopes`: body = a signed envelope (see [`crate::envelope`]);
//!   runs at the envelope's target as its verified caller.
//! - `GET /v1/ws`: a WebSocket of envelopes from another worker, many in
//!   flight, each answered by its id (see [`crate::websocket`]).
//! - `/console`: the operator's read-only web console (see
//!   [`crate::console`]), behind the token of `console.token`.
//! - `GET /metrics`: the worker's metrics (see [`crate::metrics`]), to
//!   loopback clients, unless `[metrics]` moves them to their own address
//!   ([`metrics_router`]) or turns them off.
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
use crate::invocation::Invocation;
use crate::worker::Worker;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper::service::Service as _;
use serde::Deserialize;
use serde_json::{Value, json};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The skeleton's unauthenticated caller header, now refused.
pub const CALLER_HEADER: &str = "peerhost-caller";

/// Largest request body, in bytes: the size limit of an envelope too.
pub const MAX_BODY: usize = crate::envelope::MAX_ENVELOPE;

/// The API's router over `worker`, bodies read within the worker's
/// `body_timeout_ms`.
pub fn router(worker: Arc<Worker>) -> Router {
    let body_timeout = Duration::from_millis(worker.deployment.config.http.body_timeout_ms);
    let metrics = worker.deployment.metrics.clone();
    let metrics_here = worker.deployment.config.metrics.enabled
        && worker.deployment.config.metrics.listen.is_none();
    // WebSocket connections leave the HTTP server once upgraded: they are
    // counted here, apart, up to `max_connections` of their own.
    let sockets = Arc::new(tokio::sync::Semaphore::new(
        usize::try_from(worker.deployment.config.http.max_connections).unwrap_or(usize::MAX),
    ));
    let router = Router::new();
    let router = if metrics_here {
        router.route("/metrics", get(loopback_metrics))
    } else {
        router
    };
    let router = match crate::console::router(worker.clone()) {
        Some(console) => router.nest("/console", console),
        None => router,
    };
    router
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/peers", get(list_peers))
        .route("/v1/peers/{peer}/call/{function}", post(call))
        .route("/v1/peers/{peer}/eval", post(eval))
        .route("/v1/peers/{peer}/logic", get(logic))
        .route("/v1/peers/{peer}/logic/{*module}", get(logic_module))
        .route("/v1/envelopes", post(envelope))
        .route(
            crate::websocket::PATH,
            get(
                move |upgrade: axum::extract::ws::WebSocketUpgrade,
                      State(worker): State<Arc<Worker>>| async move {
                    crate::websocket::upgrade(upgrade, worker, sockets)
                },
            ),
        )
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
            (body_timeout, metrics.clone()),
            body_in_time,
        ))
        .layer(axum::middleware::from_fn_with_state(metrics, counted))
        .with_state(worker)
}

/// The router of `[metrics] listen`, the metrics' own address: `/metrics`
/// only, to whoever reaches it.
pub fn metrics_router(worker: Arc<Worker>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(
                |State(worker): State<Arc<Worker>>, headers: HeaderMap| async move {
                    exposition(&worker, &headers).await
                },
            ),
        )
        .fallback(|| async {
            error_response(InvocationError::not_found(
                "this address serves GET /metrics only",
            ))
        })
        .with_state(worker)
}

/// `GET /metrics` on the API's address: for loopback clients only (an
/// operator wanting it elsewhere gives it its own `[metrics] listen`).
async fn loopback_metrics(
    State(worker): State<Arc<Worker>>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
) -> Response {
    let client = extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip());
    if !client.is_some_and(|ip| ip.to_canonical().is_loopback()) {
        return error_response(InvocationError::new(
            crate::error::ErrorKind::Denied,
            "/metrics is served to loopback clients only on this address; \
             give it its own with `[metrics] listen` in peerhost.toml",
        ));
    }
    exposition(&worker, &headers).await
}

/// The worker's metrics, their storage sizes measured now, in the format
/// the `Accept` header asks for: OpenMetrics, else the Prometheus text
/// format.
async fn exposition(worker: &Arc<Worker>, headers: &HeaderMap) -> Response {
    // One scrape at a time; the rest are told to come back.
    let Ok(_scraping) = worker.deployment.metrics.scraping.try_acquire() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, "1")],
            "another scrape is being answered\n",
        )
            .into_response();
    };
    let measuring = worker.clone();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::task::spawn_blocking(move || measuring.measure_storage()),
    )
    .await;
    let openmetrics = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(crate::metrics::wants_openmetrics);
    let content_type = if openmetrics {
        crate::metrics::OPENMETRICS_TEXT
    } else {
        crate::metrics::PROMETHEUS_TEXT
    };
    (
        [(axum::http::header::CONTENT_TYPE, content_type)],
        worker.deployment.metrics.encode(openmetrics),
    )
        .into_response()
}

/// Counts every answer by status, and the bytes of its body when known.
async fn counted(
    State(metrics): State<Arc<crate::metrics::Metrics>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use axum::body::HttpBody as _;
    let response = next.run(request).await;
    metrics
        .http_requests
        .get_or_create(&crate::metrics::StatusLabels {
            status: response.status().as_u16(),
        })
        .inc();
    if let Some(bytes) = response.body().size_hint().exact() {
        metrics.http_sent_bytes.inc_by(bytes);
    }
    response
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
/// `body_timeout_ms` and [`MAX_BODY`]. Each connection has a watchdog
/// that counts requests, not bytes: a connection is closed when no request
/// has started within `header_timeout_ms` of accept, or none has been in
/// flight for `idle_timeout_ms` since its last answer was ready, whatever
/// it sends meanwhile (HTTP/2 PINGs, a trickled head).
pub async fn serve(
    listener: TcpListener,
    worker: Arc<Worker>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
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
    let app = router(worker.clone());
    let stopping = worker.clone();
    front(listener, app, &worker, shutdown, move || {
        stopping.begin_stopping()
    })
    .await;
    saver.abort();
    let _ = tokio::task::spawn_blocking(move || worker.save_usage()).await;
    Ok(())
}

/// Serves `/metrics` alone ([`metrics_router`]) on `listener`, the
/// address of `[metrics] listen`, behind the same front as the API (the
/// `[http]` limits), until `shutdown` resolves.
pub async fn serve_metrics(
    listener: TcpListener,
    worker: Arc<Worker>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = metrics_router(worker.clone());
    front(listener, app, &worker, shutdown, || {}).await;
    Ok(())
}

/// The front of [`serve`]: accepts connections on `listener` up to the
/// worker's `[http]` limits and serves `app` on each until `shutdown`;
/// then calls `on_stop` and drains in-flight requests for at most
/// [`DRAIN`].
async fn front(
    listener: TcpListener,
    app: Router,
    worker: &Arc<Worker>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_stop: impl FnOnce(),
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let limits = worker.deployment.config.http;
    let ms = Duration::from_millis;
    let metrics = worker.deployment.metrics.clone();
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
    let (stopping, _) = watch::channel(false);
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
        let (stream, client) = match stream {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors or a connection reset before accept:
                // the listener itself is fine; breathe and go on.
                tracing::warn!(target: "peerhost::http", "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // The connection's service counts its requests for its watchdog.
        let requests = Arc::new(watch::Sender::new(Requests::default()));
        let service = {
            let app = hyper_util::service::TowerToHyperService::new(app.clone());
            let requests = requests.clone();
            hyper::service::service_fn(move |mut request: hyper::Request<_>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(client));
                let in_flight = InFlight::start(requests.clone());
                let answer = app.call(request);
                async move {
                    let answer = answer.await;
                    // A live answer (the console's tail) is in flight until
                    // its body ends; any other once its head is ready.
                    answer.map(|response| {
                        if response
                            .extensions()
                            .get::<crate::console::LiveAnswer>()
                            .is_some()
                        {
                            response.map(|body| {
                                axum::body::Body::new(HeldBody {
                                    body,
                                    _in_flight: in_flight,
                                })
                            })
                        } else {
                            drop(in_flight);
                            response
                        }
                    })
                }
            })
        };
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let watchdog = watchdog(
            requests.subscribe(),
            ms(limits.header_timeout_ms),
            ms(limits.idle_timeout_ms),
        );
        let stopping = stopping.subscribe();
        metrics.http_connections.inc();
        metrics.http_connections_open.inc();
        let open = metrics.http_connections_open.clone();
        tokio::spawn(async move {
            drive(
                connection,
                |connection| connection.graceful_shutdown(),
                watchdog,
                stopping,
            )
            .await;
            open.dec();
            drop(permit);
        });
    }
    drop(listener);
    on_stop();
    // Each connection holds a receiver of `stopping`: closed = all ended.
    stopping.send_replace(true);
    tokio::select! {
        () = stopping.closed() => {}
        () = tokio::time::sleep(DRAIN) => {
            tracing::warn!(target: "peerhost::http", "requests still running after {DRAIN:?}; leaving them");
        }
    }
}

/// Reads the request body within `timeout` (a client trickling its body
/// holds a connection no longer), then hands the request on.
async fn body_in_time(
    State((timeout, metrics)): State<(Duration, Arc<crate::metrics::Metrics>)>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(bytes)) => {
            metrics
                .http_received_bytes
                .inc_by(u64::try_from(bytes.len()).unwrap_or(u64::MAX));
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

/// How long a connection being closed (by its watchdog, or by a stopping
/// server once its watchdog fires too) may take to say goodbye: an HTTP/2
/// GOAWAY, the rest of an answer. Then it is dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Serves one connection until it ends, its watchdog finds it without a
/// request for too long, or the server stops. Then `close` begins a
/// graceful shutdown; the connection has [`CLOSE_GRACE`] to finish it
/// before it is dropped (when the server stops, requests in flight finish
/// first, the watchdog still watching).
async fn drive<C, E>(
    connection: C,
    close: impl FnOnce(Pin<&mut C>),
    watchdog: impl Future<Output = Quiet>,
    mut stopping: watch::Receiver<bool>,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut connection = std::pin::pin!(connection);
    let mut watchdog = std::pin::pin!(watchdog);
    let quiet = tokio::select! {
        ended = connection.as_mut() => return report(ended),
        quiet = &mut watchdog => Some(quiet),
        () = stopped(&mut stopping) => None,
    };
    match quiet {
        Some(quiet) => tracing::debug!(target: "peerhost::http", "closing a connection: {quiet}"),
        None => {
            tracing::debug!(target: "peerhost::http", "closing a connection: the server is stopping")
        }
    }
    close(connection.as_mut());
    let grace = async {
        if quiet.is_none() {
            let quiet = (&mut watchdog).await;
            tracing::debug!(target: "peerhost::http", "closing a connection: {quiet}");
        }
        tokio::time::sleep(CLOSE_GRACE).await;
    };
    tokio::select! {
        ended = connection => report(ended),
        () = grace => tracing::debug!(target: "peerhost::http", "connection dropped after {CLOSE_GRACE:?} closing"),
    }
}

fn report<E: std::fmt::Display>(ended: Result<(), E>) {
    if let Err(e) = ended {
        tracing::debug!(target: "peerhost::http", "connection ended: {e}");
    }
}

/// Resolves once the server stops (or is gone).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

/// What one connection's watchdog reads: its requests so far.
#[derive(Clone, Copy, Debug, Default)]
struct Requests {
    /// Requests whose head arrived whole and reached the router.
    started: u64,
    /// Requests started whose answer is not ready yet.
    in_flight: u64,
}

/// One request in flight on its connection, from the moment its head
/// reached the router until its answer is ready (or the request is
/// dropped, e.g. an HTTP/2 stream reset).
struct InFlight(Arc<watch::Sender<Requests>>);

/// A body that keeps its request counted in flight until it is dropped.
struct HeldBody {
    body: axum::body::Body,
    _in_flight: InFlight,
}

impl axum::body::HttpBody for HeldBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl InFlight {
    fn start(requests: Arc<watch::Sender<Requests>>) -> InFlight {
        requests.send_modify(|r| {
            r.started = r.started.saturating_add(1);
            r.in_flight = r.in_flight.saturating_add(1);
        });
        InFlight(requests)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .send_modify(|r| r.in_flight = r.in_flight.saturating_sub(1));
    }
}

/// Why a watchdog closes its connection.
#[derive(Clone, Copy, Debug)]
enum Quiet {
    /// No request started within `header_timeout_ms` of accept.
    NoRequest(Duration),
    /// No request in flight for `idle_timeout_ms`.
    Idle(Duration),
}

impl std::fmt::Display for Quiet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Quiet::NoRequest(limit) => write!(f, "no request within {limit:?} of accept"),
            Quiet::Idle(limit) => write!(f, "no request in flight for {limit:?}"),
        }
    }
}

/// Resolves when the connection counted by `requests` has gone without a
/// request for too long: none started within `header_timeout` of accept,
/// or none in flight for `idle_timeout` since the last answer was ready.
/// Only requests count: bytes (an HTTP/2 PING, a trickled head, TCP
/// keep-alives) keep no connection open.
async fn watchdog(
    mut requests: watch::Receiver<Requests>,
    header_timeout: Duration,
    idle_timeout: Duration,
) -> Quiet {
    loop {
        let now = *requests.borrow_and_update();
        let changed = if now.in_flight > 0 {
            // Requests in flight are bounded by their own limits
            // (`body_timeout_ms`, `wall_time_ms`): wait for them.
            requests.changed().await
        } else {
            let (limit, quiet) = if now.started == 0 {
                (header_timeout, Quiet::NoRequest(header_timeout))
            } else {
                (idle_timeout, Quiet::Idle(idle_timeout))
            };
            match tokio::time::timeout(limit, requests.changed()).await {
                Ok(changed) => changed,
                Err(_) => return quiet,
            }
        };
        if changed.is_err() {
            // The connection (which holds the sender) is gone: nothing
            // left to watch, and nothing left to close.
            return std::future::pending().await;
        }
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

/// The answer to a request `worker` ran: errors leave the host naming
/// files relative to the deployment, never by their host path.
fn result_response(worker: &Worker, result: Result<Value, InvocationError>) -> Response {
    match result {
        Ok(value) => axum::Json(value).into_response(),
        Err(error) => error_response(worker.public(error)),
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
            .invoke_anonymous(&peer, Invocation::Call { function, args }, traced(&headers))
            .await
    };
    result_response(&worker, run.await)
}

/// The W3C `traceparent` of an unsigned request: the invocation joins
/// that trace. One that does not parse is ignored (the invocation starts a
/// trace of its own), as W3C trace context asks.
fn traced(headers: &HeaderMap) -> Option<crate::trace::TraceContext> {
    let header = headers.get("traceparent")?.to_str().ok()?;
    match crate::trace::TraceContext::parse(header.trim()) {
        Ok(context) => Some(context),
        Err(e) => {
            tracing::debug!(target: "peerhost::http", "ignoring the request's traceparent: {e}");
            None
        }
    }
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
            .invoke_anonymous(
                &peer,
                Invocation::Script { script, params },
                traced(&headers),
            )
            .await
    };
    result_response(&worker, run.await)
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
            .invoke_anonymous(&peer, Invocation::ShowLogic { module }, traced(&headers))
            .await
    };
    result_response(&worker, run.await)
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
    result_response(&worker, run.await)
}

/// Kind of an error body returned by the API, for clients.
pub fn kind_of(body: &Value) -> Option<ErrorKind> {
    ErrorKind::parse(body.get("error")?.get("kind")?.as_str()?)
}
