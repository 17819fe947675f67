//! Spans exported through OpenTelemetry's OTLP over HTTP (JSON), when an
//! endpoint is configured (`[traces] endpoint` in `peerhost.toml`, else
//! `OTEL_EXPORTER_OTLP_ENDPOINT`); nothing is exported otherwise.
//!
//! Every invocation is one span whose ids are the invocation's own trace
//! context (see [`crate::trace`]): the ids on the audit lines are the ids
//! the collector shows, and a nested invocation's parent is the span of the
//! invocation that delegated it, on whichever worker that ran. The SDK's
//! batch processor sends them from a thread of its own, a batch at least
//! every [`EXPORT_EVERY`]; an exporter that cannot reach its collector
//! drops spans and says so in the log, and never holds an invocation up.

use crate::trace::{FinishedSpan, Spans};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanEvents, SpanLinks, SpanProcessor,
};
use std::time::Duration;

/// How long spans wait, at most, before they are sent.
pub const EXPORT_EVERY: Duration = Duration::from_secs(1);

/// How long one export may take before it is given up.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The environment variable naming the collector when `peerhost.toml` does
/// not (the OpenTelemetry name).
pub const ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Why the exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot export spans to {endpoint}: {cause}")]
pub struct OtlpError {
    endpoint: String,
    cause: String,
}

/// The worker's span exporter.
pub struct Otlp {
    processor: BatchSpanProcessor,
    scope: InstrumentationScope,
    endpoint: String,
}

impl std::fmt::Debug for Otlp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Otlp")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Otlp {
    /// An exporter to the collector at `endpoint`, its base URL
    /// (`http://host:4318`; spans go to `/v1/traces` under it). Build it
    /// outside any async runtime: its HTTP client is a blocking one, run
    /// by the exporter's own thread.
    pub fn start(endpoint: &str) -> Result<Otlp, OtlpError> {
        let base = endpoint.trim_end_matches('/');
        let failed = |cause: String| OtlpError {
            endpoint: endpoint.to_owned(),
            cause,
        };
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(failed(
                "the endpoint must be an http:// or https:// URL".into(),
            ));
        }
        // rustls needs one crypto provider for the process (for https://);
        // another may be installed already (then that one serves).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(format!("{base}/v1/traces"))
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| failed(e.to_string()))?;
        let config = BatchConfigBuilder::default()
            .with_scheduled_delay(EXPORT_EVERY)
            .build();
        let mut processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(config)
            .build();
        processor.set_resource(
            &opentelemetry_sdk::Resource::builder()
                .with_service_name("peerhost")
                .build(),
        );
        Ok(Otlp {
            processor,
            scope: InstrumentationScope::builder("peerhost")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            endpoint: base.to_owned(),
        })
    }

    /// Sends the spans still waiting, and stops the exporter's thread.
    pub fn shutdown(&self) {
        if let Err(e) = self.processor.shutdown() {
            tracing::warn!(target: "peerhost::trace", "the span exporter did not stop cleanly: {e}");
        }
    }
}

impl Spans for Otlp {
    fn finished(&self, span: FinishedSpan) {
        let FinishedSpan {
            context,
            parent,
            name,
            start,
            end,
            peer,
            caller,
            kind,
            outcome,
            depth,
            error,
        } = span;
        let flags = if context.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let span_context = SpanContext::new(
            TraceId::from_bytes(context.trace_id),
            SpanId::from_bytes(context.span_id),
            flags,
            false,
            TraceState::default(),
        );
        let status = match error {
            Some(message) => Status::error(message),
            None => Status::Ok,
        };
        self.processor.on_end(SpanData {
            span_context,
            parent_span_id: parent.map_or(SpanId::INVALID, |p| SpanId::from_bytes(p.span_id)),
            parent_span_is_remote: parent.is_some_and(|p| p.remote),
            span_kind: SpanKind::Server,
            name: name.into(),
            start_time: start,
            end_time: end,
            attributes: vec![
                KeyValue::new("peerhost.peer", peer),
                KeyValue::new("peerhost.caller", caller),
                KeyValue::new("peerhost.kind", kind),
                KeyValue::new("peerhost.outcome", outcome),
                KeyValue::new("peerhost.depth", i64::from(depth)),
            ],
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.scope.clone(),
        });
    }
}
