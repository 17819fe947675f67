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
//! 404 not-found, 400 invalid, 413 limit, 500 failed.

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
use tokio::net::TcpListener;

/// The skeleton's unauthenticated caller header, now refused.
pub const CALLER_HEADER: &str = "peerhost-caller";

/// Largest request body, in bytes: the size limit of an envelope too.
pub const MAX_BODY: usize = crate::envelope::MAX_ENVELOPE;

/// The API's router over `worker`.
pub fn router(worker: Arc<Worker>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/peers", get(list_peers))
        .route("/v1/peers/{peer}/call/{function}", post(call))
        .route("/v1/peers/{peer}/eval", post(eval))
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
        .with_state(worker)
}

/// Serves the API on `listener` until `shutdown` resolves, then drains
/// in-flight requests.
pub async fn serve(
    listener: TcpListener,
    worker: Arc<Worker>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(worker))
        .with_graceful_shutdown(shutdown)
        .await
}

fn error_response(error: InvocationError) -> Response {
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
