//! The mutating admission webhook: `POST /mutate` over HTTPS, AdmissionReview
//! `admission.k8s.io/v1` in and out. Every request gets a well-formed review back, a
//! denial when the body is bad. The review itself is [`Webhook::review`], bytes in and
//! bytes out, around [`inject`]; the server is a plain hyper service on tokio-rustls.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DynamicObject, TypeMeta};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::runtime::reflector::Store;
use kube::ResourceExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::inject::{inject, unreadable_sinks_denial, InjectSettings, Injection};
use crate::api::resource::{SpecError, StoredSink};
use crate::api::StarRocksSink;
use crate::telemetry::Histogram;

/// The API server sends at most about 3 MiB; a larger body is refused unread.
pub const MAX_BODY: usize = 4 << 20;

/// Where the webhook finds sinks: the controller's reflector cache, never the API.
pub trait SinkSource: Send + Sync + 'static {
    fn sinks_in(&self, namespace: &str) -> NamespaceSinks;
}

/// The sinks of one namespace: those whose spec reads, and those whose spec does not
/// (by name, with why), so a pod that names a broken sink is told so, and no other pod
/// is affected by it.
#[derive(Debug, Default)]
pub struct NamespaceSinks {
    pub readable: Vec<StarRocksSink>,
    pub unreadable: Vec<(String, SpecError)>,
}

impl SinkSource for Store<StoredSink> {
    fn sinks_in(&self, namespace: &str) -> NamespaceSinks {
        let mut out = NamespaceSinks::default();
        for s in self.state() {
            if s.namespace().as_deref() != Some(namespace) {
                continue;
            }
            match s.decode() {
                Ok(sink) => out.readable.push(sink),
                Err(e) => out.unreadable.push((s.name_any(), e)),
            }
        }
        out
    }
}

impl SinkSource for Vec<StarRocksSink> {
    fn sinks_in(&self, namespace: &str) -> NamespaceSinks {
        NamespaceSinks {
            readable: self
                .iter()
                .filter(|s| s.namespace().as_deref().unwrap_or(namespace) == namespace)
                .cloned()
                .collect(),
            unreadable: Vec::new(),
        }
    }
}

/// Review counters, by result.
#[derive(Debug, Default)]
pub struct WebhookMetrics {
    injected: AtomicU64,
    unchanged: AtomicU64,
    denied: AtomicU64,
    invalid: AtomicU64,
    latency: Histogram,
}

/// How a review ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReviewResult {
    Injected,
    Unchanged,
    Denied,
    Invalid,
}

impl WebhookMetrics {
    fn count(&self, r: ReviewResult, took: std::time::Duration) {
        match r {
            ReviewResult::Injected => &self.injected,
            ReviewResult::Unchanged => &self.unchanged,
            ReviewResult::Denied => &self.denied,
            ReviewResult::Invalid => &self.invalid,
        }
        .fetch_add(1, Relaxed);
        self.latency.observe(took.as_secs_f64());
    }

    pub fn render(&self) -> String {
        let (total, duration) = (
            "starsink_webhook_reviews_total",
            "starsink_webhook_review_duration_seconds",
        );
        let mut out = crate::telemetry::Exposition::default();
        out.family(total, "counter", "Admission reviews, by result.");
        for (result, c) in [
            ("injected", &self.injected),
            ("unchanged", &self.unchanged),
            ("denied", &self.denied),
            ("invalid", &self.invalid),
        ] {
            out.sample(total, &[("result", result)], c.load(Relaxed));
        }
        out.family(duration, "histogram", "Time to answer one review.")
            .histogram(duration, &[], &self.latency);
        out.finish()
    }
}

/// The webhook's state: where sinks come from and how to inject.
pub struct Webhook {
    pub sinks: Arc<dyn SinkSource>,
    pub settings: InjectSettings,
    pub metrics: Arc<WebhookMetrics>,
}

fn v1(mut response: AdmissionResponse) -> AdmissionResponse {
    response.types = TypeMeta {
        api_version: "admission.k8s.io/v1".into(),
        kind: "AdmissionReview".into(),
    };
    response
}

impl Webhook {
    /// Answers one AdmissionReview body with an AdmissionReview body.
    pub fn review(&self, body: &[u8]) -> (Vec<u8>, ReviewResult) {
        let started = Instant::now();
        let (response, result) = self.decide(body);
        self.metrics.count(result, started.elapsed());
        (encode(response), result)
    }

