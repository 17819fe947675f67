//! W3C trace context: one trace id for a whole delegation chain.
//!
//! Every invocation has a context: a 128-bit trace id shared by the chain
//! it belongs to and a 64-bit span id of its own. An invocation that
//! delegates hands its context on (in-process, or as the `traceparent` of
//! the envelope it signs, which the signature covers); the nested
//! invocation keeps the trace id and takes a new span id. An invocation
//! nobody handed a context to starts a trace. The audit log records the
//! trace id of every decision, the worker's log carries it on every line.
//!
//! The text form is the W3C `traceparent` header, version `00`:
//! `00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>`.

/// One invocation's place in a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// The chain's id; never all zeros.
    pub trace_id: [u8; 16],
    /// This invocation's span; never all zeros.
    pub span_id: [u8; 8],
    /// The W3C `sampled` flag, handed on as it came.
    pub sampled: bool,
    /// Whether the context came from outside this process (an envelope's
    /// `traceparent`, a request's header) rather than from an invocation
    /// here.
    pub remote: bool,
}

/// Why a `traceparent` was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TraceError {
    /// Not `version-traceid-spanid-flags` in lowercase hex.
    #[error("`traceparent` must be 00-<32 hex>-<16 hex>-<2 hex>: {0}")]
    Malformed(String),
    /// An all-zero trace or span id, which W3C reserves as invalid.
    #[error("`traceparent` has an all-zero {0} id")]
    Zero(&'static str),
}

/// Longest `traceparent` looked at: version 00 is 55 characters, later
/// versions may append fields.
pub const MAX_TRACEPARENT: usize = 512;

impl TraceContext {
    /// A new trace: random ids, sampled.
    pub fn root() -> TraceContext {
        TraceContext {
            trace_id: nonzero(),
            span_id: nonzero(),
            sampled: true,
            remote: false,
        }
    }

    /// The context of an invocation this one hands work to: the same
    /// trace, a new span.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            span_id: nonzero(),
            remote: false,
            ..*self
        }
    }

    /// Parses a W3C `traceparent`. Version `00` must be exactly four
    /// fields; a later version (not `ff`) may append more, which are
    /// ignored, as the recommendation says.
    pub fn parse(text: &str) -> Result<TraceContext, TraceError> {
        let shown = || {
            let mut shown = text.to_owned();
            crate::error::truncate_with_ellipsis(&mut shown, 80);
            TraceError::Malformed(format!("{shown:?}"))
        };
        if text.len() > MAX_TRACEPARENT {
            return Err(shown());
        }
        let mut fields = text.split('-');
        let (Some(version), Some(trace), Some(span), Some(flags)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(shown());
        };
        let version = hex_exact::<1>(version).ok_or_else(shown)?[0];
        if version == 0xff || (version == 0 && fields.next().is_some()) {
            return Err(shown());
        }
        let trace_id = hex_exact::<16>(trace).ok_or_else(shown)?;
        let span_id = hex_exact::<8>(span).ok_or_else(shown)?;
        let flags = hex_exact::<1>(flags).ok_or_else(shown)?[0];
        if trace_id == [0; 16] {
            return Err(TraceError::Zero("trace"));
        }
        if span_id == [0; 8] {
            return Err(TraceError::Zero("span"));
        }
        Ok(TraceContext {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
            remote: true,
        })
    }

    /// The `traceparent` that makes this invocation the parent.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            u8::from(self.sampled)
        )
    }

    /// The trace id, 32 lowercase hex digits.
    pub fn trace_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// The span id, 16 lowercase hex digits.
    pub fn span_hex(&self) -> String {
        hex::encode(self.span_id)
    }
}

/// One invocation's span once it has ended, as handed to [`Spans`].
#[derive(Clone, Debug)]
pub struct FinishedSpan {
    /// The invocation's own context.
    pub context: TraceContext,
    /// The context of the invocation (or client) that asked for it.
    pub parent: Option<TraceContext>,
    /// The span's name.
    pub name: &'static str,
    /// When it began.
    pub start: std::time::SystemTime,
    /// When it ended.
    pub end: std::time::SystemTime,
    /// The peer it ran at.
    pub peer: String,
    /// Who asked, by the name the peer knows them by.
    pub caller: String,
    /// `call`, `script` or `host`.
    pub kind: &'static str,
    /// `ok` or the error's kind (as in the metrics).
    pub outcome: &'static str,
    /// How many delegations led here.
    pub depth: u32,
    /// The error's message, for an invocation that failed.
    pub error: Option<String>,
}

/// Where a worker hands the spans of its invocations (an OTLP exporter,
/// `crate::otlp`); a worker without one keeps none.
pub trait Spans: Send + Sync + std::fmt::Debug {
    /// Takes one ended span; must not block the invocation.
    fn finished(&self, span: FinishedSpan);
}

/// `N` bytes from exactly `2N` lowercase hex digits.
fn hex_exact<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// Random bytes, never all zeros (a counter stands in when the system has
/// no randomness to give).
fn nonzero<const N: usize>() -> [u8; N] {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let mut out = [0u8; N];
    if getrandom::fill(&mut out).is_err() || out == [0u8; N] {
        let next = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let bytes = next.to_be_bytes();
        let n = N.min(bytes.len());
        out[N - n..].copy_from_slice(&bytes[bytes.len() - n..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = TraceContext::parse(text).expect("valid");
        assert_eq!(context.traceparent(), text);
        assert_eq!(context.trace_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(context.sampled);
    }

    #[test]
    fn a_child_keeps_the_trace_and_takes_a_new_span() {
        let root = TraceContext::root();
        let child = root.child();
        assert!(!child.remote);
        assert!(TraceContext::parse(&root.traceparent()).is_ok_and(|c| c.remote));
        assert_eq!(child.trace_id, root.trace_id);
        assert_ne!(child.span_id, root.span_id);
        assert_ne!(TraceContext::root().trace_id, root.trace_id);
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(
                matches!(TraceContext::parse(bad), Err(TraceError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            TraceContext::parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Err(TraceError::Zero("trace"))
        );
        assert_eq!(
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
            Err(TraceError::Zero("span"))
        );
        // A later version may carry more fields.
        assert!(
            TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more")
                .is_ok()
        );
    }
}
