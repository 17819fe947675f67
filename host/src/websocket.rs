//! The WebSocket transport between workers: one connection from a worker
//! to each other worker it sends to, many envelopes in flight on it, each
//! answered by its id. Chosen by a `ws://` URL in a contact
//! (`url = "ws://127.0.0.1:7071"`); the worker at that address answers on
//! `GET /v1/ws` of its HTTP port.
//!
//! ## Frames
//!
//! Text frames of JSON, one envelope or answer each:
//!
//! - request: `{"id": 7, "envelope": {…}}`, the envelope as
//!   `POST /v1/envelopes` takes it;
//! - answer: `{"id": 7, "result": …}`, or `{"id": 7, "error": {"kind",
//!   "message", …}}` as the HTTP API answers. A frame that is not a
//!   request is answered `{"id": null, "error": …}` and the connection
//!   goes on.
//!
//! ## Limits (those of the HTTP front, `[http]` of `peerhost.toml`)
//!
//! A frame is at most the envelope limit ([`MAX_FRAME`]); at most
//! `max_connections` WebSocket connections at once (more are refused with
//! 503, the client backs off); a connection with no envelope in flight for
//! `idle_timeout_ms` is closed (the client opens a new one when it next
//! sends); at most [`IN_FLIGHT`] envelopes of one connection run at once,
//! the next ones wait to be read.
//!
//! ## The client
//!
//! [`Client`] connects on the first envelope to a URL and keeps the
//! connection while it lives. An envelope answered by no frame before its
//! deadline, or whose connection closes first, is `failed`: it may have
//! run, and sending it again is refused as a replay (at most once). A
//! connection refused or lost is tried again with a backoff (50 ms,
//! doubling up to [`MAX_BACKOFF`]) for as long as the invocation has time.

use crate::envelope::{Envelope, MAX_ENVELOPE};
use crate::error::{ErrorKind, InvocationError};
use crate::invocation::MAX_RESULT;
use crate::worker::{Delivering, Worker};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, oneshot};

/// The route of the WebSocket endpoint.
pub const PATH: &str = "/v1/ws";

/// Largest frame a worker reads: an envelope at its limit, and its id.
pub const MAX_FRAME: usize = MAX_ENVELOPE + 1_024;

/// Largest answer frame a client reads.
const MAX_ANSWER: usize = MAX_RESULT + 64 * 1_024;

/// Envelopes of one connection running at once.
pub const IN_FLIGHT: usize = 256;

/// Longest pause between two attempts to connect.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Takes a WebSocket connection to `worker` when fewer than the
/// `sockets` permits are in use, else 503.
pub fn upgrade(
    upgrade: WebSocketUpgrade,
    worker: Arc<Worker>,
    sockets: Arc<Semaphore>,
) -> Response {
    let Ok(permit) = sockets.try_acquire_owned() else {
        let error = InvocationError::limit(
            "too many WebSocket connections to this worker (`[http] max_connections`); retry later",
        );
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "error": error })),
        )
            .into_response();
    };
    let idle = Duration::from_millis(worker.deployment.config.http.idle_timeout_ms);
    upgrade
        .max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .on_upgrade(move |socket| async move {
            serve_socket(socket, worker, idle).await;
            drop(permit);
        })
}

/// Reads envelopes from `socket` and answers each as it completes, until
/// the peer worker closes it or it is idle for `idle`.
async fn serve_socket(socket: WebSocket, worker: Arc<Worker>, idle: Duration) {
    let (sink, mut stream) = socket.split();
    // Each answer is written by the task that has it, in turn.
    let sink = Arc::new(tokio::sync::Mutex::new(sink));
    let running = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut last = Instant::now();
    loop {
        let frame = tokio::select! {
            frame = stream.next() => frame,
            () = tokio::time::sleep(idle / 4) => {
                if running.available_permits() == IN_FLIGHT && last.elapsed() >= idle {
                    break;
                }
                continue;
            }
        };
        let bytes = match frame {
            Some(Ok(Message::Text(text))) => axum::body::Bytes::from(text),
            Some(Ok(Message::Binary(bytes))) => bytes,
            Some(Ok(Message::Close(_))) | None => break,
            Some(Ok(_)) => continue, // pings are answered by the socket itself
            Some(Err(e)) => {
                tracing::debug!(target: "peerhost::websocket", "a connection ended: {e}");
                break;
            }
        };
        last = Instant::now();
        let Ok(permit) = running.clone().acquire_owned().await else {
            break;
        };
        let (worker, sink) = (worker.clone(), sink.clone());
        tokio::spawn(async move {
            let answer = answer(&worker, &bytes).await;
            let _ = sink
                .lock()
                .await
                .send(Message::Text(answer.to_string().into()))
                .await;
            drop(permit);
        });
    }
    // The answers still running are sent (or find the other side gone),
    // then the socket is closed.
    let _ = running.acquire_many(IN_FLIGHT as u32).await;
    let _ = sink.lock().await.close().await;
}

