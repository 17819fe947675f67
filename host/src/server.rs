//! The HTTP API of `peerhost serve` (axum on hyper).
//!
//! - `GET /healthz`: `ok`.
//! - `GET /v1/peers`: `{"peers": ["alice", …]}`, the peers hosted here.
//! - `POST /v1/peers/{peer}/call/{function}`: body = JSON args (an array of
//!   positional arguments, or one value; empty = no arguments).
//! - `POST /v1/peers/{peer}/eval`: body = `{"script": "…", "params": …}`.
//!
//! The caller is named by the `peerhost-caller` header; without it the
//! caller is `anonymous`. The header is not authenticated yet: signed
//! envelopes replace it. Bind only to loopback until then.
//!
//! Results are `200` with the JSON result; errors are
//! `{"error": {"kind", "message"[, "action", "resource"]}}` with 403 denied,
//! 404 not-found, 400 invalid, 413 limit, 500 failed.

use crate::error::{ErrorKind, InvocationError, parse_json};
use crate::policy::ANONYMOUS;
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

/// The request header naming the caller (unauthenticated for now).
pub const CALLER_HEADER: &str = "peerhost-caller";

/// Largest request body, in bytes.
pub const MAX_BODY: usize = 1 << 20;

/// The API's router over `worker`.
pub fn router(worker: Arc<Worker>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/peers", get(list_peers))
        .route("/v1/peers/{peer}/call/{function}", post(call))
        .route("/v1/peers/{peer}/eval", post(eval))
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

fn caller(headers: &HeaderMap) -> Result<String, InvocationError> {
    match headers.get(CALLER_HEADER) {
        None => Ok(ANONYMOUS.to_owned()),
        Some(value) => value.to_str().map(str::to_owned).map_err(|_| {
            InvocationError::invalid(format!("the {CALLER_HEADER} header is not text"))
        }),
    }
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
        let caller = caller(&headers)?;
        let body = body_bytes(body)?;
        // An empty body is a call without arguments.
        let args = if body.iter().all(u8::is_ascii_whitespace) {
            Value::Array(Vec::new())
        } else {
            parse_json(&body, "the request body (call arguments)")?
        };
        worker
            .invoke(&peer, &caller, Invocation::Call { function, args })
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
        let caller = caller(&headers)?;
        let body = body_bytes(body)?;
        let value = parse_json(&body, "the request body")?;
        let EvalBody { script, params } = serde_json::from_value(value).map_err(|e| {
            InvocationError::invalid(format!(
                "the request body must be {{\"script\": \"…\", \"params\": …}}: {e}"
            ))
        })?;
        worker
            .invoke(&peer, &caller, Invocation::Script { script, params })
            .await
    };
    result_response(run.await)
}

/// Kind of an error body returned by the API, for clients.
pub fn kind_of(body: &Value) -> Option<ErrorKind> {
    ErrorKind::parse(body.get("error")?.get("kind")?.as_str()?)
}
