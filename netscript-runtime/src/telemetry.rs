//! OpenTelemetry traces: export of the process's `tracing` spans over OTLP, and the W3C trace
//! context that ties an enqueue to the runs of its job.
//!
//! Switched on by the standard variables: `OTEL_EXPORTER_OTLP_ENDPOINT` (without it nothing
//! is built or installed, and the span helpers below return at once), `OTEL_EXPORTER_OTLP_PROTOCOL`
//! (`http/protobuf`, the default, or `grpc`) and `OTEL_SERVICE_NAME`. The exporter's other
//! standard variables (`OTEL_EXPORTER_OTLP_HEADERS`, `..._TIMEOUT`, the `..._TRACES_...`
//! forms) are read by `opentelemetry-otlp` itself. Spans are batched by the SDK's batch
//! processor, which exports from a thread of its own so a slow collector never holds up a job.
//!
//! Not for metrics (see [`crate::metrics`]) or logs: the fmt layer on stderr stays the log.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};
use tracing_subscriber::filter::{Filtered, Targets};

/// The collector's base URL: its presence switches export on.
pub const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// `http/protobuf` (the default) or `grpc`.
pub const PROTOCOL_VAR: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
/// The `service.name` of the exported spans.
pub const SERVICE_NAME_VAR: &str = "OTEL_SERVICE_NAME";

/// The target of the trace events the worker adds to an attempt's span (`job.started`,
/// `job.progress`, `job.completed`, `job.failed`, `job.exception`) and of the `enqueue` and
/// `dispatch` spans: exported, kept out of the log unless `RUST_LOG` names it.
pub const EVENTS_TARGET: &str = "netscript::trace";

/// The W3C header that carries the trace id and the parent span id.
const TRACEPARENT: &str = "traceparent";
/// The W3C header that carries vendor state along with it.
const TRACESTATE: &str = "tracestate";

/// How spans travel to the collector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// Protobuf bodies POSTed to `<endpoint>/v1/traces` (port 4318 by convention).
    #[default]
    HttpProtobuf,
    /// The OTLP gRPC service (port 4317 by convention).
    Grpc,
}

impl std::str::FromStr for OtlpProtocol {
    type Err = TelemetryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "http/protobuf" => Ok(Self::HttpProtobuf),
            "grpc" => Ok(Self::Grpc),
            other => Err(TelemetryError::Protocol(other.to_owned())),
        }
    }
}

/// What [`TelemetryGuard::start`] needs; [`TelemetryConfig::from_env`] reads it from the
/// standard variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// The collector's base URL, such as `http://127.0.0.1:4318`. For HTTP, `/v1/traces` is
    /// appended unless the URL already ends with it.
    pub endpoint: String,
    /// HTTP/protobuf or gRPC.
    pub protocol: OtlpProtocol,
    /// The `service.name` resource attribute.
    pub service_name: String,
}

impl TelemetryConfig {
    /// A configuration for `endpoint` over `protocol`, naming the service `service_name`.
    pub fn new(endpoint: impl Into<String>, protocol: OtlpProtocol, service_name: impl Into<String>) -> Self {
        Self { endpoint: endpoint.into(), protocol, service_name: service_name.into() }
    }

    /// Reads the standard variables. `Ok(None)` when `OTEL_EXPORTER_OTLP_ENDPOINT` is unset or
    /// empty: telemetry is off. `service_default` names the service when `OTEL_SERVICE_NAME`
    /// is unset.
    pub fn from_env(service_default: &str) -> Result<Option<Self>, TelemetryError> {
        Self::from_vars(|name| std::env::var(name).ok(), service_default)
    }

    /// [`from_env`](Self::from_env) over any source of variables.
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
        service_default: &str,
    ) -> Result<Option<Self>, TelemetryError> {
        let Some(endpoint) = var(ENDPOINT_VAR).filter(|e| !e.trim().is_empty()) else {
            return Ok(None);
        };
        let protocol = match var(PROTOCOL_VAR).filter(|p| !p.trim().is_empty()) {
            Some(p) => p.parse()?,
            None => OtlpProtocol::default(),
        };
        let service_name =
            var(SERVICE_NAME_VAR).filter(|s| !s.trim().is_empty()).unwrap_or_else(|| service_default.to_owned());
        Ok(Some(Self { endpoint: endpoint.trim().to_owned(), protocol, service_name }))
    }
}