/// The answer frame to the request frame `bytes`.
async fn answer(worker: &Arc<Worker>, bytes: &[u8]) -> Value {
    #[derive(serde::Deserialize)]
    struct Request {
        id: u64,
        envelope: Envelope,
    }
    if let Ok(Request { id, envelope }) = serde_json::from_slice::<Request>(bytes) {
        return match worker.accept(&envelope).await {
            Ok(result) => json!({ "id": id, "result": result }),
            Err(error) => json!({ "id": id, "error": worker.public(error) }),
        };
    }
    // Not a well-formed request: say what is wrong with it.
    let mut request: Value = match serde_json::from_slice(bytes) {
        Ok(request) => request,
        Err(e) => return refusal(Value::Null, format!("a frame is not JSON: {e}")),
    };
    let id = match &request["id"] {
        Value::Number(n) if n.is_u64() => Value::Number(n.clone()),
        _ => {
            return refusal(
                Value::Null,
                "a frame needs an `id`, a whole number".to_owned(),
            );
        }
    };
    let envelope = match request.get_mut("envelope").map(Value::take) {
        Some(envelope) => envelope,
        None => return refusal(id, "a frame needs an `envelope`".to_owned()),
    };
    let result = match serde_json::from_value::<Envelope>(envelope) {
        Ok(envelope) => worker.accept(&envelope).await,
        Err(e) => Err(InvocationError::from(
            crate::envelope::EnvelopeError::Malformed(e.to_string()),
        )),
    };
    match result {
        Ok(result) => json!({ "id": id, "result": result }),
        Err(error) => json!({ "id": id, "error": worker.public(error) }),
    }
}

fn refusal(id: Value, message: String) -> Value {
    json!({ "id": id, "error": InvocationError::invalid(message) })
}

/// The answers awaited on one connection, by id.
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, InvocationError>>>>>;

/// The sending half of a connection to a worker.
type Sink = futures::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tokio_tungstenite::tungstenite::Message,
>;

/// One open connection to a worker.
struct Link {
    /// Each envelope is written by the task sending it, in turn.
    sink: tokio::sync::Mutex<Sink>,
    pending: Pending,
    closed: Arc<AtomicBool>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

/// How the last attempt to connect to a URL went.
#[derive(Debug, Clone)]
struct Backoff {
    retry_at: Instant,
    pause: Duration,
    error: String,
}

#[derive(Debug, Default)]
struct Inner {
    links: Mutex<HashMap<String, Arc<Link>>>,
    backoff: Mutex<HashMap<String, Backoff>>,
    /// Held while connecting, so that envelopes sent at once to a new
    /// URL share one connection.
    connecting: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
}

/// The sending side: one multiplexed connection per `ws://` URL.
#[derive(Debug, Default, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Client {
    /// Sends `envelope` to the worker at `url` (`ws://host:port`), waiting
    /// at most `timeout` for its answer.
    pub fn deliver(&self, url: &str, envelope: Envelope, timeout: Duration) -> Delivering {
        let (client, url) = (self.clone(), url.trim_end_matches('/').to_owned());
        let deadline = Instant::now() + timeout;
        Box::pin(async move { client.exchange(&url, envelope, deadline).await })
    }

    async fn exchange(
        &self,
        url: &str,
        envelope: Envelope,
        deadline: Instant,
    ) -> Result<Value, InvocationError> {
        let link = self.link(url, deadline).await?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (answered, answer) = oneshot::channel();
        lock(&link.pending).insert(id, answered);
        let frame = json!({ "id": id, "envelope": envelope }).to_string();
        let sent = link
            .sink
            .lock()
            .await
            .send(tokio_tungstenite::tungstenite::Message::text(frame))
            .await;
        if sent.is_err() {
            link.closed.store(true, Ordering::Release);
            lock(&link.pending).remove(&id);
            return Err(InvocationError::failed(format!(
                "the WebSocket connection to {url} closed before the envelope was sent"
            )));
        }
        let may_have_run =
            "the envelope may have run; sending it again would be refused as a replay";
        match tokio::time::timeout_at(deadline.into(), answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(InvocationError::failed(format!(
                "the WebSocket connection to {url} closed before the answer: {may_have_run}"
            ))),
            Err(_) => {
                lock(&link.pending).remove(&id);
                Err(InvocationError::failed(format!(
                    "no answer from {url} over WebSocket in the time the invocation had left: {may_have_run}"
                )))
            }
        }
    }

