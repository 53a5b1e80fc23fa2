//! OpenTelemetry end to end: a real OTLP receiver runs in-process (OTLP/HTTP with protobuf
//! bodies, and OTLP/gRPC), the exporter is pointed at it, a job is triggered over the HTTP API
//! with a W3C traceparent, and the spans that arrive must form one trace: the enqueue span is
//! a child of the given parent, the worker's dispatch span a child of the enqueue span, the
//! attempt span a child of the dispatch span, the span the handler opens a child of the
//! attempt span.
//!
//! Each test runs its own current-thread runtime with its own subscriber set on that thread
//! (every task of the app runs there), so the two never see each other's spans.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use netscript::prelude::*;
use netscript::{ExecutionId, ExecutionStatus, QueueProvider};
use netscript_runtime::telemetry::{OtlpProtocol, TelemetryConfig, TelemetryGuard};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing_subscriber::layer::SubscriberExt as _;

/// Opens a span of its own, which must nest under the attempt's span.
#[job(id = "traced", retries = 0)]
async fn traced(n: u32) -> JobResult<u32> {
    let work = tracing::info_span!("handler.work", n);
    work.in_scope(|| tracing::info!("working"));
    Ok(n)
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

/// What the receiver got: every span with the `service.name` of its resource.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, Span)>>>);

impl Received {
    fn add(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.0.lock().unwrap();
        for rs in request.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.clone())
                .map(|v| match v {
                    Value::StringValue(s) => s,
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                spans.extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
    }

    fn spans(&self) -> Vec<(String, Span)> {
        self.0.lock().unwrap().clone()
    }
}

/// An OTLP/HTTP receiver: `POST /v1/traces` with a protobuf body.
async fn http_receiver(received: Received) -> String {
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let received = received.clone();
            async move {
                match ExportTraceServiceRequest::decode(body) {
                    Ok(request) => {
                        received.add(request);
                        let response = ExportTraceServiceResponse::default().encode_to_vec();
                        (axum::http::StatusCode::OK, [("content-type", "application/x-protobuf")], response)
                    }
                    Err(e) => (
                        axum::http::StatusCode::BAD_REQUEST,
                        [("content-type", "text/plain")],
                        e.to_string().into_bytes(),
                    ),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

struct GrpcReceiver(Received);

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.add(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC receiver: the collector's `TraceService`.
async fn grpc_receiver(received: Received) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(GrpcReceiver(received)))
            .serve_with_incoming(incoming)
            .await
            .unwrap()
    });
    format!("http://{addr}")
}

/// How the test hands the traceparent to the trigger.
#[derive(Clone, Copy)]
enum Carrier {
    /// The `traceparent` HTTP header.
    Header,
    /// The trigger envelope's `traceparent` field.
    Envelope,
}

/// Triggers `traced` over the HTTP API; returns the execution id.
async fn trigger(addr: std::net::SocketAddr, carrier: Carrier) -> ExecutionId {
    let traceparent = format!("00-{TRACE_ID}-{PARENT_ID}-01");
    let (header, body) = match carrier {
        Carrier::Header => (format!("traceparent: {traceparent}\r\n"), "7".to_owned()),
        Carrier::Envelope => (String::new(), format!(r#"{{"payload": 7, "traceparent": "{traceparent}"}}"#)),
    };
    let request = format!(
        "POST /api/v1/workers/jobs/traced/trigger HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         {header}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 202"), "{response}");
    let json = &response[response.find("\r\n\r\n").unwrap() + 4..];
    let json: serde_json::Value = serde_json::from_str(json).unwrap();
    json["executionId"].as_str().unwrap().parse().unwrap()
}

fn attributes(span: &Span) -> HashMap<String, Value> {
    span.attributes.iter().filter_map(|kv| Some((kv.key.clone(), kv.value.as_ref()?.value.clone()?))).collect()
}

/// Runs the whole scenario against a receiver speaking `protocol`.
fn one_trace_end_to_end(protocol: OtlpProtocol, carrier: Carrier) {
    let tokio_rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let received = Received::default();
    let endpoint = tokio_rt.block_on(async {
        match protocol {
            OtlpProtocol::HttpProtobuf => http_receiver(received.clone()).await,
            OtlpProtocol::Grpc => grpc_receiver(received.clone()).await,
        }
    });
    let service = format!("telemetry-test-{protocol:?}");
    let config = TelemetryConfig::new(endpoint, protocol, service.clone());
    // The gRPC channel's task runs on the runtime the guard is started in.
    let guard = Arc::new(tokio_rt.block_on(async { TelemetryGuard::start(&config) }).unwrap());
    let subscriber = tracing_subscriber::registry().with(guard.layer());
    let _default = tracing::subscriber::set_default(subscriber);

    tokio_rt.block_on(async {
        let rt = Runtime::builder().ignore_env().provider(QueueProvider::Memory).concurrency(2).build().await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn({
            let rt = rt.clone();
            async move { rt.serve_on(listener, true, async move { stopped.await.unwrap_or(()) }).await }
        });

        let execution = trigger(addr, carrier).await;
        let record = rt.wait_for(execution, Duration::from_secs(30)).await.unwrap().unwrap();
        assert_eq!(record.status, ExecutionStatus::Succeeded);

        // The attempt span ends once the worker drops its context, a moment after the record
        // is written: flush until both spans are in, for at most 10 s.
        let execution_id = execution.to_string();
        let mut found = None;
        for _ in 0..100 {
            let flushing = Arc::clone(&guard);
            // Blocks until the export is answered; the receiver runs on this thread's runtime.
            tokio::task::spawn_blocking(move || flushing.force_flush()).await.unwrap().unwrap();
            let spans = received.spans();
            let attempt = spans.iter().find(|(_, s)| {
                s.name == "job" && attributes(s).get("execution.id") == Some(&Value::StringValue(execution_id.clone()))
            });
            let work = spans.iter().find(|(_, s)| s.name == "handler.work");
            let enqueue = spans.iter().find(|(_, s)| {
                s.name == "enqueue"
                    && attributes(s).get("execution.id") == Some(&Value::StringValue(execution_id.clone()))
            });
            let dispatch = spans.iter().find(|(_, s)| {
                s.name == "dispatch"
                    && attributes(s).get("execution.id") == Some(&Value::StringValue(execution_id.clone()))
            });
            if let (Some(a), Some(w), Some(e), Some(d)) = (attempt, work, enqueue, dispatch) {
                found = Some((a.clone(), w.clone(), e.clone(), d.clone()));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ((attempt_service, attempt), (_, work), (_, enqueue), (_, dispatch)) =
            found.expect("the enqueue, dispatch, attempt and handler spans were not exported");

        assert_eq!(attempt_service, service);
        assert_eq!(hex(&enqueue.trace_id), TRACE_ID, "the enqueue joins the trace of the traceparent");
        assert_eq!(hex(&enqueue.parent_span_id), PARENT_ID, "the enqueue's parent is the traceparent's span");
        let enqueued = attributes(&enqueue);
        assert_eq!(enqueued.get("job.id"), Some(&Value::StringValue("traced".into())));
        assert_eq!(enqueued.get("queue.provider"), Some(&Value::StringValue("memory".into())));
        assert_eq!(enqueued.get("outcome"), Some(&Value::StringValue("created".into())));
        assert_eq!(hex(&dispatch.trace_id), TRACE_ID, "the dispatch joins the trace of the traceparent");
        assert_eq!(dispatch.parent_span_id, enqueue.span_id, "the dispatch's parent is the enqueue span");
        let dispatched = attributes(&dispatch);
        assert_eq!(dispatched.get("queue.provider"), Some(&Value::StringValue("memory".into())));
        assert_eq!(dispatched.get("attempt"), Some(&Value::IntValue(1)));
        assert_eq!(dispatched.get("outcome"), Some(&Value::StringValue("succeeded".into())));
        assert_eq!(hex(&attempt.trace_id), TRACE_ID, "the attempt joins the trace of the traceparent");
        assert_eq!(attempt.parent_span_id, dispatch.span_id, "the attempt's parent is the dispatch span");
        let attrs = attributes(&attempt);
        assert_eq!(attrs.get("job.id"), Some(&Value::StringValue("traced".into())));
        assert_eq!(attrs.get("attempt"), Some(&Value::IntValue(1)));
        assert_eq!(hex(&work.trace_id), TRACE_ID, "the handler's span is in the same trace");
        assert_eq!(work.parent_span_id, attempt.span_id, "the handler's span is a child of the attempt span");

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap();
    });
    Arc::into_inner(guard).unwrap().shutdown().unwrap();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn http_protobuf_export_carries_one_trace_from_the_traceparent_header() {
    one_trace_end_to_end(OtlpProtocol::HttpProtobuf, Carrier::Header);
}

#[test]
fn grpc_export_carries_one_trace_from_the_envelope_traceparent() {
    one_trace_end_to_end(OtlpProtocol::Grpc, Carrier::Envelope);
}