/// Why telemetry could not be set up or flushed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `OTEL_EXPORTER_OTLP_PROTOCOL` names a protocol this build does not speak.
    #[error("{PROTOCOL_VAR}={0:?} is not supported: use `http/protobuf` or `grpc`")]
    Protocol(String),
    /// The exporter could not be built (a malformed endpoint, for one).
    #[error("cannot build the OTLP exporter for {endpoint}: {source}")]
    Exporter {
        /// The configured endpoint.
        endpoint: String,
        /// What the exporter said.
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// Flushing or shutting down the span pipeline failed (the collector refused or timed out).
    #[error("cannot flush spans: {0}")]
    Flush(#[from] opentelemetry_sdk::error::OTelSdkError),
}

/// A running OTLP span pipeline. Give its [`layer`](Self::layer) to the `tracing`
/// subscriber; dropping the guard (or [`shutdown`](Self::shutdown)) exports what is buffered
/// and stops the pipeline.
///
/// Flushing blocks the calling thread until the export ends (for gRPC, the export runs on the
/// tokio runtime the guard was started in): from async code, call it through
/// `tokio::task::spawn_blocking`, as [`shutdown_installed`] does.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl TelemetryGuard {
    /// Builds the exporter and the batch processor. For gRPC, call it inside a tokio runtime:
    /// the channel's connection task runs there.
    pub fn start(config: &TelemetryConfig) -> Result<Self, TelemetryError> {
        let exporter = match config.protocol {
            OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(http_traces_url(&config.endpoint))
                .build(),
            OtlpProtocol::Grpc => {
                opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(config.endpoint.clone()).build()
            }
        }
        .map_err(|source| TelemetryError::Exporter { endpoint: config.endpoint.clone(), source })?;
        let resource = opentelemetry_sdk::Resource::builder().with_service_name(config.service_name.clone()).build();
        let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
        let tracer = provider.tracer("netscript");
        Ok(Self { provider, tracer })
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans for this pipeline. The
    /// crates the exporter itself runs on (`h2`, `hyper`, `tonic`, `tower`, `reqwest`) are
    /// filtered out, or every export would produce spans to export.
    pub fn layer<S>(&self) -> Filtered<OpenTelemetryLayer<S, SdkTracer>, Targets, S>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        use tracing_subscriber::Layer as _;
        use tracing_subscriber::filter::LevelFilter;
        let own = Targets::new().with_default(LevelFilter::TRACE).with_targets(
            ["h2", "hyper", "hyper_util", "tonic", "tower", "reqwest", "opentelemetry"].map(|t| (t, LevelFilter::OFF)),
        );
        LAYER_BUILT.store(true, Ordering::Relaxed);
        let layer: OpenTelemetryLayer<S, SdkTracer> =
            tracing_opentelemetry::layer().with_tracer(self.tracer.clone()).with_tracked_inactivity(false);
        layer.with_filter(own)
    }

    /// The SDK's tracer provider, for code that uses the OpenTelemetry API directly.
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    /// Exports every ended span now and waits for the collector's answer. Blocks.
    pub fn force_flush(&self) -> Result<(), TelemetryError> {
        Ok(self.provider.force_flush()?)
    }

    /// Exports what is buffered and stops the pipeline; spans ended later are dropped. Blocks.
    pub fn shutdown(self) -> Result<(), TelemetryError> {
        Ok(self.provider.shutdown()?)
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        // The tracer handed to layers keeps the provider alive, so its own drop would never
        // run; a second shutdown (after `shutdown()`) only reports that it already happened.
        let _ = self.provider.shutdown();
    }
}

/// Set once a layer was built: until then no span can have an OpenTelemetry context, and the
/// helpers below return before parsing or formatting anything.
static LAYER_BUILT: AtomicBool = AtomicBool::new(false);

