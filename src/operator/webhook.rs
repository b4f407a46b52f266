//! The mutating admission webhook: `POST /mutate` over HTTPS, AdmissionReview
//! `admission.k8s.io/v1` in and out. Every request gets a well-formed review back, a
//! denial when the body is bad. The review itself is [`Webhook::review`], bytes in and
//! bytes out, around [`inject`]; the server is a plain hyper service on tokio-rustls.

use std::convert::Infallible;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
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

    /// Reads the review, lets through what is not a Pod being created, and injects the
    /// pod with the sinks of its namespace (a sink that cannot be read denies the pods
    /// that ask for it).
    fn decide(&self, body: &[u8]) -> (AdmissionResponse, ReviewResult) {
        let request = match read_request(body) {
            Ok(r) => r,
            Err(why) => {
                let invalid = AdmissionResponse::invalid(format!("starsink webhook: {why}"));
                return (v1(invalid), ReviewResult::Invalid);
            }
        };
        let answer = AdmissionResponse::from(&request);
        if let Some(passed) = not_for_injection(&request, answer.clone()) {
            return passed;
        }
        let refuse = |answer: AdmissionResponse, why: String| {
            let denied = answer.deny(format!("starsink webhook: {why}"));
            (v1(denied), ReviewResult::Invalid)
        };
        let (original, pod) = match pod_of(&request) {
            Ok(p) => p,
            Err(why) => return refuse(answer, why),
        };
        let sinks = self.sinks.sinks_in(&pod.namespace().unwrap_or_default());
        if let Some(why) = unreadable_sinks_denial(&pod, &sinks.unreadable) {
            return (v1(answer.deny(why)), ReviewResult::Denied);
        }
        match inject(&pod, &sinks.readable, &self.settings) {
            Injection::Unchanged(_) => (v1(answer), ReviewResult::Unchanged),
            Injection::Denied(why) => (v1(answer.deny(why)), ReviewResult::Denied),
            Injection::Injected(injected) => {
                let patched = patch(&original, *injected)
                    .and_then(|p| answer.clone().with_patch(p).map_err(|e| e.to_string()));
                match patched {
                    Ok(r) => (v1(r), ReviewResult::Injected),
                    Err(why) => refuse(answer, why),
                }
            }
        }
    }
}

/// The request of an AdmissionReview body, or why there is none.
fn read_request(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, String> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not an AdmissionReview: {e}"))?;
    review
        .try_into()
        .map_err(|_| "the AdmissionReview has no request".to_owned())
}

/// The answer for a request the webhook does not inject: another kind (a webhook
/// configuration that sends it is a mistake; it is never blocked, only warned about), or
/// an operation other than CREATE.
fn not_for_injection(
    request: &AdmissionRequest<DynamicObject>,
    mut answer: AdmissionResponse,
) -> Option<(AdmissionResponse, ReviewResult)> {
    if !request.kind.group.is_empty() || request.kind.kind != "Pod" {
        answer.warnings = Some(vec![format!(
            "starsink webhook: only Pods are injected; {} passed unchanged",
            request.kind.kind
        )]);
        return Some((v1(answer), ReviewResult::Unchanged));
    }
    (request.operation != Operation::Create).then(|| (v1(answer), ReviewResult::Unchanged))
}

/// The pod in the request, as sent and as a `Pod`, its namespace filled in from the
/// request (a pod being created has none of its own yet).
fn pod_of(request: &AdmissionRequest<DynamicObject>) -> Result<(serde_json::Value, Pod), String> {
    let object = request
        .object
        .as_ref()
        .ok_or("the request carries no pod")?;
    let original = serde_json::to_value(object).map_err(|e| e.to_string())?;
    let mut pod: Pod = serde_json::from_value(original.clone())
        .map_err(|e| format!("the object is not a Pod: {e}"))?;
    let namespace = request
        .namespace
        .clone()
        .or_else(|| pod.namespace())
        .unwrap_or_else(|| "default".into());
    pod.metadata.namespace = Some(namespace);
    Ok((original, pod))
}

/// The JSON patch from the pod as sent to the injected one. The namespace was only
/// filled in for the lookup; it is not the webhook's to set.
fn patch(original: &serde_json::Value, injected: Pod) -> Result<json_patch::Patch, String> {
    let mut after = serde_json::to_value(injected).map_err(|e| e.to_string())?;
    if original["metadata"]["namespace"].is_null() {
        if let Some(m) = after["metadata"].as_object_mut() {
            m.remove("namespace");
        }
    }
    Ok(json_patch::diff(original, &after))
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

/// The serving certificate, swappable while the server runs (rotation), and when it
/// expires (for `starsink_webhook_certificate_expiry_timestamp_seconds`).
#[derive(Debug, Default)]
pub struct CertResolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
    /// The served certificate's notAfter in Unix seconds; 0 until one is set.
    not_after: AtomicI64,
}

impl CertResolver {
    /// Installs a certificate chain and key, both PEM.
    pub fn set(&self, cert_pem: &str, key_pem: &str) -> Result<(), String> {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("serving certificate: {e}"))?;
        let leaf = certs
            .first()
            .ok_or("serving certificate: the PEM holds no certificate")?;
        let not_after = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| format!("serving certificate: not X.509 ({e})"))?
            .1
            .validity()
            .not_after
            .timestamp();
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| format!("serving key: {e}"))?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| format!("serving key: {e}"))?;
        let certified = Arc::new(CertifiedKey::new(certs, signing));
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(certified);
        self.not_after.store(not_after, Relaxed);
        Ok(())
    }

    /// `starsink_webhook_certificate_expiry_timestamp_seconds`, once a certificate is set.
    pub fn render(&self) -> String {
        let name = "starsink_webhook_certificate_expiry_timestamp_seconds";
        let mut out = crate::telemetry::Exposition::default();
        out.family(
            name,
            "gauge",
            "When the webhook's serving certificate expires, in Unix seconds.",
        );
        match self.not_after.load(Relaxed) {
            0 => {}
            at => {
                out.sample(name, &[], at);
            }
        }
        out.finish()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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

#[cfg(test)]
mod tests {
    use super::CertResolver;

    const EXPIRY: &str = "starsink_webhook_certificate_expiry_timestamp_seconds";

    #[test]
    fn the_served_certificates_expiry_is_exported_once_one_is_set() {
        let resolver = CertResolver::default();
        assert!(!resolver.render().contains(&format!("\n{EXPIRY}{{}} ")));
        let mut params = rcgen::CertificateParams::new(vec!["webhook".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2030, 1, 2);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        resolver.set(&cert.pem(), &key.serialize_pem()).unwrap();
        // 2030-01-02T00:00:00Z
        assert!(resolver
            .render()
            .contains(&format!("\n{EXPIRY}{{}} 1893542400\n")));
    }

    #[test]
    fn a_pem_without_a_certificate_is_refused_and_nothing_changes() {
        let resolver = CertResolver::default();
        let key = rcgen::KeyPair::generate().unwrap();
        assert!(resolver.set("", &key.serialize_pem()).is_err());
        assert!(!resolver.render().contains(&format!("\n{EXPIRY}{{}} ")));
    }
}
