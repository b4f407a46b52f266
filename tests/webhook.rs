//! The admission webhook over real HTTPS: a client that trusts only the generated CA
//! posts AdmissionReviews; the returned JSON patch, applied to the original pod, must give
//! exactly what `inject()` gives. Bad bodies, other kinds and oversized requests get a
//! well-formed denial or pass-through, never a crash.

mod kube_api;

mod kube_rules;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use starsink::api::resource::StoredSink;
use starsink::http1::Conn;
use starsink::operator::certs::{renew, service_dns_names, Renewal, TlsMaterial, Validity};
use starsink::operator::inject::{inject, InjectSettings, Injection};
use starsink::operator::manifests::read_sinks;
use starsink::operator::webhook::{serve, tls_config, CertResolver, Webhook, WebhookMetrics};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

fn sinks() -> Vec<starsink::api::StarRocksSink> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inject/sinks.yaml");
    read_sinks(&std::fs::read_to_string(path).unwrap(), "sinks.yaml").unwrap()
}

fn settings() -> InjectSettings {
    InjectSettings {
        image: "ghcr.io/starsink/starsink:test".into(),
        kube_version: (1, 30),
        ..InjectSettings::default()
    }
}

fn fixture_pod(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/inject")
        .join(name);
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

struct Server {
    addr: std::net::SocketAddr,
    material: TlsMaterial,
    resolver: Arc<CertResolver>,
    metrics: Arc<WebhookMetrics>,
    stop: CancellationToken,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn start() -> Server {
    let material = renew(
        None,
        Renewal::NewCa,
        &service_dns_names("starsink-webhook", "starsink-system"),
        now(),
        Validity::default(),
    )
    .unwrap();
    let resolver = Arc::new(CertResolver::default());
    resolver.set(&material.cert, &material.key).unwrap();
    let (addr, metrics, stop) = serve_with(resolver.clone()).await;
    Server {
        addr,
        material,
        resolver,
        metrics,
        stop,
    }
}

/// Starts the webhook on a loopback port with the fixture sinks and `resolver`'s
/// certificate.
async fn serve_with(
    resolver: Arc<CertResolver>,
) -> (std::net::SocketAddr, Arc<WebhookMetrics>, CancellationToken) {
    let metrics = Arc::new(WebhookMetrics::default());
    let webhook = Arc::new(Webhook {
        sinks: Arc::new(sinks()),
        settings: settings(),
        metrics: metrics.clone(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(serve(listener, tls_config(resolver), webhook, stop.clone()));
    (addr, metrics, stop)
}

/// POSTs `body` to /mutate over TLS, trusting only `ca_bundle`, as the API server does
/// (it connects to the Service name); returns the HTTP status and the parsed body.
async fn post(addr: std::net::SocketAddr, ca_bundle: &str, body: &[u8]) -> (u16, Value) {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_bundle.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("starsink-webhook.starsink-system.svc")
        .unwrap()
        .to_owned();
    let tls = connector
        .connect(name, tcp)
        .await
        .expect("TLS handshake trusting the generated CA");
    let mut conn = Conn::new(tls);
    let head = format!(
        "POST /mutate?timeout=5s HTTP/1.1\r\nHost: starsink-webhook.starsink-system.svc\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    // A refused oversized body may be answered before it is all sent.
    let _ = conn.write_all(body).await;
    let response = conn.read_response_head().await.unwrap();
    let len = response.headers.body_length();
    let bytes = conn.read_body(len, 16 << 20).await.unwrap();
    (
        response.status,
        serde_json::from_slice(&bytes).expect("a JSON body"),
    )
}

fn review(object: &Value, kind: &str, group: &str, namespace: &str) -> Vec<u8> {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": format!("{}s", kind.to_lowercase())},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object,
            "dryRun": false,
        },
    })
    .to_string()
    .into_bytes()
}

fn response(v: &Value) -> &Value {
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1", "{v}");
    assert_eq!(v["kind"], "AdmissionReview", "{v}");
    &v["response"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_patch_over_https_gives_what_inject_gives() {
    let server = start().await;
    for case in [
        "02-multi-container.yaml",
        "03-istio-proxy-first.yaml",
        "11-restricted-pss.yaml",
        "05-generate-name.yaml",
    ] {
        let mut pod = fixture_pod(case);
        // As the API server sends it: the namespace is in the request, not always the pod.
        pod["metadata"].as_object_mut().unwrap().remove("namespace");
        let (status, body) = post(
            server.addr,
            &server.material.ca_bundle,
            &review(&pod, "Pod", "", "shop"),
        )
        .await;
        assert_eq!(status, 200);
        let r = response(&body);
        assert_eq!(r["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(r["allowed"], true, "{case}: {r}");
        assert_eq!(r["patchType"], "JSONPatch");
        let patch: json_patch::Patch = serde_json::from_slice(
            &base64::engine::general_purpose::STANDARD
                .decode(r["patch"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap();
        let mut patched = pod.clone();
        json_patch::patch(&mut patched, &patch).expect("the patch applies to the pod");
        let refused = kube_rules::problems(&patched);
        assert!(
            refused.is_empty(),
            "{case}: a real API server would refuse the patched pod: {refused:?}"
        );

        let mut typed: k8s_openapi::api::core::v1::Pod =
            serde_json::from_value(pod.clone()).unwrap();
        typed.metadata.namespace = Some("shop".into());
        let Injection::Injected(expected) = inject(&typed, &sinks(), &settings()) else {
            panic!("{case}: inject() did not inject");
        };
        let mut expected = serde_json::to_value(*expected).unwrap();
        expected["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("namespace");
        let patched_typed: k8s_openapi::api::core::v1::Pod =
            serde_json::from_value(patched).unwrap();
        assert_eq!(
            serde_json::to_value(patched_typed).unwrap(),
            expected,
            "{case}"
        );
    }
    server.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_well_formed_answer() {
    let server = start().await;
    let ca = server.material.ca_bundle.clone();

    let (status, body) = post(server.addr, &ca, b"{not json").await;
    assert_eq!(status, 200);
    let r = response(&body);
    assert_eq!(r["allowed"], false);
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("not an AdmissionReview"),
        "{r}"
    );

    // Another kind (a misconfigured webhook): never blocked, never changed.
    let deployment = fixture_pod("01-deployment.yaml");
    let (_, body) = post(
        server.addr,
        &ca,
        &review(&deployment, "Deployment", "apps", "shop"),
    )
    .await;
    let r = response(&body);
    assert_eq!(r["allowed"], true, "{r}");
    assert!(r["patch"].is_null());
    assert!(
        r["warnings"][0].as_str().unwrap().contains("only Pods"),
        "{r}"
    );

    // A pod naming a sink that does not exist: denied, saying which and how to fix it.
    let pod = fixture_pod("13-missing-sink-deny.yaml");
    let (_, body) = post(server.addr, &ca, &review(&pod, "Pod", "", "shop")).await;
    let r = response(&body);
    assert_eq!(r["allowed"], false);
    assert!(
        r["status"]["message"].as_str().unwrap().contains("clickz"),
        "{r}"
    );

    // Oversized: refused unread, still as a review.
    let mut big = fixture_pod("02-multi-container.yaml");
    big["metadata"]["annotations"]["padding"] = Value::from("x".repeat(5 << 20));
    let (status, body) = post(server.addr, &ca, &review(&big, "Pod", "", "shop")).await;
    assert_eq!(status, 200);
    let r = response(&body);
    assert_eq!(r["allowed"], false);
    assert!(
        r["status"]["message"].as_str().unwrap().contains("over"),
        "{r}"
    );

    // The server is still fine, and counted each result.
    let pod = fixture_pod("12-no-opt-in.yaml");
    let (_, body) = post(server.addr, &ca, &review(&pod, "Pod", "", "shop")).await;
    assert_eq!(response(&body)["allowed"], true);
    let text = server.metrics.render();
    for line in [
        "starsink_webhook_reviews_total{result=\"invalid\"} 2",
        "starsink_webhook_reviews_total{result=\"denied\"} 1",
        "starsink_webhook_reviews_total{result=\"unchanged\"} 2",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    server.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_certificate_is_served_at_once_without_a_restart() {
    let server = start().await;
    let names = service_dns_names("starsink-webhook", "starsink-system");
    let published = renew(
        Some(&server.material),
        Renewal::NewCa,
        &names,
        now(),
        Validity::default(),
    )
    .unwrap();
    let next = renew(
        Some(&published),
        Renewal::NewCert,
        &names,
        now(),
        Validity::default(),
    )
    .unwrap();
    server.resolver.set(&next.cert, &next.key).unwrap();
    // Clients holding only the new CA, and clients with the bundle (old and new), connect.
    let pod = fixture_pod("12-no-opt-in.yaml");
    let (status, _) = tokio::time::timeout(
        Duration::from_secs(5),
        post(server.addr, &next.ca_cert, &review(&pod, "Pod", "", "shop")),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let (status, _) = post(
        server.addr,
        &next.ca_bundle,
        &review(&pod, "Pod", "", "shop"),
    )
    .await;
    assert_eq!(status, 200);
    server.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_and_the_ca_bundle_follows_with_no_failed_review() {
    use starsink::operator::tls::{ensure, run, TlsOptions};
    const CONFIGS: &str = "admissionregistration.k8s.io/mutatingwebhookconfigurations";

    let api = kube_api::FakeApi::new();
    api.put(CONFIGS, kube_api::webhook_configuration("starsink"));
    let client = api.client();
    let opts = TlsOptions {
        namespace: "starsink-system".into(),
        secret: "starsink-webhook-tls".into(),
        webhook_config: "starsink".into(),
        service: "starsink-webhook".into(),
        owner: None,
        // Renewal at a third of the life left: a new certificate every 4s, a new CA at 8s
        // that signs from 9s on.
        validity: Validity {
            ca: Duration::from_secs(12),
            cert: Duration::from_secs(6),
        },
    };
    let resolver = Arc::new(CertResolver::default());
    ensure(&client, &opts, &resolver)
        .await
        .expect("first certificate");
    let (addr, _, stop) = serve_with(resolver.clone()).await;
    tokio::spawn(run(client, opts, resolver, stop.clone()));

    // Review continuously, trusting what the API server would: the configuration's caBundle.
    let pod = fixture_pod("02-multi-container.yaml");
    let body = review(&pod, "Pod", "", "shop");
    let mut certs = std::collections::BTreeSet::new();
    let mut cas = std::collections::BTreeSet::new();
    let mut reviews = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while certs.len() < 4 || cas.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "saw {} certificates and {} CAs in 30s",
            certs.len(),
            cas.len()
        );
        let config = api.get(CONFIGS, "", "starsink").unwrap();
        let bundle = String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(
                    config["webhooks"][0]["clientConfig"]["caBundle"]
                        .as_str()
                        .unwrap(),
                )
                .unwrap(),
        )
        .unwrap();
        let (status, answer) = post(addr, &bundle, &body).await;
        assert_eq!(status, 200);
        assert_eq!(
            response(&answer)["allowed"],
            true,
            "review {reviews} failed: {answer}"
        );
        reviews += 1;
        let secret = api
            .get("core/secrets", "starsink-system", "starsink-webhook-tls")
            .unwrap();
        certs.insert(secret["data"]["tls.crt"].as_str().unwrap().to_owned());
        cas.insert(secret["data"]["ca.crt"].as_str().unwrap().to_owned());
    }
    assert!(reviews > 10, "only {reviews} reviews across the rotations");
    stop.cancel();
}

/// A webhook whose sink cache holds what the API server stored: `stored`, through a real
/// reflector store.
fn webhook_over(stored: Vec<Value>) -> Webhook {
    use kube::runtime::{reflector, watcher};
    let (store, mut writer) = reflector::store::<StoredSink>();
    writer.apply_watcher_event(&watcher::Event::Init);
    for s in stored {
        writer.apply_watcher_event(&watcher::Event::InitApply(
            serde_json::from_value(s).unwrap(),
        ));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    Webhook {
        sinks: Arc::new(store),
        settings: settings(),
        metrics: Arc::new(WebhookMetrics::default()),
    }
}

fn stored_sink(name: &str, max_record_bytes: &str) -> Value {
    json!({
        "apiVersion": "starsink.io/v1alpha1", "kind": "StarRocksSink",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "maxRecordBytes": max_record_bytes,
            "starrocks": {"feEndpoints": ["http://fe:8030"], "database": "shop", "table": "t"},
            "credentialsSecretRef": {"name": "sr"},
        },
    })
}

fn pod_for(sinks: &str, skip: bool) -> Value {
    let mut annotations = json!({"starsink.io/sinks": sinks});
    if skip {
        annotations["starsink.io/on-missing-sink"] = json!("skip");
    }
    json!({
        "metadata": {"name": "p", "labels": {"starsink.io/inject": "true"}, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    })
}

#[test]
fn a_sink_that_cannot_be_read_denies_only_the_pods_that_name_it() {
    let hook = webhook_over(vec![
        stored_sink("orders", "1MiB"),
        stored_sink("broken", "99999999999999999999GiB"),
    ]);
    let answer = |pod: Value| {
        let (body, _) = hook.review(&review(&pod, "Pod", "", "shop"));
        serde_json::from_slice::<Value>(&body).unwrap()["response"].clone()
    };
    let r = answer(pod_for("orders", false));
    assert_eq!(r["allowed"], true, "{r}");
    assert!(r["patch"].is_string(), "injected: {r}");

    let r = answer(pod_for("orders,broken", false));
    assert_eq!(r["allowed"], false, "{r}");
    let why = r["status"]["message"].as_str().unwrap();
    assert!(
        why.contains("StarRocksSink broken cannot be read (spec.maxRecordBytes: ")
            && why.contains("starsink.io/on-missing-sink: skip"),
        "{why}"
    );

    // With skip, the pod starts with the sinks that can be read.
    let r = answer(pod_for("orders,broken", true));
    assert_eq!(r["allowed"], true, "{r}");
    assert!(r["patch"].is_string(), "injected for orders: {r}");
}