/// Whether spans may be exported: an OpenTelemetry layer was built in this process.
pub(crate) fn exporting() -> bool {
    LAYER_BUILT.load(Ordering::Relaxed)
}

/// The process's pipeline, kept for its lifetime by [`init`].
static INSTALLED: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Reads the standard variables and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, starts the
/// pipeline, makes it the OpenTelemetry API's global tracer provider and remembers it for
/// [`shutdown_installed`]. `None` when the variable is unset: nothing is built or installed.
/// A bad configuration is reported on stderr (the log is not set up yet) and also gives
/// `None`: telemetry never stops the app from starting.
pub fn init(service_default: &str) -> Option<TelemetryGuard> {
    let config = match TelemetryConfig::from_env(service_default) {
        Ok(Some(c)) => c,
        Ok(None) => return None,
        Err(e) => {
            eprintln!("warning: OpenTelemetry export is off: {e}");
            return None;
        }
    };
    match TelemetryGuard::start(&config) {
        Ok(guard) => {
            opentelemetry::global::set_tracer_provider(guard.provider.clone());
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
            let _ = INSTALLED.set(guard.provider.clone());
            Some(guard)
        }
        Err(e) => {
            eprintln!("warning: OpenTelemetry export is off: {e}");
            None
        }
    }
}

/// Exports what the pipeline [`init`] started still buffers and stops it, on the blocking
/// pool so the runtime (which a gRPC export needs) keeps running. Nothing when telemetry is off.
pub async fn shutdown_installed() {
    let Some(provider) = INSTALLED.get().cloned() else { return };
    match tokio::task::spawn_blocking(move || provider.shutdown()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("warning: OpenTelemetry spans were not all exported: {e}"),
        Err(e) => eprintln!("warning: OpenTelemetry shutdown did not finish: {e}"),
    }
}

/// The W3C `traceparent` of the current span: what an enqueue stamps on its message so the
/// run joins the enqueuer's trace. `None` when telemetry is off or no span is current.
pub fn current_traceparent() -> Option<String> {
    span_traceparent(&tracing::Span::current())
}

