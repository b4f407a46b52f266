//! The byte stream under a Stream Load exchange: plain TCP, or TLS (rustls) for an
//! `https://` FE or BE. What a TLS connection trusts comes from `starrocks.tls`.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::api::sink::TlsSpec;

/// The CA bundle trusted when `starrocks.tls.caFile` is not set.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A connection to an FE or a BE.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// How the loader makes TLS connections: what it trusts and which name it checks.
pub struct TlsClient {
    /// The connector, and the CA file's modification time it was built from: a CA file
    /// that changes (a rotated Secret) is read again at the next connection.
    current: std::sync::Mutex<(Option<std::time::SystemTime>, TlsConnector)>,
    /// Certificates are not checked at all (`insecureSkipVerify`).
    insecure: bool,
    /// The client certificate chain and key presented, if any.
    client: Option<ClientCert>,
    /// The name certificates are checked against, instead of the URL's host.
    server_name: Option<ServerName<'static>>,
    /// Where the trusted CAs came from, for error messages.
    trusted: PathBuf,
    pub allow_http_redirect: bool,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("trusted", &self.trusted)
            .field("server_name", &self.server_name)
            .field("allow_http_redirect", &self.allow_http_redirect)
            .finish()
    }
}

impl TlsClient {
    /// Builds it from the sink's settings: the CA file (or the system bundle) read and
    /// parsed now, so a file that is missing or holds no certificate is an error at start.
    pub fn new(spec: &TlsSpec) -> Result<Self, String> {
        let trusted = spec
            .ca_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE));
        let insecure = spec.insecure_skip_verify;
        let client = match (&spec.cert_file, &spec.key_file) {
            (Some(cert), Some(key)) => Some(ClientCert::read(cert, key)?),
            (None, None) => None,
            _ => {
                return Err(
                    "starrocks.tls.certFile and keyFile go together: set both, or neither".into(),
                )
            }
        };
        let (modified, connector) = if insecure {
            (None, connector(None, client.as_ref())?)
        } else {
            let roots = read_roots(&trusted)?;
            (modified(&trusted), connector(Some(roots), client.as_ref())?)
        };
        let server_name = match &spec.server_name {
            Some(name) => Some(ServerName::try_from(name.clone()).map_err(|_| {
                format!("starrocks.tls.serverName `{name}` is not a DNS name or IP address")
            })?),
            None => None,
        };
        Ok(Self {
            current: std::sync::Mutex::new((modified, connector)),
            insecure,
            client,
            server_name,
            trusted,
            allow_http_redirect: spec.allow_http_redirect,
        })
    }

    /// Completes the TLS handshake on `tcp` with `host`.
    pub async fn connect(&self, host: &str, tcp: TcpStream) -> Result<Stream, String> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => ServerName::try_from(host.to_owned())
                .map_err(|_| format!("`{host}` is not a name a certificate can be checked against; set starrocks.tls.serverName"))?,
        };
        self.connector()
            .connect(name, tcp)
            .await
            .map(|s| Stream::Tls(Box::new(s)))
            .map_err(|e| {
                format!(
                    "TLS handshake failed: {e} (trusting the CAs in {})",
                    self.trusted.display()
                )
            })
    }
}

impl TlsClient {
    /// The connector for the next connection: built again if the CA file changed since
    /// (kept as it is, with a warning, if the new file cannot be used).
    fn connector(&self) -> TlsConnector {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let now = modified(&self.trusted);
        if !self.insecure && now != current.0 {
            let client = self.client.as_ref();
            match read_roots(&self.trusted).and_then(|roots| connector(Some(roots), client)) {
                Ok(c) => {
                    tracing::info!(ca_file = %self.trusted.display(), "CA file changed; trusting what it holds now");
                    *current = (now, c);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the CA file changed and cannot be used; trusting what it held before");
                    current.0 = now;
                }
            }
        }
        current.1.clone()
    }
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// A connector trusting `roots`, or with `None` one that checks nothing; presenting
/// `client` when given.
fn connector(
    roots: Option<rustls::RootCertStore>,
    client: Option<&ClientCert>,
) -> Result<TlsConnector, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match roots {
        Some(roots) => builder.with_root_certificates(roots),
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider))),
    };
    let config = match client {
        Some(c) => builder
            .with_client_auth_cert(c.chain.clone(), c.key.clone_key())
            .map_err(|e| {
                format!(
                    "the client certificate {} cannot be used: {e}",
                    c.path.display()
                )
            })?,
        None => builder.with_no_client_auth(),
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A client certificate chain and its key, read from PEM files.
struct ClientCert {
    chain: Vec<CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
    path: PathBuf,
}

impl ClientCert {
    fn read(cert: &Path, key: &Path) -> Result<Self, String> {
        let pem = std::fs::read(cert)
            .map_err(|e| format!("cannot read the client certificate {}: {e}", cert.display()))?;
        let chain = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the client certificate {} is not PEM: {e}", cert.display()))?;
        if chain.is_empty() {
            return Err(format!("{} holds no certificate", cert.display()));
        }
        let key_pem = std::fs::read(key)
            .map_err(|e| format!("cannot read the client key {}: {e}", key.display()))?;
        let key_der = rustls::pki_types::PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            format!(
                "the client key {} is not a PEM private key: {e}",
                key.display()
            )
        })?;
        Ok(Self {
            chain,
            key: key_der,
            path: cert.to_owned(),
        })
    }
}

/// `insecureSkipVerify`: any certificate, for any name, is taken. The handshake's
/// signatures are still checked (the peer holds the key of the certificate it shows).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The CA certificates in a PEM file.
fn read_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("cannot read the CA file {}: {e}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("the CA file {} is not PEM: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("a certificate in {} is not usable: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "the CA file {} holds no certificate",
            path.display()
        ));
    }
    Ok(roots)
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