    fn decide(&self, body: &[u8]) -> (AdmissionResponse, ReviewResult) {
        let invalid = |why: String| {
            (
                v1(AdmissionResponse::invalid(format!(
                    "starsink webhook: {why}"
                ))),
                ReviewResult::Invalid,
            )
        };
        let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => return invalid(format!("the body is not an AdmissionReview: {e}")),
        };
        let request: AdmissionRequest<DynamicObject> = match review.try_into() {
            Ok(r) => r,
            Err(_) => return invalid("the AdmissionReview has no request".into()),
        };
        let answer = AdmissionResponse::from(&request);
        if !request.kind.group.is_empty() || request.kind.kind != "Pod" {
            // A webhook configuration that sends other kinds is a mistake; never block them.
            let mut r = answer;
            r.warnings = Some(vec![format!(
                "starsink webhook: only Pods are injected; {} passed unchanged",
                request.kind.kind
            )]);
            return (v1(r), ReviewResult::Unchanged);
        }
        if request.operation != Operation::Create {
            return (v1(answer), ReviewResult::Unchanged);
        }
        let Some(object) = request.object.as_ref() else {
            return (
                v1(answer.deny("starsink webhook: the request carries no pod")),
                ReviewResult::Invalid,
            );
        };
        let original = match serde_json::to_value(object) {
            Ok(v) => v,
            Err(e) => {
                return (
                    v1(answer.deny(format!("starsink webhook: {e}"))),
                    ReviewResult::Invalid,
                )
            }
        };
        let mut pod: Pod = match serde_json::from_value(original.clone()) {
            Ok(p) => p,
            Err(e) => {
                return (
                    v1(answer.deny(format!("starsink webhook: the object is not a Pod: {e}"))),
                    ReviewResult::Invalid,
                )
            }
        };
        // A pod being created has no namespace of its own yet; the request says it.
        let namespace = request
            .namespace
            .clone()
            .or_else(|| pod.namespace())
            .unwrap_or_else(|| "default".into());
        pod.metadata.namespace = Some(namespace.clone());
        let sinks = self.sinks.sinks_in(&namespace);
        if let Some(why) = unreadable_sinks_denial(&pod, &sinks.unreadable) {
            return (v1(answer.deny(why)), ReviewResult::Denied);
        }
        match inject(&pod, &sinks.readable, &self.settings) {
            Injection::Unchanged(_) => (v1(answer), ReviewResult::Unchanged),
            Injection::Denied(why) => (v1(answer.deny(why)), ReviewResult::Denied),
            Injection::Injected(injected) => {
                let mut after = match serde_json::to_value(*injected) {
                    Ok(v) => v,
                    Err(e) => {
                        return (
                            v1(answer.deny(format!("starsink webhook: {e}"))),
                            ReviewResult::Invalid,
                        )
                    }
                };
                // The namespace was only filled in for the lookup; it is not ours to set.
                if original["metadata"]["namespace"].is_null() {
                    if let Some(m) = after["metadata"].as_object_mut() {
                        m.remove("namespace");
                    }
                }
                let patch = json_patch::diff(&original, &after);
                match answer.clone().with_patch(patch) {
                    Ok(r) => (v1(r), ReviewResult::Injected),
                    Err(e) => (
                        v1(answer.deny(format!("starsink webhook: {e}"))),
                        ReviewResult::Invalid,
                    ),
                }
            }
        }
    }
}

/// The review as JSON. The patch goes out base64-encoded, as Kubernetes documents it
/// (Go's `[]byte`); kube-core would write it as an array of numbers.
fn encode(response: AdmissionResponse) -> Vec<u8> {
    use base64::Engine;
    let mut review = match serde_json::to_value(response.into_review()) {
        Ok(v) => v,
        Err(e) => return encode_failure(&e.to_string()),
    };
    if let Some(bytes) = review["response"]["patch"].as_array() {
        let raw: Vec<u8> = bytes
            .iter()
            .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
            .collect();
        review["response"]["patch"] =
            serde_json::Value::from(base64::engine::general_purpose::STANDARD.encode(raw));
    }
    serde_json::to_vec(&review).unwrap_or_else(|e| encode_failure(&e.to_string()))
}

fn encode_failure(e: &str) -> Vec<u8> {
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": "", "allowed": false, "status": {"message": format!("cannot encode the answer: {e}")}},
    })
    .to_string()
    .into_bytes()
}

/// The serving certificate, swappable while the server runs (rotation).
#[derive(Debug)]
pub struct CertResolver(RwLock<Option<Arc<CertifiedKey>>>);

impl Default for CertResolver {
    fn default() -> Self {
        Self(RwLock::new(None))
    }
}

impl CertResolver {
    /// Installs a certificate chain and key, both PEM.
    pub fn set(&self, cert_pem: &str, key_pem: &str) -> Result<(), String> {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("serving certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| format!("serving key: {e}"))?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| format!("serving key: {e}"))?;
        let certified = Arc::new(CertifiedKey::new(certs, signing));
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(certified);
        Ok(())
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The rustls server configuration for a resolver.
pub fn tls_config(resolver: Arc<CertResolver>) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap_or_else(|e| unreachable!("ring supports the default versions: {e}"))
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Serves `POST /mutate` over TLS until `stop`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    webhook: Arc<Webhook>,
    stop: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut backoff = crate::accept::AcceptBackoff::new("webhook");
    while let Some((stream, peer)) = backoff.next(&stop, || listener.accept()).await {
        let acceptor = acceptor.clone();
        let webhook = webhook.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(stream),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %peer, error = %e, "webhook: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(move |req| {
                let webhook = webhook.clone();
                async move { Ok::<_, Infallible>(handle(&webhook, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(webhook: &Webhook, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: Vec<u8>| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
    };
    if req.method() != Method::POST || req.uri().path() != "/mutate" {
        return reply(
            StatusCode::NOT_FOUND,
            br#"{"message":"starsink webhook: POST an AdmissionReview to /mutate"}"#.to_vec(),
        );
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            // Still a well-formed review, so the API server shows the reason.
            let started = Instant::now();
            webhook
                .metrics
                .count(ReviewResult::Invalid, started.elapsed());
            let response = v1(AdmissionResponse::invalid(format!(
                "starsink webhook: request body refused: over {MAX_BODY} bytes or unreadable ({e})"
            )));
            return reply(StatusCode::OK, encode(response));
        }
    };
    let (bytes, _) = webhook.review(&body);
    reply(StatusCode::OK, bytes)
}
