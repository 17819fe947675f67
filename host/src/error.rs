//! The typed error of an invocation, shared by the runtime, the HTTP API and
//! the CLI. Its kinds are those of `error` in `wit/peer.wit`.

use serde::Serialize;

/// Longest string field of an audit line, in bytes; a longer one is cut on
/// a character boundary and ends with `…`. Client strings reach `resource`
/// (a function name, a petname) and `reason` (a hook's verdict): without a
/// bound, one request of 1 MiB wrote an audit line of 1 MiB.
pub const MAX_FIELD: usize = 1024;

/// What went wrong, coarsely: decides the HTTP status and the exit code.
/// One type for guest and host: the guest SDK's, which both sides name.
pub use peerhost_guest_sdk::ErrorKind;

/// Serialises a kind by its stable name (`not-found`).
fn kind_name<S: serde::Serializer>(kind: &ErrorKind, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(kind.as_str())
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut with `…`.
pub fn truncate_with_ellipsis(text: &mut String, max: usize) {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
}

/// Parses JSON input named `what`; malformed JSON is `invalid` with line and column.
pub fn parse_json(input: &[u8], what: &str) -> Result<serde_json::Value, InvocationError> {
    serde_json::from_slice(input).map_err(|e| {
        InvocationError::invalid(format!(
            "{what} is not valid JSON: {e} (line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}

/// Longest [`InvocationError::message`], in bytes. Messages carry client
/// and guest text (a function name, a petname, a thrown string): a longer
/// one is cut on a character boundary and ends with `…`, so that no request
/// makes the answer, the log line or the CLI's output it reaches large.
pub const MAX_MESSAGE: usize = 4 * 1024;

/// Why an invocation did not return a result.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{kind}: {message}")]
pub struct InvocationError {
    /// The kind.
    #[serde(serialize_with = "kind_name")]
    pub kind: ErrorKind,
    /// What happened, for a person.
    pub message: String,
    /// For a denial: the Cedar action refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// For a denial: the Cedar resource refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// For a refusal over quota: when to try again, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl InvocationError {
    /// This error with every spelling in `host_paths` (see [`host_paths`])
    /// dropped from its message, so that files are named relative to the
    /// deployment (`peers/bob/policy.cedar`) and no host path reaches a
    /// remote caller.
    pub fn relative_to(mut self, host_paths: &[String]) -> InvocationError {
        for root in host_paths {
            self.message = self.message.replace(&format!("{root}/"), "");
            self.message = self.message.replace(root.as_str(), ".");
        }
        self
    }

    /// An error of `kind`, its message cut to [`MAX_MESSAGE`].
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> InvocationError {
        let mut message = message.into();
        truncate_with_ellipsis(&mut message, MAX_MESSAGE);
        InvocationError {
            kind,
            message,
            action: None,
            resource: None,
            retry_after_ms: None,
        }
    }

    /// A denial of `action` on `resource`, each cut to
    /// [`MAX_FIELD`] as the audit line names them.
    pub fn denied(action: &str, resource: &str) -> InvocationError {
        let cut = |text: &str| {
            let mut text = text.to_owned();
            truncate_with_ellipsis(&mut text, MAX_FIELD);
            text
        };
        let (action, resource) = (cut(action), cut(resource));
        InvocationError {
            kind: ErrorKind::Denied,
            message: format!("{action} on {resource} is not granted by the policy"),
            action: Some(action),
            resource: Some(resource),
            retry_after_ms: None,
        }
    }

    /// Shorthand for [`ErrorKind::NotFound`].
    pub fn not_found(message: impl Into<String>) -> InvocationError {
        InvocationError::new(ErrorKind::NotFound, message)
    }

    /// Shorthand for [`ErrorKind::Invalid`].
    pub fn invalid(message: impl Into<String>) -> InvocationError {
        InvocationError::new(ErrorKind::Invalid, message)
    }

    /// Shorthand for [`ErrorKind::Limit`].
    pub fn limit(message: impl Into<String>) -> InvocationError {
        InvocationError::new(ErrorKind::Limit, message)
    }

    /// This error with a hint to try again after `wait`.
    pub fn retry_after(mut self, wait: std::time::Duration) -> InvocationError {
        self.retry_after_ms = Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1));
        self
    }

    /// Shorthand for [`ErrorKind::Failed`].
    pub fn failed(message: impl Into<String>) -> InvocationError {
        InvocationError::new(ErrorKind::Failed, message)
    }
}

/// A guest's error as the invocation's; its message is cut to
/// [`MAX_MESSAGE`] like every invocation error's.
impl From<crate::bindings::GuestError> for InvocationError {
    fn from(e: crate::bindings::GuestError) -> InvocationError {
        use crate::bindings::GuestError;
        match e {
            GuestError::Denied(d) if d.action.is_empty() => {
                InvocationError::new(ErrorKind::Denied, d.resource)
            }
            GuestError::Denied(d) => InvocationError::denied(&d.action, &d.resource),
            GuestError::NotFound(m) => InvocationError::not_found(m),
            GuestError::Invalid(m) => InvocationError::invalid(m),
            GuestError::Limit(m) => InvocationError::limit(m),
            GuestError::Failed(m) => InvocationError::failed(m),
        }
    }
}

/// An invocation error as a guest receives it (a nested invocation's).
impl From<InvocationError> for crate::bindings::GuestError {
    fn from(e: InvocationError) -> crate::bindings::GuestError {
        use crate::bindings::{Denial, GuestError};
        match (e.kind, e.action, e.resource) {
            (ErrorKind::Denied, Some(action), Some(resource)) => {
                GuestError::Denied(Denial { action, resource })
            }
            (ErrorKind::Denied, _, _) => GuestError::Denied(Denial {
                action: String::new(),
                resource: e.message,
            }),
            (ErrorKind::NotFound, ..) => GuestError::NotFound(e.message),
            (ErrorKind::Invalid, ..) => GuestError::Invalid(e.message),
            (ErrorKind::Limit, ..) => GuestError::Limit(e.message),
            (ErrorKind::Failed, ..) => GuestError::Failed(e.message),
        }
    }
}

/// The absolute spellings of the deployment directory `root` (joined to
/// the working directory, and canonical), longest first, as
/// [`InvocationError::relative_to`] drops them. Computed once per worker.
pub fn host_paths(root: &std::path::Path) -> Vec<String> {
    let mut roots = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd.join(root));
    }
    if let Ok(canonical) = root.canonicalize() {
        roots.push(canonical);
    }
    let mut paths: Vec<String> = roots
        .iter()
        .map(|r| r.to_string_lossy().trim_end_matches('/').to_owned())
        .filter(|r| !r.is_empty() && r != "/")
        .collect();
    // Longest first: the canonical path may contain the one given.
    paths.sort_by_key(|r| std::cmp::Reverse(r.len()));
    paths.dedup();
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_7_error_messages_and_denials_are_cut() {
        let long = "é".repeat(MAX_MESSAGE);
        for error in [
            InvocationError::failed(long.clone()),
            InvocationError::not_found(format!("no function `{long}`")),
        ] {
            assert!(error.message.len() <= MAX_MESSAGE + '…'.len_utf8());
            assert!(error.message.ends_with('…'), "{error:?}");
        }
        let error = InvocationError::denied("call", &format!("Function::\"{long}\""));
        let resource = error.resource.unwrap_or_default();
        assert!(resource.len() <= MAX_FIELD + '…'.len_utf8());
        assert!(resource.starts_with("Function::\"é") && resource.ends_with('…'));
        assert!(error.message.len() < 2 * MAX_FIELD);
        assert_eq!(InvocationError::invalid("short").message, "short");
    }
}
