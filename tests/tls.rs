//! TLS to StarRocks, end to end: a real loader against the dev endpoint serving its FE
//! and BE over TLS with a CA made here.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use starsink::dev_endpoint::{DevEndpoint, EndpointConfig, EndpointTls};
use starsink::operator::certs::{renew, Renewal, TlsMaterial, Validity};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

fn row(id: u64) -> String {
    format!(r#"{{"id":{id},"name":"row-{id}"}}"#)
}

/// A CA and a serving certificate for 127.0.0.1 and localhost.
fn material() -> TlsMaterial {
    let names = ["127.0.0.1".to_owned(), "localhost".to_owned()];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    renew(None, Renewal::NewCa, &names, now, Validity::default()).expect("certificates")
}

/// The dev endpoint with TLS on the FE, and on the BE when `be_tls`.
async fn tls_endpoint(m: &TlsMaterial, be_tls: bool) -> DevEndpoint {
    tls_endpoint_asking(m, be_tls, None).await
}

/// A CA for client certificates, and a client certificate and key (PEM) it signed.
fn client_ca_and_cert() -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(vec!["loader".to_owned()]).unwrap();
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    (ca_pem, cert.pem(), key.serialize_pem())
}

/// [`tls_endpoint`], asking clients for a certificate from `client_ca` when given.
async fn tls_endpoint_asking(
    m: &TlsMaterial,
    be_tls: bool,
    client_ca: Option<&str>,
) -> DevEndpoint {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(m.cert.as_bytes())
        .collect::<Result<_, _>>()
        .expect("cert PEM");
    let key = PrivateKeyDer::from_pem_slice(m.key.as_bytes()).expect("key PEM");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certs, key)
        .expect("a serving certificate");
    DevEndpoint::start(EndpointConfig {
        tls: Some(EndpointTls {
            config: Arc::new(config),
            fe: true,
            be: be_tls,
        }),
        ..EndpointConfig::default()
    })
    .await
    .expect("start the dev endpoint")
}

/// A config loading into shop.orders over `fe` with `tls` (YAML under `starrocks:`).
fn config(dir: &Path, fe: &str, tls: &str) -> String {
    format!(
        "labelPrefix: tls\nmetricsAddr: 127.0.0.1:0\nshutdownTimeout: 3s\nsinks:\n  - name: orders\n    socket: {}\n    starrocks:\n      feEndpoints: [\"{fe}\"]\n      database: shop\n      table: orders\n      tls: {tls}\n    flush:\n      interval: 100ms\n    retry:\n      minBackoff: 20ms\n      maxBackoff: 100ms\n",
        dir.join("orders.sock").display()
    )
}

