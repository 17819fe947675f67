//! The client for a running `peerhost serve`: the CLI's `--url`, and
//! delegation from one worker to another.

use crate::envelope::Envelope;
use crate::error::{ErrorKind, InvocationError};
use crate::invocation::Invocation;
use crate::server::kind_of;
use crate::worker::{Delivering, Transport};
use serde_json::{Value, json};
use std::time::Duration;

/// Sends an unsigned `invocation` for `peer` to the worker at `base`: it
/// runs as `anonymous`.
pub fn invoke_anonymous(
    base: &str,
    peer: &str,
    invocation: &Invocation,
) -> Result<Value, InvocationError> {
    let base = base.trim_end_matches('/');
    let (url, body) = match invocation {
        Invocation::Call { function, args } => (
            format!("{base}/v1/peers/{}/call/{}", encode(peer), encode(function)),
            args.clone(),
        ),
        Invocation::Script { script, params } => (
            format!("{base}/v1/peers/{}/eval", encode(peer)),
            json!({ "script": script, "params": params }),
        ),
        Invocation::ShowLogic { module } => {
            let url = match module {
                Some(module) => {
                    format!("{base}/v1/peers/{}/logic/{}", encode(peer), encode(module))
                }
                None => format!("{base}/v1/peers/{}/logic", encode(peer)),
            };
            return request(&url, None::<&()>, None);
        }
        Invocation::PushLogic { .. } | Invocation::PushPolicy { .. } => {
            return Err(InvocationError::invalid(
                "a push must be signed with the owner's key; it cannot be sent anonymously",
            ));
        }
    };
    post(&url, &body, None)
}

/// The HTTP transport between workers: `POST {url}/v1/envelopes`, one
/// blocking request each, off the async threads.
#[derive(Debug, Default, Clone, Copy)]
pub struct Http;

impl Transport for Http {
    fn send(&self, url: &str, envelope: Envelope, timeout: Duration) -> Delivering {
        let url = url.to_owned();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || send(&url, &envelope, Some(timeout)))
                .await
                .map_err(|e| InvocationError::failed(format!("the delegation task failed: {e}")))?
        })
    }
}

/// The transports between workers, chosen by the scheme of the contact's
/// URL: `ws://` over one WebSocket per worker ([`crate::websocket`]),
/// `http://` and `https://` over HTTP ([`Http`]).
#[derive(Debug, Default, Clone)]
pub struct Transports {
    websocket: crate::websocket::Client,
}

impl Transport for Transports {
    fn send(&self, url: &str, envelope: Envelope, timeout: Duration) -> Delivering {
        if url.starts_with("ws://") {
            self.websocket.deliver(url, envelope, timeout)
        } else {
            Http.send(url, envelope, timeout)
        }
    }
}

/// Sends a signed `envelope` to the worker at `base` (`POST /v1/envelopes`).
pub fn send(
    base: &str,
    envelope: &Envelope,
    timeout: Option<Duration>,
) -> Result<Value, InvocationError> {
    let url = format!("{}/v1/envelopes", base.trim_end_matches('/'));
    post(&url, envelope, timeout)
}

fn post(
    url: &str,
    body: &impl serde::Serialize,
    timeout: Option<Duration>,
) -> Result<Value, InvocationError> {
    request(url, Some(body), timeout)
}

/// POSTs `body` as JSON to `url`, or GETs it without one.
fn request(
    url: &str,
    body: Option<&impl serde::Serialize>,
    timeout: Option<Duration>,
) -> Result<Value, InvocationError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        // A redirect is never followed: a remote worker's 3xx could point
        // the host at an internal URL and hand that body to a script.
        .max_redirects(0)
        .timeout_global(timeout)
        .build()
        .into();
    let response = match body {
        Some(body) => agent.post(url).send_json(body),
        None => agent.get(url).call(),
    };
    let mut response = response.map_err(|e| match e {
        ureq::Error::Timeout(_) => {
            InvocationError::limit(format!("{url} did not answer within the time left: {e}"))
        }
        e => InvocationError::failed(format!("cannot reach {url}: {e}")),
    })?;
    let status = response.status();
    if status.is_redirection() {
        return Err(InvocationError::failed(format!(
            "{url} answered {status} (a redirect); redirects are not followed"
        )));
    }
    let value: Value = response
        .body_mut()
        .with_config()
        .limit(crate::invocation::MAX_RESULT as u64 + 4096)
        .read_json()
        .map_err(|e| {
            InvocationError::failed(format!(
                "{url} answered {status} with a body that is not JSON: {e}"
            ))
        })?;
    if status.is_success() {
        return Ok(value);
    }
    let mut error = error_of(&value);
    if value["error"]["message"].as_str().is_none() {
        error.message = format!("{url} answered {status}");
    }
    Err(error)
}

/// The error an `{"error": {"kind", "message", …}}` answer describes (as
/// every transport between workers carries it).
pub fn error_of(value: &Value) -> InvocationError {
    let field = |name: &str| value["error"][name].as_str().map(str::to_owned);
    InvocationError {
        kind: kind_of(value).unwrap_or(ErrorKind::Failed),
        message: field("message")
            .unwrap_or_else(|| "the other worker answered an error".to_owned()),
        action: field("action"),
        resource: field("resource"),
        retry_after_ms: value["error"]["retry_after_ms"].as_u64(),
    }
}

/// Percent-encodes a path segment.
fn encode(segment: &str) -> String {
    let mut out = String::new();
    for &b in segment.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
