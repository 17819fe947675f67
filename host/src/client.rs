//! The CLI's client for a running `peerhost serve` (`--url`).

use crate::error::{ErrorKind, InvocationError};
use crate::runtime::Invocation;
use crate::server::{CALLER_HEADER, kind_of};
use serde_json::{Value, json};

/// Sends `invocation` for `peer` to the worker at `base` as `caller`.
pub fn invoke(
    base: &str,
    peer: &str,
    caller: &str,
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
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .post(&url)
        .header(CALLER_HEADER, caller)
        .send_json(&body)
        .map_err(|e| InvocationError::failed(format!("cannot reach {url}: {e}")))?;
    let status = response.status();
    let value: Value = response.body_mut().read_json().map_err(|e| {
        InvocationError::failed(format!(
            "{url} answered {status} with a body that is not JSON: {e}"
        ))
    })?;
    if status.is_success() {
        return Ok(value);
    }
    let kind = kind_of(&value).unwrap_or(ErrorKind::Failed);
    let field = |name: &str| value["error"][name].as_str().map(str::to_owned);
    Err(InvocationError {
        kind,
        message: field("message").unwrap_or_else(|| format!("{url} answered {status}")),
        action: field("action"),
        resource: field("resource"),
    })
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