/// The W3C `traceparent` of `span`: the subprocess runner hands the attempt span's to its
/// child, so the child's spans nest under the parent's attempt. `None` when telemetry is off.
pub fn span_traceparent(span: &tracing::Span) -> Option<String> {
    if !LAYER_BUILT.load(Ordering::Relaxed) || span.is_none() {
        return None;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::with_capacity(2);
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The remote parent that a W3C `traceparent` (and `tracestate`) describe. A missing or
/// malformed header gives an empty context, under which a span starts a trace of its own.
pub fn parent_from(traceparent: Option<&str>, tracestate: Option<&str>) -> opentelemetry::Context {
    let Some(traceparent) = traceparent else { return opentelemetry::Context::new() };
    let mut carrier = HashMap::with_capacity(2);
    carrier.insert(TRACEPARENT.to_owned(), traceparent.to_owned());
    if let Some(state) = tracestate {
        carrier.insert(TRACESTATE.to_owned(), state.to_owned());
    }
    TraceContextPropagator::new().extract(&carrier)
}

/// Makes `span` a child of the remote span `traceparent` names. Nothing when there is no
/// traceparent, it is malformed, or no OpenTelemetry layer is installed (telemetry off).
pub fn set_remote_parent(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    if traceparent.is_none() || !LAYER_BUILT.load(Ordering::Relaxed) || span.is_none() {
        return;
    }
    let parent = parent_from(traceparent, tracestate);
    if parent.span().span_context().is_valid() {
        // Fails only without the layer (telemetry off) or once the span has started: neither
        // leaves anything to link.
        let _ = span.set_parent(parent);
    }
}

/// Marks the start of an attempt on its span: records `queue.provider` and emits
/// `job.started`. For the worker; nothing when telemetry is off.
pub fn attempt_started(span: &tracing::Span, queue_provider: &'static str) {
    if !LAYER_BUILT.load(Ordering::Relaxed) {
        return;
    }
    span.record("queue.provider", queue_provider);
    tracing::info!(target: EVENTS_TARGET, parent: span, "job.started");
}

/// Emits `job.progress` on an attempt's span. For `JobContext::progress`; nothing when
/// telemetry is off.
pub fn attempt_progress(span: &tracing::Span, percent: u8, message: &str) {
    if !LAYER_BUILT.load(Ordering::Relaxed) {
        return;
    }
    tracing::event!(
        target: EVENTS_TARGET,
        parent: span,
        tracing::Level::INFO,
        { "progress.percent" } = i64::from(percent),
        { "progress.message" } = message,
        "job.progress"
    );
}

/// Records how an attempt ended on its span (`outcome`: `succeeded`, `failed`, `timed_out`,
/// `panicked`, `abandoned`) and emits `job.completed`, `job.failed` or, for a panic,
/// `job.exception` with `exception.type` and `exception.message`. Failures are ERROR events,
/// which set the span's status to error. For the worker; nothing when telemetry is off.
pub fn attempt_ended(span: &tracing::Span, outcome: &crate::worker::runner::AttemptOutcome) {
    use crate::worker::runner::AttemptOutcome;
    if !LAYER_BUILT.load(Ordering::Relaxed) {
        return;
    }
    let name = match outcome {
        AttemptOutcome::Succeeded(_) => "succeeded",
        AttemptOutcome::Failed(_) => "failed",
        AttemptOutcome::Panicked(_) => "panicked",
        AttemptOutcome::TimedOut(_) => "timed_out",
        AttemptOutcome::Abandoned => "abandoned",
    };
    span.record("outcome", name);
    match outcome {
        AttemptOutcome::Succeeded(_) => tracing::info!(target: EVENTS_TARGET, parent: span, "job.completed"),
        AttemptOutcome::Panicked(message) => tracing::event!(
            target: EVENTS_TARGET,
            parent: span,
            tracing::Level::ERROR,
            { "exception.type" } = "panic",
            { "exception.message" } = %message,
            "job.exception"
        ),
        AttemptOutcome::Abandoned => {}
        failed => {
            let (message, fatal) = failed.error().unwrap_or_default();
            tracing::event!(
                target: EVENTS_TARGET,
                parent: span,
                tracing::Level::ERROR,
                { "error.message" } = %message,
                fatal,
                outcome = name,
                "job.failed"
            );
        }
    }
}

/// `<endpoint>/v1/traces`, as the OTLP/HTTP specification builds the signal's URL from the
/// base endpoint (the exporter appends it only when it reads the variable itself).
fn http_traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") { base.to_owned() } else { format!("{base}/v1/traces") }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn off_without_an_endpoint() {
        assert_eq!(TelemetryConfig::from_vars(vars(&[]), "app").unwrap(), None);
        assert_eq!(TelemetryConfig::from_vars(vars(&[(ENDPOINT_VAR, " ")]), "app").unwrap(), None);
        assert!(init_is_off_without_endpoint());
    }

    fn init_is_off_without_endpoint() -> bool {
        // The test process does not set the variable; if a developer's shell does, skip.
        std::env::var_os(ENDPOINT_VAR).is_some() || init("app").is_none()
    }

    #[test]
    fn reads_protocol_and_service_name() {
        let c = TelemetryConfig::from_vars(vars(&[(ENDPOINT_VAR, "http://h:4318")]), "app").unwrap().unwrap();
        assert_eq!(c, TelemetryConfig::new("http://h:4318", OtlpProtocol::HttpProtobuf, "app"));
        let c = TelemetryConfig::from_vars(
            vars(&[(ENDPOINT_VAR, "http://h:4317"), (PROTOCOL_VAR, "grpc"), (SERVICE_NAME_VAR, "billing")]),
            "app",
        )
        .unwrap()
        .unwrap();
        assert_eq!(c, TelemetryConfig::new("http://h:4317", OtlpProtocol::Grpc, "billing"));
        let e = TelemetryConfig::from_vars(vars(&[(ENDPOINT_VAR, "http://h"), (PROTOCOL_VAR, "http/json")]), "app");
        assert!(matches!(e, Err(TelemetryError::Protocol(p)) if p == "http/json"));
    }

    #[test]
    fn traces_url_is_appended_once() {
        assert_eq!(http_traces_url("http://h:4318"), "http://h:4318/v1/traces");
        assert_eq!(http_traces_url("http://h:4318/"), "http://h:4318/v1/traces");
        assert_eq!(http_traces_url("http://h:4318/v1/traces"), "http://h:4318/v1/traces");
    }

    #[test]
    fn parent_from_reads_w3c_headers() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = parent_from(Some(tp), Some("vendor=x"));
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(sc.trace_state().get("vendor"), Some("x"));
        assert!(!parent_from(Some("garbage"), None).span().span_context().is_valid());
        assert!(!parent_from(None, None).span().span_context().is_valid());
    }

    /// The attempt's span as `JobContext::new` makes it, with what the worker adds, through a
    /// real layer into the SDK's in-memory exporter.
    #[test]
    fn attempt_span_joins_the_parent_and_carries_outcome_and_events() {
        use crate::job::{ContextParts, JobContext, Progress, ProgressSink};
        use crate::worker::runner::AttemptOutcome;
        use opentelemetry::trace::Status;
        use tracing_subscriber::layer::SubscriberExt as _;

        struct Nowhere;
        #[async_trait::async_trait]
        impl ProgressSink for Nowhere {
            async fn report(&self, _: crate::store::ExecutionId, _: Progress) {}
        }

        let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        let guard = TelemetryGuard { tracer: provider.tracer("test"), provider };
        let subscriber = tracing_subscriber::registry().with(guard.layer());
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (stamped, execution) = tracing::subscriber::with_default(subscriber, || {
            let ctx = JobContext::new(
                ContextParts {
                    execution_id: crate::store::ExecutionId::new(),
                    job_id: "j".into(),
                    attempt: 2,
                    max_attempts: 3,
                    traceparent: Some(tp.into()),
                    ..ContextParts::default()
                },
                tokio_util::sync::CancellationToken::new(),
                std::sync::Arc::new(Nowhere),
            );
            attempt_started(ctx.span(), "memory");
            attempt_progress(ctx.span(), 40, "half way");
            let stamped = ctx.span().in_scope(current_traceparent);
            attempt_ended(ctx.span(), &AttemptOutcome::Panicked("boom".into()));
            (stamped, ctx.execution_id())
        });
        let spans = exporter.get_finished_spans().unwrap();
        let span = spans.iter().find(|s| s.name == "job").unwrap();
        assert_eq!(span.span_context.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span.parent_span_id.to_string(), "00f067aa0ba902b7");
        assert!(matches!(span.status, Status::Error { .. }), "{:?}", span.status);
        let attr = |k: &str| span.attributes.iter().find(|kv| kv.key.as_str() == k).map(|kv| kv.value.to_string());
        assert_eq!(attr("execution.id"), Some(execution.to_string()));
        assert_eq!(attr("attempt"), Some("2".into()));
        assert_eq!(attr("queue.provider"), Some("memory".into()));
        assert_eq!(attr("outcome"), Some("panicked".into()));
        let events: Vec<&str> = span.events.iter().map(|e| e.name.as_ref()).collect();
        assert_eq!(events, ["job.started", "job.progress", "job.exception"]);
        let exception = &span.events.events[2];
        assert!(
            exception
                .attributes
                .iter()
                .any(|kv| kv.key.as_str() == "exception.message" && kv.value.to_string() == "boom")
        );
        // What an enqueue inside the attempt would stamp: the attempt's own span, same trace.
        let stamped = stamped.unwrap();
        assert_eq!(stamped, format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", span.span_context.span_id()));
    }

    #[test]
    fn no_traceparent_without_a_layer() {
        let span = tracing::info_span!("x");
        assert_eq!(span_traceparent(&span), None);
        assert_eq!(current_traceparent(), None);
    }
}
