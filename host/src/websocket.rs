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
//! A frame is at most the envelope limit ([`MAX_FRAME`]; a bigger one, or
//! any frame that cannot be read, ends the connection); at most
//! `max_connections` WebSocket connections at once, counted apart from the
//! HTTP connections (more are refused with 503, the client backs off); a
//! connection with no envelope in flight and no frame read or answer
//! written for `idle_timeout_ms` is closed (the client opens a new one
//! when it next sends; pings do not keep it open); at most [`IN_FLIGHT`]
//! envelopes of one connection run at once, the next ones wait to be
//! read; an answer not taken within [`WRITE_WAIT`] ends the connection.
//! When a connection ends, the envelopes still running there finish but
//! their answers are lost; a worker shutting down cuts its WebSockets.
//!
//! ## The client
//!
//! [`Client`] connects on the first envelope to a URL and keeps the
//! connection while it lives. An envelope answered by no frame before its
//! deadline, or whose connection closes first, is `failed`: it may have
//! run, and sending it again is refused as a replay (at most once). An
//! envelope bigger than a frame is refused (`limit`) before it is sent. A
//! connection refused or lost is tried again with a backoff (50 ms,
//! doubling up to [`MAX_BACKOFF`]) for as long as the invocation has time,
//! each URL on its own; a connection on which nothing came while an
//! envelope waited for its answer in vain is given up for a new one.

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

/// How long an answer (at the worker) or an envelope (at the sender) may
/// take to be written before the connection is given up.
pub const WRITE_WAIT: Duration = Duration::from_secs(10);

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
/// the peer worker closes it, a frame cannot be read or an answer cannot
/// be written within [`WRITE_WAIT`], or nothing has been in flight for
/// `idle`. Envelopes still running then find the socket closed.
async fn serve_socket(socket: WebSocket, worker: Arc<Worker>, idle: Duration) {
    let (sink, mut stream) = socket.split();
    // Each answer is written by the task that has it, in turn.
    let sink = Arc::new(tokio::sync::Mutex::new(sink));
    let running = Arc::new(Semaphore::new(IN_FLIGHT));
    let broken = Arc::new(tokio::sync::Notify::new());
    // The last frame read or answer written, in ms since `opened`.
    let opened = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let since = move |at: &AtomicU64| {
        opened
            .elapsed()
            .saturating_sub(Duration::from_millis(at.load(Ordering::Acquire)))
    };
    let mut check = tokio::time::interval((idle / 4).max(Duration::from_millis(10)));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let frame = tokio::select! {
            frame = stream.next() => frame,
            () = broken.notified() => break,
            _ = check.tick() => {
                if running.available_permits() == IN_FLIGHT && since(&last) >= idle {
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
        last.store(opened.elapsed().as_millis() as u64, Ordering::Release);
        // At IN_FLIGHT envelopes running, the next frame waits to be read.
        let permit = tokio::select! {
            permit = running.clone().acquire_owned() => permit,
            () = broken.notified() => break,
        };
        let Ok(permit) = permit else { break };
        let (worker, sink, broken, last) =
            (worker.clone(), sink.clone(), broken.clone(), last.clone());
        tokio::spawn(async move {
            let answer = answer(&worker, &bytes).await.to_string();
            drop(bytes);
            let sent = tokio::time::timeout(WRITE_WAIT, async {
                sink.lock().await.send(Message::Text(answer.into())).await
            })
            .await;
            match sent {
                Ok(Ok(())) => last.store(opened.elapsed().as_millis() as u64, Ordering::Release),
                // The other side does not read, or is gone: end the socket.
                _ => broken.notify_one(),
            }
            drop(permit);
        });
    }
    let _ = tokio::time::timeout(WRITE_WAIT, async { sink.lock().await.close().await }).await;
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
    /// When the connection was made, and when its last frame came (in ms
    /// since then).
    opened: Instant,
    last_frame: Arc<AtomicU64>,
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
    /// Held while connecting to a URL, so that envelopes sent at once to
    /// a new URL share one connection.
    connecting: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
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
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = json!({ "id": id, "envelope": envelope }).to_string();
        // Refused here as the worker would refuse it, without costing the
        // connection the other envelopes share.
        if frame.len() > MAX_FRAME {
            return Err(crate::envelope::EnvelopeError::TooLarge(frame.len()).into());
        }
        let link = self.link(url, deadline).await?;
        let (answered, answer) = oneshot::channel();
        lock(&link.pending).insert(id, answered);
        let asked = link.opened.elapsed();
        let write_by = deadline.min(Instant::now() + WRITE_WAIT);
        let sent = tokio::time::timeout_at(write_by.into(), async {
            link.sink
                .lock()
                .await
                .send(tokio_tungstenite::tungstenite::Message::text(frame))
                .await
        })
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            link.closed.store(true, Ordering::Release);
            lock(&link.pending).remove(&id);
            return Err(InvocationError::failed(format!(
                "the WebSocket connection to {url} could not take the envelope (closed, or not \
                 read for {WRITE_WAIT:?}); it was not sent"
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
                // Nothing at all came on the connection while this waited:
                // it may be dead without a word (a host gone); the next
                // envelope opens another.
                if Duration::from_millis(link.last_frame.load(Ordering::Acquire)) < asked {
                    link.closed.store(true, Ordering::Release);
                }
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
        // One connection attempt at a time per URL; other URLs go on.
        let connecting = lock(&self.inner.connecting)
            .entry(url.to_owned())
            .or_default()
            .clone();
        let _connecting = tokio::time::timeout_at(deadline.into(), connecting.lock())
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
    let opened = Instant::now();
    let last_frame = Arc::new(AtomicU64::new(0));
    {
        let (pending, closed, last_frame) = (pending.clone(), closed.clone(), last_frame.clone());
        tokio::spawn(async move {
            while let Some(frame) = stream.next().await {
                last_frame.store(opened.elapsed().as_millis() as u64, Ordering::Release);
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
        opened,
        last_frame,
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