/// A loader whose sink loads over `fe` trusting the CAs in `ca`, written to `{dir}/file`.
async fn loader_trusting(fe: &str, file: &str, ca: &str) -> Loader {
    Loader::start(|dir| {
        std::fs::write(dir.join(file), ca).unwrap();
        let tls = format!("{{caFile: {}}}", dir.join(file).display());
        config(dir, fe, &tls)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_go_over_tls_to_the_fe_and_the_be() {
    let m = material();
    let sr = tls_endpoint(&m, true).await;
    let fe = sr.fe_url();
    assert!(fe.starts_with("https://"), "{fe}");
    let mut loader = loader_trusting(&fe, "ca.pem", &m.ca_bundle).await;
    write_lines(
        &loader.socket("orders"),
        &(0..100).map(row).collect::<Vec<_>>(),
    )
    .await;
    assert!(sr.wait_for_rows(100, WAIT).await, "{}", loader.log_text());
    let acc = loader.stop_expecting(0).await;
    assert_eq!(acc["committed"].as_u64(), Some(100), "{acc}");
    assert_exactly_once(&ids(&sr.rows("shop.orders")), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused_and_the_error_names_the_ca_file() {
    let m = material();
    let sr = tls_endpoint(&m, true).await;
    let fe = sr.fe_url();
    let other = material();
    let mut loader = loader_trusting(&fe, "other-ca.pem", &other.ca_bundle).await;
    write_lines(&loader.socket("orders"), &[row(1)]).await;
    loader
        .wait_log_where(
            "a failed load naming the TLS handshake and the CA file",
            |l| {
                l["level"] == "WARN"
                    && l["reason"].as_str().is_some_and(|r| {
                        r.contains("TLS handshake failed") && r.contains("other-ca.pem")
                    })
            },
            WAIT,
        )
        .await;
    assert_eq!(sr.committed_rows(), 0);
    loader.stop_expecting(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_from_https_to_plain_http_is_refused_unless_the_sink_allows_it() {
    let m = material();
    let sr = tls_endpoint(&m, false).await;
    let fe = sr.fe_url();
    let mut loader = loader_trusting(&fe, "ca.pem", &m.ca_bundle).await;
    write_lines(
        &loader.socket("orders"),
        &(0..10).map(row).collect::<Vec<_>>(),
    )
    .await;
    loader
        .wait_log_where(
            "the redirect to plain http refused, with the setting that allows it",
            |l| {
                l["level"] == "ERROR"
                    && l["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("allowHttpRedirect"))
            },
            WAIT,
        )
        .await;
    assert_eq!(sr.committed_rows(), 0);
    // Allowed (live, by a config change): the batch under way goes through.
    let dir = loader.dir.path().to_owned();
    let tls = format!(
        "{{caFile: {}, allowHttpRedirect: true}}",
        dir.join("ca.pem").display()
    );
    std::fs::write(dir.join("loader.yaml"), config(&dir, &fe, &tls)).unwrap();
    assert!(sr.wait_for_rows(10, WAIT).await, "{}", loader.log_text());
    loader.stop_expecting(0).await;
}

#[tokio::test]
async fn a_ca_file_that_cannot_be_read_stops_the_start_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loader.yaml");
    let missing = dir.path().join("no-such-ca.pem");
    let tls = format!("{{caFile: {}}}", missing.display());
    std::fs::write(&path, config(dir.path(), "https://127.0.0.1:1", &tls)).unwrap();
    let (status, log) = run_loader_to_exit(&path, WAIT).await;
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(
        log.contains("cannot read the CA file") && log.contains("no-such-ca.pem"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_that_changes_is_read_again_without_a_config_change() {
    let m = material();
    let sr = tls_endpoint(&m, true).await;
    let fe = sr.fe_url();
    let old = material();
    let mut loader = loader_trusting(&fe, "ca.pem", &old.ca_bundle).await;
    write_lines(
        &loader.socket("orders"),
        &(0..10).map(row).collect::<Vec<_>>(),
    )
    .await;
    let refused = |l: &serde_json::Value| {
        l["reason"]
            .as_str()
            .is_some_and(|r| r.contains("TLS handshake failed"))
    };
    loader
        .wait_log_where("the old CA refused", refused, WAIT)
        .await;
    // The Secret is rotated: the file now holds the CA that signed the servers.
    let dir = loader.dir.path().to_owned();
    std::fs::write(dir.join("ca.pem"), &m.ca_bundle).unwrap();
    assert!(sr.wait_for_rows(10, WAIT).await, "{}", loader.log_text());
    loader.stop_expecting(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_skip_verify_takes_any_certificate_and_says_so() {
    let m = material();
    let sr = tls_endpoint(&m, true).await;
    let fe = sr.fe_url();
    let mut loader = Loader::start(|dir| config(dir, &fe, "{insecureSkipVerify: true}")).await;
    loader
        .wait_log_where(
            "a warning that nothing is checked",
            |l| {
                l["level"] == "WARN"
                    && l["sink"] == "orders"
                    && l["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("insecureSkipVerify"))
            },
            WAIT,
        )
        .await;
    write_lines(
        &loader.socket("orders"),
        &(0..10).map(row).collect::<Vec<_>>(),
    )
    .await;
    assert!(sr.wait_for_rows(10, WAIT).await, "{}", loader.log_text());
    loader.stop_expecting(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_presented_to_a_starrocks_that_asks_for_one() {
    let m = material();
    let (client_ca, cert, key) = client_ca_and_cert();
    let sr = tls_endpoint_asking(&m, true, Some(&client_ca)).await;
    let fe = sr.fe_url();
    // Without one, StarRocks' side ends the connection with the TLS alert that says so.
    let mut bare = loader_trusting(&fe, "ca.pem", &m.ca_bundle).await;
    write_lines(&bare.socket("orders"), &[row(0)]).await;
    let refused = |l: &serde_json::Value| {
        l["reason"]
            .as_str()
            .is_some_and(|r| r.contains("CertificateRequired"))
    };
    bare.wait_log_where("a load refused without a client certificate", refused, WAIT)
        .await;
    bare.stop_expecting(1).await;
    assert_eq!(sr.committed_rows(), 0);
    let mut loader = Loader::start(|dir| {
        std::fs::write(dir.join("ca.pem"), &m.ca_bundle).unwrap();
        std::fs::write(dir.join("client.pem"), &cert).unwrap();
        std::fs::write(dir.join("client.key"), &key).unwrap();
        let tls = format!(
            "{{caFile: {}, certFile: {}, keyFile: {}}}",
            dir.join("ca.pem").display(),
            dir.join("client.pem").display(),
            dir.join("client.key").display()
        );
        config(dir, &fe, &tls)
    })
    .await;
    write_lines(
        &loader.socket("orders"),
        &(1..11).map(row).collect::<Vec<_>>(),
    )
    .await;
    assert!(sr.wait_for_rows(10, WAIT).await, "{}", loader.log_text());
    loader.stop_expecting(0).await;
}