    /// The open connection to `url`, made (with a backoff after failures)
    /// if there is none, before `deadline`.
    async fn link(&self, url: &str, deadline: Instant) -> Result<Arc<Link>, InvocationError> {
        let open = |inner: &Inner| {
            lock(&inner.links)
                .get(url)
                .filter(|link| !link.closed.load(Ordering::Acquire))
                .cloned()
        };
        if let Some(link) = open(&self.inner) {
            return Ok(link);
        }
        let _connecting = tokio::time::timeout_at(deadline.into(), self.inner.connecting.lock())
            .await
            .map_err(|_| unreachable(url, "no connection was made in time"))?;
        loop {
            if let Some(link) = open(&self.inner) {
                return Ok(link);
            }
            let last = lock(&self.inner.backoff).get(url).cloned();
            if let Some(last) = &last
                && last.retry_at > Instant::now()
            {
                if last.retry_at >= deadline {
                    return Err(unreachable(url, &last.error));
                }
                tokio::time::sleep_until(last.retry_at.into()).await;
            }
            let error = match tokio::time::timeout_at(deadline.into(), connect(url)).await {
                Ok(Ok(link)) => {
                    let link = Arc::new(link);
                    lock(&self.inner.links).insert(url.to_owned(), link.clone());
                    lock(&self.inner.backoff).remove(url);
                    return Ok(link);
                }
                Ok(Err(e)) => e,
                Err(_) => return Err(unreachable(url, "no connection was made in time")),
            };
            let pause = last.map_or(Duration::from_millis(50), |l| {
                (l.pause * 2).min(MAX_BACKOFF)
            });
            tracing::warn!(target: "peerhost::websocket", "cannot connect to {url}: {error}; again in {pause:?}");
            lock(&self.inner.backoff).insert(
                url.to_owned(),
                Backoff {
                    retry_at: Instant::now() + pause,
                    pause,
                    error,
                },
            );
        }
    }
}

fn unreachable(url: &str, why: &str) -> InvocationError {
    InvocationError::new(
        ErrorKind::Failed,
        format!("cannot reach the worker at {url} over WebSocket: {why}"),
    )
}

/// Opens a connection to the worker at `url` and starts its reader.
async fn connect(url: &str) -> Result<Link, String> {
    use tokio_tungstenite::tungstenite::Message as Frame;
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_ANSWER))
        .max_frame_size(Some(MAX_ANSWER));
    let (socket, _) =
        tokio_tungstenite::connect_async_with_config(format!("{url}{PATH}"), Some(config), true)
            .await
            .map_err(|e| e.to_string())?;
    let (sink, mut stream) = socket.split();
    let pending: Pending = Arc::default();
    let closed = Arc::new(AtomicBool::new(false));
    {
        let (pending, closed) = (pending.clone(), closed.clone());
        tokio::spawn(async move {
            while let Some(frame) = stream.next().await {
                let bytes = match frame {
                    Ok(Frame::Text(text)) => text.as_bytes().to_vec(),
                    Ok(Frame::Binary(bytes)) => bytes.to_vec(),
                    Ok(Frame::Close(_)) | Err(_) => break,
                    Ok(_) => continue,
                };
                deliver(&pending, &bytes);
            }
            closed.store(true, Ordering::Release);
            // Each sender dropped: its envelope is answered as cut off.
            lock(&pending).clear();
        });
    }
    Ok(Link {
        sink: tokio::sync::Mutex::new(sink),
        pending,
        closed,
    })
}

/// Hands the answer frame `bytes` to the envelope awaiting it.
fn deliver(pending: &Pending, bytes: &[u8]) {
    let Ok(answer) = serde_json::from_slice::<Value>(bytes) else {
        tracing::warn!(target: "peerhost::websocket", "an answer frame is not JSON");
        return;
    };
    let Some(id) = answer["id"].as_u64() else {
        tracing::warn!(target: "peerhost::websocket", "a worker refused a frame: {}", answer["error"]);
        return;
    };
    let Some(awaiting) = lock(pending).remove(&id) else {
        return; // its envelope gave up waiting
    };
    let result = match answer.get("error") {
        Some(_) => Err(crate::client::error_of(&answer)),
        None => Ok(answer.get("result").cloned().unwrap_or(Value::Null)),
    };
    let _ = awaiting.send(result);
}
